"""``agent=sft_hindsight``: off-policy self-distillation. Regenerate the answer in hindsight, fine-tune on it.

For each interaction (x, y, o) the same policy answers x again with the follow-up o in the hindsight context
(``hindsight_messages``), giving y'. The LoRA adapter is then fine-tuned on (x -> y') with the NLL loss. Where SDPO
scores the policy's own answer y token by token under the hindsight context (on-policy, a dense signal), this
baseline imitates a whole new sample y' (off-policy, a sparse one): the comparison the paper's Table 4 makes for
logged responses. It never reads the reward.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from agents.training import LoraTrainer, same_as_sdpo
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.losses import nll_loss
from sdpo_env.policy import ChatPolicy
from sdpo_env.sdpo import selective_log_softmax

# Regeneration seeds live far from the act seeds of the same run (sampling_seed(seed, step) for step < 10**9).
REGENERATION_STREAM = 10**12


@dataclass
class SFTHindsightConfig:
    """Options of the hindsight-SFT learner (``agent.<name>=value``); shared ones default to SDPO's."""

    lr: float = same_as_sdpo("lr")
    weight_decay: float = same_as_sdpo("weight_decay")
    adam_beta2: float = same_as_sdpo("adam_beta2")
    grad_clip: float = same_as_sdpo("grad_clip")
    update_every: int = same_as_sdpo("update_every")
    batch_size: int = same_as_sdpo("batch_size")
    aggregation: str = same_as_sdpo("aggregation")
    lora_r: int = same_as_sdpo("lora_r")
    lora_alpha: float = same_as_sdpo("lora_alpha")
    lora_dropout: float = same_as_sdpo("lora_dropout")
    lora_targets: str | list[str] = same_as_sdpo("lora_targets")
    hindsight_template: str = same_as_sdpo("hindsight_template")

    def check(self) -> list[tuple[str, str]]:
        if "{follow_up}" not in self.hindsight_template:
            return [("hindsight_template", "must contain {follow_up}")]
        return []


def regenerate(policy: ChatPolicy, transitions: Sequence[Transition], *, template: str, seed: int
               ) -> list[tuple[Messages, list[int]]]:
    """The policy's answers to each x with its follow-up in the hindsight context: ``[(x, ids of y')]``."""
    prompts = [hindsight_messages(t.messages, t.follow_up, template=template) for t in transitions]
    samples = policy.generate(prompts, seed=seed)
    return [(t.messages, s.ids) for t, s in zip(transitions, samples)]


@LEARNERS.register("sft_hindsight")
class SFTHindsight:
    """Fine-tunes a LoRA adapter on the policy's own hindsight-regenerated answers.

    Args:
        policy: The policy; a LoRA adapter is added if it has none.
        config: Options.
        seed: The run's seed (generation seeds derive from it).
    """

    Config = SFTHindsightConfig

    def __init__(self, policy: ChatPolicy, config: SFTHindsightConfig, *, seed: int):
        self.policy, self.config, self.seed = policy, config, seed
        self.trainer = LoraTrainer(policy, config, seed=seed, name="sft")
        self.buffer: collections.deque[tuple[Messages, list[int]]] = collections.deque(maxlen=config.batch_size)
        self.n_acts = self.n_regenerations = self.since_update = 0

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        self.n_acts += 1
        return self.answer(conversations, seed=sampling_seed(self.seed, self.n_acts - 1))

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate(conversations, seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        useful = [t for t in transitions if t.follow_up.strip()]
        if useful:
            seed = sampling_seed(self.seed, REGENERATION_STREAM + self.n_regenerations)
            self.n_regenerations += 1
            self.buffer.extend(regenerate(self.policy, useful, template=self.config.hindsight_template, seed=seed))
        self.since_update += len(transitions)
        if self.since_update < self.config.update_every or not self.buffer:
            return {}
        self.since_update = 0
        return self.update(list(self.buffer))

    def update(self, batch: Sequence[tuple[Messages, list[int]]]) -> dict[str, float]:
        """One NLL step on (x -> y') pairs."""
        policy = self.policy
        logits, targets, mask = policy.completion_logits([policy.encode(x) for x, _ in batch],
                                                         [ids for _, ids in batch])  # (B, T, V), with grad
        token_logprobs = selective_log_softmax(logits, targets)  # (B, T)
        loss = nll_loss(token_logprobs=token_logprobs, mask=mask, aggregation=self.config.aggregation)
        metrics = self.trainer.step(loss)
        metrics["sft/target_tokens"] = mask.sum().item() / len(batch)
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "buffer": [(list(x), ids) for x, ids in self.buffer],
                "counters": {"n_acts": self.n_acts, "n_regenerations": self.n_regenerations,
                             "since_update": self.since_update}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.clear()
        self.buffer.extend((x, ids) for x, ids in state["buffer"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
