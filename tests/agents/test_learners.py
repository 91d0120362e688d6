"""Every shipped learner on a real (random, tiny) HF model with real peft LoRA: it acts, learns, and resumes exactly."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from agents import LEARNERS, Transition, make_learner
from agents.base import sampling_seed
from agents.icl_memory import ICLMemory
from agents.sdpo import SDPOPaperConfig
from agents.sft_hindsight import REGENERATION_STREAM, regenerate
from sdpo_env.errors import ConfigError
from sdpo_env.hindsight import DEFAULT_TEMPLATE
from sdpo_env.personas import load_persona
from sdpo_env.policy import ChatPolicy, Sampling
from sdpo_env.sdpo import selective_log_softmax
from tests.models import build_random_model

X = [{"role": "user", "content": "How do I water basil?"}]
X2 = [{"role": "user", "content": "Explain inflation."}]
TRAINING = ["sdpo", "sft_hindsight", "dpo_hindsight", "reinforce_oracle"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"))


def make(model_dir, name, **options):
    policy = ChatPolicy.load(str(model_dir), device="cpu", sampling=Sampling(max_new_tokens=10))
    learner = make_learner({"name": name, **options}, policy, seed=0)
    if name == "icl_oracle":
        learner.set_persona(load_persona("concise_casual_beginner"))
    return learner


def interact(learner, rewards=(0.0, 1.0), follow_up="Too long, keep it short."):
    responses = learner.act([X, X2])
    transitions = [Transition(messages=c, response=r, follow_up=follow_up, reward=w, info={"relevant": True})
                   for c, r, w in zip((X, X2), responses, rewards)]
    return responses, learner.observe(transitions)


def play(learner, n):
    out = []
    for i in range(n):
        responses, _ = interact(learner, rewards=(i % 2, 1 - i % 2))
        out.append((responses, learner.answer([X2], seed=7)))
    return out


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_every_learner_acts_learns_and_resumes_exactly(model_dir, name) -> None:
    options = {"batch_size": 3} if name in TRAINING else {}
    straight = make(model_dir, name, **options)
    play(straight, 2)
    state = copy.deepcopy(straight.state_dict())
    expected = play(straight, 2)
    resumed = make(model_dir, name, **options)
    resumed.load_state_dict(state)
    assert play(resumed, 2) == expected
    if straight.policy.has_adapter:
        for a, b in zip(straight.policy.trainable_parameters(), resumed.policy.trainable_parameters()):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
    if name in TRAINING:
        moved = any(v.abs().sum() > 0 for k, v in straight.policy.adapter_state().items() if "lora_B" in k)
        assert moved, "four updates left the adapter at its initial B = 0"


def logprob(learner, messages, ids):
    p = learner.policy
    with torch.no_grad():
        logits, targets, mask = p.completion_logits([p.encode(messages)], [ids])
    return (selective_log_softmax(logits, targets) * mask).sum().item()


def test_reinforce_raises_the_rewarded_answer_and_lowers_the_punished_one(model_dir) -> None:
    learner = make(model_dir, "reinforce_oracle", lr=0.02, weight_decay=0.0, batch_size=2, baseline_decay=0.0)
    interact(learner, rewards=(0.5, 0.5))  # sets the baseline to 0.5 (no update signal yet: advantage 0)
    (good, bad) = learner.act([X, X2])
    ids = [learner.sampled.get(learner.policy, good), learner.sampled.get(learner.policy, bad)]
    before = [logprob(learner, X, ids[0]), logprob(learner, X2, ids[1])]
    learner.observe([Transition(X, good, "Thanks.", reward=1.0), Transition(X2, bad, "No.", reward=0.0)])
    after = [logprob(learner, X, ids[0]), logprob(learner, X2, ids[1])]
    assert [a for _, _, a in learner.buffer] == [1.0 - 0.5, 0.0 - 1.0]  # r minus the baseline before r arrived
    assert after[0] > before[0] and after[1] < before[1]


def test_sft_raises_the_likelihood_of_its_hindsight_target(model_dir) -> None:
    learner = make(model_dir, "sft_hindsight", lr=0.02, weight_decay=0.0)
    responses = learner.act([X])
    learner.since_update = -1  # regenerate and store, but do not update yet
    learner.observe([Transition(X, responses[0], "Too long, keep it short.")])
    (x, target), = learner.buffer
    before = logprob(learner, x, target)
    metrics = learner.update(list(learner.buffer))
    assert logprob(learner, x, target) > before and metrics["sft/loss"] > 0


def test_dpo_prefers_the_hindsight_answer_and_drops_identical_pairs(model_dir) -> None:
    learner = make(model_dir, "dpo_hindsight", lr=0.02, weight_decay=0.0, beta=0.5)
    responses = learner.act([X])
    metrics = learner.observe([Transition(X, responses[0], "Too long, keep it short.")])
    (x, chosen, rejected), = learner.buffer
    assert chosen != rejected and metrics["dpo/loss"] == pytest.approx(0.6931, abs=1e-3)  # policy = reference
    second = learner.update(list(learner.buffer))
    assert second["dpo/margin"] > 0 and second["dpo/loss"] < metrics["dpo/loss"]
    learner.buffer.clear()
    # An original answer equal to what the hindsight regeneration will sample: the pair carries no preference.
    seed = sampling_seed(0, REGENERATION_STREAM + learner.n_regenerations)
    ((_, same),) = regenerate(learner.policy, [Transition(X, "", "Too long.")], template=DEFAULT_TEMPLATE, seed=seed)
    learner.sampled.remember("same", same)
    learner.observe([Transition(X, "same", "Too long.")])
    assert learner.n_identical == 1 and not learner.buffer


def test_icl_memory_keeps_the_last_follow_ups_in_the_system_prompt(model_dir) -> None:
    learner = make(model_dir, "icl_memory", n_follow_ups=2)
    assert learner.with_memory(X) == X
    for follow_up in ("first", "second", "third", "  "):
        learner.observe([Transition(X, "answer", follow_up)])
    system, user = learner.with_memory(X)
    assert system["role"] == "system" and system["content"].endswith(":\n- second\n- third")
    assert user == X[0]
    hindsight = make(model_dir, "icl_memory", where="hindsight")
    hindsight.observe([Transition(X, "answer", "Too long.")])
    (only,) = hindsight.with_memory(X)
    assert only["content"].startswith(X[0]["content"]) and only["content"].endswith("Too long.")
    assert isinstance(learner, ICLMemory)


def test_baselines_share_sdpo_training_defaults() -> None:
    """The baselines build an AdamW, so they take the AdamW setting of SDPO (agent=sdpo_paper), not sdpo's SGD."""
    sdpo = {f.name: f.default for f in dataclasses.fields(SDPOPaperConfig)}
    for name in ("sft_hindsight", "dpo_hindsight", "reinforce_oracle"):
        config = LEARNERS.get(name).Config()
        for key in ("lr", "weight_decay", "adam_beta2", "grad_clip", "batch_size", "update_every", "lora_r",
                    "lora_alpha", "lora_dropout", "lora_targets"):
            assert getattr(config, key) == sdpo[key], (name, key)


