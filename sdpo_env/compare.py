"""``python -m sdpo_env.compare a=BENCH b=BENCH [table=final-k8] [learner_a=NAME] [learner_b=NAME] [out=FILE.md]``:
two settings, seed by seed: the paired differences of their judged-again figures, with a 95% CI over seeds.

Examples::

    python -m sdpo_env.compare a=bench/flip b=bench/flip-contrast                  # the final policies, 512 answers
    python -m sdpo_env.compare a=bench/flip b=bench/flip-contrast table=t250-k8    # the policies at the flip
    python -m sdpo_env.compare a=bench/flip b=bench/flip learner_a=sdpo_paper learner_b=sdpo   # two learners
    python -m sdpo_env.compare a=bench/flip b=bench/flip-contrast table=runs       # each run's own figures

Two learner settings run with the same seeds meet the same prompts, users and base answers, so much of what
separates one seed from another is shared: the difference seed by seed is a finer comparison than two means over
seeds, each with its own interval. This command reads the tables ``python -m sdpo_env.reevaluate run=BENCH`` wrote
(``<bench>/reevaluations/<table>.csv``: ``final-k8`` for the final policies with 8 answers per prompt, ``t250-k8``
with ``at=250``), pairs the runs of the two benches by seed and judged phase, and prints for each phase and figure
(win rate, excluding ties, coverage, the least satisfied preference, well-formed answers, the frozen base model's
surprise at the answers where the tables have it, each preference's rate) A's and B's values seed by seed, the mean
of B - A with its 95% Student-t interval over the paired seeds, and on how many seeds B is higher. A seed judged in
one bench only is left out and named. ``learner_a`` / ``learner_b`` pick the learner in a bench that holds several
(by default its only one; ``learner_b`` defaults to ``learner_a`` where B has it), so ``a`` and ``b`` may be the
same bench. ``out=`` also writes the tables as markdown. ``table=runs`` pairs the bench's own ``runs.csv`` instead,
with no reevaluation needed: each run's figures from its own evaluations (64 answers on the tiny model) at the end
of each phase, the area under the curve, interactions to reach the threshold and to recover, retention and seconds
per interaction (a threshold some seed never reached is left out).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from sdpo_env.bench_metrics import mean_ci
from sdpo_env.cli import command_main, table_section
from sdpo_env.config import COMMAND_LINE, command_line_config, option
from sdpo_env.errors import ConfigError, Problem

HEADLINE = (("win_rate", "win rate"), ("win_rate_excl_ties", "excluding ties"), ("coverage", "coverage"),
            ("worst", "least satisfied preference"), ("valid_rate", "well-formed answers"),
            ("surprise", "base model's surprise"))
HEAD = ("figure", "A, seed by seed", "B, seed by seed", "B - A (95% CI)", "B higher")
RUNS = "runs"  # table=runs: the bench's own runs.csv, each run's figures from its own evaluations
RUNS_LABEL = "each run's own evaluations (runs.csv)"


@dataclass
class CompareConfig:
    """Which two benches, which reevaluation table (``key=value`` on the command line)."""

    a: str = option("", "the bench folder of setting A (python -m sdpo_env.bench out=...)", nonempty=True)
    b: str = option("", "the bench folder of setting B; the same as a to compare two of its learners",
                    nonempty=True)
    table: str = option("final-k8", "the reevaluation table to read, <bench>/reevaluations/<table>.csv, as "
                                    "python -m sdpo_env.reevaluate run=BENCH [at=T] wrote it; runs: the bench's "
                                    "runs.csv, each run's figures from its own evaluations")
    learner_a: str = option("", "the learner of bench a; default its only one")
    learner_b: str = option("", "the learner of bench b; default learner_a if b has it, else its only one")
    out: str = option("", "also write the tables to this markdown file")


@dataclass(frozen=True)
class Paired:
    """One figure of one judged phase, seed by seed: A's values, B's, and B - A over the seeds both have."""

    figure: str
    seeds: tuple[int, ...]
    a: tuple[float, ...]
    b: tuple[float, ...]

    @property
    def difference(self) -> tuple[float, float | None]:
        """Mean of B - A over the paired seeds and its 95% Student-t half-width (None for one seed)."""
        return mean_ci([y - x for x, y in zip(self.a, self.b, strict=True)])

    @property
    def b_higher(self) -> int:
        return sum(y > x for x, y in zip(self.a, self.b, strict=True))


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: list[str], console: Console) -> int:
        compare(command_line_config(CompareConfig, args), console)
        return 0

    return command_main(__doc__, argv, body, interrupted="interrupted; nothing was written")


def compare(config: CompareConfig, console: Console) -> dict[str, list[Paired]]:
    """Reads both benches' tables, pairs them, prints (and with ``out=`` writes) one table per judged phase."""
    rows_a = read_table(Path(config.a), config.table, "a")
    rows_b = read_table(Path(config.b), config.table, "b")
    learner_a = pick_learner(rows_a, config.learner_a, "learner_a", config.a)
    b_has_a = any(r["learner"] == learner_a for r in rows_b)
    learner_b = pick_learner(rows_b, config.learner_b or (learner_a if b_has_a else ""), "learner_b", config.b)
    pairing = pair_runs if config.table == RUNS else pair
    compared, unpaired = pairing([r for r in rows_a if r["learner"] == learner_a],
                                 [r for r in rows_b if r["learner"] == learner_b])
    if not compared:
        raise ConfigError([Problem(COMMAND_LINE, "b", f"{config.a} ({learner_a}) and {config.b} ({learner_b}) have "
                                                      f"no seed judged at the same phase in {config.table}")])
    title = f"A = {config.a} ({learner_a}), B = {config.b} ({learner_b}), {config.table}"
    md = [f"# {title}", ""]
    console.print(title, markup=False)  # paths are printed as they are, brackets included
    for line in unpaired:
        console.print(line, style="yellow", markup=False)
        md += [line, ""]
    for label, figures in compared.items():
        seeds = figures[0].seeds
        caption = f"{label}, {len(seeds)} seeds paired ({', '.join(map(str, seeds))})"
        body = [[f.figure, *_values(f.a, f.b), _difference(f), f"{f.b_higher} of {len(f.seeds)}"] for f in figures]
        md += table_section(console, caption, HEAD, body, left=("figure",), wrap=HEAD[1:3])
    if config.out:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
        Path(config.out).write_text("\n".join(md), encoding="utf-8")
        console.print(f"written: {config.out}")
    return compared


