"""``python -m sdpo_env.bench scenario=NAME agents=[...] seeds=N [out=DIR] [run overrides]``: compare learners.

Examples::

    python -m sdpo_env.bench scenario=flip \\
        agents=[sdpo,sdpo_paper,sft_hindsight,dpo_hindsight,icl_memory,none,icl_oracle,reinforce_oracle] seeds=3
    python -m sdpo_env.bench scenario=single agents=[sdpo,mypkg.learners:MyLearner] seeds=2 out=bench/mine
    python -m sdpo_env.bench scenario=flip agents=[sdpo,none] seeds=1 n_interactions=100 eval.n_prompts=32
    python -m sdpo_env.bench scenario=flip agents=[sdpo,none] seeds=3 run=false   # aggregate what has finished
    python -m sdpo_env.bench scenario=flip agents=[sdpo,none] seeds=3 jobs=3       # 3 runs at a time

Every (learner, seed) is an ordinary run folder, ``<out>/<learner>/seed<k>``, made by the runner in this process,
seed by seed (with ``jobs=N``: N runs at a time, each in its own process with CPU cores // N threads). Same
scenario, prompts, judge, seed and budget for every learner. Run it again to continue: finished
runs are skipped, interrupted ones resume from their checkpoint, and runs another process is running (a second
bench over the same grid) are left to it. Any other ``key=value`` is a run setting applied to
every run; an ``agent.<option>=value`` goes to the learners that have that option. Then the runs are aggregated per
learner (mean and 95% CI over seeds; see ``sdpo_env/bench_metrics.py``) into a table in the terminal,
``results.md``, ``results.csv`` (one row per learner), ``runs.csv`` (one row per run) and ``curves.png``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.base import learner_option_names, resolved_learner_options
from sdpo_env import run as runner
from sdpo_env.bench_metrics import PhaseInfo, Stat, aggregate_runs, mean_curve, phase_infos, run_metrics
from sdpo_env.cli import command_main
from sdpo_env.config import (
    COMMAND_LINE,
    config_to_dict,
    load_run_config,
    model_settings_line,
    parse_overrides,
    resolve_config,
)
from sdpo_env.errors import ConfigError, Problem, SdpoEnvError, did_you_mean
from sdpo_env.runfolder import HANDED_OVER, RunFolder
from sdpo_env.schema import build, option

BENCH_KEYS = ("scenario", "agents", "seeds", "out", "threshold", "run", "jobs", "threads")
SET_BY_BENCH = ("seed", "out_dir", "resume", "agent", "agent.name")


@dataclass
class BenchConfig:
    """The benchmark's own settings; every other ``key=value`` is a run setting."""

    scenario: str = option("flip", "a shipped scenario name or a path to a scenario YAML", nonempty=True)
    agents: list[str] = option(help="learners to compare: registered names or dotted paths (pkg.module:Class)",
                               factory=lambda: ["sdpo", "none"], nonempty=True)
    seeds: int | list[int] = option(3, "N = seeds 0..N-1, or a list of seeds")
    out: str | None = option(None, "bench folder; default bench/<scenario>")
    threshold: float = option(0.8, "win rate that counts as reached (interactions to reach it, recovery)",
                              min=0.0, max=1.0)
    run: bool = option(True, "false = only aggregate the runs finished so far (e.g. while the grid runs elsewhere)")
    jobs: int = option(1, "runs at a time; above 1 each run is its own process, its output in <out>/<learner>/"
                       "seed<k>.log", min=1)
    threads: int | None = option(None, "torch threads per run (default: CPU cores // jobs)", min=1)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        seeds = self.seed_list()
        if not seeds or min(seeds) < 0:
            problems.append(("seeds", f"got {self.seeds!r}; give a positive count or a list of seeds >= 0"))
        elif len(set(seeds)) != len(seeds):
            problems.append(("seeds", f"got {self.seeds!r}; seeds must not repeat"))
        repeated = sorted({a for a in self.agents if self.agents.count(a) > 1})
        if repeated:
            problems.append(("agents", f"{', '.join(repeated)} listed more than once"))
        return problems

    def seed_list(self) -> list[int]:
        return list(range(self.seeds)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass
class PlannedRun:
    """One cell of the grid: its arguments for the runner and its folder."""

    agent: str
    seed: int
    folder: Path
    args: list[str]
    expected: dict[str, Any]
    model_settings: str | None = None  # the settings it takes from the model's own sdpo_env.yaml, if any


def folder_name(agent: str) -> str:
    """A file-system-safe folder name for a learner name or dotted path (``pkg.mod:Cls`` -> ``pkg.mod-Cls``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", agent)


def _key(arg: str) -> str:
    return arg.partition("=")[0].strip()


def plan(args: Sequence[str]) -> tuple[BenchConfig, list[PlannedRun], Any]:
    """Validates the bench arguments and every run's configuration, before any model loads.

    Returns:
        ``(bench config, runs in execution order (seed-major), scenario)``.

    Raises:
        ConfigError: every problem found (unknown learners with close matches, bad values, settings the bench
            sets itself, learner options no listed learner has, a folder holding a run with other settings).
    """
    parsed = parse_overrides(args)  # also rejects arguments that are not key=value
    problems: list[Problem] = []
    bench = build(BenchConfig, {k: v for k, v in parsed.items() if k in BENCH_KEYS},
                  source=lambda _k: COMMAND_LINE, problems=problems)
    run_args = [a for a in args if _key(a).split(".")[0] not in BENCH_KEYS]
    for arg in run_args:
        if _key(arg) in SET_BY_BENCH:
            problems.append(Problem(COMMAND_LINE, _key(arg), "set by the bench for each run; use agents=[...] "
                                                             "and seeds=... instead"))
    agent_args = [a for a in run_args if _key(a).startswith("agent.")]
    shared = [a for a in run_args if not _key(a).startswith("agent.")]
    out = Path(bench.out or f"bench/{Path(bench.scenario).stem}")

    import agents  # noqa: F401  (registers the shipped learners)

    accepted: dict[str, set[str]] = {}
    for i, name in enumerate(bench.agents):
        try:
            accepted[name] = learner_option_names(name)
        except SdpoEnvError as exc:  # an unknown name (with close matches) or an unimportable dotted path
            problems.append(Problem(COMMAND_LINE, f"agents[{i}]", str(exc)))
    everything = set().union(*accepted.values()) if accepted else set()
    for arg in agent_args:
        option_name = _key(arg).split(".", 1)[1]
        if len(accepted) == len(bench.agents) and option_name not in everything:
            hint = did_you_mean(option_name, everything)
            problems.append(Problem(COMMAND_LINE, _key(arg), f"no listed learner has this option.{hint} "
                                    f"Options: {', '.join(sorted(everything)) or '(none take options)'}."))
    if problems:
        raise ConfigError(problems)

    runs: list[PlannedRun] = []
    scenario = None
    for seed in bench.seed_list():
        for name in bench.agents:
            folder = out / folder_name(name) / f"seed{seed}"
            options = [a for a in agent_args if _key(a).split(".", 1)[1] in accepted[name]]
            run = [f"scenario={bench.scenario}", *shared, f"agent.name={name}", *options, f"seed={seed}",
                   f"out_dir={folder}"]
            config, scenario = load_run_config(run)
            config.agent = resolved_learner_options(config.agent, source=config.source_of)
            expected = config_to_dict(config)
            runs.append(PlannedRun(name, seed, folder, run, expected, model_settings_line(config)))
            stored_config = folder / "config.yaml"
            if stored_config.is_file():  # not RunFolder(folder): planning must not create folders
                stored = runner.settings_as_run(stored_config)
                try:  # resolved as today's code reads it: keys an older version did not write take their defaults
                    resolved = resolve_config([(str(stored_config), stored)])
                    resolved.agent = resolved_learner_options(resolved.agent, source=str(stored_config))
                    stored = config_to_dict(resolved)
                except ConfigError as error:
                    problems.extend(error.problems)
                    continue
                differing = _differences(stored, expected)
                if differing:
                    problems.append(Problem(str(folder), "config.yaml", f"holds a run with other settings ("
                                            f"{', '.join(differing)}) than this bench asks for; use the same settings"
                                            f"{_settings_of(stored, differing)}, another out=, or remove the folder"))
    if problems:
        raise ConfigError(problems)
    return bench, runs, scenario


def _settings_of(stored: dict[str, Any], keys: list[str]) -> str:
    """`` (KEY=VALUE ...)``: the folder's values of ``keys`` as command-line arguments, which go on with the run in it
    (after a default changed, say); "" when one of them is not a plain value."""
    given = []
    for key in keys:
        value: Any = stored
        for part in key.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if value is None:  # an option that is off
            value = "null"
        if not isinstance(value, (bool, int, float, str)) or not re.fullmatch(r"[\w./:+-]+", str(value)):
            return ""
        given.append(f"{key}={value}")
    return f" ({' '.join(given)})"


def _differences(stored: Any, expected: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two resolved configs (the folder and resume keys aside)."""
    if not (isinstance(stored, dict) and isinstance(expected, dict)):
        return [] if stored == expected else [prefix]
    out = []
    for key in sorted(set(stored) | set(expected)):
        if not prefix and key in ("out_dir", "resume"):
            continue
        out += _differences(stored.get(key), expected.get(key), f"{prefix}.{key}" if prefix else key)
    return out


def _take(folder: RunFolder, label: str, console: Console) -> str | None:
    """Claims a run's folder for this bench. None: the bench runs it. Otherwise it is skipped, with a line saying
    why: ``"elsewhere"`` (another process holds it: a second bench over the same grid, or a run started by hand, so
    the grid's runs are shared out) or ``"finished"``."""
    try:
        folder.claim("out_dir")
    except ConfigError:
        holder = folder.lock.read_text(encoding="utf-8").strip() or "another process"
        console.print(f"[dim]{label}: being run by another process ({holder}), skipped[/]")
        return "elsewhere"
    if folder.summary.is_file():
        folder.release()
        console.print(f"[dim]{label}: finished, skipped[/]")
        return "finished"
    return None


def _elsewhere(n: int, console: Console) -> None:
    if n:
        console.print(f"[yellow]{n} run(s) were being run by another process and were skipped; run the same "
                      "command again once they finish to include them.[/]")


def execute(runs: Sequence[PlannedRun], console: Console) -> int:
    """Runs the grid in order: finished runs skipped, interrupted ones resumed, runs another process is running
    skipped. Returns 0, or 130 on Ctrl-C."""
    elsewhere = 0
    for i, r in enumerate(runs, 1):
        folder = RunFolder(r.folder)
        skipped = _take(folder, f"{i}/{len(runs)} {r.agent} seed {r.seed}", console)
        if skipped:
            elsewhere += skipped == "elsewhere"
            continue
        resume = folder.checkpoint.is_file()
        console.rule(f"{i}/{len(runs)} {r.agent} seed {r.seed}" + (" (resumed)" if resume else ""))
        started = time.perf_counter()
        try:
            code = runner.run([f"resume={r.folder}"] if resume else r.args, console)
        finally:
            folder.release()
        if code != 0:
            console.print(f"[yellow]bench stopped during {r.folder}; run the same command again to continue.[/]")
            return code
        console.print(f"{r.agent} seed {r.seed}: {time.perf_counter() - started:.0f} s")
    _elsewhere(elsewhere, console)
    return 0


def execute_parallel(runs: Sequence[PlannedRun], console: Console, *, jobs: int, threads: int,
                     n_interactions: int) -> int:
    """Runs the grid ``jobs`` at a time, each run a ``python -m sdpo_env.run`` process with ``threads`` threads.

    Finished runs are skipped and interrupted ones resumed, as in ``execute``. Each run's output goes to
    ``<out>/<learner>/seed<k>.log``. A failed run stops new launches (the running ones finish) and its exit code is
    returned. Ctrl-C asks every running run to checkpoint and stop (each exits 130), then returns 130.
    """
    pending = [r for r in runs if not RunFolder(r.folder).summary.is_file()]
    for r in runs:
        if r not in pending:
            console.print(f"[dim]{r.agent} seed {r.seed}: finished, skipped[/]")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}  # plug-in learners import as they do here
    running: dict[subprocess.Popen, tuple[PlannedRun, Any, TaskID, Path]] = {}  # run, log, progress, its jsonl
    failed: tuple[PlannedRun, int] | None = None
    elsewhere = 0
    console.print(f"{len(pending)} runs to do, {jobs} at a time, {threads} threads each")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        overall = progress.add_task("runs finished", total=len(pending))
        try:
            while pending or running:
                while pending and len(running) < jobs and failed is None:
                    r = pending.pop(0)
                    folder = RunFolder(r.folder)
                    skipped = _take(folder, f"{r.agent} seed {r.seed}", console)  # another process may have it
                    if skipped:
                        elsewhere += skipped == "elsewhere"
                        progress.advance(overall)
                        continue
                    resume = folder.checkpoint.is_file()
                    log = (r.folder.parent / f"{r.folder.name}.log").open("a", encoding="utf-8")
                    args = [f"resume={r.folder}"] if resume else r.args
                    claim = folder.hand_over()  # the run adopts the claim: the folder is never free in between
                    handed = {} if claim is None else {HANDED_OVER: str(claim)}
                    try:
                        process = subprocess.Popen([sys.executable, "-m", "sdpo_env.run", *args], stdout=log,
                                                   stderr=subprocess.STDOUT, env={**env, **handed},
                                                   start_new_session=True, pass_fds=() if claim is None else (claim,))
                    finally:
                        if claim is not None:
                            os.close(claim)
                    label = f"{r.agent} seed {r.seed}" + (" (resumed)" if resume else "")
                    running[process] = (r, log, progress.add_task(label, total=n_interactions),
                                        RunFolder(r.folder).interactions)
                if failed is not None and not running:
                    break
                time.sleep(0.5)
                for process in list(running):
                    r, log, task, interactions = running[process]
                    progress.update(task, completed=_lines(interactions))
                    code = process.poll()
                    if code is None:
                        continue
                    log.close()
                    progress.remove_task(task)
                    del running[process]
                    progress.advance(overall)
                    if code != 0 and failed is None:
                        failed = (r, code)
        except KeyboardInterrupt:
            for process in running:
                process.send_signal(signal.SIGINT)  # each run checkpoints at its next consistent point
            try:
                for process in running:
                    process.wait()
            except KeyboardInterrupt:  # a second Ctrl-C: the runs stop at once, as a run alone does
                for process in running:
                    if process.poll() is None:
                        process.send_signal(signal.SIGINT)
                for process in running:
                    process.wait()
            console.print("[yellow]bench interrupted: the running runs stopped (see their logs); run the same "
                          "command again to continue.[/]")
            return 130
        finally:
            for process, (_, log, _task, _path) in running.items():
                if process.poll() is None:  # only after an unexpected error: no run outlives the bench
                    process.kill()
                    process.wait()
                log.close()
    if failed is not None:
        r, code = failed
        log_path = r.folder.parent / f"{r.folder.name}.log"
        tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
        console.print(f"[red]{r.agent} seed {r.seed} exited with {code}[/]; its output is in {log_path}:")
        for line in tail:
            console.print(f"  {line}", markup=False, highlight=False)
        return code
    _elsewhere(elsewhere, console)
    return 0


