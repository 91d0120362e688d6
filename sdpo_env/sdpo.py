"""The SDPO math as pure functions on tensors: token advantages and the distillation losses.

Notation follows the paper. For an interaction (x, y, o) the student is pi(. | x, y_<t) and the teacher is the
hindsight policy pi(. | x, o, y_<t), detached. Shapes: B sequences, T completion positions (padded), V vocabulary;
``mask`` (B, T) is 1 on real completion tokens. No model code lives here: the agent gathers tensors and calls these.

Losses (``loss=`` in the agent's config):
- ``pg`` (the paper's): ``-mean_t(A_t.detach() * log pi(y_t | x, y_<t))`` with ``A_t = log pi_teacher - log pi``.
  In expectation over y ~ pi this equals the gradient of the per-prefix reverse KL to the detached teacher
  (Appendix B); with on-policy samples its no-grad student log-probs equal the grad pass's values, so one teacher
  forward plus one student forward/backward suffices. With :func:`rewards_to_go` in place of ``A_t`` it is the
  gradient of the sequence-level reverse KL instead.
- ``topk``: the divergence on the student's top-k tokens plus a tail bucket holding the remaining mass.
- ``full``: the divergence over the whole vocabulary.
The divergences take ``alpha``: 0 = forward KL(teacher || student), 1 = reverse KL(student || teacher), in between
the generalised Jensen-Shannon divergence with mixture ``alpha * student + (1 - alpha) * teacher``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

AGGREGATIONS = ("token_mean", "sequence_mean", "token_sum")
SUM_TOKENS = 100  # token_sum divides by this many tokens per sequence, a constant


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits).gather(-1, index)`` without materialising the (B, T, V) log-softmax.

    Args:
        logits: (B, T, V) scores.
        index: (B, T) token ids.

    Returns:
        (B, T) log-probabilities of ``index``.
    """
    picked = logits.gather(-1, index.unsqueeze(-1)).squeeze(-1)  # (B, T)
    if logits.dtype in (torch.float32, torch.float64):
        return picked - torch.logsumexp(logits, dim=-1)  # (B, T)
    # Half precision: logsumexp row by row in float32 keeps the peak small and the result accurate.
    norms = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (B, T)
    return picked.float() - norms


def token_advantages(*, teacher_logprobs: torch.Tensor, student_logprobs: torch.Tensor,
                     mask: torch.Tensor) -> torch.Tensor:
    """``A_t = log pi(y_t | x, o, y_<t) - log pi(y_t | x, y_<t)``, detached, zero on padding.

    Positive advantages reinforce a token, negative ones penalise it.

    Args:
        teacher_logprobs: (B, T) log-probs under the hindsight context.
        student_logprobs: (B, T) log-probs under the original context.
        mask: (B, T) 1 on completion tokens.

    Returns:
        (B, T) advantages without gradient.
    """
    return ((teacher_logprobs - student_logprobs) * mask).detach()


def center_advantages(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Subtracts each sequence's mean advantage over its tokens (the authors' online option).

    Args:
        advantages: (B, T).
        mask: (B, T).

    Returns:
        (B, T) centred advantages, zero on padding.
    """
    counts = mask.sum(-1, keepdim=True).clamp(min=1)  # (B, 1)
    means = (advantages * mask).sum(-1, keepdim=True) / counts  # (B, 1)
    return (advantages - means) * mask


def rewards_to_go(advantages: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``G_t = sum_{t' >= t} A_t'``: each token credited with its own advantage and those of the rest of its answer.

    With these in place of ``A_t``, :func:`policy_gradient_loss` (summed over tokens, in expectation over y ~ pi)
    is the gradient of the sequence-level reverse KL ``KL(pi(y | x) || sg pi(y | x, o))``, whose negative is the
    paper's sequence-level advantage (Appendix A). It differs from the per-prefix KL of Appendix B by the score
    term: a token is also credited with what the teacher thinks of the answer that followed it.

    Args:
        advantages: (B, T).
        mask: (B, T) 1 on completion tokens (a prefix of each row).

    Returns:
        (B, T) rewards to go, zero on padding.
    """
    masked = advantages * mask
    return masked.flip(-1).cumsum(-1).flip(-1) * mask


