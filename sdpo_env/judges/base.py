"""The pairwise-judge seam: which of two answers to one request suits one persona better.

A verdict is ``A``, ``B``, ``tie`` or ``missing``. A judge that fails (an unparseable reply, an API error) returns
``missing``, never ``tie``: a tie is a judgement, a failure is the absence of one, and the win-rate metrics count
them differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from sdpo_env.personas import Persona
from sdpo_env.registry import Registry

VERDICTS = ("A", "B", "tie", "missing")


@dataclass(frozen=True)
class Comparison:
    """One pair to judge: two answers to the same conversation, for one persona."""

    persona: Persona
    messages: Sequence[dict[str, str]]
    response_a: str
    response_b: str


@dataclass(frozen=True)
class Judgement:
    """A verdict, with the judge's probabilities of ``A`` and of a tie when it has them (log-prob judges)."""

    verdict: str
    prob_a: float | None = None
    reason: str = ""
    prob_tie: float | None = None

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@runtime_checkable
class PairwiseJudge(Protocol):
    """Judges batches of comparisons (batches let remote judges work concurrently)."""

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        ...


JUDGES: Registry = Registry("judge")
