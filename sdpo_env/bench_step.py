"""``python -m sdpo_env.bench_step``: what one SDPO update costs, and how close it is to the floor.

Prints, for each model, a per-update time breakdown (generation, teacher forward, student forward/backward and
optimizer step) and two ratios measured in the same run, variants interleaved round by round so machine noise hits
them alike:

- SDPO update / floor, where the floor is one no-grad teacher forward + one student forward/backward on the same
  batch (the least any hindsight-distillation update can do);
- SDPO update / three-forward structure (x no-grad, x+o no-grad, x with grad, then the step), as in the authors'
  code.

Models: ``tiny`` (the shipped default) and ``qwen2-cpu``, a randomly initialised Qwen2 of a real model's shape
scaled to fit a CPU (``--shape`` picks others; ``--device cuda`` for a GPU). Peak memory per variant is reported on
CUDA; on CPU the process's peak resident memory is printed once.
"""

from __future__ import annotations

import argparse
import functools
import resource
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from agents.base import Transition
from agents.sdpo import SDPOLearner, SDPOPaperConfig
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.policy import ChatPolicy, Sampling, pick_device
from sdpo_env.prompts import load_prompts
from sdpo_env.sdpo import selective_log_softmax
from sdpo_env.tiny import resolve_model_path

# Random models of real architectures' shapes. qwen2-cpu keeps Qwen2.5-0.5B's layout (grouped-query attention,
# SwiGLU MLP 5.4x wide, tied embeddings) at under half its width, a third of its depth and a fifth of its
# vocabulary, so it runs on a laptop CPU.
SHAPES: dict[str, dict[str, Any]] = {
    "qwen2-cpu": dict(hidden_size=384, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=2, vocab_size=32_000),
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151_936),
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151_936),
}


