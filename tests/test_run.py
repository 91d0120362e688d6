"""The runner end to end on a small real model: files, resume after SIGKILL, Ctrl-C, errors, re-evaluation."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from rich.console import Console

import sdpo_env.tiny.probe as probe_module
from agents.sdpo import SDPOConfig
from sdpo_env.compare import CompareConfig, compare
from sdpo_env.config import config_to_dict
from sdpo_env.errors import SdpoEnvError
from sdpo_env.evaluation import EvaluationWorker
from sdpo_env.judges.evaluate import wilson_interval
from sdpo_env.prompts import load_prompts
from sdpo_env.reevaluate import ReevaluateConfig, learner_at, reevaluate, save_adapter_at, stored_config
from sdpo_env.reevaluate import main as reevaluate_main
from sdpo_env.run import main, prepare
from sdpo_env.runfolder import RunFolder
from sdpo_env.schema import to_dict
from sdpo_env.tiny.probe import Sampler
from tests.models import build_random_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"), hidden=48)


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "tiny_flip.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_flip", "phases": [
        {"start": 0, "end": 8, "persona": "concise_casual_beginner"},
        {"start": 8, "end": 16, "persona": "detailed_professional_expert"}]}))
    return path


def args_for(model_dir, scenario_file, out_dir, *extra):
    return [f"scenario={scenario_file}", f"policy.model={model_dir}", "policy.max_new_tokens=16", "eval.every=4",
            "eval.n_prompts=6", "eval.bootstrap=200", "checkpoint_every=3", f"out_dir={out_dir}",
            "agent.batch_size=2", *extra]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_run_writes_the_run_folder(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(args_for(model_dir, scenario_file, out)) == 0
    printed = capsys.readouterr().out
    for name in ("config.yaml", "interactions.jsonl", "metrics.jsonl", "summary.json", "winrate.png",
                 "preferences.png", "checkpoint.pt", "adapter/adapter_config.json"):
        assert (out / name).is_file(), name
    interactions = read_jsonl(out / "interactions.jsonl")
    assert [r["interaction"] for r in interactions] == list(range(16))
    assert {r["phase"] for r in interactions[8:]} == {1}
    metrics = read_jsonl(out / "metrics.jsonl")
    assert [(r["interaction"], r["phase"]) for r in metrics] == [(0, 0), (4, 0), (8, 0), (8, 1), (12, 1), (16, 1)]
    for row in metrics:
        assert {"win_rate", "ci_low", "ci_high", "win_rate_excl_ties", "coverage", "ceiling", "sat/all",
                "oracle/win_rate", "position_consistency"} <= set(row)
    assert "sat/concise" in metrics[0] and "sat/detailed" in metrics[-1]
    for row, name in ((metrics[0], "concise"), (metrics[-1], "detailed")):  # a prompt is one observation
        assert (row[f"sat_low/{name}"], row[f"sat_high/{name}"]) == wilson_interval(row[f"sat/{name}"], 6)
    # the final tables: each preference at the end of each phase, the policy's share with its interval and the base's
    ends = [r for r in metrics if (r["interaction"], r["phase"]) in {(8, 0), (16, 1)}]
    table = printed[printed.index("each preference at the end of each phase"):].splitlines()
    shown = [" ".join(line.split()) for line in table if line.strip().startswith(("8 ", "16 "))]
    expected = [f"{r['interaction']} {r['persona']} {name} {r[f'sat/{name}']:.2f} [{r[f'sat_low/{name}']:.2f}, "
                f"{r[f'sat_high/{name}']:.2f}] {r[f'base_sat/{name}']:.2f}"
                for r in ends for name in (k.removeprefix("sat/") for k in r if k.startswith("sat/") and k != "sat/all")
                ]
    assert len(expected) >= 2 and shown == expected
    # the win-rate table: the base model's surprise at the answers in the last column, its own answers' in the caption
    assert {"surprise", "base_surprise"} <= set(metrics[0]) and len({r["base_surprise"] for r in metrics}) == 1
    last = next(line for line in printed.splitlines() if line.strip("│ ").startswith("16 "))
    assert last.rstrip(" │").endswith(f"{metrics[-1]['surprise']:.2f}")
    assert f"(nats); its own answers: {metrics[0]['base_surprise']:.2f}" in " ".join(printed.split())
    assert "sdpo/loss" in metrics[1] and "env/reward" in metrics[1]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["policy"]["model"] == str(model_dir)
    # every learner option is recorded, so a later change of a default cannot change a resumed run
    assert config["agent"] == {"name": "sdpo", **to_dict(SDPOConfig(batch_size=2))}
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["phase_end"]) == {"0", "1"}
    assert summary["timings"]["evaluations"] == 5  # points 0, 4, 8 (judged under both personas), 12, 16
    # batch_size=2: the first update learns from one answer, every later one from two, which by_follow_up leaves out
    assert [r["sdpo/answers"] for r in interactions] == [1.0] + [2.0] * 15
    by_kind = summary["signal"]["by_follow_up"]
    assert sum(len(figures) > 1 for kinds in by_kind.values() for figures in kinds.values()) == 1
    assert (out / "winrate.png").stat().st_size > 10_000
    assert [p.name for p in (out / "snapshots").iterdir()] == ["t8.pt"]  # the policy at the persona change


def _spawn(args, log):
    """The run in a process group of its own (with its evaluation worker, if any), as a terminal starts it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "sdpo_env.run", *args], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


