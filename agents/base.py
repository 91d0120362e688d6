"""The learner protocol: every online learner (SDPO, baselines, a user's own class) plugs in behind it.

A learner answers conversations (``act`` in the stream, ``answer`` for evaluation), learns from what happened
(``observe``), exposes its policy, and saves/restores its whole state for resumable runs. A learner that may read
privileged information about the user (the in-context oracle) also defines ``set_persona(persona)``.

Learners are registered by name (``agent=sdpo``) or named by dotted path (``agent=mypkg.learners:MyLearner``); a
learner's options come from its ``Config`` dataclass, validated like every other setting (``agent.lr=1e-3``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from sdpo_env.errors import ConfigError, Problem, SdpoEnvError
from sdpo_env.policy import ChatPolicy
from sdpo_env.registry import Registry
from sdpo_env.schema import build, to_dict

Messages = Sequence[dict[str, str]]


@dataclass
class Transition:
    """One interaction as a learner sees it afterwards.

    Attributes:
        messages: The conversation the response answered (x), ending with a user turn.
        response: The assistant's answer (y).
        follow_up: The user's next message (o).
        reward: The environment's hidden satisfaction score. Privileged: SDPO never reads it.
        info: The environment's info (phase, relevance, ...), for logging.
    """

    messages: Messages
    response: str
    follow_up: str
    reward: float = float("nan")
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        keep = {k: self.info[k] for k in ("interaction", "phase", "relevant", "follow_up_kind") if k in self.info}
        return {"messages": [dict(m) for m in self.messages], "response": self.response, "follow_up": self.follow_up,
                "reward": self.reward, "info": keep}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Transition:
        return cls(messages=data["messages"], response=data["response"], follow_up=data["follow_up"],
                   reward=data["reward"], info=dict(data["info"]))


@runtime_checkable
class OnlineLearner(Protocol):
    """What the runner and the benchmark need from a learner."""

    policy: ChatPolicy

    def act(self, conversations: Sequence[Messages]) -> list[str]:
        """Answers each conversation (each ends with a user turn) during the interaction stream."""
        ...

    def answer(self, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        """Answers for evaluation: seeded by the caller, and without changing the learner's state."""
        ...

    def observe(self, transitions: Sequence[Transition]) -> dict[str, float]:
        """Learns from finished interactions; returns metrics (namespaced, e.g. ``sdpo/loss``), maybe empty."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly after a restart (adapter, optimizer, buffers, counters)."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        ...


LEARNERS: Registry = Registry("learner")


def learner_config(options: Mapping[str, Any], *, source: str | Callable[[str], str] = "command line"
                   ) -> tuple[type, Any]:
    """Resolves the learner class named by ``options["name"]`` and validates its options, without building it.

    Called before any model is loaded, so a typo costs no loading time.

    Raises:
        UnknownNameError, SdpoEnvError: unknown learner name or unimportable dotted path.
        ConfigError: options the learner does not accept, or bad values (all listed).
    """
    import agents  # noqa: F401  (registers the shipped learners)

    name = options.get("name", "")
    cls = LEARNERS.get(str(name))
    config_cls = getattr(cls, "Config", None)
    rest = {k: v for k, v in options.items() if k != "name"}
    source_of = source if callable(source) else (lambda _key: str(source))
    if config_cls is None:
        if rest:
            raise ConfigError([Problem(source_of(f"agent.{k}"), f"agent.{k}", f"learner {name!r} takes no options")
                               for k in rest])
        return cls, None
    problems: list[Problem] = []
    config = build(config_cls, rest, source=source_of, prefix="agent", problems=problems)
    if problems:
        raise ConfigError(problems)
    return cls, config


def resolved_learner_options(options: Mapping[str, Any], *, source: str | Callable[[str], str] = "command line"
                             ) -> dict[str, Any]:
    """``options`` validated, with every option of the learner filled in (its default where not given).

    This is what a run writes to ``config.yaml``: the values it ran with, so a later change of a default neither
    changes a resumed run nor lets a bench mistake an old run for one with today's defaults.
    """
    _, config = learner_config(options, source=source)
    return {"name": options.get("name", ""), **({} if config is None else to_dict(config))}


def learner_option_names(name: str) -> set[str]:
    """The options learner ``name`` takes (its ``Config``'s fields; none for a learner without one).

    Raises:
        UnknownNameError, SdpoEnvError: unknown learner name or unimportable dotted path.
    """
    import agents  # noqa: F401  (registers the shipped learners)

    config_cls = getattr(LEARNERS.get(name), "Config", None)
    return {f.name for f in dataclasses.fields(config_cls)} if config_cls is not None else set()


def with_absent_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """A stored run's ``agent`` section, with each option its ``config.yaml`` predates set to what the run had before
    the option existed, where that is not today's default (``option(absent=...)``; the teacher's contrast, say, which
    runs from before 5 December 2026 did not have). So a resumed or branched run goes on as it ran, and a bench does
    not take such a run for one with today's defaults. A name that names no learner is left for the caller to report.
    """
    import agents  # noqa: F401  (registers the shipped learners)

    filled = dict(options)
    try:
        config_cls = getattr(LEARNERS.get(str(options.get("name", ""))), "Config", None)
    except SdpoEnvError:
        return filled
    for f in dataclasses.fields(config_cls) if config_cls is not None else ():
        if f.name not in filled and "absent" in f.metadata:
            filled[f.name] = f.metadata["absent"]
    return filled


def make_learner(options: Mapping[str, Any], policy: ChatPolicy, *, seed: int, source: str = "command line"
                 ) -> OnlineLearner:
    """Builds the learner named by ``options["name"]`` with its validated options.

    Args:
        options: ``{"name": ..., **learner options}`` (the run config's ``agent`` section).
        policy: The policy the learner acts with and trains.
        seed: The run's seed.
        source: Where the options came from (a label, or a function from dotted key to label), for error messages.

    Raises:
        UnknownNameError, SdpoEnvError: unknown learner name, unimportable dotted path, or a class that does not
            follow the protocol.
        ConfigError: options the learner does not accept, or bad values (all listed).
    """
    cls, config = learner_config(options, source=source)
    learner = cls(policy, config, seed=seed)
    if not isinstance(learner, OnlineLearner):
        raise SdpoEnvError(f"{options.get('name')!r} does not implement the learner protocol (policy, act, answer, "
                           "observe, state_dict, load_state_dict); see agents/base.py")
    return learner


def set_persona(learner: OnlineLearner, persona: Any) -> None:
    """Tells a learner that reads privileged persona information (the in-context oracle) who the user is now."""
    hook = getattr(learner, "set_persona", None)
    if callable(hook):
        hook(persona)


def sampling_seed(seed: int, step: int) -> int:
    """A distinct, reproducible generation seed for each act call of a run."""
    return (seed * 1_000_003 + step) % (2**63 - 1)
