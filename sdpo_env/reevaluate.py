"""``python -m sdpo_env.reevaluate run=RUN_FOLDER [samples_per_prompt=8] [n_prompts=N] [seed=S] [at=T]
[prompts=eval|train]``: judge a run's policy again, with more answers.

Examples::

    python -m sdpo_env.reevaluate run=runs/flip-s0                        # 8 answers per held-out prompt
    python -m sdpo_env.reevaluate run=runs/flip-s0 samples_per_prompt=1   # repeats the run's own last evaluation
    python -m sdpo_env.reevaluate run=bench/flip/sdpo/seed1 samples_per_prompt=4 seed=7
    python -m sdpo_env.reevaluate run=runs/flip-s0 at=250               # the policy at the flip (end of phase 1)
    python -m sdpo_env.reevaluate run=bench/flip at=250                 # every run of a bench, then a table
    python -m sdpo_env.reevaluate run=runs/flip-s0 prompts=train        # on the prompts its users sent

A run evaluates with ``eval.samples_per_prompt`` answers per held-out prompt (1 by default: 64 answers on the tiny
model). That is enough to draw a curve but coarse for a single figure: the standard error of a satisfaction rate
near 0.85 over 64 answers is about 0.045, so 0.84 and 0.90 are one evaluation's noise apart. This command loads the
run's latest checkpoint (the final policy of a finished run), or with ``at=T`` the policy the run kept at the
persona change after ``T`` interactions (``snapshots/t<T>.pt``, the end of a phase), samples ``samples_per_prompt``
answers for each held-out prompt, judges each against as many answers of the frozen base model under the
preferences the run judged under at that interaction (the old and the new ones at a persona change), and prints the
figures next to the run's own evaluation at that interaction. The run's judge, prompts and sampling settings are
used; the run folder is not changed except for ``reevaluations/t<T>-k<K>-p<N>-s<S>.json`` (the figures and every
judged answer). ``seed`` picks the evaluation's answers; the default, the run's seed, with ``samples_per_prompt``
and ``n_prompts`` as in the run, repeats the run's evaluation exactly (at the run's CPU thread count: a bench run
with ``jobs=2`` ran at one thread, so use ``OMP_NUM_THREADS=1``). The in-context oracle is not re-evaluated.
``prompts=train`` judges on the scenario's training pool instead (the first ``n_prompts`` of the prompts its users
send, the ones the learner learned from), so a gap between the two pools shows what the policy learned for the
prompts it saw and did not carry over to new ones; it writes ``...-train.json`` and has no figures of the run's to
print beside its own.

``run=`` a bench folder (``<bench>/<learner>/seed<k>``, made by ``python -m sdpo_env.bench``) judges each of its runs
in turn with the same settings, then prints one line per run and judged phase and the mean ± 95% CI over seeds per
learner, and writes them to ``<bench>/reevaluations/<final|t<T>>-k<K>.md`` and ``.csv`` (the csv has every
preference's rate). A run judged before with the same settings is read from its file instead, so the same command
continues after an interruption or a new seed; a run without the policy asked for (not started, or not yet at
``at``) is skipped with a line saying why.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from agents import OnlineLearner, make_learner, set_persona
from sdpo_env.bench_metrics import mean_ci
from sdpo_env.cli import command_main, table_section
from sdpo_env.config import COMMAND_LINE, RunConfig, command_line_config, option, resolve_config
from sdpo_env.errors import ConfigError, Problem, SdpoEnvError
from sdpo_env.evaluation import evaluation_seed, phases_to_judge
from sdpo_env.judges import JUDGES
from sdpo_env.judges.evaluate import WinRateEvaluator, interval_text
from sdpo_env.llm.setup import LLMComponents, check_keys
from sdpo_env.policy import ChatPolicy
from sdpo_env.prompts import Prompt, load_prompts
from sdpo_env.run import load_policy, run_scenario
from sdpo_env.runfolder import RunFolder, write_json

SHOWN = ("win_rate", "ci_low", "ci_high", "win_rate_excl_ties", "coverage", "valid_rate", "ceiling", "surprise",
         "base_surprise")
_POOL_SUFFIX = {"eval": "", "train": "-train"}  # a file name's end: the held-out pool's files keep their old names


@dataclass
class ReevaluateConfig:
    """Which run to judge again and how many answers (``key=value`` on the command line)."""

    run: str = option("", "a run folder (it must hold config.yaml and checkpoint.pt), or a bench folder: each of its "
                          "runs in turn", nonempty=True)
    samples_per_prompt: int = option(8, "answers per prompt, on each side", min=1)
    n_prompts: int | None = option(None, "prompts to judge on, the first of the pool; default the run's "
                                            "eval.n_prompts", min=1)
    seed: int | None = option(None, "seeds the evaluation's answers; default the run's seed", min=0)
    at: int | None = option(None, "the interaction to judge the policy after: a persona change (the run keeps the "
                                  "policy there, in snapshots/); default the latest checkpoint", min=0)
    prompts: str = option("eval", "the scenario's prompt pool to judge on: eval (the held-out prompts the run judged "
                                  "on) or train (the prompts its users sent, which the learner learned from)",
                          choices=("eval", "train"))


def main(argv: Sequence[str] | None = None) -> int:
    def body(args: list[str], console: Console) -> int:
        config = command_line_config(ReevaluateConfig, args)
        if not (Path(config.run) / "config.yaml").is_file() and bench_runs(Path(config.run)):
            reevaluate_bench(config, console)
        else:
            reevaluate(config, console)
        return 0

    return command_main(__doc__, argv, body, interrupted="interrupted: the evaluation under way was not written "
                                                         "(a bench's runs judged before it were); run the same "
                                                         "command again to continue")


def reevaluate(config: ReevaluateConfig, console: Console) -> list[dict[str, Any]]:
    """Evaluates the run's latest checkpoint; writes and prints the figures; returns one row per judged phase."""
    return _judge(_Job.of(_existing_run(config.run), config), config, console)


