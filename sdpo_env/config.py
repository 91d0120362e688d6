"""Run configuration: typed sections, YAML defaults per scenario, ``key=value`` overrides on the command line.

Precedence, lowest first: the dataclass defaults below < the model folder's ``sdpo_env.yaml`` (a model's own
settings, ``defaults:``; the shipped ``tiny-v3`` has one) < the scenario file's ``defaults:`` block < the command line.
Every problem in any layer is reported at once, naming the layer (file or "command line"), the dotted key, the bad
value and what is allowed::

    python -m sdpo_env.run scenario=flip seed=1 policy.temperature=0.7 agent=sdpo eval.every=50
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from sdpo_env.errors import ConfigError, Problem, SdpoEnvError
from sdpo_env.schema import build, option, to_dict
from sdpo_env.tiny import DEFAULT_MODEL, resolve_model_path

T = TypeVar("T")

COMMAND_LINE = "command line"
DEFAULTS = "defaults"
# A model folder's own settings for runs on it: `defaults:` of learner options and sampling settings.
MODEL_SETTINGS = "sdpo_env.yaml"


LLM_BACKENDS = ("openai", "anthropic", "hf")


def llm_section_problems(backend: str, model: str | None, base_url: str | None) -> list[tuple[str, str]]:
    """Cross-field rules of the simulator and judge sections."""
    problems = []
    if backend in LLM_BACKENDS and not model:
        example = {"openai": "gpt-4o-mini", "anthropic": "claude-haiku-4-5", "hf": "tiny"}[backend]
        problems.append(("model", f"backend={backend} needs a model, e.g. model={example}"))
    if base_url is not None and backend not in ("openai", "anthropic"):
        problems.append(("base_url", f"only the openai and anthropic backends use a server; got backend={backend}"))
    return problems


@dataclass
class PolicyConfig:
    """The policy model and how it samples."""

    model: str = option(DEFAULT_MODEL, "'tiny-v3' (the shipped default), 'tiny' (the first shipped model, the "
                        "default until 7 December 2026), 'tiny-v2' (its refinement; tiny-v3 is their 1:3 mean), a "
                        "local folder, or a Hugging Face id", nonempty=True)
    temperature: float = option(1.0, "sampling temperature; 0 = greedy", min=0.0)
    top_p: float = option(1.0, "nucleus sampling mass", gt=0.0, max=1.0)
    max_new_tokens: int = option(192, "longest answer in tokens", min=1)
    device: str = option("auto", "'auto' (CUDA, then MPS, then CPU; always the CPU for the shipped 'tiny' "
                         "models), 'cpu', 'cuda', 'cuda:1', 'mps'", nonempty=True)
    dtype: str = option("auto", "weights dtype", choices=("auto", "float32", "bfloat16", "float16"))


@dataclass
class SimulatorConfig:
    """The simulated user's writer of follow-ups."""

    backend: str = option("rules", "'rules' (offline), 'openai', 'anthropic', 'hf', or a dotted-path simulator",
                          nonempty=True)
    max_complaints: int = option(2, "rules: most preferences one follow-up complains about", min=1)
    model: str | None = option(None, "LLM backends: the model (gpt-4o-mini, claude-haiku-4-5, a folder for hf)")
    base_url: str | None = option(None, "openai: an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    temperature: float = option(0.0, "LLM backends: sampling temperature (Anthropic's current API ignores it)",
                                min=0.0)
    max_tokens: int = option(256, "LLM backends: longest reply in tokens", min=1)
    max_retries: int = option(6, "API backends: the SDK's retries per request (backoff, retry-after)", min=0)
    timeout_s: float = option(60.0, "API backends: the SDK's timeout per attempt, seconds", gt=0.0)
    concurrency: int = option(8, "API backends: most requests in flight at once", min=1)
    price_input_per_mtok: float | None = option(None, "USD per million input tokens; default the price table",
                                                min=0.0)
    price_output_per_mtok: float | None = option(None, "USD per million output tokens; default the price table",
                                                 min=0.0)

    def check(self) -> list[tuple[str, str]]:
        return llm_section_problems(self.backend, self.model, self.base_url)


@dataclass
class JudgeConfig:
    """The pairwise judge used for win rates."""

    backend: str = option("rules", "'rules' (offline), 'openai', 'anthropic', 'hf', or a dotted-path judge",
                          nonempty=True)
    min_words: int = option(5, "rules: an answer needs this many words to be valid (collapse check)", min=0)
    model: str | None = option(None, "LLM backends: the model (gpt-4o-mini, claude-haiku-4-5, a folder for hf)")
    base_url: str | None = option(None, "openai: an OpenAI-compatible server, e.g. http://localhost:8000/v1")
    temperature: float = option(0.0, "LLM backends: sampling temperature (Anthropic's current API ignores it)",
                                min=0.0)
    max_tokens: int = option(16, "LLM backends: longest verdict reply in tokens", min=1)
    logprobs: bool = option(True, "openai/hf: read label log-probs (prob_a); turn off for servers without them")
    max_retries: int = option(6, "API backends: the SDK's retries per request (backoff, retry-after)", min=0)
    timeout_s: float = option(60.0, "API backends: the SDK's timeout per attempt, seconds", gt=0.0)
    concurrency: int = option(8, "API backends: most judge requests in flight at once", min=1)
    price_input_per_mtok: float | None = option(None, "USD per million input tokens; default the price table",
                                                min=0.0)
    price_output_per_mtok: float | None = option(None, "USD per million output tokens; default the price table",
                                                 min=0.0)

    def check(self) -> list[tuple[str, str]]:
        return llm_section_problems(self.backend, self.model, self.base_url)


@dataclass
class EvalConfig:
    """Win-rate evaluation against the frozen base model."""

    every: int = option(25, "evaluate every N interactions (and at 0, at the end and when the persona changes)",
                        min=1)
    n_prompts: int = option(64, "held-out prompts per evaluation (the paper uses 256)", min=1)
    samples_per_prompt: int = option(1, "policy answers sampled per held-out prompt", min=1)
    bootstrap: int = option(1000, "bootstrap resamples for the win-rate CI", min=10)
    oracle: bool = option(True, "also evaluate the in-context oracle (base model + profile) as a reference line")
    surprise: bool = option(True, "also score the answers under the frozen base model (surprise, base_surprise: it "
                                  "reads garbled or off-topic text the rules do not); one forward pass over them per "
                                  "evaluation, 1.2x the time of the tiny model's flip run")
    background: str = option("auto", "evaluate in a second process while the loop goes on: 'auto' (on a CPU with 2+ "
                             "cores, a judge without LLM calls, 100+ interactions, weights under 1/8 of the memory), "
                             "'always', 'never'",
                             choices=("auto", "always", "never"))


@dataclass
class RunConfig:
    """Everything one run needs; written resolved into the run folder as ``config.yaml``."""

    scenario: str = option("flip", "a shipped scenario name or a path to a scenario YAML", nonempty=True)
    persona: str | None = option(None, "replace the persona of a one-phase scenario (name or YAML path)")
    seed: int = option(0, "one seed for the environment, sampling, simulator and judge", min=0)
    n_interactions: int | None = option(None, "number of interactions; default the scenario's length", min=1)
    out_dir: str | None = option(None, "run folder; default runs/<time>-<scenario>")
    resume: str | None = option(None, "resume the run in this folder")
    checkpoint_every: int = option(50, "save a resumable checkpoint every N interactions", min=1)
    snapshot_every: int = option(0, "also keep the run's state every N interactions in snapshots/t<T>.pt (1.6 MB "
                                    "each on the tiny model), to judge it again or branch there (at=T); 0 = only at "
                                    "persona changes", min=0)
    budget_usd: float | None = option(None, "stop cleanly (with a checkpoint) before LLM API spending would pass "
                                            "this; may be raised on resume", gt=0.0)
    cache_dir: str | None = option(None, "folder of the LLM call cache; default the run folder")
    policy: PolicyConfig = option(help="policy model and sampling", factory=PolicyConfig)
    agent: dict[str, Any] = option(help="the learner: agent=NAME plus its own options (agent.lr=...)",
                                   factory=lambda: {"name": "sdpo"})
    simulator: SimulatorConfig = option(help="simulated user", factory=SimulatorConfig)
    judge: JudgeConfig = option(help="pairwise judge", factory=JudgeConfig)
    eval: EvalConfig = option(help="win-rate evaluation", factory=EvalConfig)

    sources: dict[str, str] = field(default_factory=dict, init=False, repr=False, compare=False,
                                    metadata={"help": "where each setting came from (not written to config.yaml)"})

    def source_of(self, key: str) -> str:
        """The layer (file or "command line") that set ``key``, or "defaults"."""
        return self.sources.get(key, DEFAULTS)

    def check(self) -> list[tuple[str, str]]:
        if not isinstance(self.agent.get("name"), str) or not self.agent["name"]:
            return [("agent.name", f"got {self.agent.get('name')!r}; name a learner, e.g. agent=sdpo")]
        if self.eval.background == "always" and self.judge.backend in LLM_BACKENDS:
            return [("eval.background", f"'always' needs a judge without LLM calls (judge.backend={self.judge.backend} "
                     "keeps its cost meter and call cache in the loop's process); use auto or never")]
        return []


def parse_overrides(args: Sequence[str]) -> dict[str, Any]:
    """Parses ``key=value`` arguments (dotted keys, YAML values, lists as ``[a,b]``) into a nested mapping.

    Raises:
        ConfigError: an argument is not ``key=value`` or its value cannot be parsed; every bad argument is listed.
    """
    problems = []
    for arg in args:
        if "=" not in arg or arg.startswith("="):
            problems.append(Problem(COMMAND_LINE, arg, "expected key=value (e.g. scenario=flip seed=1)"))
    if problems:
        raise ConfigError(problems)
    # `agent=NAME` is `agent.name=NAME`: otherwise a later `agent.lr=...` replaces the whole section, name included.
    args = [f"agent.name={a.partition('=')[2]}" if a.partition("=")[0].strip() == "agent"
            and not a.partition("=")[2].lstrip().startswith("{") else a for a in args]
    try:
        parsed = OmegaConf.to_container(OmegaConf.from_dotlist(list(args)), resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError([Problem(COMMAND_LINE, " ".join(args), f"cannot parse: {exc}")]) from None
    return parsed  # type: ignore[return-value]


def command_line_config(cls: type[T], args: Sequence[str]) -> T:
    """A command's options (dataclass ``cls``) from its ``key=value`` arguments.

    Raises:
        ConfigError: unknown keys or bad values, all listed, each attributed to the command line.
    """
    problems: list[Problem] = []
    config = build(cls, parse_overrides(args), source=lambda _key: COMMAND_LINE, problems=problems)
    if problems:
        raise ConfigError(problems)
    return config


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as dotted keys: ``{"eval": {"every": 10}}`` -> ``{"eval.every": 10}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, dotted))
        else:
            out[dotted] = value
    return out


