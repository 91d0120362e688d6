"""The refinement stage: focused complaint examples, and a short refine of a miniature build that loads again."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

from sdpo_env.hindsight import PAPER_SENTENCE
from sdpo_env.tiny.build import main as build_main
from sdpo_env.tiny.corpus import complaint_pool, neutral_follow_ups, questions
from sdpo_env.tiny.refine import (
    FOCUS,
    RefineConfig,
    direction_name,
    focused_example,
    history_example,
    parse_direction,
    phrasing_direction,
    refine,
    refine_examples,
)
from sdpo_env.tiny.refine import main as refine_main
from sdpo_env.tiny.repair import repairable_directions
from sdpo_env.tiny.style import measure
from sdpo_env.tiny.train import TrainConfig


def test_history_examples_end_in_hindsight_and_follow_every_complaint_in_them(refine_cli) -> None:
    direction_of = {phrase: d for d, phrases in complaint_pool().items() for phrase in phrases}
    rng, turns, hindsight_kinds = np.random.default_rng(0), set(), set()
    for _ in range(60):
        chat = history_example(rng)
        users = [m["content"] for m in chat if m["role"] == "user"]
        turns.add(len(users))
        last, _, follow_up = users[-1].partition("\n\n=== HINDSIGHT CONTEXT ===\n[" + PAPER_SENTENCE + "]\n")
        assert follow_up and "HINDSIGHT" not in "".join(users[:-1]) and chat[-1]["role"] == "assistant"
        complaints = [*users[1:-1], last]  # every user turn after the request is a complaint
        hindsight_kinds.add(follow_up in direction_of)
        if follow_up in direction_of:
            complaints.append(follow_up)
        else:
            assert follow_up in {*neutral_follow_ups(), *(q.text for q in questions())}
        wanted = [direction_of[c] for c in complaints]
        assert len({axis for axis, _ in wanted}) == len(wanted)  # each about another axis
        style = measure(chat[-1]["content"])
        assert all(style[axis] in values for axis, values in wanted), (wanted, chat[-1]["content"])
        if len(users) == 3:  # the answer between the two complaints follows the first
            axis, values = wanted[0]
            assert measure(chat[3]["content"])[axis] in values
    assert turns == {2, 3} and hindsight_kinds == {True, False}
    shares = refine_examples(200, seed=1, focus_share=0.0, history_share=0.5)
    assert 70 < sum(len([m for m in c if m["role"] == "user"]) > 1 and PAPER_SENTENCE in c[-2]["content"]
                    for c in shares) < 130

    given = refine_cli.config("--history-share", "0.3")
    assert given.history_share == 0.3 and given.focus_share == RefineConfig().focus_share
    assert "--history-share 0.3" in refine_cli.refused("--focus-share", "0.8", "--history-share", "0.3")


def test_focused_examples_satisfy_their_direction() -> None:
    rng = np.random.default_rng(0)
    for axis, values in FOCUS:
        for _ in range(5):
            chat = focused_example(rng, (axis, values))
            assert PAPER_SENTENCE in chat[-2]["content"]
            assert measure(chat[-1]["content"])[axis] in values, (axis, values, chat[-1]["content"])


def test_refine_examples_are_deterministic_and_focused_in_share() -> None:
    a = refine_examples(200, seed=1, focus_share=0.5)
    assert a == refine_examples(200, seed=1, focus_share=0.5)

    def with_hindsight(chats) -> int:
        return sum(PAPER_SENTENCE in chat[-2]["content"] for chat in chats)

    # The build's mix alone puts about half of its examples behind a hindsight block; focused ones all are.
    assert with_hindsight(refine_examples(200, seed=1, focus_share=1.0)) == 200
    assert with_hindsight(refine_examples(200, seed=1, focus_share=0.0)) < 140
    assert 140 <= with_hindsight(a) < 200


def test_refine_a_mini_build(tmp_path, capsys, refine_draws) -> None:
    source, out = tmp_path / "mini", tmp_path / "refined"
    build_main(["--mini", "--out", str(source), "--workers", "1"])
    cfg = RefineConfig(n_examples=64, train=TrainConfig(steps=4, batch_size=16, lr=1e-3, warmup=1,
                                                        invariance_weight=1.0, invariance_batch=4))
    info = refine(source, out, cfg)
    refine_draws.clear()
    assert info["refines"][0]["final_loss"] > 0 and info["seed"] == 0  # the build's record is kept
    assert info["refines"][0]["train"]["invariance_weight"] == 1.0
    assert "neutral-follow-up KL" in capsys.readouterr().out  # the pairs reached the training loop
    again = refine(out, tmp_path / "twice", RefineConfig(n_examples=32, focus_share=0.0, history_share=1.0,
                                                         train=TrainConfig(steps=2, batch_size=8)))
    [drawn] = refine_draws  # the examples the second stage trains on: all with history, as its config asks
    assert len(drawn) == 32 and all(sum(m["role"] == "user" for m in c) > 1 for c in drawn)
    assert [stage["train"]["steps"] for stage in again["refines"]] == [4, 2]  # both stages on record
    assert json.loads((tmp_path / "twice" / "build_info.json").read_text())["refines"][1]["source"] == str(out)
    before = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    after = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    changed = [not torch.equal(p, q) for p, q in zip(before.parameters(), after.parameters())]
    assert any(changed)
    assert after.generation_config.eos_token_id == before.generation_config.eos_token_id


def test_negative_invariance_is_refused_before_any_work(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        refine_main(["--out", str(tmp_path / "never"), "--steps", "1", "--invariance", "-1"])
    assert "--invariance must be >= 0, got -1.0" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_focus_directions_by_name() -> None:
    for direction in FOCUS:
        assert parse_direction(direction_name(direction)) == direction
    assert parse_direction("Length=Detailed") == ("length", ("detailed",))
    with pytest.raises(ValueError, match="length=detailed"):
        parse_direction("length=detail")
    only = refine_examples(40, seed=0, focus_share=1.0, focus=(("emoji", (False,)),))
    assert all(measure(chat[-1]["content"])["emoji"] is False for chat in only)


def test_repair_directions_by_name() -> None:
    repairable = repairable_directions()
    assert parse_direction("level=expert", repairable) == ("level", ("expert",))
    with pytest.raises(ValueError, match="one of: alternatives=false"):
        parse_direction("opener=none", repairable)  # a complaint direction, but one no repair teaches
    phrases = complaint_pool()[("emoji", (False,))]
    chats = refine_examples(30, seed=0, focus_share=0.0, repair_share=1.0, repair=(("emoji", (False,)),))
    for chat in chats:
        continuation = chat[-1]["content"][len(chat[-1]["prefix"]):]
        assert chat[-1]["prefix"] and measure(continuation)["emoji"] is False
        assert chat[0]["content"].endswith(phrases)


def test_unrelated_examples_in_share_and_by_option(refine_cli) -> None:
    neutral = (*neutral_follow_ups(), *(q.text for q in questions()))

    def unrelated(chats) -> int:  # a neutral follow-up (or another question) in the hindsight block
        return sum(PAPER_SENTENCE in c[-2]["content"] and c[-2]["content"].endswith(neutral) for c in chats)

    assert unrelated(refine_examples(40, seed=0, focus_share=0.0, unrelated_share=1.0)) == 40
    # on top of the build mix's own 12%: about 0.3 * 200 more
    focused = unrelated(refine_examples(200, seed=1, focus_share=0.3))
    assert focused + 30 < unrelated(refine_examples(200, seed=1, focus_share=0.3, unrelated_share=0.3)) < focused + 90

    given = refine_cli.config("--unrelated-share", "0.15")
    assert given.unrelated_share == 0.15 and given.focus_share == RefineConfig().focus_share
    assert "together at most 1" in refine_cli.refused("--focus-share", "0.9", "--unrelated-share", "0.2")


def test_phrasing_examples_use_the_given_wordings_each_in_its_direction(refine_cli) -> None:
    wordings = ("no outro please", "Turn the bullet points into connected sentences.")
    assert [phrasing_direction(w) for w in wordings] == [("closing", (False,)), ("lists", (False,))]
    chats = refine_examples(60, seed=0, focus_share=0.0, phrasing_share=1.0, phrasings=wordings)
    for chat in chats:
        wording = next(w for w in wordings if chat[-2]["content"].endswith(w))
        axis, values = phrasing_direction(wording)
        assert measure(chat[-1]["content"])[axis] in values, (wording, chat[-1]["content"])
    assert {w: sum(c[-2]["content"].endswith(w) for c in chats) for w in wordings} == {w: pytest.approx(30, abs=12)
                                                                                       for w in wordings}
    # at share 0 the draws are the ones without the option, so earlier refinements reproduce
    assert refine_examples(50, seed=2, focus_share=0.3, phrasings=wordings) == refine_examples(50, seed=2,
                                                                                              focus_share=0.3)
    with pytest.raises(ValueError, match="closest: \\['no outro please'"):
        phrasing_direction("no outro pls")
    with pytest.raises(ValueError, match="needs at least one phrasing"):  # before any draw, whatever the draws
        refine_examples(5, seed=0, focus_share=0.0, phrasing_share=0.01)

    given = [refine_cli.config("--phrasing", wordings[0], "--phrasing", wordings[1]),
             refine_cli.config("--phrasing", wordings[0], "--phrasing-share", "0.5")]
    assert [(c.phrasings, c.phrasing_share) for c in given] == [(wordings, 0.3), (wordings[:1], 0.5)]
    for bad, message in ((["--phrasing", "no outro pls"], "not a complaint phrasing"),
                         (["--phrasing-share", "0.2"], "needs at least one --phrasing"),
                         (["--phrasing", wordings[0], "--focus-share", "0.8"], "together at most 1")):
        assert message in refine_cli.refused(*bad)