def _judge(job: _Job, config: ReevaluateConfig, console: Console) -> list[dict[str, Any]]:
    """Judges the policy ``job`` names; writes ``job.out`` and prints the figures; returns one row per phase."""
    folder, run_config, scenario, t = job.folder, job.run_config, job.scenario, job.t
    check_keys(run_config)
    n = run_config.n_interactions or scenario.n_interactions
    policy, learner = _restored(job.state, run_config)
    llm = LLMComponents(run_config, folder.path)
    judge = JUDGES.get(run_config.judge.backend)(**llm.judge_kwargs())
    evaluator = WinRateEvaluator(policy, judge, job.prompts, samples_per_prompt=config.samples_per_prompt,
                                 seed=run_config.seed, bootstrap=run_config.eval.bootstrap)
    # the run judged on its held-out pool only, so on the training pool there is nothing of its own to show
    logged = {(r["interaction"], r["phase"]): r for r in folder.read_jsonl(folder.metrics)} if (
        config.prompts == "eval") else {}
    rows = []
    try:
        for phase in phases_to_judge(scenario, t, n):
            set_persona(learner, phase.persona)
            with console.status(f"interaction {t}, phase {phase.index} ({phase.persona.name}): "
                                f"{len(evaluator.conversations)} answers on each side"):
                metrics, answers = evaluator.evaluate(lambda c, s: learner.answer(c, seed=s), phase.persona,
                                                      seed=evaluation_seed(job.seed, t))
            rows.append({"interaction": t, "phase": phase.index, "persona": phase.persona.name,
                         "prompts": config.prompts, "samples_per_prompt": config.samples_per_prompt,
                         "seed": job.seed, **metrics,
                         "answers": [{"prompt": c[-1]["content"], "policy": a, "base": b}
                                     for c, a, b in zip(evaluator.conversations, answers,
                                                        evaluator.base_responses())]})
            _print(console, rows[-1], logged.get((t, phase.index)),
                   (run_config.eval.n_prompts * run_config.eval.samples_per_prompt, len(answers)))
    finally:
        llm.close()
    job.out.parent.mkdir(exist_ok=True)
    write_json(job.out, rows)
    console.print(f"written: {job.out}" + (f" (LLM judge: ${llm.meter.spent_usd:.4f})" if llm.services else ""))
    return rows


@dataclass
class _Job:
    """What a re-evaluation of one run judges (the learner's state, read once), and the file it writes."""

    folder: RunFolder
    run_config: RunConfig
    scenario: Any
    state: dict[str, Any]
    t: int
    prompts: Sequence[Prompt]
    seed: int
    out: Path

    @classmethod
    def of(cls, folder: RunFolder, config: ReevaluateConfig) -> _Job:
        run_config = stored_config(folder)
        scenario = run_scenario(run_config)
        state = folder.state_at(config.at)
        t = int(state["t"])
        pool = scenario.spec.prompts.train if config.prompts == "train" else scenario.spec.prompts.eval
        prompts = load_prompts(pool)[: config.n_prompts or run_config.eval.n_prompts]
        seed = run_config.seed if config.seed is None else config.seed
        out = folder.path / "reevaluations" / (f"t{t}-k{config.samples_per_prompt}-p{len(prompts)}-s{seed}"
                                               f"{_POOL_SUFFIX[config.prompts]}.json")
        return cls(folder, run_config, scenario, state, t, prompts, seed, out)


