"""PersonalizationEnv: the simulated user's side of the conversation, as a Gymnasium environment.

An episode is one user's life with the assistant: a stream of ``n_interactions`` interactions during which the
scenario's phases change the user's preferences. One ``step`` is one interaction:

- observation: ``{"messages": ({"role", "content"}, ...), "interaction": t}``, the conversation to answer, ending
  with a user turn;
- action: the assistant's answer (any string);
- ``info["follow_up"]``: the user's next message. In a multi-turn scenario it is also the last turn of the next
  observation; otherwise the next observation is a fresh request;
- reward: the share of the user's current preferences the answer satisfies. It is *privileged*: SDPO never reads it;
  reward-based baselines may.

The episode truncates after ``n_interactions``; it never terminates early.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from sdpo_env.errors import SdpoEnvError
from sdpo_env.prompts import Prompt, load_prompts
from sdpo_env.scenarios import Scenario, load_scenario, single_persona_scenario
from sdpo_env.simulators import SIMULATORS, FollowUp, FollowUpRequest, UserSimulator
from sdpo_env.spaces import UnicodeText

MAX_TEXT = 100_000  # characters; far above any answer, small enough to catch runaway generation


def message_space(max_length: int = MAX_TEXT) -> spaces.Dict:
    """The space of one chat message ``{"role": str, "content": str}``."""
    return spaces.Dict({"role": UnicodeText(16), "content": UnicodeText(max_length)})


class PersonalizationEnv(gym.Env[dict[str, Any], str]):
    """A simulated user who sends requests and reacts to the assistant's answers.

    Args:
        scenario: A shipped scenario name, a YAML path or a loaded :class:`Scenario`. Default ``single``.
        persona: Instead of a scenario, one persona (name or path) for the whole episode.
        n_interactions: Episode length; default the scenario's. Past the last phase's end, that phase continues.
        simulator: A registered simulator name (``rules``) or an object following ``UserSimulator``.
        simulator_kwargs: Keyword arguments for a simulator given by name.
        render_mode: ``None`` or ``"ansi"`` (the last exchange as text).
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012 - Gymnasium declares it per instance

    def __init__(
        self,
        scenario: str | Scenario | None = None,
        *,
        persona: str | None = None,
        n_interactions: int | None = None,
        simulator: str | UserSimulator = "rules",
        simulator_kwargs: dict[str, Any] | None = None,
        render_mode: str | None = None,
    ):
        if persona is not None and scenario is not None and not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario).with_persona(persona)
        elif persona is not None and scenario is None:
            scenario = single_persona_scenario(persona, n_interactions or 100)
        elif not isinstance(scenario, Scenario):
            scenario = load_scenario(scenario or "single")
        self.scenario: Scenario = scenario
        self.n_interactions = int(n_interactions or scenario.n_interactions)
        if self.n_interactions < 1:
            raise SdpoEnvError(f"n_interactions must be >= 1, got {n_interactions}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise SdpoEnvError(f"render_mode {render_mode!r} is not supported; use None or 'ansi'")
        self.render_mode = render_mode
        if isinstance(simulator, str):
            self.simulator: UserSimulator = SIMULATORS.get(simulator)(**(simulator_kwargs or {}))
        else:
            self.simulator = simulator
        if not isinstance(self.simulator, UserSimulator):
            raise SdpoEnvError(f"simulator {self.simulator!r} has no follow_up(request, rng) method")
        self.prompts: tuple[Prompt, ...] = load_prompts(scenario.spec.prompts.train)
        self._by_category: dict[str, list[int]] = {}
        for i, p in enumerate(self.prompts):
            self._by_category.setdefault(p.category, []).append(i)
        self.observation_space = spaces.Dict({
            "messages": spaces.Sequence(message_space(), stack=False),
            "interaction": spaces.Discrete(self.n_interactions + 1),
        })
        self.action_space = UnicodeText(MAX_TEXT)
        self._t = 0
        self._messages: list[dict[str, str]] = []
        self._prompt: Prompt | None = None
        self._last: tuple[str, str] | None = None

    # --- Gymnasium API ------------------------------------------------------------------------------------------

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[dict, dict]:
        super().reset(seed=seed)
        self._t = 0
        self._last = None
        self._start_conversation(self._draw_prompt())
        return self._observation(), self._phase_info()

    def step(self, action: str) -> tuple[dict, float, bool, bool, dict]:
        if self._prompt is None:
            raise SdpoEnvError("call reset() before step()")
        if self._t >= self.n_interactions:
            raise SdpoEnvError(f"the episode ended after {self.n_interactions} interactions; call reset()")
        if not isinstance(action, str):
            raise SdpoEnvError(f"the action is the assistant's answer as a string, got {type(action).__name__}")
        phase = self.scenario.phase_at(self._t)
        persona = phase.persona
        satisfaction = persona.satisfaction(action) if persona.checkable else None
        violated = None if satisfaction is None else tuple(n for n, ok in satisfaction.items() if not ok)
        reward = float(np.mean(list(satisfaction.values()))) if satisfaction else float("nan")
        new_question = self._draw_prompt(category=self._prompt.category)
        answered = list(self._messages)
        if self.np_random.random() < persona.unrelated_rate:
            pool = persona.unrelated_pool
            follow_up = FollowUp(text=pool[int(self.np_random.integers(len(pool)))], kind="unrelated")
        else:
            request = FollowUpRequest(persona=persona, messages=tuple(answered), response=action, violated=violated,
                                      new_question=new_question.text)
            follow_up = self.simulator.follow_up(request, self.np_random)
        info = {
            **self._phase_info(),
            "follow_up": follow_up.text,
            "follow_up_kind": follow_up.kind,
            "relevant": follow_up.relevant,
            "addressed": list(follow_up.addressed),
            "satisfaction": satisfaction,
            "messages": answered,
        }
        self._last = (action, follow_up.text)
        self._t += 1
        user_turns = sum(1 for m in self._messages if m["role"] == "user")
        if user_turns < self.scenario.spec.turns_per_conversation and follow_up.kind != "new_question":
            self._messages += [{"role": "assistant", "content": action}, {"role": "user", "content": follow_up.text}]
        elif follow_up.kind == "new_question":
            self._start_conversation(new_question)  # the user's new question opens the next conversation
        else:
            self._start_conversation(self._draw_prompt())
        truncated = self._t >= self.n_interactions
        return self._observation(), reward, False, truncated, info

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        lines = [f"[{m['role']}] {m['content']}" for m in self._messages]
        if self._last is not None:
            lines += ["--- last exchange ---", f"[assistant] {self._last[0]}", f"[user] {self._last[1]}"]
        return "\n".join(lines)

    # --- resumable runs -----------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        """Everything that determines the rest of the episode (position, conversation, generator state)."""
        prompt = self._prompt
        return {"t": self._t, "messages": [dict(m) for m in self._messages], "last": self._last,
                "prompt": None if prompt is None else {"messages": [dict(m) for m in prompt.messages],
                                                       "category": prompt.category, "topic": prompt.topic},
                "rng": self.np_random.bit_generator.state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Restores :meth:`get_state`'s snapshot; the episode then continues exactly as it would have."""
        self._t, self._messages = state["t"], [dict(m) for m in state["messages"]]
        self._last = tuple(state["last"]) if state["last"] else None  # type: ignore[assignment]
        p = state["prompt"]
        self._prompt = None if p is None else Prompt(messages=tuple(p["messages"]), category=p["category"],
                                                     topic=p["topic"])
        self.np_random.bit_generator.state = state["rng"]

    # --- internals ----------------------------------------------------------------------------------------------

    def _draw_prompt(self, category: str | None = None) -> Prompt:
        pool = self._by_category.get(category or "", []) if category else []
        if len(pool) < 2:
            return self.prompts[int(self.np_random.integers(len(self.prompts)))]
        return self.prompts[pool[int(self.np_random.integers(len(pool)))]]

    def _start_conversation(self, prompt: Prompt) -> None:
        self._prompt = prompt
        self._messages = [dict(m) for m in prompt.messages]

    def observation(self) -> dict[str, Any]:
        """The current observation (the conversation to answer), e.g. after :meth:`set_state`."""
        return self._observation()

    def _observation(self) -> dict[str, Any]:
        return {"messages": tuple(dict(m) for m in self._messages), "interaction": self._t}

    def _phase_info(self) -> dict[str, Any]:
        phase = self.scenario.phase_at(min(self._t, self.n_interactions - 1))
        return {"interaction": self._t, "phase": phase.index, "persona": phase.persona.name,
                "preferences": [p.name for p in phase.persona.preferences], "category": self._prompt.category
                if self._prompt else ""}


DEFAULT_POPULATION = ("concise_casual_beginner", "detailed_professional_expert", "no_emojis", "more_lists")


def make_population(
    num_envs: int,
    personas: list[str] | tuple[str, ...] | None = None,
    scenario: str | None = None,
    n_interactions: int | None = None,
    **kwargs: Any,
) -> gym.vector.SyncVectorEnv:
    """Vector entry point: ``gym.make_vec("sdpo_env/Personalization-v0", num_envs=4)`` gives a population of users.

    Args:
        num_envs: Number of users.
        personas: One persona per user, cycled if shorter than ``num_envs``; default a mixed population. Ignored
            when ``scenario`` is given (then every user follows the scenario).
        scenario: A scenario all users follow.
        n_interactions: Episode length (default 100 for personas, the scenario's length otherwise).
        **kwargs: Passed to :class:`PersonalizationEnv`.
    """
    if scenario is not None:
        fns = [lambda: PersonalizationEnv(scenario, n_interactions=n_interactions, **kwargs)] * num_envs
    else:
        names = list(personas or DEFAULT_POPULATION)
        if not names:
            raise SdpoEnvError("personas must name at least one persona")
        def user(name: str) -> Callable[[], PersonalizationEnv]:
            return lambda: PersonalizationEnv(persona=name, n_interactions=n_interactions or 100, **kwargs)

        fns = [user(names[i % len(names)]) for i in range(num_envs)]
    return gym.vector.SyncVectorEnv(fns)