def read_table(bench: Path, table: str, key: str) -> list[dict[str, str]]:
    """The rows of ``<bench>/reevaluations/<table>.csv`` (``<bench>/runs.csv`` for ``table=runs``), or an error
    naming the tables the bench has."""
    path = bench / "runs.csv" if table == RUNS else bench / "reevaluations" / f"{table}.csv"
    if not bench.is_dir():
        raise ConfigError([Problem(COMMAND_LINE, key, f"{bench} is not a folder; give a bench folder made by "
                                                      "python -m sdpo_env.bench")])
    if not path.is_file():
        have = sorted(p.stem for p in (bench / "reevaluations").glob("*.csv")) + (
            [RUNS] if (bench / "runs.csv").is_file() else [])
        hint = (f"it has {', '.join(have)} (table=)" if have else
                "a bench writes it when its runs finish (python -m sdpo_env.bench ... run=false writes it from the "
                "runs finished so far)" if table == RUNS else
                f"judge its runs first: python -m sdpo_env.reevaluate run={bench}")
        raise ConfigError([Problem(COMMAND_LINE, key, f"{path} does not exist; {hint}")])
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def pick_learner(rows: list[dict[str, str]], asked: str, key: str, bench: str) -> str:
    """The learner asked for, or the bench's only one; an error that names the bench's learners otherwise."""
    learners = sorted({r["learner"] for r in rows})
    if asked in learners or (not asked and len(learners) == 1):
        return asked or learners[0]
    why = f"{bench} has no learner {asked!r}" if asked else f"{bench} holds several learners"
    raise ConfigError([Problem(COMMAND_LINE, key, f"{why}; choose one of {', '.join(learners)}")])


