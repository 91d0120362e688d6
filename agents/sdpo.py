"""SDPO from user interactions: distil the hindsight policy into a LoRA adapter after each interaction.

For a batch of interactions (x, y, o): one no-grad teacher forward on the hindsight context (x with o attached to
the last user turn), one student forward/backward on x, and an optimizer step on the LoRA weights. The token advantage
``A_t = log pi(y_t | x, o, y_<t) - log pi(y_t | x, y_<t)`` reinforces what the follow-up makes more likely and
penalises what it makes less likely. SDPO never reads the environment's reward.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.base import LEARNERS, Messages, Transition, sampling_seed
from sdpo_env.hindsight import DEFAULT_TEMPLATE, hindsight_messages
from sdpo_env.policy import ChatPolicy, LoraSettings
from sdpo_env.schema import option, option_like
from sdpo_env.sdpo import (
    AGGREGATIONS,
    SUM_TOKENS,
    center_advantages,
    contrasted_teacher_logits,
    divergence,
    full_divergence_loss,
    guided_teacher_logits,
    hindsight_log_ratio,
    policy_gradient_loss,
    rewards_to_go,
    selective_log_softmax,
    signal_rows,
    threshold_advantages,
    token_advantages,
    topk_divergence_loss,
    unlearn_along_gradient,
)
from sdpo_env.teachers import TEACHERS, EmaTeacher, teacher_view

RESAMPLE_STREAM = 1 << 40  # extra_samples draw their generation seeds from here on, apart from the acts' (0, 1, ...)


@dataclass
class SDPOConfig:
    """Options of the SDPO learner (``agent.<name>=value``)."""

    lr: float = option(2.0, "learning rate on the LoRA weights (constant); an SGD step is lr x the gradient, "
                       "clipped to grad_clip (on the flip, with the gate, lr=1.5 and 2 end at the same level and 3 "
                       "frays on some seeds; with optimizer=adamw about 1e-3, as agent=sdpo_paper: README, 'What to "
                       "expect')", gt=0.0)
    optimizer: str = option("sgd", "sgd (no momentum): steps in proportion to the gradient, so a complaint moves "
                            "the policy far more than a follow-up the teacher hardly reacts to (python -m "
                            "sdpo_env.bench_selectivity); with loss=full and signal_gate it re-adapts after a flip in "
                            "about half AdamW's time and ends higher; adamw (the paper's): each step about lr per "
                            "weight, whatever the follow-up (agent=sdpo_paper)", choices=("adamw", "sgd"))
    weight_decay: float = option(1e-3, "decoupled weight decay: every step shrinks the LoRA weights by lr x "
                                 "weight_decay, pulling the adapter back towards the base so the policy can "
                                 "re-adapt after a preference flip, and keeping a long run from drifting into "
                                 "loops (docs/results.md, 'Beyond interaction 500')", min=0.0)
    decay_factors: str = option("AB", "which LoRA factors the weight decay shrinks: AB = both, as AdamW does on "
                                "every trainable weight, so A's random start shrinks too and a step on B moves the "
                                "policy less and less as a run goes on; B = the up factors only (B starts at zero), "
                                "so A keeps its scale and BA shrinks by lr x weight_decay per step, half AB's rate "
                                "(on the flip B with weight_decay=4 re-adapted sooner and ended no higher; with "
                                "weight_decay=3 some seeds broke down: docs/results.md)", choices=("AB", "B"))
    adam_beta2: float = option(0.99, "optimizer=adamw: decay of the running mean of squared gradients, which "
                               "sets each step's scale (0.99 remembers about 100 updates, torch's 0.999 about "
                               "1000, which re-adapts worse after a flip: docs/results.md)",
                               min=0.0, max=0.9999)
    grad_clip: float = option(0.2, "clip the gradient norm to this value, so an SGD step moves the weights by at "
                              "most lr x grad_clip (the sampled-token loss's norms: median 0.06-0.36 for a complaint, "
                              "rare outliers above 1; the exact gradient's are smaller); 0 disables", min=0.0)
    update_every: int = option(1, "update after every N interactions", min=1)
    batch_size: int = option(1, "interactions per update: the last N (the paper uses 16)", min=1)
    teacher: str = option("live", "live = current policy (paper), base = frozen base, ema = moving average",
                          choices=TEACHERS)
    ema_decay: float = option(0.99, "teacher=ema: weight of the old average per update", min=0.0, max=0.9999)
    loss: str = option("full", "full = the divergence over the whole vocabulary (the exact reverse-KL gradient "
                       "the paper's estimator samples, Appendix B), pg = sampled-token policy gradient (the paper's), "
                       "topk = top-k divergence + tail", choices=("pg", "topk", "full"))
    topk: int = option(20, "loss=topk: tokens kept per position", min=1)
    alpha: float = option(1.0, "loss=topk|full: 0 forward KL, 1 reverse KL, between: generalised JSD",
                          min=0.0, max=1.0)
    advantage_threshold: float = option(0.0, "loss=pg: zero the token advantages with |A_t| below this before "
                                        "the update (a complaint's signal sits on few tokens, a neutral "
                                        "follow-up's noise on many); 0 keeps every token", min=0.0)
    signal_gate: float = option(0.3, "learn only from answers whose follow-up moves some token by |A_t| >= this "
                                "(the sampled tokens' log-ratio, under any loss; with contrast, the contrasted "
                                "teacher's); an update whose answers all fall below it takes no optimizer step (on "
                                "the flip 0.3 passes 94% of complaints and 5% of the other follow-ups, 95% and 9% "
                                "without the contrast); 0 learns from every follow-up, as the paper does "
                                "(docs/results.md, 'Learning only from follow-ups that carry a signal')", min=0.0)
    gate_decay: bool = option(False, "signal_gate: an update the gate skips still shrinks the LoRA weights by "
                              "lr x weight_decay (on the flip this lowered every plateau: docs/results.md, "
                              "'Learning only from follow-ups that carry a signal')")
    decay_gate: float = option(0.0, "loss=pg: apply the weight decay only on updates with an answer whose follow-up "
                               "moves some token by |A_t| >= this (the user said something was wrong: forget); "
                               "the gradient step is taken on every update (on the flip the adapter then grows and "
                               "re-adapts worse: docs/results.md, 'Learning only from follow-ups that carry a "
                               "signal'); 0 decays on every update", min=0.0)
    unlearn: float = option(0.0, "on an update whose gradient the adapter points up (<delta W, G> > 0: shrinking "
                            "it would lower the loss), also remove up to this share of that alignment from the "
                            "LoRA B factors, along their gradient (sdpo_env.sdpo.unlearn_along_gradient), scaled "
                            "by grad_norm / grad_clip (at most 1): forget what the teacher now disagrees with, "
                            "keep the rest; 0 = off, as in the paper", min=0.0, max=1.0)
    center_advantages: bool = option(False, "subtract each sequence's mean advantage")
    credit: str = option("token", "loss=pg: what each token is credited with. token = its own A_t (the paper: the "
                         "per-prefix reverse KL, Appendix B); to_go = the sum of A over it and the rest of the answer "
                         "(the sequence-level reverse KL, whose negative is the paper's sequence-level advantage, "
                         "Appendix A), so the early tokens that set an answer's course share what the teacher thinks "
                         "of the rest (on the flip it learned more slowly and re-adapted far worse: docs/results.md)",
                         choices=("token", "to_go"))
    extra_samples: int = option(0, "at each update, sample this many more answers to each interaction's prompt "
                                "from the current policy and learn from them under the same follow-up (more "
                                "samples of the same reverse-KL gradient; the paper learns from the answer the user "
                                "saw only; on the flip it learned phase 1 sooner and ended lower: docs/results.md); "
                                "0 = off", min=0)
    replay: int = option(0, "also learn, at every update, from the last N earlier answers whose follow-up moved "
                         "some token by |A_t| >= replay_gate (a complaint, as the learner reads it), their advantages "
                         "computed afresh (the paper's surrogate on a logged answer): between complaints the policy "
                         "is still pushed towards what the user asked for (an update's metrics include them; on the "
                         "flip replay=1 drove the policy far from the base and it did not re-adapt: docs/results.md); "
                         "0 = off, as in the paper", min=0)
    replay_gate: float = option(0.5, "replay: |A_t| a token must reach for its answer to be replayed", gt=0.0)
    memory: int = option(0, "remember the user's last N follow-ups that moved some token by |A_t| >= memory_gate "
                         "(complaints, as the learner reads them) and put them, oldest first, before the current "
                         "follow-up in the teacher's hindsight block: answers the user let pass are then scored "
                         "against what the user asked for earlier too (an extra teacher forward per update while "
                         "the memory holds something; the signal metrics and the gates read the current follow-up "
                         "alone); 0 = off, as in the paper", min=0)
    memory_gate: float = option(0.5, "memory: |A_t| a token must reach, under the current follow-up alone, for "
                                "the follow-up to be remembered", gt=0.0)
    ratio_clip: float | None = option(None, "PPO-style importance-ratio clip epsilon (pg loss); null = off", gt=0.0)
    aggregation: str = option("token_mean", "how token losses are combined: token_mean and sequence_mean divide "
                              f"an answer's gradient by its length, token_sum (sum / {SUM_TOKENS} tokens) does "
                              "not (SDPO on the flip: docs/results.md)", choices=AGGREGATIONS)
    truncated: str = option("train", "answers cut at policy.max_new_tokens before their EOS: train = learn from "
                            "them like any other; skip = leave them out of the update (DAPO's overlong filtering; "
                            "on the flip, collapses into looping answers begin with cut answers, but skipping them "
                            "does not prevent one: README, 'Learners')", choices=("train", "skip"))
    kl_coef: float = option(0.0, "weight of a KL(policy || base) penalty on the completion positions (a forward "
                            "pass of the base on each update that steps); 0 = off, as in the paper (0.1 keeps every "
                            "seed of a refined tiny model steady on the flip: docs/tiny-model.md, the eleventh round)",
                            min=0.0)
    diagnostics_every: int = option(10, "every N updates also log KL to the base (an extra forward) and entropy "
                                    "(a softmax over the vocabulary); 0 = never", min=0)
    large_advantage: float = option(0.5, "|A_t| above this counts as a large advantage in the metrics", gt=0.0)
    lora_r: int = option(8, "LoRA rank", min=1)
    lora_alpha: float = option(16.0, "LoRA alpha (scaling = alpha / r)", gt=0.0)
    lora_dropout: float = option(0.0, "LoRA dropout", min=0.0, max=1.0)
    lora_targets: str | list[str] = option("all-linear", "modules to adapt: all-linear or a list of names")
    hindsight_template: str = option(DEFAULT_TEMPLATE, "appended to the last user turn; must contain {follow_up}")
    contrast: str | None = option("Thanks.", "a neutral follow-up: the teacher is also run on the same hindsight "
                                  "block holding it, and contrasted with it: log pi(.|x) + log pi(.|x,o) - "
                                  "log pi(.|x,contrast), what the follow-up says beyond a neutral one (see "
                                  "contrast_use; an extra teacher forward per update); null = off, as in the paper "
                                  "(agent=sdpo_plain)", absent=None)
    contrast_clip: float | None = option(3.0, "contrast: hold the log-ratio of the follow-up's block to the neutral "
                                         "one to [-this, this] per token of the vocabulary (where the neutral block "
                                         "gives a token little probability the ratio is unbounded); null = "
                                         "unbounded", gt=0.0, absent=None)
    contrast_use: str = option("guide", "contrast: guide = the contrasted teacher decides which answers pass "
                               "signal_gate and is what the metrics read, and the student learns towards the "
                               "hindsight teacher moved contrast_scale times the contrast's log-ratio further "
                               "(classifier-free guidance of the follow-up on the neutral one; it does not move "
                               "with the student); gate = the same gate, and the student learns towards the plain "
                               "hindsight teacher (agent=sdpo_gate); target = the student learns towards the "
                               "contrasted teacher (its step does not shrink as the student moves: the target "
                               "moves with it, and it breaks down in conversations with history): docs/results.md",
                               choices=("target", "gate", "guide"), absent="target")
    contrast_scale: float = option(0.5, "contrast_use=guide: how many times the log-ratio of the follow-up's "
                                   "block to the neutral one is added to the hindsight teacher (1 broke down on "
                                   "one flip seed of six by 500; 0.5 on none)", gt=0.0, absent=0.5)

    def __post_init__(self) -> None:
        if self.contrast == "":  # how the versions before 6 December 2026 wrote "off" in a run's config.yaml
            self.contrast = None

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if "{follow_up}" not in self.hindsight_template:
            problems.append(("hindsight_template", "must contain {follow_up}"))
        if self.contrast is not None and self.contrast != self.contrast.strip():
            problems.append(("contrast", "no leading or trailing spaces (the follow-up is put in the hindsight "
                                         "block as given)"))
        if self.contrast and self.contrast_use in ("gate", "guide") and not self.signal_gate:
            problems.append(("contrast_use", f"{self.contrast_use} needs signal_gate > 0 (the contrasted teacher "
                                             "is what the gate reads); to learn from every follow-up, turn the "
                                             "contrast off too (agent.contrast=null)"))
        if self.contrast and self.memory:
            problems.append(("contrast", "not with memory (the remembered follow-ups would need a contrast of "
                                         "their own); turn the contrast off (agent.contrast=null) or set memory "
                                         "to 0"))
        for key, off in (("advantage_threshold", 0), ("decay_gate", 0), ("credit", "token")):
            if getattr(self, key) != off and self.loss != "pg":
                problems.append((key, f"applies to loss=pg only (loss={self.loss} learns from the teacher's "
                                      f"logits, not from advantages); set it to {off}, or give loss=pg too "
                                      f"(agent=sdpo_paper has loss=pg by default)"))
        if self.lr * self.weight_decay >= 1:
            problems.append(("weight_decay", f"each step shrinks the LoRA weights by lr x weight_decay = "
                                             f"{self.lr * self.weight_decay:g}, which must be below 1 (with lr="
                                             f"{self.lr:g}, give weight_decay < {1 / self.lr:g})"))
        return problems


@dataclass
class SDPOPaperConfig(SDPOConfig):
    """SDPO stepped as the paper steps it (``agent=sdpo_paper``; ``agent=sdpo``'s defaults until December 2026): the
    sampled-token policy gradient, AdamW, an update on every follow-up. ``lr`` and ``weight_decay`` are the values
    measured for AdamW on the shipped model; it has no contrast (the gate it would read is off); every other option is
    ``agent=sdpo``'s."""

    lr: float = option_like(SDPOConfig, "lr", 1e-3)
    optimizer: str = option_like(SDPOConfig, "optimizer", "adamw")
    weight_decay: float = option_like(SDPOConfig, "weight_decay", 2.0)
    loss: str = option_like(SDPOConfig, "loss", "pg")
    signal_gate: float = option_like(SDPOConfig, "signal_gate", 0.0)
    contrast: str | None = option_like(SDPOConfig, "contrast", None)


@dataclass
class SDPOPlainConfig(SDPOConfig):
    """``agent=sdpo`` without the contrast (``agent=sdpo_plain``; ``agent=sdpo``'s defaults until 6 December 2026):
    the gate and the metrics read the plain hindsight teacher. Every other option is ``agent=sdpo``'s."""

    contrast: str | None = option_like(SDPOConfig, "contrast", None)


@dataclass
class SDPOGateConfig(SDPOConfig):
    """``agent=sdpo`` whose student learns towards the plain hindsight teacher (``agent=sdpo_gate``;
    ``agent=sdpo``'s defaults from the contrast's arrival until ``contrast_use=guide`` on 6 December 2026): the
    contrasted teacher only gates. Every other option is ``agent=sdpo``'s."""

    contrast_use: str = option_like(SDPOConfig, "contrast_use", "gate")


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """Loads an optimizer's saved state but keeps the settings it was built with (lr, betas, weight decay):
    torch's ``load_state_dict`` restores the saved ones, and a branch (``python -m sdpo_env.run branch=...``) may
    have changed them."""
    settings = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, settings, strict=True):
        group.update(kept)


