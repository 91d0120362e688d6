"""Tokenizer, model and training loop of the tiny model (pure pieces; ``build.py`` wires them together)."""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from sdpo_env.cli import StopRequest, sigterm_as_ctrl_c
from sdpo_env.runfolder import save_atomically

BOS, EOS, PAD = "<|im_start|>", "<|im_end|>", "<|endoftext|>"
# ChatML, as in Qwen2: <|im_start|>role\ncontent<|im_end|>\n, generation prompt <|im_start|>assistant\n.
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>'"
    " + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
Messages = list[dict[str, str]]


@dataclass(frozen=True)
class ModelSize:
    """Architecture of the tiny model (a Llama)."""

    vocab_size: int = 2048
    hidden_size: int = 128
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    intermediate_size: int = 384
    max_position_embeddings: int = 1024


MINI = ModelSize(vocab_size=400, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 max_position_embeddings=1024)


def build_tokenizer(texts: Sequence[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts``: it encodes any Unicode string, with a ChatML chat template."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[PAD, BOS, EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    bpe.train_from_iterator(texts, trainer=trainer)
    return wrap_tokenizer(bpe)


def wrap_tokenizer(bpe: Tokenizer) -> PreTrainedTokenizerFast:
    """The trained ``bpe`` as a transformers tokenizer with the special tokens and the chat template."""
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=None, eos_token=EOS, pad_token=PAD,
                                        unk_token=None, model_max_length=1024, clean_up_tokenization_spaces=False)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.add_special_tokens({"additional_special_tokens": [BOS]})
    return tokenizer


def build_model(tokenizer: PreTrainedTokenizerFast, size: ModelSize, seed: int) -> LlamaForCausalLM:
    """A freshly initialised Llama with tied embeddings, sized by ``size``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=size.hidden_size, intermediate_size=size.intermediate_size,
        num_hidden_layers=size.num_hidden_layers, num_attention_heads=size.num_attention_heads,
        num_key_value_heads=size.num_attention_heads, max_position_embeddings=size.max_position_embeddings,
        tie_word_embeddings=True, bos_token_id=int(tokenizer.convert_tokens_to_ids(BOS)),  # type: ignore[arg-type]
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, rms_norm_eps=1e-5,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def chat_text(messages: Messages, *, add_generation_prompt: bool) -> str:
    """``CHAT_TEMPLATE`` applied in Python (the same string, without a Jinja render per example)."""
    text = "".join(f"{BOS}{m['role']}\n{m['content']}{EOS}\n" for m in messages)
    return text + (f"{BOS}assistant\n" if add_generation_prompt else "")


def encode(tokenizer: PreTrainedTokenizerFast, chats: Sequence[Messages]) -> list[tuple[list[int], int]]:
    """Token ids of chats ending with the assistant's answer, and the number of tokens before the trained part.

    The prompt (with the generation prompt) and the answer are tokenised separately, exactly as the policy sees
    them when it samples: the answer's tokens never merge with the prompt's. An answer with a ``prefix`` key (a
    repair example) is trained only from where its tokens leave the prefix's.
    """
    prompts = tokenizer([chat_text(c[:-1], add_generation_prompt=True) for c in chats], add_special_tokens=False)
    answers = tokenizer([c[-1]["content"] for c in chats], add_special_tokens=False)
    prefixes = tokenizer([c[-1].get("prefix", "") for c in chats], add_special_tokens=False)
    eos = tokenizer.eos_token_id
    out = []
    for p, a, shown in zip(prompts["input_ids"], answers["input_ids"], prefixes["input_ids"]):
        kept = next((i for i, (x, y) in enumerate(zip(shown, a)) if x != y), min(len(shown), len(a)))
        out.append((p + a + [eos], len(p) + kept))
    return out


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings."""

    steps: int = 5000
    batch_size: int = 128
    lr: float = 2e-3
    warmup: int = 200
    weight_decay: float = 0.01
    first_token_weight: float = 5.0  # style decisions made at the first answer token need a stronger signal
    # Mid-answer style decisions (keep going or stop, start a list, add a closing line or an emoji) are taken at the
    # start of a line or sentence and at the end-of-answer token; the first build ignored complaints there.
    decision_weight: float = 3.0
    tokens_per_example: float = 100.0  # constant loss normaliser (per-batch token means over-weight short answers)
    # Invariance to neutral follow-ups (refinement only): weight of KL(p(.|x, y_<t) || p(.|x, o, y_<t)) on pairs
    # that differ only by a neutral hindsight block o, and pairs per step. The KL is SDPO's expected advantage on
    # such an o with its sign flipped (see invariance_loss).
    invariance_weight: float = 0.0
    invariance_batch: int = 16
    # Preference pairs of the model's own answers (refinement only, ``sdpo_env.tiny.own.own_pairs``): weight of
    # :func:`preference_loss`, its beta, and pairs per step.
    preference_weight: float = 0.0
    preference_beta: float = 0.1
    preference_batch: int = 16


def boundary_token_ids(tokenizer: PreTrainedTokenizerFast) -> set[int]:
    """Ids of tokens that end a line or a sentence: the token after one starts a new style decision."""
    ends = ("\n", ".", "!", "?", ":")
    return {i for i in range(len(tokenizer)) if str(tokenizer.decode([i])).rstrip(" ").endswith(ends)}


def batch_tensors(examples: Sequence[tuple[list[int], int]], pad_id: int, *, first_token_weight: float,
                  device: torch.device, decision_weight: float = 1.0, boundaries: frozenset[int] = frozenset(),
                  eos_id: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded ids, attention mask and per-position loss weights (0 outside the answers).

    Answer tokens weigh 1; the first answer token ``first_token_weight``; tokens that follow a line or sentence
    boundary, and the end-of-answer token, ``decision_weight``.
    """
    width = max(len(ids) for ids, _ in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)  # (B, T)
    weights = torch.zeros((len(examples), width))  # (B, T): weight of predicting token t
    for row, (tokens, n_prompt) in enumerate(examples):
        ids[row, : len(tokens)] = torch.tensor(tokens)
        weights[row, n_prompt : len(tokens)] = 1.0
        if decision_weight != 1.0:
            for t in range(n_prompt + 1, len(tokens)):
                if tokens[t - 1] in boundaries or tokens[t] == eos_id:
                    weights[row, t] = decision_weight
        weights[row, n_prompt] = first_token_weight
    mask = (torch.arange(width)[None, :] < torch.tensor([len(t) for t, _ in examples])[:, None]).long()
    return ids.to(device), mask.to(device), weights.to(device)


Pair = tuple[tuple[list[int], int], tuple[list[int], int]]  # the same answer without and with a hindsight block


def invariance_loss(plain_logits: torch.Tensor, hindsight_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of ``KL(p_plain || p_hindsight)``, with gradient through both sides.

    Under an answer sampled from the plain model this is the expected SDPO advantage with its sign flipped,
    ``E_y[log p_plain(y_t) - log p_hindsight(y_t)]``: zero exactly when the hindsight block changes nothing. The
    plain side is not detached: both contexts run through the same weights, so a step on the hindsight side alone
    moves the plain side along with it (measured on the shipped model: such a step raised the divergence). The
    answer loss on plain examples keeps the plain side where it was.

    Args:
        plain_logits: (N, V) next-token logits at the answer positions without the hindsight block.
        hindsight_logits: (N, V) the same positions with it.
    """
    plain = torch.log_softmax(plain_logits.float(), dim=-1)  # (N, V)
    moved = torch.log_softmax(hindsight_logits.float(), dim=-1)  # (N, V)
    return (plain.exp() * (plain - moved)).sum(-1).mean()


def _answer_logits(model: LlamaForCausalLM, ids: torch.Tensor, mask: torch.Tensor,
                   scored: torch.Tensor) -> torch.Tensor:
    """(N, V) logits at the ``scored`` (B, T-1) positions, those whose next token is an answer token."""
    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, H)
    return model.lm_head(hidden[:, :-1][scored])  # (N, V): only answer positions reach the vocabulary


def pair_divergence(model: LlamaForCausalLM, pairs: Sequence[Pair], pad_id: int,
                    device: torch.device) -> torch.Tensor:
    """:func:`invariance_loss` over the answer positions of ``pairs`` (their answers' tokens line up)."""
    sides = []
    for side in (0, 1):
        ids, mask, weights = batch_tensors([pair[side] for pair in pairs], pad_id, first_token_weight=1.0,
                                           device=device)
        sides.append(_answer_logits(model, ids, mask, weights[:, 1:] > 0))  # (N, V)
    return invariance_loss(sides[0], sides[1])


PreferencePair = tuple[tuple[list[int], int], tuple[list[int], int], float, float]
"""The chosen and the rejected answer's ids (as :func:`encode` gives them) and their log-probs under the reference."""


def answer_logprobs(model: LlamaForCausalLM, examples: Sequence[tuple[list[int], int]], pad_id: int,
                    device: torch.device) -> torch.Tensor:
    """(B,) summed log-probability of each example's answer tokens (its closing EOS included) given its prompt."""
    ids, mask, weights = batch_tensors(examples, pad_id, first_token_weight=1.0, device=device)
    scored = weights[:, 1:] > 0  # (B, T-1)
    logp = torch.log_softmax(_answer_logits(model, ids, mask, scored).float(), dim=-1)  # (N, V)
    picked = logp.gather(-1, ids[:, 1:][scored][:, None])[:, 0]  # (N,)
    rows = torch.arange(len(examples), device=device)[:, None].expand_as(scored)[scored]  # (N,): each one's example
    return torch.zeros(len(examples), device=device).index_add(0, rows, picked)


def preference_loss(chosen: torch.Tensor, rejected: torch.Tensor, chosen_ref: torch.Tensor,
                    rejected_ref: torch.Tensor, beta: float) -> torch.Tensor:
    """The DPO loss, ``-log sigmoid(beta * ((c - c_ref) - (r - r_ref)))`` averaged over the pairs.

    Args:
        chosen, rejected: (P,) summed answer log-probs under the model being trained.
        chosen_ref, rejected_ref: (P,) the same under the model the refinement started from.
        beta: How far from the reference the margin saturates.
    """
    return -torch.nn.functional.logsigmoid(beta * ((chosen - chosen_ref) - (rejected - rejected_ref))).mean()


def reference_pairs(model: LlamaForCausalLM, pairs: Sequence[Pair], pad_id: int, device: torch.device,
                    batch_size: int = 64) -> list[PreferencePair]:
    """``pairs`` (chosen, rejected) with their answers' log-probs under ``model`` (the reference)."""
    out: list[PreferencePair] = []
    model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() as a model decorator
    with torch.no_grad():
        for start in range(0, len(pairs), batch_size):
            chunk = pairs[start : start + batch_size]
            logp = answer_logprobs(model, [side for pair in chunk for side in pair], pad_id, device).tolist()
            out += [(c, r, logp[2 * i], logp[2 * i + 1]) for i, (c, r) in enumerate(chunk)]
    return out


def _bucketed_batches(data: Sequence[tuple[list[int], int]], batch_size: int,
                      rng: np.random.Generator) -> list[list[int]]:
    """One epoch of batches of similar length (less padding), in random order.

    The loss is normalised by a constant, so batches of short answers are not over-weighted.
    """
    order = rng.permutation(len(data))
    batches = []
    for start in range(0, len(order), batch_size * 50):
        chunk = sorted(order[start : start + batch_size * 50].tolist(), key=lambda i: len(data[i][0]))
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk) - batch_size + 1, batch_size)]
    return [batches[int(i)] for i in rng.permutation(len(batches))]