def _lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def collect(runs: Sequence[PlannedRun], phases: Sequence[PhaseInfo], threshold: float
            ) -> tuple[dict[str, list[dict[str, Any]]], dict[str, list[list[dict[str, Any]]]]]:
    """Per learner: the finished runs' numbers (with their seed) and their metrics rows."""
    numbers: dict[str, list[dict[str, Any]]] = {}
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for r in runs:
        folder = RunFolder(r.folder)
        numbers.setdefault(r.agent, [])
        curves.setdefault(r.agent, [])
        if not folder.summary.is_file():
            continue
        rows = folder.read_jsonl(folder.metrics)
        summary = json.loads(folder.summary.read_text(encoding="utf-8"))
        numbers[r.agent].append({"seed": r.seed, **run_metrics(rows, phases, threshold=threshold, summary=summary)})
        curves[r.agent].append(rows)
    return numbers, curves


def columns(phases: Sequence[PhaseInfo], threshold: float) -> list[tuple[str, str, str]]:
    """``(metric key, column title, format)`` of the results table; format ``rate``, ``reach`` or ``s``."""
    cols = []
    for p in phases:
        cols.append((f"end/p{p.index}/win_rate", f"win @{p.end} (p{p.index})", "rate"))
        cols.append((f"end/p{p.index}/win_rate_excl_ties", f"excl. ties @{p.end}", "rate"))
        cols.append((f"end/p{p.index}/sat_min", f"worst pref @{p.end}", "rate"))
    cols.append(("auc", "AUC", "rate"))
    for p in phases:
        title = f"to {threshold:g}" if p.index == 0 else f"p{p.index} recovery"
        cols.append((f"reach/p{p.index}", title, "reach"))
    if any(p.introduced != p.preferences for p in phases[1:]):
        cols.append(("retention", "retention", "rate"))
    cols.append(("surprise_max", "max surprise", "rate"))  # nats per token above the base's own answers
    cols.append(("interaction_s", "s/interaction", "s"))
    cols.append(("total_s", "run s", "s"))
    return cols


