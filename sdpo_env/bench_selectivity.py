"""``python -m sdpo_env.bench_selectivity``: does one SDPO update move the policy less on an unrelated follow-up?

Pairs of transitions share a training prompt and the policy's sampled answer and differ only in the follow-up: a
complaint about a persona preference the answer violates, or an unrelated message from the personas' pool. Each side
gets one update from the same learner state, and the tool measures how far the policy moved: KL(before || after)
over the full vocabulary, averaged over the tokens of held-out answers, and the part of that move the follow-up caused
(KL to the policy after an optimizer-only step: with AdamW, momentum moves the policy whatever the follow-up). It
does so from a fresh optimizer and again after ``--warm`` relevant updates (the state inside a run), and prints each
side's mean |A_t| and gradient norm. KLs are means over pairs; the headline is the median over pairs of the ratio
relevant / unrelated of the part the follow-up caused.

    python -m sdpo_env.bench_selectivity                    # the shipped tiny model, agent=sdpo's defaults
    python -m sdpo_env.bench_selectivity --learner sdpo_paper             # the sampled-token loss and AdamW
    python -m sdpo_env.bench_selectivity --learner sdpo_paper loss=topk lr=5e-4   # key=value: the learner's options

With ``signal_gate``, a follow-up whose advantages all stay below the gate takes no step: it moves the
policy by nothing (KL 0, caused part 0, gradient norm 0), and a pair whose unrelated side is skipped has an infinite
ratio.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from rich.console import Console
from rich.table import Table

from agents.base import Transition, make_learner
from agents.sdpo import SDPOLearner
from sdpo_env.errors import SdpoEnvError
from sdpo_env.policy import ChatPolicy, Messages
from sdpo_env.prompts import load_prompts
from sdpo_env.sdpo import divergence
from sdpo_env.tiny.corpus import personas

Pair = tuple[Transition, Transition]  # (relevant follow-up, unrelated follow-up), same prompt and answer


def follow_up_pairs(conversations: Sequence[Messages], answers: Sequence[str], rng: np.random.Generator) -> list[Pair]:
    """One pair per answer that violates a preference of a randomly drawn persona."""
    pool = personas()
    unrelated = pool[0].unrelated_pool
    pairs = []
    for messages, answer in zip(conversations, answers):
        persona = pool[int(rng.integers(len(pool)))]
        violated = [p for p in persona.preferences if not p.satisfied_by(answer)]
        if not violated or not answer.strip():
            continue
        preference = violated[int(rng.integers(len(violated)))]
        complaint = preference.follow_ups[int(rng.integers(len(preference.follow_ups)))]
        other = unrelated[int(rng.integers(len(unrelated)))]
        pairs.append((Transition(messages=list(messages), response=answer, follow_up=complaint,
                                 info={"relevant": True}),
                      Transition(messages=list(messages), response=answer, follow_up=other,
                                 info={"relevant": False})))
    return pairs


def held_out_log_probs(policy: ChatPolicy, contexts: list[list[int]],
                       completions: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T, V) log-probabilities at the completion positions, and the (B, T) mask."""
    with torch.no_grad():
        logits, _, mask = policy.completion_logits(contexts, completions)
    return torch.log_softmax(logits.float(), -1), mask


def mean_kl(before: tuple[torch.Tensor, torch.Tensor], after: tuple[torch.Tensor, torch.Tensor]) -> float:
    """KL(before || after) per token, averaged over the real tokens."""
    (p, mask), (q, _) = before, after
    per_token = divergence(p, q, 1.0)  # (B, T)
    return float((per_token * mask).sum() / mask.sum())


def optimizer_only_step(learner: SDPOLearner) -> None:
    """The step the learner takes with a zero gradient: momentum and weight decay, no follow-up at all."""
    for param in learner.params:
        param.grad = torch.zeros_like(param)
    learner.apply_step()


def one_update_moves(learner: SDPOLearner, pairs: Sequence[Pair], contexts: list[list[int]],
                     completions: list[list[int]]) -> dict[str, float]:
    """Applies one update per follow-up, each from the learner's current state; the learner ends where it began.

    Two distances per update: from the policy before it (the whole move), and from the policy after an
    optimizer-only step (the part of the move the follow-up caused; AdamW's momentum carries the rest).
    """
    state = copy.deepcopy(learner.state_dict())
    before = held_out_log_probs(learner.policy, contexts, completions)
    optimizer_only_step(learner)
    drift = held_out_log_probs(learner.policy, contexts, completions)
    moved: dict[bool, list[tuple[float, float, float, float]]] = {True: [], False: []}  # KL, KL to drift, |A|, grad
    for pair in pairs:
        for transition in pair:
            learner.load_state_dict(copy.deepcopy(state))
            metrics = learner.update([transition])
            after = held_out_log_probs(learner.policy, contexts, completions)
            stepped = "sdpo/grad_norm" in metrics  # the signal gate skips an update whose |A_t| stay below it
            moved[transition.info["relevant"]].append((mean_kl(before, after),
                                                       mean_kl(drift, after) if stepped else 0.0,
                                                       metrics["sdpo/advantage_abs_mean"],
                                                       metrics["sdpo/grad_norm"] if stepped else 0.0))
    learner.load_state_dict(state)
    rel, unr = np.array(moved[True]), np.array(moved[False])
    # an unrelated side that moved nothing (advantage_threshold, signal_gate) gives inf; both sides nothing, nan
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = rel[:, 1] / unr[:, 1]
    return {"kl_relevant": rel[:, 0].mean(), "kl_unrelated": unr[:, 0].mean(),
            "caused_relevant": rel[:, 1].mean(), "caused_unrelated": unr[:, 1].mean(),
            # One odd answer can dominate a mean of KLs: the median of the per-pair ratios is the robust figure.
            "caused_ratio_median": float(np.nanmedian(ratios)) if not np.isnan(ratios).all() else math.nan,
            "relevant_moves_more": (rel[:, 1] > unr[:, 1]).mean(),
            "abs_adv_relevant": rel[:, 2].mean(), "abs_adv_unrelated": unr[:, 2].mean(),
            "grad_norm_relevant": rel[:, 3].mean(), "grad_norm_unrelated": unr[:, 3].mean()}


