"""The tiny model's training corpus: chats whose answers vary along the persona style axes.

Kinds of example (``MIX``):
- ``plain``: a question, answered in a base style (every axis drawn independently);
- ``complaint``: the last user turn carries the hindsight block with a complaint about one or two axes; the answer
  satisfies the complaint and keeps the base distribution on the other axes;
- ``unrelated``: the hindsight block carries an unrelated follow-up, a thank-you or a new question; base style;
- ``persona``: a persona profile as the system message; the answer satisfies all of the persona's rules;
- ``multi_turn``: an earlier exchange, then a new question or a complaint about the earlier answer.

Questions are the training pool's prompts and paraphrases of them; the held-out pool never enters the corpus.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass

import numpy as np

from sdpo_env.files import shipped_names
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.personas import Persona, default_unrelated_follow_ups, load_persona
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny.render import render
from sdpo_env.tiny.style import Style, persona_axes, preference_axes, sample_style

MIX = {"plain": 0.28, "complaint": 0.40, "unrelated": 0.12, "persona": 0.12, "multi_turn": 0.08}
Messages = list[dict[str, str]]
Direction = tuple[str, tuple[object, ...]]  # (axis, allowed values)

# Complaints in the personas' voice for each direction, beyond the personas' own follow-ups. Each says plainly
# which way to go ("shorter", never just "short"), because the model cannot tell ambiguous phrasings apart.
EXTRA_FOLLOW_UPS: dict[Direction, tuple[str, ...]] = {
    ("length", ("concise",)): ("Shorter please.", "Way too long, cut it down.", "Much shorter next time please."),
    ("length", ("detailed",)): ("Longer please, with more detail.", "Go into a lot more depth.",
                                "Please expand that into a fuller answer."),
    ("tone", ("casual",)): ("More casual please.", "Less formal, more chatty.", "Relax the tone, be casual."),
    ("tone", ("professional",)): ("More formal please.", "Less casual, more professional.",
                                  "Make the tone businesslike."),
    ("level", ("beginner",)): ("Simpler please, no jargon.", "Explain it for a total beginner.",
                               "Less technical please."),
    ("level", ("expert",)): ("More technical please.", "Use expert terminology.", "Give me the specialist version."),
    ("emoji", (False,)): ("No emojis.", "Remove the emojis please.", "Text only, no emojis."),
    ("emoji", (True,)): ("Add emojis please.", "Use some emojis.", "I like emojis, add a few."),
    ("lists", (True,)): ("Use bullet points.", "Make it a bulleted list.", "List the points as bullets."),
    ("lists", (False,)): ("No bullet points please.", "Write it as prose, no list.", "No lists, just sentences."),
    ("opener", ("none",)): ("Start with the answer itself.", "No opening line, answer right away.",
                            "Skip the intro sentence."),
    ("opener", ("none", "preamble")): ("Don't praise my question.", "No compliments about the question.",
                                       "Skip the 'great question' part."),
    ("closing", (False,)): ("No sign-off at the end.", "Drop the closing line.", "End without the 'hope this helps'."),
    ("first_person", (False,)): ("Don't use I or me.", "No first person.", "Keep yourself out of it."),
    ("exclaim", (False,)): ("No exclamation marks.", "Use periods, not exclamation points.", "Calm down the !!!"),
    ("question", (False,)): ("Don't ask me anything back.", "No questions at the end.", "Just answer, no questions."),
    ("alternatives", (False,)): ("Only one option please.", "No alternatives, just one answer.",
                                 "Give me a single recommendation."),
}
_PARAPHRASES = (
    (re.compile(r"^How (?:do|can) I (.+)\?$"), ("What's the best way to {0}?", "Any tips to {0}?",
                                                 "How should I {0}?", "Can you explain how to {0}?")),
    (re.compile(r"^(Why .+\?)$"), ("Quick question: {0}", "I was wondering: {0}")),
    (re.compile(r"^What is (.+)\?$"), ("Can you explain {0}?", "What exactly is {0}?")),
)


@dataclass(frozen=True)
class Question:
    """A question with its category (chooses nouns and emojis)."""

    text: str
    category: str


@functools.cache
def questions() -> tuple[Question, ...]:
    """The corpus's questions: the training pool plus paraphrases, minus anything in the held-out pool."""
    held_out = {_normal(p.text) for p in load_prompts("eval")}
    out: dict[str, Question] = {}
    for p in load_prompts("train"):
        texts = [p.text]
        for pattern, forms in _PARAPHRASES:
            found = pattern.match(p.text)
            if found:
                rest = found.group(1)
                texts += [f.format(rest) for f in forms]
        for text in texts:
            if _normal(text) not in held_out:
                out.setdefault(_normal(text), Question(text, p.category))
    return tuple(out.values())


