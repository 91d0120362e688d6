"""``python -m sdpo_env.run scenario=NAME [key=value ...]``: a learner personalises to a simulated user.

Examples::

    python -m sdpo_env.run scenario=flip                      # SDPO on the embedded tiny model, offline
    python -m sdpo_env.run scenario=single agent=icl_oracle   # the in-context oracle baseline
    python -m sdpo_env.run scenario=flip agent=sdpo_paper     # SDPO with the paper's loss and optimizer
    python -m sdpo_env.run scenario=flip agent.lr=1.5 seed=1 out_dir=runs/flip-s1
    python -m sdpo_env.run resume=runs/flip-s1                # continue a stopped run exactly
    python -m sdpo_env.run branch=runs/flip-s1 agent.weight_decay=0 n_interactions=750 out_dir=runs/flip-s1-wd0
        # a new run that starts from runs/flip-s1's last checkpoint with other learner options
    python -m sdpo_env.run branch=runs/flip-s1 at=250 agent.weight_decay=2e-3 out_dir=runs/flip-s1-250-wd2e-3
        # ... or from its state at the persona change at interaction 250

The run folder gets ``config.yaml``, ``interactions.jsonl``, ``metrics.jsonl``, ``summary.json``, ``winrate.png``,
``preferences.png``, the adapter in peft format, ``checkpoint.pt`` and ``snapshots/t<T>.pt`` (the run's state at
each persona change, and every ``snapshot_every`` interactions if set, for ``python -m sdpo_env.reevaluate ... at=T``
and ``branch=... at=T``). Ctrl-C checkpoints and stops cleanly.
"""

from __future__ import annotations

import time
import warnings
from collections import defaultdict
from collections.abc import Sequence
from contextlib import ExitStack
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from agents import make_learner, set_persona
from agents.base import OnlineLearner, Transition, resolved_learner_options, with_absent_options
from agents.icl_oracle import InContextOracle
from sdpo_env.bench_metrics import final_row, surprise_gap
from sdpo_env.cli import StopRequest, command_main
from sdpo_env.config import (
    COMMAND_LINE,
    RunConfig,
    config_to_dict,
    flatten,
    load_run_config,
    model_settings_line,
    parse_overrides,
    resolve_config,
)
from sdpo_env.env import PersonalizationEnv
from sdpo_env.errors import (
    BudgetExceededError,
    ConfigError,
    Problem,
    ProviderRequestError,
    RunInterrupted,
    SdpoEnvError,
)
from sdpo_env.evaluation import Evaluation, WorkerStopped, evaluate_job, evaluation_worker, in_background
from sdpo_env.judges import JUDGES
from sdpo_env.judges.base import PairwiseJudge
from sdpo_env.judges.evaluate import WinRateEvaluator, interval_text
from sdpo_env.llm.setup import LLMComponents, check_keys
from sdpo_env.plots import plot_preferences, plot_win_rate
from sdpo_env.policy import ChatPolicy, Sampling
from sdpo_env.prompts import load_prompts
from sdpo_env.runfolder import RunFolder
from sdpo_env.scenarios import Scenario, load_scenario

# What a resumed run may change: neither changes what it computes (a budget stops it, the worker is another process).
RESUME_OVERRIDES = ("budget_usd", "eval.background", "snapshot_every")
# What a branch may change besides the learner's options: the rest fixes the interactions and the evaluation.
BRANCH_OVERRIDES = (*RESUME_OVERRIDES, "n_interactions", "checkpoint_every", "out_dir")
# The learner options that shape the state a branch starts from (the learner, its adapter, optimizer and teacher).
BRANCH_FIXED = ("agent.name", "agent.optimizer", "agent.teacher", "agent.lora_")
HEADLINE = ("win_rate", "ci_low", "ci_high", "win_rate_excl_ties", "coverage", "sat/all", "ceiling", "valid_rate",
            "surprise", "base_surprise")
# Nats per token by which the frozen base model may find the policy's held-out answers less likely than its own before
# the run warns. On the tiny model a policy that learned its users' style reads -0.15 to +0.33 (flip and multi-turn
# runs), while the stretches of garbled and off-topic answers on multi-turn seeds 7 and 10 read +0.43 to +0.48 and
# +0.68 to +0.86 (README, "Scenarios").
SURPRISE_WARNING = 0.4


