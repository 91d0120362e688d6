"""``agent=dpo_hindsight``: preference optimisation on before/after pairs, against the frozen base.

For each interaction (x, y, o) the same policy answers x again with the follow-up o in the hindsight context, giving
y'. The pair (chosen y', rejected y) trains the LoRA adapter with the DPO loss; the reference is the frozen base
model (the adapter disabled, ``policy.base_model()``), so ``beta`` bounds how far the policy drifts from it. Pairs
whose two answers are identical carry no preference and are dropped. It never reads the reward.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from agents.sft_hindsight import REGENERATION_STREAM, regenerate
from agents.training import LoraTrainer, SampledIds, same_as_sdpo
from sdpo_env.losses import dpo_loss, sequence_logprobs
from sdpo_env.policy import ChatPolicy
from sdpo_env.schema import option
from sdpo_env.sdpo import selective_log_softmax


@dataclass
class DPOHindsightConfig:
    """Options of the hindsight-DPO learner (``agent.<name>=value``); shared ones default to SDPO's."""

    beta: float = option(0.1, "DPO inverse temperature: larger = stay closer to the frozen base", gt=0.0)
    lr: float = same_as_sdpo("lr")
    weight_decay: float = same_as_sdpo("weight_decay")
    adam_beta2: float = same_as_sdpo("adam_beta2")
    grad_clip: float = same_as_sdpo("grad_clip")
    update_every: int = same_as_sdpo("update_every")
    batch_size: int = same_as_sdpo("batch_size")
    lora_r: int = same_as_sdpo("lora_r")
    lora_alpha: float = same_as_sdpo("lora_alpha")
    lora_dropout: float = same_as_sdpo("lora_dropout")
    lora_targets: str | list[str] = same_as_sdpo("lora_targets")
    hindsight_template: str = same_as_sdpo("hindsight_template")

    def check(self) -> list[tuple[str, str]]:
        if "{follow_up}" not in self.hindsight_template:
            return [("hindsight_template", "must contain {follow_up}")]
        return []


@LEARNERS.register("dpo_hindsight")
class DPOHindsight:
    """DPO on (hindsight-regenerated answer, original answer) pairs with the frozen base as reference.

    Args:
        policy: The policy; a LoRA adapter is added if it has none.
        config: Options.
        seed: The run's seed (generation seeds derive from it).
    """

    Config = DPOHindsightConfig

    def __init__(self, policy: ChatPolicy, config: DPOHindsightConfig, *, seed: int):
        self.policy, self.config, self.seed = policy, config, seed
        self.trainer = LoraTrainer(policy, config, seed=seed, name="dpo")
        self.sampled = SampledIds()
        # (x, chosen ids, rejected ids)
        self.buffer: collections.deque[tuple[Messages, list[int], list[int]]] = collections.deque(
            maxlen=config.batch_size)
        self.n_acts = self.n_regenerations = self.since_update = self.n_identical = 0

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        texts = self.sampled.sample(self.policy, conversations, seed=sampling_seed(self.seed, self.n_acts))
        self.n_acts += 1
        return texts

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate(conversations, seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        useful = [t for t in transitions if t.follow_up.strip()]
        if useful:
            seed = sampling_seed(self.seed, REGENERATION_STREAM + self.n_regenerations)
            self.n_regenerations += 1
            regenerated = regenerate(self.policy, useful, template=self.config.hindsight_template, seed=seed)
            for t, (x, chosen) in zip(useful, regenerated):
                rejected = self.sampled.get(self.policy, t.response)
                if chosen == rejected:
                    self.n_identical += 1
                    continue
                self.buffer.append((x, chosen, rejected))
        self.sampled.keep_only([])  # every answer acted on so far is now in the buffer or dropped
        self.since_update += len(transitions)
        if self.since_update < self.config.update_every or not self.buffer:
            return {"dpo/identical_pairs": float(self.n_identical)} if useful else {}
        self.since_update = 0
        return self.update(list(self.buffer))

    def update(self, batch: Sequence[tuple[Messages, list[int], list[int]]]) -> dict[str, float]:
        """One DPO step: chosen and rejected scored in one forward, the base reference in one no-grad forward."""
        policy = self.policy
        contexts = [policy.encode(x) for x, _, _ in batch] * 2
        completions = [c for _, c, _ in batch] + [r for _, _, r in batch]  # chosen rows, then rejected rows
        with torch.no_grad(), policy.base_model():
            ref_logits, targets, mask = policy.completion_logits(contexts, completions)  # (2B, T, V)
            reference = sequence_logprobs(selective_log_softmax(ref_logits, targets), mask)  # (2B,)
        logits, targets, mask = policy.completion_logits(contexts, completions)  # (2B, T, V), with grad
        logprobs = sequence_logprobs(selective_log_softmax(logits, targets), mask)  # (2B,)
        n = len(batch)
        loss, margins = dpo_loss(policy_chosen=logprobs[:n], policy_rejected=logprobs[n:],
                                 reference_chosen=reference[:n], reference_rejected=reference[n:],
                                 beta=self.config.beta)
        metrics = self.trainer.step(loss)
        metrics.update({"dpo/margin": margins.mean().item(), "dpo/accuracy": (margins > 0).float().mean().item(),
                        "dpo/identical_pairs": float(self.n_identical)})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "buffer": [(list(x), c, r) for x, c, r in self.buffer],
                "counters": {"n_acts": self.n_acts, "n_regenerations": self.n_regenerations,
                             "since_update": self.since_update, "n_identical": self.n_identical}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.clear()
        self.buffer.extend((x, c, r) for x, c, r in state["buffer"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