def _expand_shorthand(data: Mapping[str, Any]) -> dict[str, Any]:
    """``agent: sdpo`` means ``agent: {name: sdpo}``; dotted keys in YAML (``eval.every: 10``) are nested."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        node = out
        parts = str(key).split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            leaf = parts[-1]
            if leaf == "agent" and isinstance(value, str) and len(parts) == 1:
                value = {"name": value}
            if isinstance(value, Mapping):
                value = _expand_shorthand(value)
                if isinstance(node.get(leaf), dict):
                    node[leaf] = merge(node[leaf], value)
                    continue
            node[leaf] = value
    return out


def merge(low: Mapping[str, Any], high: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merges ``high`` over ``low`` (mappings merge, everything else is replaced)."""
    out = dict(low)
    for key, value in high.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_config(layers: Sequence[tuple[str, Mapping[str, Any]]]) -> RunConfig:
    """Builds a :class:`RunConfig` from ``(source, data)`` layers, later layers winning.

    Raises:
        ConfigError: every problem across all layers, each naming the layer that set the bad value; the
            learner's own options (``agent.lr``, ...) are checked against the learner ``agent.name`` names.
        UnknownNameError, SdpoEnvError: the learner cannot be found and nothing else is wrong.
    """
    merged: dict[str, Any] = {"agent": dict(RunConfig().agent)}  # free-form sections merge over their defaults
    origin: dict[str, str] = {}
    for source, data in layers:
        expanded = _expand_shorthand(data)
        merged = merge(merged, expanded)
        for dotted in flatten(expanded):
            parts = dotted.split(".")
            for i in range(1, len(parts) + 1):  # a mapping's own key too, so problems about it name the layer
                origin[".".join(parts[:i])] = source

    def source_of(key: str) -> str:
        while key:
            if key in origin:
                return origin[key]
            key = key.rpartition(".")[0]
        return DEFAULTS

    problems: list[Problem] = []
    config = build(RunConfig, merged, source=source_of, problems=problems)
    if not any(p.key == "agent" or p.key.startswith("agent.") for p in problems):
        problems += _learner_problems(config.agent, source_of, alone=not problems)
    if problems:
        raise ConfigError(problems)
    # each setting's own layer: a default left inside a section that a layer touched (agent.name) stays "defaults"
    config.sources = {k: origin.get(k, DEFAULTS) for k in flatten(merged)}
    return config


