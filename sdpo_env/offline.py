"""``python -m sdpo_env.offline data=PATH [key=value ...]``: SDPO (or SFT) on logged conversations.

Examples::

    python -m sdpo_env.offline data=sample eval.persona=no_emojis              # the shipped sample, tiny model
    python -m sdpo_env.offline data=sample method=sft eval.persona=no_emojis   # the Table 4 control
    python -m sdpo_env.offline data=my_logs.jsonl policy.model=Qwen/Qwen3-4B policy.device=cuda train.lr=2e-6 \\
        train.lora=false train.batch_size=4 train.grad_accum=8            # the paper's offline recipe
    python -m sdpo_env.offline resume=runs/offline-x                           # continue a stopped run exactly

The off-policy surrogate (paper, Sec. 4.1): for each logged interaction (x, y, o) the same SDPO loss as online,
``-mean_t(A_t.detach() * log pi(y_t | x, y_<t))`` with ``A_t = log pi(y_t | x, o, y_<t) - log pi(y_t | x, y_<t)``,
on the logged y (written by another model), with no behaviour-policy correction. ``method=sft`` instead maximises
the likelihood of the logged y (the paper's Table 4 control). The file is streamed every epoch through a seeded
shuffle buffer, never loaded whole. The run folder gets ``config.yaml``, ``train.jsonl`` (one line per optimizer
step), ``metrics.jsonl`` (held-out win rate before and after, with ``eval.persona``), ``summary.json``,
``train.png``, ``checkpoint.pt`` and the adapter in peft format (``adapter/``; ``model/`` with ``train.lora=false``).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console

from sdpo_env.cli import command_main
from sdpo_env.config import COMMAND_LINE, PolicyConfig, merge, parse_overrides
from sdpo_env.errors import ConfigError, Problem
from sdpo_env.files import DATA_DIR
from sdpo_env.hindsight import DEFAULT_TEMPLATE, OFFLINE_TEMPLATE, hindsight_messages
from sdpo_env.logs import FORMATS, ON_BAD_LINE, Interaction, LogStats, read_logs, scan
from sdpo_env.policy import ChatPolicy, LoraSettings, Sampling
from sdpo_env.runfolder import RunFolder
from sdpo_env.schema import build, option, to_dict
from sdpo_env.sdpo import (
    AGGREGATIONS,
    aggregate,
    center_advantages,
    policy_gradient_loss,
    selective_log_softmax,
    token_advantages,
)

SHIPPED_LOGS = {"sample": DATA_DIR / "logs" / "sample.jsonl"}
TEMPLATES = {"offline": OFFLINE_TEMPLATE, "paper": DEFAULT_TEMPLATE}


@dataclass
class TrainConfig:
    """How the policy is trained on the logs."""

    epochs: int = option(2, "passes over the logs (paper: 2)", min=1)
    lr: float = option(3e-3, "peak AdamW learning rate; 3e-3 suits LoRA on the tiny model (1e-2, or 3e-3 with "
                       "grad_accum=1, collapsed it); paper, full fine-tuning of 4-8B models: 2e-6", gt=0.0)
    batch_size: int = option(8, "interaction tuples per forward pass", min=1)
    grad_accum: int = option(4, "forward passes per optimizer step (effective batch = batch_size * grad_accum)",
                             min=1)
    warmup: float = option(0.05, "share of the optimizer steps spent warming up, then cosine decay to 0",
                           min=0.0, max=1.0)
    weight_decay: float = option(0.0, "AdamW weight decay", min=0.0)
    grad_clip: float = option(1.0, "clip the gradient norm to this value; 0 disables", min=0.0)
    lora: bool = option(True, "train a LoRA adapter (true) or every weight (false: full fine-tuning)")
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling = alpha / r)", gt=0.0)
    lora_dropout: float = option(0.0, "LoRA dropout", min=0.0, max=1.0)
    lora_targets: str | list[str] = option("all-linear", "modules to adapt: all-linear or a list of names")
    hindsight_template: str = option("offline", "'offline' (the authors' wording for logged data), 'paper' "
                                     "(Table 1, the online default) or your own text containing {follow_up}",
                                     nonempty=True)
    center_advantages: bool = option(False, "subtract each sequence's mean advantage (method=sdpo)")
    aggregation: str = option("token_mean", "how token losses are averaged", choices=AGGREGATIONS)
    max_completion_tokens: int = option(256, "logged responses are cut to this many tokens", min=1)
    max_context_tokens: int = option(768, "tuples whose (hindsight) context is longer are skipped", min=1)
    shuffle_buffer: int = option(1024, "tuples held for shuffling while streaming; 1 = file order", min=1)
    max_tuples: int | None = option(None, "use only the first N tuples of the file (null = all)", min=1)

    def check(self) -> list[tuple[str, str]]:
        if self.hindsight_template not in TEMPLATES and "{follow_up}" not in self.hindsight_template:
            return [("hindsight_template", f"got {self.hindsight_template[:40]!r}; use 'offline', 'paper' or a "
                                           "text containing {follow_up}")]
        return []

    @property
    def template(self) -> str:
        return TEMPLATES.get(self.hindsight_template, self.hindsight_template)


@dataclass
class OfflineEvalConfig:
    """Optional win rate against the frozen base model on held-out prompts, before and after training."""

    persona: str | None = option(None, "persona to judge for (name or YAML path); null = no evaluation")
    prompts: str = option("eval", "held-out prompt pool: 'eval' or a .jsonl path", nonempty=True)
    n_prompts: int = option(64, "held-out prompts", min=1)
    samples_per_prompt: int = option(1, "answers per prompt on each side", min=1)
    judge: str = option("rules", "'rules' (offline) or a registered/dotted-path judge", nonempty=True)
    min_words: int = option(5, "rules judge: shortest valid answer in words", min=0)
    bootstrap: int = option(1000, "bootstrap resamples for the win-rate CI", min=10)


@dataclass
class OfflineConfig:
    """Everything one offline run needs; written resolved into the run folder as ``config.yaml``."""

    data: str = option(help="logged conversations: a .jsonl(.gz) path, or 'sample' (shipped)", nonempty=True)
    method: str = option("sdpo", "sdpo = the off-policy SDPO surrogate, sft = NLL on the logged responses",
                         choices=("sdpo", "sft"))
    format: str = option("auto", "line format of the logs", choices=FORMATS)
    history: int = option(5, "messages of history kept in each context (paper: 5)", min=1)
    on_bad_line: str = option("error", "error = stop at a malformed line, skip = count it and go on",
                              choices=ON_BAD_LINE)
    seed: int = option(0, "seeds the LoRA init, the shuffle and the evaluation", min=0)
    out_dir: str | None = option(None, "run folder; default runs/<time>-offline-<method>")
    resume: str | None = option(None, "resume the run in this folder")
    checkpoint_every: int = option(20, "save a resumable checkpoint every N optimizer steps", min=1)
    stop_after_steps: int | None = option(None, "stop after N optimizer steps as if interrupted (checkpoint "
                                          "written; continue with resume=)", min=1)
    policy: PolicyConfig = option(help="policy model (sampling settings apply to the evaluation)",
                                  factory=PolicyConfig)
    train: TrainConfig = option(help="training", factory=TrainConfig)
    eval: OfflineEvalConfig = option(help="held-out evaluation", factory=OfflineEvalConfig)

    @property
    def data_path(self) -> Path:
        return SHIPPED_LOGS.get(self.data, Path(self.data).expanduser())


def resolve(layers: Sequence[tuple[str, dict[str, Any]]]) -> OfflineConfig:
    """Builds the config from ``(source, data)`` layers, later layers winning; every problem reported at once.

    Raises:
        ConfigError: unknown keys (with did-you-mean), wrong types, out-of-range values, a missing data file.
    """
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, data in layers:
        merged = merge(merged, data)
        origin.update({k: source for k in data})

    def source_of(key: str) -> str:
        return origin.get(key.split(".")[0], "defaults")

    problems: list[Problem] = []
    config = build(OfflineConfig, merged, source=source_of, problems=problems)
    if config is not None and not problems and not config.data_path.is_file():
        problems.append(Problem(source_of("data"), "data", f"no such file {config.data!r}; give a .jsonl path or "
                                                           f"a shipped log: {', '.join(SHIPPED_LOGS)}"))
    if problems:
        raise ConfigError(problems)
    return config


def prepare(args: Sequence[str]) -> tuple[OfflineConfig, RunFolder, bool, LogStats]:
    """The configuration, the run folder and the data's counts; ``resume=FOLDER`` takes both from an existing run.

    The data file is scanned (streaming) before the run folder is created, so a bad line leaves nothing behind.
    """
    cli = parse_overrides(args)
    if "resume" in cli:
        folder = RunFolder(str(cli["resume"]))
        if not folder.config.is_file():
            raise ConfigError([Problem(COMMAND_LINE, "resume", f"{folder.path} has no config.yaml; is it a run "
                                                               "folder?")])
        extra = sorted(set(cli) - {"resume", "stop_after_steps"})
        if extra:
            raise ConfigError([Problem(COMMAND_LINE, k, "a resumed run keeps the settings in its config.yaml; "
                                                        "remove this override") for k in extra])
        saved = {k: v for k, v in folder.read_config().items() if k != "stop_after_steps"}
        config = resolve([(str(folder.config), saved), (COMMAND_LINE, {k: v for k, v in cli.items()
                                                                        if k != "resume"})])
        stats = data_stats(config)
        folder.claim("resume")  # the run may still be going in another process
        return config, folder, True, stats
    config = resolve([(COMMAND_LINE, cli)])
    stats = data_stats(config)
    folder = RunFolder(config.out_dir or f"runs/{datetime.now():%Y%m%d-%H%M%S}-offline-{config.method}")
    folder.claim("out_dir")  # a run started there that has no checkpoint yet would otherwise be overwritten
    if folder.checkpoint.is_file():
        folder.release()
        raise ConfigError([Problem(COMMAND_LINE, "out_dir", f"{folder.path} already holds a run; continue it with "
                                                            f"resume={folder.path} or choose another out_dir")])
    return config, folder, False, stats


# --- data ------------------------------------------------------------------------------------------------------


def shuffled(items: Iterator[Interaction], size: int, rng: np.random.Generator) -> Iterator[Interaction]:
    """A streaming shuffle: holds ``size`` items and emits a random one as each new item arrives."""
    buffer: list[Interaction] = []
    for item in items:
        buffer.append(item)
        if len(buffer) >= size:
            yield buffer.pop(int(rng.integers(len(buffer))))
    while buffer:
        yield buffer.pop(int(rng.integers(len(buffer))))


def micro_batches(config: OfflineConfig, epoch: int) -> Iterator[list[Interaction]]:
    """The epoch's micro-batches: the file streamed, capped at ``max_tuples``, shuffled with (seed, epoch)."""
    c = config.train
    stream: Iterator[Interaction] = read_logs(config.data_path, fmt=config.format, history=config.history,
                                              on_bad_line=config.on_bad_line)
    if c.max_tuples is not None:
        stream = islice(stream, c.max_tuples)
    order = shuffled(stream, c.shuffle_buffer, np.random.default_rng([config.seed, epoch]))
    while batch := list(islice(order, c.batch_size)):
        yield batch


