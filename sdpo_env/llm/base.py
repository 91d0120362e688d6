"""What every provider client speaks: one chat request in, one reply (or a failure) out.

Simulators and judges build :class:`ChatRequest` objects; a provider client (``openai_client``, ``anthropic_client``,
``hf_client``) turns a batch of them into :class:`ChatReply` or :class:`Failure` objects. A failure is a value, not an
exception, so a judge can count it as ``missing`` while a simulator stops the run; only errors that retrying can never
fix (a bad request, a wrong key) are raised, as :class:`~sdpo_env.errors.ProviderRequestError`.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from sdpo_env.errors import MissingKeyError

KEY_VARIABLES = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
LOCAL_PLACEHOLDER_KEY = "EMPTY"  # what vLLM and Ollama accept when they run without authentication
LABELS = ("A", "B", "C")


@dataclass(frozen=True)
class ChatRequest:
    """One chat call.

    Attributes:
        system: The system prompt.
        messages: The conversation (``{"role", "content"}``), ending with a user turn.
        temperature: Sampling temperature.
        max_tokens: Longest reply in tokens.
        seed: Seed sent to backends that take one (and part of the cache key for all).
        label_logprobs: Ask for the log-probs of the labels A/B/C (judges) where the backend returns them.
    """

    system: str
    messages: tuple[dict[str, str], ...]
    temperature: float
    max_tokens: int
    seed: int
    label_logprobs: bool = False


@dataclass(frozen=True)
class ChatReply:
    """A provider's answer.

    Attributes:
        text: The reply text (may be empty: the caller decides whether that is usable).
        input_tokens: Prompt tokens from the response's usage fields.
        output_tokens: Completion tokens from the response's usage fields.
        label_probs: Probabilities of the labels A/B/C at the verdict position, normalised over the three, when
            the backend returned log-probs.
    """

    text: str
    input_tokens: int = 0
    output_tokens: int = 0
    label_probs: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Failure:
    """A call that produced no usable answer after the SDK's retries; never cached as an answer."""

    reason: str
    kind: str = field(default="unavailable")  # "unavailable" (retryable later) or "malformed"


class ProviderClient(Protocol):
    """One provider, one model. ``complete`` answers a batch, in order, with replies or failures."""

    backend: str
    model: str

    def identity(self) -> dict[str, Any]:
        """What distinguishes this client's answers (backend, model, server) for the cache key."""
        ...

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Failure]:
        ...

    async def aclose(self) -> None:
        ...


def api_key(backend: str, *, base_url: str | None, role: str) -> str | None:
    """The API key for ``backend`` from its environment variable (never from config files).

    A custom ``base_url`` on the OpenAI backend means a local OpenAI-compatible server (vLLM, Ollama, llama.cpp),
    which usually runs without authentication: the key is then optional and the placeholder ``EMPTY`` is sent.

    Args:
        backend: ``openai``, ``anthropic`` or a backend without keys (``hf``).
        base_url: The configured server, if any.
        role: ``simulator`` or ``judge``, for the message.

    Returns:
        The key, or ``None`` for a backend that needs none.

    Raises:
        MissingKeyError: the variable is unset or empty; the message names it (and never shows a key).
    """
    variable = KEY_VARIABLES.get(backend)
    if variable is None:
        return None
    key = os.environ.get(variable, "").strip()
    if key:
        return key
    if backend == "openai" and base_url:
        return LOCAL_PLACEHOLDER_KEY
    hint = (f" For a local OpenAI-compatible server (vLLM, Ollama) set {role}.base_url=http://localhost:8000/v1 "
            "instead; it needs no key." if backend == "openai" else "")
    raise MissingKeyError(f"{role}.backend={backend} needs an API key in the environment variable {variable}, which "
                          f"is not set. Keys are read only from the environment, never from config files: "
                          f"export {variable}=...{hint}")


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` replaced (errors from SDKs may quote what was sent)."""
    if secret and secret != LOCAL_PLACEHOLDER_KEY and secret in text:
        return text.replace(secret, "***")
    return text


def normalise_label_probs(logprobs: dict[str, float]) -> dict[str, float] | None:
    """Turns log-probs of candidate tokens into probabilities of A/B/C, normalised over the three.

    Tokens are matched after stripping spaces and brackets; ``None`` when no label is among them.
    """
    import math

    probs = dict.fromkeys(LABELS, 0.0)
    for token, logprob in logprobs.items():
        label = token.strip().strip("[]").strip()
        if label in probs:
            probs[label] += math.exp(logprob)
    total = sum(probs.values())
    if total <= 0:
        return None
    return {k: v / total for k, v in probs.items()}


async def gather_limited(requests: Sequence[ChatRequest],
                         complete_one: Callable[[ChatRequest], Awaitable[ChatReply | Failure]], *, concurrency: int
                         ) -> list[ChatReply | Failure]:
    """``complete_one`` on every request, in order, with at most ``concurrency`` in flight."""
    limit = asyncio.Semaphore(concurrency)

    async def one(request: ChatRequest) -> ChatReply | Failure:
        async with limit:
            return await complete_one(request)

    return list(await asyncio.gather(*(one(r) for r in requests)))
