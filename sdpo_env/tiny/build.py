"""Builds the tiny model from scratch: corpus, tokenizer, weights.

    python -m sdpo_env.tiny.build                 # the shipped build stage, into sdpo_env/tiny/checkpoint
    python -m sdpo_env.tiny.build --out /tmp/tiny --seed 1
    python -m sdpo_env.tiny.build --mini --out /tmp/mini   # a miniature version in seconds (tests)
    python -m sdpo_env.tiny.build --out /tmp/tiny --seed 1 --resume   # continue it after Ctrl-C or a crash

Training saves its state in ``<out>/train_state.pt`` every ``--save-every`` seconds and on Ctrl-C or SIGTERM;
``--resume`` (with the command the build was started with) continues it and ends with the same weights as a build
that never stopped. ``--stop-after-steps N`` saves and stops after N steps, to split a build over several sessions.

Deterministic from its seed on a given device (the corpus is identical everywhere; float arithmetic differs
slightly between CPU and GPU). The shipped checkpoint is this build refined twice by ``sdpo_env.tiny.refine``
(its ``build_info.json`` records every stage).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GenerationConfig

from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.corpus import corpus
from sdpo_env.tiny.train import (
    MINI,
    STATE_FILE,
    ModelSize,
    Saving,
    TrainConfig,
    add_resume_options,
    boundary_token_ids,
    build_model,
    build_tokenizer,
    check_resume,
    encode,
    run_resumable,
    train,
    wrap_tokenizer,
)

MAX_NEW_TOKENS = 192  # the policy's default; every training answer must fit
CHUNK = 2000


@dataclass(frozen=True)
class BuildConfig:
    """What to build."""

    n_examples: int = 120_000
    seed: int = 0
    size: ModelSize = field(default_factory=ModelSize)
    train: TrainConfig = field(default_factory=TrainConfig)


MINI_BUILD = BuildConfig(n_examples=600, size=MINI, train=TrainConfig(steps=20, batch_size=16, warmup=5))


def _chunk(args: tuple[int, int, int]) -> list:
    n, seed, start = args
    return corpus(n, seed, start=start)


def make_corpus(n: int, seed: int, workers: int) -> list:
    """``n`` examples for ``seed``, generated in fixed chunks so the result does not depend on ``workers``."""
    jobs = [(min(CHUNK, n - start), seed, start) for start in range(0, n, CHUNK)]
    if workers <= 1:
        return [ex for job in jobs for ex in _chunk(job)]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return [ex for part in pool.map(_chunk, jobs) for ex in part]


def build(cfg: BuildConfig, out: Path, *, device: str | None = None, workers: int | None = None,
          resume: bool = False, stop_after_steps: int | None = None, save_every_s: float = 300.0) -> dict:
    """Builds and saves the model into ``out``; returns what happened (also written to ``out/build_info.json``).

    Training saves its state in ``out/train_state.pt`` (see :class:`sdpo_env.tiny.train.Saving`); ``resume``
    continues from it. Raises ``ResumeRefused`` before any work when the folder holds an unfinished build and
    ``resume`` is off, or ``resume`` does not fit what is there; ``TrainingStopped`` when training stops early.
    """
    started = time.time()
    saving = Saving(out / STATE_FILE, {"build": asdict(cfg)}, every_s=save_every_s,
                    stop_after_steps=stop_after_steps)
    saved = check_resume(saving, resume)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    workers = workers if workers is not None else max(1, min(16, multiprocessing.cpu_count()))
    chats = make_corpus(cfg.n_examples, cfg.seed, workers if cfg.n_examples > CHUNK else 1)
    t_corpus = time.time() - started
    print(f"corpus: {len(chats)} chats in {t_corpus:.0f} s", flush=True)
    if saved is None:
        texts = [m["content"] for chat in chats[:20_000] for m in chat]
        tokenizer = build_tokenizer(texts, cfg.size.vocab_size)
    else:  # the very tokenizer the saved weights were trained with
        tokenizer = wrap_tokenizer(Tokenizer.from_str(saved["carry"]["tokenizer"]))
    saving = replace(saving, carry={"tokenizer": tokenizer.backend_tokenizer.to_str()})
    encoded = encode(tokenizer, chats)
    kept = [(ids, n) for ids, n in encoded if len(ids) - n <= MAX_NEW_TOKENS]
    answer_tokens = sorted(len(ids) - n for ids, n in encoded)
    print(f"tokenizer: vocab {len(tokenizer)}; answer tokens median {answer_tokens[len(answer_tokens) // 2]}, "
          f"max {answer_tokens[-1]}; {len(encoded) - len(kept)} chats over {MAX_NEW_TOKENS} tokens dropped", flush=True)
    model = build_model(tokenizer, cfg.size, cfg.seed)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: Llama, {n_params / 1e6:.2f}M parameters; training on {dev}", flush=True)
    t0 = time.time()
    out.mkdir(parents=True, exist_ok=True)
    loss = train(model, kept, tokenizer.pad_token_id, cfg.train, seed=cfg.seed, device=dev,
                 log=lambda line: print(line, flush=True), boundaries=frozenset(boundary_token_ids(tokenizer)),
                 eos_id=tokenizer.eos_token_id, saving=saving)
    t_train = time.time() - t0
    first = saved["step"] if saved else 0
    model.to("cpu").to(torch.float32)  # type: ignore[arg-type]  # transformers types .to() as a model decorator
    model.generation_config = GenerationConfig(
        do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=MAX_NEW_TOKENS,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=model.config.bos_token_id,
    )
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    info = {"seed": cfg.seed, "n_examples": len(chats), "n_trained_on": len(kept), "parameters": n_params,
            "final_loss": round(loss, 4), "device": str(dev) if dev.type == "cpu" else torch.cuda.get_device_name(),
            "corpus_s": round(t_corpus, 1), "train_s": round(t_train, 1),
            "train_s_per_step": round(t_train / (cfg.train.steps - first), 4),
            "total_s": round(time.time() - started, 1), "size": asdict(cfg.size), "train": asdict(cfg.train)}
    if saved:
        info["resumed_at_step"] = first  # the timings are this last session's
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    saving.path.unlink(missing_ok=True)  # the model is saved: nothing left to resume
    print(f"done: final loss {loss:.4f}, {info['total_s']:.0f} s in all; saved to {out}", flush=True)
    return info


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=TINY_DIR, help="output folder (default: the shipped checkpoint)")
    parser.add_argument("--seed", type=int, default=0, help="seed for corpus, initialisation and batches")
    parser.add_argument("--mini", action="store_true", help="a miniature build in seconds (for tests)")
    parser.add_argument("--steps", type=int, default=None, help="override the number of training steps")
    parser.add_argument("--examples", type=int, default=None, help="override the corpus size")
    parser.add_argument("--hidden", type=int, default=None, help="override the hidden size")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument("--heads", type=int, default=None, help="override the number of attention heads")
    parser.add_argument("--mlp", type=int, default=None, help="override the MLP width")
    parser.add_argument("--first-token-weight", type=float, default=None, help="override the first-token weight")
    parser.add_argument("--decision-weight", type=float, default=None,
                        help="override the loss weight of tokens after a line or sentence boundary and of EOS")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--workers", type=int, default=None, help="processes generating the corpus")
    add_resume_options(parser)
    args = parser.parse_args(argv)
    cfg = MINI_BUILD if args.mini else BuildConfig()
    train_over = {"steps": args.steps, "first_token_weight": args.first_token_weight,
                  "decision_weight": args.decision_weight}
    size_over = {"hidden_size": args.hidden, "num_hidden_layers": args.layers, "num_attention_heads": args.heads,
                 "intermediate_size": args.mlp}
    train_cfg = replace(cfg.train, **{k: v for k, v in train_over.items() if v is not None})
    size = replace(cfg.size, **{k: v for k, v in size_over.items() if v is not None})
    cfg = BuildConfig(n_examples=args.examples or cfg.n_examples, seed=args.seed, size=size, train=train_cfg)
    return run_resumable(parser, lambda: build(cfg, args.out, device=args.device, workers=args.workers,
                                               resume=args.resume, stop_after_steps=args.stop_after_steps,
                                               save_every_s=args.save_every))


if __name__ == "__main__":
    main()