def fmt(stat: Stat | None, kind: str) -> str:
    """A table cell: ``mean ± ci``; reach cells say how many seeds got there (``never`` if none)."""
    if stat is None or stat.of == 0:
        return "-"
    if kind == "reach":
        if stat.mean is None:
            return "never"
        text = f"{stat.mean:.0f}" + (f" ± {stat.ci:.0f}" if stat.ci is not None else "")
        return text if stat.n == stat.of else f"{text} ({stat.n}/{stat.of} seeds)"
    if stat.mean is None:
        return "-"
    digits = 2 if kind == "rate" else (3 if kind == "s" and stat.mean < 10 else 0)
    return f"{stat.mean:.{digits}f}" + (f" ± {stat.ci:.{digits}f}" if stat.ci is not None else "")


def report(bench: BenchConfig, scenario: Any, runs: Sequence[PlannedRun], out: Path, console: Console) -> None:
    """Aggregates the finished runs and writes ``results.md``, ``results.csv``, ``runs.csv`` and ``curves.png``."""
    n = runs[0].expected.get("n_interactions") or scenario.n_interactions
    phases = phase_infos(scenario, n)
    numbers, curves = collect(runs, phases, bench.threshold)
    stats = {agent: aggregate_runs([{k: v for k, v in m.items() if k != "seed"} for m in per_seed])
             for agent, per_seed in numbers.items()}
    cols = columns(phases, bench.threshold)
    n_seeds = len(bench.seed_list())
    labels = ", ".join(f"p{p.index} = {p.label} [{p.start}, {p.end})" for p in phases)
    title = (f"{scenario.name} ({labels}): {n_seeds} seed(s), mean ± 95% CI over seeds; win rate vs the frozen base "
             "(ties = 1/2)")
    table = Table(title=title)
    table.add_column("learner")
    table.add_column("seeds", justify="right")
    for _, heading, _ in cols:
        table.add_column(heading, justify="right")
    md = [f"# Bench: {title}", "", "| learner | seeds | " + " | ".join(h for _, h, _ in cols) + " |",
          "|---|---|" + "---|" * len(cols)]
    for agent in bench.agents:
        done = len(numbers[agent])
        cells = [fmt(stats[agent].get(key), kind) if done else "-" for key, _, kind in cols]
        table.add_row(agent, f"{done}/{n_seeds}", *cells)
        md.append(f"| {agent} | {done}/{n_seeds} | " + " | ".join(cells) + " |")
    console.print(table)
    md += ["", f"Run folders: `{out}/<learner>/seed<k>`. `reach`: interactions from the phase start to the first "
           f"evaluation with win rate >= {bench.threshold:g} (`never` if none; `(k/n seeds)` when only some seeds "
           "got there, averaged over those). Worst pref: the satisfaction of the least satisfied preference in force "
           "at the phase's end (share of held-out answers). AUC: mean win rate over the run (area under the curve "
           "per phase). Retention: change of the earlier preferences' satisfaction from the end of their phase to "
           "the end of the run. s / interaction: acting, environment and learning, without evaluations. Definitions: "
           "`sdpo_env/bench_metrics.py`.", "", "![curves](curves.png)", ""]
    (out / "results.md").write_text("\n".join(md), encoding="utf-8")
    keys = [key for key, _, _ in cols]
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "seeds_done", *[f"{k}_{part}" for k in keys for part in ("mean", "ci95", "n")]])
        for agent in bench.agents:
            row: list[Any] = [agent, len(numbers[agent])]
            for k in keys:
                s = stats[agent].get(k)
                row += [_csv(s.mean if s else None), _csv(s.ci if s else None), s.n if s else 0]
            writer.writerow(row)
    with (out / "runs.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["learner", "seed", *keys])
        for agent in bench.agents:
            for m in numbers[agent]:
                writer.writerow([agent, m["seed"], *[_csv(m.get(k)) for k in keys]])
    plot_curves(curves, phases, bench.threshold, out / "curves.png", title)
    console.print(f"bench folder: {out} (results.md, results.csv, runs.csv, curves.png)")


def _csv(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def plot_curves(curves: dict[str, list[list[dict[str, Any]]]], phases: Sequence[PhaseInfo], threshold: float,
                path: Path, title: str) -> None:
    """All learners' mean win rates in the first panel; then one panel per learner with its mean, its 95% CI band
    over seeds and each seed's curve (bands of several learners in one panel hide each other). Phase changes marked.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    learners = [(i, agent, runs) for i, (agent, runs) in enumerate(curves.items()) if runs]
    ncols = min(4, len(learners) + 1)
    nrows = math.ceil((len(learners) + 1) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows + 0.6), sharex=True, sharey=True,
                             squeeze=False)
    overview = axes[0][0]
    for i, agent, runs in learners:
        color, panel = f"C{i % 10}", axes.flat[learners.index((i, agent, runs)) + 1]
        points = mean_curve(runs)
        for j, phase in enumerate(sorted({p for p, *_ in points})):
            seg = [(x, m, c) for p, x, m, c in points if p == phase]
            xs, means = [x for x, _, _ in seg], [m for _, m, _ in seg]
            overview.plot(xs, means, "-", color=color, linewidth=1.3, label=agent if j == 0 else None)
            panel.plot(xs, means, "o-", color=color, markersize=2.5, linewidth=1.6)
            halves = [c for _, _, c in seg if c is not None]
            if len(halves) == len(seg):
                panel.fill_between(xs, [max(0.0, m - c) for m, c in zip(means, halves)],
                                   [min(1.0, m + c) for m, c in zip(means, halves)], color=color, alpha=0.15)
            for rows in runs:  # each seed, faint
                own = [(r["interaction"], r["win_rate"]) for r in rows if r["phase"] == phase
                       and isinstance(r.get("win_rate"), (int, float))]
                panel.plot([x for x, _ in own], [w for _, w in own], "-", color=color, linewidth=0.6, alpha=0.35)
        panel.set_title(f"{agent} ({len(runs)} seed{'s' if len(runs) > 1 else ''}): mean, 95% CI, seeds",
                        fontsize=8)
    overview.set_title("all learners: mean over seeds", fontsize=8)
    overview.legend(fontsize=6, loc="lower left", ncol=2)
    for ax in axes.flat[len(learners) + 1:]:
        ax.set_visible(False)
    for ax in axes.flat[: len(learners) + 1]:
        for p in phases[1:]:
            ax.axvline(p.start, color="grey", linestyle=":", linewidth=1)
        ax.axhline(0.5, color="black", linewidth=0.7)
        ax.axhline(threshold, color="grey", linewidth=0.6, linestyle="--")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("interactions")
    for row in axes:
        row[0].set_ylabel("win rate vs frozen base")
    fig.suptitle(textwrap.fill(title, int(4.2 * ncols * 13)), fontsize=9)  # about 13 characters per inch at 9 pt
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or continues) the grid and writes the aggregate; returns the exit code."""
    # Ctrl-C outside a run's loop (e.g. while a model loads) ends here; inside it the runner stops cleanly.
    return command_main(__doc__, argv, bench_command, width=160, interrupted="bench interrupted; run the same "
                        "command again to continue (finished runs are skipped, interrupted ones resume from their "
                        "last checkpoint)")


def bench_command(args: list[str], console: Console) -> int:
    """The grid, then the aggregate of whatever has finished."""
    bench, runs, scenario = plan(args)
    for name in bench.agents:
        line = next((r.model_settings for r in runs if r.agent == name), None)
        if line:
            console.print(f"{name}: {line}")
    out = runs[0].folder.parent.parent
    out.mkdir(parents=True, exist_ok=True)
    if not bench.run:
        code = 0
    elif bench.jobs == 1:
        before = torch.get_num_threads()
        torch.set_num_threads(bench.threads or before)  # threads=1: the arithmetic of a one-thread worker
        try:
            code = execute(runs, console)
        finally:
            torch.set_num_threads(before)
    else:
        n = scenario.n_interactions if runs[0].expected.get("n_interactions") is None else int(
            runs[0].expected["n_interactions"])
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        threads = bench.threads or max(1, cores // bench.jobs)
        code = execute_parallel(runs, console, jobs=bench.jobs, threads=threads, n_interactions=n)
    if any(RunFolder(r.folder).summary.is_file() for r in runs):
        report(bench, scenario, runs, out, console)
    else:
        console.print(f"no finished runs in {out} yet: nothing to aggregate")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
