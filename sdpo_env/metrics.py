"""Style metrics on a response text: the machine-checkable side of a persona's preferences.

Each metric is a pure function ``str -> float`` registered under a name that persona YAML files use in their rules
(``rule: {metric: word_count, max: 50}``). The offline user simulator, the rule judge and the tiny model's corpus
all read the same functions, so "concise" means one thing everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from sdpo_env.errors import UnknownNameError

MetricFn = Callable[[str], float]
METRICS: dict[str, MetricFn] = {}


def metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Registers a metric under ``name``; a duplicate name is a programming error."""

    def register(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = fn
        return fn

    return register


def get_metric(name: str) -> MetricFn:
    """Returns the metric called ``name``.

    Raises:
        UnknownNameError: no metric has that name (close matches are suggested).
    """
    if name not in METRICS:
        raise UnknownNameError("metric", name, METRICS)
    return METRICS[name]


# --- tokenisation helpers -------------------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z0-9\u00C0-\u024F][A-Za-z0-9\u00C0-\u024F'’\-]*")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\n+")
# Pictographs, dingbats, symbols and flags; variation selectors and joiners are not counted on their own.
_EMOJI = re.compile(
    "[\U0001f300-\U0001f5ff\U0001f600-\U0001f64f\U0001f680-\U0001f6ff\U0001f900-\U0001f9ff\U0001fa70-\U0001faff"
    "\u2600-\u26ff\u2700-\u27bf\u2b50\u2b55\u2b06\u2194-\u21aa\u23e9-\u23fa\u231a\u231b\u2934\u2935]"
    "|[\U0001f1e6-\U0001f1ff]{2}"
)
_EMOJI_MODIFIERS = re.compile("[\U0001f3fb-\U0001f3ff\ufe0f\u200d]")  # skin tones, VS16, ZWJ: part of one emoji
_BULLET = re.compile(r"^\s*(?:[-*•+]|\d{1,3}[.)])\s+\S", re.MULTILINE)
_HEADER = re.compile(r"^\s{0,3}#{1,6}\s+\S", re.MULTILINE)
_BOLD = re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__")


def words(text: str) -> list[str]:
    """The words of ``text`` (letters, digits, inner apostrophes and hyphens)."""
    return _WORD.findall(text)


def sentences(text: str) -> list[str]:
    """Splits ``text`` into sentences and list lines; pieces without a word are dropped."""
    pieces = (p.strip() for p in _SENTENCE_SPLIT.split(text))
    return [p for p in pieces if p and _WORD.search(p)]


def _has_phrase(text: str, phrases: tuple[str, ...]) -> int:
    lowered = text.lower()
    return sum(len(re.findall(r"(?<![a-z])" + re.escape(p) + r"(?![a-z])", lowered)) for p in phrases)


# --- counts ---------------------------------------------------------------------------------------------------------


@metric("word_count")
def word_count(text: str) -> float:
    """Number of words."""
    return float(len(words(text)))


@metric("char_count")
def char_count(text: str) -> float:
    """Number of characters after stripping surrounding whitespace."""
    return float(len(text.strip()))


@metric("sentence_count")
def sentence_count(text: str) -> float:
    """Number of sentences (a list item without final punctuation counts as one)."""
    return float(len(sentences(text)))


@metric("emoji_count")
def emoji_count(text: str) -> float:
    """Number of emoji and pictographic symbols."""
    return float(len(_EMOJI.findall(_EMOJI_MODIFIERS.sub("", text))))


@metric("bullet_count")
def bullet_count(text: str) -> float:
    """Number of list-item lines (``- x``, ``* x``, ``• x``, ``1. x``, ``2) x``)."""
    return float(len(_BULLET.findall(text)))


@metric("header_count")
def header_count(text: str) -> float:
    """Number of markdown headers (``# Title``)."""
    return float(len(_HEADER.findall(text)))


@metric("bold_count")
def bold_count(text: str) -> float:
    """Number of bold spans (``**x**`` or ``__x__``)."""
    return float(len(_BOLD.findall(text)))


@metric("markdown_count")
def markdown_count(text: str) -> float:
    """Bullets + headers + bold spans: how much markdown formatting the response uses."""
    return bullet_count(text) + header_count(text) + bold_count(text)


@metric("exclamation_count")
def exclamation_count(text: str) -> float:
    """Number of exclamation marks."""
    return float(text.count("!"))


@metric("question_count")
def question_count(text: str) -> float:
    """Number of questions the response asks back (sentences ending in ``?``)."""
    return float(sum(1 for s in sentences(text) if s.rstrip("\"')]").endswith("?")))


FIRST_PERSON = re.compile(r"\b(?:I|I'm|I’m|I've|I’ve|I'd|I’d|I'll|I’ll)\b|\b(?:me|my|mine|myself)\b", re.IGNORECASE)


@metric("first_person_count")
def first_person_count(text: str) -> float:
    """Number of first-person singular words (I, I'm, me, my, mine, myself)."""
    # A lone lower-case "i" is rare in replies and usually a typo for "I"; re.IGNORECASE keeps it.
    return float(len(FIRST_PERSON.findall(text)))


# --- openings and closings -------------------------------------------------------------------------------------------

OPENING_PRAISE = (
    "great question", "good question", "excellent question", "what a great question", "fantastic question",
    "awesome question", "love this question", "i love this question", "what a fun question", "great idea",
    "what a wonderful question", "that's a great question", "that is a great question", "brilliant question",
    "you're asking exactly the right question", "smart question", "such a good question", "love that you asked",
)
CLOSING_FILLER = (
    "hope this helps", "hope that helps", "i hope this helps", "let me know if", "feel free to ask",
    "feel free to reach out", "happy to help", "glad to help", "good luck", "happy cooking", "have fun",
    "don't hesitate to ask", "do not hesitate to", "enjoy", "best of luck", "i hope this was helpful",
    "hope this was helpful", "you've got this", "you got this",
)
PREAMBLE = (
    "sure", "certainly", "of course", "absolutely", "okay so", "ok so", "alright", "let me explain",
    "let me break", "let's break", "let's dive", "here's what you need to know", "here is what you need to know",
    "happy to help", "glad you asked", "i'd be happy to", "i would be happy to", "good question", "great question",
    "great idea", "that's a great question", "excellent question", "what a great question", "thanks for asking",
    "here's the thing", "so you want to know", "i can help with that", "no problem",
)


def _first_sentence(text: str) -> str:
    found = sentences(text)
    return found[0].lower() if found else ""


def _starts_with(sentence: str, phrases: tuple[str, ...]) -> bool:
    cleaned = re.sub(r"^[^a-z0-9]+", "", sentence)
    return any(re.match(re.escape(p) + r"(?![a-z])", cleaned) for p in phrases)


@metric("opening_praise")
def opening_praise(text: str) -> float:
    """1 if the response opens with filler praise of the question ("Great question!"), else 0."""
    return 1.0 if _starts_with(_first_sentence(text), OPENING_PRAISE) else 0.0


@metric("closing_filler")
def closing_filler(text: str) -> float:
    """1 if the last sentence is a filler sign-off ("Hope this helps!", "Let me know if ..."), else 0."""
    found = sentences(text)
    if len(found) < 2:  # a one-sentence answer has no separate closing
        return 0.0
    return 1.0 if _starts_with(found[-1].lower(), CLOSING_FILLER) else 0.0


@metric("preamble")
def preamble(text: str) -> float:
    """1 if the first sentence is a preamble ("Sure!", "Let me explain.") rather than the answer, else 0."""
    return 1.0 if _starts_with(_first_sentence(text), PREAMBLE) else 0.0


# --- scores in [-1, 1] ------------------------------------------------------------------------------------------------

CASUAL_MARKERS = (
    "hey", "yeah", "yep", "nope", "gonna", "wanna", "gotta", "kinda", "sorta", "super", "awesome", "cool", "stuff",
    "pretty much", "folks", "okay", "ok", "lol", "tbh", "totally", "no biggie", "no worries",
    "a bunch of", "tons of", "chill", "quick tip", "pro tip", "y'all", "dude",
)
PROFESSIONAL_MARKERS = (
    "therefore", "however", "furthermore", "additionally", "consequently", "moreover", "it is recommended",
    "it is advisable", "ensure", "approximately", "regarding", "in summary", "in conclusion", "one should",
    "utilize", "appropriate", "subsequently", "thus", "accordingly", "it is important to note", "in addition",
    "significant", "sufficient", "prior to", "in order to", "to summarize", "please note",
)
_CONTRACTION = re.compile(r"\b[a-z]+(?:n't|'re|'ll|'ve|'s|'d|'m)\b|\b[a-z]+(?:n’t|’re|’ll|’ve|’s|’d|’m)\b", re.I)


def _balance(positive: float, negative: float) -> float:
    total = positive + negative
    return 0.0 if total == 0 else (positive - negative) / total


@metric("formality")
def formality(text: str) -> float:
    """Professional vs casual register in [-1, 1]: (professional - casual markers) / all markers; 0 with none.

    Casual markers are slang and chatty words ("hey", "gonna", "super", "stuff") plus contractions and exclamation
    marks; professional markers are connectives and phrasing of formal writing ("therefore", "additionally",
    "it is recommended").
    """
    casual = _has_phrase(text, CASUAL_MARKERS) + len(_CONTRACTION.findall(text)) + text.count("!")
    professional = _has_phrase(text, PROFESSIONAL_MARKERS)
    return _balance(float(professional), float(casual))


BEGINNER_MARKERS = (
    "in simple terms", "simply put", "think of it like", "think of it as", "imagine", "it's like", "it is like",
    "kind of like", "a bit like", "don't worry", "the idea is", "for example", "basically", "in plain words",
    "put simply", "the easy way", "step by step", "no need to", "a simple way", "just like", "in other words",
)
EXPERT_MARKERS = (
    "specifically", "mechanism", "trade-off", "tradeoff", "empirically", "parameter", "optimal", "optimise",
    "optimize", "architecture", "throughput", "latency", "equilibrium", "heuristic", "canonical", "nuance",
    "variance", "threshold", "coefficient", "marginal", "asymptotic", "kinetics", "protocol", "substrate",
    "calibrate", "quantify", "constraint", "leverage", "amortize", "amortise", "metabolic", "thermodynamic",
    "stochastic", "compound interest", "liquidity", "hydrolysis", "oxidation", "regression", "latent", "in practice",
    "configuration", "precisely", "rigorous", "systematic", "granular", "baseline",
)


@metric("technicality")
def technicality(text: str) -> float:
    """Expert vs beginner level in [-1, 1]: (expert - beginner markers) / all markers; 0 with none.

    Beginner markers are plain-language explanation devices ("in simple terms", "think of it like", "imagine");
    expert markers are technical vocabulary ("mechanism", "trade-off", "throughput", "specifically").
    """
    return _balance(float(_has_phrase(text, EXPERT_MARKERS)), float(_has_phrase(text, BEGINNER_MARKERS)))


ALTERNATIVE_MARKERS = (
    "alternatively", "another option", "another way", "other option", "option 1", "option 2", "option a",
    "option b", "you could also", "or you could", "you can also", "one option", "a second option",
    "another approach", "or else", "instead, you could", "if you prefer",
)


@metric("alternatives_count")
def alternatives_count(text: str) -> float:
    """Number of alternative options offered ("alternatively", "another option", "you could also")."""
    return float(_has_phrase(text, ALTERNATIVE_MARKERS))