def _learner_problems(agent: Mapping[str, Any], source_of: Callable[[str], str], *, alone: bool) -> list[Problem]:
    """The problems in the learner's own options (``agent.*``), to be listed with the rest of the configuration's.

    Raises:
        UnknownNameError, SdpoEnvError: ``alone`` and the learner cannot be found (its own error, with suggestions);
            with other problems it becomes one of them.
    """
    from agents.base import learner_config  # local: the learners import torch

    try:
        learner_config(agent, source=source_of)
    except ConfigError as exc:
        return exc.problems
    except SdpoEnvError as exc:
        if alone:
            raise
        return [Problem(source_of("agent.name"), "agent.name", str(exc))]
    return []


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """The resolved configuration as plain data (for ``config.yaml``)."""
    data = to_dict(config)
    data.pop("sources", None)
    return data  # type: ignore[no-any-return]


def load_run_config(args: Sequence[str]) -> tuple[RunConfig, Any]:
    """Parses command-line ``key=value`` arguments, loads the scenario, and resolves the run configuration.

    Returns:
        ``(config, scenario)``; the scenario has ``persona=`` applied.

    Raises:
        ConfigError: bad arguments or settings (all listed together).
        ScenarioError, PersonaError, UnknownNameError: the scenario or persona cannot be loaded.
    """
    from sdpo_env.scenarios import load_scenario  # local: config stays importable without the YAML layer

    cli = parse_overrides(args)
    name = cli.get("scenario", RunConfig.scenario)
    if not isinstance(name, str):
        raise ConfigError([Problem(COMMAND_LINE, "scenario", f"expected a scenario name or path, got {name!r}")])
    scenario = load_scenario(name)
    reserved = sorted({"scenario", "resume", "out_dir"} & set(_expand_shorthand(scenario.spec.defaults)))
    if reserved:
        raise ConfigError([Problem(scenario.source, f"defaults.{k}", "cannot be set by a scenario; pass it on the "
                                                                     "command line") for k in reserved])
    layers: list[tuple[str, Mapping[str, Any]]] = [(scenario.source, scenario.spec.defaults), (COMMAND_LINE, cli)]
    config = resolve_config(layers)
    model_layer = model_settings(config.policy.model, str(config.agent["name"]))
    if model_layer is not None:
        config = resolve_config([model_layer, *layers])
    if config.persona is not None:
        scenario = scenario.with_persona(config.persona)
    return config, scenario


