"""Measures what SDPO needs from the tiny model (the acceptance figures of the embedded default).

    python -m sdpo_env.tiny.probe                      # the default policy, tiny-v3 (the 1:3 mean of the two below)
    python -m sdpo_env.tiny.probe --model tiny         # the first shipped checkpoint (the default until Dec 2026)
    python -m sdpo_env.tiny.probe --model tiny-v2      # its shipped refinement
    python -m sdpo_env.tiny.probe --model DIR --n 256 --seed 0

Figures on held-out (eval-pool) prompts, sampling at temperature 1, except the signal (``--prompts train`` measures
them on the interaction prompts instead):
- room: share of samples satisfying each persona preference without hindsight (wanted: 20-80%; the preferences
  cover both directions of the length, tone, level, emoji and list axes);
- hindsight: share of samples that satisfy a complaint in the hindsight block, per persona preference (>= 90%),
  with the count (``115/128``: two decimals would show 0.90) and how many preferences meet the target;
- unrelated: largest change of any style share when the hindsight block carries an unrelated follow-up (<= 10 pts),
  with its standard error and the largest change sampling alone gives a model that does not change (about 0.09 at
  the default ``--n 256``; ``--n 1024`` halves it);
- signal: mean |A_t| for relevant vs unrelated follow-ups (ratio >= 5), share of relevant complaints whose summed
  advantage is negative (>= 90%), on the interaction (train-pool) prompts: every shipped scenario's users send
  those, so SDPO computes every advantage on them. The same figures on held-out prompts are reported next to them.
  The corpus never holds those questions, and an unrelated follow-up moves the model's next-token choices there
  about 3-4 times more per token, so the ratio is lower. And on a second turn (reported): each interaction prompt's
  answer followed by a complaint about a preference it breaks, as the ``multiturn`` scenario's user continues a
  conversation, then the model's answer to that, scored as above;
- oracle: share of samples that satisfy every check of a persona given its profile as system prompt (>= 85%);
- fluency: share of well-formed samples: ended by EOS within 192 tokens, at least 5 words, no loop (>= 97%).

``--adapter RUN_FOLDER`` measures a run's final policy instead (its LoRA adapter merged into the model the run
trained, read from its config.yaml): how far the policy moved, and whether, as its own hindsight teacher, it still
follows complaints. With ``--at T`` it measures the policy the run kept after ``T`` interactions instead (a persona
change, ``<run>/snapshots/t<T>.pt``): at a flip, whether the policy adapted to the old user still follows the new
user's complaints in context, which is what its live teacher needs.

``--per-phrasing K`` adds the hindsight figure per phrasing: K samples for each follow-up of each preference, and
the table lists the phrasings followed in under 90% of them (a preference's misses often sit in a few phrasings),
each next to its preference's share without hindsight (``none``, from the room figure) and how it compares:
``ignored`` (within two standard errors of it: the model answers as if the follow-up said nothing about the style),
``reversed`` (under it: the complaint pushes the other way), ``partly`` (above it, short of 90%) or ``unclear``
(too few answers to tell ignored from followed).

``--persona NAME_OR_PATH`` (repeatable) checks a persona's follow-ups instead of measuring the acceptance figures: per
preference with a rule, the share of ``--n`` answers without hindsight that satisfy it, and each follow-up's share of
``--per-phrasing`` answers (default 32) with the same reading. Next to it, on the answers without hindsight that break
the preference, what an update would learn from the follow-up: mean |A_t|, the share whose summed advantage is negative
and the share in which some token moves by ``agent=sdpo``'s gate (0.3) or more, against one of the persona's unrelated
follow-ups on the same answers. These read the plain hindsight teacher, as ``agent=sdpo_plain``'s gate does;
``agent=sdpo``'s gate reads it contrasted with "Thanks.". SDPO's teacher is the policy reading the follow-up, so an
ignored follow-up teaches nothing and a reversed one teaches the opposite: check a new persona's wordings against the
policy model before running it (``--prompts train``: on the prompts the shipped scenarios' users send). Last, per
preference, its follow-ups' answers on the persona's other preferences, next to their shares without hindsight: a
complaint about one preference that also moves another teaches that move too.

``--json PATH`` writes the figures of either mode, with the options as given, to a JSON file as well.
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft import PeftModel
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sdpo_env import decoding
from sdpo_env.errors import SdpoEnvError, ValidationError
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.personas import Persona, Preference, load_persona
from sdpo_env.prompts import Prompt, load_prompts
from sdpo_env.runfolder import RunFolder, write_json
from sdpo_env.tiny import DEFAULT_MODEL, model_folder_problem, resolve_model_path
from sdpo_env.tiny.corpus import personas

MAX_NEW_TOKENS = 192
SIGNAL_GATE = 0.3  # agent=sdpo's default signal_gate: it learns from answers whose follow-up moves a token this much
Messages = list[dict[str, str]]
TARGETS = {"room_min": 0.20, "room_max": 0.80, "hindsight_min": 0.90, "unrelated_max_shift": 0.10,
           "signal_ratio_min": 5.0, "signal_negative_min": 0.90, "oracle_min": 0.85, "fluency_min": 0.97}


def adapter_folder(path: str | Path) -> Path:
    """A peft adapter folder, or a run folder's ``adapter/`` (the final policy of a run)."""
    path = Path(path)
    for folder in (path, path / "adapter"):
        if (folder / "adapter_config.json").is_file():
            return folder
    raise SdpoEnvError(f"--adapter {path}: no adapter_config.json there or in {path / 'adapter'}; give a run folder "
                       "(a finished run saves its adapter in <run>/adapter) or a peft adapter folder")


