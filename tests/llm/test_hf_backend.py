"""The ``hf`` simulator and judge on the shipped tiny model: wiring, label scores and missing accounting.

The tiny model was not trained to judge, so most verdicts are unreadable: the point is that every comparison gets a
verdict or ``missing`` (after one re-ask), and that the label-token scores form a distribution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sdpo_env.errors import ProviderUnavailableError
from sdpo_env.judges.base import VERDICTS, Comparison
from sdpo_env.judges.llm import LLMJudge, parse_verdict
from sdpo_env.llm.base import ChatReply, ChatRequest
from sdpo_env.llm.cache import ResponseCache
from sdpo_env.llm.cost import CostMeter, Price
from sdpo_env.llm.hf_client import HFClient
from sdpo_env.llm.service import LLMService
from sdpo_env.personas import load_persona
from sdpo_env.run import main
from sdpo_env.simulators.base import FollowUpRequest
from sdpo_env.simulators.llm import LLMSimulator

PERSONA = load_persona("no_emojis")


@pytest.fixture(scope="module")
def tiny_service(tmp_path_factory) -> LLMService:
    cache = ResponseCache(tmp_path_factory.mktemp("hf_cache") / "cache.sqlite")
    return LLMService(HFClient("tiny", device="cpu"), template="test-v1", cache=cache, meter=CostMeter(),
                      price=Price(0.0, 0.0), empty_is_failure=True)


def test_label_scores_are_a_distribution(tiny_service: LLMService) -> None:
    request = ChatRequest(system="Judge.", messages=({"role": "user", "content": "A or B?"},), temperature=0.0,
                          max_tokens=4, seed=0, label_logprobs=True)
    (reply,) = tiny_service.complete([request], persona="p")
    assert isinstance(reply, ChatReply)
    probs = reply.label_probs
    assert probs is not None and set(probs) == {"A", "B", "C"} and sum(probs.values()) == pytest.approx(1.0)
    assert reply.input_tokens > 0 and tiny_service.meter.spent_usd == 0.0


def test_hf_judge_accounts_every_comparison(tiny_service: LLMService) -> None:
    judge = LLMJudge(tiny_service, max_tokens=8)
    comparisons = [Comparison(PERSONA, [{"role": "user", "content": f"Tell me about plant {i}."}],
                              "Water it weekly.", "Water it weekly 🌱🌱!") for i in range(4)]
    judgements = judge.judge(comparisons)
    assert len(judgements) == 4 and all(j.verdict in VERDICTS for j in judgements)
    readable = [j for j in judgements if j.verdict != "missing"]
    assert all(j.prob_a is not None for j in readable)  # label scores travel with readable verdicts
    assert all(j.reason.startswith(("unparseable twice", "API failure")) for j in judgements if j.verdict == "missing")
    assert judge.reasks == sum(parse_verdict(r) is None for r in _first_replies(tiny_service, judge, comparisons))


def _first_replies(service: LLMService, judge: LLMJudge, comparisons: list[Comparison]) -> list[str]:
    replies = service.complete([judge._request(c) for c in comparisons], persona=PERSONA.name)  # from the cache
    return [r.text for r in replies if isinstance(r, ChatReply)]


def test_hf_simulator_writes_a_follow_up_or_interrupts(tiny_service: LLMService) -> None:
    request = FollowUpRequest(persona=PERSONA, messages=({"role": "user", "content": "How do I repot a fern?"},),
                              response="Repot it in spring 🌿🌿!", violated=("no_emojis",), new_question="Next?")
    try:
        follow_up = LLMSimulator(tiny_service, max_tokens=24).follow_up(request, np.random.default_rng(0))
    except ProviderUnavailableError as exc:  # an empty generation is a failure, never an empty follow-up
        assert "empty reply" in str(exc)
    else:
        assert follow_up.text.strip() and follow_up.kind == "complaint" and follow_up.addressed == ("no_emojis",)


@pytest.mark.slow
def test_run_with_hf_user_and_judge(tmp_path: Path) -> None:
    out = tmp_path / "hf"
    args = ["scenario=single", "persona=no_emojis", "n_interactions=2", "eval.every=2", "eval.n_prompts=2",
            "eval.bootstrap=20", "eval.oracle=false", "policy.max_new_tokens=16", "agent.batch_size=2",
            "simulator.backend=hf", "simulator.model=tiny", "simulator.max_tokens=24", "judge.backend=hf",
            "judge.model=tiny", "judge.max_tokens=8", "policy.device=cpu", f"out_dir={out}"]
    assert main(args) in (0, 3)  # 3: the tiny model wrote an empty follow-up (a failure; resumable)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows and all(0.0 <= r["missing_rate"] <= 1.0 for r in rows)
    assert (out / "llm_cache.sqlite").is_file()
