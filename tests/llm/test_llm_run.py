"""Full runs with an LLM user (Anthropic API) and an LLM judge (OpenAI API), both on a fake server on loopback.

The real SDK clients meet 429s, 500s, 529s, slow replies, empty replies and ambiguous verdicts; the run completes
with the unreadable verdicts counted as missing; a second identical run is served entirely from the cache; an outage
and a budget stop checkpoint and resume without losing an interaction; no file holds the API key.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch
import yaml

from sdpo_env.evaluation import EvaluationWorker
from sdpo_env.run import main
from tests.fakes.llm_server import Call, FakeLLMServer
from tests.models import build_random_model

KEY = "sk-fake-run-9d8c7b6a5f4e"
AMBIGUOUS = ("Both are good", "A or B?", "B... actually A")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"), hidden=32)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "llm_flip.yaml"
    path.write_text(yaml.safe_dump({"name": "llm_flip", "phases": [
        {"start": 0, "end": 4, "persona": "concise_casual_beginner"},
        {"start": 4, "end": 8, "persona": "detailed_professional_expert"}]}))
    return path


@pytest.fixture
def keys(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def args_for(model_dir, scenario_file, server: FakeLLMServer, out_dir, *extra):
    return [f"scenario={scenario_file}", f"policy.model={model_dir}", "policy.max_new_tokens=12", "eval.every=4",
            "eval.n_prompts=4", "eval.bootstrap=50", "eval.oracle=false", "checkpoint_every=3",
            "agent.batch_size=2", f"out_dir={out_dir}",
            "simulator.backend=anthropic", "simulator.model=claude-haiku-4-5",
            f"simulator.base_url={server.anthropic_url}", "simulator.max_retries=3", "simulator.timeout_s=0.5",
            "judge.backend=openai", "judge.model=gpt-4o-mini", f"judge.base_url={server.openai_url}",
            "judge.max_retries=3", "judge.timeout_s=0.5", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


class FaultyPlan:
    """First attempts get API faults by content; judges get ambiguous or empty verdicts, some twice (missing). The
    first judge call gets an empty verdict whatever its content, so the run meets one however the policy answers."""

    SIMULATOR_FAULTS = ("529", "ok", "429", "slow", "500")  # the simulator is called in order: by count

    def __init__(self) -> None:
        self.missing: set[str] = set()
        self.simulator_calls = 0
        self.judge_calls = 0

    def __call__(self, call: Call) -> str:
        d = call.digest
        if call.role == "simulator" and call.attempt == 0:
            self.simulator_calls += 1
            return self.SIMULATOR_FAULTS[(self.simulator_calls - 1) % len(self.SIMULATOR_FAULTS)]
        if call.attempt == 0 and not call.reask:
            fault = {1: "429", 2: "500"}.get(d % 7)
            if fault:
                return fault
            if d % 13 == 4:
                return "slow"
        if call.role != "judge":
            return "ok"
        if not call.reask and call.attempt == 0:
            self.judge_calls += 1
            if self.judge_calls == 1:
                return "empty"
        if not call.reask and d % 5 == 0:
            return "text:" + AMBIGUOUS[d % 3]
        if not call.reask and d % 11 == 1:
            return "empty"
        if call.reask and d % 2 == 0:
            self.missing.add(call.user)
            return "text:A or B?"
        return "ok"


def missing_judgements(rows: list[dict], n_pairs: int) -> int:
    return round(sum(r["missing_rate"] * n_pairs for r in rows))


def test_run_with_llm_user_and_judge_then_an_identical_run_from_the_cache(model_dir, scenario_file, tmp_path, keys,
                                                                          capsys) -> None:
    plan, cache = FaultyPlan(), tmp_path / "shared_cache"
    with FakeLLMServer(KEY, plan, slow_s=1.0) as server:
        first = tmp_path / "first"
        assert main(args_for(model_dir, scenario_file, server, first, f"cache_dir={cache}")) == 0
        served = server.served()
        n_requests = len(server.calls)
        second = tmp_path / "second"
        assert main(args_for(model_dir, scenario_file, server, second, f"cache_dir={cache}")) == 0
        assert len(server.calls) == n_requests, "the identical rerun must be served entirely from the cache"
    for fault in ("429", "500", "529", "slow", "empty", "text"):
        assert served[fault] > 0, f"the fake never injected {fault}: {served}"
    interactions = read_jsonl(first / "interactions.jsonl")
    assert [r["interaction"] for r in interactions] == list(range(8))
    assert {r["follow_up_kind"] for r in interactions} <= {"complaint", "satisfied", "unrelated"}
    assert any(r["follow_up"] == "Too long, keep it short please." for r in interactions)
    rows = read_jsonl(first / "metrics.jsonl")
    assert [(r["interaction"], r["phase"]) for r in rows] == [(0, 0), (4, 0), (4, 1), (8, 1)]
    assert missing_judgements(rows, 8) >= len(plan.missing) > 0  # unreadable twice: missing, never a tie
    assert all(r["coverage"] is not None for r in rows)
    assert all(0.0 <= r["win_rate_logprob"] <= 1.0 for r in rows)  # the fake returns top_logprobs for labels
    assert (second / "metrics.jsonl").read_text() == (first / "metrics.jsonl").read_text()
    assert (second / "interactions.jsonl").read_text() == (first / "interactions.jsonl").read_text()
    summary = json.loads((first / "summary.json").read_text())
    judge_usage = summary["cost"]["by_model"]["openai:gpt-4o-mini"]
    assert judge_usage["requests"] > 0 and judge_usage["input_tokens"] > 0
    asked = sum(r["follow_up_kind"] != "unrelated" for r in interactions)  # unrelated follow-ups need no LLM
    assert summary["cost"]["by_model"]["anthropic:claude-haiku-4-5"]["requests"] == asked
    rerun = json.loads((second / "summary.json").read_text())["cost"]["by_model"]
    assert all(m["requests"] == 0 and m["cache_hits"] > 0 for m in rerun.values())
    files = [p for p in [*first.rglob("*"), *second.rglob("*"), *cache.rglob("*")] if p.is_file()]
    assert any(p.name == "llm_cache.sqlite" for p in files)
    for path in files:
        assert KEY.encode() not in path.read_bytes(), f"{path} holds the API key"
    out = capsys.readouterr()
    assert KEY not in out.out + out.err


def test_an_outage_checkpoints_and_the_resumed_run_matches_an_uninterrupted_one_as_does_a_branch_at_the_outage(
        model_dir, scenario_file, tmp_path, keys) -> None:
    state = {"simulator_calls": 0, "down": False}

    def plan(call: Call) -> str:
        if call.role == "simulator" and call.attempt == 0:
            state["simulator_calls"] += 1
            state["down"] = state["down"] or state["simulator_calls"] == 3
        return "529" if state["down"] and call.role == "simulator" else "ok"

    straight, out = tmp_path / "straight", tmp_path / "outage"
    with FakeLLMServer(KEY) as server:
        assert main(args_for(model_dir, scenario_file, server, straight)) == 0
    branch = tmp_path / "branch"
    with FakeLLMServer(KEY, plan) as server:
        # snapshot_every=1: the resumed run also keeps its state at the interaction it redoes, answer included
        assert main(args_for(model_dir, scenario_file, server, out, "simulator.max_retries=1",
                             "snapshot_every=1")) == 3
        done = [r["interaction"] for r in read_jsonl(out / "interactions.jsonl")]
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
        assert checkpoint["t"] == len(done) and done == list(range(len(done))) and len(done) < 8
        assert checkpoint["pending_response"] is not None  # the answer whose follow-up failed is kept for the redo
        state["down"] = False
        assert main([f"resume={out}"]) == 0
        snapshot = torch.load(out / "snapshots" / f"t{len(done)}.pt", weights_only=False)
        assert snapshot["pending_response"] == checkpoint["pending_response"]
        assert main([f"branch={out}", f"at={len(done)}", f"out_dir={branch}"]) == 0  # redoes the same answer
    for run in (out, branch):
        assert [r["interaction"] for r in read_jsonl(run / "interactions.jsonl")] == list(range(8))
        assert (run / "interactions.jsonl").read_text() == (straight / "interactions.jsonl").read_text()
        assert (run / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()


@pytest.mark.parametrize(("background", "failing_call", "worker_dies"),
                         [("always", 3, False), ("always", 4, False), ("never", 4, False), ("always", 3, True),
                          ("always", 4, True)])
def test_an_outage_keeps_the_evaluations_before_it_and_redoes_the_one_it_cut(model_dir, scenario_file, tmp_path,
                                                                             keys, monkeypatch, background,
                                                                             failing_call, worker_dies) -> None:
    # The simulator fails at interaction failing_call - 1. At 2, the worker's evaluation at 0 is part of the
    # checkpoint; at 3, the evaluation at 3 (in the worker or in the loop) started after the consistent point and is
    # redone on resume, over the same window of interactions. worker_dies: the worker is killed as the outage starts,
    # holding the evaluation at 0 (the loop reads a reply only when it must) or at 3. The run still checkpoints: it
    # redoes the evaluation at 0 itself and drops the one at 3 unread.
    state = {"simulator_calls": 0, "down": False}
    if worker_dies:
        monkeypatch.setattr(EvaluationWorker, "ready", lambda self: False)

    def plan(call: Call) -> str:
        if call.role == "simulator" and call.attempt == 0:
            state["simulator_calls"] += 1
            if state["simulator_calls"] == failing_call and worker_dies:
                workers = [p for p in multiprocessing.active_children() if p.name == "sdpo_env-evaluation"]
                assert len(workers) == 1
                workers[0].kill()
                workers[0].join()
            state["down"] = state["down"] or state["simulator_calls"] == failing_call
        return "529" if state["down"] else "ok"

    def args(server: FakeLLMServer, out: Path, *extra: str) -> list[str]:
        return [f"scenario={scenario_file}", f"policy.model={model_dir}", "policy.max_new_tokens=12", "eval.every=3",
                "eval.n_prompts=4", "eval.bootstrap=50", "checkpoint_every=3", "agent.batch_size=2",
                f"eval.background={background}", f"out_dir={out}", "simulator.backend=anthropic",
                "simulator.model=claude-haiku-4-5", f"simulator.base_url={server.anthropic_url}",
                "simulator.max_retries=1", "simulator.timeout_s=0.5", *extra]

    straight, out = tmp_path / "straight", tmp_path / "outage"
    with FakeLLMServer(KEY) as server:
        assert main(args(server, straight)) == 0
    with FakeLLMServer(KEY, plan) as server:
        assert main(args(server, out)) == 3
        checkpoint = torch.load(out / "checkpoint.pt", weights_only=False)
        assert checkpoint["t"] == failing_call - 1
        metrics = read_jsonl(out / "metrics.jsonl")
        assert [r["interaction"] for r in metrics] == [0] and checkpoint["n_metric_lines"] == 1
        assert checkpoint["last_eval"] == 0
        state["down"] = False
        assert main([f"resume={out}"]) == 0
    for name in ("interactions.jsonl", "metrics.jsonl"):
        assert (out / name).read_text() == (straight / name).read_text()


def test_budget_stops_with_a_checkpoint_and_resumes_with_a_larger_one(model_dir, scenario_file, tmp_path, keys,
                                                                      capsys) -> None:
    out = tmp_path / "budget"
    prices = ["judge.price_input_per_mtok=200", "judge.price_output_per_mtok=200",
              "simulator.price_input_per_mtok=200", "simulator.price_output_per_mtok=200"]
    with FakeLLMServer(KEY) as server:
        assert main(args_for(model_dir, scenario_file, server, out, "budget_usd=2", *prices)) == 3
        err = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
        assert "budget_usd=2 reached" in err and f"resume={out} budget_usd=..." in err
        state = torch.load(out / "checkpoint.pt", weights_only=False)
        assert 0 < state["llm"]["spent_usd"] <= 2
        stopped_at = state["t"]
        assert 0 < stopped_at < 8
        assert [r["interaction"] for r in read_jsonl(out / "interactions.jsonl")] == list(range(stopped_at))
        assert len(read_jsonl(out / "metrics.jsonl")) == state["n_metric_lines"]  # no half-written evaluation
        assert not (out / "summary.json").exists()
        assert main([f"resume={out}", "budget_usd=100"]) == 0
        assert "/100.00" in capsys.readouterr().out  # the live progress line shows spending against the budget
    assert yaml.safe_load((out / "config.yaml").read_text())["budget_usd"] == 100
    assert [r["interaction"] for r in read_jsonl(out / "interactions.jsonl")] == list(range(8))
    cost = json.loads((out / "summary.json").read_text())["cost"]
    assert cost["budget_usd"] == 100 and 2 < cost["usd"] <= 100


def test_a_missing_key_fails_before_any_folder_exists(model_dir, scenario_file, tmp_path, monkeypatch,
                                                      capsys) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = tmp_path / "never"
    args = [f"scenario={scenario_file}", "judge.backend=openai", "judge.model=gpt-4o-mini", f"out_dir={out}"]
    assert main(args) == 2
    assert ("error: judge.backend=openai needs an API key in the environment variable OPENAI_API_KEY"
            in capsys.readouterr().err)
    assert not out.exists()
    assert main([f"scenario={scenario_file}", "judge.backend=openai", f"out_dir={out}"]) == 2
    assert "judge.model: backend=openai needs a model, e.g. model=gpt-4o-mini" in capsys.readouterr().err


def test_a_budget_needs_a_price(scenario_file, tmp_path, keys, capsys) -> None:
    out = tmp_path / "never"
    assert main([f"scenario={scenario_file}", "judge.backend=openai", "judge.model=my-finetune", "budget_usd=1",
                 f"out_dir={out}"]) == 2
    err = capsys.readouterr().err
    assert "command line: judge.price_input_per_mtok: no known price for model 'my-finetune'" in err
    assert "set judge.price_input_per_mtok= and judge.price_output_per_mtok=" in err and not out.exists()


def test_a_rejected_key_stops_the_run_with_a_clear_message(model_dir, scenario_file, tmp_path, monkeypatch,
                                                           capsys) -> None:
    wrong = "sk-wrong-0000"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    out = tmp_path / "rejected"
    with FakeLLMServer(KEY) as server:
        assert main(args_for(model_dir, scenario_file, server, out)) == 2
    printed = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert "stopped at interaction 0:" in printed
    assert "the openai API rejected a request to model 'gpt-4o-mini' with HTTP 401" in printed
    assert "check the API key in the environment" in printed and wrong not in printed
    assert (out / "checkpoint.pt").is_file() and read_jsonl(out / "interactions.jsonl") == []