def lora_settings(config: Any) -> LoraSettings:
    """LoRA settings from any learner config with ``lora_*`` fields."""
    return LoraSettings(r=config.lora_r, alpha=config.lora_alpha, dropout=config.lora_dropout,
                        target_modules=config.lora_targets)


@LEARNERS.register("sdpo")
class SDPOLearner:
    """Online SDPO with LoRA updates on the policy.

    Args:
        policy: The policy; a LoRA adapter is added if it has none.
        config: Options.
        seed: The run's seed (generation seeds derive from it).
    """

    Config = SDPOConfig

    def __init__(self, policy: ChatPolicy, config: SDPOConfig, *, seed: int):
        self.policy, self.config, self.seed = policy, config, seed
        if not policy.has_adapter:
            policy.add_lora(lora_settings(config), seed=seed)
        self.params = policy.trainable_parameters()
        # the zero-initialised factor of each LoRA pair, what the adapter has learned (free of A's random start)
        self.up_factors = [layer.lora_B["default"].weight for layer in policy.lora_layers().values()]
        self.decayed = self.params if config.decay_factors == "AB" else self.up_factors
        self.optimizer: torch.optim.Optimizer
        if config.optimizer == "adamw":  # decays inside its step when it decays every weight (apply_step)
            self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, betas=(0.9, config.adam_beta2),
                                               weight_decay=config.weight_decay if self.decays_inside else 0.0)
        else:  # SGD's own weight_decay is an L2 term in the gradient; _step decays the weights as AdamW does
            self.optimizer = torch.optim.SGD(self.params, lr=config.lr)
        self.ema = EmaTeacher(policy, config.ema_decay) if config.teacher == "ema" else None
        self.buffer: collections.deque[Transition] = collections.deque(maxlen=config.batch_size)
        self.replayed: collections.deque[Transition] = collections.deque(maxlen=config.replay)  # signal-bearing
        self.remembered: collections.deque[str] = collections.deque(maxlen=config.memory)  # complaints, oldest first
        self.n_acts = self.n_updates = self.n_skipped = self.since_update = self.n_resamples = 0
        self._ids: dict[str, list[int]] = {}  # response text -> sampled token ids (exact, no re-tokenisation)
        self._warned: set[str] = set()

    # --- acting -------------------------------------------------------------------------------------------------

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        samples = self.policy.generate(conversations, seed=sampling_seed(self.seed, self.n_acts))
        self.n_acts += 1
        for s in samples:
            self._ids[s.text] = s.ids
        return [s.text for s in samples]

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        return [s.text for s in self.policy.generate(conversations, seed=seed)]

    # --- learning -----------------------------------------------------------------------------------------------

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        for t in transitions:
            if not t.follow_up.strip():
                self._warn_once("empty", "an interaction has an empty follow-up: SDPO gets no signal from it")
            self.buffer.append(t)
        self.since_update += len(transitions)
        if self.since_update < self.config.update_every:
            return {}
        self.since_update = 0
        metrics = self.update(list(self.buffer))
        if len(self._ids) > 4 * self.config.batch_size + 64:  # keep ids only for interactions that may still train
            live = {t.response for t in (*self.buffer, *self.replayed)}
            self._ids = {k: v for k, v in self._ids.items() if k in live}
        return metrics

    def _completion_ids(self, response: str) -> list[int]:
        ids = self._ids.get(response)
        return list(ids) if ids else self.policy.encode_completion(response)

    def is_cut(self, response: str) -> bool:
        """Whether this learner sampled ``response`` and generation stopped at the token limit, not at EOS."""
        ids = self._ids.get(response)
        if not ids:
            return False
        return ids[-1] not in self.policy.eos_ids

    def update(self, batch: Sequence[Transition]) -> dict[str, float]:
        """One SDPO update on ``batch``: teacher forward (no grad), student forward/backward, optimizer step."""
        c = self.config
        policy = self.policy
        if c.extra_samples:
            batch = [*batch, *self.resample(batch)]
        replayed = [t for t in self.replayed if t not in batch]
        batch = [*batch, *replayed]
        cut = [self.is_cut(t.response) for t in batch]
        cut_share = sum(cut) / len(batch)
        if c.truncated == "skip" and cut_share:
            batch = [t for t, is_cut in zip(batch, cut) if not is_cut]
            if not batch:
                return {"sdpo/cut_share": cut_share}
        fresh = len(batch) - sum(t in replayed for t in batch)  # the replayed answers come last
        contexts = [policy.encode(t.messages) for t in batch]
        hindsight = [policy.encode(hindsight_messages(t.messages, t.follow_up, template=c.hindsight_template))
                     for t in batch]
        completions = [self._completion_ids(t.response) for t in batch]
        started = time.perf_counter()
        remembered = [self.with_memory(t.follow_up) for t in batch] if self.remembered else None
        with torch.no_grad(), teacher_view(policy, c.teacher, self.ema):
            teacher_logits, targets, mask = policy.completion_logits(hindsight, completions)  # (B, T, V)
            if c.contrast:  # the same block holding a neutral follow-up
                baseline_logits, _, _ = policy.completion_logits(
                    [policy.encode(hindsight_messages(t.messages, c.contrast, template=c.hindsight_template))
                     for t in batch], completions)
            if remembered is not None:  # the teacher the policy learns from; the one above is for the readings
                teacher_logits_read = teacher_logits
                teacher_logits, _, _ = policy.completion_logits(
                    [policy.encode(hindsight_messages(t.messages, o, template=c.hindsight_template))
                     for t, o in zip(batch, remembered)], completions)
        teacher_done = time.perf_counter()
        student_logits, _, _ = policy.completion_logits(contexts, completions)  # (B, T, V), with grad
        student_lp = selective_log_softmax(student_logits, targets)  # (B, T)
        if c.contrast:
            log_ratio = hindsight_log_ratio(teacher_logits=teacher_logits, baseline_logits=baseline_logits,
                                            clip=c.contrast_clip)  # once, for the contrasted and the guided teacher
            contrasted = contrasted_teacher_logits(student_logits=student_logits, log_ratio=log_ratio)
            if c.contrast_use == "target":
                teacher_logits = contrasted
            else:  # the gate and the metrics read the contrasted teacher; the loss learns from the plain or guided one
                teacher_logits_read = contrasted
                if c.contrast_use == "guide":
                    teacher_logits = guided_teacher_logits(teacher_logits=teacher_logits, log_ratio=log_ratio,
                                                           scale=c.contrast_scale)
        teacher_lp = selective_log_softmax(teacher_logits, targets)  # (B, T)
        advantages = token_advantages(teacher_logprobs=teacher_lp, student_logprobs=student_lp, mask=mask)
        raw_advantages = advantages
        if remembered is not None or (c.contrast and c.contrast_use in ("gate", "guide")):
            # the gates, the memory and the metrics read the current follow-up alone (memory) or the contrasted
            # teacher (contrast_use=gate|guide)
            raw_advantages = token_advantages(teacher_logprobs=selective_log_softmax(teacher_logits_read, targets),
                                              student_logprobs=student_lp, mask=mask)
        if c.memory:
            signal = signal_rows(raw_advantages[:fresh], mask[:fresh], c.memory_gate).tolist()
            self.remembered.extend(t.follow_up.strip() for t, carries in zip(batch[:fresh], signal) if carries)
        if c.advantage_threshold:
            advantages = threshold_advantages(advantages, c.advantage_threshold)
        if c.center_advantages:
            advantages = center_advantages(advantages, mask)
        if c.credit == "to_go":
            advantages = rewards_to_go(advantages, mask)
        passed = signal_rows(raw_advantages, mask, c.signal_gate) if c.signal_gate else None  # (B,)
        if c.replay:
            signal = signal_rows(raw_advantages[:fresh], mask[:fresh], c.replay_gate).tolist()
            self.replayed.extend(t for t, carries in zip(batch[:fresh], signal) if carries)
        if c.loss == "pg":  # every loss leaves the answers the gate drops out of the numerator, not the denominator
            loss = policy_gradient_loss(student_logprobs=student_lp, advantages=advantages, mask=mask,
                                        old_logprobs=student_lp.detach() if c.ratio_clip else None,
                                        clip=c.ratio_clip, aggregation=c.aggregation, rows=passed)
        elif c.loss == "topk":
            loss = topk_divergence_loss(student_logits=student_logits, teacher_logits=teacher_logits, mask=mask,
                                        k=c.topk, alpha=c.alpha, aggregation=c.aggregation, rows=passed)
        else:
            loss = full_divergence_loss(student_logits=student_logits, teacher_logits=teacher_logits, mask=mask,
                                        alpha=c.alpha, aggregation=c.aggregation, rows=passed)
        # a gate that passes no answer: no step, no KL forward; a non-finite loss still goes on to be counted and
        # warned about (non-finite advantages pass no gate)
        step = passed is None or bool(passed.any()) or not bool(torch.isfinite(loss))
        kl_to_base = None
        diagnose = step and bool(c.diagnostics_every) and self.n_updates % c.diagnostics_every == 0
        if (c.kl_coef > 0 and step) or diagnose:
            with torch.no_grad(), policy.base_model():
                base_logits, _, _ = policy.completion_logits(contexts, completions)
            kl = divergence(torch.log_softmax(student_logits.float(), -1),
                            torch.log_softmax(base_logits.float(), -1), 1.0)  # (B, T) KL(policy || base)
            kl_mean = (kl * mask).sum() / mask.sum()
            kl_to_base = kl_mean.item()
            if c.kl_coef > 0:
                loss = loss + c.kl_coef * kl_mean
        decay = c.decay_gate == 0 or bool(signal_rows(raw_advantages, mask, c.decay_gate).any())
        if step:
            metrics = self._step(loss, batch, decay=decay)
        else:  # no answer carries a signal: no step; the optimizer's state stays as it is
            if c.gate_decay:
                self.decay_weights()
            metrics = {"sdpo/skipped_updates": float(self.n_skipped)}
        if passed is not None:
            metrics["sdpo/signal_passed"] = passed.float().mean().item()
        done = time.perf_counter()
        n_tokens = mask.sum().clamp(min=1)
        abs_adv = raw_advantages.abs()
        metrics.update({
            "sdpo/loss": loss.item(),
            "sdpo/advantage_mean": (raw_advantages.sum() / n_tokens).item(),
            "sdpo/advantage_abs_mean": (abs_adv.sum() / n_tokens).item(),
            "sdpo/advantage_sum_mean": (raw_advantages.sum(-1)).mean().item(),
            "sdpo/large_advantage_share": ((abs_adv > c.large_advantage).float() * mask).sum().item() / n_tokens.item(),
            "sdpo/completion_tokens": n_tokens.item() / len(batch),
            "sdpo/answers": float(len(batch)),  # learned from: with batch_size, extra_samples, replay, more than one
            "sdpo/cut_share": cut_share,  # of the answers given to this update, before truncated=skip drops them
            "time/teacher_s": teacher_done - started,
            "time/student_and_step_s": done - teacher_done,
        })
        for flag in (True, False):  # hindsight sensitivity, split by whether the follow-up was relevant
            rows = [i for i, t in enumerate(batch) if t.info.get("relevant") is flag]
            if rows:
                per_row = (abs_adv[rows].sum(-1) / mask[rows].sum(-1).clamp(min=1)).mean().item()
                metrics[f"sdpo/advantage_abs_mean_{'relevant' if flag else 'unrelated'}"] = per_row
        if kl_to_base is not None:
            metrics["sdpo/kl_to_base"] = kl_to_base
        if c.memory:
            metrics["sdpo/remembered"] = float(len(self.remembered))
        if diagnose:
            with torch.no_grad():
                log_probs = torch.log_softmax(student_logits.float(), -1)  # (B, T, V)
                entropy = -(log_probs.exp() * log_probs).sum(-1)  # (B, T)
            metrics["sdpo/entropy"] = ((entropy * mask).sum() / n_tokens).item()
        return metrics

    def with_memory(self, follow_up: str) -> str:
        """The follow-up the teacher sees with ``memory``: the remembered ones, oldest first, then ``follow_up``."""
        return "\n".join([*self.remembered, follow_up.strip()])

    def resample(self, batch: Sequence[Transition]) -> list[Transition]:
        """``extra_samples`` new answers to each interaction's prompt, each paired with that interaction's follow-up.

        The follow-up reacted to the answer the user saw, but the hindsight policy conditions on the prompt and the
        follow-up only, so any answer the policy samples for the prompt is scored against the same teacher.
        """
        sources = [t for t in batch for _ in range(self.config.extra_samples)]
        samples = self.policy.generate([t.messages for t in sources],
                                       seed=sampling_seed(self.seed, RESAMPLE_STREAM + self.n_resamples))
        self.n_resamples += 1
        for s in samples:
            self._ids[s.text] = s.ids
        return [dataclasses.replace(t, response=s.text) for t, s in zip(sources, samples)]

    def _step(self, loss: torch.Tensor, batch: Sequence[Transition], *, decay: bool = True) -> dict[str, float]:
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            self.n_skipped += 1
            warnings.warn(f"SDPO update {self.n_updates} skipped: non-finite loss ({loss.item()}); "
                          f"{self.n_skipped} skipped so far", RuntimeWarning, stacklevel=3)
            return {"sdpo/skipped_updates": float(self.n_skipped)}
        loss.backward()
        clip = self.config.grad_clip if self.config.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            self.n_skipped += 1
            warnings.warn(f"SDPO update {self.n_updates} skipped: non-finite gradient", RuntimeWarning, stacklevel=3)
            return {"sdpo/skipped_updates": float(self.n_skipped)}
        unlearned = 0.0
        if self.config.unlearn:  # as much as the gradient is large: a thank-you forgets next to nothing
            share = self.config.unlearn * min(1.0, grad_norm / clip if math.isfinite(clip) else 1.0)
            grads = [w.grad if w.grad is not None else torch.zeros_like(w) for w in self.up_factors]
            unlearned = unlearn_along_gradient(self.up_factors, grads, share)
        self.apply_step(decay=decay)
        if self.ema is not None:
            self.ema.step()
        self.n_updates += 1
        return {"sdpo/grad_norm": grad_norm, "sdpo/skipped_updates": float(self.n_skipped),
                **({"sdpo/unlearned": unlearned} if self.config.unlearn else {})}

    def apply_step(self, *, decay: bool = True) -> None:
        """The optimizer's step on the gradients there are, then SGD's weight decay (decoupled, as AdamW's).

        Args:
            decay: False takes the step without the weight decay.
        """
        if self.decays_inside:
            for group in self.optimizer.param_groups:
                group["weight_decay"] = self.config.weight_decay if decay else 0.0
        elif self.config.optimizer == "adamw" and decay:  # as AdamW's own decay: before the step
            self.decay_weights()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.config.optimizer == "sgd" and decay:
            self.decay_weights()

    @property
    def decays_inside(self) -> bool:
        """AdamW applies the weight decay in its step (it decays every weight it trains)."""
        return self.config.optimizer == "adamw" and self.config.decay_factors == "AB"

    def decay_weights(self) -> None:
        """Shrinks the decayed LoRA weights by ``lr x weight_decay``: the decoupled weight decay of an AdamW step."""
        if self.config.weight_decay > 0:
            with torch.no_grad():
                torch._foreach_mul_(list[torch.Tensor](self.decayed), 1 - self.config.lr * self.config.weight_decay)

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, RuntimeWarning, stacklevel=3)

    # --- resume -------------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        return {
            "adapter": self.policy.adapter_state(),
            "optimizer": self.optimizer.state_dict(),
            "buffer": [t.to_dict() for t in self.buffer],
            "replayed": [t.to_dict() for t in self.replayed],
            "remembered": list(self.remembered),
            "ids": dict(self._ids),
            "counters": {"n_acts": self.n_acts, "n_updates": self.n_updates, "n_skipped": self.n_skipped,
                         "since_update": self.since_update, "n_resamples": self.n_resamples},
            "ema": self.ema.state_dict() if self.ema is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_adapter_state(state["adapter"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.buffer.clear()
        self.buffer.extend(Transition.from_dict(t) for t in state["buffer"])
        self.replayed.clear()
        self.replayed.extend(Transition.from_dict(t) for t in state.get("replayed", []))
        self.remembered.clear()
        self.remembered.extend(state.get("remembered", []))
        self._ids = dict(state["ids"])
        for key, value in state["counters"].items():
            setattr(self, key, value)
        if self.ema is not None and state["ema"] is not None:
            self.ema.load_state_dict(state["ema"])


@LEARNERS.register("sdpo_paper")
class SDPOPaperLearner(SDPOLearner):
    """SDPO with the paper's estimator and optimiser (:class:`SDPOPaperConfig`): ``agent=sdpo_paper``."""

    Config = SDPOPaperConfig


@LEARNERS.register("sdpo_plain")
class SDPOPlainLearner(SDPOLearner):
    """SDPO whose gate reads the plain hindsight teacher (:class:`SDPOPlainConfig`): ``agent=sdpo_plain``."""

    Config = SDPOPlainConfig


@LEARNERS.register("sdpo_gate")
class SDPOGateLearner(SDPOLearner):
    """SDPO that learns towards the plain hindsight teacher, gated by the contrasted one (:class:`SDPOGateConfig`):
    ``agent=sdpo_gate``."""

    Config = SDPOGateConfig
