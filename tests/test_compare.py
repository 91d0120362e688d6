"""``python -m sdpo_env.compare``: two benches' judged-again figures paired seed by seed.

The tables are written by ``sdpo_env.reevaluate``'s own bench report, from judged rows made up here, so the format
read is the one a bench reevaluation writes (tests/test_run.py compares a real bench's table with itself)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from sdpo_env.compare import CompareConfig as Config
from sdpo_env.compare import compare, main
from sdpo_env.errors import ConfigError
from sdpo_env.reevaluate import ReevaluateConfig, _bench_report

T_975_DF3 = 3.182  # Student t, 97.5% quantile, 3 degrees of freedom (four paired seeds)


def judged_row(t: int, phase: int, persona: str, excl: float, rates: dict[str, float]) -> dict[str, Any]:
    return {"interaction": t, "phase": phase, "persona": persona, "answers": [None] * 512, "win_rate": excl - 0.05,
            "win_rate_excl_ties": excl, "coverage": 0.8, "valid_rate": 1.0,
            **{f"sat/{k}": v for k, v in rates.items()}, "sat/all": min(rates.values())}


def write_bench(bench: Path, runs: dict[str, list[dict[str, Any]]], at: int = 250) -> None:
    """``runs``: ``<learner>/seed<k>`` -> judged rows, as ``python -m sdpo_env.reevaluate run=BENCH at=`` writes."""
    bench.mkdir(parents=True)  # the bench made it; its runs' folders are not needed here
    _bench_report(bench, ReevaluateConfig(run=str(bench), at=at), runs, Console(quiet=True))


A_EXCL = [0.90, 0.92, 0.88, 0.95, 0.91]
B_EXCL = [0.93, 0.91, 0.94, 0.97, 0.95, 0.96, 0.99]


@pytest.fixture
def benches(tmp_path: Path) -> tuple[Path, Path]:
    a, b = tmp_path / "a", tmp_path / "b"
    write_bench(a, {f"sdpo/seed{s}": [judged_row(250, 0, "old", A_EXCL[s], {"concise": 0.80 + s / 100, "casual": 0.9}),
                                      judged_row(250, 1, "new", 0.1, {"detailed": 0.05})] for s in range(5)})
    write_bench(b, {f"sdpo/seed{s}": [judged_row(250, 0, "old", B_EXCL[s], {"concise": 0.95, "casual": 0.85 + s / 100}),
                                      judged_row(250, 1, "new", 0.1, {"detailed": 0.06})] for s in (0, 1, 2, 3, 6)})
    return a, b


def test_the_difference_is_b_minus_a_seed_by_seed_with_a_student_t_interval(benches, capsys) -> None:
    a, b = benches
    compared = compare(Config(a=str(a), b=str(b), table="t250-k8"), Console(width=200))
    old, new = compared
    assert old == "interaction 250, phase 0 (old)" and new == "interaction 250, phase 1 (new)"
    figures = {f.figure: f for f in compared[old]}
    excl = figures["excluding ties"]
    assert excl.seeds == (0, 1, 2, 3)  # seed 4 was judged in A only, seed 6 in B only
    diffs = [y - x for x, y in zip(A_EXCL[:4], B_EXCL[:4])]
    mean, half = excl.difference
    assert mean == pytest.approx(statistics.mean(diffs))
    assert half == pytest.approx(T_975_DF3 * statistics.stdev(diffs) / math.sqrt(4), rel=1e-3)
    assert excl.b_higher == 3
    # the least satisfied preference is A's concise, B's casual: each side's own minimum
    assert figures["least satisfied preference"].a == pytest.approx((0.80, 0.81, 0.82, 0.83))
    assert figures["least satisfied preference"].b == pytest.approx((0.85, 0.86, 0.87, 0.88))
    assert set(figures) == {"win rate", "excluding ties", "coverage", "least satisfied preference",
                            "well-formed answers", "concise", "casual"}  # detailed is not in force in phase 0
    assert [f.figure for f in compared[new]][-1] == "detailed"
    printed = capsys.readouterr().out
    assert "interaction 250, phase 0 (old): left out, in one bench only: A seeds 4; B seeds 6" in printed
    assert f"{statistics.mean(diffs):+.3f} ± " in printed and "4 seeds paired (0, 1, 2, 3)" in printed


def test_the_tables_go_to_a_markdown_file(benches, tmp_path) -> None:
    a, b = benches
    out = tmp_path / "reports" / "a-vs-b.md"
    assert main([f"a={a}", f"b={b}", "table=t250-k8", f"out={out}"]) == 0
    md = out.read_text()
    assert "## interaction 250, phase 1 (new), 4 seeds paired (0, 1, 2, 3)" in md
    assert "| excluding ties | 0.900 / 0.920 / 0.880 / 0.950 | 0.930 / 0.910 / 0.940 / 0.970 | +0.025 ± " in md


def test_two_learners_of_one_bench(tmp_path: Path) -> None:
    bench = tmp_path / "bench"
    write_bench(bench, {f"{learner}/seed{s}": [judged_row(500, 1, "new", excl + s / 100, {"detailed": 0.9})]
                        for learner, excl in (("sdpo", 0.95), ("sdpo_paper", 0.93)) for s in range(3)}, at=500)
    with pytest.raises(ConfigError, match="holds several learners; choose one of sdpo, sdpo_paper"):
        compare(Config(a=str(bench), b=str(bench), table="t500-k8"), Console(quiet=True))
    compared = compare(Config(a=str(bench), b=str(bench), table="t500-k8", learner_a="sdpo_paper",
                              learner_b="sdpo"), Console(quiet=True))
    (excl,) = [f for f in compared["interaction 500, phase 1 (new)"] if f.figure == "excluding ties"]
    assert excl.difference[0] == pytest.approx(0.02) and excl.difference[1] == pytest.approx(0.0, abs=1e-12)


def test_bad_input_names_the_key_and_what_is_there(benches, tmp_path, capsys) -> None:
    a, b = benches
    assert main([f"a={a}", f"b={b}"]) == 2  # the default table, final-k8, was not written
    assert f"a: {a}/reevaluations/final-k8.csv does not exist; it has t250-k8 (table=)" in capsys.readouterr().err
    assert main([f"a={tmp_path / 'nowhere'}", f"b={b}", "table=t250-k8"]) == 2
    assert "a: " in (err := capsys.readouterr().err) and "is not a folder" in err
    assert main([f"a={a}", f"b={b}", "table=t250-k8", "learner_b=sdpo_paper"]) == 2
    assert "learner_b: " in (err := capsys.readouterr().err) and "no learner 'sdpo_paper'; choose one of sdpo" in err
    (tmp_path / "empty").mkdir()
    assert main([f"a={tmp_path / 'empty'}", f"b={b}", "table=t250-k8"]) == 2
    assert "judge its runs first: python -m sdpo_env.reevaluate run=" in capsys.readouterr().err
    later = tmp_path / "later"
    write_bench(later, {"sdpo/seed0": [judged_row(300, 0, "old", 0.9, {"concise": 0.9})]}, at=250)
    assert main([f"a={a}", f"b={later}", "table=t250-k8"]) == 2
    assert "have no seed judged at the same phase in t250-k8" in capsys.readouterr().err


def test_a_phase_judged_in_one_bench_only_is_named(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    write_bench(a, {f"sdpo/seed{s}": [judged_row(250, 0, "old", 0.9, {"concise": 0.9})] for s in range(2)})
    write_bench(b, {f"sdpo/seed{s}": [judged_row(250, 0, "old", 0.9, {"concise": 0.9}),
                                      judged_row(250, 1, "new", 0.1, {"detailed": 0.1})] for s in range(2)})
    assert list(compare(Config(a=str(a), b=str(b), table="t250-k8"), Console(width=200))) == [
        "interaction 250, phase 0 (old)"]
    assert "interaction 250, phase 1 (new): judged in B only" in capsys.readouterr().out


def test_the_benches_own_runs_csv_pairs_without_a_reevaluation(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    header = "learner,seed,end/p0/win_rate,auc,reach/p0,reach/p1,interaction_s,total_s\n"
    a.mkdir()
    b.mkdir()
    (a / "runs.csv").write_text(header + "sdpo,0,0.80,0.70,100,50,0.25,70\nsdpo,1,0.84,0.72,75,75,0.27,72\n")
    (b / "runs.csv").write_text(header + "sdpo,0,0.86,0.74,50,100,0.30,80\nsdpo,1,0.85,0.73,,125,0.31,81\n")
    compared = compare(Config(a=str(a), b=str(b), table="runs"), Console(width=200))
    (figures,) = compared.values()
    by_name = {f.figure: f for f in figures}
    # seed 1 of B never reached the threshold in phase 0
    assert list(by_name) == ["end/p0/win_rate", "auc", "reach/p1", "interaction_s", "total_s"]
    assert by_name["interaction_s"].difference[0] == pytest.approx(0.045)
    assert by_name["end/p0/win_rate"].b_higher == 2
    out = capsys.readouterr().out
    assert "each run's own evaluations (runs.csv), 2 seeds paired (0, 1)" in out
    assert " 50 / 75 │" in out and " 100 / 125 │" in out  # interactions, counted without decimals
    assert " 0.800 / 0.840 │" in out and " 70 / 72 │" in out
    (tmp_path / "c").mkdir()
    assert main([f"a={a}", f"b={tmp_path / 'c'}", "table=runs"]) == 2
    assert "runs.csv does not exist; a bench writes it when its runs finish" in capsys.readouterr().err
