"""The strict verdict parser: the whole reply is the label, or the last [[X]] marker; never a first letter."""

from __future__ import annotations

import pytest

from sdpo_env.judges.llm import parse_verdict


@pytest.mark.parametrize(("reply", "verdict"), [
    ("A", "A"), ("B", "B"), ("C", "tie"), (" B\n", "B"), ("[[A]]", "A"), ("**B**", "B"), ("A.", "A"), ("(C)", "tie"),
    ("[[B]]", "B"), ("Response B is shorter. [[B]]", "B"), ("I first thought [[A]] but on reflection [[B]]", "B"),
    ("[[ C ]]", "tie"), ("[A]", "A"), ("Both fit, so: [[C]]", "tie"),
])
def test_readable_verdicts(reply: str, verdict: str) -> None:
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize("reply", [
    "Both are good", "A or B?", "B... actually A", "", "   ", "Answer: A", "AB", "Neither", "[[D]]",
    "Better: Assistant B", "a", "Tie",
])
def test_ambiguous_replies_are_not_verdicts(reply: str) -> None:
    assert parse_verdict(reply) is None


def test_logprob_win_rate_weights_by_label_probabilities() -> None:
    from sdpo_env.judges.base import Judgement
    from sdpo_env.judges.evaluate import logprob_win_rate

    judgements = [Judgement("A", prob_a=0.8, prob_tie=0.1), Judgement("missing"),  # policy is A in the first n=2
                  Judgement("B", prob_a=0.2, prob_tie=0.2), Judgement("A")]  # policy is B; the last has no probs
    assert logprob_win_rate(judgements, 2) == pytest.approx(((0.8 + 0.05) + (0.6 + 0.1)) / 2)
    assert logprob_win_rate([Judgement("A")], 1) is None