def random_model_folder(shape: str, tokenizer_from: str, *, device: str = "cpu") -> str:
    """Writes a randomly initialised Qwen2 of ``shape`` with the tiny model's tokenizer; returns the folder.

    The weights are drawn on ``device`` (a GPU draws a 1.5B model in a second, a CPU in a minute).
    """
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = Path(tempfile.mkdtemp(prefix=f"sdpo-bench-{shape}-"))
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_from)
    config = Qwen2Config(**SHAPES[shape], tie_word_embeddings=True, max_position_embeddings=2048,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(pick_device(device)):
        model = Qwen2ForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def batch_of(policy: ChatPolicy, size: int, completion_tokens: int) -> list[Transition]:
    """Held-out prompts with fixed-length completions and a relevant follow-up."""
    prompts = load_prompts("eval")[:size]
    text = "Water it when the top of the soil feels dry, and give it plenty of light. " * 40
    ids = policy.tokenizer(text, add_special_tokens=False)["input_ids"][:completion_tokens]
    response = str(policy.tokenizer.decode(ids))
    return [Transition(messages=list(p.messages), response=response, follow_up="Too long, keep it short.",
                       info={"relevant": True}) for p in prompts]


def _encode(policy: ChatPolicy, learner: SDPOLearner, batch: list[Transition]) -> tuple[list, list, list]:
    """What every variant must do first (the SDPO update does it too): render and tokenise both contexts."""
    contexts = [policy.encode(t.messages) for t in batch]
    teacher = [policy.encode(hindsight_messages(t.messages, t.follow_up)) for t in batch]
    return contexts, teacher, [learner._completion_ids(t.response) for t in batch]


def _floor(policy: ChatPolicy, learner: SDPOLearner, batch: list[Transition]) -> Callable[[], None]:
    def run() -> None:
        contexts, teacher, completions = _encode(policy, learner, batch)
        with torch.no_grad():
            policy.completion_logits(teacher, completions)
        logits, targets, mask = policy.completion_logits(contexts, completions)
        (selective_log_softmax(logits, targets) * mask).sum().backward()
        learner.optimizer.zero_grad(set_to_none=True)

    return run


def _three_forward(policy: ChatPolicy, learner: SDPOLearner, batch: list[Transition]) -> Callable[[], None]:
    def run() -> None:
        contexts, teacher, completions = _encode(policy, learner, batch)
        with torch.no_grad():
            old, targets, mask = policy.completion_logits(contexts, completions)
            old_lp = selective_log_softmax(old, targets)
            hind, _, _ = policy.completion_logits(teacher, completions)
            advantages = (selective_log_softmax(hind, targets) - old_lp) * mask
        logits, _, _ = policy.completion_logits(contexts, completions)
        loss = -(advantages * selective_log_softmax(logits, targets) * mask).sum() / mask.sum()
        loss.backward()
        learner.optimizer.step()
        learner.optimizer.zero_grad(set_to_none=True)

    return run


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(model: str, *, batch_size: int, completion_tokens: int, rounds: int, device: str,
          dtype: str = "auto") -> dict[str, float]:
    """Times the variants on ``model``; returns median seconds per variant and the ratios."""
    policy = ChatPolicy.load(model, device=device, dtype=dtype, sampling=Sampling(max_new_tokens=completion_tokens))
    # the sampled-token loss and AdamW (agent=sdpo_paper), as the README's figures were measured; agent=sdpo's exact
    # gradient needs the same two forwards and one backward
    learner = SDPOLearner(policy, SDPOPaperConfig(diagnostics_every=0), seed=0)
    batch = batch_of(policy, batch_size, completion_tokens)
    variants: dict[str, Callable[[], object]] = {
        "sdpo_update": lambda: learner.update(batch), "floor": _floor(policy, learner, batch),
                "three_forward": _three_forward(policy, learner, batch)}
    dev = policy.device
    times: dict[str, list[float]] = {k: [] for k in variants}
    peaks: dict[str, float] = {}
    parts: dict[str, list[float]] = {"teacher": [], "student_and_step": []}
    generation: list[float] = []
    conversations = [t.messages for t in batch]
    for name, fn in variants.items():  # warm-up, and peak memory per variant on CUDA
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        fn()
        if dev.type == "cuda":
            peaks[name] = torch.cuda.max_memory_allocated() / 2**20
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for name in order:
            times[name].append(_timed(variants[name], dev))
        metrics = learner.update(batch)
        parts["teacher"].append(metrics["time/teacher_s"])
        parts["student_and_step"].append(metrics["time/student_and_step_s"])
        generation.append(_timed(functools.partial(policy.generate, conversations, seed=r), dev))
    med = {k: statistics.median(v) for k, v in times.items()}
    result = {f"{k}_s": v for k, v in med.items()}
    result.update({
        "generation_s": statistics.median(generation),
        "teacher_forward_s": statistics.median(parts["teacher"]),
        "student_fwd_bwd_and_step_s": statistics.median(parts["student_and_step"]),
        "ratio_vs_floor": med["sdpo_update"] / med["floor"],
        "ratio_vs_three_forward": med["sdpo_update"] / med["three_forward"],
        "parameters_m": sum(p.numel() for p in policy.model.parameters()) / 1e6,
    })
    result.update({f"peak_mib_{k}": v for k, v in peaks.items()})
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "qwen2-cpu"],
                        help="tiny, a shape name (" + ", ".join(SHAPES) + ") or a model folder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--completion-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="auto", help="auto (bfloat16 on CUDA, else float32), float32, bfloat16")
    args = parser.parse_args(argv)
    console = Console(width=200)
    table = Table(title=f"one SDPO update: batch {args.batch_size} x {args.completion_tokens} completion tokens, "
                        f"median of {args.rounds} interleaved rounds ({args.device}, {args.dtype})")
    columns = ("model", "params (M)", "generation s", "teacher fwd s", "student fwd/bwd + step s", "update s",
               "floor s", "3-forward s", "update / floor", "update / 3-forward")
    for column in columns:
        table.add_column(column, justify="right")
    for name in args.models:
        folder = random_model_folder(name, resolve_model_path("tiny"), device=args.device) if name in SHAPES else name
        try:
            r = bench(folder, batch_size=args.batch_size, completion_tokens=args.completion_tokens,
                      rounds=args.rounds, device=args.device, dtype=args.dtype)
        finally:
            if name in SHAPES:  # a random model's weights are worth nothing afterwards (6 GB for the 1.5B shape)
                shutil.rmtree(folder, ignore_errors=True)
        table.add_row(name, f"{r['parameters_m']:.1f}", f"{r['generation_s']:.3f}", f"{r['teacher_forward_s']:.4f}",
                      f"{r['student_fwd_bwd_and_step_s']:.4f}", f"{r['sdpo_update_s']:.4f}", f"{r['floor_s']:.4f}",
                      f"{r['three_forward_s']:.4f}", f"{r['ratio_vs_floor']:.3f}", f"{r['ratio_vs_three_forward']:.3f}")
        console.print(name, {k: round(v, 4) for k, v in r.items()})  # every figure now, in case a later model fails
    console.print(table)
    if args.device == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        console.print(f"peak resident memory of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
