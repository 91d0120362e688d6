"""The model's own answers to complaints, kept where they follow the complaint (refinement examples).

``python -m sdpo_env.tiny.refine --own-share S`` trains on them: for every phrasing of every persona preference the
model samples answers to corpus questions with that phrasing in the hindsight block, and the well-formed answers that
satisfy the preference (its persona rule, as the judge and the probe check it) become examples, ``per_phrasing`` of
them per phrasing. A corpus answer is a template rendering the model reproduces only in part, so most of its loss
is on wording; an answer the model sampled itself is already likely under it, so the loss falls on the few tokens
that decide the style, which is where the misses are. Phrasings the model follows least get as many examples as the
rest, at the cost of more tries (rejection sampling, as in expert iteration).

:func:`own_pairs` keeps what rejection sampling throws away: several answers to the same question and phrasing, one
that follows the complaint and one that does not, both well-formed. ``refine --pair-weight W`` trains on such pairs
with a preference loss (``sdpo_env.tiny.train.preference_loss``): the two answers share the question's topic, so the
loss moves mostly the tokens where they differ, which is the style the complaint asks about. They also differ in
whatever else the two answers happen to differ in: a short answer that follows "too long" seldom has bullets, so pairs
for ``concise`` also teach "fewer bullets" after any complaint. ``matched=True`` (``refine --pair-match``) takes, of a
question's answers, the two that differ on the fewest other preferences (:func:`matched_pair`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from sdpo_env.errors import did_you_mean
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.personas import Preference
from sdpo_env.tiny.corpus import Messages, questions
from sdpo_env.tiny.probe import Sampler, preferences, well_formed

CHUNK = 256  # answers sampled between two progress reports


@dataclass(frozen=True)
class OwnExample:
    """One kept answer: the preference and phrasing it follows, and the chat ending with it."""

    preference: str
    phrasing: str
    messages: Messages


def own_examples(sampler: Sampler, per_phrasing: int, seed: int, max_tries: int = 8,
                 only: Sequence[str] | None = None,
                 progress: Callable[[int, int], None] | None = None) -> tuple[list[OwnExample], dict[str, dict]]:
    """Samples until each phrasing has ``per_phrasing`` kept answers or ``max_tries`` x that many tries.

    Args:
        sampler: The model to sample from (temperature 1, as the policy samples).
        per_phrasing: Kept answers wanted per phrasing.
        seed: Fixes the questions drawn and the samples.
        max_tries: A phrasing is given up after ``max_tries * per_phrasing`` tries; it keeps what it has.
        only: The preferences (by name) whose phrasings to sample; None: every persona preference.
        progress: Told (kept so far, wanted) after every ``CHUNK`` answers.

    Returns:
        The kept examples, phrasing by phrasing, and per preference the tries, the answers kept and the share of
        tries that followed the complaint (well-formed or not; :func:`followed_share`).
    """
    rng = np.random.default_rng([seed, 17])
    torch.manual_seed(seed)
    pool, prefs, wanted = questions(), preferences(), chosen_phrasings(only)
    kept: dict[tuple[str, str], list[Messages]] = {key: [] for key in wanted}
    tries = dict.fromkeys(wanted, 0)
    followed = dict.fromkeys(wanted, 0)
    while True:
        # each open phrasing tries what its follow rate so far (from a prior of 0.8) says it needs, plus one
        batch = [(key, min(math.ceil(missing * (tries[key] + 2) / (followed[key] + 1.6)) + 1,
                           max_tries * per_phrasing - tries[key]))
                 for key in wanted
                 for missing in [per_phrasing - len(kept[key])]
                 if missing > 0 and tries[key] < max_tries * per_phrasing]
        if not batch:
            break
        keys = [key for key, n in batch for _ in range(n)]
        convs = [hindsight_messages([{"role": "user", "content": pool[int(rng.integers(len(pool)))].text}], phrase)
                 for _, phrase in keys]
        for start in range(0, len(keys), CHUNK):
            chunk = slice(start, start + CHUNK)
            for key, conv, (text, ended) in zip(keys[chunk], convs[chunk], sampler.generate(convs[chunk])):
                tries[key] += 1
                ok = prefs[key[0]].satisfied_by(text)
                followed[key] += ok
                if ok and well_formed(text, ended) and len(kept[key]) < per_phrasing:
                    kept[key].append([*conv, {"role": "assistant", "content": text}])
            if progress is not None:
                progress(sum(len(v) for v in kept.values()), per_phrasing * len(wanted))
    stats: dict[str, dict] = {}
    for (name, phrase) in wanted:
        entry = stats.setdefault(name, {"tries": 0, "kept": 0})
        entry["tries"] += tries[(name, phrase)]
        entry["kept"] += len(kept[(name, phrase)])
    for name, entry in stats.items():
        entry["followed"] = followed_share(name, followed, tries)
    return [OwnExample(name, phrase, m) for (name, phrase) in wanted for m in kept[(name, phrase)]], stats


def followed_share(name: str, followed: dict[tuple[str, str], int], answers: dict[tuple[str, str], int]) -> float:
    """The share of a preference's answers that followed its complaint, each of its phrasings counting once.

    The probe draws a preference's phrasings evenly; the samplers do not: they stop a phrasing once it has what it
    needs, so pooled over answers the share would weigh most the phrasings sampled longest (when sampling pairs, those
    the model nearly always follows: on the tenth refinement round's model, ``prose`` 0.97 pooled against 0.89 in the
    probe, whose misses sit in three of its twelve phrasings).

    Args:
        name: The preference.
        followed: Per (preference, phrasing), the answers that followed the complaint.
        answers: Per (preference, phrasing), the answers sampled; phrasings with none are left out.
    """
    shares = [followed[key] / n for key, n in answers.items() if key[0] == name and n]
    return round(float(np.mean(shares)), 4) if shares else 0.0


def chosen_phrasings(only: Sequence[str] | None, phrasings: Sequence[str] | None = None) -> list[tuple[str, str]]:
    """(preference, phrasing) for every phrasing of the persona preferences named in ``only`` (None: all), and of
    those only the ones in ``phrasings`` (None: every one).

    Raises:
        ValueError: an unknown preference, or a phrasing none of the chosen preferences has (the closest named).
    """
    prefs = preferences()
    if only is not None:
        unknown = sorted(set(only) - prefs.keys())
        if unknown:
            raise ValueError(f"unknown preference(s) {', '.join(unknown)}; one of: {', '.join(sorted(prefs))}")
    every = [(name, phrase) for name, pref in prefs.items() if only is None or name in only
             for phrase in pref.follow_ups]
    if phrasings is None:
        return every
    for text in phrasings:
        if not any(phrase == text for _, phrase in every):
            raise ValueError(f"{text!r} is not a follow-up phrasing of "
                             + ("any persona preference" if only is None else ", ".join(only))
                             + f".{did_you_mean(text, [phrase for _, phrase in every])}")
    return [(name, phrase) for name, phrase in every if phrase in phrasings]


@dataclass(frozen=True)
class OwnPair:
    """Two of the model's answers to the same question and complaint: ``chosen`` follows it, ``rejected`` does not."""

    preference: str
    phrasing: str
    chosen: Messages  # the chat ending with the answer that follows the complaint
    rejected: Messages  # the same chat ending with one that does not