class Interruption:
    """Catches what stops a run that can be resumed (a provider down after retries, the budget reached, a request
    the provider rejects) and remembers the last consistent point, so the runner checkpoints before the
    interaction or evaluation in progress: nothing is half-written and nothing is lost."""

    def __init__(self) -> None:
        self.error: SdpoEnvError | None = None
        self.safe: tuple[int, dict[str, Any], int, int, dict[str, list[float]]] = (0, {}, 0, -1, {})
        self.response: str | None = None  # the answer of the interaction in progress, once the learner gave it

    def mark(self, t: int, env_state: dict[str, Any], n_rows: int, last_eval: int,
             window: dict[str, list[float]]) -> None:
        """The state before interaction ``t`` and its evaluation, if any (which empties the metrics window)."""
        self.safe = (t, env_state, n_rows, last_eval, {k: list(v) for k, v in window.items()})
        self.response = None

    def __enter__(self) -> Interruption:
        return self

    def __exit__(self, kind: Any, exc: BaseException | None, tb: Any) -> bool:
        if isinstance(exc, (RunInterrupted, ProviderRequestError)):
            self.error = exc
            return True
        return False


def degenerate(row: dict[str, Any]) -> list[str]:
    """Warnings for an evaluation row that shows learning has gone wrong (collapse, no signal, a useless judge)."""
    found = []
    if row.get("valid_rate") is not None and row["valid_rate"] < 0.5:
        found.append(f"policy collapse at interaction {row['interaction']}: only {row['valid_rate']:.0%} of held-out "
                     "answers are valid (too short or looping); lower agent.lr or raise agent.weight_decay")
    gap = surprise_gap(row)
    if gap is not None and gap > SURPRISE_WARNING:
        found.append(f"answers the base model would not write at interaction {row['interaction']}: "
                     f"{row['surprise']:.2f} nats per token under the frozen base model against "
                     f"{row['base_surprise']:.2f} for its own answers (the rules read style only: look for garbled "
                     "text or answers about another topic in interactions.jsonl, or judge again with python -m "
                     "sdpo_env.reevaluate, which keeps every answer)")
    signal = row.get("sdpo/advantage_abs_mean")
    if signal is not None and signal < 1e-4:
        found.append(f"no learning signal at interaction {row['interaction']}: mean |A_t| is {signal:.1e} (the "
                     "hindsight context no longer changes the policy's log-probs)")
    if row.get("coverage") == 0 and row.get("missing_rate", 1) < 1:
        found.append(f"the judge called every pair a tie at interaction {row['interaction']}")
    if row.get("missing_rate") is not None and row["missing_rate"] > 0.5:
        found.append(f"the judge failed on {row['missing_rate']:.0%} of pairs at interaction {row['interaction']}")
    return found


def prepare(args: Sequence[str]) -> tuple[RunConfig, Scenario, RunFolder, bool]:
    """Resolves the configuration and the run folder; ``resume=`` takes both from an existing folder, ``branch=``
    (:func:`branch`) starts a new folder from one."""
    cli = parse_overrides(args)
    if "branch" in cli:
        return branch(cli)
    if "at" in cli:
        raise ConfigError([Problem(COMMAND_LINE, "at", "at=T goes with branch=RUN: the interaction of RUN to "
                                                       "start the branch from (a snapshot)")])
    if "resume" in cli:
        if not (Path(str(cli["resume"])) / "config.yaml").is_file():  # checked before RunFolder creates the folder
            raise ConfigError([Problem(COMMAND_LINE, "resume", f"{cli['resume']} has no config.yaml; is it a run "
                                                               "folder?")])
        folder = RunFolder(str(cli["resume"]))
        given = flatten(cli)
        extra = sorted(set(given) - {"resume", *RESUME_OVERRIDES})
        if extra:
            raise ConfigError([Problem(COMMAND_LINE, k, "a resumed run keeps the settings in its config.yaml; "
                                                        "remove this override (only "
                                                        f"{', '.join(RESUME_OVERRIDES)} may change)")
                               for k in extra])
        overrides = {k: v for k, v in cli.items() if k != "resume"}
        config = resolve_config([(str(folder.config), settings_as_run(folder.config)), (COMMAND_LINE, overrides)])
        check_keys(config)
        folder.claim("resume")  # before anything is written: the run may still be going in another process
        if overrides:
            folder.write_config(config_to_dict(config))  # part of the run's settings now
        warn_missing_options(config.agent, resolved_learner_options(config.agent, source=config.source_of), folder)
        return config, run_scenario(config), folder, True
    config, scenario = load_run_config(args)
    # validated before any model loads or folder exists; config.yaml records every learner option
    config.agent = resolved_learner_options(config.agent, source=config.source_of)
    check_keys(config)
    folder = new_run_folder(config.out_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}-{scenario.name}")
    return config, scenario, folder, False


