"""``agent=icl_memory``: prompt-only memory. The policy never changes; the user's recent follow-ups ride along.

After each interaction the user's follow-up is remembered (the last ``n_follow_ups`` of them); every answer, in the
stream and in evaluation, is written with them in the system prompt (or, ``where=hindsight``, appended to the last
user turn as a hindsight block, the form the embedded model was trained to revise from). It reads no reward and
no persona: the baseline for "just keep the feedback in context".
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from agents.icl_oracle import with_profile
from agents.training import same_as_sdpo
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.policy import ChatPolicy
from sdpo_env.schema import option

DEFAULT_MEMORY_TEMPLATE = ("Recent feedback from this user on your earlier answers (oldest first). Follow it when "
                           "you answer:\n{follow_ups}")


@dataclass
class ICLMemoryConfig:
    """Options of the prompt-memory learner (``agent.<name>=value``)."""

    n_follow_ups: int = option(5, "how many of the user's most recent follow-ups to keep in context", min=1)
    where: str = option("system", "system = a system prompt listing the follow-ups; hindsight = the hindsight block "
                        "on the last user turn", choices=("system", "hindsight"))
    memory_template: str = option(DEFAULT_MEMORY_TEMPLATE, "where=system: the system prompt; must contain "
                                  "{follow_ups} (one '- ' line each)")
    hindsight_template: str = same_as_sdpo("hindsight_template")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if "{follow_ups}" not in self.memory_template:
            problems.append(("memory_template", "must contain {follow_ups}"))
        if "{follow_up}" not in self.hindsight_template:
            problems.append(("hindsight_template", "must contain {follow_up}"))
        return problems


@LEARNERS.register("icl_memory")
class ICLMemory:
    """The base model answering with the user's recent follow-ups in its context."""

    Config = ICLMemoryConfig

    def __init__(self, policy: ChatPolicy, config: ICLMemoryConfig, *, seed: int):
        self.policy, self.config, self.seed = policy, config, seed
        self.memory: collections.deque[str] = collections.deque(maxlen=config.n_follow_ups)
        self.n_acts = 0

    def with_memory(self, messages: Messages) -> list[dict[str, str]]:
        """The conversation with the remembered follow-ups added (unchanged while the memory is empty)."""
        if not self.memory:
            return [dict(m) for m in messages]
        if self.config.where == "hindsight":
            return hindsight_messages(messages, "\n".join(self.memory), template=self.config.hindsight_template)
        lines = "\n".join(f"- {f}" for f in self.memory)
        return with_profile(messages, self.config.memory_template.replace("{follow_ups}", lines))

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        self.n_acts += 1
        return self.answer(conversations, seed=sampling_seed(self.seed, self.n_acts - 1))

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate([self.with_memory(c) for c in conversations], seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        for t in transitions:
            if t.follow_up.strip():
                self.memory.append(t.follow_up.strip())
        return {"icl_memory/size": float(len(self.memory))}

    def state_dict(self) -> dict[str, Any]:
        return {"memory": list(self.memory), "n_acts": self.n_acts}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.memory.clear()
        self.memory.extend(state["memory"])
        self.n_acts = state["n_acts"]
