"""Style axes of the tiny model's corpus: what a style is, how it is measured, and which styles a rule allows.

A style fixes one value per axis (length, tone, level, emojis, lists, opener, closing filler, first person,
exclamation marks, questions back, alternatives). Every value is read back from a text with ``sdpo_env.metrics``,
so the labels the corpus intends are the labels the persona rules measure.
"""

from __future__ import annotations

import numpy as np

from sdpo_env import metrics as m
from sdpo_env.personas import Condition, Persona, Preference

Style = dict[str, object]

# Each axis and its values; the base distribution is uniform over them (every value within 20-80%).
AXES: dict[str, tuple[object, ...]] = {
    "length": ("concise", "detailed"),
    "tone": ("casual", "professional"),
    "level": ("beginner", "expert"),
    "emoji": (False, True),
    "lists": (False, True),
    "opener": ("none", "praise", "preamble"),
    "closing": (False, True),
    "first_person": (False, True),
    "exclaim": (False, True),
    "question": (False, True),
    "alternatives": (False, True),
}
# Margins inside the rule thresholds, so sampled answers near a template's edge still satisfy the rules.
CONCISE_MAX_WORDS = 47
DETAILED_MIN_WORDS = 100
SCORE_MARGIN = 0.3


def sample_style(rng: np.random.Generator, fixed: Style | None = None) -> Style:
    """A style with each axis drawn from its base distribution, except the axes in ``fixed``.

    A ``fixed`` value may be a tuple of allowed values, drawn from uniformly.
    """
    style: Style = {}
    for axis, values in AXES.items():
        allowed = (fixed or {}).get(axis, values)
        allowed = allowed if isinstance(allowed, tuple) else (allowed,)
        style[axis] = allowed[int(rng.integers(len(allowed)))]
    return style


def _side(value: float, low: str, high: str, margin: float) -> str | None:
    return low if value <= -margin else high if value >= margin else None


def measure(text: str, *, strict: bool = False) -> Style:
    """Reads every axis back from ``text`` with the persona metrics (None where a value is in no bucket).

    Args:
        text: A response.
        strict: Use the corpus's safety margins instead of the persona thresholds.
    """
    n_words = m.word_count(text)
    short, long_ = (CONCISE_MAX_WORDS, DETAILED_MIN_WORDS) if strict else (50, 90)
    margin = SCORE_MARGIN if strict else 0.25
    bullets = m.bullet_count(text)
    opener = "praise" if m.opening_praise(text) else "preamble" if m.preamble(text) else "none"
    return {
        "length": "concise" if n_words <= short else "detailed" if n_words >= long_ else None,
        "tone": _side(m.formality(text), "casual", "professional", margin),
        "level": _side(m.technicality(text), "beginner", "expert", margin),
        "emoji": m.emoji_count(text) >= 1,
        "lists": True if bullets >= 3 and bullets == m.markdown_count(text) else False if bullets == 0 else None,
        "opener": opener,
        "closing": m.closing_filler(text) >= 1,
        "first_person": m.first_person_count(text) >= 1,
        "exclaim": m.exclamation_count(text) >= 1,
        "question": m.question_count(text) >= 1,
        "alternatives": m.alternatives_count(text) >= 1,
    }


def _condition_axis(cond: Condition) -> tuple[str, tuple[object, ...]] | None:
    """The axis and values that satisfy one rule bound, or None if no axis models it."""
    lo, hi = cond.min, cond.max
    table: dict[str, tuple[str, object, object]] = {
        # metric: (axis, value when bounded above, value when bounded below)
        "word_count": ("length", "concise", "detailed"),
        "formality": ("tone", "casual", "professional"),
        "technicality": ("level", "beginner", "expert"),
        "emoji_count": ("emoji", False, True),
        "bullet_count": ("lists", False, True),
        "markdown_count": ("lists", False, True),
        "closing_filler": ("closing", False, True),
        "first_person_count": ("first_person", False, True),
        "exclamation_count": ("exclaim", False, True),
        "question_count": ("question", False, True),
        "alternatives_count": ("alternatives", False, True),
    }
    if cond.metric == "preamble" and hi is not None and hi < 1:
        return "opener", ("none",)
    if cond.metric == "opening_praise" and hi is not None and hi < 1:
        return "opener", ("none", "preamble")
    if cond.metric not in table:
        return None
    axis, below, above = table[cond.metric]
    if hi is not None and lo is None:
        return axis, (below,)
    if lo is not None and hi is None:
        return axis, (above,)
    return None


def preference_axes(pref: Preference) -> Style:
    """The axis values that satisfy a preference's rule (empty when no axis models it)."""
    out: Style = {}
    for cond in pref.rule:
        found = _condition_axis(cond)
        if found is not None:
            axis, values = found
            prior = out.get(axis)
            out[axis] = values if prior is None else tuple(v for v in values if v in prior)  # type: ignore[operator]
    return out


def persona_axes(persona: Persona) -> Style | None:
    """The axis values that satisfy every preference of ``persona``; None when two preferences conflict."""
    out: Style = {}
    for pref in persona.preferences:
        for axis, values in preference_axes(pref).items():
            prior = out.get(axis)
            merged = values if prior is None else tuple(v for v in values if v in prior)  # type: ignore[union-attr,operator,attr-defined]
            if not merged:
                return None
            out[axis] = merged
    return out