def others_differing(a: str, b: str, judged: Sequence[Preference]) -> int:
    """On how many of the ``judged`` preferences one of the two answers satisfies the rule and the other does not."""
    return _count_differing(_verdicts(a, judged), _verdicts(b, judged))


def _verdicts(text: str, judged: Sequence[Preference]) -> list[bool]:
    return [pref.satisfied_by(text) for pref in judged]


def _count_differing(a: Sequence[bool], b: Sequence[bool]) -> int:
    return sum(x != y for x, y in zip(a, b, strict=True))


def unrelated_preferences(name: str) -> list[Preference]:
    """The persona preferences whose rules read none of the metrics ``name``'s does: what a pair for ``name`` should
    not teach (its opposites, :func:`opposites`, bound its own metric and must differ with it)."""
    prefs, opposite = preferences(), opposites()[name]
    return [pref for other, pref in prefs.items() if other != name and other not in opposite]


def matched_pair(followed: Sequence[str], missed: Sequence[str], judged: Sequence[Preference]) -> tuple[str, str]:
    """The (followed, missed) answers that differ on the fewest ``judged`` preferences (:func:`others_differing`);
    of equals, the first in the order given.

    Raises:
        ValueError: no answer on one side.
    """
    if not followed or not missed:
        raise ValueError(f"a pair needs an answer on each side; got {len(followed)} followed, {len(missed)} missed")
    verdicts = {text: _verdicts(text, judged) for text in {*followed, *missed}}  # each answer's rules read once
    return min(((a, b) for a in followed for b in missed),
               key=lambda pair: _count_differing(verdicts[pair[0]], verdicts[pair[1]]))


