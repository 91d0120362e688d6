"""The baselines' math as pure functions on tensors: NLL, DPO and REINFORCE with a running baseline.

Shapes: B sequences, T completion positions (padded); ``mask`` (B, T) is 1 on real completion tokens. Token
log-probs come from :func:`sdpo_env.sdpo.selective_log_softmax`. No model code lives here: the learners in
``agents/`` gather tensors and call these.

- ``nll_loss``: supervised fine-tuning, ``-mean_t log pi(y'_t | x, y'_<t)`` on a target y' (for ``sft_hindsight``,
  the answer the policy regenerates with the hindsight context: off-policy self-distillation).
- ``dpo_loss``: ``-log sigmoid(beta * ((log pi(y+|x) - log ref(y+|x)) - (log pi(y-|x) - log ref(y-|x))))`` with
  sequence log-probs (Rafailov et al., 2023); ``dpo_hindsight`` takes y+ = the hindsight-regenerated answer,
  y- = the original answer and ref = the frozen base.
- ``reinforce_loss``: ``-mean_t (r - b) * log pi(y_t | x, y_<t)``, the score-function estimator with a baseline b;
  ``running_baseline`` moves b towards each reward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sdpo_env.sdpo import aggregate


def sequence_logprobs(token_logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``log pi(y | x) = sum_t log pi(y_t | x, y_<t)`` over real tokens.

    Args:
        token_logprobs: (B, T).
        mask: (B, T).

    Returns:
        (B,) sequence log-probabilities.
    """
    return (token_logprobs * mask).sum(-1)


def nll_loss(*, token_logprobs: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean") -> torch.Tensor:
    """Negative log-likelihood of the target tokens (supervised fine-tuning).

    Args:
        token_logprobs: (B, T) log-probs of the target tokens, with gradient.
        mask: (B, T).
        aggregation: one of ``AGGREGATIONS`` (see :func:`sdpo_env.sdpo.aggregate`).

    Returns:
        A scalar loss.
    """
    return aggregate(-token_logprobs, mask, aggregation)


def dpo_loss(
    *,
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    reference_chosen: torch.Tensor,
    reference_rejected: torch.Tensor,
    beta: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The DPO loss on (chosen, rejected) pairs, averaged over pairs.

    Args:
        policy_chosen: (B,) sequence log-probs of the chosen answers under the policy, with gradient.
        policy_rejected: (B,) the same for the rejected answers.
        reference_chosen: (B,) sequence log-probs of the chosen answers under the reference; detached here.
        reference_rejected: (B,) the same for the rejected answers.
        beta: Inverse temperature: how far the policy may move from the reference.

    Returns:
        ``(loss, margins)``: the scalar loss, and the (B,) implicit reward margins
        ``beta * (chosen log-ratio - rejected log-ratio)`` without gradient (positive = the pair is ranked right).
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    chosen_ratio = policy_chosen - reference_chosen.detach()  # (B,)
    rejected_ratio = policy_rejected - reference_rejected.detach()  # (B,)
    logits = beta * (chosen_ratio - rejected_ratio)  # (B,)
    return -F.logsigmoid(logits).mean(), logits.detach()


def reinforce_loss(
    *,
    token_logprobs: torch.Tensor,
    mask: torch.Tensor,
    advantages: torch.Tensor,
    aggregation: str = "token_mean",
) -> torch.Tensor:
    """REINFORCE: every token of an answer carries its answer's advantage ``r - b`` (a constant).

    Args:
        token_logprobs: (B, T) log-probs of the sampled tokens, with gradient.
        mask: (B, T).
        advantages: (B,) reward minus baseline per answer; detached here.
        aggregation: See :func:`sdpo_env.sdpo.aggregate`.

    Returns:
        A scalar loss whose gradient is the score-function estimate of ``-grad E[r]`` (up to the normalisation).
    """
    per_token = -advantages.detach().unsqueeze(-1) * token_logprobs  # (B, T)
    return aggregate(per_token, mask, aggregation)


def running_baseline(baseline: float | None, reward: float, *, decay: float) -> float:
    """Exponential moving average of rewards; the first reward initialises it.

    Args:
        baseline: The current baseline, or ``None`` before the first reward.
        reward: The new reward.
        decay: Weight of the old baseline (0 = the last reward only).

    Returns:
        The updated baseline.
    """
    if baseline is None:
        return float(reward)
    return decay * baseline + (1.0 - decay) * float(reward)
