"""Repair examples: an answer that breaks the complaint, continued in the asked-for style; loss on the turn only."""

from __future__ import annotations

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from sdpo_env import metrics as m
from sdpo_env.hindsight import PAPER_SENTENCE
from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.corpus import questions
from sdpo_env.tiny.refine import refine_examples
from sdpo_env.tiny.render import join_units, render, render_units
from sdpo_env.tiny.repair import repair_example, repairable_directions
from sdpo_env.tiny.style import sample_style


def _cuts(direction, n: int = 24, seed: int = 0) -> list[tuple[str, str]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        answer = repair_example(rng, direction)[-1]
        assert answer["content"].startswith(answer["prefix"]) and answer["prefix"].strip()
        out.append((answer["prefix"], answer["content"][len(answer["prefix"]) :]))
    return out


def test_units_join_to_the_rendered_answer_and_name_their_parts() -> None:
    rng = np.random.default_rng(3)
    for _ in range(60):
        style = sample_style(rng)
        q = questions()[int(rng.integers(len(questions())))]
        seed = int(rng.integers(1 << 30))
        text = render(style, q.text, q.category, np.random.default_rng(seed))
        units = render_units(style, q.text, q.category, np.random.default_rng(seed))
        if text is None:
            assert units is None
            continue
        assert units is not None and join_units(units) == text
        kinds = [u.kind for u in units]
        assert (kinds[0] == "head") == (style["opener"] != "none")
        assert (kinds.count("bullet") >= 3) == bool(style["lists"])
        assert ("first_person" in kinds) == bool(style["first_person"])
        tail = [k for k in kinds if k in ("alternatives", "question", "closing")]
        assert tail == [k for k in ("alternatives", "question", "closing") if style[k]]
        assert kinds[-len(tail) :] == tail if tail else True


def test_every_repairable_direction_has_examples() -> None:
    names = {d for d in repairable_directions()}
    assert ("length", ("concise",)) in names and ("lists", (False,)) in names and ("emoji", (True,)) in names
    for direction in repairable_directions():
        assert len(_cuts(direction, n=3)) == 3


@pytest.mark.parametrize("direction, check", [
    (("length", ("concise",)), lambda pre, cont: cont == "" and m.word_count(pre) >= 5),
    (("length", ("detailed",)), lambda pre, cont: m.word_count(pre) <= 50 and m.word_count(cont) >= 10),
    (("emoji", (False,)), lambda pre, cont: m.emoji_count(cont) == 0),
    (("emoji", (True,)), lambda pre, cont: m.emoji_count(pre) == 0 and m.emoji_count(cont.split()[0]) == 1),
    (("exclaim", (False,)), lambda pre, cont: cont.startswith(".") and "!" not in cont),
    (("lists", (True,)), lambda pre, cont: m.bullet_count(pre) == 0 and m.bullet_count(cont) >= 3),
    (("lists", (False,)), lambda pre, cont: m.bullet_count(cont) == 0 and m.word_count(cont) >= 3),  # cut before
    # the list or inside it
    (("closing", (False,)), lambda pre, cont: m.closing_filler(cont) == 0),
    (("question", (False,)), lambda pre, cont: m.question_count(cont) == 0),
    (("alternatives", (False,)), lambda pre, cont: m.alternatives_count(cont) == 0),
    (("first_person", (False,)), lambda pre, cont: m.first_person_count(cont) == 0),
])
def test_the_continuation_turns_to_the_asked_for_style(direction, check) -> None:
    for prefix, continuation in _cuts(direction):
        assert check(prefix, continuation), (prefix, continuation)


@pytest.mark.parametrize("direction, metric, sign", [
    (("tone", ("casual",)), m.formality, -1), (("tone", ("professional",)), m.formality, 1),
    (("level", ("beginner",)), m.technicality, -1), (("level", ("expert",)), m.technicality, 1),
])
def test_tone_and_level_turn_part_way(direction, metric, sign) -> None:
    cuts = [(p, c) for p, c in _cuts(direction, n=40) if m.word_count(c) >= 12]
    assert len(cuts) >= 15
    turned = [sign * (metric(c) - metric(p)) > 0 for p, c in cuts]
    assert np.mean(turned) >= 0.8, cuts


def test_the_answer_keeps_its_nouns() -> None:
    # The turn must not switch what the answer talks about: prefix and continuation together name at most the
    # answer's two category nouns (a fresh rendering would bring two others).
    from sdpo_env.tiny import phrases as ph

    templates = " ".join(str(v) for k, v in vars(ph).items() if k.isupper() and k not in ("NOUNS", "EMOJIS"))
    bank = {n for nouns in ph.NOUNS.values() for n in nouns if n not in templates}  # not "practice" ("In practice")
    rng = np.random.default_rng(5)
    for _ in range(40):
        chat = repair_example(rng, ("tone", ("professional",)))
        text = " " + chat[-1]["content"].replace(".", " ").replace(",", " ").replace(";", " ") + " "
        question = chat[0]["content"].split("\n")[0]
        named = {n for n in bank if f" {n} " in text and n not in question}
        assert len(named) <= 2, (named, chat[-1])


def test_examples_carry_a_complaint_and_are_deterministic() -> None:
    a = [repair_example(np.random.default_rng([1, i])) for i in range(30)]
    assert a == [repair_example(np.random.default_rng([1, i])) for i in range(30)]
    assert all(PAPER_SENTENCE in chat[0]["content"] for chat in a)


def test_only_the_continuation_is_trained() -> None:
    from sdpo_env.tiny.train import encode

    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_DIR)
    rng = np.random.default_rng(2)
    chats = [repair_example(rng) for _ in range(200)]
    for chat, (ids, start) in zip(chats, encode(tokenizer, chats)):
        answer = chat[-1]
        continuation = answer["content"][len(answer["prefix"]) :]
        assert ids[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ids[start:-1]) == continuation
    plain = [[{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello there."}]]
    (ids, start), = encode(tokenizer, plain)
    assert tokenizer.decode(ids[start:-1]) == "Hello there."


def test_refine_mixes_in_repairs_by_share() -> None:
    none = refine_examples(100, seed=1, focus_share=0.2)
    assert none == refine_examples(100, seed=1, focus_share=0.2, repair_share=0.0)
    assert not any("prefix" in chat[-1] for chat in none)
    mixed = refine_examples(200, seed=1, focus_share=0.2, repair_share=0.4)
    share = np.mean(["prefix" in chat[-1] for chat in mixed])
    assert 0.3 <= share <= 0.5
    assert all("prefix" in chat[-1] for chat in refine_examples(20, seed=1, focus_share=0.0, repair_share=1.0))