def new_run_folder(path: str) -> RunFolder:
    """The folder a new run (or branch) writes, claimed; one that already holds a run is refused."""
    folder = RunFolder(path)
    folder.claim("out_dir")  # a run started there that has no checkpoint yet would otherwise be overwritten
    if folder.checkpoint.is_file():
        folder.release()
        raise ConfigError([Problem(COMMAND_LINE, "out_dir", f"{folder.path} already holds a run; continue it with "
                                                            f"resume={folder.path} or choose another out_dir")])
    return folder


def branch(cli: dict[str, Any]) -> tuple[RunConfig, Scenario, RunFolder, bool]:
    """``branch=RUN [at=T]``: a new run folder holding RUN's interactions, evaluations and state up to its last
    checkpoint (or up to interaction T, from its snapshot: a persona change, or one kept by ``snapshot_every``), with
    the learner's options (and the length) changed as given; the loop then resumes it there."""
    path = Path(str(cli["branch"]))
    if not ((path / "config.yaml").is_file() and (path / "checkpoint.pt").is_file()):
        raise ConfigError([Problem(COMMAND_LINE, "branch", f"{path} has no config.yaml and checkpoint.pt; a branch "
                                                           "starts from a run's last checkpoint")])
    source = RunFolder(path)
    at = _interaction_count(cli.get("at"))
    start = source.state_at(at)  # checked before the new folder is made
    if "env" not in start:
        raise ConfigError([Problem(COMMAND_LINE, "at", f"{source.snapshots / f't{at}.pt'} holds only the "
                                                       "policy (runs before December 2026 kept no more at a persona "
                                                       "change): it can be judged again, not branched from")])
    overrides = {k: v for k, v in cli.items() if k not in ("branch", "at")}
    refused = sorted(k for k in flatten(overrides) if k not in BRANCH_OVERRIDES
                     and (not k.startswith("agent.") or k.startswith(BRANCH_FIXED)))
    if refused:
        raise ConfigError([Problem(COMMAND_LINE, k, "a branch keeps its source's interactions, evaluation and learner "
                                                    "state; it may change the learner's options (agent.lr=..., but "
                                                    "not agent.name, optimizer, teacher or lora_*) and "
                                                    f"{', '.join(BRANCH_OVERRIDES)}") for k in refused])
    stored = settings_as_run(source.config)
    config = resolve_config([(str(source.config), stored), (COMMAND_LINE, overrides)])
    config.agent = resolved_learner_options(config.agent, source=config.source_of)
    check_keys(config)
    warn_missing_options({**stored.get("agent", {}), **overrides.get("agent", {})}, config.agent, source)
    config.out_dir = config.out_dir or f"{source.path}-branch-{datetime.now():%Y%m%d-%H%M%S}"
    if Path(config.out_dir).resolve() == source.path.resolve():
        raise ConfigError([Problem(COMMAND_LINE, "out_dir", "a branch needs a folder of its own, not its source's")])
    folder = new_run_folder(config.out_dir)
    source.copy_state_to(folder, start)
    written = config_to_dict(config)
    folder.write_config(written)
    before, after = flatten(stored), flatten(written)
    changed = {k: [before.get(k), after[k]] for k in sorted(flatten(overrides))
               if k not in (*RESUME_OVERRIDES, "out_dir", "checkpoint_every") and before.get(k) != after[k]}
    folder.write_branches([*(b for b in source.read_branches() if b["at"] <= start["t"]),
                           {"run": str(source.path), "at": start["t"], "changed": changed}])
    return config, run_scenario(config), folder, True


