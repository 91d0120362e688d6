"""LLM-written follow-ups: ``openai``, ``anthropic`` and ``hf`` simulated users.

The prompt follows the paper's simulator: the persona's profile and the rules of the role in the system prompt; the
user's request and the assistant's response in the user turn. After a flip the environment hands over the new phase's
persona, so the new profile is used. The call's seed is drawn from the environment's generator, so reruns and
resumes send (and find in the cache) the same requests.

What a follow-up *is* (a complaint or thanks) is known only where the persona's preferences have rules: then a
response that violates none gets ``satisfied`` and one that violates some gets ``complaint`` (addressing those);
without rules every LLM follow-up is logged as a ``complaint``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from sdpo_env.errors import ProviderUnavailableError
from sdpo_env.llm.base import ChatRequest, Failure
from sdpo_env.llm.service import LLMService
from sdpo_env.personas import Persona
from sdpo_env.simulators.base import SIMULATORS, FollowUp, FollowUpRequest

TEMPLATE_VERSION = "simulator-v1"
RULES = """You are role-playing this user in a conversation with an AI assistant. Rules:
- Act as the user: write the user's next message, in the first person.
- Judge only the assistant's latest response, and only against the profile above (its style, length, tone, format).
- Do not answer the request yourself and do not rewrite the response.
- Reply very briefly: one or two short sentences.
- Give no feedback unrelated to the profile.
- Output only the message, with no quotes, labels or explanations.
- If the response already fits the profile, say so briefly (for example, thank the assistant)."""


def simulator_system_prompt(persona: Persona) -> str:
    """The profile, the preferences, then the role's rules."""
    preferences = "\n".join(f"- {p.description}" for p in persona.preferences)
    return f"User profile:\n{persona.profile.strip()}\n\nThe user's preferences:\n{preferences}\n\n{RULES}"


def simulator_user_turn(request: FollowUpRequest) -> str:
    """The conversation so far, the assistant's response and the instruction."""
    history = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in request.messages)
    return (f"The conversation so far:\n{history}\n\nThe assistant's response:\n{request.response}\n\n"
            "Write the user's next message.")


class LLMSimulator:
    """A simulated user whose follow-ups an LLM writes.

    Args:
        service: Cached, metered calls to the provider.
        temperature: Sampling temperature (not sent to Anthropic's current API).
        max_tokens: Longest follow-up in tokens.
    """

    def __init__(self, service: LLMService, *, temperature: float = 0.0, max_tokens: int = 256):
        self.service, self.temperature, self.max_tokens = service, temperature, max_tokens

    def follow_up(self, request: FollowUpRequest, rng: np.random.Generator) -> FollowUp:
        """The LLM's follow-up.

        Raises:
            ProviderUnavailableError: no usable reply after the SDK's retries (or an empty one); the runner
                checkpoints before this interaction and stops, and a resume redoes it.
        """
        seed = int(rng.integers(2**31 - 1))
        chat = ChatRequest(system=simulator_system_prompt(request.persona),
                           messages=({"role": "user", "content": simulator_user_turn(request)},),
                           temperature=self.temperature, max_tokens=self.max_tokens, seed=seed)
        (reply,) = self.service.complete([chat], persona=request.persona.name)
        if isinstance(reply, Failure):
            raise ProviderUnavailableError(f"the user simulator ({self.service.name}) failed: {reply.reason}")
        text = reply.text.strip()
        if request.violated:
            return FollowUp(text=text, kind="complaint", addressed=tuple(request.violated))
        if request.violated is not None:
            return FollowUp(text=text, kind="satisfied")
        return FollowUp(text=text, kind="complaint")


def _factory(backend: str) -> Callable[..., LLMSimulator]:
    def make(*, service: LLMService | None = None, **kwargs: Any) -> LLMSimulator:
        if service is None:  # built outside the runner: connection settings come as keyword arguments
            from sdpo_env.llm.setup import standalone_service

            service = standalone_service(backend, "simulator", TEMPLATE_VERSION, empty_is_failure=True, **kwargs)
        if service.client.backend != backend:
            raise ValueError(f"the {backend} simulator needs a {backend} service, got {service.client.backend}")
        return LLMSimulator(service, **{k: v for k, v in kwargs.items() if k in ("temperature", "max_tokens")})

    make.__doc__ = (f"A simulated user written by the {backend} backend (``service=``, or ``model=`` and connection "
                    "settings).")
    return make


for _backend in ("openai", "anthropic", "hf"):
    SIMULATORS.register(_backend)(_factory(_backend))