def trained_model(run: Path) -> str | None:
    """The model a run folder's run trained (``policy.model`` in its config.yaml; None if the file names none)."""
    model = RunFolder(run).read_config().get("policy", {}).get("model")
    return resolve_model_path(str(model)) if model is not None else None


class Sampler:
    """Batched sampling and per-token log-probs of a causal LM with a chat template (``tiny``: the shipped one)."""

    def __init__(self, model_dir: str, device: str = "cpu", batch_size: int = 64, adapter: str | Path | None = None):
        model_dir = resolve_model_path(model_dir)  # --model tiny, as policy.model=tiny
        self.tokenizer: PreTrainedTokenizerBase = AutoTokenizer.from_pretrained(model_dir)
        self.model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if adapter is not None:
            self.model = PeftModel.from_pretrained(self.model, adapter_folder(adapter)).merge_and_unload()
        self.model.to(device).eval()  # type: ignore[arg-type]  # transformers types .to() as a model decorator
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.sampled: Callable[[int], None] = lambda k: None  # told how many answers each batch sampled

    def _prompt_ids(self, messages: Messages) -> list[int]:
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def generate(self, conversations: Sequence[Messages]) -> list[tuple[str, bool]]:
        """One sample per conversation: (text, ended with EOS)."""
        out: list[tuple[str, bool]] = []
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        for start in range(0, len(conversations), self.batch_size):
            prompts = [self._prompt_ids(m) for m in conversations[start : start + self.batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)  # (B, T) left pad
            mask = (torch.arange(width, device=self.device)[None] >= torch.tensor(
                [width - len(p) for p in prompts], device=self.device)[:, None]).long()
            gen = decoding.generate_ids(self.model, ids, mask, max_new_tokens=MAX_NEW_TOKENS, eos_ids=[eos],
                                        pad_id=pad, temperature=1.0, top_k=0, top_p=1.0)
            for row in gen[:, width:].tolist():
                ended = eos in row
                tokens = row[: row.index(eos)] if ended else row
                out.append((str(self.tokenizer.decode(tokens, skip_special_tokens=True)), ended))
            self.sampled(len(prompts))
        return out

    @torch.no_grad()
    def token_logprobs(self, conversations: Sequence[Messages], answers: Sequence[str]) -> list[np.ndarray]:
        """log pi(y_t | x, y_<t) for each answer token and the closing EOS, one array per conversation."""
        out: list[np.ndarray] = []
        for start in range(0, len(conversations), self.batch_size):
            rows = []
            for messages, answer in zip(conversations[start : start + self.batch_size],
                                        answers[start : start + self.batch_size]):
                answer_ids = self.tokenizer(answer, add_special_tokens=False)["input_ids"] + [
                    self.tokenizer.eos_token_id]
                rows.append((self._prompt_ids(messages), answer_ids))
            width = max(len(p) + len(a) for p, a in rows)
            ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, device=self.device)  # (B, T)
            mask = torch.zeros_like(ids)
            for i, (p, a) in enumerate(rows):
                ids[i, : len(p) + len(a)] = torch.tensor(p + a)
                mask[i, : len(p) + len(a)] = 1
            logp = torch.log_softmax(self.model(input_ids=ids, attention_mask=mask).logits.float(), -1)  # (B, T, V)
            for i, (p, a) in enumerate(rows):
                positions = torch.arange(len(p) - 1, len(p) + len(a) - 1, device=self.device)
                out.append(logp[i, positions, torch.tensor(a, device=self.device)].cpu().numpy())
        return out


def well_formed(text: str, ended: bool) -> bool:
    """Ended by EOS, at least five words, and no sentence or 6-word run repeated (a loop)."""
    words = text.split()
    if not ended or len(words) < 5:
        return False
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n", text) if len(s.split()) >= 5]
    if len(sentences) != len(set(sentences)):
        return False
    grams = [" ".join(words[i : i + 6]) for i in range(len(words) - 5)]
    return all(grams.count(g) < 3 for g in set(grams))


def shares(texts: Sequence[str]) -> dict[str, float]:
    """Share of ``texts`` that satisfy each persona preference (both directions of an axis are preferences)."""
    return {name: float(np.mean([pref.satisfied_by(t) for t in texts])) for name, pref in preferences().items()}


def preferences() -> dict[str, Preference]:
    """Every distinct persona preference (by name) the shipped personas check."""
    found: dict[str, Preference] = {}
    for persona in personas():
        for pref in persona.preferences:
            found.setdefault(pref.name, pref)
    return found


