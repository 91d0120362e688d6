"""Personas: simulated users with style preferences, written as YAML files in ``users/``.

A persona is a name, a natural-language profile (what LLM simulators and judges read), and preferences. Each
preference has a description, an optional machine-checkable rule on the response (``{metric: word_count, max: 50}``)
and the follow-ups a user types when it is violated. See ``users/concise_casual_beginner.yaml`` for a full example.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from sdpo_env.errors import PersonaError, Problem, did_you_mean
from sdpo_env.files import DATA_DIR, read_yaml_mapping, resolve
from sdpo_env.metrics import METRICS
from sdpo_env.schema import build, option

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Condition:
    """One bound on one metric: the response satisfies it when ``min <= metric(response) <= max``."""

    metric: str = option(help="a metric name from sdpo_env.metrics (word_count, emoji_count, formality, ...)")
    min: float | None = option(None, "smallest allowed value (inclusive)")
    max: float | None = option(None, "largest allowed value (inclusive)")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.metric not in METRICS:
            problems.append(
                ("metric", f"unknown metric {self.metric!r}.{did_you_mean(self.metric, METRICS)} "
                           f"Known: {', '.join(sorted(METRICS))}.")
            )
        if self.min is None and self.max is None:
            problems.append(("", "a rule needs min, max or both"))
        if self.min is not None and self.max is not None and self.min > self.max:
            problems.append(("", f"min ({self.min}) is greater than max ({self.max})"))
        return problems

    def holds(self, text: str) -> bool:
        """Whether ``text`` satisfies this bound."""
        value = METRICS[self.metric](text)
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


@dataclass(frozen=True)
class Preference:
    """A style preference of a user."""

    name: str = option(help="short id used in metrics and logs, e.g. concise", nonempty=True)
    description: str = option(help="one sentence: what the user wants", nonempty=True)
    follow_ups: list[str] = option(help="messages the user sends when this preference is violated", nonempty=True)
    rule: list[Condition] = option(help="machine-checkable bounds; all must hold", factory=list)

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if self.name and not _IDENTIFIER.match(self.name):
            problems.append(("name", f"got {self.name!r}; use letters, digits, '_' or '-'"))
        problems += [(f"follow_ups[{i}]", "must not be empty") for i, f in enumerate(self.follow_ups) if not f.strip()]
        return problems

    @property
    def checkable(self) -> bool:
        """Whether the preference has a machine-checkable rule."""
        return bool(self.rule)

    def satisfied_by(self, text: str) -> bool:
        """Whether ``text`` satisfies every bound of the rule (a preference without a rule cannot be checked)."""
        if not self.rule:
            raise ValueError(f"preference {self.name!r} has no rule and cannot be checked by rules")
        return all(c.holds(text) for c in self.rule)


@dataclass(frozen=True)
class Satisfied:
    """What the user does when the response satisfies every preference."""

    replies: list[str] = option(help="short replies such as thanks", nonempty=True)
    new_question_rate: float = option(0.3, "probability of asking a new related question instead", min=0.0, max=1.0)


@functools.cache
def default_unrelated_follow_ups() -> tuple[str, ...]:
    """The shipped pool of unrelated follow-ups (``sdpo_env/data/unrelated_follow_ups.yaml``)."""
    data = yaml.safe_load((DATA_DIR / "unrelated_follow_ups.yaml").read_text(encoding="utf-8"))
    return tuple(data["unrelated_follow_ups"])


@dataclass(frozen=True)
class Persona:
    """A simulated user: profile text plus preferences."""

    name: str = option(help="the persona's name", nonempty=True)
    profile: str = option(help="natural-language description read by LLM simulators and judges", nonempty=True)
    preferences: list[Preference] = option(help="the user's style preferences", nonempty=True)
    satisfied: Satisfied = option(help="behaviour when every preference is satisfied",
                                  factory=lambda: Satisfied(replies=["Thanks, that's what I needed."]))
    unrelated_rate: float = option(0.1, "probability that a follow-up ignores the answer's style", min=0.0, max=1.0)
    unrelated_follow_ups: list[str] | None = option(None, "pool of unrelated follow-ups; null = the shipped pool")
    source: str = field(default="", compare=False, metadata={"help": "file it was loaded from"})

    def check(self) -> list[tuple[str, str]]:
        seen: dict[str, int] = {}
        problems = []
        for i, pref in enumerate(self.preferences):
            if pref.name in seen:
                problems.append((f"preferences[{i}].name", f"duplicate preference name {pref.name!r} "
                                                           f"(also preferences[{seen[pref.name]}])"))
            seen[pref.name] = i
        if self.unrelated_follow_ups is not None and not self.unrelated_follow_ups:
            problems.append(("unrelated_follow_ups", "must not be empty; omit it to use the shipped pool"))
        return problems

    @property
    def unrelated_pool(self) -> tuple[str, ...]:
        """The unrelated follow-ups this user draws from."""
        return tuple(self.unrelated_follow_ups) if self.unrelated_follow_ups else default_unrelated_follow_ups()

    @property
    def checkable(self) -> bool:
        """Whether every preference has a rule (needed by the rule simulator and the rule judge)."""
        return all(p.checkable for p in self.preferences)

    def satisfaction(self, text: str) -> dict[str, bool]:
        """Per-preference satisfaction of ``text`` under the rules."""
        return {p.name: p.satisfied_by(text) for p in self.preferences}

    def plus(self, other: Persona) -> Persona:
        """This persona with ``other``'s preferences added (complementary preferences accumulate).

        A preference of ``other`` with the same name replaces the earlier one; the profiles are joined.
        """
        names = {p.name for p in other.preferences}
        kept = [p for p in self.preferences if p.name not in names]
        return replace(
            self,
            name=f"{self.name}+{other.name}",
            profile=f"{self.profile.rstrip()}\n{other.profile.strip()}",
            preferences=kept + list(other.preferences),
        )


def parse_persona(data: dict, source: str) -> Persona:
    """Validates parsed YAML as a persona.

    Raises:
        PersonaError: every problem found, each naming ``source`` and the key.
    """
    problems: list[Problem] = []
    prefs = data.get("preferences")
    if isinstance(prefs, list):  # a single rule may be written as a mapping instead of a list of one
        data = dict(data, preferences=[
            dict(p, rule=[p["rule"]]) if isinstance(p, dict) and isinstance(p.get("rule"), dict) else p for p in prefs
        ])
    if "source" in data:
        problems.append(Problem(source, "source", "unknown key (reserved by the loader)"))
        data = {k: v for k, v in data.items() if k != "source"}
    persona = build(Persona, data, source=lambda _key: source, problems=problems)
    if problems:
        raise PersonaError(problems)
    return replace(persona, source=source)


def load_persona(name_or_path: str | Path) -> Persona:
    """Loads a shipped persona by name (``no_emojis``) or a persona YAML file by path.

    Raises:
        UnknownNameError: no such shipped persona or file.
        PersonaError: the file is not a valid persona.
    """
    path = resolve("users", name_or_path, "persona")
    return parse_persona(read_yaml_mapping(path, PersonaError), str(path))