def bench_runs(bench: Path) -> list[RunFolder]:
    """The run folders of a bench folder (``<bench>/<learner>/seed<k>``), by learner, then seed."""
    found = [p.parent for p in bench.glob("*/seed*/config.yaml") if re.fullmatch(r"seed\d+", p.parent.name)]
    return [RunFolder(p) for p in sorted(found, key=lambda p: (p.parent.name, int(p.name[4:])))]


def reevaluate_bench(config: ReevaluateConfig, console: Console) -> dict[str, list[dict[str, Any]]]:
    """Judges every run of a bench folder again, one after another, then writes and prints a table of them all.

    A run judged before with the same settings (its ``reevaluations/`` file) is read, not judged again, so an
    interrupted command continues where it stopped. A run without the policy asked for (no checkpoint yet, or not
    yet at ``at``) is skipped with a line saying why. Returns the rows of each run, by ``<learner>/seed<k>``."""
    bench = Path(config.run)
    runs = bench_runs(bench)
    judged: dict[str, list[dict[str, Any]]] = {}
    for i, folder in enumerate(runs, 1):
        label = f"{folder.path.parent.name}/{folder.path.name}"
        if not folder.checkpoint.is_file():
            console.print(f"[yellow]{label}: no checkpoint yet (the run has not started), skipped[/]")
            continue
        try:
            job = _Job.of(folder, config)
        except ConfigError as exc:
            console.print(f"[yellow]{label}: skipped: {exc.problems[0].message}[/]")
            continue
        if job.out.is_file():
            console.print(f"[dim]{label}: judged before, read from {job.out}[/]")
            judged[label] = json.loads(job.out.read_text(encoding="utf-8"))
            continue
        console.rule(f"{i}/{len(runs)} {label}, interaction {job.t}")
        judged[label] = _judge(job, config, console)
    if not judged:
        raise SdpoEnvError(f"{bench}: none of its {len(runs)} runs has the policy asked for yet; nothing was judged")
    _bench_report(bench, config, judged, console)
    return judged


BENCH_COLUMNS = (("win_rate", "win rate"), ("win_rate_excl_ties", "excl. ties"), ("coverage", "coverage"),
                 ("worst", "worst preference"), ("valid_rate", "valid"), ("surprise", "surprise"))


def _bench_lines(judged: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One flat record per run and judged phase: the headline figures, the least satisfied preference, every rate."""
    lines = []
    for label, rows in judged.items():
        learner, seed = label.split("/")
        for row in rows:
            rates = {k.removeprefix("sat/"): v for k, v in row.items() if k.startswith("sat/") and k != "sat/all"}
            worst = min(rates, key=lambda k: rates[k]) if rates else None
            lines.append({"learner": learner, "seed": int(seed.removeprefix("seed")), "interaction": row["interaction"],
                          "phase": row["phase"], "persona": row["persona"], "answers": len(row["answers"]),
                          **{k: row.get(k) for k, _ in BENCH_COLUMNS if k != "worst"},
                          "worst": rates[worst] if worst else None, "worst_preference": worst,
                          **{f"sat/{k}": v for k, v in rates.items()}})
    return lines


def _bench_report(bench: Path, config: ReevaluateConfig, judged: dict[str, list[dict[str, Any]]],
                  console: Console) -> None:
    """One line per run and judged phase, then the mean ± 95% CI over seeds per learner and phase; as a table in
    the terminal and in ``<bench>/reevaluations/<when>-k<K>.md`` and ``.csv`` (every preference's rate there)."""
    lines = _bench_lines(judged)

    def cell(line: dict[str, Any], key: str) -> str:
        named = key == "worst" and line["worst_preference"]
        return _fmt(line[key]) + (f" {line['worst_preference']}" if named else "")

    per_run = [[ln["learner"], str(ln["seed"]), str(ln["interaction"]), f"{ln['phase']} ({ln['persona']})",
                *(cell(ln, k) for k, _ in BENCH_COLUMNS)] for ln in lines]
    groups: dict[tuple[str, int, int, str], list[dict[str, Any]]] = {}
    for ln in lines:
        groups.setdefault((ln["learner"], ln["interaction"], ln["phase"], ln["persona"]), []).append(ln)
    means = []
    for (learner, t, phase, persona), members in groups.items():
        cells = []
        for key, _ in BENCH_COLUMNS:
            values = [m[key] for m in members if m[key] is not None]
            mean, ci = mean_ci(values) if values else (None, None)
            cells.append("-" if mean is None else f"{mean:.3f}" + (f" ± {ci:.3f}" if ci is not None else ""))
        means.append([learner, f"{len(members)} seeds", str(t), f"{phase} ({persona})", *cells])

    when = "final" if config.at is None else f"t{config.at}"
    name = f"{when}-k{config.samples_per_prompt}" + (f"-p{config.n_prompts}" if config.n_prompts else "") + (
        f"-s{config.seed}" if config.seed is not None else "") + _POOL_SUFFIX[config.prompts]
    policies = "the final policies" if config.at is None else f"the policies after {config.at} interactions"
    head = ["learner", "seed", "interaction", "phase", *(h for _, h in BENCH_COLUMNS)]
    pool = "held-out prompt" if config.prompts == "eval" else "training prompt"
    md = [f"# {bench}: {policies} judged again, {config.samples_per_prompt} answers per {pool}", ""]
    for caption, body in (("Each run", per_run), ("Mean ± 95% CI over seeds", means)):
        md += table_section(console, caption, head, body, left=("learner", "phase"), wrap=("phase",))
    md.append("Worst preference: the least satisfied preference in force at that interaction (share of the judged "
              "answers). Surprise: the frozen base model's negative log-likelihood per token of the answers (nats; "
              "its own answers' is in each run's file as `base_surprise`). Each run's figures and judged answers: "
              "`<learner>/seed<k>/reevaluations/`.")
    out = bench / "reevaluations"
    out.mkdir(exist_ok=True)
    (out / f"{name}.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    with (out / f"{name}.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for ln in lines for k in ln)))
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in ln.items()} for ln in lines)
    console.print(f"written: {out / name}.md and .csv")


