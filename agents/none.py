"""``agent=none``: the frozen base model. It never learns; its win rate against the base should stay at 0.5."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from sdpo_env.policy import ChatPolicy


@LEARNERS.register("none")
class NoLearning:
    """Answers with the base model and ignores every interaction."""

    def __init__(self, policy: ChatPolicy, config: None = None, *, seed: int):
        self.policy, self.seed, self.n_acts = policy, seed, 0

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        self.n_acts += 1
        return self.answer(conversations, seed=sampling_seed(self.seed, self.n_acts - 1))

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate(conversations, seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"n_acts": self.n_acts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_acts = state["n_acts"]
