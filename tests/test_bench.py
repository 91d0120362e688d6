"""The benchmark: aggregation math on synthetic run folders, the grid end to end on a small real model (every
learner, interrupted and resumed), the README's example learner by dotted path, and argument errors."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from agents import LEARNERS
from sdpo_env.bench import main
from sdpo_env.bench_metrics import PhaseInfo, area_under_curve, mean_ci, run_metrics
from sdpo_env.runfolder import RunFolder
from tests.models import build_random_model
from tests.test_runfolder import holding

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"))


@pytest.fixture(scope="module")
def scenario_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("scenario") / "tiny_flip.yaml"
    path.write_text(yaml.safe_dump({"name": "tiny_flip", "phases": [
        {"start": 0, "end": 4, "persona": "concise_casual_beginner"},
        {"start": 4, "end": 8, "persona": "detailed_professional_expert"}]}))
    return path


def grid_args(model_dir, scenario_file, out, agents, seeds=1):
    batch = ["agent.batch_size=2"] if any(a in ("sdpo", "sft_hindsight", "dpo_hindsight", "reinforce_oracle")
                                          for a in agents) else []
    return [*batch, f"scenario={scenario_file}", f"agents=[{','.join(agents)}]", f"seeds={seeds}", f"out={out}",
            f"policy.model={model_dir}", "policy.max_new_tokens=12", "eval.every=4", "eval.n_prompts=4",
            "eval.bootstrap=50", "eval.oracle=false", "checkpoint_every=3"]


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# --- aggregation math ---------------------------------------------------------------------------------------------

FLIP = [PhaseInfo(0, 0, 8, "a", ("concise",), ("concise",)), PhaseInfo(1, 8, 16, "b", ("detailed",), ("detailed",))]


def rows(points):
    return [{"interaction": x, "phase": p, "win_rate": w, "win_rate_excl_ties": min(1.0, w + 0.05)}
            for p, x, w in points]


SEED0 = rows([(0, 0, 0.5), (0, 4, 0.7), (0, 8, 0.9), (1, 8, 0.1), (1, 12, 0.85), (1, 16, 0.6)])
SEED1 = rows([(0, 0, 0.5), (0, 4, 0.8), (0, 8, 0.7), (1, 8, 0.2), (1, 12, 0.3), (1, 16, 0.4)])


def test_run_metrics_by_hand() -> None:
    m = run_metrics(SEED0, FLIP, threshold=0.8, summary={"timings": {"interaction_s_mean": 0.25, "total_s": 9.0}})
    # Trapezoids per phase: (4 * 1.2 / 2 + 4 * 1.6 / 2 + 4 * 0.95 / 2 + 4 * 1.45 / 2) / 16 = 10.4 / 16.
    assert m["auc"] == pytest.approx(10.4 / 16)
    assert m["end/p0/win_rate"] == 0.9 and m["end/p1/win_rate"] == 0.6 and m["final/win_rate"] == 0.6
    assert m["end/p0/win_rate_excl_ties"] == pytest.approx(0.95)
    assert m["reach/p0"] == 8 and m["reach/p1"] == 4  # 0.85 at 12, four interactions after the flip at 8
    assert m["retention"] is None  # a flip keeps no earlier preference
    assert m["interaction_s"] == 0.25 and m["total_s"] == 9.0
    never = run_metrics(SEED1, FLIP, threshold=0.8)
    assert never["reach/p0"] == 4 and never["reach/p1"] is None and never["interaction_s"] is None
    assert m["surprise_max"] is None  # rows from before the evaluations measured it
    measured = [{**r, "surprise": 0.4 + i / 10, "base_surprise": 0.45} for i, r in enumerate(SEED0)]
    measured[2]["surprise"] = float("nan")  # an evaluation whose answers were all empty
    assert run_metrics(measured, FLIP, threshold=0.8)["surprise_max"] == pytest.approx(0.9 - 0.45)


def test_a_run_that_ends_at_a_persona_change_is_final_on_the_phase_it_learned_from() -> None:
    first_half = SEED0[:4]  # stopped at 8: judged under phase 0 (0.9), then under phase 1's new preferences (0.1)
    m = run_metrics(first_half, FLIP[:1], threshold=0.8)
    assert m["final/win_rate"] == 0.9 and m["end/p0/win_rate"] == 0.9


def test_the_worst_preference_at_each_phase_end() -> None:
    data = [{"interaction": 8, "phase": 0, "win_rate": 0.9, "sat/concise": 0.84, "sat/casual": 1.0},
            {"interaction": 8, "phase": 1, "win_rate": 0.1, "sat/detailed": 0.16},
            {"interaction": 16, "phase": 1, "win_rate": 0.8, "sat/detailed": 0.83, "sat/casual": 0.2}]
    phases = [PhaseInfo(0, 0, 8, "a", ("concise", "casual"), ("concise", "casual")),
              PhaseInfo(1, 8, 16, "b", ("detailed",), ("detailed",))]
    m = run_metrics(data, phases, threshold=0.8)
    # phase 0 from its own row at 8, not the flipped one; phase 1 counts only the preferences in force
    assert m["end/p0/sat_min"] == 0.84 and m["end/p1/sat_min"] == 0.83
    assert run_metrics(SEED0, FLIP, threshold=0.8)["end/p0/sat_min"] is None  # no rule-checked preferences


def test_retention_for_added_preferences() -> None:
    phases = [PhaseInfo(0, 0, 4, "no_emojis", ("no_emojis",), ("no_emojis",)),
              PhaseInfo(1, 4, 8, "+praise", ("no_emojis", "praise"), ("praise",))]
    data = [{"interaction": 4, "phase": 0, "win_rate": 0.6, "sat/no_emojis": 0.9},
            {"interaction": 8, "phase": 1, "win_rate": 0.7, "sat/no_emojis": 0.6, "sat/praise": 0.8}]
    assert run_metrics(data, phases, threshold=0.8)["retention"] == pytest.approx(0.6 - 0.9)


def test_mean_ci_is_student_t_and_auc_skips_missing_values() -> None:
    mean, half = mean_ci([0.2, 0.4, 0.6])
    assert mean == pytest.approx(0.4) and half == pytest.approx(4.303 * 0.2 / 3 ** 0.5)
    assert mean_ci([0.3]) == (0.3, None)
    assert area_under_curve([{"interaction": 0, "phase": 0, "win_rate": None}]) is None


def test_bench_aggregates_finished_run_folders_without_loading_a_model(tmp_path) -> None:
    out = tmp_path / "bench"
    scenario = tmp_path / "flip16.yaml"
    scenario.write_text(yaml.safe_dump({"name": "flip16", "phases": [
        {"start": 0, "end": 8, "persona": "concise_casual_beginner"},
        {"start": 8, "end": 16, "persona": "detailed_professional_expert"}]}))
    for seed, data in enumerate((SEED0, SEED1)):
        folder = out / "none" / f"seed{seed}"
        folder.mkdir(parents=True)
        (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in data))
        (folder / "summary.json").write_text(json.dumps({"timings": {"interaction_s_mean": 0.1 * (seed + 1),
                                                                     "total_s": 10.0}}))
    assert main([f"scenario={scenario}", "agents=[none,icl_oracle]", "seeds=2", f"out={out}",
                 "policy.model=/nonexistent", "run=false"]) == 0  # aggregate only: nothing loads
    by_learner = {r["learner"]: r for r in read_csv(out / "results.csv")}
    none = by_learner["none"]
    assert none["seeds_done"] == "2" and by_learner["icl_oracle"]["seeds_done"] == "0"
    assert float(none["end/p0/win_rate_mean"]) == pytest.approx(0.8)
    half_width = 12.706 * statistics.stdev([0.9, 0.7]) / 2 ** 0.5  # Student t, 1 degree of freedom
    assert float(none["end/p0/win_rate_ci95"]) == pytest.approx(half_width, rel=1e-5)
    assert float(none["end/p1/win_rate_mean"]) == pytest.approx(0.5)
    assert float(none["reach/p0_mean"]) == pytest.approx(6) and none["reach/p1_n"] == "1"
    assert float(none["interaction_s_mean"]) == pytest.approx(0.15)
    table = (out / "results.md").read_text()
    assert "| none | 2/2 | 0.80 ± 1.27 |" in table and "| 4 (1/2 seeds) |" in table
    assert "| icl_oracle | 0/2 | - |" in table
    assert "worst pref @8" in table and none["end/p0/sat_min_n"] == "0"  # these rows carry no satisfaction
    assert len(read_csv(out / "runs.csv")) == 2 and (out / "curves.png").stat().st_size > 10_000


# --- the grid end to end -------------------------------------------------------------------------------------------


def interrupt_when(monkeypatch, path: Path, lines: int) -> None:
    """Sends this process a Ctrl-C right after the runner writes line ``lines`` of ``path`` (it checkpoints and
    stops). Sent from the write itself, so a loaded machine cannot let the run finish first."""
    append = RunFolder.append

    def append_then_interrupt(self: RunFolder, target: Path, record: dict) -> None:
        append(self, target, record)
        if target == path and len(target.read_text().splitlines()) == lines:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(RunFolder, "append", append_then_interrupt)


@pytest.mark.parametrize("name", sorted(LEARNERS))
def test_interrupted_bench_resumes_to_the_same_files(model_dir, scenario_file, tmp_path, name, capsys,
                                                     monkeypatch) -> None:
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    assert main(grid_args(model_dir, scenario_file, straight, [name])) == 0
    with monkeypatch.context() as patch:
        interrupt_when(patch, stopped / name / "seed0" / "interactions.jsonl", 2)
        assert main(grid_args(model_dir, scenario_file, stopped, [name])) == 130
    assert "run the same command again to continue" in capsys.readouterr().out
    done = len((stopped / name / "seed0" / "interactions.jsonl").read_text().splitlines())
    assert done == 2  # the run stops at the first consistent point after the Ctrl-C
    assert main(grid_args(model_dir, scenario_file, stopped, [name])) == 0
    assert "(resumed)" in capsys.readouterr().out
    for file in ("interactions.jsonl", "metrics.jsonl"):
        assert (stopped / name / "seed0" / file).read_text() == (straight / name / "seed0" / file).read_text()
    metrics = [json.loads(line) for line in (straight / name / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["interaction"], r["phase"]) for r in metrics] == [(0, 0), (4, 0), (4, 1), (8, 1)]


def readme_learner() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Benchmark learners"):]
    match = re.search(r"save this as `my_learners.py`.*?```python\n(.*?)```", section, re.S)
    assert match, "the README's example learner is missing"
    return match.group(1)


def test_readme_example_learner_runs_in_a_bench(model_dir, scenario_file, tmp_path, monkeypatch, capsys) -> None:
    code = readme_learner()
    assert 25 <= len(code.splitlines()) <= 45
    (tmp_path / "my_learners.py").write_text(code)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_learners", raising=False)
    out = tmp_path / "bench"
    args = grid_args(model_dir, scenario_file, out, ["my_learners:LastFollowUp", "none"], seeds=2)
    assert main([*args, "agent.min_words=2"]) == 0
    runs = read_csv(out / "runs.csv")
    assert [(r["learner"], r["seed"]) for r in runs] == [("my_learners:LastFollowUp", "0"),
                                                          ("my_learners:LastFollowUp", "1"), ("none", "0"),
                                                          ("none", "1")]
    config = yaml.safe_load((out / "my_learners-LastFollowUp" / "seed0" / "config.yaml").read_text())
    assert config["agent"] == {"name": "my_learners:LastFollowUp", "min_words": 2}
    assert yaml.safe_load((out / "none" / "seed1" / "config.yaml").read_text())["agent"] == {"name": "none"}
    interactions = (out / "my_learners-LastFollowUp" / "seed0" / "interactions.jsonl").read_text().splitlines()
    assert "last_follow_up/words" in json.loads(interactions[-1])
    capsys.readouterr()
    assert main([*args, "agent.min_words=2"]) == 0
    assert capsys.readouterr().out.count("finished, skipped") == 4


# --- errors --------------------------------------------------------------------------------------------------------


def test_bad_arguments_are_reported_together_before_any_model_loads(scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main([f"scenario={scenario_file}", "agents=[sdpoo,none,none]", "seeds=0", "seed=3", f"out={out}",
                 "threshold=1.5"]) == 2
    err = capsys.readouterr().err
    assert "command line: threshold: got 1.5; must be <= 1.0" in err
    assert "command line: seeds: got 0; give a positive count or a list of seeds >= 0" in err
    assert "command line: agents: none listed more than once" in err
    assert "command line: seed: set by the bench for each run; use agents=[...] and seeds=... instead" in err
    assert "command line: agents[0]: unknown learner 'sdpoo'. Did you mean 'sdpo'?" in err
    assert main([f"scenario={scenario_file}", "agents=[sdpo,none]", "agent.lrr=1", f"out={out}"]) == 2
    err = capsys.readouterr().err
    assert "command line: agent.lrr: no listed learner has this option. Did you mean 'lr' or 'lora_r'?" in err
    assert main([f"scenario={scenario_file}", "agents=[sdpo]", "eval.evrey=2", f"out={out}"]) == 2
    assert "command line: eval.evrey: unknown key. Did you mean 'every'?" in capsys.readouterr().err
    assert main([f"scenario={scenario_file}", "agents=[nowhere.mod:Learner]", f"out={out}"]) == 2
    assert "cannot import learner 'nowhere.mod:Learner': module 'nowhere.mod' not found" in capsys.readouterr().err
    assert not out.exists(), "a bench that failed validation must not create folders"


def test_a_folder_with_other_settings_is_not_mixed_in(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main([*grid_args(model_dir, scenario_file, out, ["none"]), "n_interactions=2"]) == 0
    assert main([*grid_args(model_dir, scenario_file, out, ["none"]), "n_interactions=3"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'none' / 'seed0'}: config.yaml: holds a run with other settings (n_interactions)" in err
    assert "use the same settings (n_interactions=2), another out=" in " ".join(err.split())
    # A folder written by an older version (without today's keys) reads as their defaults: still the same run.
    stored = out / "none" / "seed0" / "config.yaml"
    data = yaml.safe_load(stored.read_text())
    del data["simulator"]["max_tokens"], data["judge"]["temperature"]
    stored.write_text(yaml.safe_dump(data))
    assert main([*grid_args(model_dir, scenario_file, out, ["none"]), "n_interactions=2"]) == 0
    assert "finished, skipped" in capsys.readouterr().out


def test_a_folder_from_before_a_default_changed_names_the_settings_that_go_on_with_it(model_dir, scenario_file,
                                                                                       tmp_path, capsys) -> None:
    """An sdpo run made with the defaults of before 6 December 2026 (agent=sdpo_plain's), which wrote the contrast
    as off with an empty string: the error gives its values."""
    out = tmp_path / "bench"
    earlier = ["agent.contrast=null", "agent.contrast_clip=null", "agent.contrast_use=target"]  # as listed
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2", *earlier]) == 0
    stored = out / "sdpo" / "seed0" / "config.yaml"
    data = yaml.safe_load(stored.read_text())
    data["agent"]["contrast"] = ""  # as the versions before 6 December 2026 wrote it
    stored.write_text(yaml.safe_dump(data))
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2"]) == 2
    err = " ".join(capsys.readouterr().err.split())  # the message as one line, whatever the terminal's width
    assert f"use the same settings ({' '.join(earlier)}), another out=" in err
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2", *earlier]) == 0
    assert "finished, skipped" in capsys.readouterr().out
    # a value that is not a plain word (a list here) is not offered as an argument
    data = yaml.safe_load(stored.read_text())
    data["agent"]["lora_targets"] = ["q_proj", "v_proj"]
    stored.write_text(yaml.safe_dump(data))
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2", *earlier]) == 2
    assert "(agent.lora_targets) than this bench asks for; use the same settings, another out=" in " ".join(
        capsys.readouterr().err.split())


def test_a_folder_from_before_an_option_existed_is_read_as_it_ran(model_dir, scenario_file, tmp_path, capsys) -> None:
    """A run whose config.yaml predates the teacher's contrast had none: the bench does not take it for a run with
    today's default contrast, and names the settings that go on with it."""
    out = tmp_path / "bench"
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2"]) == 0
    stored = out / "sdpo" / "seed0" / "config.yaml"
    data = yaml.safe_load(stored.read_text())
    for key in ("contrast", "contrast_clip", "contrast_use"):
        del data["agent"][key]
    stored.write_text(yaml.safe_dump(data))
    capsys.readouterr()
    assert main([*grid_args(model_dir, scenario_file, out, ["sdpo"]), "n_interactions=2"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert ("use the same settings (agent.contrast=null agent.contrast_clip=null agent.contrast_use=target), "
            "another out=") in err


def test_seeds_may_be_a_list(tmp_path) -> None:
    out = tmp_path / "bench"
    scenario = tmp_path / "flip16.yaml"
    scenario.write_text(yaml.safe_dump({"name": "flip16", "phases": [
        {"start": 0, "end": 8, "persona": "concise_casual_beginner"},
        {"start": 8, "end": 16, "persona": "detailed_professional_expert"}]}))
    folder = out / "none" / "seed1"
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in SEED1))
    (folder / "summary.json").write_text(json.dumps({"timings": {"interaction_s_mean": 0.2, "total_s": 10.0}}))
    assert main([f"scenario={scenario}", "agents=[none]", "seeds=[1]", f"out={out}", "run=false"]) == 0
    (row,) = read_csv(out / "results.csv")
    assert row["seeds_done"] == "1"
    assert [r["seed"] for r in read_csv(out / "runs.csv")] == ["1"]


def test_ctrl_c_while_a_model_loads_stops_without_a_traceback(model_dir, scenario_file, tmp_path, monkeypatch,
                                                              capsys) -> None:
    from sdpo_env.policy import ChatPolicy

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # what Ctrl-C raises in the main thread while weights load

    monkeypatch.setattr(ChatPolicy, "load", interrupted)
    assert main(grid_args(model_dir, scenario_file, tmp_path / "bench", ["none"])) == 130
    assert "bench interrupted; run the same command again to continue" in capsys.readouterr().err


def test_jobs_run_the_grid_in_parallel_processes(model_dir, scenario_file, tmp_path) -> None:
    out = tmp_path / "bench"
    args = grid_args(model_dir, scenario_file, out, ["sdpo", "none"], seeds=2)
    assert main([*args, "jobs=2", "threads=1"]) == 0
    for agent in ("sdpo", "none"):
        for seed in (0, 1):
            folder = out / agent / f"seed{seed}"
            assert (folder / "summary.json").is_file()
            assert len((folder / "interactions.jsonl").read_text().splitlines()) == 8
            assert "interaction" in (out / agent / f"seed{seed}.log").read_text()  # the run's own output
    assert {r["seeds_done"] for r in read_csv(out / "results.csv")} == {"2"}
    # Run again: everything is finished, nothing is launched.
    assert main([*args, "jobs=2", "threads=1"]) == 0


def test_jobs_match_the_serial_grid(model_dir, scenario_file, tmp_path) -> None:
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same arithmetic as the one-thread worker processes
    try:
        assert main(grid_args(model_dir, scenario_file, serial, ["sdpo"])) == 0
    finally:
        torch.set_num_threads(threads)
    assert main([*grid_args(model_dir, scenario_file, parallel, ["sdpo"]), "jobs=2", "threads=1"]) == 0
    for name in ("interactions.jsonl", "metrics.jsonl"):
        a = [json.loads(line) for line in (serial / "sdpo" / "seed0" / name).read_text().splitlines()]
        b = [json.loads(line) for line in (parallel / "sdpo" / "seed0" / name).read_text().splitlines()]
        drop = ("time", "s", "timings")  # wall-clock fields differ between runs
        strip = [{k: v for k, v in row.items() if not any(k.startswith(d) or k.endswith(d) for d in drop)}
                 for row in a]
        strip_b = [{k: v for k, v in row.items() if not any(k.startswith(d) or k.endswith(d) for d in drop)}
                   for row in b]
        assert strip == strip_b, name


def test_threads_apply_to_the_serial_grid(model_dir, scenario_file, tmp_path, monkeypatch) -> None:
    import torch

    import sdpo_env.bench as bench_module

    seen: list[int] = []
    monkeypatch.setattr(bench_module, "execute", lambda runs, console: seen.append(torch.get_num_threads()) or 0)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # not 1, so the test means something on a one-core machine too
    try:
        assert main([*grid_args(model_dir, scenario_file, tmp_path / "b", ["none"]), "jobs=1", "threads=1"]) == 0
        assert seen == [1]  # the serial grid ran at the asked thread count
        assert torch.get_num_threads() == 2  # and the process got its own back
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("jobs", [1, 2])
def test_two_benches_share_a_grid(model_dir, scenario_file, tmp_path, capsys, jobs) -> None:
    out = tmp_path / "bench"
    args = [*grid_args(model_dir, scenario_file, out, ["none"], seeds=2), f"jobs={jobs}", "threads=1"]
    other = holding(out / "none" / "seed0")  # another bench (or a run by hand) is running seed 0
    try:
        assert main(args) == 0
        text = capsys.readouterr().out
        assert f"none seed 0: being run by another process (pid {other.pid} on " in text
        assert "1 run(s) were being run by another process and were skipped" in text
        assert not (out / "none" / "seed0" / "config.yaml").exists()  # nothing written into its folder
        assert (out / "none" / "seed1" / "summary.json").is_file()
        assert {r["seeds_done"] for r in read_csv(out / "results.csv")} == {"1"}
    finally:
        other.communicate("")
    assert main(args) == 0  # once it is free, the next call runs it
    assert (out / "none" / "seed0" / "summary.json").is_file()
    assert {r["seeds_done"] for r in read_csv(out / "results.csv")} == {"2"}


def test_a_failing_run_stops_the_grid_and_shows_its_output(model_dir, scenario_file, tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    args = grid_args(model_dir, scenario_file, out, ["none"], seeds=3)
    (out / "none" / "seed1").mkdir(parents=True)
    (out / "none" / "seed1" / "checkpoint.pt").write_bytes(b"not a checkpoint")  # resuming it fails
    code = main([*args, "jobs=1", "threads=1"])
    assert code != 0
    code = main([*args, "jobs=2", "threads=1"])
    assert code != 0
    text = capsys.readouterr().out
    assert "none seed 1 exited with" in text and "seed1.log" in text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])  # Ctrl-C; kill PID or a scheduler's limit
