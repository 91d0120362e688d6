"""The offline rule judge: the answer that satisfies more of the persona's current preferences wins.

Answers must first be valid (non-empty, at least a few words, not looping): a valid answer beats an invalid one, so a
collapsed policy that emits fragments cannot win by dodging every rule.
"""

from __future__ import annotations

from collections.abc import Sequence

from sdpo_env.judges.base import JUDGES, Comparison, Judgement
from sdpo_env.metrics import words
from sdpo_env.personas import Persona


def is_valid(text: str, *, min_words: int = 5, min_distinct_trigrams: float = 0.5) -> bool:
    """Whether an answer is well-formed: enough words and no degenerate repetition."""
    tokens = [w.lower() for w in words(text)]
    if len(tokens) < min_words:
        return False
    trigrams = list(zip(tokens, tokens[1:], tokens[2:]))
    return not trigrams or len(set(trigrams)) / len(trigrams) >= min_distinct_trigrams


def satisfied_count(persona: Persona, text: str) -> int:
    """How many of the persona's preferences the answer satisfies."""
    return sum(persona.satisfaction(text).values())


@JUDGES.register("rules")
class RuleJudge:
    """Counts satisfied preferences; more wins, equal is a tie; needs personas whose preferences all have rules.

    Args:
        min_words: Shortest valid answer, in words.
    """

    def __init__(self, min_words: int = 5):
        self.min_words = min_words

    def _score(self, persona: Persona, text: str) -> tuple[bool, int]:
        return is_valid(text, min_words=self.min_words), satisfied_count(persona, text)

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        out = []
        for c in comparisons:
            if not c.persona.checkable:
                raise ValueError(f"the rule judge needs rules on every preference of {c.persona.name!r}; "
                                 "use an LLM judge (judge.backend=openai|anthropic|hf)")
            a, b = self._score(c.persona, c.response_a), self._score(c.persona, c.response_b)
            verdict = "A" if a > b else "B" if b > a else "tie"
            out.append(Judgement(verdict=verdict, reason=f"valid/satisfied A={a} B={b}"))
        return out

    def ceiling(self, persona: Persona, base_responses: Sequence[str]) -> float:
        """Win rate (ties as half) of a valid answer that satisfies every preference against these base answers."""
        best = (True, len(persona.preferences))
        scores = [1.0 if best > self._score(persona, r) else 0.5 for r in base_responses]
        return sum(scores) / max(len(scores), 1)