def own_pairs(sampler: Sampler, per_phrasing: int, seed: int, answers_per_question: int = 4,
              max_questions: int = 8, only: Sequence[str] | None = None, phrasings: Sequence[str] | None = None,
              progress: Callable[[int, int], None] | None = None,
              matched: bool = False) -> tuple[list[OwnPair], dict[str, dict]]:
    """Samples ``answers_per_question`` answers per question until each phrasing has ``per_phrasing`` pairs or has
    tried ``max_questions`` x that many questions.

    A question gives a pair when, among its well-formed answers, at least one follows the complaint and one does
    not (the first of each, or with ``matched`` the two that differ on the fewest other preferences); a phrasing the
    model always follows (or never) gives none.

    Args:
        sampler: The model to sample from (temperature 1, as the policy samples).
        per_phrasing: Pairs wanted per phrasing.
        seed: Fixes the questions drawn and the samples.
        answers_per_question: Answers sampled per question.
        max_questions: A phrasing is given up after ``max_questions * per_phrasing`` questions.
        only: The preferences (by name) whose phrasings to sample; None: every persona preference.
        phrasings: Of those, only these phrasings (exactly as in the preferences' ``follow_ups``); None: all.
        progress: Told (pairs so far, wanted) after every round of questions.
        matched: Of a question's answers, pair the two that differ on the fewest preferences whose rules read other
            metrics (:func:`matched_pair`, :func:`unrelated_preferences`).

    Returns:
        The pairs, phrasing by phrasing, and per preference the answers sampled, the pairs kept, the share of
        answers that followed the complaint (well-formed or not; :func:`followed_share`) and the mean number of
        other preferences on which a kept pair's two answers differ (``others_differing``).
    """
    rng = np.random.default_rng([seed, 19])
    torch.manual_seed(seed)
    pool, prefs, wanted = questions(), preferences(), chosen_phrasings(only, phrasings)
    kept: dict[tuple[str, str], list[OwnPair]] = {key: [] for key in wanted}
    asked = dict.fromkeys(wanted, 0)
    followed = dict.fromkeys(wanted, 0)
    judged = {name: unrelated_preferences(name) for name in {key[0] for key in wanted}}
    differing = dict.fromkeys(wanted, 0)
    while True:
        batch = [(key, min(per_phrasing - len(kept[key]) + 1, max_questions * per_phrasing - asked[key]))
                 for key in wanted if len(kept[key]) < per_phrasing and asked[key] < max_questions * per_phrasing]
        if not batch:
            break
        keys = [key for key, n in batch for _ in range(n)]
        convs = [hindsight_messages([{"role": "user", "content": pool[int(rng.integers(len(pool)))].text}], phrase)
                 for _, phrase in keys]
        answers = sampler.generate([conv for conv in convs for _ in range(answers_per_question)])
        for i, (key, conv) in enumerate(zip(keys, convs)):
            asked[key] += 1
            good: dict[bool, list[str]] = {True: [], False: []}
            for text, ended in answers[i * answers_per_question : (i + 1) * answers_per_question]:
                ok = prefs[key[0]].satisfied_by(text)
                followed[key] += ok
                if well_formed(text, ended):
                    good[ok].append(text)
            if good[True] and good[False] and len(kept[key]) < per_phrasing:
                chosen, rejected = (matched_pair(good[True], good[False], judged[key[0]]) if matched
                                    else (good[True][0], good[False][0]))
                differing[key] += others_differing(chosen, rejected, judged[key[0]])
                kept[key].append(OwnPair(*key, [*conv, {"role": "assistant", "content": chosen}],
                                         [*conv, {"role": "assistant", "content": rejected}]))
        if progress is not None:
            progress(sum(len(v) for v in kept.values()), per_phrasing * len(wanted))
    sampled = {key: n * answers_per_question for key, n in asked.items()}
    stats: dict[str, dict] = {}
    for key in wanted:
        entry = stats.setdefault(key[0], {"answers": 0, "pairs": 0, "others_differing": 0})
        entry["answers"] += sampled[key]
        entry["pairs"] += len(kept[key])
        entry["others_differing"] += differing[key]
    for name, entry in stats.items():
        entry["followed"] = followed_share(name, followed, sampled)
        entry["others_differing"] = round(entry["others_differing"] / max(entry["pairs"], 1), 2)
    return [pair for key in wanted for pair in kept[key]], stats