def probe(model_dir: str | None = None, *, n: int = 256, n_per_complaint: int = 32, n_triples: int = 200,
          n_per_persona: int = 16, n_per_phrasing: int = 0, seed: int = 0, device: str = "cpu",
          batch_size: int = 64, prompt_pool: str = "eval", adapter: str | Path | None = None) -> dict:
    """Runs every measurement; returns the figures (see the module docstring) and whether each meets its target.

    ``prompt_pool`` is the pool the figures other than the interaction signal are measured on (``"eval"``: held out;
    ``"train"``: the interaction prompts). ``adapter``: a LoRA adapter (or a run folder holding one) merged into the
    model first, so the figures are those of a trained policy (and of that policy as its own hindsight teacher)."""
    sampler = Sampler(model_dir or DEFAULT_MODEL, device, batch_size, adapter)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prompts = load_prompts(prompt_pool)

    def draw(k: int, pool: Sequence[Prompt] = prompts) -> list[Messages]:
        return _draw(pool, k, rng)

    total = (4 * n + len(preferences()) * n_per_complaint + len(personas()) * n_per_persona
             + sum(len(p.follow_ups) for p in preferences().values()) * n_per_phrasing)
    with _progress(total) as stage:
        sampler.sampled = stage.advance
        return _measure(sampler, draw, n, n_per_complaint, n_triples, n_per_persona, n_per_phrasing, rng,
                        prompt_pool, stage)


def _draw(pool: Sequence[Prompt], k: int, rng: np.random.Generator) -> list[Messages]:
    """``k`` conversations drawn from ``pool`` with replacement (copies: hindsight blocks are added to them)."""
    return [[dict(m) for m in pool[int(i)].messages] for i in rng.integers(len(pool), size=k)]


class _Stage:
    """A progress bar's hooks: called with a stage's name, ``advance(k)`` after k answers."""

    def __init__(self, bar: Progress, total: int):
        self.bar, self.task = bar, bar.add_task("answers sampled", total=total)

    def __call__(self, stage: str) -> None:
        self.bar.update(self.task, description=stage)

    def advance(self, k: int) -> None:
        self.bar.advance(self.task, k)


@contextmanager
def _progress(total: int) -> Iterator[_Stage]:
    """A transient progress bar on stderr over ``total`` sampled answers."""
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=True) as bar:
        yield _Stage(bar, total)


def _measure(sampler: Sampler, draw: Callable[..., list[Messages]], n: int, n_per_complaint: int, n_triples: int,
             n_per_persona: int, n_per_phrasing: int, rng: np.random.Generator, prompt_pool: str,
             stage: Callable[[str], None]) -> dict:
    """The measurements of :func:`probe`, in the order that fixes each seed's draws; ``stage`` names each one."""
    unrelated_pool = personas()[0].unrelated_pool
    stage("room: answers without hindsight")
    base_convs = draw(n)
    base = sampler.generate(base_convs)
    fluent = [well_formed(t, e) for t, e in base]
    room = shares([t for t, _ in base])

    unrelated_convs = [hindsight_messages(c, unrelated_pool[int(rng.integers(len(unrelated_pool)))])
                       for c in base_convs]
    stage("unrelated follow-ups")
    unrelated = sampler.generate(unrelated_convs)
    fluent += [well_formed(t, e) for t, e in unrelated]
    shifted = shares([t for t, _ in unrelated])
    shift = {k: shifted[k] - room[k] for k in room}

    followed: dict[str, int] = {}  # answers that satisfy the complaint, of n_per_complaint
    for name, pref in preferences().items():
        stage(f"hindsight: {name}")
        convs = [hindsight_messages(c, pref.follow_ups[int(rng.integers(len(pref.follow_ups)))])
                 for c in draw(n_per_complaint)]
        samples = sampler.generate(convs)
        fluent += [well_formed(t, e) for t, e in samples]
        followed[name] = sum(pref.satisfied_by(t) for t, _ in samples)
    hindsight = {name: k / n_per_complaint for name, k in followed.items()}

    oracle: dict[str, float] = {}
    for persona in personas():
        stage(f"oracle: {persona.name}")
        convs = [[{"role": "system", "content": persona.profile}, *c] for c in draw(n_per_persona)]
        samples = sampler.generate(convs)
        fluent += [well_formed(t, e) for t, e in samples]
        oracle[persona.name] = float(np.mean([all(persona.satisfaction(t).values()) for t, _ in samples]))

    stage("signal: held-out prompts")
    held_out_signal = _signal(sampler, base_convs, [t for t, _ in base], n_triples, rng, unrelated_pool)
    # the signal where SDPO computes it: every shipped scenario's users send the train pool's prompts (drawn last,
    # so the other figures stay as they were for a seed)
    stage("signal: interaction prompts")
    interaction_convs = draw(n, load_prompts("train"))
    interaction = sampler.generate(interaction_convs)
    signal = _signal(sampler, interaction_convs, [t for t, _ in interaction], n_triples, rng, unrelated_pool)
    figures: dict[str, Any] = {
        "room": room, "unrelated_shift": shift, "hindsight": hindsight, "hindsight_followed": followed,
        "n_per_complaint": n_per_complaint, "oracle": oracle, "signal": signal,
        "signal_held_out": held_out_signal,
        "room_min": min(room.values()),
        "unrelated_max_shift": max(abs(v) for v in shift.values()),
        "hindsight_min": min(hindsight.values()),
        "oracle_mean": float(np.mean(list(oracle.values()))),
        "fluency": float(np.mean(fluent)), "n_samples": len(fluent), "prompts": prompt_pool, "n": n,
    }
    figures["room_max"] = max(room.values())
    if n_per_phrasing:  # drawn last, so the other figures stay as they were for a seed
        stage("hindsight per phrasing")
        figures["phrasings"] = {
            name: _phrasing_shares(sampler, pref, draw(n_per_phrasing * len(pref.follow_ups)))
            for name, pref in preferences().items()}
        figures["n_per_phrasing"] = n_per_phrasing
    # the signal on a second turn, as the multiturn scenario's live teacher computes it (drawn after everything else,
    # so the other figures stay as they were for a seed)
    stage("signal: conversations with history")
    history = _continued(interaction_convs, [t for t, _ in interaction], rng)
    figures["signal_history"] = _signal(sampler, history, [t for t, _ in sampler.generate(history)], n_triples, rng,
                                        unrelated_pool)
    figures["pass"] = verdicts(figures)
    return figures


