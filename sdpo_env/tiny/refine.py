"""Refines a built tiny model on the complaint directions it follows least often.

    python -m sdpo_env.tiny.refine --out DIR                 # refines the shipped checkpoint into DIR
    python -m sdpo_env.tiny.refine --from DIR --out DIR --steps 500 --focus length=detailed,emoji=false

Continued training from a checkpoint on fresh corpus examples (random streams the build never drew), of which
``focus_share`` are complaints in one of the ``FOCUS`` directions and ``repair_share`` are repair examples
(``sdpo_env.tiny.repair``: a complaint, then an answer that breaks it and turns to comply part-way), at a small
learning rate. It runs on a CPU in minutes, where a full build takes hours.

    python -m sdpo_env.tiny.refine --out DIR --repair-share 0.3 --repair length=concise,emoji=false
    python -m sdpo_env.tiny.refine --out DIR --invariance 100   # measured in docs/tiny-model.md; not shipped

``--unrelated-share`` adds examples with a neutral follow-up in the hindsight block and the answer in the base
style (the build's "unrelated" kind), meant to keep a model trained on complaints from changing its answers after
any follow-up (measured in docs/tiny-model.md, the third refinement round).

``--phrasing TEXT`` (repeatable) with ``--phrasing-share`` (0.3) trains on complaints worded exactly as given, each
answered in the direction whose phrasings hold it: the probe's ``--per-phrasing`` shows the misses sitting in a few
wordings, which the build draws no more often than the rest of their direction's (measured in docs/tiny-model.md, the
fourth refinement round).

``--history-share`` adds conversations with history, as the ``multiturn`` scenario's live teacher sees them: a
request, an answer, a complaint and an answer that follows it (and sometimes a second complaint), then the hindsight
block on the last turn with a complaint about another axis (the answer follows every complaint so far) or a neutral
follow-up (the answer follows the earlier complaints only). The build's multi-turn examples have two user turns and
only neutral hindsight.

``--own-share`` trains on the model's own answers: before training it samples answers to every complaint phrasing of
the persona preferences (``--own-preferences``: some of them) and keeps, ``--own-per-phrasing`` per phrasing, those
that satisfy the preference (``sdpo_env.tiny.own``; measured in docs/tiny-model.md, the eighth refinement round).

``--pair-weight W`` adds W x a preference loss (DPO, ``sdpo_env.tiny.train.preference_loss``, against the source
model) on pairs of the model's own answers to the same question and complaint phrasing, one that follows the
complaint and one that does not (``sdpo_env.tiny.own.own_pairs``; ``--pair-preferences``: some preferences'
phrasings; measured in docs/tiny-model.md, the ninth refinement round). ``--pair-phrasing TEXT`` (repeatable) samples
pairs for those wordings only, and ``--pairs-from FILE`` (repeatable) trains on the pairs an earlier refinement saved
in its ``own_pairs.json`` as well (``--pair-per-phrasing 0``: on those alone), as the eleventh round stacked them:

    python -m sdpo_env.tiny.refine --from DIR --out DIR2 --pair-weight 0.3 --pair-phrasing "no outro please" \
        --pairs-from DIR1/own_pairs.json

``--pair-mirror`` adds each pair the other way round under a complaint of its opposite preference (one whose rule
bounds the same metric: ``prose`` and ``bullet_points``), where the answers fit that way
(``sdpo_env.tiny.own.mirrored_pairs``): a pair that teaches "bullets, please" alone also weakens "no bullets,
please"; with its mirror the two differ only in the complaint. ``--pair-mirror-phrasing TEXT`` (repeatable) words a
preference's mirrored pairs with the given phrasings only (measured in docs/tiny-model.md, the twelfth round).

A pair's two answers differ in more than the complaint's style: on the tenth round's pairs, in 8.5 of the 16 or 17
other preferences' rules on average, and where that leans one way (a short answer seldom has bullets) the pairs teach
it too. ``--pair-match`` pairs, of a question's ``--pair-answers`` answers (4), the two that differ on the fewest other
preferences (``sdpo_env.tiny.own.matched_pair``); ``build_info.json`` records how many they differ on.

``--layers N`` and ``--mlp W`` grow the source model first (``sdpo_env.tiny.grow``: more layers, a wider MLP, the
same logits), so the refinement trains a larger model at a CPU's cost.

Like the build, a refinement saves its training state in ``<out>/train_state.pt`` (``--save-every``, and on Ctrl-C
or SIGTERM) and continues it with the same command and ``--resume``; ``--stop-after-steps N`` stops it on purpose.

``--invariance W`` adds W x KL(p(.|x, y_<t) || p(.|x, o, y_<t)) on pairs that differ only by a neutral follow-up
o in the hindsight block (an unrelated question or a thank-you): the model learns to ignore such an o token by
token, which is what SDPO's advantage on it measures (``sdpo_env.tiny.train.invariance_loss``).
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from sdpo_env.hindsight import hindsight_messages
from sdpo_env.tiny import TINY_DIR, resolve_model_path
from sdpo_env.tiny.build import MAX_NEW_TOKENS
from sdpo_env.tiny.corpus import (
    MIX,
    Direction,
    Messages,
    complaint_pool,
    example,
    neutral_follow_up,
    questions,
    render_answer,
    sample_complaint,
)
from sdpo_env.tiny.grow import grown
from sdpo_env.tiny.own import (
    OwnExample,
    OwnPair,
    chosen_phrasings,
    load_examples,
    load_pairs,
    mirrored_pairs,
    opposites,
    own_examples,
    own_pairs,
    save_examples,
    save_pairs,
)
from sdpo_env.tiny.probe import Sampler, preferences
from sdpo_env.tiny.repair import repair_example, repairable_directions
from sdpo_env.tiny.style import Style
from sdpo_env.tiny.train import (
    STATE_FILE,
    Pair,
    PreferencePair,
    Refused,
    Saving,
    TrainConfig,
    add_resume_options,
    boundary_token_ids,
    check_resume,
    encode,
    reference_pairs,
    run_resumable,
    train,
)

# The complaint directions the build (before any refinement) followed least often (probe, 32 samples each):
# questions back 0.59, no emojis 0.69, detailed 0.78, concise 0.84. The shipped checkpoint is that build refined
# twice: with these defaults, then 500 steps at focus share 0.5 on detailed, no questions back and no emojis (seed 2).
OWN_FILE = "own_answers.json"  # the model's own answers a refinement with --own-share trains on
PAIRS_FILE = "own_pairs.json"  # the pairs of its own answers a refinement with --pair-weight trains on
T = TypeVar("T")
FOCUS: tuple[Direction, ...] = (("question", (False,)), ("emoji", (False,)), ("length", ("detailed",)),
                                ("length", ("concise",)))


@dataclass(frozen=True)
class RefineConfig:
    """Settings of the refinement stage."""

    n_examples: int = 19_200
    focus_share: float = 0.3
    focus: tuple[Direction, ...] = FOCUS
    repair_share: float = 0.0  # share of repair examples (``sdpo_env.tiny.repair``)
    repair: tuple[Direction, ...] | None = None  # their complaint directions; None: every repairable one
    unrelated_share: float = 0.0  # share of extra unrelated-follow-up examples (the build's "unrelated" kind)
    phrasing_share: float = 0.0  # share of complaints worded as one of ``phrasings`` (their own direction each)
    history_share: float = 0.0  # share of conversations with history and a hindsight block (:func:`history_example`)
    own_share: float = 0.0  # share of the model's own answers that follow a complaint (``sdpo_env.tiny.own``)
    own_per_phrasing: int = 16  # answers kept per complaint phrasing for those
    own_preferences: tuple[str, ...] | None = None  # the preferences whose phrasings to sample; None: every one
    pair_per_phrasing: int = 8  # with train.preference_weight > 0: pairs of its own answers kept per phrasing
    pair_preferences: tuple[str, ...] | None = None  # the preferences whose phrasings to sample pairs for
    pair_phrasings: tuple[str, ...] | None = None  # of those, only these phrasings; None: every one
    pairs_from: tuple[str, ...] = ()  # pair files (an earlier refinement's own_pairs.json) trained on as well
    pair_mirror: bool = False  # add each pair the other way round under an opposite complaint (own.mirrored_pairs)
    pair_mirror_phrasings: tuple[str, ...] = ()  # the wordings those use, where an opposite has some among them
    pair_match: bool = False  # pair the two answers that differ on the fewest other preferences (own.matched_pair)
    pair_answers: int = 4  # answers sampled per question for a pair
    phrasings: tuple[str, ...] = ()
    layers: int | None = None  # grow the source to this many layers first (``sdpo_env.tiny.grow``); None: as is
    mlp: int | None = None  # grow its MLP to this width first; None: as is
    seed: int = 1
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=300, batch_size=64, lr=3e-4, warmup=20))


def direction_name(direction: Direction) -> str:
    """``axis=value[|value]`` with booleans in lower case, as ``--focus`` takes it."""
    axis, values = direction
    return f"{axis}=" + "|".join(str(v).lower() for v in values)


def parse_direction(text: str, allowed: Iterable[Direction] | None = None) -> Direction:
    """A ``--focus`` item (``length=detailed``, ``emoji=false``, ``opener=none|preamble``) as a complaint direction.

    Args:
        text: The name.
        allowed: The directions to choose from (default: every complaint direction).

    Raises:
        ValueError: no allowed direction has that name; the message lists the ones there are.
    """
    known = {direction_name(d): d for d in (complaint_pool() if allowed is None else allowed)}
    if text.strip().lower() not in known:
        raise ValueError(f"unknown complaint direction {text!r}; one of: {', '.join(sorted(known))}")
    return known[text.strip().lower()]


def phrasing_direction(text: str) -> Direction:
    """The complaint direction whose phrasings include ``text`` (exactly, as in a persona's ``follow_ups``).

    Raises:
        ValueError: no direction has that phrasing; the message names the closest ones.
    """
    for direction, phrases in complaint_pool().items():
        if text in phrases:
            return direction
    every = [f for phrases in complaint_pool().values() for f in phrases]
    close = difflib.get_close_matches(text, every, n=3, cutoff=0.5)
    raise ValueError(f"{text!r} is not a complaint phrasing of any direction (a persona's follow_ups or "
                     "sdpo_env.tiny.corpus.EXTRA_FOLLOW_UPS)" + (f"; closest: {close}" if close else ""))


def focused_example(rng: np.random.Generator, direction: Direction, phrase: str | None = None) -> Messages:
    """A complaint about one ``direction`` in the hindsight block (worded as ``phrase``, or as one of the
    direction's phrasings at random); the answer satisfies it, other axes at base."""
    question = questions()[int(rng.integers(len(questions())))]
    if phrase is None:
        phrases = complaint_pool()[direction]
        phrase = phrases[int(rng.integers(len(phrases)))]
    messages = hindsight_messages([{"role": "user", "content": question.text}], phrase)
    axis, values = direction
    return [*messages, {"role": "assistant", "content": render_answer(rng, question, {axis: values})}]


def complaint_about_another_axis(rng: np.random.Generator, taken: Style) -> tuple[str, Style]:
    """A one-direction complaint (as :func:`sdpo_env.tiny.corpus.sample_complaint` draws it) about an axis not in
    ``taken``."""
    while True:
        follow_up, wanted = sample_complaint(rng, max_directions=1)
        if not wanted.keys() & taken.keys():
            return follow_up, wanted


def history_example(rng: np.random.Generator) -> Messages:
    """A conversation with history, ending in a hindsight block and the answer the hindsight asks for.

    A request, a base-style answer and a complaint, then (half the time) an answer that follows it and a second
    complaint about another axis; the last user turn then carries the hindsight block. Half the time that block holds
    a complaint about yet another axis and the answer follows every complaint; otherwise it holds a neutral follow-up
    and the answer follows the earlier complaints only, other axes at base. This is what the live teacher is asked
    on a second or third turn of the ``multiturn`` scenario."""
    question = questions()[int(rng.integers(len(questions())))]
    messages: Messages = [{"role": "user", "content": question.text},
                          {"role": "assistant", "content": render_answer(rng, question)}]
    complaint, wanted = complaint_about_another_axis(rng, {})
    messages.append({"role": "user", "content": complaint})
    if rng.random() < 0.5:  # a third user turn
        messages.append({"role": "assistant", "content": render_answer(rng, question, wanted)})
        complaint, more = complaint_about_another_axis(rng, wanted)
        messages.append({"role": "user", "content": complaint})
        wanted = {**wanted, **more}
    if rng.random() < 0.5:
        follow_up, more = complaint_about_another_axis(rng, wanted)
        wanted = {**wanted, **more}
    else:
        follow_up = neutral_follow_up(rng)
    return [*hindsight_messages(messages, follow_up),
            {"role": "assistant", "content": render_answer(rng, question, wanted)}]


def refine_examples(n: int, seed: int, focus_share: float, focus: tuple[Direction, ...] = FOCUS,
                    repair_share: float = 0.0, repair: tuple[Direction, ...] | None = None,
                    unrelated_share: float = 0.0, phrasing_share: float = 0.0,
                    phrasings: tuple[str, ...] = (), history_share: float = 0.0, own_share: float = 0.0,
                    own: list[Messages] | None = None) -> list[Messages]:
    """``n`` examples: the build's mix, with ``focus_share`` of them complaints in one of the ``focus`` directions,
    ``repair_share`` of them repair examples, ``unrelated_share`` of them unrelated-follow-up examples (a neutral
    follow-up in the hindsight block, the answer in the base style) on top of those in the build's mix, and
    ``phrasing_share`` of them complaints worded as one of ``phrasings``, each answered in its own direction,
    ``history_share`` of them conversations with history (:func:`history_example`), and ``own_share`` of them drawn
    from ``own`` (the model's own answers, :mod:`sdpo_env.tiny.own`)."""
    if phrasing_share and not phrasings:
        raise ValueError("phrasing_share > 0 needs at least one phrasing")
    own = own or []
    if own_share and not own:
        raise ValueError("own_share > 0 needs the model's own answers (own)")
    phrased = [(phrasing_direction(f), f) for f in phrasings]
    kinds, weights = list(MIX), np.array(list(MIX.values()))
    makers: list[tuple[float, Callable[[np.random.Generator], Messages]]] = [  # each kind's share, in draw order
        (focus_share, lambda rng: focused_example(rng, focus[int(rng.integers(len(focus)))])),
        (repair_share, lambda rng: repair_example(rng, None if repair is None
                                                  else repair[int(rng.integers(len(repair)))])),
        (unrelated_share, lambda rng: example(rng, "unrelated")),
        (phrasing_share, lambda rng: focused_example(rng, *phrased[int(rng.integers(len(phrased)))])),
        (history_share, history_example),
        (own_share, lambda rng: own[int(rng.integers(len(own)))]),
    ]
    bounds = list(itertools.accumulate(share for share, _ in makers))
    out = []
    for index in range(n):
        rng = np.random.default_rng([seed, 7, index])  # a stream the build (keyed by [seed, index]) never draws
        draw = rng.random()
        kind = next((make for (_, make), bound in zip(makers, bounds) if draw < bound), None)
        out.append(kind(rng) if kind is not None else
                   example(rng, kinds[int(rng.choice(len(kinds), p=weights / weights.sum()))]))  # the build's mix
    return out


def neutral_pairs(n: int, seed: int) -> list[tuple[Messages, Messages]]:
    """``n`` pairs of chats with the same base-style answer: without, then with a neutral follow-up in the
    hindsight block (:func:`sdpo_env.tiny.corpus.neutral_follow_up`, as in the corpus's unrelated examples)."""
    out = []
    for index in range(n):
        rng = np.random.default_rng([seed, 13, index])  # a stream of its own: the examples' streams stay the same
        question = questions()[int(rng.integers(len(questions())))]
        follow_up = neutral_follow_up(rng)
        plain: Messages = [{"role": "user", "content": question.text}]
        answer = {"role": "assistant", "content": render_answer(rng, question)}
        out.append(([*plain, answer], [*hindsight_messages(plain, follow_up), answer]))
    return out


def encode_pairs(tokenizer: PreTrainedTokenizerFast, chats: list[tuple[Messages, Messages]]) -> list[Pair]:
    """Token ids of both sides of each pair (see :func:`sdpo_env.tiny.train.encode`), over-long ones left out."""
    plain, moved = encode(tokenizer, [p for p, _ in chats]), encode(tokenizer, [h for _, h in chats])
    return [(a, b) for a, b in zip(plain, moved) if len(a[0]) - a[1] <= MAX_NEW_TOKENS]


def check_source(source: Path) -> None:
    """Refuses (``Refused``, before any work) a source that is no model folder."""
    if not (source / "config.json").is_file():
        raise Refused(f"--from {source}: no config.json there; give a model folder (the --out of a build or a "
                      "refinement)")


def with_progress(label: str, work: Callable[[Callable[[int, int], None]], T]) -> T:
    """``work(progress)`` under a progress bar on stderr that ``progress(done, total)`` moves."""
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)
        return work(lambda done, total: bar.update(task, completed=done, total=total))


def own_answers(source: Path, out: Path, cfg: RefineConfig, device: str, *,
                reuse: bool) -> tuple[list[OwnExample], dict[str, dict]]:
    """The source model's own answers that follow a complaint (:func:`sdpo_env.tiny.own.own_examples`), saved in
    ``out/own_answers.json``; with ``reuse`` (a resumed refinement) the saved ones, so it trains on the same."""
    path = out / OWN_FILE
    if reuse and path.exists():
        return load_examples(path)
    sampler = Sampler(str(source), device)
    examples, stats = with_progress("its own answers to complaints, kept", lambda progress: own_examples(
        sampler, cfg.own_per_phrasing, cfg.seed, only=cfg.own_preferences, progress=progress))
    if not examples:
        raise Refused(f"--own-share: the model in {source} followed none of the complaints in "
                      f"{sum(e['tries'] for e in stats.values())} tries; there is nothing of its own to train on")
    out.mkdir(parents=True, exist_ok=True)
    save_examples(examples, stats, path)
    followed = ", ".join(f"{name} {entry['followed']:.2f}" for name, entry in stats.items())
    print(f"kept {len(examples)} answers in {sum(e['tries'] for e in stats.values())} tries; followed: {followed}",
          flush=True)
    return examples, stats


def saved_pairs(paths: Sequence[str]) -> list[OwnPair]:
    """The pairs in the files ``--pairs-from`` names (each an earlier refinement's ``own_pairs.json``), in order.

    Raises:
        Refused: a file that is missing or holds no pairs as :func:`sdpo_env.tiny.own.save_pairs` writes them.
    """
    pairs: list[OwnPair] = []
    for name in paths:
        try:
            pairs += load_pairs(Path(name))[0]
        except FileNotFoundError:
            raise Refused(f"--pairs-from {name}: no such file") from None
        except (ValueError, KeyError, TypeError) as exc:  # not JSON, or not the rows save_pairs writes
            raise Refused(f"--pairs-from {name}: not a pairs file as refine saves it ({PAIRS_FILE}: "
                          f"{{\"examples\": [{{preference, phrasing, chosen, rejected}}, ...], \"stats\": ...}}); "
                          f"{type(exc).__name__}: {exc}") from None
    return pairs


def answer_pairs(source: Path, out: Path, cfg: RefineConfig, device: str, *,
                 reuse: bool) -> tuple[list[OwnPair], dict[str, dict]]:
    """Pairs of the source model's own answers (:func:`sdpo_env.tiny.own.own_pairs`; none with
    ``cfg.pair_per_phrasing`` 0) and those of ``cfg.pairs_from``, saved together in ``out/own_pairs.json``; with
    ``reuse`` (a resumed refinement) the saved ones, so it trains on the same. The figures are the sampling's."""
    path = out / PAIRS_FILE
    if reuse and path.exists():
        return load_pairs(path)
    earlier = saved_pairs(cfg.pairs_from)
    pairs: list[OwnPair] = []
    stats: dict[str, dict] = {}
    if cfg.pair_per_phrasing:
        sampler = Sampler(str(source), device)
        pairs, stats = with_progress("pairs of its own answers, one following the complaint",
                                     lambda progress: own_pairs(sampler, cfg.pair_per_phrasing, cfg.seed,
                                                                answers_per_question=cfg.pair_answers,
                                                                only=cfg.pair_preferences,
                                                                phrasings=cfg.pair_phrasings, progress=progress,
                                                                matched=cfg.pair_match))
    if not pairs and not earlier:
        raise Refused(f"--pair-weight: in {sum(e['answers'] for e in stats.values())} answers the model in {source} "
                      "gave no question both an answer that follows the complaint and one that does not; there is "
                      "no pair to train on")
    if stats:
        followed = ", ".join(f"{name} {entry['pairs']} ({entry['followed']:.2f})" for name, entry in stats.items())
        print(f"kept {len(pairs)} pairs in {sum(e['answers'] for e in stats.values())} answers; pairs (followed): "
              f"{followed}", flush=True)
    if earlier:
        print(f"and {len(earlier)} pairs from {', '.join(cfg.pairs_from)}", flush=True)
    pairs += earlier
    if cfg.pair_mirror:
        mirrored = mirrored_pairs(pairs, cfg.seed, cfg.pair_mirror_phrasings)
        counts = Counter(pair.preference for pair in mirrored)
        print(f"and {len(mirrored)} of them the other way round: "
              + ", ".join(f"{name} {n}" for name, n in counts.most_common()), flush=True)
        pairs += mirrored
    out.mkdir(parents=True, exist_ok=True)
    save_pairs(pairs, stats, path)
    return pairs, stats


def refine(source: Path, out: Path, cfg: RefineConfig, *, device: str = "cpu", resume: bool = False,
           stop_after_steps: int | None = None, save_every_s: float = 300.0) -> dict:
    """Refines the model in ``source`` and saves it into ``out``; returns what happened (also in build_info.json).

    Training saves its state in ``out/train_state.pt`` and ``resume`` continues from it, as in
    :func:`sdpo_env.tiny.build.build` (same errors). A source with no model, or ``cfg.layers`` / ``cfg.mlp``
    smaller than its model's, is ``Refused`` before the corpus is drawn.
    """
    started = time.time()
    check_source(source)
    settings = {**asdict(cfg), "focus": [direction_name(d) for d in cfg.focus],
                "repair": None if cfg.repair is None else [direction_name(d) for d in cfg.repair],
                "source": str(source)}
    saving = Saving(out / STATE_FILE, {"refine": settings}, every_s=save_every_s, stop_after_steps=stop_after_steps)
    saved = check_resume(saving, resume)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(source)
    model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    if cfg.layers or cfg.mlp:
        try:
            model = grown(model, cfg.layers, cfg.mlp, seed=cfg.seed)
        except ValueError as exc:  # a smaller size
            raise Refused(f"{exc} (the model in {source}); --layers and --mlp can only grow it") from None
        print(f"grown to {model.config.num_hidden_layers} layers, MLP width {model.config.intermediate_size}: "
              f"{model.num_parameters():,} parameters", flush=True)
    own, own_stats = own_answers(source, out, cfg, device, reuse=saved is not None) if cfg.own_share else ([], {})
    chats = refine_examples(cfg.n_examples, cfg.seed, cfg.focus_share, cfg.focus, cfg.repair_share, cfg.repair,
                            cfg.unrelated_share, cfg.phrasing_share, cfg.phrasings, cfg.history_share,
                            cfg.own_share, [e.messages for e in own])
    data = [e for e in encode(tokenizer, chats) if len(e[0]) - e[1] <= MAX_NEW_TOKENS]
    pairs: list[Pair] = []
    if cfg.train.invariance_weight > 0:
        pairs = encode_pairs(tokenizer, neutral_pairs(cfg.train.steps * cfg.train.invariance_batch, cfg.seed))
    preferred: list[PreferencePair] = []
    pair_stats: dict[str, dict] = {}
    if cfg.train.preference_weight > 0:
        chosen, pair_stats = answer_pairs(source, out, cfg, device, reuse=saved is not None)
        encoded = encode_pairs(tokenizer, [(p.chosen, p.rejected) for p in chosen])
        # the reference is the model as the refinement starts (grown, if it was), never the resumed weights
        preferred = reference_pairs(model, encoded, tokenizer.pad_token_id, torch.device(device))  # type: ignore[arg-type]
    print(f"refine: {len(data)} examples ({cfg.focus_share:.0%} focused, {cfg.repair_share:.0%} repairs, "
          f"{cfg.unrelated_share:.0%} extra unrelated, {cfg.phrasing_share:.0%} in {len(cfg.phrasings)} phrasings, "
          f"{cfg.history_share:.0%} with history, {cfg.own_share:.0%} of its own {len(own)} answers), "
          f"{len(pairs)} neutral-follow-up pairs, {len(preferred)} pairs of its own answers in "
          f"{time.time() - started:.0f} s", flush=True)
    t0 = time.time()
    boundaries = frozenset(boundary_token_ids(tokenizer))
    out.mkdir(parents=True, exist_ok=True)
    loss = train(model, data, tokenizer.pad_token_id, cfg.train,  # type: ignore[arg-type]  # a LlamaForCausalLM
                 seed=cfg.seed, device=torch.device(device), log=lambda line: print(line, flush=True),
                 boundaries=boundaries, eos_id=tokenizer.eos_token_id, pairs=pairs, preference_pairs=preferred,
                 log_every=50, saving=saving)
    model.to("cpu")  # type: ignore[arg-type]  # transformers types .to() as a model decorator
    model.save_pretrained(out, safe_serialization=True)  # with its generation_config.json
    tokenizer.save_pretrained(out)
    info_path = source / "build_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.exists() else {}
    stage = {**settings, "final_loss": round(loss, 4), "device": device, "threads": torch.get_num_threads(),
             "train_s": round(time.time() - t0, 1), "total_s": round(time.time() - started, 1)}
    if own_stats:
        stage["own_answers"] = own_stats
    if pair_stats:
        stage["own_pairs"] = pair_stats
    if saved:
        stage["resumed_at_step"] = saved["step"]  # the timings are this last session's
    info["refines"] = [*info.get("refines", []), stage]  # every stage since the build, oldest first
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    saving.path.unlink(missing_ok=True)  # the model is saved: nothing left to resume
    print(f"done: final loss {loss:.4f}, {stage['total_s']:.0f} s; saved to {out}", flush=True)
    return info


def main(argv: list[str] | None = None) -> dict:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--from", dest="source", type=lambda name: Path(resolve_model_path(name)), default=TINY_DIR,
                        help="model folder to refine, or tiny-v2 / tiny-v3 (default: tiny, the shipped checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (may be the source folder)")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--focus-share", type=float, default=None)
    parser.add_argument("--focus", default=None,
                        help="comma-separated complaint directions to focus on (default: " +
                        ",".join(direction_name(d) for d in FOCUS) + ")")
    parser.add_argument("--repair-share", type=float, default=None,
                        help="share of repair examples: a complaint, then an answer that breaks it and turns to "
                             "comply part-way (trained on the turn only; default 0)")
    parser.add_argument("--repair", default=None,
                        help="comma-separated complaint directions for the repair examples (default: every one a "
                             "repair can teach: " + ",".join(direction_name(d) for d in repairable_directions()) + ")")
    parser.add_argument("--unrelated-share", type=float, default=None,
                        help="share of extra unrelated-follow-up examples (a neutral follow-up in the hindsight "
                             "block, the answer in the base style), meant to keep a model trained on complaints from "
                             "changing its answers after any follow-up (default 0)")
    parser.add_argument("--phrasing", action="append", default=[], metavar="TEXT",
                        help="a complaint phrasing to train on more often, exactly as a persona's follow_ups or "
                             "sdpo_env.tiny.corpus.EXTRA_FOLLOW_UPS write it (repeat the option for several; the "
                             "probe's --per-phrasing lists the ones followed least)")
    parser.add_argument("--phrasing-share", type=float, default=None,
                        help="share of complaints worded as one of the --phrasing texts, each answered in its own "
                             "direction (default 0.3 with --phrasing, else 0)")
    parser.add_argument("--history-share", type=float, default=None,
                        help="share of conversations with history (two or three user turns) whose last turn carries "
                             "a hindsight block, answered as every complaint in them asks (default 0)")
    parser.add_argument("--own-share", type=float, default=None,
                        help="share of the model's own answers to complaints, sampled before training and kept "
                             "where they follow the complaint (sdpo_env.tiny.own; default 0)")
    parser.add_argument("--own-per-phrasing", type=int, default=None,
                        help="with --own-share: answers kept per complaint phrasing (default 16)")
    parser.add_argument("--own-preferences", default=None,
                        help="with --own-share: comma-separated persona preferences whose phrasings to sample "
                             "(default: every one; the probe's table names them)")
    parser.add_argument("--pair-weight", type=float, default=None,
                        help="weight of a preference loss (DPO against the source model) on pairs of the model's "
                             "own answers to the same question and complaint, one following it and one not "
                             "(sampled before training; default 0: off)")
    parser.add_argument("--pair-beta", type=float, default=None, help="with --pair-weight: the DPO beta (default 0.1)")
    parser.add_argument("--pair-per-phrasing", type=int, default=None,
                        help="with --pair-weight: pairs kept per complaint phrasing (default 8; 0: sample none, "
                             "train on --pairs-from only)")
    parser.add_argument("--pair-preferences", default=None,
                        help="with --pair-weight: comma-separated persona preferences whose phrasings to sample "
                             "pairs for (default: every one)")
    parser.add_argument("--pair-phrasing", action="append", default=None, metavar="TEXT",
                        help="with --pair-weight (repeatable): sample pairs for this complaint phrasing only, "
                             "worded exactly as in the persona's follow_ups (default: every phrasing)")
    parser.add_argument("--pairs-from", action="append", default=[], metavar="FILE",
                        help="with --pair-weight (repeatable): also train on the pairs saved in FILE (an earlier "
                             f"refinement's {PAIRS_FILE})")
    parser.add_argument("--pair-mirror", action="store_true",
                        help="with --pair-weight: add each pair the other way round under a complaint of the "
                             "opposite preference (one whose rule bounds the same metric: prose and bullet_points), "
                             "where the answers fit it so, so the model learns to read the complaint")
    parser.add_argument("--pair-mirror-phrasing", action="append", default=[], metavar="TEXT",
                        help="with --pair-mirror (repeatable): word the mirrored pairs of this phrasing's "
                             "preference with the given phrasings only (default: any of its phrasings)")
    parser.add_argument("--pair-match", action="store_true",
                        help="with --pair-weight: of a question's answers, pair the two that differ on the fewest "
                             "other preferences (those whose rules read other metrics), so they differ as little as "
                             "they can besides the complaint's style (default: the first answer that follows and the "
                             "first that does not; measured in docs/tiny-model.md, the fifteenth round)")
    parser.add_argument("--pair-answers", type=int, default=None,
                        help="with --pair-weight: answers sampled per question (default 4; more give --pair-match "
                             "closer pairs)")
    parser.add_argument("--invariance", type=float, default=None,
                        help="weight of the KL that teaches the model to ignore neutral follow-ups in the hindsight "
                             "block (default 0: off)")
    parser.add_argument("--layers", type=int, default=None,
                        help="grow the model to this many layers before refining, keeping what it computes "
                             "(sdpo_env.tiny.grow; default: as it is)")
    parser.add_argument("--mlp", type=int, default=None,
                        help="grow its MLP to this width before refining, keeping what it computes (default: as "
                             "it is)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    add_resume_options(parser)
    args = parser.parse_args(argv)
    cfg = RefineConfig()
    for name, value in (("--invariance", args.invariance), ("--pair-weight", args.pair_weight)):
        if value is not None and value < 0:
            parser.error(f"{name} must be >= 0, got {value}")
    if args.pair_beta is not None and args.pair_beta <= 0:
        parser.error(f"--pair-beta must be > 0, got {args.pair_beta}")
    steps = args.steps or cfg.train.steps
    try:
        if args.focus:
            cfg = replace(cfg, focus=tuple(parse_direction(t) for t in args.focus.split(",")))
        if args.repair:
            repairable = repairable_directions()
            cfg = replace(cfg, repair=tuple(parse_direction(t, repairable) for t in args.repair.split(",")))
        for text in args.phrasing:
            phrasing_direction(text)
    except ValueError as exc:
        parser.error(str(exc))
    phrasing_share = (0.3 if args.phrasing else 0.0) if args.phrasing_share is None else args.phrasing_share
    cfg = replace(cfg, n_examples=steps * cfg.train.batch_size,
                  focus_share=cfg.focus_share if args.focus_share is None else args.focus_share,
                  repair_share=cfg.repair_share if args.repair_share is None else args.repair_share,
                  unrelated_share=cfg.unrelated_share if args.unrelated_share is None else args.unrelated_share,
                  phrasings=tuple(args.phrasing),
                  phrasing_share=phrasing_share,
                  history_share=cfg.history_share if args.history_share is None else args.history_share,
                  own_share=cfg.own_share if args.own_share is None else args.own_share,
                  own_per_phrasing=args.own_per_phrasing or cfg.own_per_phrasing,
                  own_preferences=None if args.own_preferences is None else tuple(
                      t.strip() for t in args.own_preferences.split(",")),
                  pair_per_phrasing=cfg.pair_per_phrasing if args.pair_per_phrasing is None else args.pair_per_phrasing,
                  pair_preferences=None if args.pair_preferences is None else tuple(
                      t.strip() for t in args.pair_preferences.split(",")),
                  pair_phrasings=None if args.pair_phrasing is None else tuple(args.pair_phrasing),
                  pairs_from=tuple(args.pairs_from),
                  pair_mirror=args.pair_mirror, pair_mirror_phrasings=tuple(args.pair_mirror_phrasing),
                  pair_match=args.pair_match, pair_answers=args.pair_answers or cfg.pair_answers,
                  layers=args.layers, mlp=args.mlp,
                  seed=cfg.seed if args.seed is None else args.seed,
                  train=replace(cfg.train, steps=steps, lr=args.lr or cfg.train.lr,
                                invariance_weight=args.invariance or cfg.train.invariance_weight,
                                preference_weight=args.pair_weight or cfg.train.preference_weight,
                                preference_beta=args.pair_beta or cfg.train.preference_beta))
    shares = {"--focus-share": cfg.focus_share, "--repair-share": cfg.repair_share,
              "--unrelated-share": cfg.unrelated_share, "--phrasing-share": cfg.phrasing_share,
              "--history-share": cfg.history_share, "--own-share": cfg.own_share}
    if any(not 0 <= value <= 1 for value in shares.values()) or sum(shares.values()) > 1:
        parser.error("each share must be in [0, 1] and together at most 1; got "
                     + ", ".join(f"{name} {value}" for name, value in shares.items()))
    for name, chosen in (("--own-preferences", cfg.own_preferences), ("--pair-preferences", cfg.pair_preferences)):
        unknown = sorted(set(chosen or ()) - preferences().keys())
        if unknown:
            parser.error(f"{name}: unknown {', '.join(unknown)}; one of: {', '.join(sorted(preferences()))}")
    if args.own_per_phrasing is not None and args.own_per_phrasing < 1:
        parser.error(f"--own-per-phrasing must be >= 1, got {args.own_per_phrasing}")
    if args.pair_answers is not None and args.pair_answers < 2:
        parser.error(f"--pair-answers must be >= 2 (a pair takes two answers to one question), got {args.pair_answers}")
    if args.pair_per_phrasing is not None and args.pair_per_phrasing < (0 if args.pairs_from else 1):
        parser.error(f"--pair-per-phrasing must be >= 1 (0 with --pairs-from), got {args.pair_per_phrasing}")
    mirrorable = [name for name, others in opposites().items() if others]
    for name, only, chosen in (("--pair-phrasing", cfg.pair_preferences, cfg.pair_phrasings),
                               ("--pair-mirror-phrasing", mirrorable, cfg.pair_mirror_phrasings or None)):
        try:
            chosen_phrasings(only, chosen)
        except ValueError as exc:
            parser.error(f"{name}: {exc}")
    if cfg.pair_mirror_phrasings and not cfg.pair_mirror:
        parser.error("--pair-mirror-phrasing needs --pair-mirror")
    pair_options = [name for name, given in (("--pair-per-phrasing", args.pair_per_phrasing is not None),
                                             ("--pair-preferences", args.pair_preferences is not None),
                                             ("--pair-phrasing", args.pair_phrasing is not None),
                                             ("--pairs-from", args.pairs_from),
                                             ("--pair-mirror", args.pair_mirror),
                                             ("--pair-match", args.pair_match),
                                             ("--pair-answers", args.pair_answers is not None)) if given]
    if pair_options and not cfg.train.preference_weight:
        parser.error(f"{', '.join(pair_options)} need(s) --pair-weight > 0 (the pairs are trained on with it)")
    if cfg.phrasing_share and not cfg.phrasings:
        parser.error(f"--phrasing-share {cfg.phrasing_share} needs at least one --phrasing")
    return run_resumable(parser, lambda: refine(args.source, args.out, cfg, device=args.device, resume=args.resume,
                                                stop_after_steps=args.stop_after_steps, save_every_s=args.save_every))


if __name__ == "__main__":
    main()
