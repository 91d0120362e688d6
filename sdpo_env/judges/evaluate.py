"""Win rate of the policy against the frozen base model on held-out prompts.

The base model's answers are generated once per (prompt set, seed) and reused at every evaluation; the policy
answers afresh each time. Every pair is judged in both orders. Reported:

- ``win_rate``: ties count half; per-prompt score = mean over the orders (and samples) of A=1, tie=0.5, B=0;
  ``ci_low``/``ci_high``: bootstrap 95% interval over prompts;
- ``win_rate_excl_ties`` and ``coverage`` (share of non-missing judgements that are not ties), the paper's metric;
- ``missing_rate`` (judge failures, never counted as ties) and ``position_consistency``;
- ``win_rate_logprob`` where the judge returns label probabilities (log-prob judges): the expected score;
- per-preference satisfaction of policy and base (``sat/<name>``, ``base_sat/<name>``) where rules exist, with the
  policy's 95% Wilson interval (``sat_low/<name>``, ``sat_high/<name>``; one observation per prompt);
- ``ceiling``: what an answer satisfying every current preference would score against the same base answers;
- ``surprise``: the frozen base model's mean negative log-likelihood per token of the policy's answers (nats), and
  ``base_surprise`` the same for its own answers. The rules read style only; text the base model would not write
  (garbled restatements of the question, an answer about another topic) raises ``surprise``, while a change of style
  moves it a little either way (:func:`sdpo_env.run.degenerate` warns on the gap).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from sdpo_env.judges.base import Comparison, Judgement, PairwiseJudge
from sdpo_env.judges.rules import is_valid
from sdpo_env.metrics import words
from sdpo_env.personas import Persona
from sdpo_env.policy import ChatPolicy
from sdpo_env.prompts import Prompt

AnswerFn = Callable[[Sequence[Sequence[dict[str, str]]], int], list[str]]
POLICY_SCORE = {"win": 1.0, "tie": 0.5, "loss": 0.0}


def policy_outcome(verdict: str, policy_is_a: bool) -> str:
    """Maps a verdict to the policy's view: ``win``, ``tie``, ``loss`` or ``missing``."""
    if verdict in ("tie", "missing"):
        return verdict
    return "win" if (verdict == "A") == policy_is_a else "loss"


def win_rate_stats(outcomes: Sequence[Sequence[tuple[str, str]]], *, bootstrap: int, seed: int) -> dict[str, float]:
    """Win-rate statistics from per-prompt lists of (outcome with policy as A, outcome with policy as B).

    Args:
        outcomes: For each prompt, one pair of policy-view outcomes per sample.
        bootstrap: Number of bootstrap resamples over prompts.
        seed: Seed of the bootstrap.

    Returns:
        ``win_rate``, ``ci_low``, ``ci_high``, ``win_rate_excl_ties``, ``coverage``, ``missing_rate``,
        ``position_consistency`` and ``n_prompts`` (prompts with at least one judgement). NaN where undefined.
    """
    scores = []
    flat = [o for prompt in outcomes for pair in prompt for o in pair]
    for prompt in outcomes:
        judged = [POLICY_SCORE[o] for pair in prompt for o in pair if o != "missing"]
        if judged:
            scores.append(float(np.mean(judged)))
    wins, losses, ties = flat.count("win"), flat.count("loss"), flat.count("tie")
    both = [pair for prompt in outcomes for pair in prompt if "missing" not in pair]
    nan = float("nan")
    result = {
        "win_rate": float(np.mean(scores)) if scores else nan,
        "win_rate_excl_ties": wins / (wins + losses) if wins + losses else nan,
        "coverage": (wins + losses) / (wins + losses + ties) if wins + losses + ties else nan,
        "missing_rate": flat.count("missing") / len(flat) if flat else nan,
        "position_consistency": sum(a == b for a, b in both) / len(both) if both else nan,
        "n_prompts": float(len(scores)),
    }
    if scores:
        rng = np.random.default_rng(seed)
        samples = rng.choice(np.asarray(scores), size=(bootstrap, len(scores)), replace=True).mean(axis=1)
        result["ci_low"], result["ci_high"] = (float(v) for v in np.percentile(samples, [2.5, 97.5]))
    else:
        result["ci_low"] = result["ci_high"] = nan
    return result


