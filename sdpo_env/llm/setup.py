"""Builds the run's simulator and judge from configuration, with one cache and one cost meter between them.

``check_keys`` runs before any model loads or run folder exists, so a missing key fails fast; the keys themselves
go straight from the environment to the SDK clients and are never stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdpo_env.config import LLM_BACKENDS, JudgeConfig, RunConfig, SimulatorConfig
from sdpo_env.errors import ConfigError, Problem, UnknownNameError
from sdpo_env.llm.base import ProviderClient, api_key
from sdpo_env.llm.cache import CACHE_FILE, ResponseCache
from sdpo_env.llm.cost import PRICES_PER_MTOK, CostMeter, Price, find_price
from sdpo_env.llm.service import LLMService

Section = SimulatorConfig | JudgeConfig


def uses_llm(config: RunConfig) -> bool:
    return config.simulator.backend in LLM_BACKENDS or config.judge.backend in LLM_BACKENDS


def check_keys(config: RunConfig) -> None:
    """Fails on a missing API key or an unpriced model under a budget, before any work starts.

    Raises:
        MissingKeyError: the message names the environment variable.
        ConfigError: ``budget_usd`` is set but a model has no known price.
    """
    problems = []
    for role, section in (("simulator", config.simulator), ("judge", config.judge)):
        if section.backend not in LLM_BACKENDS:
            continue
        api_key(section.backend, base_url=section.base_url, role=role)
        if config.budget_usd is not None and _price(section) is None:
            problems.append(Problem(config.source_of("budget_usd"), f"{role}.price_input_per_mtok",
                                    f"no known price for model {section.model!r} (known: "
                                    f"{', '.join(PRICES_PER_MTOK)}), so budget_usd cannot be enforced; set "
                                    f"{role}.price_input_per_mtok= and {role}.price_output_per_mtok="))
    if problems:
        raise ConfigError(problems)


def _price(section: Section) -> Price | None:
    return find_price(section.model or "", local=section.backend == "hf" or bool(section.base_url),
                      input_per_mtok=section.price_input_per_mtok, output_per_mtok=section.price_output_per_mtok)


def make_client(section: Section, role: str, *, device: str = "auto", dtype: str = "auto") -> ProviderClient:
    """The provider client of one section (``openai``, ``anthropic`` or ``hf``)."""
    model = section.model or ""
    if section.backend == "hf":
        from sdpo_env.llm.hf_client import HFClient

        return HFClient(model, device=device, dtype=dtype)
    key = api_key(section.backend, base_url=section.base_url, role=role) or ""
    settings: dict[str, Any] = {"api_key": key, "base_url": section.base_url, "max_retries": section.max_retries,
                                "timeout_s": section.timeout_s, "concurrency": section.concurrency}
    if section.backend == "openai":
        from sdpo_env.llm.openai_client import OpenAIClient

        return OpenAIClient(model, **settings)
    from sdpo_env.llm.anthropic_client import AnthropicClient

    return AnthropicClient(model, **settings)


def standalone_service(backend: str, role: str, template: str, *, model: str, base_url: str | None = None,
                       max_retries: int = 6, timeout_s: float = 60.0, concurrency: int = 8,
                       cache_dir: str | None = None, budget_usd: float | None = None, device: str = "auto",
                       empty_is_failure: bool = False, **component: Any) -> LLMService:
    """A service for a simulator or judge built outside the runner (``gym.make(..., simulator="openai",
    simulator_kwargs={"model": "gpt-4o-mini"})``): the cache is in ``cache_dir`` or in memory; its own meter.

    Args:
        component: The simulator's or judge's own options (``temperature``, ``max_tokens``, ``seed``,
            ``logprobs``), accepted here and used by the caller.

    Raises:
        MissingKeyError: the backend's key is not in the environment.
        UnknownNameError: an option that neither the service nor the component takes.
    """
    unknown = sorted(set(component) - {"temperature", "max_tokens", "seed", "logprobs"})
    if unknown:
        known = ["model", "base_url", "max_retries", "timeout_s", "concurrency", "cache_dir", "budget_usd", "device",
                 "temperature", "max_tokens", "seed", "logprobs"]
        raise UnknownNameError(f"{backend} {role} option", unknown[0], known)
    section = (SimulatorConfig if role == "simulator" else JudgeConfig)(
        backend=backend, model=model, base_url=base_url, max_retries=max_retries, timeout_s=timeout_s,
        concurrency=concurrency)
    client = make_client(section, role, device=device)
    cache = ResponseCache(Path(cache_dir) / CACHE_FILE if cache_dir else ":memory:")
    return LLMService(client, template=template, cache=cache, meter=CostMeter(budget_usd),
                      price=_price(section) or Price(0.0, 0.0), empty_is_failure=empty_is_failure)


class LLMComponents:
    """The run's LLM simulator and judge (where configured), their shared cache and cost meter.

    Args:
        config: The run configuration.
        run_folder: The run folder (the cache lives there unless ``cache_dir`` is set).
    """

    def __init__(self, config: RunConfig, run_folder: str | Path):
        self.config = config
        self.meter = CostMeter(config.budget_usd)
        self.cache_path = Path(config.cache_dir or run_folder) / CACHE_FILE
        self._cache: ResponseCache | None = None
        self.services: list[LLMService] = []

    @property
    def cache(self) -> ResponseCache:
        if self._cache is None:
            self._cache = ResponseCache(self.cache_path)
        return self._cache

    def _service(self, section: Section, role: str, template: str, *, empty_is_failure: bool) -> LLMService:
        client = make_client(section, role, device=self.config.policy.device, dtype=self.config.policy.dtype)
        service = LLMService(client, template=template, cache=self.cache, meter=self.meter,
                             price=_price(section) or Price(0.0, 0.0), empty_is_failure=empty_is_failure)
        self.services.append(service)
        return service

    def simulator_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SIMULATORS.get(config.simulator.backend)``."""
        section = self.config.simulator
        if section.backend not in LLM_BACKENDS:
            return {"max_complaints": section.max_complaints}
        from sdpo_env.simulators.llm import TEMPLATE_VERSION

        service = self._service(section, "simulator", TEMPLATE_VERSION, empty_is_failure=True)
        return {"service": service, "temperature": section.temperature, "max_tokens": section.max_tokens}

    def judge_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``JUDGES.get(config.judge.backend)``."""
        section = self.config.judge
        if section.backend not in LLM_BACKENDS:
            return {"min_words": section.min_words}
        from sdpo_env.judges.llm import TEMPLATE_VERSION

        service = self._service(section, "judge", TEMPLATE_VERSION, empty_is_failure=False)
        return {"service": service, "temperature": section.temperature, "max_tokens": section.max_tokens,
                "seed": self.config.seed, "logprobs": section.logprobs}

    def status(self) -> str:
        """For the live progress line: spending, and the budget if any."""
        if not self.services:
            return ""
        budget = f"/{self.meter.budget_usd:.2f}" if self.meter.budget_usd is not None else ""
        return f" | ${self.meter.spent_usd:.4f}{budget}"

    def summary(self) -> dict[str, Any]:
        """For ``summary.json``: spending, budget, per-model usage, and the cache's contents."""
        out = self.meter.summary()
        if self.services:
            out["cache"] = {"path": str(self.cache_path), **self.cache.counts()}
        return out

    def state_dict(self) -> dict[str, Any]:
        return self.meter.state_dict()

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.meter.load_state_dict(state)

    def close(self) -> None:
        for service in self.services:
            service.close()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
