"""The offline training loop (``python -m sdpo_env.offline``): reads top to bottom, checkpoints, resumes exactly.

A checkpoint is taken only between optimizer steps and records (epoch, micro-batches consumed in the epoch, optimizer
steps, lines of ``train.jsonl``); a resume re-streams the epoch with the same seeded shuffle, skips the consumed
micro-batches and continues, so it ends with the same weights and the same loss log as a run that never stopped.
"""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from sdpo_env.cli import StopRequest
from sdpo_env.judges import JUDGES
from sdpo_env.judges.evaluate import WinRateEvaluator
from sdpo_env.logs import LogStats
from sdpo_env.offline import OfflineConfig, OfflineTrainer, config_dict, micro_batches, plan, policy_for
from sdpo_env.personas import load_persona
from sdpo_env.prompts import load_prompts
from sdpo_env.runfolder import RunFolder

EVAL_KEYS = ("win_rate", "ci_low", "ci_high", "win_rate_excl_ties", "coverage", "sat/all", "valid_rate",
             "mean_words")


def run(config: OfflineConfig, folder: RunFolder, resuming: bool, stats: LogStats, console: Console) -> int:
    """Trains on the logs in ``config.data`` (``stats``: their counts); returns the exit code (130 when stopped)."""
    started = time.perf_counter()
    console.print(f"{config.data_path}: {stats.summary()}")
    if stats.tuples == 0:
        console.print("[red]error:[/] no interaction tuples to train on (every conversation lacks a follow-up)")
        return 2
    micro_per_epoch, steps_per_epoch = plan(stats, config)
    total = steps_per_epoch * config.train.epochs
    policy = policy_for(config)
    trainer = OfflineTrainer(policy, config, total)
    persona = load_persona(config.eval.persona) if config.eval.persona else None
    evaluator = None
    if persona is not None:
        judge = JUDGES.get(config.eval.judge)(min_words=config.eval.min_words)
        prompts = load_prompts(config.eval.prompts)[: config.eval.n_prompts]
        evaluator = WinRateEvaluator(policy, judge, prompts, samples_per_prompt=config.eval.samples_per_prompt,
                                     seed=config.seed, bootstrap=config.eval.bootstrap, surprise=config.train.lora)
    train_log = folder.path / "train.jsonl"
    state = folder.load_checkpoint() if resuming else None
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        if evaluator is not None:
            evaluator.load_state_dict(state["evaluator"])
        folder.truncate(train_log, state["step"])
        folder.truncate(folder.metrics, state["n_metric_lines"])
        console.print(f"resuming {folder.path} at optimizer step {state['step']} of {total}")
    else:
        folder.write_config(config_dict(config))
        folder.truncate(train_log, 0)
        folder.truncate(folder.metrics, 0)
    step = state["step"] if state else 0
    epoch, position = (state["epoch"], state["position"]) if state else (0, 0)
    timings: dict[str, float] = defaultdict(float, state["timings"] if state else {})
    rows = folder.read_jsonl(folder.metrics)

    def evaluate(label: str) -> None:
        assert evaluator is not None and persona is not None
        t0 = time.perf_counter()
        evaluator.base_responses()  # the frozen base's answers, generated once (before any weight changes)
        metrics, _ = evaluator.evaluate(lambda c, s: [x.text for x in policy.generate(c, seed=s)], persona,
                                        seed=config.seed * 100_003 + 1)
        row = {"when": label, "step": step, "persona": persona.name, **metrics}
        folder.append(folder.metrics, row)
        rows.append(row)
        if metrics["valid_rate"] < 0.5:
            console.print(f"[yellow]warning:[/] policy collapse {label} training: only {metrics['valid_rate']:.0%} of "
                          "held-out answers are valid (too short or looping); lower train.lr")
        timings["evaluation_s"] += time.perf_counter() - t0

    def checkpoint() -> None:
        folder.save_checkpoint({"step": step, "epoch": epoch, "position": position, "trainer": trainer.state_dict(),
                                "evaluator": evaluator.state_dict() if evaluator else None,
                                "n_metric_lines": len(rows), "timings": dict(timings)})

    if evaluator is not None and not any(r["when"] == "before" for r in rows):
        evaluate("before")
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
               TextColumn("{task.fields[status]}"))
    stop_at = config.stop_after_steps
    stopped = False
    with StopRequest() as stop, Progress(*columns, console=console) as progress:
        label = f"{config.method} epoch {min(epoch + 1, config.train.epochs)}"
        task = progress.add_task(label, total=total, completed=step, status="")
        while epoch < config.train.epochs and not stopped:
            batches = micro_batches(config, epoch)
            for _ in range(position):  # already trained on before the checkpoint
                next(batches)
            while position < micro_per_epoch:
                t0 = time.perf_counter()
                group = min(config.train.grad_accum, micro_per_epoch - position)
                window: dict[str, list[float]] = defaultdict(list)
                for _ in range(group):
                    metrics = trainer.backward(next(batches), 1.0 / group)
                    for key, value in metrics.items():
                        window[key].append(value)
                    position += 1
                row: dict[str, Any] = {"step": step + 1, "epoch": epoch + (position / micro_per_epoch),
                                       **trainer.step()}
                row.update({k: float(np.mean(v)) for k, v in window.items() if k != "tokens"})
                row["tokens"] = float(np.sum(window.get("tokens", [0.0])))
                step += 1
                timings["train_s"] += time.perf_counter() - t0
                folder.append(train_log, row)
                if row.get("advantage_abs_mean", 1.0) < 1e-4:
                    console.print(f"[yellow]warning:[/] no learning signal at step {step}: mean |A_t| "
                                  f"{row['advantage_abs_mean']:.1e} (the follow-ups do not change the log-probs)")
                progress.update(task, completed=step, description=f"{config.method} epoch {epoch + 1}",
                                status=_status(row))
                epoch_done = position == micro_per_epoch
                if epoch_done:
                    epoch, position = epoch + 1, 0
                if step % config.checkpoint_every == 0 or stop.requested or step == stop_at:
                    checkpoint()
                if stop.requested or step == stop_at:
                    stopped = True
                if stopped or epoch_done:
                    break
    if stopped and step < total:
        console.print(f"[yellow]stopped at optimizer step {step} of {total}; checkpoint written.[/] Continue with:\n"
                      f"  python -m sdpo_env.offline resume={folder.path}")
        return 130
    if evaluator is not None and not any(r["when"] == "after" for r in rows):
        evaluate("after")
    checkpoint()
    finish(config, folder, stats, rows, timings, time.perf_counter() - started, trainer, console)
    return 0