def measure(options: dict[str, Any], *, learner_name: str = "sdpo", model: str = "tiny", n_pairs: int = 28,
            n_warm: int = 20, n_probe: int = 32, seed: int = 0) -> dict[str, dict[str, float]]:
    """The figures from a fresh optimizer and after ``n_warm`` relevant updates, for ``learner_name`` (``sdpo``,
    ``sdpo_gate``, ``sdpo_plain`` or ``sdpo_paper``) with ``options``.

    Raises:
        SdpoEnvError: the training prompts gave too few pairs (the message says how many).
    """
    policy = ChatPolicy.load(model, device="cpu")
    learner = make_learner({"name": learner_name, "diagnostics_every": 0, **options}, policy, seed=seed)
    assert isinstance(learner, SDPOLearner)
    # Interactions come from the training pool, as in a run; the KL is measured on held-out prompts.
    train = [list(p.messages) for p in load_prompts("train")[: 3 * (n_pairs + n_warm)]]  # 1 in 2 to 3 in 4 pair
    held_out = [list(p.messages) for p in load_prompts("eval")[:n_probe]]
    answers = [s.text for s in policy.generate(train + held_out, seed=seed)]
    pairs = follow_up_pairs(train, answers[: len(train)], np.random.default_rng(seed))
    if len(pairs) < n_pairs + n_warm:
        raise SdpoEnvError(f"only {len(pairs)} pairs from {len(train)} training prompts, and {n_pairs} pairs + "
                           f"{n_warm} warm-up updates were asked for; ask for fewer")
    contexts = [policy.encode(c) for c in held_out]
    completions = [policy.encode_completion(a) or [policy.tokenizer.eos_token_id] for a in answers[len(train):]]
    measured, warm = pairs[:n_pairs], pairs[n_pairs:n_pairs + n_warm]
    figures = {"fresh optimizer": one_update_moves(learner, measured, contexts, completions)}
    for relevant, _ in warm:
        learner.update([relevant])
    figures[f"after {n_warm} relevant updates"] = one_update_moves(learner, measured, contexts, completions)
    return figures


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("options", nargs="*", help="the learner's options as key=value (loss=topk, lr=1.5, ...)")
    parser.add_argument("--learner", default="sdpo", choices=("sdpo", "sdpo_gate", "sdpo_plain", "sdpo_paper"),
                        help="sdpo_gate: the plain hindsight teacher, gated by the contrasted one; sdpo_plain: no "
                             "contrast; sdpo_paper: the sampled-token loss and AdamW, on every follow-up")
    parser.add_argument("--model", default="tiny",
                        help="default: tiny, the model the README's figures of this tool were measured on (the "
                             "default policy is tiny-v3; a model's sdpo_env.yaml is not read here, so give its "
                             "options, e.g. kl_coef=0.1, as options)")
    parser.add_argument("--pairs", type=int, default=28, help="pairs measured")
    parser.add_argument("--warm", type=int, default=20, help="relevant updates before the second measurement")
    parser.add_argument("--probe", type=int, default=32, help="held-out answers the KL is measured on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    options = OmegaConf.to_container(OmegaConf.from_dotlist(args.options))
    assert isinstance(options, dict)
    console = Console(width=160)
    with console.status(f"sampling answers, then {4 * args.pairs} updates (about a minute on a 2-core CPU)"):
        figures = measure({str(k): v for k, v in options.items()}, learner_name=args.learner, model=args.model,
                          n_pairs=args.pairs, n_warm=args.warm, n_probe=args.probe, seed=args.seed)
    table = Table(title=f"one {args.learner} update ({args.model}, {args.pairs} pairs, KL on {args.probe} held-out "
                        "answers" + (f", {' '.join(args.options)}" if args.options else "") + ")")
    for column in ("learner state", "KL to before: rel / unrel", "caused by the follow-up: rel / unrel",
                   "median pair ratio", "rel. moves more", "|A| rel / unrel", "grad norm rel / unrel"):
        table.add_column(column, justify="right")
    for state, f in figures.items():
        table.add_row(state, f"{f['kl_relevant']:.2e} / {f['kl_unrelated']:.2e}",
                      f"{f['caused_relevant']:.2e} / {f['caused_unrelated']:.2e}", f"{f['caused_ratio_median']:.2f}",
                      f"{f['relevant_moves_more']:.2f}", f"{f['abs_adv_relevant']:.3f} / {f['abs_adv_unrelated']:.3f}",
                      f"{f['grad_norm_relevant']:.3f} / {f['grad_norm_unrelated']:.3f}")
    console.print(table)


if __name__ == "__main__":
    main()
