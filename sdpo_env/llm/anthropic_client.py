"""Anthropic Messages API through ``anthropic.AsyncAnthropic``.

The SDK (2.x, API version 2026-10-21) no longer accepts sampling parameters: ``temperature`` is not sent, and the
cache key leaves it out. Retries (429 with ``retry-after``, 5xx including 529 overloaded, timeouts) are the SDK's.
The Messages API returns no log-probs, so judgements carry no ``prob_a``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import anthropic

from sdpo_env.errors import ProviderRequestError
from sdpo_env.llm.base import ChatReply, ChatRequest, Failure, gather_limited, redact
from sdpo_env.llm.openai_client import status_error


class AnthropicClient:
    """Messages through ``anthropic.AsyncAnthropic``.

    Args:
        model: Model name (``claude-haiku-4-5``).
        api_key: The key from ``ANTHROPIC_API_KEY``.
        base_url: A proxy or test server; ``None`` = api.anthropic.com.
        max_retries: The SDK's retries per request.
        timeout_s: The SDK's timeout per attempt.
        concurrency: Most requests in flight at once.
    """

    backend = "anthropic"

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None, max_retries: int = 4,
                 timeout_s: float = 60.0, concurrency: int = 8):
        self.model, self.base_url, self._key = model, base_url, api_key
        self.max_retries, self.timeout_s, self.concurrency = max_retries, timeout_s, concurrency
        self._client: anthropic.AsyncAnthropic | None = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def _get_client(self) -> anthropic.AsyncAnthropic:
        if self._client is None:
            self._client = anthropic.AsyncAnthropic(api_key=self._key, base_url=self.base_url,
                                                    max_retries=self.max_retries, timeout=self.timeout_s)
        return self._client

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Failure]:
        return await gather_limited(requests, self._complete, concurrency=self.concurrency)

    async def _complete(self, request: ChatRequest) -> ChatReply | Failure:
        try:
            message = await self._get_client().messages.create(
                model=self.model, system=request.system, messages=list(request.messages),  # type: ignore[arg-type]
                max_tokens=request.max_tokens)
        except anthropic.APIStatusError as exc:
            outcome = status_error(exc, backend=self.backend, model=self.model, key=self._key)
            if isinstance(outcome, ProviderRequestError):
                raise outcome from None
            return outcome
        except anthropic.APITimeoutError:
            return Failure(f"timed out after {self.timeout_s} s, {self.max_retries} retries")
        except anthropic.APIConnectionError as exc:
            return Failure(f"connection error after {self.max_retries} retries: {redact(str(exc), self._key)}")
        except (anthropic.APIResponseValidationError, ValueError) as exc:
            return Failure(f"malformed response: {redact(str(exc), self._key)[:200]}", kind="malformed")
        blocks = getattr(message, "content", None)
        if blocks is None:
            return Failure("malformed response: no content", kind="malformed")
        text = "".join(getattr(b, "text", "") for b in blocks if getattr(b, "type", "") == "text")
        usage = getattr(message, "usage", None)
        return ChatReply(text=text, input_tokens=int(getattr(usage, "input_tokens", 0) or 0),
                         output_tokens=int(getattr(usage, "output_tokens", 0) or 0))

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
