"""Run configuration: precedence, shorthand, and one error listing every problem."""

from __future__ import annotations

import pytest

from sdpo_env.config import RunConfig, load_run_config, parse_overrides, resolve_config
from sdpo_env.errors import ConfigError, UnknownNameError


def test_defaults_then_scenario_then_command_line(write_yaml) -> None:
    path = write_yaml({"name": "s", "phases": [{"start": 0, "end": 40, "persona": "no_emojis"}],
                       "defaults": {"eval.every": 10, "seed": 3, "policy": {"temperature": 0.5}}})
    config, scenario = load_run_config([f"scenario={path}", "seed=7", "agent=none"])
    assert config.eval.every == 10  # from the scenario file
    assert config.policy.temperature == 0.5  # from the scenario file (nested form)
    assert config.seed == 7  # the command line wins
    assert config.agent == {"name": "none"}  # shorthand for agent.name=none
    assert config.eval.n_prompts == RunConfig().eval.n_prompts  # untouched default
    assert scenario.n_interactions == 40


def test_lists_and_nested_overrides() -> None:
    parsed = parse_overrides(["agent.lr=1e-3", "agent.name=sdpo", "tags=[a,b]"])
    assert parsed == {"agent": {"lr": 1e-3, "name": "sdpo"}, "tags": ["a", "b"]}


def test_every_problem_is_listed_with_its_source(write_yaml) -> None:
    path = write_yaml({"name": "s", "phases": [{"start": 0, "end": 40, "persona": "no_emojis"}],
                       "defaults": {"eval.evry": 10}})
    with pytest.raises(ConfigError) as caught:
        load_run_config([f"scenario={path}", "seed=-1", "policy.temprature=0.5", "policy.dtype=fp16",
                         "eval.every=often"])
    text = str(caught.value)
    assert text.startswith("5 problem(s) in the configuration:")
    assert f"{path}: eval.evry: unknown key. Did you mean 'every'?" in text
    assert "command line: seed: got -1; must be >= 0" in text
    assert "command line: policy.temprature: unknown key. Did you mean 'temperature'?" in text
    assert "command line: policy.dtype: got 'fp16'; allowed: 'auto', 'float32', 'bfloat16', 'float16'." in text
    assert "command line: eval.every: expected an integer, got 'often' (str)" in text


def test_argument_without_equals() -> None:
    with pytest.raises(ConfigError, match=r"command line: flip: expected key=value \(e\.g\. scenario=flip seed=1\)"):
        parse_overrides(["flip"])


def test_scenario_cannot_set_reserved_keys(write_yaml) -> None:
    path = write_yaml({"name": "s", "phases": [{"start": 0, "end": 4, "persona": "no_emojis"}],
                       "defaults": {"out_dir": "/tmp/x"}})
    with pytest.raises(ConfigError, match=r"defaults\.out_dir: cannot be set by a scenario"):
        load_run_config([f"scenario={path}"])


def test_types_are_coerced_only_when_lossless() -> None:
    config = resolve_config([("command line", {"policy": {"temperature": 1}, "n_interactions": 10.0})])
    assert config.policy.temperature == 1.0 and isinstance(config.policy.temperature, float)
    assert config.n_interactions == 10 and isinstance(config.n_interactions, int)
    with pytest.raises(ConfigError, match=r"n_interactions: expected an integer, got 2\.5 \(float\)"):
        resolve_config([("command line", {"n_interactions": 2.5})])


def test_persona_override_applies(tmp_path) -> None:
    config, scenario = load_run_config(["scenario=single", "persona=likes_emojis"])
    assert scenario.persona_at(0).name == "likes_emojis" and config.persona == "likes_emojis"


def test_agent_options_merge_over_the_default_learner() -> None:
    config = resolve_config([("command line", {"agent": {"lr": 0.01}})])
    assert config.agent == {"name": "sdpo", "lr": 0.01}
    config = resolve_config([("s.yaml", {"agent": {"lr": 0.01}}), ("command line", {"agent": "dpo_hindsight"})])
    assert config.agent == {"name": "dpo_hindsight", "lr": 0.01}
    with pytest.raises(ConfigError, match=r"s\.yaml: agent\.lr: learner 'none' takes no options"):
        resolve_config([("s.yaml", {"agent": {"lr": 0.01}}), ("command line", {"agent": "none"})])


def test_bad_learner_options_are_listed_with_the_rest_naming_the_file_that_set_them(write_yaml) -> None:
    path = write_yaml({"name": "s", "phases": [{"start": 0, "end": 4, "persona": "no_emojis"}],
                       "defaults": {"agent": {"lr": -1.0}}})
    with pytest.raises(ConfigError) as caught:
        load_run_config([f"scenario={path}", "agent.teachr=base", "eval.evry=3"])
    text = str(caught.value)
    assert text.startswith("3 problem(s) in the configuration:")
    assert f"{path}: agent.lr: got -1.0; must be > 0.0" in text
    assert "command line: agent.teachr: unknown key. Did you mean 'teacher'?" in text
    assert "command line: eval.evry: unknown key. Did you mean 'every'?" in text


def test_an_unknown_learner_is_its_own_error_alone_and_one_problem_among_others() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown learner 'sdp'\. Did you mean 'sdpo'"):
        load_run_config(["scenario=flip", "agent=sdp"])
    with pytest.raises(ConfigError) as caught:
        load_run_config(["scenario=flip", "agent=sdp", "seed=-1"])
    assert str(caught.value).startswith("2 problem(s) in the configuration:")
    assert "command line: agent.name: unknown learner 'sdp'. Did you mean 'sdpo'?" in str(caught.value)


def test_internal_fields_cannot_be_set() -> None:
    with pytest.raises(ConfigError, match=r"command line: sources: unknown key\."):
        resolve_config([("command line", {"sources": {"a": "b"}})])


def test_agent_name_survives_a_later_agent_option() -> None:
    from sdpo_env.config import parse_overrides

    assert parse_overrides(["agent=dpo_hindsight", "agent.lr=0.01"]) == {"agent": {"name": "dpo_hindsight",
                                                                                  "lr": 0.01}}
    assert parse_overrides(["agent.lr=0.01", "agent=none"]) == {"agent": {"lr": 0.01, "name": "none"}}