STATE_FILE = "train_state.pt"  # an unfinished training's state, in the output folder; gone once the model is saved


@dataclass(frozen=True)
class Saving:
    """Where and when :func:`train` saves its state, so that a stopped or crashed training continues exactly.

    Attributes:
        path: The state file (``<out>/train_state.pt``); :func:`train` resumes from it when it exists.
        settings: The whole configuration of the build or refinement, stored with the state and compared on a
            resume (:func:`check_resume`).
        every_s: Seconds between saves; a crash loses at most that much training.
        stop_after_steps: Save and stop (``TrainingStopped``) once this many steps are done: a long build split
            over several sessions, e.g. on a machine lent for minutes at a time.
        carry: Saved with the state as they are, for the caller to read back on a resume.
    """

    path: Path
    settings: dict[str, Any]
    every_s: float = 300.0
    stop_after_steps: int | None = None
    carry: dict[str, Any] = field(default_factory=dict)  # saved with the state for the caller (e.g. the tokenizer)


class Refused(ValueError):
    """Work a training command must not start: the message names the option, says why and what to do.
    :func:`run_resumable` reports it as a usage error (exit 2)."""


class ResumeRefused(Refused):
    """A training state that must not be continued (or overwritten); the message says why and what to do."""


class TrainingStopped(Exception):
    """Training stopped early (Ctrl-C, SIGTERM or ``stop_after_steps``) with its state saved; resume continues it."""

    def __init__(self, step: int, steps: int, path: Path):
        super().__init__(f"stopped after step {step} of {steps}; the state is saved in {path}")
        self.step, self.steps, self.path = step, steps, path