def _continued(convs: list[Messages], answers: list[str], rng: np.random.Generator) -> list[Messages]:
    """Each conversation continued as a multi-turn user continues it: the answer, then a complaint about a
    preference of a random persona that the answer breaks (any of the persona's, if it breaks none)."""
    pool, out = personas(), []
    for conv, answer in zip(convs, answers):
        persona = pool[int(rng.integers(len(pool)))]
        broken = [p for p in persona.preferences if not p.satisfied_by(answer)] or list(persona.preferences)
        pref = broken[int(rng.integers(len(broken)))]
        complaint = pref.follow_ups[int(rng.integers(len(pref.follow_ups)))]
        out.append([*conv, {"role": "assistant", "content": answer}, {"role": "user", "content": complaint}])
    return out


def _phrasing_shares(sampler: Sampler, pref: Preference, convs: list[Messages]) -> dict[str, float]:
    """Share of samples that satisfy ``pref`` per follow-up phrasing; ``convs`` holds an equal number per phrasing."""
    return _per_phrasing(pref, _phrasing_answers(sampler, pref, convs))


def _phrasing_answers(sampler: Sampler, pref: Preference, convs: list[Messages]) -> list[str]:
    """One sample per conversation with one of ``pref``'s follow-ups in the hindsight block, the same number per
    follow-up (``convs`` holds that many per follow-up), in the order of ``pref.follow_ups``."""
    k = len(convs) // len(pref.follow_ups)
    phrasings = [f for f in pref.follow_ups for _ in range(k)]
    return [t for t, _ in sampler.generate([hindsight_messages(c, f) for c, f in zip(convs, phrasings)])]


def _per_phrasing(pref: Preference, answers: Sequence[str]) -> dict[str, float]:
    """Share of :func:`_phrasing_answers`' ``answers`` that satisfy ``pref``, per follow-up."""
    followed = np.array([pref.satisfied_by(t) for t in answers], dtype=float).reshape(len(pref.follow_ups), -1)
    return {f: float(share) for f, share in zip(pref.follow_ups, followed.mean(1))}