def hindsight_log_ratio(*, teacher_logits: torch.Tensor, baseline_logits: torch.Tensor,
                        clip: float | None = None) -> torch.Tensor:
    """What the follow-up says beyond a neutral one (``agent.contrast``): ``log pi(.|x, o) - log pi(.|x, u)``.

    Per position and token of the vocabulary, the log-ratio of the hindsight block holding the follow-up ``o`` to the
    same block holding a neutral follow-up ``u``. It is unbounded where the neutral block gives a token little
    probability; ``clip`` holds it to ``[-clip, clip]``. :func:`contrasted_teacher_logits` and
    :func:`guided_teacher_logits` add it to a distribution; a learner computes it once per update for both.

    Args:
        teacher_logits: (B, T, V) under the hindsight block holding the follow-up.
        baseline_logits: (B, T, V) under the same block holding the neutral follow-up.
        clip: Largest |log-ratio| kept; None = unbounded.

    Returns:
        (B, T, V) float log-ratios without gradient.
    """
    ratio = (torch.log_softmax(teacher_logits.detach().float(), dim=-1)
             - torch.log_softmax(baseline_logits.detach().float(), dim=-1))
    return ratio if clip is None else ratio.clamp(-clip, clip)


def contrasted_teacher_logits(*, student_logits: torch.Tensor, log_ratio: torch.Tensor) -> torch.Tensor:
    """The teacher with what any hindsight block does to the policy taken out (``agent.contrast``).

    Per position, ``log pi(.|x) + log pi(.|x, o) - log pi(.|x, u)`` with ``u`` a neutral follow-up: the student's
    distribution moved by what the follow-up ``o`` says beyond a neutral one, as classifier-free guidance contrasts
    two prompts. Unnormalised; the losses take its log-softmax. With ``o == u`` it is the student's own distribution,
    so the follow-up teaches nothing. With ``log_ratio`` clipped at ``C`` (:func:`hindsight_log_ratio`), the
    teacher's odds of any two tokens differ from the student's by at most ``exp(2 C)``.

    Args:
        student_logits: (B, T, V) under the original context; detached here.
        log_ratio: (B, T, V) from :func:`hindsight_log_ratio`.

    Returns:
        (B, T, V) float logits without gradient.
    """
    return torch.log_softmax(student_logits.detach().float(), dim=-1) + log_ratio


def guided_teacher_logits(*, teacher_logits: torch.Tensor, log_ratio: torch.Tensor, scale: float) -> torch.Tensor:
    """The hindsight teacher moved further by what the follow-up says beyond a neutral one (``contrast_use=guide``).

    Per position, ``log pi(.|x, o) + scale * (log pi(.|x, o) - log pi(.|x, u))``: classifier-free guidance of the
    hindsight block holding ``o`` on the block holding the neutral ``u``, at guidance ``1 + scale``. Unlike
    :func:`contrasted_teacher_logits` it does not start from the student's distribution, so a student that reaches it
    faces the same teacher again (it moves only as the two hindsight teachers move). With ``o == u`` or ``scale``
    near 0 it is the plain hindsight teacher.

    Args:
        teacher_logits: (B, T, V) under the hindsight block holding the follow-up.
        log_ratio: (B, T, V) from :func:`hindsight_log_ratio`, clipped or not.
        scale: How many times the log-ratio of the two blocks is added to the teacher.

    Returns:
        (B, T, V) float logits without gradient.
    """
    return torch.log_softmax(teacher_logits.detach().float(), dim=-1) + scale * log_ratio


def signal_rows(advantages: torch.Tensor, mask: torch.Tensor, gate: float) -> torch.Tensor:
    """Which answers carry a hindsight signal: those with a completion token whose |A_t| reaches ``gate``.

    Label-free: it reads only the advantages. Scored by the shipped tiny model, 97% of the complaints in the default
    flip run's first 250 interactions move some token by 0.5 or more, and 8% of the other follow-ups; in six gated
    flip runs the live teacher passed 92% and 13% (docs/results.md, "Learning only from follow-ups that carry a
    signal").

    Args:
        advantages: (B, T).
        mask: (B, T), 1 on completion tokens.
        gate: Smallest largest-|A_t| of an answer that passes.

    Returns:
        (B,) bool.
    """
    return ((advantages.abs() * mask) >= gate).any(-1)