def _wait_until_the_group_is_gone(group: int, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError("a process of the run (the evaluation worker?) outlived it")


def _wait_for_lines(path: Path, n: int, proc, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.is_file() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError("the run ended before it could be interrupted")
        time.sleep(0.05)
    raise AssertionError("timed out")


@contextlib.contextmanager
def _single_thread() -> Iterator[None]:
    """The worker's thread count everywhere, so that only the process differs between a worker's run and a loop's."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def one_thread():
    with _single_thread():
        yield


@pytest.fixture(scope="module")
def loop_run(model_dir, scenario_file, tmp_path_factory) -> Path:
    """A run that evaluates in the loop's process, with one torch thread."""
    out = tmp_path_factory.mktemp("loop") / "run"
    with _single_thread():
        assert main(args_for(model_dir, scenario_file, out, "eval.background=never")) == 0
    return out


@pytest.mark.slow
def test_the_evaluation_worker_writes_the_rows_the_loop_writes(model_dir, scenario_file, loop_run, tmp_path,
                                                               monkeypatch, one_thread) -> None:
    submitted: list[int] = []  # interactions whose evaluation went to the worker
    submit = EvaluationWorker.submit
    monkeypatch.setattr(EvaluationWorker, "submit", lambda self, k, *a: (submitted.append(k), submit(self, k, *a)))
    assert main(args_for(model_dir, scenario_file, tmp_path / "worker", "eval.background=always")) == 0
    assert submitted == [0, 4, 8, 12, 16]
    for name in ("metrics.jsonl", "interactions.jsonl"):
        assert (tmp_path / "worker" / name).read_text() == (loop_run / name).read_text()
    timings = json.loads((tmp_path / "worker" / "summary.json").read_text())["timings"]
    assert timings["evaluations"] == 5 and timings["evaluation_s"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("killed", ["during", "before"])
def test_a_run_whose_worker_dies_evaluates_in_its_own_process(model_dir, scenario_file, loop_run, tmp_path,
                                                               monkeypatch, capsys, one_thread, killed) -> None:
    # "during": the worker dies holding the evaluation at 4, which the loop redoes from the request it sent;
    # "before": it dies before the evaluation at 8 is sent. Either way the run goes on without it, with the same rows.
    submitted: list[int] = []
    submit = EvaluationWorker.submit

    def submit_then_kill(self, k, *args):
        if killed == "before" and k == 8:
            self._process.kill()
            self._process.join()
        submit(self, k, *args)
        submitted.append(k)
        if killed == "during" and k == 4:
            self._process.kill()

    monkeypatch.setattr(EvaluationWorker, "submit", submit_then_kill)
    out = tmp_path / "worker"
    assert main(args_for(model_dir, scenario_file, out, "eval.background=always")) == 0
    assert submitted == {"during": [0, 4], "before": [0, 4]}[killed]
    stopped_at = {"during": 4, "before": 8}[killed]
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert (f"warning: the evaluation worker stopped (exit code -9) during the evaluation after {stopped_at} "
            "interactions; the run evaluates in its own process from now on") in said
    for name in ("metrics.jsonl", "interactions.jsonl"):
        assert (out / name).read_text() == (loop_run / name).read_text()
    assert json.loads((out / "summary.json").read_text())["timings"]["evaluations"] == 5


@pytest.mark.slow
@pytest.mark.parametrize("background", ["never", "always"])
def test_sigkill_then_resume_matches_an_uninterrupted_run(model_dir, scenario_file, tmp_path, background) -> None:
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(args_for(model_dir, scenario_file, straight, f"eval.background={background}")) == 0
    kill_at = int(np.random.default_rng().integers(4, 14))  # a random interaction, past the first checkpoint
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(args_for(model_dir, scenario_file, killed, f"eval.background={background}"), log)
        _wait_for_lines(killed / "interactions.jsonl", kill_at, proc)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _wait_until_the_group_is_gone(proc.pid)  # an orphaned worker stops by itself
    assert len(read_jsonl(killed / "interactions.jsonl")) < 16, "the run finished before the kill"
    assert main([f"resume={killed}"]) == 0
    assert (killed / "metrics.jsonl").read_text() == (straight / "metrics.jsonl").read_text()
    assert (killed / "interactions.jsonl").read_text() == (straight / "interactions.jsonl").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("background", ["never", "always"])
def test_ctrl_c_checkpoints_and_exits_cleanly(model_dir, scenario_file, tmp_path, background) -> None:
    out = tmp_path / "interrupted"
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(args_for(model_dir, scenario_file, out, f"eval.background={background}"), log)
        _wait_for_lines(out / "interactions.jsonl", 5, proc)
        os.killpg(proc.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the worker gets it too
        assert proc.wait(timeout=120) == 130
        _wait_until_the_group_is_gone(proc.pid)
    text = (tmp_path / "log.txt").read_text()
    assert f"python -m sdpo_env.run resume={out}" in text
    assert "Traceback" not in text  # the worker shares the log: it must not die of the Ctrl-C
    done = len(read_jsonl(out / "interactions.jsonl"))
    assert 5 <= done < 16
    other = {"never": "always", "always": "never"}[background]  # a resume may change where it evaluates
    assert main([f"resume={out}", f"eval.background={other}"]) == 0
    assert len(read_jsonl(out / "interactions.jsonl")) == 16
    assert yaml.safe_load((out / "config.yaml").read_text())["eval"]["background"] == other


@pytest.mark.slow
def test_sigterm_to_the_run_alone_checkpoints_like_ctrl_c(model_dir, scenario_file, tmp_path) -> None:
    # kill PID, timeout, a scheduler's time limit: the signal reaches the run's process only, not its worker
    out = tmp_path / "terminated"
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(args_for(model_dir, scenario_file, out, "eval.background=always"), log)
        _wait_for_lines(out / "interactions.jsonl", 5, proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 130
        _wait_until_the_group_is_gone(proc.pid)  # the run closed its worker on the way out
    text = (tmp_path / "log.txt").read_text()
    assert f"python -m sdpo_env.run resume={out}" in text and "Traceback" not in text
    assert 5 <= len(read_jsonl(out / "interactions.jsonl")) < 16
    assert main([f"resume={out}"]) == 0
    assert len(read_jsonl(out / "interactions.jsonl")) == 16


@pytest.mark.slow
def test_a_folder_a_run_is_writing_is_refused_to_a_second_process(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "busy"
    with open(tmp_path / "log.txt", "w") as log:
        proc = _spawn(args_for(model_dir, scenario_file, out), log)
        _wait_for_lines(out / "interactions.jsonl", 1, proc)  # likely before its first checkpoint (at 3)
        assert main(args_for(model_dir, scenario_file, out)) == 2  # the same out_dir again
        assert f"out_dir: {out} is being written by another process (pid {proc.pid} on " in capsys.readouterr().err
        _wait_for_lines(out / "interactions.jsonl", 4, proc)  # past a checkpoint: a resume would find one
        assert main([f"resume={out}"]) == 2
        assert f"resume: {out} is being written by another process (pid {proc.pid} on " in capsys.readouterr().err
        assert proc.wait(timeout=300) == 0
    assert [r["interaction"] for r in read_jsonl(out / "interactions.jsonl")] == list(range(16))  # untouched
    assert main(args_for(model_dir, scenario_file, out)) == 2  # free now: the usual answer for a finished run
    assert f"{out} already holds a run; continue it with resume={out}" in capsys.readouterr().err


def test_errors_name_the_problem(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(args_for(model_dir, scenario_file, out, "n_interactions=2", "eval.every=1")) == 0
    assert main(args_for(model_dir, scenario_file, out)) == 2
    assert f"out_dir: {out} already holds a run; continue it with resume={out}" in capsys.readouterr().err
    assert main([f"resume={out}", "seed=3"]) == 2
    assert "command line: seed: a resumed run keeps the settings in its config.yaml" in capsys.readouterr().err
    before = set(Path("runs").glob("*")) if Path("runs").is_dir() else set()
    assert main(["scenario=flip", "agent=sdpoo"]) == 2
    assert "unknown learner 'sdpoo'. Did you mean 'sdpo'" in capsys.readouterr().err
    after = set(Path("runs").glob("*")) if Path("runs").is_dir() else set()
    assert after == before, "a run that failed validation must not leave a run folder behind"


@pytest.mark.slow
def test_a_branch_continues_a_run_from_its_checkpoint_with_other_learner_options(model_dir, scenario_file, loop_run,
                                                                                   tmp_path, capsys,
                                                                                   one_thread) -> None:
    source, same, changed = tmp_path / "source", tmp_path / "same", tmp_path / "changed"
    assert main(args_for(model_dir, scenario_file, source, "eval.background=never", "n_interactions=8",
                         "snapshot_every=3")) == 0
    assert sorted(p.name for p in (source / "snapshots").iterdir()) == ["t3.pt", "t6.pt"]  # none at the end
    # unchanged options: the branch goes on as the source would have, up to the end of the scenario
    assert main([f"branch={source}", "n_interactions=16", f"out_dir={same}"]) == 0
    for name in ("metrics.jsonl", "interactions.jsonl"):
        assert (same / name).read_text() == (loop_run / name).read_text()
    assert (same / "snapshots" / "t8.pt").is_file()  # the persona change the branch went through
    # from the state a run kept at its persona change (at=8): again as the unbroken run goes on
    at8 = tmp_path / "at8"
    capsys.readouterr()
    assert main([f"branch={loop_run}", "at=8", f"out_dir={at8}"]) == 0
    assert f"resuming {at8} at interaction 8" in capsys.readouterr().out
    for name in ("metrics.jsonl", "interactions.jsonl"):
        assert (at8 / name).read_text() == (loop_run / name).read_text()
    at6 = tmp_path / "at6"  # from a state kept by snapshot_every
    assert main([f"branch={source}", "at=6", "n_interactions=16", f"out_dir={at6}"]) == 0
    assert f"resuming {at6} at interaction 6" in capsys.readouterr().out
    for name in ("metrics.jsonl", "interactions.jsonl"):
        assert (at6 / name).read_text() == (loop_run / name).read_text()
    old = tmp_path / "old"  # a run from before snapshots held the whole state: only the policy at 8
    shutil.copytree(same, old)
    torch.save({"t": 8, "learner": torch.load(old / "snapshots" / "t8.pt", weights_only=False)["learner"]},
               old / "snapshots" / "t8.pt")
    # past the scenario's 16 interactions: the last phase goes on, and ends with the run
    assert main([f"branch={source}", "n_interactions=20", "agent.lr=5e-3", "agent.weight_decay=0",
                 f"out_dir={changed}"]) == 0
    assert "from 8: agent.lr=0.005 agent.weight_decay=0.0 n_interactions=20" in capsys.readouterr().out  # the table
    assert yaml.safe_load((changed / "config.yaml").read_text())["agent"]["lr"] == 5e-3
    rows = read_jsonl(changed / "interactions.jsonl")
    assert [r["interaction"] for r in rows] == list(range(20))
    assert rows[:8] == read_jsonl(source / "interactions.jsonl")
    assert json.loads((changed / "summary.json").read_text())["phase_end"]["1"]["interaction"] == 20
    (group,) = torch.load(changed / "checkpoint.pt", weights_only=False)["learner"]["optimizer"]["param_groups"]
    assert (group["lr"], group["weight_decay"]) == (5e-3, 0.0), "the source's optimizer settings came back"
    assert read_jsonl(source / "metrics.jsonl")[-1]["interaction"] == 8  # the source is left as it was
    # where each branch started and what it changed, kept in branch.json and summary.json; a branch of a branch
    # keeps the whole line
    defaults = SDPOConfig()
    from_source = {"run": str(source), "at": 8, "changed": {"agent.lr": [defaults.lr, 5e-3],
                                                            "agent.weight_decay": [defaults.weight_decay, 0.0],
                                                            "n_interactions": [8, 20]}}
    assert json.loads((changed / "branch.json").read_text()) == [from_source]
    assert json.loads((changed / "summary.json").read_text())["branches"] == [from_source]
    assert json.loads((at8 / "branch.json").read_text()) == [{"run": str(loop_run), "at": 8, "changed": {}}]
    assert main([f"branch={changed}", f"out_dir={tmp_path / 'again'}"]) == 0
    assert json.loads((tmp_path / "again" / "branch.json").read_text()) == [
        from_source, {"run": str(changed), "at": 20, "changed": {}}]
    assert json.loads((loop_run / "summary.json").read_text())["branches"] == []  # no branch

    for args, said in [
        ([f"branch={source}", "seed=3", "agent.lora_r=4", "agent.lr=1e-2"],
         ["command line: agent.lora_r: a branch keeps", "command line: seed: a branch keeps"]),
        ([f"branch={tmp_path / 'nothing'}"], ["has no config.yaml and checkpoint.pt"]),
        ([f"branch={source}", f"out_dir={source}"], ["out_dir: a branch needs a folder of its own"]),
        ([f"branch={source}", f"out_dir={changed}"], [f"out_dir: {changed} already holds a run"]),
        ([f"branch={loop_run}", "at=5"], [f"at: {loop_run} kept its state after 8, 16 interactions"]),
        ([f"branch={loop_run}", "at=x"], ["at: expected a number of interactions (e.g. at=250), got 'x'"]),
        ([f"branch={old}", "at=8"], ["t8.pt holds only the policy", "can be judged again, not branched from"]),
        ([f"resume={source}", "at=8"], ["at: at=T goes with branch=RUN"]),
    ]:
        assert main(args) == 2
        err = capsys.readouterr().err
        assert all(s in err for s in said), err
        assert "command line: agent.lr:" not in err  # learner options may change
    assert not (tmp_path / "nothing").exists()


@pytest.mark.parametrize("agent", ["none", "icl_oracle"])
def test_baselines_run(model_dir, scenario_file, tmp_path, agent) -> None:
    out = tmp_path / agent
    args = [a for a in args_for(model_dir, scenario_file, out) if not a.startswith("agent.")]  # takes no options
    assert main([*args, f"agent={agent}", "n_interactions=4"]) == 0
    metrics = read_jsonl(out / "metrics.jsonl")
    assert metrics[-1]["interaction"] == 4
    assert not (out / "adapter").exists()
    kinds = [r["follow_up_kind"] for r in read_jsonl(out / "interactions.jsonl")]
    by_kind = json.loads((out / "summary.json").read_text())["signal"]["by_follow_up"]
    assert by_kind == {"0": {k: {"share": kinds.count(k) / 4} for k in set(kinds)}}  # no updates: shares alone
    with pytest.raises(SdpoEnvError, match=f"ran agent={agent}, which trains no adapter"):
        save_adapter_at(out, 4, tmp_path / "adapter")


def test_the_summary_tells_which_follow_ups_carry_the_signal() -> None:
    from sdpo_env.run import signal_by_follow_up

    def row(phase, kind, abs_mean=None, total=None, grad=None, answers=1):
        update = {} if abs_mean is None else {"sdpo/advantage_abs_mean": abs_mean, "sdpo/advantage_sum_mean": total,
                                              "sdpo/grad_norm": grad, "sdpo/answers": answers}
        return {"phase": phase, "follow_up_kind": kind, **update}

    rows = [row(0, "complaint", 0.1, -4.0, 0.2), row(0, "satisfied", 0.01, 0.5, 0.01),
            row(0, "complaint", 0.3, -2.0, 0.4), row(0, "complaint", 0.2, 1.0, 0.1),
            row(0, "complaint", 9.0, 9.0, 9.0, answers=2),  # an update of two answers: not this follow-up's alone
            row(1, "satisfied"), row(1, "new_question")]  # phase 1: a learner that logs no update metrics
    found = signal_by_follow_up(rows)
    assert found["0"]["complaint"] == pytest.approx({"share": 0.8, "advantage_abs_mean": 0.2,
                                                     "advantage_sum_mean": -5 / 3, "advantage_sum_positive": 1 / 3,
                                                     "grad_norm_median": 0.2})
    assert found["0"]["satisfied"] == pytest.approx({"share": 0.2, "advantage_abs_mean": 0.01,
                                                     "advantage_sum_mean": 0.5, "advantage_sum_positive": 1.0,
                                                     "grad_norm_median": 0.01})
    assert found["1"] == {"new_question": {"share": 0.5}, "satisfied": {"share": 0.5}}


def test_surprise_is_read_once_per_evaluation_and_once_for_the_base(model_dir, scenario_file, tmp_path,
                                                                     monkeypatch) -> None:
    from sdpo_env.judges.evaluate import WinRateEvaluator

    read = []
    real = WinRateEvaluator.surprise
    monkeypatch.setattr(WinRateEvaluator, "surprise", lambda self, answers: read.append(1) or real(self, answers))
    out = tmp_path / "counted"
    assert main(args_for(model_dir, scenario_file, out, "n_interactions=4")) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and all("surprise" in r and "oracle/win_rate" in r for r in rows)
    assert len(read) == len(rows) + 1  # not for the oracle's answers, whose figure nobody reads


def test_eval_surprise_false_skips_the_base_models_scoring(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "quiet"
    assert main(args_for(model_dir, scenario_file, out, "n_interactions=4", "eval.surprise=false")) == 0
    rows = read_jsonl(out / "metrics.jsonl")
    assert len(rows) == 2 and not any("surprise" in k for r in rows for k in r)
    assert "its own answers:" not in capsys.readouterr().out  # no caption; the column shows "-"


def test_degenerate_learning_is_flagged() -> None:
    from sdpo_env.run import degenerate

    healthy = {"interaction": 5, "valid_rate": 1.0, "sdpo/advantage_abs_mean": 0.1, "coverage": 0.7, "missing_rate": 0}
    assert degenerate(healthy) == []
    collapsed = {**healthy, "valid_rate": 0.0, "sdpo/advantage_abs_mean": 0.0, "coverage": 0.0}
    messages = degenerate(collapsed)
    assert any(m.startswith("policy collapse at interaction 5: only 0% of held-out answers") for m in messages)
    assert any(m.startswith("no learning signal at interaction 5") for m in messages)
    assert any(m == "the judge called every pair a tie at interaction 5" for m in messages)
    assert degenerate({**healthy, "missing_rate": 0.75}) == ["the judge failed on 75% of pairs at interaction 5"]
    # the base model's surprise at the answers: a style it writes less often passes, text it would not write does not
    assert degenerate({**healthy, "surprise": 0.80, "base_surprise": 0.47}) == []
    (garbled,) = degenerate({**healthy, "surprise": 1.33, "base_surprise": 0.47})
    assert garbled.startswith("answers the base model would not write at interaction 5: 1.33 nats per token under the "
                              "frozen base model against 0.47 for its own answers")



def test_reevaluation_repeats_the_runs_evaluation_and_scales_the_answers(model_dir, scenario_file, tmp_path,
                                                                         capsys) -> None:
    out = tmp_path / "run"
    assert main(args_for(model_dir, scenario_file, out, "n_interactions=12")) == 0
    (logged,) = [r for r in read_jsonl(out / "metrics.jsonl") if r["interaction"] == 12]
    assert logged["phase"] == 1  # the flipped preferences: judged under the new persona

    (again,) = reevaluate(ReevaluateConfig(run=str(out), samples_per_prompt=1), Console(quiet=True))
    assert (again["interaction"], again["phase"], again["persona"]) == (12, 1, logged["persona"])

    def compared(row: dict) -> dict:
        return {k: v for k, v in row.items() if k.startswith(("sat", "base_sat/", "win_rate", "ci_", "coverage",
                                                              "ceiling", "valid_rate", "mean_words", "surprise",
                                                              "base_surprise"))}

    assert len(compared(logged)) >= 14 and {"surprise", "base_surprise"} <= set(compared(logged))
    assert compared(again) == compared(logged)  # the restored policy, exactly

    capsys.readouterr()
    assert reevaluate_main([f"run={out}", "samples_per_prompt=3", "seed=5"]) == 0
    printed = capsys.readouterr().out
    assert "re-evaluation (18 answers)" in printed and "the run's evaluation (6 answers)" in printed
    (row,) = json.loads((out / "reevaluations" / "t12-k3-p6-s5.json").read_text())
    assert len(row["answers"]) == 18 and row["samples_per_prompt"] == 3 and row["seed"] == 5
    assert [a["prompt"] for a in row["answers"][:3]] == [row["answers"][0]["prompt"]] * 3
    assert len({a["base"] for a in row["answers"][:3]}) > 1  # each policy answer meets its own base answer
    assert 0 <= row["sat/all"] <= 1 and row["n_prompts"] == 6
    # three answers to a prompt are not three observations: the interval is as wide as for one answer per prompt
    low, high = wilson_interval(row["sat/detailed"], 6)
    assert (row["sat_low/detailed"], row["sat_high/detailed"]) == (low, high)
    assert f"{row['sat/detailed']:.3f} [{low:.2f}, {high:.2f}]" in printed

    # on the training pool: its first prompts, in a file of their own, with nothing of the run's beside them
    assert reevaluate_main([f"run={out}", "samples_per_prompt=1", "prompts=train"]) == 0
    assert "the run's evaluation: none on the training prompts" in capsys.readouterr().out
    (on_train,) = json.loads((out / "reevaluations" / "t12-k1-p6-s0-train.json").read_text())
    assert [a["prompt"] for a in on_train["answers"]] == [p.text for p in load_prompts("train")[:6]]
    assert [a["prompt"] for a in again["answers"]] == [p.text for p in load_prompts("eval")[:6]]
    assert on_train["prompts"] == "train" and again["prompts"] == "eval"
    assert reevaluate_main([f"run={out}", "prompts=test"]) == 2

    # the policy the run kept at the persona change, judged under the old and the new preferences as the run did
    at_change = reevaluate(ReevaluateConfig(run=str(out), samples_per_prompt=1, at=8), Console(quiet=True))
    logged_at_change = [r for r in read_jsonl(out / "metrics.jsonl") if r["interaction"] == 8]
    assert [(r["interaction"], r["phase"]) for r in at_change] == [(8, 0), (8, 1)]
    for row, logged_row in zip(at_change, logged_at_change, strict=True):
        assert compared(row) == compared(logged_row)
    assert compared(at_change[1]) != compared(again)  # not the final policy
    assert reevaluate_main([f"run={out}", "at=5"]) == 2
    assert "kept its state after 8, 12 interactions" in capsys.readouterr().err


def test_a_bench_folder_is_judged_again_run_by_run_and_tabulated(model_dir, scenario_file, tmp_path, capsys) -> None:
    bench = tmp_path / "bench"
    for seed in (0, 1):
        assert main(args_for(model_dir, scenario_file, bench / "sdpo" / f"seed{seed}", "n_interactions=12",
                             f"seed={seed}")) == 0
    (bench / "none" / "seed0").mkdir(parents=True)  # a run the bench has not started: its config, no checkpoint
    shutil.copy(bench / "sdpo" / "seed0" / "config.yaml", bench / "none" / "seed0")
    capsys.readouterr()

    assert reevaluate_main([f"run={bench}", "samples_per_prompt=1", "at=8"]) == 0
    printed = capsys.readouterr().out
    assert "none/seed0: no checkpoint yet" in printed
    with (bench / "reevaluations" / "t8-k1.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [(r["learner"], r["seed"], r["phase"]) for r in table] == [
        ("sdpo", "0", "0"), ("sdpo", "0", "1"), ("sdpo", "1", "0"), ("sdpo", "1", "1")]
    for r in table:  # one answer per prompt at the run's seed: each run's own evaluation at 8, exactly
        run = bench / r["learner"] / f"seed{r['seed']}"
        (logged,) = [m for m in read_jsonl(run / "metrics.jsonl")
                     if (m["interaction"], m["phase"]) == (8, int(r["phase"]))]
        assert float(r["win_rate_excl_ties"]) == pytest.approx(logged["win_rate_excl_ties"], abs=1e-12)
        rates = {k: v for k, v in logged.items() if k.startswith("sat/") and k != "sat/all"}
        assert float(r["worst"]) == pytest.approx(min(rates.values())) and f"sat/{r['worst_preference']}" in rates
        assert (run / "reevaluations" / f"t8-k1-p6-s{r['seed']}.json").is_file()
    assert table[0]["win_rate"] != table[2]["win_rate"]  # two seeds, two policies
    mean = (float(table[1]["win_rate"]) + float(table[3]["win_rate"])) / 2
    md = (bench / "reevaluations" / "t8-k1.md").read_text()
    assert "| sdpo | 2 seeds | 8 | 1 (" in md and f"| {mean:.3f} ± " in md
    # the table pairs with itself seed by seed: every difference 0 (python -m sdpo_env.compare)
    compared = compare(CompareConfig(a=str(bench), b=str(bench), table="t8-k1"), Console(quiet=True))
    assert [label.split(" (")[0] for label in compared] == ["interaction 8, phase 0", "interaction 8, phase 1"]
    for figures in compared.values():
        assert figures[0].seeds == (0, 1) and figures[3].figure == "least satisfied preference"
        assert all(f.difference == (0.0, 0.0) and f.a == f.b and f.b_higher == 0 for f in figures)

    # a run judged before is read, not judged again: the command continues an interrupted one
    seed0 = bench / "sdpo" / "seed0" / "reevaluations" / "t8-k1-p6-s0.json"
    rows = json.loads(seed0.read_text())
    rows[0]["win_rate"] = 0.123456
    seed0.write_text(json.dumps(rows))
    (bench / "sdpo" / "seed1" / "reevaluations" / "t8-k1-p6-s1.json").unlink()
    assert reevaluate_main([f"run={bench}", "samples_per_prompt=1", "at=8"]) == 0
    printed = capsys.readouterr().out
    assert "sdpo/seed0: judged before" in printed and "3/3 sdpo/seed1, interaction 8" in printed
    with (bench / "reevaluations" / "t8-k1.csv").open() as f:
        again = list(csv.DictReader(f))
    assert again[0]["win_rate"] == "0.123456" and again[2:] == table[2:]

    assert reevaluate_main([f"run={bench}", "at=5"]) == 2  # no run kept a policy there
    err = capsys.readouterr()
    assert "kept its state after 8, 12 interactions" in err.out and "none of its 3 runs" in err.err

    # on the training prompts: files of their own, beside the held-out pool's, which stay as they were
    held_out = (bench / "reevaluations" / "t8-k1.csv").read_text()
    assert reevaluate_main([f"run={bench}", "samples_per_prompt=1", "at=8", "prompts=train"]) == 0
    assert (bench / "reevaluations" / "t8-k1.csv").read_text() == held_out
    assert "1 answers per training prompt" in (bench / "reevaluations" / "t8-k1-train.md").read_text()
    with (bench / "reevaluations" / "t8-k1-train.csv").open() as f:
        train_row = list(csv.DictReader(f))[2]
    assert [train_row[k] for k in ("learner", "seed", "phase")] == [again[2][k] for k in ("learner", "seed", "phase")]
    # other prompts, other answers: the mean surprise (a continuous figure; a win rate over 6 answers can coincide)
    assert train_row["surprise"] != again[2]["surprise"]
    assert (bench / "sdpo" / "seed1" / "reevaluations" / "t8-k1-p6-s1-train.json").is_file()


def test_the_probe_measures_the_policy_a_run_kept_at_a_persona_change(model_dir, scenario_file, tmp_path,
                                                                      monkeypatch, capsys) -> None:
    out = tmp_path / "run"
    assert main(args_for(model_dir, scenario_file, out, "n_interactions=12")) == 0
    ids = torch.tensor([[5, 9, 17, 33, 2]])
    folder, kept = RunFolder(out), {}
    for at in (8, None):
        _, policy, _ = learner_at(folder, stored_config(folder), at)
        with torch.no_grad():
            kept[at] = policy.model(ids).logits

    seen: list[torch.Tensor] = []

    def measured(model, **kw) -> dict:  # the probe's own model: the run's model with the adapter it was given
        with torch.no_grad():
            seen.append(Sampler(model, adapter=kw["adapter"]).model(ids).logits)
        return {}

    monkeypatch.setattr(probe_module, "probe", measured)
    monkeypatch.setattr(probe_module, "table", lambda figures: "")
    probe_module.main(["--adapter", str(out), "--at", "8"])
    torch.testing.assert_close(seen[-1], kept[8], atol=1e-4, rtol=1e-4)
    assert (kept[8] - kept[None]).abs().max() > 1e-3  # the policy at the change, not the final one
    assert f"policy: {out} after 8 interactions" in capsys.readouterr().out
    probe_module.main(["--adapter", str(out)])
    torch.testing.assert_close(seen[-1], kept[None], atol=1e-4, rtol=1e-4)
    shutil.rmtree(out / "adapter")  # as in a run still going or stopped: its snapshots are measured all the same
    probe_module.main(["--adapter", str(out), "--at", "8"])
    torch.testing.assert_close(seen[-1], kept[8], atol=1e-4, rtol=1e-4)

    for argv, said in ((["--adapter", str(out), "--at", "5"], "--at 5: " + f"{out} kept its state after 8, 12 "),
                       (["--at", "8"], "--at 8 needs --adapter RUN_FOLDER")):
        with pytest.raises(SystemExit) as stopped:
            probe_module.main(argv)
        assert stopped.value.code == 2 and said in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_is_refused_without_creating_anything(tmp_path, capsys) -> None:
    missing = tmp_path / "no_run"
    assert reevaluate_main([f"run={missing}"]) == 2
    err = capsys.readouterr().err
    assert "run" in err and "config.yaml or checkpoint.pt" in err
    assert not missing.exists()
    assert reevaluate_main([f"run={tmp_path}", "samples_per_prompt=0"]) == 2
    assert "samples_per_prompt" in capsys.readouterr().err


def test_resume_warns_about_learner_options_its_config_lacks(model_dir, scenario_file, tmp_path) -> None:
    config, _, folder, resumed = prepare(args_for(model_dir, scenario_file, tmp_path / "old"))
    assert not resumed
    stored = config_to_dict(config)
    folder.write_config(stored)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a complete config.yaml resumes silently
        assert prepare([f"resume={folder.path}"])[3]
    del stored["agent"]["adam_beta2"]  # as written before the option existed
    folder.write_config(stored)
    with pytest.warns(UserWarning, match=r"config.yaml has no agent\.adam_beta2 .*defaults agent\.adam_beta2=0\.99"):
        config, _, _, _ = prepare([f"resume={folder.path}"])
    assert config.agent["name"] == "sdpo"


def test_a_run_from_before_the_contrast_resumes_and_branches_without_it(model_dir, scenario_file, tmp_path) -> None:
    """The teacher's contrast (default "Thanks." since 6 December 2026) did not exist before 5 December: a
    config.yaml without its keys means no contrast, not today's default, and that needs no warning."""
    old = tmp_path / "old"
    assert main(args_for(model_dir, scenario_file, old, "n_interactions=2", "eval.every=1")) == 0
    stored = yaml.safe_load((old / "config.yaml").read_text())
    assert (stored["agent"]["contrast"], stored["agent"]["contrast_clip"]) == ("Thanks.", 3.0)
    for key in ("contrast", "contrast_clip", "contrast_use"):
        del stored["agent"][key]
    (old / "config.yaml").write_text(yaml.safe_dump(stored))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed, _, _, _ = prepare([f"resume={old}"])
        branched, _, _, _ = prepare([f"branch={old}", f"out_dir={tmp_path / 'branch'}"])
    for config in (resumed, branched):
        assert (config.agent["contrast"], config.agent["contrast_clip"], config.agent["contrast_use"]) == (
            None, None, "target")