def opposites() -> dict[str, list[str]]:
    """Per persona preference, the others whose rules bound one of the same metrics (``prose`` and
    ``bullet_points`` both bound ``bullet_count``): the complaints under which a pair's two answers may swap roles."""
    prefs = preferences()
    metrics = {name: {c.metric for c in pref.rule} for name, pref in prefs.items()}
    return {name: [other for other in prefs if other != name and metrics[name] & metrics[other]] for name in prefs}


def mirrored_pairs(pairs: Sequence[OwnPair], seed: int, phrasings: Sequence[str] = ()) -> list[OwnPair]:
    """Each pair the other way round under the complaint of each opposite preference (:func:`opposites`) that the
    rejected answer satisfies and the chosen one does not: the same question and answers, so the pair differs from
    the original only in the complaint, and the preference loss on both teaches the model to read the complaint
    rather than favour a style (a pair that teaches "bullets, please" alone also weakens "no bullets, please").

    Args:
        pairs: Pairs as :func:`own_pairs` gives them (the last user turn ends with the phrasing).
        seed: Fixes the phrasing drawn for each mirrored pair.
        phrasings: Where some of an opposite's phrasings are among these, its mirrored pairs are worded with those
            only (e.g. its wordings that name the style they reject: "no bullet points please"); the rest draw from
            all of theirs.

    Raises:
        ValueError: a pair whose last user turn does not end with its phrasing.
    """
    rng = np.random.default_rng([seed, 29])
    prefs, opposite = preferences(), opposites()
    mirrored = []
    for pair in pairs:
        turn, chosen, rejected = pair.chosen[-2], pair.chosen[-1], pair.rejected[-1]
        if not turn["content"].endswith(pair.phrasing):
            raise ValueError(f"a {pair.preference} pair whose last user turn does not end with its phrasing "
                             f"{pair.phrasing!r}: {turn['content'][-80:]!r}")
        for name in opposite.get(pair.preference, []):
            other = prefs[name]
            if not other.satisfied_by(rejected["content"]) or other.satisfied_by(chosen["content"]):
                continue
            wordings = [f for f in other.follow_ups if f in phrasings] or other.follow_ups
            phrase = wordings[int(rng.integers(len(wordings)))]
            swapped = {**turn, "content": turn["content"][: len(turn["content"]) - len(pair.phrasing)] + phrase}
            head = pair.chosen[:-2]
            mirrored.append(OwnPair(name, phrase, [*head, swapped, rejected], [*head, swapped, chosen]))
    return mirrored


def _save(rows: list[dict], stats: dict[str, dict], path: Path) -> None:
    """Rows and their sampling figures as one JSON file, written through a temporary file."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"stats": stats, "examples": rows}) + "\n", encoding="utf-8")
    tmp.replace(path)


def save_examples(examples: list[OwnExample], stats: dict[str, dict], path: Path) -> None:
    """The examples and their sampling figures as one JSON file, written through a temporary file."""
    _save([{"preference": e.preference, "phrasing": e.phrasing, "messages": e.messages} for e in examples], stats,
          path)


def save_pairs(pairs: list[OwnPair], stats: dict[str, dict], path: Path) -> None:
    """The pairs and their sampling figures as one JSON file, written through a temporary file."""
    _save([asdict(pair) for pair in pairs], stats, path)


def load_pairs(path: Path) -> tuple[list[OwnPair], dict[str, dict]]:
    """The pairs and figures :func:`save_pairs` wrote."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    return [OwnPair(**row) for row in saved["examples"]], saved["stats"]


def load_examples(path: Path) -> tuple[list[OwnExample], dict[str, dict]]:
    """The examples and figures :func:`save_examples` wrote."""
    saved = json.loads(path.read_text(encoding="utf-8"))
    return [OwnExample(r["preference"], r["phrasing"], r["messages"]) for r in saved["examples"]], saved["stats"]