def unlearn_along_gradient(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho: float) -> float:
    """Removes ``rho`` times the weights' component along the loss gradient, where the weights point up it.

    With theta the weights and g their gradient, ``<theta, g> > 0`` means that moving theta towards zero along g
    lowers the loss to first order: the adapter holds something this update's teacher disagrees with. Then
    ``theta -= rho * <theta, g> / |g|^2 * g``, which leaves ``<theta, g>`` at ``(1 - rho)`` of its value and every
    direction orthogonal to g as it was; otherwise nothing changes. For a LoRA pair (A, B) with delta W = s B A,
    ``<B, dL/dB> = <A, dL/dA> = <delta W, dL/d(delta W)>``: on either factor the test is on what the adapter does,
    and SDPO's ``unlearn`` applies it to the B factors, which start at zero and so hold only what was learned.
    Scale-free: a clipped gradient removes the same.

    Args:
        params: The weights, changed in place.
        grads: Their gradients, in the same order.
        rho: Share of the component removed, in [0, 1].

    Returns:
        The norm removed, as a share of the weights' norm before (0 if nothing was removed).
    """
    with torch.no_grad():
        dot = sum(float((w * g).sum()) for w, g in zip(params, grads, strict=True))
        squared = sum(float((g * g).sum()) for g in grads)
        if rho == 0 or dot <= 0 or squared == 0:
            return 0.0
        norm = math.sqrt(sum(float((w * w).sum()) for w in params))
        step = rho * dot / squared
        for w, g in zip(params, grads, strict=True):
            w.sub_(step * g)
        return step * math.sqrt(squared) / norm


def threshold_advantages(advantages: torch.Tensor, threshold: float) -> torch.Tensor:
    """Zeroes the token advantages whose magnitude is below ``threshold``; the others stay as they are.

    On the tiny model most of a complaint's |A_t| sits on a few tokens (the first words, sentence starts), while an
    unrelated or satisfied follow-up moves every token a little: at 0.2, 3% of a complaint's tokens keep 87% of
    its |A_t| and the other follow-ups keep 35% (docs/results.md, "Dropping small advantages").

    Args:
        advantages: (B, T).
        threshold: Smallest |A_t| kept; 0 keeps every token.

    Returns:
        (B, T) advantages, zero where |A_t| < threshold.
    """
    return advantages * (advantages.abs() >= threshold)