def check_phrasings(chosen: Sequence[Persona], model_dir: str | None = None, *, n: int = 256, per_phrasing: int = 32,
                    seed: int = 0, device: str = "cpu", batch_size: int = 64, prompt_pool: str = "eval",
                    adapter: str | Path | None = None, gate: float = SIGNAL_GATE) -> list[dict]:
    """Whether a model follows each complaint of each persona in ``chosen`` in its hindsight block, and what SDPO
    would learn from it (``probe --persona``).

    The live teacher of SDPO is the policy reading the follow-up, so a phrasing the model ignores carries no learning
    signal, and one it reverses teaches the opposite. Per preference with a rule:
    - ``none``: the share of ``n`` answers without hindsight that satisfy it (the same answers for every persona);
    - ``phrasings``: per follow-up, the share of ``per_phrasing`` answers with it in the hindsight block that do,
      read by :func:`phrasing_reading`;
    - ``others``: per other preference of the persona with a rule, the share of all those answers (every follow-up
      of this preference) that satisfy it, to read against its own ``none``: whether a complaint about this
      preference also moves the others (the hindsight teacher would then teach that move too);
    - ``signal``: per follow-up, on up to ``per_phrasing`` of the answers without hindsight that break the
      preference, the token advantages A_t = log pi(y_t | x, o) - log pi(y_t | x) an update would learn from: mean
      |A_t| (``abs``), the share whose summed advantage is negative (``negative``: the teacher finds the answer less
      likely, as a complaint should) and the share in which some token moves by ``gate`` or more (``moves``:
      ``agent=sdpo_plain``'s gate learns from those only; ``agent=sdpo``'s reads the contrasted teacher);
      ``unrelated`` holds the same for one of the persona's unrelated follow-ups drawn per answer, the level of a
      follow-up that says nothing.
    Preferences without a rule (an LLM judge's) are listed as not measured. One figures dict per persona.
    """
    sampler = Sampler(model_dir or DEFAULT_MODEL, device, batch_size, adapter)
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    prompts = load_prompts(prompt_pool)
    checked = [[pref for pref in persona.preferences if pref.checkable] for persona in chosen]
    out = []
    with _progress(n + per_phrasing * sum(len(p.follow_ups) for prefs in checked for p in prefs)) as stage:
        sampler.sampled = stage.advance
        stage("answers without hindsight")
        base_convs = _draw(prompts, n, rng)
        base = [t for t, _ in sampler.generate(base_convs)]
        for persona, prefs in zip(chosen, checked):
            found: dict[str, dict] = {}
            for pref in prefs:
                stage(f"{persona.name}: follow-ups of {pref.name}")
                convs = _draw(prompts, per_phrasing * len(pref.follow_ups), rng)
                answers = _phrasing_answers(sampler, pref, convs)
                broken = [i for i, t in enumerate(base) if t.strip() and not pref.satisfied_by(t)][:per_phrasing]
                xs, ys = [base_convs[i] for i in broken], [base[i] for i in broken]
                plain = sampler.token_logprobs(xs, ys)
                pool = persona.unrelated_pool  # the persona's own, as its user sends them
                unrelated = [pool[int(i)] for i in rng.integers(len(pool), size=len(xs))]
                found[pref.name] = {
                    "none": float(np.mean([pref.satisfied_by(t) for t in base])),
                    "phrasings": _per_phrasing(pref, answers),
                    "others": {other.name: float(np.mean([other.satisfied_by(t) for t in answers]))
                               for other in prefs if other is not pref},
                    "n_broken": len(xs),
                    "signal": {o: _advantage_figures(_advantages(sampler, xs, ys, [o] * len(xs), plain), gate)
                               for o in pref.follow_ups} if xs else {},
                    "unrelated": _advantage_figures(_advantages(sampler, xs, ys, unrelated, plain), gate)
                                 if xs else None,
                }
            out.append({"persona": persona.name, "source": persona.source, "n": n, "n_per_phrasing": per_phrasing,
                        "prompts": prompt_pool, "gate": gate, "preferences": found,
                        "unchecked": [pref.name for pref in persona.preferences if not pref.checkable]})
    return out


def phrasings_table(figures: dict) -> str:
    """:func:`check_phrasings`' figures, weakest phrasing first within each preference, and a count of readings."""
    n, k, gate = figures["n"], figures["n_per_phrasing"], figures["gate"]
    lines = [f"persona {figures['persona']} ({figures['source']}): {n} answers without hindsight, {k} per follow-up, "
             f"{'held-out' if figures['prompts'] == 'eval' else 'interaction'} prompts",
             f"  followed: share of answers with the follow-up in the hindsight block that satisfy the preference; "
             f"|A|, A<0, moves: on answers without hindsight that break it, mean |A_t|, share with summed A < 0, "
             f"share with some |A_t| >= {gate:g}"]
    readings: dict[str, int] = {}
    for name, found in figures["preferences"].items():
        lines.append(f"  {name}: satisfied without hindsight {found['none']:.2f}; {found['n_broken']} answers break "
                     f"it" + ("" if found["unrelated"] is None else
                              f"; an unrelated follow-up: {_signal_cells(found['unrelated'])}"))
        lines.append(f"    {'followed':>8}  {'reading':<8}  {'|A|':>5} {'A<0':>4} {'moves':>5}  follow-up")
        for text, share in sorted(found["phrasings"].items(), key=lambda kv: kv[1]):
            reading = phrasing_reading(share, found["none"], k, n)
            readings[reading] = readings.get(reading, 0) + 1
            cells = _signal_cells(found["signal"][text]) if text in found["signal"] else f"{'-':>5} {'-':>4} {'-':>5}"
            lines.append(f"    {share:>8.2f}  {reading:<8}  {cells}  {text!r}")
        if found["others"]:  # none for a persona with a single rule
            lines.append("    its follow-ups' answers on the other preferences (without hindsight): " + ", ".join(
                f"{other} {share:.2f} ({figures['preferences'][other]['none']:.2f})"
                for other, share in found["others"].items()))
    lines += [f"  {name}: no rule (judged by an LLM only), not measured" for name in figures["unchecked"]]
    total = sum(readings.values())
    lines.append(f"follow-ups: {total}; " + ", ".join(
        f"{readings.get(r, 0)} {r}" for r in ("followed", "partly", "unclear", "ignored", "reversed"))
        + f" (followed: in {TARGETS['hindsight_min']:.2f} or more of the answers)")
    return "\n".join(lines)


def _signal_cells(signal: dict[str, float]) -> str:
    return f"{signal['abs']:>5.3f} {signal['negative']:>4.2f} {signal['moves']:>5.2f}"


