"""``agent=icl_oracle``: the paper's in-context oracle, the base model with the user's profile in its system prompt.

It reads privileged information (the current persona's profile, updated after a flip or an added preference) and
never updates weights: the reference line SDPO is compared against.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from sdpo_env.personas import Persona
from sdpo_env.policy import ChatPolicy


def with_profile(messages: Messages, profile: str) -> list[dict[str, str]]:
    """The conversation with the profile as its system prompt (prepended to an existing one)."""
    out = [dict(m) for m in messages]
    if out and out[0]["role"] == "system":
        out[0]["content"] = f"{profile}\n\n{out[0]['content']}"
        return out
    return [{"role": "system", "content": profile}, *out]


@LEARNERS.register("icl_oracle")
class InContextOracle:
    """The base model prompted with the current persona's profile."""

    def __init__(self, policy: ChatPolicy, config: None = None, *, seed: int):
        self.policy, self.seed, self.n_acts = policy, seed, 0
        self.profile = ""

    def set_persona(self, persona: Persona) -> None:
        self.profile = persona.profile.strip()

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        self.n_acts += 1
        return self.answer(conversations, seed=sampling_seed(self.seed, self.n_acts - 1))

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        prompted = [with_profile(c, self.profile) if self.profile else list(c) for c in conversations]
        return [s.text for s in self.policy.generate(prompted, seed=seed)]

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        return {}

    def state_dict(self) -> dict[str, Any]:
        return {"n_acts": self.n_acts, "profile": self.profile}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_acts, self.profile = state["n_acts"], state["profile"]