# --- losses ----------------------------------------------------------------------------------------------------


def sft_loss(*, student_logprobs: torch.Tensor, mask: torch.Tensor, aggregation: str = "token_mean") -> torch.Tensor:
    """Negative log-likelihood of the logged completion: ``-mean_t log pi(y_t | x, y_<t)``; (B, T) -> scalar."""
    return aggregate(-student_logprobs, mask, aggregation)


class OfflineTrainer:
    """Computes one micro-batch's loss (SDPO surrogate or SFT) and steps the optimizer on accumulated gradients.

    Args:
        policy: The policy (with a LoRA adapter unless full fine-tuning).
        config: The run's configuration.
        total_steps: Optimizer steps of the whole run (for the cosine schedule).
    """

    def __init__(self, policy: ChatPolicy, config: OfflineConfig, total_steps: int):
        self.policy, self.config = policy, config
        c = config.train
        self.params = policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=c.lr, weight_decay=c.weight_decay)
        warmup = math.ceil(c.warmup * total_steps)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total_steps - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        self.skipped = 0

    def encode(self, batch: Sequence[Interaction]) -> tuple[list[Any], ...]:
        """Token ids of contexts, hindsight contexts and completions; tuples over the length limits are left out."""
        c, p = self.config.train, self.policy
        contexts, hindsight, completions = [], [], []
        for t in batch:
            x = p.encode(list(t.messages))
            h = p.encode(hindsight_messages(list(t.messages), t.follow_up, template=c.template))
            if max(len(x), len(h)) > c.max_context_tokens:
                self.skipped += 1
                continue
            contexts.append(x)
            hindsight.append(h)
            completions.append(p.encode_completion(t.response)[: c.max_completion_tokens])
        return contexts, hindsight, completions

    def backward(self, batch: Sequence[Interaction], scale: float) -> dict[str, float]:
        """Adds ``scale * loss`` of one micro-batch to the gradients; returns its metrics (empty if none fit)."""
        c = self.config.train
        contexts, hindsight, completions = self.encode(batch)
        if not contexts:
            return {}
        student_logits, targets, mask = self.policy.completion_logits(contexts, completions)  # (B, T, V)
        student_lp = selective_log_softmax(student_logits, targets)  # (B, T)
        del student_logits
        metrics: dict[str, float] = {"tokens": mask.sum().item()}
        if self.config.method == "sft":
            loss = sft_loss(student_logprobs=student_lp, mask=mask, aggregation=c.aggregation)
        else:
            with torch.no_grad():  # the teacher is the live policy under the hindsight context
                teacher_logits, _, _ = self.policy.completion_logits(hindsight, completions)  # (B, T, V)
                teacher_lp = selective_log_softmax(teacher_logits, targets)  # (B, T)
            advantages = token_advantages(teacher_logprobs=teacher_lp, student_logprobs=student_lp, mask=mask)
            n = mask.sum().clamp(min=1)
            metrics["advantage_abs_mean"] = (advantages.abs().sum() / n).item()
            metrics["advantage_mean"] = (advantages.sum() / n).item()
            if c.center_advantages:
                advantages = center_advantages(advantages, mask)
            loss = policy_gradient_loss(student_logprobs=student_lp, advantages=advantages, mask=mask,
                                        aggregation=c.aggregation)
        metrics["loss"] = loss.item()
        metrics["nll"] = (-(student_lp.detach() * mask).sum() / mask.sum().clamp(min=1)).item()
        if torch.isfinite(loss):
            (loss * scale).backward()
        return metrics

    def step(self) -> dict[str, float]:
        """Clips, steps the optimizer and the schedule; a non-finite gradient skips the update."""
        clip = self.config.train.grad_clip if self.config.train.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        lr = float(self.scheduler.get_last_lr()[0])
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return {"grad_norm": grad_norm, "lr": lr}

    def state_dict(self) -> dict[str, Any]:
        model = self.policy.adapter_state() if self.policy.has_adapter else {
            k: v.detach().clone() for k, v in self.policy.model.state_dict().items()}
        return {"model": model, "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "skipped": self.skipped, "rng": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.policy.has_adapter:
            self.policy.load_adapter_state(state["model"])
        else:
            self.policy.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.skipped = state["skipped"]
        torch.set_rng_state(state["rng"])


def plan(stats: LogStats, config: OfflineConfig) -> tuple[int, int]:
    """``(micro-batches per epoch, optimizer steps per epoch)`` for the tuples a scan found."""
    c = config.train
    n = min(stats.tuples, c.max_tuples or stats.tuples)
    micro = math.ceil(n / c.batch_size)
    return micro, math.ceil(micro / c.grad_accum)


def main(argv: Sequence[str] | None = None) -> int:
    """Trains (or resumes) from command-line ``key=value`` arguments; returns the exit code."""
    def train(args: list[str], console: Console) -> int:
        from sdpo_env.offline_run import run  # the loop; kept apart from the config and the math above

        config, folder, resuming, stats = prepare(args)
        try:
            return run(config, folder, resuming, stats, console)
        finally:
            folder.release()

    # Ctrl-C inside the training loop checkpoints (StopRequest); elsewhere (loading, scanning the file) it ends here.
    return command_main(__doc__, argv, train, interrupted="interrupted outside the training loop (no checkpoint "
                        "written now); continue with resume=<out folder> if it already holds a checkpoint, "
                        "otherwise start again")


def policy_for(config: OfflineConfig) -> ChatPolicy:
    """Loads the policy and, unless full fine-tuning, adds a seeded LoRA adapter."""
    p, c = config.policy, config.train
    sampling = Sampling(temperature=p.temperature, top_p=p.top_p, max_new_tokens=p.max_new_tokens)
    policy = ChatPolicy.load(p.model, device=p.device, dtype=p.dtype, sampling=sampling)
    if c.lora:
        policy.add_lora(LoraSettings(r=c.lora_r, alpha=c.lora_alpha, dropout=c.lora_dropout,
                                     target_modules=c.lora_targets), seed=config.seed)
    return policy


def config_dict(config: OfflineConfig) -> dict[str, Any]:
    return to_dict(config)  # type: ignore[no-any-return]


def data_stats(config: OfflineConfig) -> LogStats:
    """One streaming pass: counts, and bad lines reported before any model loads."""
    return scan(config.data_path, fmt=config.format, history=config.history, on_bad_line=config.on_bad_line)


if __name__ == "__main__":
    raise SystemExit(main())
