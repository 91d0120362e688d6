"""Assembling one answer in a given style from the phrase banks, verified against the metrics (rejection sampling)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from sdpo_env.tiny import phrases as ph
from sdpo_env.tiny.style import Style, measure

MAX_TRIES = 60
MAX_DETAILED_WORDS = 140  # keeps a detailed answer well inside 192 new tokens
_PREFIXES = re.compile(
    r"^(?:quick question:\s*|i was wondering:\s*)?(?:what's the best way to\s+"
    r"|can you explain (?:how to|why)?\s*|what exactly is\s+|any tips to\s+"
    r"|how (?:do|can|should|does|much|often|long) (?:i|you|we|it|a|an|the)?\s*"
    r"|what (?:is|are|does|should i|can i|causes|makes)\s+|why (?:does|do|is|are|did|should)\s+|is it\s+"
    r"|should i\s+|can i\s+|any tips (?:on|for)\s+|help me\s+|write (?:a|an)\s+|when should i\s+|what\s+)",
    re.IGNORECASE,
)

# The answer speaks to the user: "my soup" in the question is "your soup" in the answer (and no first person leaks).
_SWAP = {"i": "you", "me": "you", "my": "your", "mine": "yours", "myself": "yourself", "i'm": "you're",
         "i've": "you've", "i'd": "you'd", "i'll": "you'll"}
_PRONOUNS = re.compile(r"\b(?:i'm|i've|i'd|i'll|i|me|my|mine|myself)\b", re.IGNORECASE)


def subject_of(question: str) -> str:
    """The subject phrase of a question: the question without its opening words and final punctuation.

    >>> subject_of("How do I cook rice so it is not sticky?")
    'cook rice so it is not sticky'
    """
    text = question.strip().splitlines()[0] if question.strip() else "this"
    text = re.sub(r"[?.!]+$", "", text.strip())
    stripped = _PREFIXES.sub("", text, count=1).strip()
    subject = stripped or text
    subject = _PRONOUNS.sub(lambda found: _SWAP[found.group(0).lower()], subject)
    return subject[0].lower() + subject[1:] if subject else "this"


class Unit(NamedTuple):
    """One sentence or list line of an answer: the answer is ``"".join(u.sep + u.text for u in units)``.

    ``kind`` is where the unit sits: ``head`` (praise or preamble), ``lead``, ``intro`` (of a list), ``bullet``,
    ``body``, ``first_person`` (the sentence about the assistant), ``alternatives``, ``question`` or ``closing``.
    """

    kind: str
    sep: str  # what joins it to the unit before: "" for the first, else " " or a newline
    text: str


def join_units(units: Sequence[Unit]) -> str:
    """The answer text of ``units``."""
    return "".join(u.sep + u.text for u in units)


def draw_nouns(rng: np.random.Generator, category: str) -> tuple[str, str]:
    """Two different nouns of ``category``: the ``{a}`` and ``{b}`` of one answer."""
    nouns = ph.NOUNS.get(category) or ph.NOUNS["home"]
    first, second = rng.choice(len(nouns), size=2, replace=False)
    return nouns[int(first)], nouns[int(second)]


class _Parts:
    """Draws phrases for one answer: the subject and two category nouns filled in (drawn unless given)."""

    def __init__(self, rng: np.random.Generator, subject: str, category: str,
                 nouns: tuple[str, str] | None = None):
        self.rng = rng
        a, b = nouns or draw_nouns(rng, category)
        self.fill = {"S": subject, "a": a, "b": b}
        self.emojis = ph.EMOJIS.get(category, ()) + ph.EMOJIS[""]

    def pick(self, bank: tuple[str, ...]) -> str:
        return bank[int(self.rng.integers(len(bank)))].format(**self.fill)

    def sample(self, bank: tuple[str, ...], k: int) -> list[str]:
        order = self.rng.permutation(len(bank))[:k]
        return [bank[int(i)].format(**self.fill) for i in order]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _n_words(pieces: list[str]) -> int:
    return sum(len(p.split()) for p in pieces)


def _compose(style: Style, parts: _Parts) -> list[Unit]:
    rng = parts.rng
    tone, level = str(style["tone"]), str(style["level"])
    key = (tone, level)
    fp = bool(style["first_person"])
    concise = style["length"] == "concise"
    head: list[str] = []
    if style["opener"] == "praise":
        head.append(parts.pick(ph.PRAISE_FIRST_PERSON if fp and rng.random() < 0.3 else ph.PRAISE[tone]))
    elif style["opener"] == "preamble":
        head.append(parts.pick(ph.PREAMBLE_FIRST_PERSON[tone] if fp and rng.random() < 0.3 else ph.PREAMBLE[tone]))
    tail: list[str] = []
    if style["alternatives"]:
        tail.append(parts.pick(ph.ALTERNATIVES[tone]))
    if style["question"]:
        tail.append(parts.pick(ph.QUESTIONS_FIRST_PERSON if fp and rng.random() < 0.3 else ph.QUESTIONS[tone]))
    if style["closing"]:
        tail.append(parts.pick(ph.CLOSING_FIRST_PERSON if fp and rng.random() < 0.3 else ph.CLOSING[tone]))
    extra = [parts.pick(ph.FIRST_PERSON[tone])] if fp else []
    lead = parts.pick(ph.LEADS[key])
    framed = parts.pick(ph.FRAMES) + " " + lead
    bullets: list[str] = []
    if style["lists"]:
        n_items = 3 if concise else int(rng.integers(4, 6))
        items = parts.sample(ph.SHORT_ITEMS[tone] if concise else ph.ITEMS[key], n_items)
        bullets = ["- " + item for item in items]
    if concise:
        # The frame repeats the question's subject; drop it when the answer would run long.
        fixed = _n_words(head + tail + extra + bullets)
        first = framed if fixed + len(framed.split()) <= 40 else lead
        intro: list[str] = []
        body = extra
        if not bullets and fixed + len(first.split()) < 22:
            body = [*parts.sample(ph.BODY[key], 1), *extra]
    else:
        first = framed
        intro = [parts.pick(ph.LIST_INTROS[tone])] if bullets else []
        body = list(extra)
        pool = list(parts.sample(ph.BODY[key], len(ph.BODY[key])))
        target = ph.DETAILED_TARGET_WORDS + int(rng.integers(0, 12))
        while pool and _n_words([*head, first, *intro, *bullets, *body, *tail]) < target:
            body.insert(int(rng.integers(len(body) + 1)), pool.pop())
    own = body.index(extra[0]) if extra else -1  # the first-person sentence (before punctuation changes)
    sentences = [*head, _capital(first), *intro]
    if style["exclaim"]:
        sentences, body, tail = _exclaim(rng, sentences, body, tail, limit=1 if tone == "professional" else 2)
    if style["emoji"]:
        sentences, body, tail, bullets = _emojify(parts, sentences, body, tail, bullets)
    kinds = ["head"] * len(head) + ["lead"] + ["intro"] * len(intro)
    units = [Unit(kind, " " if i else "", text) for i, (kind, text) in enumerate(zip(kinds, sentences))]
    units += [Unit("bullet", "\n", b) for b in bullets]
    body_kinds = ["first_person" if i == own else "body" for i in range(len(body))]
    tail_kinds = [k for k, on in (("alternatives", style["alternatives"]), ("question", style["question"]),
                                  ("closing", style["closing"])) if on]
    for i, (kind, text) in enumerate(zip([*body_kinds, *tail_kinds], [*body, *tail])):
        units.append(Unit(kind, "\n" if bullets and i == 0 else " ", text))
    return units


def _exclaim(rng: np.random.Generator, *groups: list[str], limit: int) -> tuple[list[str], ...]:
    """Turns the full stop of one to ``limit`` sentences into an exclamation mark."""
    flat = [(g, i) for g, group in enumerate(groups) for i, s in enumerate(group) if s.endswith(".")]
    out = [list(group) for group in groups]
    for k in rng.permutation(len(flat))[: int(rng.integers(1, limit + 1))]:
        g, i = flat[int(k)]
        out[g][i] = out[g][i][:-1] + "!"
    return tuple(out)


def _emojify(parts: _Parts, *groups: list[str]) -> tuple[list[str], ...]:
    """Appends an emoji to one to three sentences or list items."""
    flat = [(g, i) for g, group in enumerate(groups) for i in range(len(group))]
    out = [list(group) for group in groups]
    for k in parts.rng.permutation(len(flat))[: int(parts.rng.integers(1, 4))]:
        g, i = flat[int(k)]
        out[g][i] = out[g][i] + " " + parts.pick(parts.emojis)
    return tuple(out)


def render_units(style: Style, question: str, category: str, rng: np.random.Generator,
                 nouns: tuple[str, str] | None = None) -> list[Unit] | None:
    """An answer to ``question`` in ``style`` whose measured style equals ``style``, as units; None if none was found.

    Args:
        style: One value per axis (see ``style.AXES``).
        question: The user's question; its subject is reused in the answer.
        category: The question's category (chooses nouns and emojis).
        rng: The only source of randomness.
        nouns: The answer's two nouns; drawn for each attempt when None.
    """
    subject = subject_of(question)
    for _ in range(MAX_TRIES):
        units = _compose(style, _Parts(rng, subject, category, nouns))
        text = join_units(units)
        if len(text.split()) <= MAX_DETAILED_WORDS and measure(text, strict=True) == style:
            return units
    return None


def render(style: Style, question: str, category: str, rng: np.random.Generator) -> str | None:
    """``render_units`` as text."""
    units = render_units(style, question, category, rng)
    return None if units is None else join_units(units)