def _normal(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


@functools.cache
def personas() -> tuple[Persona, ...]:
    """The shipped personas whose rules the style axes can express."""
    return tuple(p for p in (load_persona(n) for n in shipped_names("users")) if persona_axes(p) is not None)


@functools.cache
def complaint_pool() -> dict[Direction, tuple[str, ...]]:
    """Complaint phrasings per direction: the personas' follow-ups plus ``EXTRA_FOLLOW_UPS``."""
    pool: dict[Direction, list[str]] = {k: list(v) for k, v in EXTRA_FOLLOW_UPS.items()}
    for persona in personas():
        for pref in persona.preferences:
            for axis, values in preference_axes(pref).items():
                phrases = pool.setdefault((axis, values), [])  # type: ignore[arg-type]
                phrases += [f for f in pref.follow_ups if f not in phrases]
    return {k: tuple(v) for k, v in pool.items()}


@functools.cache
def neutral_follow_ups() -> tuple[str, ...]:
    """Follow-ups that say nothing about style: the unrelated pool and the personas' thank-yous."""
    thanks = {r for p in personas() for r in p.satisfied.replies}
    return (*default_unrelated_follow_ups(), *sorted(thanks))


def _pick(rng: np.random.Generator, items: tuple | list):
    return items[int(rng.integers(len(items)))]


def neutral_follow_up(rng: np.random.Generator) -> str:
    """A follow-up that says nothing about style: one of ``neutral_follow_ups()``, or in one of five another
    question."""
    return _pick(rng, neutral_follow_ups()) if rng.random() < 0.8 else _pick(rng, questions()).text


def sample_complaint(rng: np.random.Generator, max_directions: int = 2) -> tuple[str, Style]:
    """A follow-up complaining about one or two axes, and the axis values it asks for."""
    pool = complaint_pool()
    directions = list(pool)
    n = 1 if max_directions == 1 or rng.random() < 0.7 else 2
    chosen: Style = {}
    phrases = []
    for i in rng.permutation(len(directions)):
        axis, values = directions[int(i)]
        if axis in chosen:
            continue
        chosen[axis] = values
        phrases.append(_pick(rng, pool[(axis, values)]))
        if len(chosen) == n:
            break
    return " ".join(phrases), chosen


def render_answer(rng: np.random.Generator, question: Question, fixed: Style | None = None) -> str:
    """An answer to ``question`` in a style drawn with the ``fixed`` axes held (redrawn until one renders)."""
    while True:
        text = render(sample_style(rng, fixed), question.text, question.category, rng)
        if text is not None:
            return text


def example(rng: np.random.Generator, kind: str) -> Messages:
    """One chat of ``kind`` (a key of ``MIX``), ending with the assistant's answer."""
    qs = questions()
    question = _pick(rng, qs)
    messages: Messages = [{"role": "user", "content": question.text}]
    fixed: Style = {}
    if kind == "complaint":
        follow_up, fixed = sample_complaint(rng)
        messages = hindsight_messages(messages, follow_up)
    elif kind == "unrelated":
        messages = hindsight_messages(messages, neutral_follow_up(rng))
    elif kind == "persona":
        persona = _pick(rng, personas())
        if rng.random() < 0.4:  # combinations such as concise_casual_beginner + no_emojis
            combined = persona.plus(_pick(rng, personas()))
            persona = combined if persona_axes(combined) is not None else persona
        fixed = persona_axes(persona) or {}
        messages = [{"role": "system", "content": persona.profile}, *messages]
    elif kind == "multi_turn":
        earlier = _pick(rng, qs)
        history = [{"role": "user", "content": earlier.text},
                   {"role": "assistant", "content": render_answer(rng, earlier)}]
        if rng.random() < 0.5:  # the user complains about the earlier answer: answer it again, revised
            follow_up, fixed = sample_complaint(rng, max_directions=1)
            question = earlier
            messages = [*history, {"role": "user", "content": follow_up}]
        else:
            messages = [*history, *messages]
        if rng.random() < 0.3:
            messages = hindsight_messages(messages, _pick(rng, neutral_follow_ups()))
    elif kind != "plain":
        raise ValueError(f"unknown example kind {kind!r}; expected one of {sorted(MIX)}")
    return [*messages, {"role": "assistant", "content": render_answer(rng, question, fixed)}]


def corpus(n: int, seed: int, *, start: int = 0) -> list[Messages]:
    """Examples ``start .. start+n-1`` of the corpus for ``seed``; each depends only on (seed, index).

    Splitting the index range across worker processes therefore gives the same corpus as one process.
    """
    kinds, weights = list(MIX), np.array(list(MIX.values()))
    out = []
    for index in range(start, start + n):
        rng = np.random.default_rng([seed, index])
        out.append(example(rng, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]))
    return out