def add_resume_options(parser: argparse.ArgumentParser) -> None:
    """``--resume``, ``--stop-after-steps`` and ``--save-every``, for a command that trains with :class:`Saving`."""
    parser.add_argument("--resume", action="store_true",
                        help="continue the unfinished training in --out (give the options it was started with)")
    parser.add_argument("--stop-after-steps", type=_positive, default=None, metavar="N",
                        help="save the training state and stop after N steps (continue later with --resume)")
    parser.add_argument("--save-every", type=float, default=300.0, metavar="SECONDS",
                        help="seconds between saves of the training state (default 300)")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of steps, at least 1; got {text!r}")
    return int(text)


def run_resumable(parser: argparse.ArgumentParser, work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Runs a training command: SIGTERM acts as Ctrl-C, refused work (a resume, a source) is a usage error (exit 2),
    and a training stopped with its state saved exits with 130 and says how to continue."""
    try:
        with sigterm_as_ctrl_c():
            return work()
    except Refused as exc:
        parser.error(str(exc))
    except TrainingStopped as stopped:
        print(f"{stopped}; continue with the same command and --resume", file=sys.stderr)
        raise SystemExit(130) from None
    except KeyboardInterrupt:  # a second Ctrl-C, or one before training started
        print(f"interrupted; a training state saved before ({STATE_FILE} in the output folder, if there) continues "
              "with the same command and --resume", file=sys.stderr)
        raise SystemExit(130) from None


def read_state(path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """A state :func:`train` saved (our own file: it holds numpy generator states and lists)."""
    return torch.load(path, map_location=device, weights_only=False)


def check_resume(saving: Saving, resume: bool) -> dict[str, Any] | None:
    """The saved state to continue (None for a fresh start), or ``ResumeRefused`` that says why not.

    Refused: an unfinished training in the folder without ``resume`` (it would be overwritten), ``resume`` with
    nothing to resume, and a state saved with other settings (each differing one named, saved and given).
    """
    if not saving.path.is_file():
        if resume:
            raise ResumeRefused(f"--resume: {saving.path.parent} holds no unfinished training ({saving.path.name})")
        return None
    saved = read_state(saving.path)
    where = f"{saving.path.parent} holds an unfinished training (step {saved['step']} of {saved['steps']})"
    if not resume:
        raise ResumeRefused(f"{where}; continue it with the same command and --resume, or choose another --out")
    before = dict(_flat(saved["settings"]))
    differ = [f"{key}: {before.get(key)!r} saved, {value!r} now" for key, value in _flat(saving.settings)
              if before.get(key) != value]
    if differ:
        raise ResumeRefused(f"--resume: {where} made with other settings; give the command it was started with "
                         "(" + "; ".join(differ) + ")")
    return saved


def _flat(settings: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """``[("train.steps", 5000), ...]``: the leaves of a nested dict with dotted keys."""
    items: list[tuple[str, Any]] = []
    for key, value in settings.items():
        if isinstance(value, dict):
            items += _flat(value, f"{prefix}{key}.")
        else:
            items.append((f"{prefix}{key}", value))
    return items


def train(model: LlamaForCausalLM, data: Sequence[tuple[list[int], int]], pad_id: int, cfg: TrainConfig, *,
          seed: int, device: torch.device, log: Callable[[str], None] = print,
          boundaries: frozenset[int] = frozenset(), eos_id: int | None = None,
          pairs: Sequence[Pair] = (), preference_pairs: Sequence[PreferencePair] = (), log_every: int = 200,
          saving: Saving | None = None) -> float:
    """Trains ``model`` in place; returns the mean loss per answer token over the last 100 steps.

    With ``pairs`` and ``cfg.invariance_weight`` > 0, each step adds :func:`invariance_loss` on
    ``cfg.invariance_batch`` of them, drawn from a stream of their own (the answer batches stay the same). With
    ``preference_pairs`` and ``cfg.preference_weight`` > 0, each step adds :func:`preference_loss` on
    ``cfg.preference_batch`` of them, from another stream of their own.

    With ``saving``, the state (weights, optimizer, the epoch's remaining batches, every random stream and the
    recent losses) is saved every ``saving.every_s`` seconds and when Ctrl-C or SIGTERM stops the training (at the
    end of the step in progress; ``TrainingStopped`` then says where). If the state file exists, training continues
    from it: an interrupted training ends with the same weights as one that never stopped. Without ``saving``,
    Ctrl-C stops at the end of the step with ``KeyboardInterrupt``.

    Raises:
        ValueError: ``data`` holds fewer examples than one batch (an epoch would have no batch to train on).
    """
    if len(data) < cfg.batch_size:
        raise ValueError(f"{len(data)} training examples, fewer than one batch of {cfg.batch_size}: no batch to train "
                         "on (examples with answers over the length limit are left out)")
    rng = np.random.default_rng(seed)
    pair_rng = np.random.default_rng([seed, 11])
    use_pairs = bool(pairs) and cfg.invariance_weight > 0
    preference_rng = np.random.default_rng([seed, 12])
    use_preferences = bool(preference_pairs) and cfg.preference_weight > 0
    torch.manual_seed(seed)
    model.to(device).train()  # type: ignore[arg-type]  # transformers types .to() as a model decorator
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    use_bf16 = device.type == "cuda"
    recent: list[float] = []
    shifts: list[float] = []
    margins: list[float] = []  # the preference pairs' mean margin: how far the chosen answers moved ahead (nats)
    batches = _bucketed_batches(data, cfg.batch_size, rng)
    first = 0
    if saving is not None and saving.path.is_file():
        state = read_state(saving.path, device)
        if state["n_data"] != len(data) or state["steps"] != cfg.steps:
            raise ResumeRefused(f"{saving.path} was saved for {state['n_data']} examples and {state['steps']} steps, "
                             f"not {len(data)} and {cfg.steps}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        rng.bit_generator.state, pair_rng.bit_generator.state = state["rng"], state["pair_rng"]
        torch.set_rng_state(state["torch_rng"].cpu())  # map_location moved it to the device
        first, batches, recent, shifts = state["step"], state["batches"], state["recent"], state["shifts"]
        if "preference_rng" in state:  # saved before preference pairs existed: none were drawn
            preference_rng.bit_generator.state, margins = state["preference_rng"], state["margins"]
        log(f"resuming at step {first}/{cfg.steps} from {saving.path}")

    def save(done: int) -> None:
        assert saving is not None
        save_atomically({"step": done, "steps": cfg.steps, "n_data": len(data), "settings": saving.settings,
                         "carry": saving.carry, "model": model.state_dict(), "optimizer": opt.state_dict(),
                         "rng": rng.bit_generator.state, "pair_rng": pair_rng.bit_generator.state,
                         "torch_rng": torch.get_rng_state(), "batches": batches, "recent": recent, "shifts": shifts,
                         "preference_rng": preference_rng.bit_generator.state, "margins": margins},
                        saving.path)

    start = saved_at = time.time()
    with StopRequest() as stop:
        for step in range(first, cfg.steps):
            if not batches:
                batches = _bucketed_batches(data, cfg.batch_size, rng)
            chosen = [data[i] for i in batches.pop()]
            ids, mask, weights = batch_tensors(chosen, pad_id, first_token_weight=cfg.first_token_weight,
                                               device=device, decision_weight=cfg.decision_weight,
                                               boundaries=boundaries, eos_id=eos_id)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                scored = weights[:, 1:] > 0  # (B, T-1): positions whose next token is an answer token
                logits = _answer_logits(model, ids, mask, scored)  # (N, V)
            nll = torch.nn.functional.cross_entropy(logits.float(), ids[:, 1:][scored], reduction="none")  # (N,)
            loss = (nll * weights[:, 1:][scored]).sum() / (cfg.batch_size * cfg.tokens_per_example)
            total = loss
            if use_pairs:
                chosen_pairs = [pairs[int(i)] for i in pair_rng.integers(len(pairs), size=cfg.invariance_batch)]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    shift = pair_divergence(model, chosen_pairs, pad_id, device)
                total = loss + cfg.invariance_weight * shift
                shifts.append(shift.item())
                shifts = shifts[-100:]
            if use_preferences:
                drawn = [preference_pairs[int(i)]
                         for i in preference_rng.integers(len(preference_pairs), size=cfg.preference_batch)]
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    logp = answer_logprobs(model, [side for c, r, _, _ in drawn for side in (c, r)], pad_id, device)
                chosen_ref, rejected_ref = (torch.tensor([p[k] for p in drawn], device=device) for k in (2, 3))
                total = total + cfg.preference_weight * preference_loss(logp[0::2], logp[1::2], chosen_ref,
                                                                        rejected_ref, cfg.preference_beta)
                margins.append(((logp[0::2] - chosen_ref) - (logp[1::2] - rejected_ref)).mean().item())
                margins = margins[-100:]
            opt.zero_grad(set_to_none=True)
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            # Reported per answer token (weighted mean), comparable across batch sizes.
            recent.append(loss.item() * cfg.batch_size * cfg.tokens_per_example / float(weights.sum()))
            recent = recent[-100:]
            if step % log_every == 0 or step == cfg.steps - 1:
                invariance = f"  neutral-follow-up KL {np.mean(shifts):.4f}" if shifts else ""
                if margins:
                    invariance += f"  pair margin {np.mean(margins):+.2f} nats"
                per_step = (time.time() - start) / (step + 1 - first)
                log(f"step {step:5d}/{cfg.steps}  loss {np.mean(recent):.4f}{invariance}  lr {lr_at(step):.2e}  "
                    f"{per_step:.3f} s/step, about {per_step * (cfg.steps - step - 1) / 60:.0f} min to go")
            done = step + 1
            pause = saving is not None and done == saving.stop_after_steps
            if done < cfg.steps and (stop.requested or pause):
                if saving is None:
                    raise KeyboardInterrupt
                save(done)
                raise TrainingStopped(done, cfg.steps, saving.path)
            if saving is not None and done < cfg.steps and time.time() - saved_at >= saving.every_s:
                save(done)
                saved_at = time.time()
    model.eval()
    return float(np.mean(recent))
