"""``python -m sdpo_env.bench_sampling``: the lean sampling loop against transformers' ``generate``.

Sampling is most of a run's time on the tiny model (an interaction samples one answer; an evaluation samples 64).
For each model and batch size this samples the same held-out prompts with the same seeds both ways, interleaved
round by round so machine noise hits both alike, and prints milliseconds per sampling step (one token for each
unfinished answer), the ratio generate / lean (above 1: the lean loop is faster), and whether every round gave the
same tokens both ways.

Models: ``tiny`` (the shipped default) and ``qwen2-cpu``, a randomly initialised Qwen2 of a real model's shape
scaled to fit a CPU (``python -m sdpo_env.bench_step``'s shapes; a model folder also works).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import time
from collections.abc import Iterator

import torch
from rich.console import Console
from rich.table import Table

from sdpo_env import decoding
from sdpo_env.bench_step import SHAPES, random_model_folder
from sdpo_env.policy import ChatPolicy, LoraSettings, Sampling
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny import resolve_model_path


@contextlib.contextmanager
def hf_generate() -> Iterator[None]:
    """Within the block every sample goes through transformers' ``generate``."""
    before = os.environ.get("SDPO_ENV_HF_GENERATE")
    os.environ["SDPO_ENV_HF_GENERATE"] = "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ["SDPO_ENV_HF_GENERATE"]
        else:
            os.environ["SDPO_ENV_HF_GENERATE"] = before


def load(folder: str, *, max_new_tokens: int) -> ChatPolicy:
    """The model with a LoRA adapter, as a run samples from it; exits if the lean loop does not mirror it."""
    sampling = Sampling(max_new_tokens=max_new_tokens)
    policy = ChatPolicy.load(folder, device="cpu", lora=LoraSettings(), sampling=sampling)
    if not decoding.supports(policy.model, temperature=1.0, top_k=0, top_p=1.0):
        raise SystemExit(f"{folder}: the lean loop does not mirror this model; generate would run both times")
    return policy


def bench(policy: ChatPolicy, *, batch_size: int, rounds: int) -> dict[str, float]:
    """Per-step times of both ways (median over rounds), their ratio, and the share of rounds with equal tokens."""
    conversations = [list(p.messages) for p in load_prompts("eval")[:batch_size]]
    per_step: dict[str, list[float]] = {"lean": [], "generate": []}
    same = 0
    for r in range(rounds):
        ids = {}
        for name in (("lean", "generate") if r % 2 == 0 else ("generate", "lean")):
            with hf_generate() if name == "generate" else contextlib.nullcontext():
                started = time.perf_counter()
                samples = policy.generate(conversations, seed=r)
                elapsed = time.perf_counter() - started
            ids[name] = [s.ids for s in samples]
            per_step[name].append(elapsed / max(1, max(len(s.ids) for s in samples)))  # per sampling step
        same += ids["lean"] == ids["generate"]
    lean, generate = (statistics.median(per_step[k]) for k in ("lean", "generate"))
    return {"lean_ms": 1000 * lean, "generate_ms": 1000 * generate, "ratio": generate / lean,
            "same_tokens": same / rounds, "parameters_m": sum(p.numel() for p in policy.model.parameters()) / 1e6}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "qwen2-cpu"],
                        help="tiny, a shape name (" + ", ".join(SHAPES) + ") or a model folder")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64],
                        help="1 is an interaction's answer, 64 an evaluation's")
    parser.add_argument("--max-new-tokens", type=int, default=192)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    console = Console(width=160)
    table = Table(title=f"sampling, ms per step (median of {args.rounds} interleaved rounds, "
                        f"{torch.get_num_threads()} threads, up to {args.max_new_tokens} tokens)")
    for column in ("model", "params (M)", "batch", "generate ms", "lean ms", "generate / lean", "same tokens"):
        table.add_column(column, justify="right")
    for name in args.models:
        folder = random_model_folder(name, resolve_model_path("tiny")) if name in SHAPES else name
        try:
            policy = load(folder, max_new_tokens=args.max_new_tokens)  # once: every batch size samples from it
            for size in args.batch_sizes:
                r = bench(policy, batch_size=size, rounds=args.rounds)
                table.add_row(name, f"{r['parameters_m']:.1f}", str(size), f"{r['generate_ms']:.2f}",
                              f"{r['lean_ms']:.2f}", f"{r['ratio']:.2f}", f"{r['same_tokens']:.0%}")
                console.print(name, size, {k: round(v, 3) for k, v in r.items()})
        finally:
            if name in SHAPES:
                shutil.rmtree(folder, ignore_errors=True)
    console.print(table)


if __name__ == "__main__":
    main()
