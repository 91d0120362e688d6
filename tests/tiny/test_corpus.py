"""The tiny model's corpus: the labels it intends are the labels the persona metrics measure."""

from __future__ import annotations

import numpy as np
import pytest

from sdpo_env.hindsight import DEFAULT_TEMPLATE
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny.corpus import MIX, complaint_pool, corpus, example, personas, questions
from sdpo_env.tiny.render import render, subject_of
from sdpo_env.tiny.style import AXES, measure, persona_axes, preference_axes, sample_style

HINDSIGHT_HEADER = DEFAULT_TEMPLATE.split("{follow_up}")[0]


def test_rendered_answers_have_the_style_they_were_rendered_in() -> None:
    rng = np.random.default_rng(0)
    qs = questions()
    found = 0
    for _ in range(300):
        style = sample_style(rng)
        q = qs[int(rng.integers(len(qs)))]
        text = render(style, q.text, q.category, rng)
        if text is not None:  # the corpus draws a new style when none is found
            found += 1
            assert measure(text) == style, text
    assert found >= 285


def test_every_axis_value_is_produced() -> None:
    seen = {axis: set() for axis in AXES}
    for chat in corpus(400, 1):
        for axis, value in measure(chat[-1]["content"]).items():
            seen[axis].add(value)
    for axis, values in AXES.items():
        assert set(values) <= seen[axis], axis


@pytest.mark.parametrize("persona", personas(), ids=lambda p: p.name)
def test_answers_for_each_complaint_satisfy_it(persona) -> None:
    rng = np.random.default_rng(2)
    for pref in persona.preferences:
        fixed = preference_axes(pref)
        assert fixed, f"{pref.name}: no style axis models this rule"
        assert pref.follow_ups[0] in complaint_pool()[next(iter(fixed.items()))]
        for _ in range(20):
            text = render(sample_style(rng, fixed), "How do I keep basil alive indoors?", "gardening", rng)
            assert text is None or pref.satisfied_by(text), (pref.name, text)


@pytest.mark.parametrize("persona", personas(), ids=lambda p: p.name)
def test_persona_answers_satisfy_every_rule(persona) -> None:
    rng = np.random.default_rng(3)
    fixed = persona_axes(persona)
    assert fixed is not None
    for _ in range(10):
        text = render(sample_style(rng, fixed), "Why does bread go stale?", "cooking", rng)
        assert text is None or all(persona.satisfaction(text).values()), text


def test_complaint_examples_carry_the_hindsight_block_and_satisfy_it() -> None:
    rng = np.random.default_rng(4)
    pool = complaint_pool()
    for _ in range(60):
        chat = example(rng, "complaint")
        user = chat[-2]["content"]
        assert HINDSIGHT_HEADER in user
        follow_up = user.split(HINDSIGHT_HEADER)[1]
        answer = measure(chat[-1]["content"])
        # Every direction whose phrasing appears in the follow-up is satisfied by the answer.
        for (axis, values), phrases in pool.items():
            if any(p == follow_up or follow_up.startswith(p + " ") or follow_up.endswith(" " + p) for p in phrases):
                assert answer[axis] in values, (follow_up, chat[-1]["content"])


def test_no_held_out_prompt_enters_the_corpus() -> None:
    held_out = {p.text.lower() for p in load_prompts("eval")}
    assert not held_out & {q.text.lower() for q in questions()}
    for chat in corpus(300, 5):
        for m in chat:
            assert m["content"].split("\n\n=== HINDSIGHT")[0].lower() not in held_out


def test_corpus_depends_only_on_seed_and_index() -> None:
    assert corpus(3, 7, start=2) == corpus(5, 7)[2:]
    assert corpus(3, 7) != corpus(3, 8)


def test_every_kind_ends_with_an_assistant_answer() -> None:
    rng = np.random.default_rng(6)
    for kind in MIX:
        chat = example(rng, kind)
        assert chat[-1]["role"] == "assistant" and chat[-2]["role"] == "user"
    with pytest.raises(ValueError, match="unknown example kind"):
        example(rng, "nope")


def test_subject_speaks_to_the_user() -> None:
    assert subject_of("How can I make my soup less salty?") == "make your soup less salty"
    assert subject_of("What is compound interest?") == "compound interest"