def _existing_run(path: str) -> RunFolder:
    """The run folder, or an error that names what is missing (RunFolder itself would create the folder)."""
    missing = [name for name in ("config.yaml", "checkpoint.pt") if not (Path(path) / name).is_file()]
    if missing:
        raise ConfigError([Problem(COMMAND_LINE, "run", f"{path} has no {' or '.join(missing)}; give a run folder "
                                                        "made by python -m sdpo_env.run, or a bench folder made by "
                                                        "python -m sdpo_env.bench")])
    return RunFolder(path)


def stored_config(folder: RunFolder) -> RunConfig:
    """The run's resolved configuration, as its ``config.yaml`` holds it."""
    return resolve_config([(str(folder.config), folder.read_config())])


def learner_at(folder: RunFolder, run_config: RunConfig, at: int | None) -> tuple[int, ChatPolicy, OnlineLearner]:
    """The run's learner as it was after ``at`` interactions (by default the latest checkpoint's), and its policy."""
    state = folder.state_at(at)
    return (state["t"], *_restored(state, run_config))


def _restored(state: dict[str, Any], run_config: RunConfig) -> tuple[ChatPolicy, OnlineLearner]:
    """The run's policy and a learner holding ``state`` (a checkpoint's or a snapshot's)."""
    policy = load_policy(run_config)
    learner = make_learner(run_config.agent, policy, seed=run_config.seed)
    learner.load_state_dict(state["learner"])
    return policy, learner


def save_adapter_at(run: str | Path, at: int, out: Path) -> Path:
    """Writes the adapter a run kept after ``at`` interactions to ``out`` in peft's format; returns ``out``.

    Raises:
        ConfigError: the folder is not a run, or kept no policy at ``at``.
        SdpoEnvError: the run's learner has no adapter (``agent=none``, ``agent=icl_oracle``).
    """
    folder = _existing_run(str(run))
    run_config = stored_config(folder)
    _, policy, _ = learner_at(folder, run_config, at)
    if not policy.has_adapter:
        raise SdpoEnvError(f"{folder.path} ran agent={run_config.agent['name']}, which trains no adapter: its policy "
                           "is the model itself")
    policy.save_adapter(out)
    return out


def _print(console: Console, row: dict[str, Any], logged: dict[str, Any] | None, answers: tuple[int, int]) -> None:
    """The re-evaluation's figures next to the run's own evaluation at the same interaction and phase, if any."""
    keys = [*SHOWN, *sorted(k for k in row if k.startswith("sat/")),
            *sorted(k for k in row if k.startswith("base_sat/"))]
    table = Table(title=f"interaction {row['interaction']}, phase {row['phase']} ({row['persona']})")
    table.add_column("metric")
    none = ": none on the training prompts" if row.get("prompts") == "train" else ": none at this point"
    table.add_column("the run's evaluation" + (f" ({answers[0]} answers)" if logged else none), justify="right")
    table.add_column(f"re-evaluation ({answers[1]} answers)", justify="right")
    for key in keys:
        if key in row:
            table.add_row(key, _with_interval(logged or {}, key), _with_interval(row, key))
    console.print(table)


def _with_interval(row: dict[str, Any], key: str) -> str:
    """``row[key]``, and for a preference's satisfaction its 95% interval (``sat_low/``, ``sat_high/``) if logged."""
    name = key.removeprefix("sat/")
    return _fmt(row.get(key)) + ("" if key == name or key not in row else interval_text(row, name))


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.3f}"


if __name__ == "__main__":
    raise SystemExit(main())