def verdicts(figures: dict) -> dict[str, bool]:
    """Whether each acceptance figure of ``probe`` meets its target (``TARGETS``), one verdict per figure."""
    signal = figures["signal"]
    return {
        "room": TARGETS["room_min"] <= figures["room_min"] and figures["room_max"] <= TARGETS["room_max"],
        "hindsight": figures["hindsight_min"] >= TARGETS["hindsight_min"],
        "unrelated": figures["unrelated_max_shift"] <= TARGETS["unrelated_max_shift"],
        "signal_ratio": signal["ratio"] >= TARGETS["signal_ratio_min"],
        "signal_negative": signal["relevant_negative"] >= TARGETS["signal_negative_min"],
        "oracle": figures["oracle_mean"] >= TARGETS["oracle_min"],
        "fluency": figures["fluency"] >= TARGETS["fluency_min"],
    }


def _signal(sampler: Sampler, convs: list[Messages], answers: list[str], n_triples: int, rng: np.random.Generator,
            unrelated_pool: Sequence[str]) -> dict[str, float]:
    """Token advantages A_t = log pi(y_t | x, o) - log pi(y_t | x) for relevant and unrelated follow-ups o."""
    triples: list[tuple[Messages, str, str, str]] = []  # (x, y, relevant o, unrelated o)
    pool = personas()
    for _ in range(50 * n_triples):
        if len(triples) == n_triples:
            break
        i = int(rng.integers(len(convs)))
        persona = pool[int(rng.integers(len(pool)))]
        violated = [p for p in persona.preferences if not p.satisfied_by(answers[i])]
        if violated and answers[i].strip():
            pref = violated[int(rng.integers(len(violated)))]
            triples.append((convs[i], answers[i], pref.follow_ups[int(rng.integers(len(pref.follow_ups)))],
                            unrelated_pool[int(rng.integers(len(unrelated_pool)))]))
    xs = [x for x, _, _, _ in triples]
    ys = [y for _, y, _, _ in triples]
    plain = sampler.token_logprobs(xs, ys)
    rel = _advantage_figures(_advantages(sampler, xs, ys, [o for _, _, o, _ in triples], plain))
    unr = _advantage_figures(_advantages(sampler, xs, ys, [u for _, _, _, u in triples], plain))
    return {"n_triples": len(triples), "abs_relevant": rel["abs"], "abs_unrelated": unr["abs"],
            "ratio": rel["abs"] / max(unr["abs"], 1e-9),
            "relevant_negative": rel["negative"], "unrelated_negative": unr["negative"]}


