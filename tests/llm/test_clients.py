"""The real openai and anthropic SDK clients against a fake provider on loopback: retries, faults, verdicts, cache.

SDK backoff is kept tiny (the fake sends retry-after 0.01 s; timeouts are a fraction of a second).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from sdpo_env.errors import BudgetExceededError, MissingKeyError, ProviderRequestError, ProviderUnavailableError
from sdpo_env.judges.base import Comparison
from sdpo_env.judges.llm import LLMJudge
from sdpo_env.llm.anthropic_client import AnthropicClient
from sdpo_env.llm.base import LOCAL_PLACEHOLDER_KEY, api_key
from sdpo_env.llm.cache import ResponseCache
from sdpo_env.llm.cost import CostMeter, Price
from sdpo_env.llm.openai_client import OpenAIClient
from sdpo_env.llm.service import LLMService
from sdpo_env.personas import load_persona
from sdpo_env.simulators.base import FollowUpRequest
from sdpo_env.simulators.llm import LLMSimulator
from tests.fakes.llm_server import Call, FakeLLMServer

KEY = "sk-fake-4f9c2e7d1b"
PERSONA = load_persona("concise_casual_beginner")
APIS = ("openai", "anthropic")


def service(api: str, server: FakeLLMServer, tmp_path: Path, *, max_retries: int = 2, timeout_s: float = 0.4,
            concurrency: int = 8, budget: float | None = None, empty_is_failure: bool = False,
            key: str = KEY) -> LLMService:
    settings = {"api_key": key, "max_retries": max_retries, "timeout_s": timeout_s, "concurrency": concurrency}
    client = (OpenAIClient("gpt-4o-mini", base_url=server.openai_url, **settings) if api == "openai"  # type: ignore[arg-type]
              else AnthropicClient("claude-haiku-4-5", base_url=server.anthropic_url, **settings))  # type: ignore[arg-type]
    return LLMService(client, template="test-v1", cache=ResponseCache(tmp_path / "cache.sqlite"),
                      meter=CostMeter(budget), price=Price(1.0, 5.0), empty_is_failure=empty_is_failure)


def pair(tag: str, *, long_b: bool = True) -> Comparison:
    b = "This is a much longer answer with many words in it for the judge" if long_b else "ok"
    return Comparison(PERSONA, [{"role": "user", "content": f"Question {tag}?"}], f"Short answer {tag}.", b)


def first_attempt(faults: dict[str, str]):
    """Plan: the first attempt at a request mentioning a tag gets that fault; retries succeed."""

    def plan(call: Call) -> str:
        for tag, fault in faults.items():
            if f"Question {tag}?" in call.user and call.attempt == 0:
                return fault
        return "ok"

    return plan


@pytest.mark.parametrize("api", APIS)
def test_sdk_retries_recover_from_429_5xx_and_timeouts(api: str, tmp_path: Path) -> None:
    overloaded = "529" if api == "anthropic" else "500"
    faults = {"t1": "429", "t2": "500", "t3": overloaded, "t4": "slow"}
    with FakeLLMServer(KEY, first_attempt(faults), slow_s=1.0) as server:
        judge = LLMJudge(service(api, server, tmp_path))
        judgements = judge.judge([pair(t) for t in faults] + [pair("t5")])
    assert [j.verdict for j in judgements] == ["A"] * 5  # the shorter answer, as the fake prefers
    served = server.served()
    assert served["429"] == 1 and served[overloaded] == (2 if overloaded == "500" else 1) and served["slow"] == 1
    assert served["ok"] == 5


@pytest.mark.parametrize("api", APIS)
def test_failures_after_retries_are_missing_stored_as_failures_and_retried_next_time(api: str, tmp_path: Path) -> None:
    state = {"down": True}
    with FakeLLMServer(KEY, lambda c: "500" if state["down"] and "Question x?" in c.user else "ok") as server:
        svc = service(api, server, tmp_path, max_retries=1)
        judge = LLMJudge(svc)
        first = judge.judge([pair("x"), pair("y")])
        assert [j.verdict for j in first] == ["missing", "A"]
        assert first[0].reason.startswith("API failure: HTTP 500 after the SDK's retries")
        assert svc.cache.counts() == {"answers": 1, "failures": 1}
        assert len(server.calls) == 3  # x twice (one retry), y once
        state["down"] = False
        second = judge.judge([pair("x"), pair("y")])
        assert [j.verdict for j in second] == ["A", "A"]  # the failure was not served: x was asked again
        assert len(server.calls) == 4
        assert [j.verdict for j in judge.judge([pair("x"), pair("y")])] == ["A", "A"]
        assert len(server.calls) == 4  # both answers now come from the cache
    assert svc.meter.by_model[svc.name]["failures"] == 1


@pytest.mark.parametrize("api", APIS)
def test_ambiguous_verdicts_get_one_reask_then_missing(api: str, tmp_path: Path) -> None:
    scripted = {"both": ("Both are good", "A or B?"), "flip": ("B... actually A", "[[A]]"),
                "empty": ("", "B"), "first": ("A or B?", "Both are good")}

    def plan(call: Call) -> str:
        for tag, (first, second) in scripted.items():
            if f"Question {tag}?" in call.user:
                return "text:" + (second if call.reask else first)
        return "ok"

    with FakeLLMServer(KEY, plan) as server:
        judge = LLMJudge(service(api, server, tmp_path))
        judgements = judge.judge([pair(t) for t in scripted])
    assert [j.verdict for j in judgements] == ["missing", "A", "B", "missing"]
    assert "unparseable twice" in judgements[0].reason
    assert judge.reasks == 4
    assert sum(c.reask for c in server.calls) == 4


@pytest.mark.parametrize("api", APIS)
def test_malformed_json_is_missing(api: str, tmp_path: Path) -> None:
    with FakeLLMServer(KEY, lambda c: "malformed" if "Question m?" in c.user else "ok") as server:
        svc = service(api, server, tmp_path)
        judgements = LLMJudge(svc).judge([pair("m"), pair("n")])
    assert [j.verdict for j in judgements] == ["missing", "A"]
    assert "malformed response" in judgements[0].reason
    assert svc.cache.counts()["failures"] == 1


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize(("fault", "status"), [("400", 400), ("401", 401)])
def test_unfixable_4xx_stops_with_a_clear_message_without_the_key(api: str, fault: str, status: int,
                                                                   tmp_path: Path) -> None:
    with FakeLLMServer(KEY, lambda c: fault) as server:
        svc = service(api, server, tmp_path, max_retries=3)
        with pytest.raises(ProviderRequestError) as info:
            LLMJudge(svc).judge([pair("z")])
    message = str(info.value)
    assert f"API rejected a request to model '{svc.client.model}' with HTTP {status}" in message
    assert "retrying cannot fix this, so the run stops" in message
    assert KEY not in message
    assert len(server.calls) == 1  # no retries for a 4xx other than 408/409/429


def test_openai_logprobs_give_prob_a(tmp_path: Path) -> None:
    with FakeLLMServer(KEY) as server:
        (judgement,) = LLMJudge(service("openai", server, tmp_path)).judge([pair("p")])
    assert judgement.verdict == "A"
    assert judgement.prob_a == pytest.approx(np.exp(-0.1) / (np.exp(-0.1) + 2 * np.exp(-2.5)))
    assert server.calls[0].body["logprobs"] is True and server.calls[0].body["top_logprobs"] == 5


def test_anthropic_requests_carry_no_sampling_parameters(tmp_path: Path) -> None:
    with FakeLLMServer(KEY) as server:
        (judgement,) = LLMJudge(service("anthropic", server, tmp_path)).judge([pair("p")])
    body = server.calls[0].body
    assert judgement.verdict == "A" and judgement.prob_a is None
    assert "temperature" not in body and "impartial judge" in body["system"]
    assert PERSONA.profile.strip() in body["system"]


def test_judge_concurrency_is_limited(tmp_path: Path) -> None:
    with FakeLLMServer(KEY, lambda c: "slow", slow_s=0.15) as server:
        started = time.perf_counter()
        judgements = LLMJudge(service("openai", server, tmp_path, concurrency=2, timeout_s=2.0)).judge(
            [pair(str(i)) for i in range(6)])
        elapsed = time.perf_counter() - started
    assert all(j.verdict == "A" for j in judgements)
    assert server.max_in_flight == 2
    assert elapsed >= 0.4  # 6 slow replies, 2 at a time


def follow_up_request() -> FollowUpRequest:
    return FollowUpRequest(persona=PERSONA, messages=({"role": "user", "content": "How do I water a cactus?"},),
                           response="A very long answer. " * 20, violated=("concise",), new_question="Next?")


@pytest.mark.parametrize("api", APIS)
def test_simulator_writes_the_follow_up_from_the_profile(api: str, tmp_path: Path) -> None:
    with FakeLLMServer(KEY) as server:
        follow_up = LLMSimulator(service(api, server, tmp_path, empty_is_failure=True)).follow_up(
            follow_up_request(), np.random.default_rng(0))
    assert follow_up.text == "Too long, keep it short please." and follow_up.kind == "complaint"
    assert follow_up.addressed == ("concise",)
    call = server.calls[0]
    assert PERSONA.profile.strip() in call.system and "Do not answer the request yourself" in call.system
    assert "How do I water a cactus?" in call.user and "Write the user's next message." in call.user


@pytest.mark.parametrize("fault", ["empty", "500", "malformed"])
def test_simulator_failure_interrupts_and_is_not_cached(fault: str, tmp_path: Path) -> None:
    with FakeLLMServer(KEY, lambda c: fault) as server:
        svc = service("openai", server, tmp_path, max_retries=0, empty_is_failure=True)
        with pytest.raises(ProviderUnavailableError, match="the user simulator \\(openai:gpt-4o-mini\\) failed"):
            LLMSimulator(svc).follow_up(follow_up_request(), np.random.default_rng(0))
    assert svc.cache.counts() == {"answers": 0, "failures": 1}


def test_budget_stops_before_the_call(tmp_path: Path) -> None:
    with FakeLLMServer(KEY) as server:
        svc = service("openai", server, tmp_path, budget=0.001)
        svc.price = Price(1000.0, 1000.0)
        with pytest.raises(BudgetExceededError, match=r"budget_usd=0.001 reached: \$0.0000 spent"):
            LLMJudge(svc).judge([pair("b")])
    assert server.calls == []


def test_usage_is_priced(tmp_path: Path) -> None:
    with FakeLLMServer(KEY) as server:
        svc = service("anthropic", server, tmp_path)
        LLMJudge(svc).judge([pair("u")])
    usage = svc.meter.by_model[svc.name]
    body_tokens = usage["input_tokens"]
    assert body_tokens > 0 and usage["output_tokens"] == 1
    assert svc.meter.spent_usd == pytest.approx((body_tokens * 1.0 + 1 * 5.0) / 1e6)


def test_keys_come_only_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingKeyError) as info:
        api_key("openai", base_url=None, role="judge")
    assert str(info.value).startswith("judge.backend=openai needs an API key in the environment variable "
                                      "OPENAI_API_KEY, which is not set.")
    assert "judge.base_url=http://localhost:8000/v1" in str(info.value)
    with pytest.raises(MissingKeyError, match=r"simulator\.backend=anthropic needs an API key in the environment "
                                              r"variable ANTHROPIC_API_KEY"):
        api_key("anthropic", base_url=None, role="simulator")
    assert api_key("openai", base_url="http://localhost:8000/v1", role="judge") == LOCAL_PLACEHOLDER_KEY
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert api_key("openai", base_url=None, role="judge") == KEY
    assert api_key("hf", base_url=None, role="judge") is None


def test_the_gym_environment_takes_an_llm_user_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import gymnasium as gym

    import sdpo_env  # noqa: F401  registers the environment

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with FakeLLMServer(KEY) as server:
        env = gym.make("sdpo_env/Personalization-v0", scenario="single", simulator="openai",
                       simulator_kwargs={"model": "gpt-4o-mini", "base_url": server.openai_url, "max_retries": 1,
                                         "cache_dir": str(tmp_path), "temperature": 0.7})
        env.reset(seed=0)
        follow_ups = [env.step("A long answer. " * 30)[4] for _ in range(3)]
    asked = [f for f in follow_ups if f["follow_up_kind"] != "unrelated"]
    assert asked and all(f["follow_up"] == "Too long, keep it short please." for f in asked)
    assert len(server.calls) == len(asked) and server.calls[0].body["temperature"] == 0.7
    assert (tmp_path / "llm_cache.sqlite").is_file()


def test_a_misspelt_option_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdpo_env.errors import UnknownNameError
    from sdpo_env.simulators import SIMULATORS

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with pytest.raises(UnknownNameError) as info:
        SIMULATORS.get("openai")(model="gpt-4o-mini", max_retry=2)
    assert str(info.value).startswith("unknown openai simulator option 'max_retry'. Did you mean 'max_retries'?")
