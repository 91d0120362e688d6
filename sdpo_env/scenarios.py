"""Scenarios: which persona the user is over which interactions, the prompt pools, and run defaults.

A scenario file (``scenarios/*.yaml``) lists phases that tile ``[0, n)`` with no gap or overlap. A phase either sets
the persona (``persona: concise_casual_beginner``; a flip is a second phase with another persona) or adds another
persona's preferences to the current ones (``add: less_filler_praise``; complementary preferences accumulate).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sdpo_env.errors import Problem, ScenarioError, UnknownNameError
from sdpo_env.files import looks_like_path, read_yaml_mapping, resolve
from sdpo_env.personas import Persona, load_persona
from sdpo_env.prompts import BUILTIN
from sdpo_env.schema import build, option


@dataclass(frozen=True)
class PhaseSpec:
    """One phase as written in the file; interactions ``start <= t < end``."""

    start: int = option(help="first interaction of the phase (inclusive)", min=0)
    end: int = option(help="end of the phase (exclusive): the next phase starts here", min=1)
    persona: str | None = option(None, "the user from now on: a shipped persona name or a YAML path")
    add: str | None = option(None, "add this persona's preferences to the current ones (complementary)")

    def check(self) -> list[tuple[str, str]]:
        problems = []
        if (self.persona is None) == (self.add is None):
            problems.append(("", "a phase needs exactly one of 'persona' (set the user) or 'add' (add preferences)"))
        if self.end <= self.start:
            problems.append(("end", f"got {self.end}; must be greater than start ({self.start})"))
        return problems


@dataclass(frozen=True)
class PromptSpec:
    """Where prompts come from: a built-in pool name or a JSONL path."""

    train: str = option("train", "requests the user sends: 'train' or a JSONL path", nonempty=True)
    eval: str = option("eval", "held-out requests for win-rate evaluation: 'eval' or a JSONL path", nonempty=True)


@dataclass(frozen=True)
class ScenarioSpec:
    """A scenario file, validated but with persona names not yet loaded."""

    name: str = option(help="scenario name", nonempty=True)
    phases: list[PhaseSpec] = option(help="phases tiling [0, n) in order", nonempty=True)
    description: str = option("", "what the scenario shows")
    prompts: PromptSpec = option(help="prompt pools", factory=PromptSpec)
    turns_per_conversation: int = option(1, "user turns per conversation; 1 = every interaction is a fresh request",
                                         min=1, max=20)
    defaults: dict[str, Any] = option(help="run settings for this scenario, overridable on the command line",
                                      factory=dict)

    def check(self) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if not self.phases:
            return problems
        if self.phases[0].start != 0:
            problems.append(("phases[0].start", f"got {self.phases[0].start}; the first phase must start at 0"))
        if self.phases[0].persona is None:
            problems.append(("phases[0]", "the first phase must set a 'persona' (there is nothing to 'add' to yet)"))
        for i in range(1, len(self.phases)):
            before, now = self.phases[i - 1], self.phases[i]
            if now.start > before.end:
                problems.append((f"phases[{i}].start", f"got {now.start}; gap after phases[{i - 1}] which ends at "
                                                       f"{before.end} (phases must tile the interactions)"))
            elif now.start < before.end:
                problems.append((f"phases[{i}].start", f"got {now.start}; overlaps phases[{i - 1}] which ends at "
                                                       f"{before.end} (start it at {before.end})"))
        return problems


@dataclass(frozen=True)
class Phase:
    """A resolved phase: the persona in force for interactions ``start <= t < end``."""

    index: int
    start: int
    end: int
    persona: Persona
    added: str | None = None  # name of the persona whose preferences this phase added


@dataclass(frozen=True)
class Scenario:
    """A loaded scenario: phases with their personas resolved."""

    spec: ScenarioSpec
    phases: tuple[Phase, ...]
    source: str

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def n_interactions(self) -> int:
        """Number of interactions the phases cover."""
        return self.phases[-1].end

    def phase_at(self, t: int) -> Phase:
        """The phase in force at interaction ``t`` (the last phase for ``t`` past the end)."""
        starts = [p.start for p in self.phases]
        return self.phases[max(0, bisect.bisect_right(starts, t) - 1)]

    def end_of(self, phase: Phase, n: int) -> int:
        """Where ``phase`` ends in a run of ``n`` interactions: its end, or ``n`` for the last phase (a run longer
        than its scenario goes on in it)."""
        return n if phase.index == self.phases[-1].index else min(phase.end, n)

    def persona_at(self, t: int) -> Persona:
        """The persona (current preferences) at interaction ``t``."""
        return self.phase_at(t).persona

    def with_persona(self, name_or_path: str) -> Scenario:
        """This scenario with its single persona replaced (``persona=`` on the command line).

        Raises:
            ScenarioError: the scenario has more than one phase, so which persona to replace is ambiguous.
        """
        if len(self.phases) != 1:
            raise ScenarioError([Problem(self.source, "phases", f"persona= replaces the persona of a one-phase "
                                 f"scenario, but {self.name!r} has {len(self.phases)} phases; write a scenario file")])
        persona = load_persona(name_or_path)
        return replace(self, phases=(replace(self.phases[0], persona=persona),))


def _relative_ref(value: str, base_dir: Path) -> str:
    if looks_like_path(value) and not Path(value).expanduser().is_absolute() and (base_dir / value).is_file():
        return str(base_dir / value)  # paths inside a scenario are relative to the scenario file first
    return value


def parse_scenario(data: dict[str, Any], source: str) -> Scenario:
    """Validates parsed YAML as a scenario and loads its personas.

    Raises:
        ScenarioError: every problem found (including unknown persona names), each naming ``source`` and the key.
        PersonaError: a persona file the scenario names is itself invalid.
    """
    problems: list[Problem] = []
    spec = build(ScenarioSpec, data, source=lambda _key: source, problems=problems)
    if problems:
        raise ScenarioError(problems)
    base_dir = Path(source).parent
    pools = {k: v if v in BUILTIN else _relative_ref(v, base_dir)
             for k, v in (("train", spec.prompts.train), ("eval", spec.prompts.eval))}
    spec = replace(spec, prompts=PromptSpec(**pools))
    for key, value in pools.items():
        if value not in BUILTIN and not Path(value).expanduser().is_file():
            problems.append(Problem(source, f"prompts.{key}", f"got {value!r}: neither a built-in pool "
                                                              f"({', '.join(BUILTIN)}) nor an existing .jsonl file"))
    phases: list[Phase] = []
    current: Persona | None = None
    for i, p in enumerate(spec.phases):
        ref = p.persona if p.persona is not None else p.add
        key = f"phases[{i}].{'persona' if p.persona is not None else 'add'}"
        try:
            loaded = load_persona(_relative_ref(str(ref), base_dir))
        except UnknownNameError as exc:
            problems.append(Problem(source, key, str(exc)))
            continue
        current = loaded if p.persona is not None or current is None else current.plus(loaded)
        phases.append(Phase(index=i, start=p.start, end=p.end, persona=current, added=p.add))
    if problems:
        raise ScenarioError(problems)
    return Scenario(spec=spec, phases=tuple(phases), source=source)


def load_scenario(name_or_path: str | Path) -> Scenario:
    """Loads a shipped scenario by name (``flip``) or a scenario YAML file by path.

    Raises:
        UnknownNameError: no such shipped scenario or file.
        ScenarioError: the file is not a valid scenario.
        PersonaError: a persona it names is invalid.
    """
    path = resolve("scenarios", name_or_path, "scenario")
    return parse_scenario(read_yaml_mapping(path, ScenarioError), str(path))


def single_persona_scenario(persona: str, n_interactions: int = 100) -> Scenario:
    """A one-phase scenario around one persona, for quick experiments and ``gym.make(..., persona=...)``."""
    data = {"name": f"single-{Path(persona).stem}", "phases": [{"start": 0, "end": n_interactions, "persona": persona}]}
    return parse_scenario(data, f"<persona {persona}>")