def aggregate(values: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean") -> torch.Tensor:
    """Reduces per-token values to a scalar.

    Args:
        values: (B, T) per-token values.
        mask: (B, T).
        mode: ``token_mean`` (every token in the batch weighs the same), ``sequence_mean`` (mean over each
            sequence's tokens, then over sequences) or ``token_sum`` (sum over each sequence's tokens, divided by
            the constant ``SUM_TOKENS``, mean over sequences). The two means divide a long answer's gradient by
            its length; ``token_sum`` keeps the gradient of the sequence's log-probability ratio, the sum over its
            tokens, whatever the length.

    Returns:
        A scalar tensor.
    """
    if mode == "token_mean":
        return (values * mask).sum() / mask.sum().clamp(min=1)
    if mode == "sequence_mean":
        per_sequence = (values * mask).sum(-1) / mask.sum(-1).clamp(min=1)  # (B,)
        return per_sequence.mean()
    if mode == "token_sum":
        return (values * mask).sum() / (values.shape[0] * SUM_TOKENS)
    raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {mode!r}")


def _weigh_rows(values: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
    """(B, T) values times each row's weight (B,), or unchanged."""
    return values if rows is None else values * rows.to(values.dtype)[:, None]


def policy_gradient_loss(
    *,
    student_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    old_logprobs: torch.Tensor | None = None,
    clip: float | None = None,
    aggregation: str = "token_mean",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """The paper's loss: ``-mean_t(A_t * log pi(y_t | x, y_<t))`` with the advantage treated as a constant.

    With ``old_logprobs`` and ``clip`` it becomes the PPO-style clipped surrogate on the importance ratio
    ``pi / pi_old`` (the authors' online option; useful when several updates reuse one batch).

    Args:
        student_logprobs: (B, T) log-probs with gradient.
        advantages: (B, T); detached here whatever the caller passes.
        mask: (B, T).
        old_logprobs: (B, T) log-probs of the policy that sampled y, for the ratio.
        clip: Ratio clip ``epsilon``: the ratio is clipped to ``[1 - eps, 1 + eps]``.
        aggregation: See :func:`aggregate`.
        rows: (B,) weight of each answer's tokens (the signal gate's 0 or 1); the aggregation still counts every
            answer's tokens. None weighs every answer 1.

    Returns:
        A scalar loss.
    """
    advantages = advantages.detach()
    if clip is None:
        return aggregate(_weigh_rows(-advantages * student_logprobs, rows), mask, aggregation)
    if old_logprobs is None:
        raise ValueError("ratio clipping needs old_logprobs (the sampling policy's log-probs)")
    ratio = torch.exp(student_logprobs - old_logprobs.detach())  # (B, T)
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    return aggregate(_weigh_rows(-torch.minimum(unclipped, clipped), rows), mask, aggregation)


def _kl(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension from log-probabilities; (..., V) -> (...)."""
    return (p_log.exp() * (p_log - q_log)).sum(-1)


def divergence(student_log: torch.Tensor, teacher_log: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per-position divergence between two distributions given as log-probabilities.

    Args:
        student_log: (..., K) student log-probabilities.
        teacher_log: (..., K) teacher log-probabilities (detach them before calling for a fixed target).
        alpha: 0 = KL(teacher || student), 1 = KL(student || teacher), between: generalised JSD.

    Returns:
        (...) divergences.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return _kl(teacher_log, student_log)
    if alpha == 1.0:
        return _kl(student_log, teacher_log)
    mixture = torch.logsumexp(
        torch.stack([student_log + math.log(alpha), teacher_log + math.log(1.0 - alpha)]), dim=0
    )  # (..., K)
    return alpha * _kl(student_log, mixture) + (1.0 - alpha) * _kl(teacher_log, mixture)


def full_divergence_loss(
    *,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 1.0,
    aggregation: str = "token_mean",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divergence to the detached teacher over the whole vocabulary at every completion position.

    Args:
        student_logits: (B, T, V) with gradient.
        teacher_logits: (B, T, V); detached here.
        mask: (B, T).
        alpha: See :func:`divergence`.
        aggregation: See :func:`aggregate`.
        rows: See :func:`policy_gradient_loss`.
    """
    student_log = torch.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    teacher_log = torch.log_softmax(teacher_logits.detach().float(), dim=-1)  # (B, T, V)
    return aggregate(_weigh_rows(divergence(student_log, teacher_log, alpha), rows), mask, aggregation)


def _with_tail(log_probs_topk: torch.Tensor) -> torch.Tensor:
    """Appends a tail bucket ``log(1 - sum(p_topk))`` to (..., k) log-probs -> (..., k + 1)."""
    top_mass = torch.logsumexp(log_probs_topk, dim=-1, keepdim=True)  # (..., 1)
    tail = torch.log(torch.clamp(-torch.expm1(top_mass), min=1e-12))  # log(1 - exp(top_mass))
    return torch.cat([log_probs_topk, tail], dim=-1)


def topk_divergence_loss(
    *,
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor,
    k: int = 20,
    alpha: float = 1.0,
    tail: bool = True,
    aggregation: str = "token_mean",
    rows: torch.Tensor | None = None,
) -> torch.Tensor:
    """Divergence restricted to the student's top-k tokens at each position, plus a tail bucket.

    Both distributions are evaluated on the same k tokens (chosen by the student, without gradient); the tail bucket
    carries each side's remaining probability mass, so the result is a divergence between two (k + 1)-point
    distributions. Without the tail, both are renormalised over the k tokens.

    Args:
        student_logits: (B, T, V) with gradient.
        teacher_logits: (B, T, V); detached here.
        mask: (B, T).
        k: Tokens kept per position.
        alpha: See :func:`divergence`.
        tail: Keep the tail bucket (True) or renormalise over the top-k (False).
        aggregation: See :func:`aggregate`.
        rows: See :func:`policy_gradient_loss`.
    """
    student_log = torch.log_softmax(student_logits.float(), dim=-1)  # (B, T, V)
    teacher_log = torch.log_softmax(teacher_logits.detach().float(), dim=-1)  # (B, T, V)
    index = student_log.detach().topk(min(k, student_log.shape[-1]), dim=-1).indices  # (B, T, k)
    s_top, t_top = student_log.gather(-1, index), teacher_log.gather(-1, index)  # (B, T, k)
    if tail:
        s_top, t_top = _with_tail(s_top), _with_tail(t_top)  # (B, T, k + 1)
    else:
        s_top = s_top - torch.logsumexp(s_top, -1, keepdim=True)
        t_top = t_top - torch.logsumexp(t_top, -1, keepdim=True)
    return aggregate(_weigh_rows(divergence(s_top, t_top, alpha), rows), mask, aggregation)
