"""``agent=reinforce_oracle``: policy gradient on the environment's hidden reward, with a running baseline.

Privileged: it reads ``Transition.reward`` (the share of the user's current preferences the answer satisfies), which
no real user sends and SDPO never reads. Each answer's tokens are reinforced by ``r - b``, where the baseline b is
an exponential moving average of earlier rewards, so it re-centres after a preference flip. It is the upper bound
for learners that see a scalar reward, trained with the same LoRA and AdamW settings as SDPO.
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from agents.training import LoraTrainer, SampledIds, same_as_sdpo
from sdpo_env.losses import reinforce_loss, running_baseline
from sdpo_env.policy import ChatPolicy
from sdpo_env.schema import option
from sdpo_env.sdpo import selective_log_softmax


@dataclass
class ReinforceOracleConfig:
    """Options of the REINFORCE oracle (``agent.<name>=value``); shared ones default to SDPO's."""

    baseline_decay: float = option(0.9, "weight of the old baseline per reward (moving average of rewards)",
                                   min=0.0, max=0.9999)
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


@LEARNERS.register("reinforce_oracle")
class ReinforceOracle:
    """REINFORCE with a moving-average baseline on the hidden reward.

    Args:
        policy: The policy; a LoRA adapter is added if it has none.
        config: Options.
        seed: The run's seed (generation seeds derive from it).
    """

    Config = ReinforceOracleConfig

    def __init__(self, policy: ChatPolicy, config: ReinforceOracleConfig, *, seed: int):
        self.policy, self.config, self.seed = policy, config, seed
        self.trainer = LoraTrainer(policy, config, seed=seed, name="reinforce")
        self.sampled = SampledIds()
        # (x, answer ids, advantage r - b fixed when the reward arrived)
        self.buffer: collections.deque[tuple[Messages, list[int], float]] = collections.deque(
            maxlen=config.batch_size)
        self.baseline: float | None = None
        self.n_acts = self.since_update = 0

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        texts = self.sampled.sample(self.policy, conversations, seed=sampling_seed(self.seed, self.n_acts))
        self.n_acts += 1
        return texts

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate(conversations, seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        for t in transitions:
            if not math.isfinite(t.reward):
                continue  # no reward, nothing to learn (e.g. a logged interaction)
            # The baseline excludes the reward it is compared with, so the estimator stays unbiased.
            advantage = 0.0 if self.baseline is None else t.reward - self.baseline
            self.baseline = running_baseline(self.baseline, t.reward, decay=self.config.baseline_decay)
            self.buffer.append((t.messages, self.sampled.get(self.policy, t.response), advantage))
        self.sampled.keep_only([])
        self.since_update += len(transitions)
        if self.since_update < self.config.update_every or not self.buffer:
            return {}
        self.since_update = 0
        return self.update(list(self.buffer))

    def update(self, batch: Sequence[tuple[Messages, list[int], float]]) -> dict[str, float]:
        """One REINFORCE step on the buffered answers."""
        policy = self.policy
        logits, targets, mask = policy.completion_logits([policy.encode(x) for x, _, _ in batch],
                                                         [ids for _, ids, _ in batch])  # (B, T, V), with grad
        advantages = torch.tensor([a for _, _, a in batch], device=logits.device)  # (B,)
        loss = reinforce_loss(token_logprobs=selective_log_softmax(logits, targets), mask=mask,
                              advantages=advantages, aggregation=self.config.aggregation)
        metrics = self.trainer.step(loss)
        metrics.update({"reinforce/advantage_mean": advantages.mean().item(),
                        "reinforce/baseline": float(self.baseline if self.baseline is not None else math.nan)})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"trainer": self.trainer.state_dict(), "buffer": [(list(x), ids, a) for x, ids, a in self.buffer],
                "baseline": self.baseline, "counters": {"n_acts": self.n_acts, "since_update": self.since_update}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.trainer.load_state_dict(state["trainer"])
        self.buffer.clear()
        self.buffer.extend((x, ids, a) for x, ids, a in state["buffer"])
        self.baseline = state["baseline"]
        for key, value in state["counters"].items():
            setattr(self, key, value)