def test_baselines_build_sdpo_optimiser(model_dir) -> None:
    """Each training baseline's optimiser has sdpo_paper's settings (betas included), by default and when set."""

    def settings(learner) -> dict:
        optimizer = learner.optimizer if hasattr(learner, "optimizer") else learner.trainer.optimizer
        return {k: v for k, v in optimizer.param_groups[0].items() if k != "params"}

    for options in ({}, {"adam_beta2": 0.999, "lr": 2e-3, "weight_decay": 0.5}):
        expected = settings(make(model_dir, "sdpo_paper", **options))  # the AdamW setting of SDPO
        for name in TRAINING[1:]:
            assert settings(make(model_dir, name, **options)) == expected, (name, options)


def test_baseline_options_are_validated(model_dir) -> None:
    policy = ChatPolicy.load(str(model_dir), device="cpu")
    with pytest.raises(ConfigError) as caught:
        make_learner({"name": "dpo_hindsight", "beta": 0, "lr": -1, "betta": 1}, policy, seed=0)
    text = str(caught.value)
    assert "command line: agent.beta: got 0.0; must be > 0.0" in text
    assert "command line: agent.lr: got -1.0; must be > 0.0" in text
    assert "command line: agent.betta: unknown key. Did you mean 'beta'?" in text
    with pytest.raises(ConfigError, match=r"agent\.memory_template: must contain \{follow_ups\}"):
        make_learner({"name": "icl_memory", "memory_template": "no slot"}, policy, seed=0)
