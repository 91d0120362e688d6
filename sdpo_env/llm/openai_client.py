"""OpenAI Chat Completions, and any OpenAI-compatible server (vLLM, Ollama, llama.cpp) through ``base_url``.

Retries and timeouts are the SDK's own (``max_retries``, ``timeout``): it retries 408, 409, 429 (honouring
``retry-after``), 5xx and connection errors with backoff. What is left after them becomes a :class:`Failure`; a 4xx
that retrying cannot fix raises :class:`ProviderRequestError`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import openai

from sdpo_env.errors import ProviderRequestError
from sdpo_env.llm.base import ChatReply, ChatRequest, Failure, gather_limited, normalise_label_probs, redact

RETRYABLE_4XX = (408, 409, 429)
TOP_LOGPROBS = 5


def status_error(exc: Any, *, backend: str, model: str, key: str | None) -> ProviderRequestError | Failure:
    """Classifies an ``APIStatusError`` left after the SDK's retries: fatal 4xx or a failure to count."""
    status = int(getattr(exc, "status_code", 0) or 0)
    message = redact(str(getattr(exc, "message", "") or exc), key)
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        hint = {401: "check the API key in the environment", 403: "the key lacks access to this model",
                404: f"check the model name {model!r} and the base_url"}.get(
            status, "check the request settings; a server without log-probs needs judge.logprobs=false"
            if backend == "openai" else "check the request settings")
        return ProviderRequestError(f"the {backend} API rejected a request to model {model!r} with HTTP {status}: "
                                    f"{message} ({hint}); retrying cannot fix this, so the run stops")
    return Failure(f"HTTP {status} after the SDK's retries: {message}")


class OpenAIClient:
    """Chat Completions through ``openai.AsyncOpenAI``.

    Args:
        model: Model name on the server.
        api_key: The key (from ``OPENAI_API_KEY``; a placeholder for a local server).
        base_url: An OpenAI-compatible server; ``None`` = api.openai.com.
        max_retries: The SDK's retries per request.
        timeout_s: The SDK's timeout per attempt.
        concurrency: Most requests in flight at once.
    """

    backend = "openai"

    def __init__(self, model: str, *, api_key: str, base_url: str | None = None, max_retries: int = 4,
                 timeout_s: float = 60.0, concurrency: int = 8):
        self.model, self.base_url, self._key = model, base_url, api_key
        self.max_retries, self.timeout_s, self.concurrency = max_retries, timeout_s, concurrency
        self._client: openai.AsyncOpenAI | None = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model, "base_url": self.base_url}

    def _get_client(self) -> openai.AsyncOpenAI:
        if self._client is None:  # created on the event loop that uses it
            self._client = openai.AsyncOpenAI(api_key=self._key, base_url=self.base_url,
                                              max_retries=self.max_retries, timeout=self.timeout_s)
        return self._client

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Failure]:
        return await gather_limited(requests, self._complete, concurrency=self.concurrency)

    async def _complete(self, request: ChatRequest) -> ChatReply | Failure:
        kwargs: dict[str, Any] = {"temperature": request.temperature, "seed": request.seed}
        # api.openai.com wants max_completion_tokens; local servers (vLLM, Ollama) all understand max_tokens.
        kwargs["max_tokens" if self.base_url else "max_completion_tokens"] = request.max_tokens
        if request.label_logprobs:
            kwargs.update(logprobs=True, top_logprobs=TOP_LOGPROBS)
        messages = [{"role": "system", "content": request.system}, *request.messages]
        try:
            completion = await self._get_client().chat.completions.create(
                model=self.model, messages=messages, **kwargs)  # type: ignore[call-overload,arg-type]
        except openai.APIStatusError as exc:
            outcome = status_error(exc, backend=self.backend, model=self.model, key=self._key)
            if isinstance(outcome, ProviderRequestError):
                raise outcome from None
            return outcome
        except openai.APITimeoutError:
            return Failure(f"timed out after {self.timeout_s} s, {self.max_retries} retries")
        except openai.APIConnectionError as exc:
            return Failure(f"connection error after {self.max_retries} retries: {redact(str(exc), self._key)}")
        except (openai.APIResponseValidationError, ValueError) as exc:  # ValueError: a body that is not JSON
            return Failure(f"malformed response: {redact(str(exc), self._key)[:200]}", kind="malformed")
        return parse_completion(completion)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None


def parse_completion(completion: Any) -> ChatReply | Failure:
    """Text, usage and (if present) the label probabilities of a ``ChatCompletion``."""
    choices = getattr(completion, "choices", None)
    if not choices or getattr(choices[0], "message", None) is None:
        return Failure("malformed response: no choices", kind="malformed")
    choice = choices[0]
    usage = getattr(completion, "usage", None)
    probs = None
    content = getattr(getattr(choice, "logprobs", None), "content", None)
    if content:
        # The verdict is the last label token in the reply; its alternatives give the distribution.
        for token in reversed(content):
            if token.token.strip().strip("[]").strip() in ("A", "B", "C"):
                alternatives = {t.token: t.logprob for t in (token.top_logprobs or [])} or {token.token: token.logprob}
                probs = normalise_label_probs(alternatives)
                break
    return ChatReply(text=choice.message.content or "",
                     input_tokens=int(getattr(usage, "prompt_tokens", 0) or 0),
                     output_tokens=int(getattr(usage, "completion_tokens", 0) or 0), label_probs=probs)
