"""The user-simulator seam: given the persona, the conversation and the assistant's answer, write the next message."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from sdpo_env.personas import Persona
from sdpo_env.registry import Registry

KINDS = ("complaint", "satisfied", "new_question", "unrelated")


@dataclass(frozen=True)
class FollowUp:
    """The user's next message and what it is.

    Attributes:
        text: The message.
        kind: ``complaint`` (asks for a style change), ``satisfied`` (thanks), ``new_question`` or ``unrelated``.
        addressed: Names of the preferences the message complains about (empty unless a complaint).
    """

    text: str
    kind: str
    addressed: tuple[str, ...] = field(default=())

    @property
    def relevant(self) -> bool:
        """Whether the message carries feedback on the answer's style (what SDPO can learn from)."""
        return self.kind == "complaint"


@dataclass(frozen=True)
class FollowUpRequest:
    """What a simulator sees for one interaction.

    Attributes:
        persona: The user's persona at this interaction (after any flip or added preferences).
        messages: The conversation the assistant answered, ending with a user turn.
        response: The assistant's answer.
        violated: Preferences the response violates under the persona's rules (``None`` if not checkable).
        new_question: A related request the user may ask next if satisfied (drawn by the environment).
    """

    persona: Persona
    messages: Sequence[dict[str, str]]
    response: str
    violated: tuple[str, ...] | None
    new_question: str


@runtime_checkable
class UserSimulator(Protocol):
    """Writes the user's next message. Randomness must come only from ``rng`` (the environment's generator)."""

    def follow_up(self, request: FollowUpRequest, rng: np.random.Generator) -> FollowUp:
        """Returns the user's next message for one interaction."""
        ...


SIMULATORS: Registry = Registry("user simulator")
