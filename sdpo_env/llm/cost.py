"""Token usage priced by a table, and the run's budget.

Prices are USD per million tokens (input, output). The defaults cover a few common models; override them per
section with ``simulator.price_input_per_mtok=`` / ``simulator.price_output_per_mtok=`` (likewise ``judge.``). A
model served through ``base_url`` (vLLM, Ollama) or the ``hf`` backend costs nothing unless priced explicitly.

Before any call that is not served from the cache, the meter estimates its worst case (prompt characters / 3 as
tokens, plus ``max_tokens`` of output) and refuses it when the spending so far plus that estimate would pass
``budget_usd``: the run then stops with a checkpoint before the budget is exceeded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sdpo_env.errors import BudgetExceededError
from sdpo_env.llm.base import ChatReply, ChatRequest

PRICES_PER_MTOK: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "gpt-4.1": (2.00, 8.00),
    "claude-haiku-4-5": (1.00, 5.00),
    "claude-sonnet-4-5": (3.00, 15.00),
    "claude-opus-4-1": (15.00, 75.00),
}


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float

    def cost(self, input_tokens: int, output_tokens: int) -> float:
        return (input_tokens * self.input + output_tokens * self.output) / 1e6


def find_price(model: str, *, local: bool, input_per_mtok: float | None,
               output_per_mtok: float | None) -> Price | None:
    """The price of ``model``: explicit settings first, then the table (longest matching prefix, so dated snapshots
    such as ``gpt-4o-mini-2024-07-18`` match), then free for local servers; ``None`` when unknown."""
    if input_per_mtok is not None or output_per_mtok is not None:
        return Price(input_per_mtok or 0.0, output_per_mtok or 0.0)
    if local:
        return Price(0.0, 0.0)
    matches = [name for name in PRICES_PER_MTOK if model.startswith(name)]
    if not matches:
        return None
    return Price(*PRICES_PER_MTOK[max(matches, key=len)])


def estimate_tokens(request: ChatRequest) -> tuple[int, int]:
    """A deliberately high estimate of a request's (input, output) tokens: ~3 characters a token."""
    chars = len(request.system) + sum(len(m["content"]) + 8 for m in request.messages)
    return chars // 3 + 16, request.max_tokens


class CostMeter:
    """Spending of one run across its LLM components; checkpointed with the run.

    Args:
        budget_usd: Most the run may spend; ``None`` = no limit.
    """

    def __init__(self, budget_usd: float | None = None):
        self.budget_usd = budget_usd
        self.spent_usd = 0.0
        self.by_model: dict[str, dict[str, float]] = {}

    def _entry(self, model: str) -> dict[str, float]:
        return self.by_model.setdefault(model, {"usd": 0.0, "input_tokens": 0, "output_tokens": 0, "requests": 0,
                                                "cache_hits": 0, "failures": 0})

    def check(self, model: str, price: Price, requests: Sequence[ChatRequest]) -> None:
        """Raises before calls whose worst case could take the spending past the budget.

        Raises:
            BudgetExceededError: the message gives the spending, the estimate and how to continue.
        """
        if self.budget_usd is None:
            return
        estimate = sum(price.cost(*estimate_tokens(r)) for r in requests)
        if self.spent_usd + estimate > self.budget_usd:
            raise BudgetExceededError(
                f"budget_usd={self.budget_usd:g} reached: ${self.spent_usd:.4f} spent, and the next {len(requests)} "
                f"call(s) to {model} could cost up to ${estimate:.4f}. Resume with a larger budget: "
                "resume=RUN_FOLDER budget_usd=...")

    def record(self, model: str, price: Price, reply: ChatReply) -> None:
        entry = self._entry(model)
        usd = price.cost(reply.input_tokens, reply.output_tokens)
        self.spent_usd += usd
        entry["usd"] += usd
        entry["input_tokens"] += reply.input_tokens
        entry["output_tokens"] += reply.output_tokens
        entry["requests"] += 1

    def record_failure(self, model: str) -> None:
        self._entry(model)["failures"] += 1

    def record_hits(self, model: str, n: int) -> None:
        self._entry(model)["cache_hits"] += n

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: total, budget and per-model usage (requests made, cache hits, failures)."""
        return {"usd": self.spent_usd, "budget_usd": self.budget_usd,
                "by_model": {k: dict(v) for k, v in sorted(self.by_model.items())}}

    def state_dict(self) -> dict[str, Any]:
        return {"spent_usd": self.spent_usd, "by_model": {k: dict(v) for k, v in self.by_model.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.spent_usd = float(state["spent_usd"])
        self.by_model = {k: dict(v) for k, v in state["by_model"].items()}