def _interaction_count(value: Any) -> int | None:
    """``at=``'s value: a number of interactions, or None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError([Problem(COMMAND_LINE, "at", f"expected a number of interactions (e.g. at=250), got "
                                                       f"{value!r}")])
    return value


def settings_as_run(config_yaml: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as the run ran: learner options it predates take the value they had before they
    existed, where that is not today's default (``agents.base.with_absent_options``). Read by resume, branch and the
    bench, so an older run is neither continued nor counted with a setting it never had."""
    stored = yaml.safe_load(config_yaml.read_text(encoding="utf-8"))
    if isinstance(stored.get("agent"), dict):
        stored["agent"] = with_absent_options(stored["agent"])
    return stored


def warn_missing_options(stored: dict[str, Any], resolved: dict[str, Any], folder: RunFolder) -> None:
    """Warns when a resumed run's config.yaml lacks learner options added since the run started: they take
    today's defaults, which need not be what the run used, so the resumed part may differ from an unbroken run."""
    missing = {k: v for k, v in resolved.items() if k not in stored}
    if missing:
        given = ", ".join(f"agent.{k}={v}" for k, v in missing.items())
        warnings.warn(f"{folder.config} has no {', '.join(f'agent.{k}' for k in missing)} (options added after "
                      f"this run started); continuing with today's defaults {given}, which may not be what it ran "
                      "with", UserWarning, stacklevel=2)


def evaluation_points(n: int, every: int, scenario: Scenario) -> list[int]:
    """After how many interactions to evaluate: 0, every ``every``, at each persona change, and at the end."""
    points = set(range(0, n + 1, every)) | {n} | {p.start for p in scenario.phases if p.start < n}
    return sorted(points)


def run_scenario(config: RunConfig) -> Scenario:
    """The scenario of a resolved configuration (with its ``persona=`` replacement)."""
    scenario = load_scenario(config.scenario)
    return scenario if config.persona is None else scenario.with_persona(config.persona)


def load_policy(config: RunConfig) -> ChatPolicy:
    """The policy model with the run's device, dtype and sampling settings."""
    sampling = Sampling(temperature=config.policy.temperature, top_p=config.policy.top_p,
                        max_new_tokens=config.policy.max_new_tokens)
    return ChatPolicy.load(config.policy.model, device=config.policy.device, dtype=config.policy.dtype,
                           sampling=sampling)


def build_evaluation(config: RunConfig, scenario: Scenario, n: int, policy: ChatPolicy, learner: OnlineLearner,
                     judge: PairwiseJudge) -> Evaluation:
    """The run's evaluation: held-out prompts, the win-rate evaluator and (unless the learner is it) the oracle."""
    prompts = load_prompts(scenario.spec.prompts.eval)[: config.eval.n_prompts]
    evaluator = WinRateEvaluator(policy, judge, prompts, samples_per_prompt=config.eval.samples_per_prompt,
                                 seed=config.seed, bootstrap=config.eval.bootstrap, surprise=config.eval.surprise)
    wants_oracle = config.eval.oracle and config.agent["name"] != "icl_oracle"
    oracle = InContextOracle(policy, seed=config.seed) if wants_oracle else None
    return Evaluation(scenario, n, config.seed, learner, evaluator, oracle)


