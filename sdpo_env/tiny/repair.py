"""Repair examples: after a complaint, the hindsight model continues an answer that *already* breaks it.

SDPO asks the hindsight model about every token of the policy's answer, ``pi(y_t | x, o, y_<t)``, and that answer
usually violates the complaint in ``o`` (that is why the user complained). A corpus whose complaint examples only
hold compliant answers never shows the model such a prefix, and the model learns to continue whatever style the
prefix set: its advantages then sit on the first token and fade along the answer ("too long" stops penalising the
fifth sentence of a long answer). A repair example cuts an answer in the complained-about style at a unit boundary
(or just before an emoji or an exclamation mark) and continues it in the asked-for style; the loss covers only the
continuation (``prefix`` marks where it starts). The continuation keeps the answer's nouns and its other axes.
"""

from __future__ import annotations

import re

import numpy as np

from sdpo_env import metrics as m
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.tiny import phrases as ph
from sdpo_env.tiny.corpus import Direction, Messages, Question, complaint_pool, questions
from sdpo_env.tiny.render import Unit, draw_nouns, join_units, render_units
from sdpo_env.tiny.style import AXES, Style, sample_style

TAIL = ("alternatives", "question", "closing")
# Directions a repair can teach; an opener is decided at the first token, where ordinary examples already teach it.
REPAIRABLE_AXES = ("length", "tone", "level", "lists", "emoji", "exclaim", "first_person", *TAIL)
Cut = tuple[str, str]  # (prefix the model is shown, continuation it learns)


def _pick(rng: np.random.Generator, items):
    return items[int(rng.integers(len(items)))]


class _NoRender(Exception):
    """No answer in the style could be rendered with these nouns (the caller draws another question)."""


def _answer(rng: np.random.Generator, style: Style, question: Question, nouns: tuple[str, str]) -> list[Unit]:
    units = render_units(style, question.text, question.category, rng, nouns)
    if units is None:
        raise _NoRender
    return units


def _tail_start(units: list[Unit]) -> int:
    return next((i for i, u in enumerate(units) if u.kind in TAIL), len(units))


def _lead_end(units: list[Unit]) -> int:
    return next(i for i, u in enumerate(units) if u.kind == "lead") + 1


def _words(text: str) -> str:
    """A unit's words, without emojis or punctuation: the same sentence however it was decorated."""
    return " ".join(re.findall(r"[a-z']+", text.lower()))


def _continue(prefix: list[Unit], rest: list[Unit]) -> str:
    """``rest`` as it follows ``prefix``: units already in the prefix dropped, separators mended."""
    seen = {_words(u.text) for u in prefix}
    rest = [u for u in rest if _words(u.text) not in seen]
    if not rest:
        return ""
    after_list = prefix[-1].kind == "bullet"
    first = rest[0]
    sep = "\n" if first.kind == "bullet" or after_list else " "
    return join_units([first._replace(sep=sep), *[u._replace(sep="\n" if u.kind == "bullet" else u.sep)
                                                 for u in rest[1:]]])


def _turn(prefix: list[Unit], rest: list[Unit]) -> Cut | None:
    """A cut that must go on in the other style (None when nothing new is left to say)."""
    continuation = _continue(prefix, rest)
    return (join_units(prefix), continuation) if continuation.strip() else None


def _strip_emojis(units: list[Unit], emojis: tuple[str, ...]) -> list[Unit]:
    out = []
    for u in units:
        text = u.text
        for e in emojis:
            text = text.replace(" " + e, "")
        out.append(u._replace(text=text))
    return out