def test_ctrl_c_with_jobs_checkpoints_every_running_run(model_dir, scenario_file, tmp_path, signum) -> None:
    out = tmp_path / "bench"
    # Long enough that neither run finishes before the interrupt on a loaded machine (at 400, none ran in 15 s and
    # did), short enough that a broken interrupt fails the test in minutes (none: ~0.04 s per interaction).
    args = [*grid_args(model_dir, scenario_file, out, ["none", "sdpo"]), "n_interactions=3000",
            "eval.every=3000", "jobs=2", "threads=1"]
    code = {}

    def started(agent: str) -> bool:
        log = out / agent / "seed0" / "interactions.jsonl"
        return log.is_file() and len(log.read_text().splitlines()) >= 2

    def interrupt_when_started() -> None:
        for _ in range(1200):
            if started("none") and started("sdpo"):
                break
            time.sleep(0.1)
        os.kill(os.getpid(), signum)  # the bench's process alone: its runs hear it from the bench

    thread = threading.Thread(target=interrupt_when_started)
    thread.start()
    code["bench"] = main(args)
    thread.join()
    assert code["bench"] == 130
    for agent in ("none", "sdpo"):
        folder = out / agent / "seed0"
        assert (folder / "checkpoint.pt").is_file() and not (folder / "summary.json").is_file()
        assert "checkpoint written" in (out / agent / "seed0.log").read_text()  # stopped by the forwarded Ctrl-C