def pair(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]]) -> tuple[dict[str, list[Paired]], list[str]]:
    """Pairs two learners' reevaluation rows by seed and judged phase.

    Returns, per judged phase (``interaction T, phase P (persona)``, in A's order), the headline figures and then
    every preference's rate that both sides have for every paired seed; and a line for each phase with seeds that
    only one side judged, or that only B judged."""
    by_a, by_b = _by_phase(rows_a), _by_phase(rows_b)
    compared: dict[str, list[Paired]] = {}
    unpaired = []
    for label, seeds_a in by_a.items():
        prefs = [k for k in next(iter(seeds_a.values())) if k.startswith("sat/")]
        names = [*HEADLINE, *((k, k.removeprefix("sat/")) for k in prefs)]
        figures, left_out = _pair_seeds(label, seeds_a, by_b.get(label, {}), names)
        if figures:
            compared[label] = figures
        unpaired += left_out
    unpaired += [f"{label}: judged in B only" for label in by_b if label not in by_a]
    return compared, unpaired


def pair_runs(rows_a: list[dict[str, str]], rows_b: list[dict[str, str]]) -> tuple[dict[str, list[Paired]],
                                                                                    list[str]]:
    """Pairs two learners' rows of a bench's ``runs.csv`` by seed: every figure column (the end of each phase, the
    area under the curve, interactions to reach the threshold, recovery, retention, seconds per interaction) that
    both sides have for every paired seed (a threshold never reached is an empty cell, so that column is left out)."""
    names = [(k, k) for k in rows_a[0] if k not in ("learner", "seed")]
    seeds_a, seeds_b = ({int(r["seed"]): r for r in rows} for rows in (rows_a, rows_b))
    figures, unpaired = _pair_seeds(RUNS_LABEL, seeds_a, seeds_b, names)
    return ({RUNS_LABEL: figures} if figures else {}), unpaired


def _pair_seeds(label: str, seeds_a: dict[int, dict[str, str]], seeds_b: dict[int, dict[str, str]],
                names: Sequence[tuple[str, str]]) -> tuple[list[Paired], list[str]]:
    """The figures ``names`` ((column, label) pairs) over the seeds both sides have, and a line naming the others."""
    seeds = tuple(sorted(set(seeds_a) & set(seeds_b)))
    only = {"A": sorted(set(seeds_a) - set(seeds_b)), "B": sorted(set(seeds_b) - set(seeds_a))}
    unpaired = [f"{label}: left out, in one bench only: "
                + "; ".join(f"{side} seeds {', '.join(map(str, s))}" for side, s in only.items() if s)
                ] if only["A"] or only["B"] else []
    figures = []
    for name, shown in names:
        a = [seeds_a[s].get(name, "") for s in seeds]
        b = [seeds_b[s].get(name, "") for s in seeds]
        if seeds and all(a) and all(b):  # a preference not in force, or a threshold never reached: empty cells
            figures.append(Paired(shown, seeds, tuple(map(float, a)), tuple(map(float, b))))
    return figures, unpaired


def _by_phase(rows: list[dict[str, str]]) -> dict[str, dict[int, dict[str, str]]]:
    grouped: dict[str, dict[int, dict[str, str]]] = {}
    for r in rows:
        label = f"interaction {r['interaction']}, phase {r['phase']} ({r['persona']})"
        grouped.setdefault(label, {})[int(r["seed"])] = r
    return grouped


def _values(*sides: Sequence[float]) -> list[str]:
    """Each side's values, seed by seed; counts (interactions to reach a threshold) without decimals."""
    every = [v for side in sides for v in side]
    digits = 0 if all(v.is_integer() for v in every) and max(every) > 1 else 3
    return [" / ".join(f"{v:.{digits}f}" for v in side) for side in sides]


def _difference(paired: Paired) -> str:
    mean, ci = paired.difference
    return f"{mean:+.3f}" + (f" ± {ci:.3f}" if ci is not None else "")


if __name__ == "__main__":
    raise SystemExit(main())
