"""The evaluation's ``surprise``: the frozen base model's per-token NLL of the policy's answers, on the shipped model.

The rule judge reads style only. ``surprise`` is what sees text the base model would not write: the base model's own
answers score ``base_surprise`` exactly, and the same answers with their words shuffled, or given to other questions,
score clearly higher, while their style (what the rules read) is unchanged.
"""

from __future__ import annotations

import random

import pytest

from sdpo_env.judges.evaluate import WinRateEvaluator
from sdpo_env.judges.rules import RuleJudge
from sdpo_env.personas import load_persona
from sdpo_env.policy import ChatPolicy, LoraSettings
from sdpo_env.prompts import load_prompts


@pytest.fixture(scope="module")
def evaluator():
    policy = ChatPolicy.load("tiny", device="cpu", lora=LoraSettings(r=4, alpha=8))
    return WinRateEvaluator(policy, RuleJudge(), load_prompts("eval")[:12], seed=3)


def shuffled(text: str, seed: int) -> str:
    words = text.split()
    random.Random(seed).shuffle(words)
    return " ".join(words)


def test_surprise_reads_garbled_and_misplaced_answers_that_the_rules_do_not(evaluator) -> None:
    persona = load_persona("concise_casual_beginner")
    base = evaluator.base_responses()

    same, _ = evaluator.evaluate(lambda c, s: list(base), persona, seed=0)
    assert same["surprise"] == pytest.approx(same["base_surprise"], abs=1e-6)
    assert 0.1 < same["base_surprise"] < 2.0  # nats per token: a fluent model on its own answers

    garbled, _ = evaluator.evaluate(lambda c, s: [shuffled(b, i) for i, b in enumerate(base)], persona, seed=0)
    elsewhere, _ = evaluator.evaluate(lambda c, s: base[1:] + base[:1], persona, seed=0)  # answers to other prompts
    assert garbled["base_surprise"] == same["base_surprise"]  # the reference does not move
    assert garbled["surprise"] > same["base_surprise"] + 1.0
    assert elsewhere["surprise"] > same["base_surprise"] + 0.1
    # what the rules read is unchanged, so the judge cannot tell
    for row in (garbled, elsewhere):
        assert row["valid_rate"] == same["valid_rate"]
        assert row["sat/concise"] == same["sat/concise"]


def test_surprise_is_read_under_the_frozen_base_whatever_the_adapter(evaluator) -> None:
    policy = evaluator.policy
    persona = load_persona("concise_casual_beginner")
    base = evaluator.base_responses()
    before, _ = evaluator.evaluate(lambda c, s: list(base), persona, seed=0)
    layers = policy.lora_layers()
    try:
        for layer in layers.values():
            layer.lora_B["default"].weight.data.normal_(std=0.5)  # an adapter far from the base
        after, _ = evaluator.evaluate(lambda c, s: list(base), persona, seed=0)
        adapted = policy.answer_nll(evaluator.conversations[:4], base[:4])
        with policy.base_model():
            frozen = policy.answer_nll(evaluator.conversations[:4], base[:4])
        assert max(abs(a - f) for a, f in zip(adapted, frozen)) > 0.05  # the adapted model reads them otherwise
    finally:
        for layer in layers.values():
            layer.lora_B["default"].weight.data.zero_()
    assert after["surprise"] == pytest.approx(before["surprise"], abs=1e-6)


def test_an_evaluator_without_surprise_reports_none_and_the_state_carries_the_bases_own(evaluator) -> None:
    persona = load_persona("concise_casual_beginner")
    quiet = WinRateEvaluator(evaluator.policy, RuleJudge(), evaluator.prompts, seed=3, surprise=False)
    row, _ = quiet.evaluate(lambda c, s: ["Sure, here it is in a few words."] * len(c), persona, seed=0)
    assert "surprise" not in row and "base_surprise" not in row
    evaluator.base_surprise()
    again = WinRateEvaluator(evaluator.policy, RuleJudge(), evaluator.prompts, seed=3)
    again.load_state_dict(evaluator.state_dict())  # as the evaluation worker and a resume do, at every evaluation
    assert again.base_responses() == evaluator.base_responses()
    calls = []
    again.surprise = lambda answers: calls.append(answers) or 0.0  # type: ignore[method-assign]
    assert again.base_surprise() == evaluator.base_surprise() and calls == []  # carried, not read again
    old = WinRateEvaluator(evaluator.policy, RuleJudge(), evaluator.prompts, seed=3)
    old.load_state_dict({"base": evaluator.base_responses()})  # a checkpoint from before surprise: read on first use
    assert old.base_surprise() == pytest.approx(evaluator.base_surprise(), abs=1e-9)