def _advantages(sampler: Sampler, xs: Sequence[Messages], ys: Sequence[str], follow_ups: Sequence[str],
                plain: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per answer, A_t = log pi(y_t | x, o) - log pi(y_t | x) with its follow-up ``o`` in the hindsight block;
    ``plain`` holds the answers' log-probs without it."""
    scored = sampler.token_logprobs([hindsight_messages(x, o) for x, o in zip(xs, follow_ups)], ys)
    return [h - p for h, p in zip(scored, plain)]


def _advantage_figures(advantages: Sequence[np.ndarray], gate: float = SIGNAL_GATE) -> dict[str, float]:
    """Over the answers: mean |A_t| (``abs``), the share whose summed advantage is negative (``negative``) and the
    share in which some token moves by ``gate`` or more (``moves``)."""
    return {"abs": float(np.mean([np.abs(a).mean() for a in advantages])),
            "negative": float(np.mean([a.sum() < 0 for a in advantages])),
            "moves": float(np.mean([np.abs(a).max() >= gate for a in advantages]))}


def table(figures: dict) -> str:
    """The figures as a plain-text table."""
    ok = {True: "ok", False: "MISS"}
    lines = [f"{'figure':<44}{'value':>10}  target"]
    lines += [f"  room {k:<37}{v:>10.2f}  0.20-0.80" for k, v in figures["room"].items()]
    lines += [f"  hindsight {k:<32}{v:>10.2f}  >= 0.90{_followed(figures, k)}"
              for k, v in figures["hindsight"].items()]
    lines += [f"  unrelated shift {k:<26}{v:>+10.2f}  |x| <= 0.10" for k, v in figures["unrelated_shift"].items()]
    lines += [f"  oracle {k:<35}{v:>10.2f}" for k, v in figures["oracle"].items()]
    weak = sorted((share, name, text) for name, shares in figures.get("phrasings", {}).items()
                  for text, share in shares.items() if share < TARGETS["hindsight_min"])
    lines += [f"  phrasing {name:<33}{share:>10.2f}  {_against_room(figures, name, share)}  {text!r}"
              for share, name, text in weak]
    s, h, turn2 = figures["signal"], figures["signal_held_out"], figures.get("signal_history")
    held_out_label = ("signal on held-out prompts: |A| rel / unrel" if figures["prompts"] == "eval"
                      else "signal, second draw: |A| rel / unrel")
    lines += [
        f"{'room (min share / max share)':<44}{figures['room_min']:>6.2f}/{figures['room_max']:.2f}  "
        f"[{ok[figures['pass']['room']]}]",
        f"{'hindsight compliance (worst preference)':<44}{figures['hindsight_min']:>10.2f}  >= 0.90  "
        f"[{ok[figures['pass']['hindsight']]}]",
        _complaints_met(figures),
        f"{'unrelated follow-up: largest shift':<44}{figures['unrelated_max_shift']:>10.2f}  <= 0.10  "
        f"[{ok[figures['pass']['unrelated']]}]{_shift_noise(figures)}",
        f"{'signal: mean |A| relevant / unrelated':<44}{s['abs_relevant']:>6.3f}/{s['abs_unrelated']:.3f}  "
        f"ratio {s['ratio']:.1f} >= 5 ({s['n_triples']} triples)  [{ok[figures['pass']['signal_ratio']]}]",
        f"{'signal: summed A < 0, relevant (unrelated)':<44}{s['relevant_negative']:>10.2f}  >= 0.90 "
        f"({s['unrelated_negative']:.2f})  [{ok[figures['pass']['signal_negative']]}]",
        f"{held_out_label:<44}{h['abs_relevant']:>6.3f}/{h['abs_unrelated']:.3f}  "
        f"ratio {h['ratio']:.1f}, summed A < 0 {h['relevant_negative']:.2f} ({h['unrelated_negative']:.2f})  "
        f"(reported)",
        *([] if turn2 is None else [
            f"{'signal on a second turn: |A| rel / unrel':<44}{turn2['abs_relevant']:>6.3f}/"
            f"{turn2['abs_unrelated']:.3f}  ratio {turn2['ratio']:.1f}, summed A < 0 {turn2['relevant_negative']:.2f} "
            f"({turn2['unrelated_negative']:.2f})  (reported)"]),
        f"{'in-context oracle: full compliance (mean)':<44}{figures['oracle_mean']:>10.2f}  >= 0.85  "
        f"[{ok[figures['pass']['oracle']]}]",
        f"{'fluency: well-formed samples':<44}{figures['fluency']:>10.3f}  >= 0.97  "
        f"[{ok[figures['pass']['fluency']]}] ({figures['n_samples']} samples)",
    ]
    return "\n".join(lines)


def _followed(figures: dict, name: str) -> str:
    """A hindsight line's count (``  115/128 [MISS]``): two decimals round 0.898 up to 0.90, the count does not."""
    k, n = figures["hindsight_followed"][name], figures["n_per_complaint"]
    return f"  {k}/{n}" + ("" if k / n >= TARGETS["hindsight_min"] else " [MISS]")


def phrasing_reading(share: float, room: float, k: int, n: int) -> str:
    """How a phrasing followed in ``share`` of ``k`` answers compares with ``room``, the share of ``n`` answers
    without hindsight that satisfy its preference anyway.

    ``followed``: in 0.90 or more of the answers (the probe's target). Below that, ``ignored``: within two standard
    errors of ``room``, the model answers as if the follow-up said nothing about the style (as after an unrelated
    follow-up); ``reversed``: more than two standard errors under it, the complaint pushes the other way (its live
    teacher would teach the opposite); ``partly``: above it, short of the target; ``unclear``: within two standard
    errors of ``room`` and of the target alike (too few answers to tell; 32 per phrasing tell most apart)."""
    target = TARGETS["hindsight_min"]
    if share >= target:
        return "followed"
    se = math.sqrt(room * (1 - room) * (1 / k + 1 / n))
    if share < room - 2 * se:
        return "reversed"
    if share > room + 2 * se:
        return "partly"
    return "ignored" if share < target - 2 * math.sqrt(target * (1 - target) / k) else "unclear"


def _against_room(figures: dict, name: str, share: float) -> str:
    """A weak phrasing's line: the preference's share without hindsight and :func:`phrasing_reading`."""
    room = figures["room"][name]
    return f"(none {room:.2f}: {phrasing_reading(share, room, figures['n_per_phrasing'], figures['n']):<8})"


def shift_noise_floor(room: dict[str, float], n: int, draws: int = 4000) -> float:
    """The median largest |shift| of a model that does not change at all: each share drawn twice from its base share
    in ``room``, ``n`` answers each, the shares independently. At 256 answers and 18 shares near 0.5 it is about 0.09,
    so one draw cannot tell a shift of 0.10 from one of 0.12; four times the answers halve it."""
    base = np.array(list(room.values()))
    rng = np.random.default_rng(0)
    still = np.abs(rng.binomial(n, base, (draws, len(base))) - rng.binomial(n, base, (draws, len(base)))) / n
    return float(np.median(still.max(1)))


def _shift_noise(figures: dict) -> str:
    """The largest shift's preference, its standard error, and :func:`shift_noise_floor` at the probe's ``n``."""
    n, room, shift = figures["n"], figures["room"], figures["unrelated_shift"]
    name = max(shift, key=lambda k: abs(shift[k]))
    p0, p1 = room[name], room[name] + shift[name]
    se = float(np.sqrt((p0 * (1 - p0) + p1 * (1 - p1)) / n))
    return f"  ({name}, s.e. {se:.2f}; no shift at all gives about {shift_noise_floor(room, n):.2f} at n={n})"


def _complaints_met(figures: dict) -> str:
    """The summary line counting the complaints followed in at least the target share (reported, not judged)."""
    counts, n = figures["hindsight_followed"], figures["n_per_complaint"]
    met = sum(k / n >= TARGETS["hindsight_min"] for k in counts.values())
    return f"{'hindsight: complaints followed >= 0.90':<44}{met:>5} of {len(counts)}  (reported)"


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point: prints the table, returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None,
                        help="model folder, or a shipped model's name: tiny-v3, tiny or tiny-v2 (default: tiny-v3, the "
                             "default policy)")
    parser.add_argument("--adapter", default=None,
                        help="a run folder (its final policy: <run>/adapter) or a peft adapter folder, merged into "
                             "the model before measuring (a run folder's model comes from its config.yaml unless "
                             "--model is given)")
    parser.add_argument("--at", type=int, default=None,
                        help="with --adapter RUN_FOLDER: the policy the run kept after this many interactions (a "
                             "persona change, in <run>/snapshots/) instead of its final policy")
    parser.add_argument("--n", type=int, default=256,
                        help="samples for the base and unrelated shares, and answers for the interaction signal")
    parser.add_argument("--per-complaint", type=int, default=32, help="samples per complained preference")
    parser.add_argument("--per-persona", type=int, default=16, help="samples per persona (oracle)")
    parser.add_argument("--triples", type=int, default=200, help="(x, y, o) triples for the signal")
    parser.add_argument("--per-phrasing", type=int, default=0,
                        help="samples per follow-up phrasing of each preference (default 0: not measured)")
    parser.add_argument("--persona", action="append", default=None, metavar="NAME_OR_PATH",
                        help="instead of the acceptance figures: whether the model follows each follow-up of this "
                             "persona (a shipped name or a YAML file; repeat for several), with --n answers "
                             "without hindsight and --per-phrasing (default 32) per follow-up")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also write the figures (and the options that made them) to this JSON file")
    parser.add_argument("--prompts", choices=("eval", "train"), default="eval",
                        help="prompt pool of every figure but the interaction signal (default eval: held out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    if args.json is not None and Path(args.json).is_dir():
        parser.error(f"--json {args.json}: a folder; give a file path (for example {Path(args.json) / 'probe.json'})")
    options = {k: v for k, v in vars(args).items() if k != "json"}  # as given, before the run folder fills them in
    chosen: list[Persona] = []
    for name in args.persona or ():
        try:
            chosen.append(load_persona(name))
        except SdpoEnvError as exc:
            parser.error(f"--persona {name}: {exc}")
    if args.model is not None and (problem := model_folder_problem(resolve_model_path(args.model))):
        parser.error(f"--model {args.model}: {problem}")
    run: Path | None = None  # the run folder the adapter comes from (its config.yaml names the model it trained)
    if args.adapter is not None:
        given = Path(args.adapter)
        if args.at is None:  # the final policy: <run>/adapter, or any peft adapter folder
            try:
                given = args.adapter = adapter_folder(given)
            except SdpoEnvError as exc:
                parser.error(str(exc))
        run = next((f for f in (given, given.parent) if (f / "config.yaml").is_file()), None)
    trained = trained_model(run) if run is not None else None
    if args.model is None and trained is not None:
        args.model = trained
        print(f"model: {trained} (policy.model in {run}/config.yaml)")
    elif trained is not None and resolve_model_path(args.model) != trained:
        print(f"warning: --model {args.model}, but the run trained {trained}; the adapter may not fit it")
    with tempfile.TemporaryDirectory() as scratch:
        if args.at is not None:
            if run is None:
                parser.error(f"--at {args.at} needs --adapter RUN_FOLDER: a run folder (with config.yaml) whose "
                             "snapshots/ hold the policy at that interaction")
            from sdpo_env.reevaluate import save_adapter_at  # the run's machinery, only when asked for

            try:
                args.adapter = save_adapter_at(run, args.at, Path(scratch) / f"adapter-t{args.at}")
            except SdpoEnvError as exc:
                said = [p.message for p in exc.problems] if isinstance(exc, ValidationError) else [str(exc)]
                parser.error(f"--at {args.at}: " + "; ".join(said))
            print(f"policy: {run} after {args.at} interactions")
        if chosen:
            checks = check_phrasings(chosen, args.model, n=args.n, per_phrasing=args.per_phrasing or 32,
                                     seed=args.seed, device=args.device, batch_size=args.batch_size,
                                     prompt_pool=args.prompts, adapter=args.adapter)
            print("\n\n".join(phrasings_table(c) for c in checks))
            return _written({"personas": checks}, args.json, options)
        figures = probe(args.model, n=args.n, n_per_complaint=args.per_complaint, n_triples=args.triples,
                        n_per_persona=args.per_persona, n_per_phrasing=args.per_phrasing, seed=args.seed,
                        device=args.device, batch_size=args.batch_size, prompt_pool=args.prompts,
                        adapter=args.adapter)
    print(table(figures))
    return _written(figures, args.json, options)


def _written(figures: dict, path: str | None, options: dict) -> dict:
    """``figures``, also written with the command's ``options`` to ``path`` (a JSON file) when one is given."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(Path(path), {"options": options, **figures})
        print(f"figures written to {path}")
    return figures


if __name__ == "__main__":
    main()