def wilson_interval(share: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion: the ``p`` with ``|share - p| <= z * sqrt(p (1 - p) / n)``.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or 1 (at 64 observations, 1.0 gives
    [0.94, 1]). Args: ``share`` the observed proportion, ``n`` the number of independent observations, ``z`` the
    normal quantile (1.96: 95%). NaN for ``n`` < 1.
    """
    if n < 1:
        return float("nan"), float("nan")
    scale = 1 + z * z / n
    centre = (share + z * z / (2 * n)) / scale
    half = z * np.sqrt(share * (1 - share) / n + z * z / (4 * n * n)) / scale
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def interval_text(row: dict[str, Any], name: str) -> str:
    """`` [low, high]``: the 95% interval of preference ``name``'s satisfaction in a metrics row; empty if absent."""
    low, high = row.get(f"sat_low/{name}"), row.get(f"sat_high/{name}")
    return "" if low is None or high is None else f" [{low:.2f}, {high:.2f}]"


def logprob_win_rate(judgements: Sequence[Judgement], n: int) -> float | None:
    """The policy's expected score (win 1, tie 0.5) under the judge's label probabilities, over the judgements that
    carry them; the first ``n`` have the policy as A, the rest as B. ``None`` when no judgement has probabilities."""
    scores = []
    for i, j in enumerate(judgements):
        if j.verdict == "missing" or j.prob_a is None:
            continue
        tie = j.prob_tie or 0.0
        policy = j.prob_a if i < n else 1.0 - j.prob_a - tie
        scores.append(policy + 0.5 * tie)
    return float(np.mean(scores)) if scores else None


class WinRateEvaluator:
    """Evaluates answers against the frozen base model's answers on a fixed held-out prompt set.

    Args:
        policy: The policy; its base view (adapter disabled) writes the base answers.
        judge: The pairwise judge.
        prompts: Held-out prompts.
        samples_per_prompt: Answers per prompt on each side.
        seed: Seeds the base answers, the policy's evaluation answers and the bootstrap.
        bootstrap: Bootstrap resamples for the CI.
        surprise: Report ``surprise`` and ``base_surprise``; needs the frozen base model, so off where training
            changes the model's own weights (full fine-tuning).
    """

    def __init__(self, policy: ChatPolicy, judge: PairwiseJudge, prompts: Sequence[Prompt], *,
                 samples_per_prompt: int = 1, seed: int = 0, bootstrap: int = 1000, surprise: bool = True):
        self.policy, self.judge, self.prompts = policy, judge, list(prompts)
        self.samples, self.seed, self.bootstrap = samples_per_prompt, seed, bootstrap
        self.with_surprise = surprise
        self._base: list[str] | None = None
        self._base_surprise: float | None = None

    @property
    def conversations(self) -> list[list[dict[str, str]]]:
        """Each held-out prompt repeated ``samples_per_prompt`` times."""
        return [list(p.messages) for p in self.prompts for _ in range(self.samples)]

    def base_responses(self) -> list[str]:
        """The base model's answers, generated on first use and reused."""
        if self._base is None:
            with self.policy.base_model():
                samples = self.policy.generate(self.conversations, seed=self.seed * 7919 + 17)
            self._base = [s.text for s in samples]
        return self._base

    def surprise(self, answers: Sequence[str]) -> float:
        """The frozen base model's mean negative log-likelihood per token of ``answers`` (one per conversation),
        averaged over the answers that have tokens."""
        with self.policy.base_model():
            values = [v for v in self.policy.answer_nll(self.conversations, answers) if v == v]  # NaN: no tokens
        return float(np.mean(values)) if values else float("nan")

    def base_surprise(self) -> float:
        """:meth:`surprise` of the base model's own answers, computed on first use and reused."""
        if self._base_surprise is None:
            self._base_surprise = self.surprise(self.base_responses())
        return self._base_surprise

    def evaluate(self, answer: AnswerFn, persona: Persona, *, seed: int,
                 surprise: bool = True) -> tuple[dict[str, Any], list[str]]:
        """Judges fresh answers against the base answers under ``persona``.

        Args:
            answer: Writes answers for conversations given a seed (the learner's evaluation answers).
            persona: The preferences in force.
            seed: Seed for this evaluation's answers.
            surprise: ``False`` skips ``surprise`` for answers whose figure nobody reads (the oracle's).

        Returns:
            ``(metrics, answers)``.
        """
        conversations = self.conversations
        base = self.base_responses()
        mine = answer(conversations, seed)
        comparisons = [Comparison(persona, c, m, b) for c, m, b in zip(conversations, mine, base)]
        comparisons += [Comparison(persona, c, b, m) for c, m, b in zip(conversations, mine, base)]
        judgements = self.judge.judge(comparisons)
        verdicts = [j.verdict for j in judgements]
        n = len(conversations)
        pairs = [(policy_outcome(verdicts[i], True), policy_outcome(verdicts[n + i], False)) for i in range(n)]
        per_prompt = [pairs[i * self.samples : (i + 1) * self.samples] for i in range(len(self.prompts))]
        metrics: dict[str, Any] = win_rate_stats(per_prompt, bootstrap=self.bootstrap, seed=self.seed)
        weighted = logprob_win_rate(judgements, n)
        if weighted is not None:
            metrics["win_rate_logprob"] = weighted
        metrics["valid_rate"] = float(np.mean([is_valid(m) for m in mine]))
        metrics["mean_words"] = float(np.mean([len(words(m)) for m in mine]))
        if self.with_surprise and surprise:
            metrics["surprise"], metrics["base_surprise"] = self.surprise(mine), self.base_surprise()
        checkable = [p for p in persona.preferences if p.checkable]
        for pref in checkable:
            share = float(np.mean([pref.satisfied_by(m) for m in mine]))
            metrics[f"sat/{pref.name}"] = share
            # answers to one prompt are not independent: a prompt is one observation, however many answers it has
            low, high = wilson_interval(share, len(self.prompts))
            metrics[f"sat_low/{pref.name}"], metrics[f"sat_high/{pref.name}"] = low, high
            metrics[f"base_sat/{pref.name}"] = float(np.mean([pref.satisfied_by(b) for b in base]))
        if checkable:
            metrics["sat/all"] = float(np.mean([all(p.satisfied_by(m) for p in checkable) for m in mine]))
        ceiling = getattr(self.judge, "ceiling", None)
        if callable(ceiling) and persona.checkable:
            metrics["ceiling"] = float(ceiling(persona, base))
        return metrics, mine

    def state_dict(self) -> dict[str, Any]:
        return {"base": self._base, "base_surprise": self._base_surprise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # base_surprise travels with the base answers it was read from (absent in checkpoints from before it)
        self._base, self._base_surprise = state["base"], state.get("base_surprise")
