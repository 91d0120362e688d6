"""One LLM component's calls: cache first, then the budget check, then the provider client; usage recorded.

Simulators and judges hold an :class:`LLMService` (composition): they build requests and read replies, and never
see caching, pricing or the event loop. Async clients run on one private event loop in a background thread, so the
synchronous runner (and a notebook with its own running loop) can call them.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from sdpo_env.llm.base import ChatReply, ChatRequest, Failure, ProviderClient
from sdpo_env.llm.cache import ResponseCache, cache_key
from sdpo_env.llm.cost import CostMeter, Price

T = TypeVar("T")
_loop: asyncio.AbstractEventLoop | None = None
_loop_pid = 0
_loop_lock = threading.Lock()


def run_async(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` on the library's background event loop and waits for its result."""
    global _loop, _loop_pid
    with _loop_lock:
        if _loop is None or _loop_pid != os.getpid():  # a forked child (vector envs) needs its own loop thread
            _loop, _loop_pid = asyncio.new_event_loop(), os.getpid()
            threading.Thread(target=_loop.run_forever, name="sdpo_env-llm", daemon=True).start()
    return asyncio.run_coroutine_threadsafe(coro, _loop).result()


class LLMService:
    """Cached, metered calls to one provider client.

    Args:
        client: The provider client.
        template: The prompt template version of the component (part of every cache key).
        cache: Where answers are stored.
        meter: The run's cost meter (shared by the simulator and the judge).
        price: The model's price.
        empty_is_failure: Treat an empty reply as a failure (never cached as an answer).
    """

    def __init__(self, client: ProviderClient, *, template: str, cache: ResponseCache, meter: CostMeter,
                 price: Price, empty_is_failure: bool = False):
        self.client, self.template, self.cache, self.meter, self.price = client, template, cache, meter, price
        self.empty_is_failure = empty_is_failure
        self.sends_temperature = client.backend != "anthropic"

    @property
    def name(self) -> str:
        return f"{self.client.backend}:{self.client.model}"

    def complete(self, requests: Sequence[ChatRequest], *, persona: str) -> list[ChatReply | Failure]:
        """Answers each request from the cache or the provider, in order.

        Raises:
            BudgetExceededError: the calls not in the cache could take the spending past the budget.
            ProviderRequestError: the provider rejected a request (4xx that retrying cannot fix).
        """
        keys = [cache_key(self.client.identity(), template=self.template, persona=persona, request=r,
                          sent_temperature=self.sends_temperature) for r in requests]
        out: list[ChatReply | Failure | None] = [self.cache.get(k) for k in keys]
        todo = [i for i, o in enumerate(out) if o is None]
        self.meter.record_hits(self.name, len(requests) - len(todo))
        if todo:
            self.meter.check(self.name, self.price, [requests[i] for i in todo])
            replies = run_async(self.client.complete([requests[i] for i in todo]))
            for i, reply in zip(todo, replies):
                if isinstance(reply, ChatReply) and self.empty_is_failure and not reply.text.strip():
                    self.meter.record(self.name, self.price, reply)  # an empty reply is still billed
                    reply = Failure("empty reply", kind="malformed")
                elif isinstance(reply, ChatReply):
                    self.meter.record(self.name, self.price, reply)
                    self.cache.put(keys[i], reply)
                if isinstance(reply, Failure):
                    self.meter.record_failure(self.name)
                    self.cache.put_failure(keys[i], reply.reason)
                out[i] = reply
        return [o for o in out if o is not None]

    def close(self) -> None:
        run_async(self.client.aclose())