def finish(config: OfflineConfig, folder: RunFolder, stats: LogStats, rows: list[dict[str, Any]],
           timings: dict[str, float], wall_s: float, trainer: OfflineTrainer, console: Console) -> None:
    """Saves the weights (peft adapter, or the full model), the loss plot and the summary; prints the table."""
    policy = trainer.policy
    if policy.has_adapter:
        policy.save_adapter(folder.path / "adapter")
    else:
        policy.model.save_pretrained(str(folder.path / "model"))
        policy.tokenizer.save_pretrained(str(folder.path / "model"))
    steps = folder.read_jsonl(folder.path / "train.jsonl")
    _plot(steps, folder, f"{config.method} on {config.data_path.name} ({config.policy.model})")
    summary = {
        "method": config.method, "data": str(config.data_path), "model": config.policy.model,
        "data_counts": stats.to_dict(), "skipped_too_long": trainer.skipped, "optimizer_steps": len(steps),
        "final_loss": steps[-1].get("loss") if steps else None,
        "evaluation": {r["when"]: {k: r.get(k) for k in EVAL_KEYS} for r in rows},
        "timings": {"train_s": timings.get("train_s", 0.0), "evaluation_s": timings.get("evaluation_s", 0.0),
                    "this_session_wall_s": wall_s},
    }
    folder.write_summary(summary)
    if rows:
        table = Table(title=f"win rate vs frozen base, persona {rows[-1]['persona']} ({config.method})")
        for column in ("when", "win rate [95% CI]", "excl. ties", "coverage", "all prefs", "words"):
            table.add_column(column, justify="right")
        for r in rows:
            table.add_row(r["when"], f"{r['win_rate']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}]",
                          _fmt(r.get("win_rate_excl_ties")), _fmt(r.get("coverage")), _fmt(r.get("sat/all")),
                          _fmt(r.get("mean_words")))
        console.print(table)
    console.print(f"run folder: {folder.path}  ({timings.get('train_s', 0):.0f} s training, "
                  f"{timings.get('evaluation_s', 0):.0f} s evaluation)")


def _plot(steps: list[dict[str, Any]], folder: RunFolder, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in ("loss", "nll", "advantage_abs_mean") if any(k in s for s in steps)]
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        ax.plot([s["step"] for s in steps if key in s], [s[key] for s in steps if key in s])
        ax.set_xlabel("optimizer step")
        ax.set_title(key, fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(folder.path / "train.png", dpi=100)
    plt.close(fig)


def _status(row: dict[str, Any]) -> str:
    signal = f" |A| {row['advantage_abs_mean']:.3f}" if "advantage_abs_mean" in row else ""
    return f"loss {row.get('loss', float('nan')):.4f}{signal} lr {row['lr']:.1e}"


def _fmt(value: Any) -> str:
    return "-" if value is None or value != value else f"{value:.2f}"