def cut(rng: np.random.Generator, direction: Direction, question: Question) -> Cut | None:
    """A repair of one complaint direction on ``question``; None when the direction has no repair."""
    axis, wanted = direction
    if axis not in REPAIRABLE_AXES:
        return None
    bad = tuple(v for v in AXES[axis] if v not in wanted)
    if not bad:
        return None
    style = sample_style(rng, {axis: bad})
    nouns = draw_nouns(rng, question.category)
    answer = _answer(rng, style, question, nouns)
    body_end, lead_end = _tail_start(answer), _lead_end(answer)

    def rewritten() -> list[Unit]:  # the same answer plan in the asked-for value, with the same nouns
        return _answer(rng, {**style, axis: _pick(rng, wanted)}, question, nouns)

    if axis == "length" and wanted == ("concise",):  # stop at any sentence past the lead
        k = int(rng.integers(lead_end, len(answer)))
        return join_units(answer[:k]), ""
    if axis == "length":  # a short answer goes on instead of ending (or closing)
        longer = rewritten()
        prefix = answer[:body_end]
        rest = [u for u in longer if u.kind == "body"] + longer[_tail_start(longer):]
        return _turn(prefix, rest)
    if axis in ("tone", "level"):
        k = int(rng.integers(lead_end, body_end + 1))
        other = rewritten()
        return _turn(answer[:k], other[min(k, len(other)):])
    if axis == "lists" and wanted == (True,):
        k = int(rng.integers(lead_end, body_end + 1))
        listed = rewritten()
        start = next(i for i, u in enumerate(listed) if u.kind in ("intro", "bullet"))
        return _turn(answer[:k], listed[start:])
    if axis == "lists":  # break off the list (before it or inside it) and go on in prose
        items = [i for i, u in enumerate(answer) if u.kind in ("intro", "bullet")]
        k = int(rng.integers(items[0], items[-1] + 1))
        prose = rewritten()
        return _turn(answer[:k], prose[_lead_end(prose):])
    if axis == "emoji" and wanted == (False,):  # stop before one emoji; no more after it
        emojis = tuple({e for bank in ph.EMOJIS.values() for e in bank})
        marked = [i for i, u in enumerate(answer) if m.emoji_count(u.text) > 0]
        i = _pick(rng, marked)
        clean = _strip_emojis(answer, emojis)
        return join_units([*answer[:i], clean[i]]), join_units(clean[i + 1 :])
    if axis == "emoji":  # an emoji after one sentence
        i = int(rng.integers(len(answer)))
        emoji = _pick(rng, ph.EMOJIS.get(question.category, ()) + ph.EMOJIS[""])
        return join_units(answer[: i + 1]), " " + emoji + join_units(answer[i + 1 :])
    if axis == "exclaim":  # a full stop where the answer has an exclamation mark, and none after it
        marked = [i for i, u in enumerate(answer) if "!" in u.text]
        i = _pick(rng, marked)
        text = answer[i].text
        at = text.index("!")
        calm = [u._replace(text=u.text.replace("!", ".")) for u in answer[i + 1 :]]
        return (join_units(answer[:i]) + answer[i].sep + text[:at],
                "." + text[at + 1 :].replace("!", ".") + join_units(calm))
    if axis == "first_person":  # drop the sentences about the assistant
        own = [i for i, u in enumerate(answer) if i > 0 and m.first_person_count(u.text) > 0]
        if not own:
            return None
        i = own[0]
        rest = [u for u in answer[i + 1 :] if m.first_person_count(u.text) == 0]
        return join_units(answer[:i]), _continue(answer[:i], rest)
    # alternatives, a question back, a closing line: leave that unit out
    i = next(j for j, u in enumerate(answer) if u.kind == axis)
    return join_units(answer[:i]), _continue(answer[:i], answer[i + 1 :])


def repairable_directions() -> list[Direction]:
    """The single-axis complaint directions a repair example can teach."""
    return [d for d in complaint_pool() if d[0] in REPAIRABLE_AXES and any(v not in d[1] for v in AXES[d[0]])]


def repair_example(rng: np.random.Generator, direction: Direction | None = None) -> Messages:
    """A complaint in the hindsight block and an answer whose first part breaks it (not trained on: ``prefix``).

    Args:
        rng: The only source of randomness.
        direction: The complaint direction; one of ``repairable_directions()`` drawn when None.
    """
    directions = [direction] if direction is not None else repairable_directions()
    while True:
        chosen = _pick(rng, directions)
        question = _pick(rng, questions())
        try:
            found = cut(rng, chosen, question)
        except _NoRender:
            continue
        if found is not None:
            break
    prefix, continuation = found
    messages = hindsight_messages([{"role": "user", "content": question.text}],
                                  _pick(rng, complaint_pool()[chosen]))
    return [*messages, {"role": "assistant", "content": prefix + continuation, "prefix": prefix}]
