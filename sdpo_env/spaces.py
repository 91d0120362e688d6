"""A Gymnasium space for chat text.

``gymnasium.spaces.Text`` only contains strings over a fixed charset (alphanumerics by default), so real chat text
with punctuation, accents or emojis fails ``contains``. :class:`UnicodeText` contains every Python string up to a
maximum length and samples from a mixed charset (ASCII, accents, CJK, emojis) so checkers exercise the whole range.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium.spaces import Space

_SAMPLE_CHARS = tuple(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,!?'\"-\n" + "éüñçøß" + "你好世界" + "😀🎉👍🔥✨"
)


class UnicodeText(Space[str]):
    """Any string of at most ``max_length`` characters.

    Args:
        max_length: Longest string contained.
        seed: Seed of the sampling generator.
    """

    def __init__(self, max_length: int = 100_000, seed: int | np.random.Generator | None = None):
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length = max_length
        super().__init__(dtype=str, seed=seed)

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        """A random string of up to 64 characters (or ``max_length``), emojis and non-Latin text included."""
        length = int(self.np_random.integers(1, min(64, self.max_length) + 1))
        picks = self.np_random.integers(0, len(_SAMPLE_CHARS), size=length)
        return "".join(_SAMPLE_CHARS[i] for i in picks)

    def contains(self, x: Any) -> bool:
        return isinstance(x, str) and len(x) <= self.max_length

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"UnicodeText(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, UnicodeText) and other.max_length == self.max_length

    def to_jsonable(self, sample_n: Any) -> list[str]:
        return list(sample_n)

    def from_jsonable(self, sample_n: list[str]) -> list[str]:
        return list(sample_n)