def model_settings(model: str, learner: str) -> tuple[str, dict[str, Any]] | None:
    """The model's own settings for runs on it, as the lowest configuration layer ``(source, data)``: the
    ``defaults:`` of ``sdpo_env.yaml`` in its folder (``model`` a shipped name or a local folder), less the learner
    options that ``learner`` does not have; None where there is no such file (a Hugging Face id, say).

    Raises:
        ConfigError: the file is not a YAML mapping holding ``defaults:``, or sets anything but the learner's options
            (``agent.*``) and the policy's sampling (``policy.*``), or sets ``agent.name`` or ``policy.model``; every
            problem names the file and the key.
    """
    from agents.base import learner_option_names  # local: the learners import torch
    from sdpo_env.files import read_yaml_mapping

    path = Path(resolve_model_path(model)).expanduser() / MODEL_SETTINGS
    if not path.is_file():
        return None
    source = str(path)
    data = read_yaml_mapping(path, ConfigError)
    problems = [Problem(source, key, "unknown key; a model's settings file holds one mapping, defaults:")
                for key in data if key != "defaults"]
    defaults = data.get("defaults") or {}
    if not isinstance(defaults, Mapping):
        problems.append(Problem(source, "defaults", f"expected a mapping of settings, got {defaults!r}"))
        defaults = {}
    settings = flatten(_expand_shorthand(defaults))
    for key in settings:
        if key in ("agent.name", "policy.model") or not key.startswith(("agent.", "policy.")):
            problems.append(Problem(source, f"defaults.{key}", "a model may set the learner's options (agent.lr=...) "
                                                               "and the policy's sampling (policy.temperature=...), "
                                                               "not the learner, the model or anything else"))
    if problems:
        raise ConfigError(problems)
    accepted = learner_option_names(learner)
    kept = {key: value for key, value in settings.items()
            if not key.startswith("agent.") or key.split(".")[1] in accepted}
    return source, _expand_shorthand(kept)


def model_settings_line(config: RunConfig) -> str | None:
    """``agent.kl_coef=0.1 from .../sdpo_env.yaml``: the settings a run took from its model's own file, or None."""
    taken = {key: source for key, source in config.sources.items() if source.endswith(MODEL_SETTINGS)}
    if not taken:
        return None
    values = flatten(config_to_dict(config))
    given = " ".join(f"{key}={values[key]}" for key in sorted(taken))
    return f"{given} from {next(iter(taken.values()))} (the model's own settings; give another value to change it)"