def worker_evaluation(config: RunConfig, n: int, folder: str) -> Evaluation:
    """The evaluation an :class:`EvaluationWorker` builds for the run: the same parts, loaded in the worker."""
    scenario = run_scenario(config)
    policy = load_policy(config)
    learner = make_learner(config.agent, policy, seed=config.seed)
    judge = JUDGES.get(config.judge.backend)(**LLMComponents(config, folder).judge_kwargs())
    return build_evaluation(config, scenario, n, policy, learner, judge)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs (or resumes) a scenario from command-line ``key=value`` arguments; returns the exit code."""
    # Ctrl-C before the loop (loading) or after it (plots) ends here; inside it StopRequest checkpoints.
    return command_main(__doc__, argv, run, interrupted="interrupted outside the interaction loop (no checkpoint "
                        "written now); continue with resume=<run folder> if it already holds checkpoint.pt, "
                        "otherwise start again")


def run(args: Sequence[str], console: Console) -> int:
    with ExitStack() as cleanup:  # stops the evaluation worker, if any, however the run ends
        return _run(args, console, cleanup)


def _run(args: Sequence[str], console: Console, cleanup: ExitStack) -> int:
    config, scenario, folder, resuming = prepare(args)
    cleanup.callback(folder.release)
    settings = model_settings_line(config)  # a new run's only: a resumed one reads its config.yaml
    if settings:
        console.print(settings)
    n = config.n_interactions or scenario.n_interactions
    policy = load_policy(config)
    learner = make_learner(config.agent, policy, seed=config.seed)
    llm = LLMComponents(config, folder.path)  # LLM simulator/judge plumbing: one cache, one cost meter
    env = PersonalizationEnv(scenario, n_interactions=n, simulator=config.simulator.backend,
                             simulator_kwargs=llm.simulator_kwargs())
    judge = JUDGES.get(config.judge.backend)(**llm.judge_kwargs())
    evaluation = build_evaluation(config, scenario, n, policy, learner, judge)
    evaluator = evaluation.evaluator
    worker = cleanup.enter_context(evaluation_worker(partial(worker_evaluation, config, n, str(folder.path)),
                                                     enabled=in_background(config, n, policy.device,
                                                                           policy.weight_bytes())))
    points = evaluation_points(n, config.eval.every, scenario)
    every = config.snapshot_every  # snapshots/: the state at each persona change, and every N if asked
    kept = {p.start for p in scenario.phases if 0 < p.start < n} | (set(range(every, n, every)) if every else set())

    obs, _ = env.reset(seed=config.seed)
    state = folder.load_checkpoint() if resuming else None
    if state is not None:
        learner.load_state_dict(state["learner"])
        env.set_state(state["env"])
        evaluator.load_state_dict(state["evaluator"])
        llm.load_state_dict(state.get("llm"))
        obs = env.observation()
        folder.truncate(folder.interactions, state["t"])
        folder.truncate(folder.metrics, state["n_metric_lines"])
        console.print(f"resuming {folder.path} at interaction {state['t']}")
    else:
        folder.write_config(config_to_dict(config))
        folder.truncate(folder.interactions, 0)
        folder.truncate(folder.metrics, 0)
    t0 = state["t"] if state else 0
    pending = state.get("pending_response") if state else None  # an answer whose follow-up failed: reuse it
    window: dict[str, list[float]] = state["window"] if state else defaultdict(list)
    window = defaultdict(list, window)
    last_eval = state["last_eval"] if state else -1
    timings: dict[str, float] = defaultdict(float, state["timings"] if state else {})
    rows = folder.read_jsonl(folder.metrics)

    def record(new_rows: list[dict[str, Any]]) -> None:
        for row in new_rows:
            folder.append(folder.metrics, row)
            rows.append(row)
            for message in degenerate(row):
                console.print(f"[yellow]warning:[/] {message}")

    def evaluate(k: int) -> None:
        """Evaluates after ``k`` interactions, or hands the evaluation to the worker."""
        started = time.perf_counter()
        summary = {k2: float(np.mean(v)) for k2, v in sorted(window.items()) if v}  # sorted: stable across resumes
        window.clear()
        if worker is not None:
            try:
                worker.submit(k, learner.state_dict(), evaluator.state_dict(), summary)
            except WorkerStopped as stopped:
                without_worker(stopped)
        if worker is None:
            record(evaluation.rows(k, summary))
            timings["evaluation_s"] += time.perf_counter() - started
        timings["evaluation_wait_s"] += time.perf_counter() - started
        timings["evaluations"] += 1

    def without_worker(stopped: WorkerStopped) -> None:
        """The worker is gone: later evaluations run in this process (the rows are the same)."""
        nonlocal worker
        worker = None
        console.print(f"[yellow]warning:[/] {stopped}; the run evaluates in its own process from now on (as with "
                      "eval.background=never)")

    def collect(wait: bool) -> None:
        """Writes the worker's rows once its evaluation is done; ``wait`` waits for it. If the worker stopped, the
        evaluation it held is done here instead."""
        if worker is None or worker.pending is None or not (wait or worker.ready()):
            return
        started = time.perf_counter()
        try:
            done = worker.result()
        except WorkerStopped as stopped:
            without_worker(stopped)
            done = evaluate_job(evaluation, stopped.job)
        evaluator.load_state_dict(done.evaluator)  # the base answers, once the worker has written them
        record(done.rows)
        timings["evaluation_s"] += done.seconds
        timings["evaluation_wait_s"] += time.perf_counter() - started

    def run_state(t: int, env_state: dict[str, Any] | None = None, pending: str | None = None) -> dict[str, Any]:
        """What a resume at ``t`` reads: a checkpoint's, and a snapshot's."""
        collect(wait=True)  # an evaluation at or before t is part of the state at t
        return {"t": t, "learner": learner.state_dict(), "env": env_state or env.get_state(),
                "evaluator": evaluator.state_dict(), "n_metric_lines": len(rows), "window": dict(window),
                "last_eval": last_eval, "timings": dict(timings), "llm": llm.state_dict(), "pending_response": pending}

    def checkpoint(t: int, env_state: dict[str, Any] | None = None, pending: str | None = None) -> None:
        folder.save_checkpoint(run_state(t, env_state, pending))

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    stopped = False
    interruption = Interruption()
    with StopRequest() as stop, Progress(*columns, console=console, transient=False) as progress, interruption:
        task = progress.add_task(scenario.name, total=n, completed=t0, status="")
        for t in range(t0, n + 1):
            due = t in points and t > last_eval
            collect(wait=due)  # the worker's last rows, before the consistent point below counts them
            interruption.mark(t, env.get_state(), len(rows), last_eval, window)
            if t in kept:  # the end of a phase (and every snapshot_every): to judge again later, or to branch from
                folder.save_snapshot(run_state(t, pending=pending))
            if due:
                evaluate(t)
                last_eval = t
            if t == n:
                break
            phase = scenario.phase_at(t)
            set_persona(learner, phase.persona)
            messages = list(obs["messages"])
            started = time.perf_counter()
            (response,) = [pending] if pending is not None else learner.act([messages])
            interruption.response, pending = response, None
            acted = time.perf_counter()
            obs, reward, _, _, info = env.step(response)
            stepped = time.perf_counter()
            learned = learner.observe([Transition(messages, response, info["follow_up"], reward, info)])
            done = time.perf_counter()
            timings["act_s"] += acted - started
            timings["env_s"] += stepped - acted
            timings["observe_s"] += done - stepped
            logged = {k: v for k, v in learned.items() if not k.startswith("time/")}
            for key, value in logged.items():
                window[key].append(value)
            window["env/reward"].append(reward)
            folder.append(folder.interactions, {
                "interaction": t, "phase": info["phase"], "persona": info["persona"], "messages": messages,
                "response": response, "follow_up": info["follow_up"], "follow_up_kind": info["follow_up_kind"],
                "relevant": info["relevant"], "addressed": info["addressed"], "reward": reward,
                "satisfaction": info["satisfaction"], **logged,
            })
            if (t + 1) % config.checkpoint_every == 0 or stop.requested:
                checkpoint(t + 1)
            progress.update(task, advance=1, description=f"{scenario.name} phase {info['phase']}",
                            status=_status(rows[-1] if rows else {}, done - started) + llm.status())
            if stop.requested:
                stopped = True
                break
    if interruption.error is not None:  # back to the last consistent point: the interrupted step is redone
        t, env_state, n_rows, last_eval, saved_window = interruption.safe
        window.clear()
        window.update(saved_window)  # the redone evaluation summarises the same interactions
        del rows[n_rows:]
        folder.truncate(folder.metrics, n_rows)  # rows of an evaluation cut short are redone on resume
        if worker is not None and worker.pending is not None and worker.pending > last_eval:
            worker.discard()  # started after the consistent point: redone on resume, so not waited for or read
        checkpoint(t, env_state, pending=interruption.response)  # the learner's state is the one after acting
        llm.close()
        console.print(f"[red]stopped at interaction {t}:[/] {interruption.error}\ncheckpoint written "
                      f"(${llm.meter.spent_usd:.4f} spent). Continue with:\n  python -m sdpo_env.run "
                      f"resume={folder.path}"
                      + (" budget_usd=..." if isinstance(interruption.error, BudgetExceededError) else ""))
        return 2 if isinstance(interruption.error, ProviderRequestError) else 3
    if stopped:
        console.print(f"[yellow]stopped at interaction {t + 1}; checkpoint written.[/] Continue with:\n"
                      f"  python -m sdpo_env.run resume={folder.path}")
        return 130
    checkpoint(n)
    finish(config, scenario, folder, rows, timings, n, policy, console, cost=llm.summary())
    llm.close()
    return 0


def finish(config: RunConfig, scenario: Scenario, folder: RunFolder, rows: list[dict[str, Any]],
           timings: dict[str, float], n: int, policy: ChatPolicy, console: Console,
           cost: dict[str, Any] | None = None) -> None:
    """Writes the adapter, the plots and the summary, and prints the final table."""
    if policy.has_adapter:
        policy.save_adapter(folder.path / "adapter")
    phases = [{"start": p.start, "label": p.persona.name if p.added is None else f"+{p.added}"}
              for p in scenario.phases if p.start <= n]  # a persona change at the end was judged too
    branches = folder.read_branches()
    head = f"{scenario.name}: agent={config.agent['name']} seed={config.seed} model={config.policy.model}"
    branched = "".join(f"\nfrom {b['at']}: " + (" ".join(f"{k}={new}" for k, (_, new) in b["changed"].items())
                                                or "no change") for b in branches)  # a line per branch point
    plot_win_rate(rows, phases, folder.path / "winrate.png", head + branched, surprise_warning=SURPRISE_WARNING)
    plot_preferences(rows, phases, folder.path / "preferences.png", head + branched)
    interactions = folder.read_jsonl(folder.interactions)
    signal_split: dict[str, Any] = {}
    for kind in ("relevant", "unrelated"):
        values = [r[f"sdpo/advantage_abs_mean_{kind}"] for r in interactions
                  if r.get(f"sdpo/advantage_abs_mean_{kind}") is not None]
        if values:
            signal_split[f"advantage_abs_mean_{kind}"] = float(np.mean(values))
    signal_split["by_follow_up"] = signal_by_follow_up(interactions)
    phase_end, end_rows = {}, []
    for p in scenario.phases:
        at_end = [r for r in rows if r["phase"] == p.index and r["interaction"] == scenario.end_of(p, n)]
        if at_end:
            phase_end[str(p.index)] = {k: at_end[-1].get(k) for k in ("interaction", "persona", *HEADLINE)}
            end_rows.append(at_end[-1])
    total = timings.get("act_s", 0) + timings.get("env_s", 0) + timings.get("observe_s", 0)
    summary: dict[str, Any] = {
        "scenario": scenario.name, "agent": config.agent, "seed": config.seed, "model": config.policy.model,
        "interactions": n, "final": {k: final_row(rows).get(k) for k in HEADLINE} if rows else {},
        "phase_end": phase_end, "signal": signal_split,
        "warnings": [message for row in rows for message in degenerate(row)],
        "timings": {"interaction_s_mean": total / max(n, 1), "act_s": timings.get("act_s", 0),
                    "env_s": timings.get("env_s", 0), "observe_s": timings.get("observe_s", 0),
                    "evaluation_s": timings.get("evaluation_s", 0), "evaluations": timings.get("evaluations", 0),
                    "evaluation_wait_s": timings.get("evaluation_wait_s", 0),  # evaluation_s less the worker's overlap
                    "total_s": total + timings.get("evaluation_wait_s", 0)},
        "cost": cost or {},
        "branches": branches,
    }
    folder.write_summary(summary)
    table = Table(title=f"{head}: win rate vs frozen base ({len(rows)} evaluations){branched}")
    base_surprise = next((r["base_surprise"] for r in rows if r.get("base_surprise") is not None), None)
    if base_surprise is not None:
        table.caption = (f"surprise: the frozen base model's negative log-likelihood per token of the answers (nats); "
                         f"its own answers: {base_surprise:.2f}")
    for column in ("interaction", "phase", "win rate [95% CI]", "excl. ties", "coverage", "all prefs", "ceiling",
                   "oracle", "surprise"):
        table.add_column(column, justify="right")
    shown = [r for r in rows if r["interaction"] in {0, n} or r["interaction"] % (config.eval.every * 2) == 0
             or any(r["interaction"] == p.start for p in scenario.phases)]
    for r in shown:
        table.add_row(str(r["interaction"]), f"{r['phase']} {r['persona']}",
                      f"{_fmt(r.get('win_rate'))} [{_fmt(r.get('ci_low'))}, {_fmt(r.get('ci_high'))}]",
                      _fmt(r.get("win_rate_excl_ties")),
                      _fmt(r.get("coverage")), _fmt(r.get("sat/all")), _fmt(r.get("ceiling")),
                      _fmt(r.get("oracle/win_rate")), _fmt(r.get("surprise")))
    console.print(table)
    if any(k.startswith("sat/") and k != "sat/all" for r in end_rows for k in r):
        console.print(_preference_table(end_rows))
    console.print(f"run folder: {folder.path}  ({summary['timings']['total_s']:.0f} s; "
                  f"{summary['timings']['interaction_s_mean']:.3f} s per interaction)")


SIGNAL_KEYS = ("advantage_abs_mean", "advantage_sum_mean", "grad_norm")  # an SDPO update's metrics


def signal_by_follow_up(interactions: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    """Which follow-ups carry the learning signal: per phase and kind of follow-up (complaint, satisfied, ...), the
    kind's share of the phase's interactions and, over its updates, the mean |A_t| and summed advantage, the share
    of answers whose summed advantage is positive (reinforced as a whole), and the median gradient norm. Read from
    the ``interactions.jsonl`` rows whose SDPO update learned from that interaction's answer alone
    (``sdpo/answers`` 1); kinds without such rows (another learner, a batch of several answers) get the share
    alone."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for phase in sorted({r["phase"] for r in interactions}):
        rows = [r for r in interactions if r["phase"] == phase]
        kinds: dict[str, dict[str, float]] = {}
        for kind in sorted({r["follow_up_kind"] for r in rows}):
            these = [r for r in rows if r["follow_up_kind"] == kind]
            figures = {"share": len(these) / len(rows)}
            updates = [r for r in these if r.get("sdpo/answers") == 1 and all(f"sdpo/{k}" in r for k in SIGNAL_KEYS)]
            if updates:
                sums = np.array([r["sdpo/advantage_sum_mean"] for r in updates])
                figures |= {"advantage_abs_mean": float(np.mean([r["sdpo/advantage_abs_mean"] for r in updates])),
                            "advantage_sum_mean": float(sums.mean()),
                            "advantage_sum_positive": float(np.mean(sums > 0)),
                            "grad_norm_median": float(np.median([r["sdpo/grad_norm"] for r in updates]))}
            kinds[kind] = figures
        out[str(phase)] = kinds
    return out


def _preference_table(end_rows: list[dict[str, Any]]) -> Table:
    """Each preference's satisfaction at the end of each phase: the policy's share with its 95% interval, and the
    base's."""
    table = Table(title="each preference at the end of each phase (share of held-out answers)", box=box.SIMPLE,
                  pad_edge=False, collapse_padding=True)
    for column in ("after", "persona", "preference", "policy [95% CI]", "base"):  # after n interactions
        table.add_column(column, justify="left" if column in ("persona", "preference") else "right")
    for row in end_rows:
        for name in (k.removeprefix("sat/") for k in row if k.startswith("sat/") and k != "sat/all"):
            table.add_row(str(row["interaction"]), str(row["persona"]), name,
                          _fmt(row[f"sat/{name}"]) + interval_text(row, name), _fmt(row.get(f"base_sat/{name}")))
    return table


def _status(latest: dict[str, Any], step_s: float) -> str:
    return (f"win {_fmt(latest.get('win_rate'))} [{_fmt(latest.get('ci_low'))}, {_fmt(latest.get('ci_high'))}] "
            f"excl-ties {_fmt(latest.get('win_rate_excl_ties'))} | {step_s:.2f} s/step")


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"


if __name__ == "__main__":
    raise SystemExit(main())
