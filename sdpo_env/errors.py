"""The project's exception hierarchy.

Every error caused by user input (a YAML file, a command-line override, a prompt file, a plug-in name) is raised as
one of these, with a message that says where the problem is, what was received and what is allowed. Validation
collects every problem it finds and raises them together, so a user fixes a file in one pass.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


class SdpoEnvError(Exception):
    """Base class of every error this library raises on purpose."""


@dataclass(frozen=True)
class Problem:
    """One problem found while validating user input.

    Attributes:
        source: Where the value came from: a file path, ``"command line"`` or ``"defaults"``.
        key: Dotted key inside the source (``"preferences[0].rule.metric"``); empty for the whole source.
        message: What is wrong: the received value and what is allowed.
    """

    source: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"{self.source}: {self.key}" if self.key else self.source
        return f"{where}: {self.message}"


class ValidationError(SdpoEnvError):
    """One or more problems in user input; ``problems`` lists them all."""

    what = "input"

    def __init__(self, problems: Iterable[Problem]):
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in {self.what}:"] + [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class ConfigError(ValidationError):
    """A run configuration (scenario defaults or command-line overrides) is invalid."""

    what = "the configuration"


class PersonaError(ValidationError):
    """A persona YAML file is invalid."""

    what = "a persona file"


class ScenarioError(ValidationError):
    """A scenario YAML file is invalid."""

    what = "a scenario file"


class PromptFileError(ValidationError):
    """A prompt JSONL file is invalid."""

    what = "a prompt file"


class UnknownNameError(SdpoEnvError):
    """A name (persona, scenario, learner, metric, ...) that is not known, with close matches suggested."""

    def __init__(self, kind: str, name: str, known: Iterable[str], hint: str = "", *, message: str | None = None):
        self.kind, self.name, self.known = kind, name, sorted(known)
        super().__init__(message or unknown_name_message(kind, name, self.known, hint))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """Returns ``" Did you mean 'x'?"`` for the closest known names, or an empty string."""
    matches = difflib.get_close_matches(str(name), list(known), n=3, cutoff=0.6)
    if not matches:
        return ""
    return " Did you mean " + " or ".join(repr(m) for m in matches) + "?"


def unknown_name_message(kind: str, name: str, known: Iterable[str], hint: str = "") -> str:
    """Formats "unknown <kind> 'name'. Did you mean ...? Known: a, b, c." with an optional hint."""
    known = sorted(known)
    listed = ", ".join(known[:40]) + (", ..." if len(known) > 40 else "")
    message = f"unknown {kind} {name!r}.{did_you_mean(name, known)} Known: {listed or '(none)'}."
    return f"{message} {hint}".rstrip()


class MissingKeyError(SdpoEnvError):
    """An API backend is configured but its key is not in the environment (keys are never read from files)."""


class ProviderRequestError(SdpoEnvError):
    """A provider rejected a request for a reason retrying cannot fix (HTTP 4xx other than 408, 409 and 429)."""


class RunInterrupted(SdpoEnvError):
    """The run must stop now and can be resumed: the runner checkpoints before the interaction in progress."""


class ProviderUnavailableError(RunInterrupted):
    """A provider kept failing after the SDK's own retries (rate limits, 5xx, timeouts, malformed replies)."""


class BudgetExceededError(RunInterrupted):
    """The next API call could take the run's spending past ``budget_usd``."""
