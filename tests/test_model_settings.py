"""A model folder's own settings (``sdpo_env.yaml``): the lowest layer of a run's configuration."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from agents.sdpo import SDPOConfig
from sdpo_env.bench import plan
from sdpo_env.config import MODEL_SETTINGS, PolicyConfig, load_run_config, model_settings, model_settings_line
from sdpo_env.errors import ConfigError
from sdpo_env.heatmap import InspectConfig
from sdpo_env.run import main
from sdpo_env.tiny import DEFAULT_MODEL, SHIPPED_MODELS, probe
from sdpo_env.tiny.soup import main as soup_main
from tests.models import build_random_model

V3_SETTINGS = SHIPPED_MODELS["tiny-v3"] / MODEL_SETTINGS


def _model_with(folder: Path, settings: object) -> Path:
    """A folder standing for a model that carries ``settings`` as its sdpo_env.yaml (nothing else is read here)."""
    folder.mkdir(parents=True, exist_ok=True)
    text = settings if isinstance(settings, str) else yaml.safe_dump(settings)
    (folder / MODEL_SETTINGS).write_text(text, encoding="utf-8")
    return folder


def test_every_command_defaults_to_tiny_v3_the_shipped_model_that_meets_the_acceptance(monkeypatch) -> None:
    # tests/tiny/test_probe.py measures the default; tiny, the default until December 2026, misses two complaints
    assert PolicyConfig().model == DEFAULT_MODEL == "tiny-v3" and DEFAULT_MODEL in SHIPPED_MODELS
    assert InspectConfig().model == DEFAULT_MODEL

    class Loaded(Exception):
        pass

    def sampler(model_dir, *args, **kwargs):
        raise Loaded(model_dir)

    monkeypatch.setattr(probe, "Sampler", sampler)
    with pytest.raises(Loaded, match=r"^tiny-v3$"):
        probe.probe()  # what `python -m sdpo_env.tiny.probe` measures without --model


def test_tiny_v3_takes_the_anchor_from_its_own_file_and_anything_above_changes_it(write_yaml) -> None:
    assert SDPOConfig().kl_coef == 0.0  # the learner's own default: tiny and tiny-v2 run without the anchor
    config, _ = load_run_config(["scenario=flip", "policy.model=tiny-v3"])
    assert config.agent == {"name": "sdpo", "kl_coef": 0.1}
    assert config.source_of("agent.kl_coef") == str(V3_SETTINGS)
    assert config.source_of("agent.name") == "defaults"  # the section it set into keeps its other defaults' source
    line = model_settings_line(config)
    assert line is not None and line.startswith(f"agent.kl_coef=0.1 from {V3_SETTINGS}")
    assert load_run_config(["scenario=flip"])[0].agent == config.agent  # tiny-v3 is the default model
    assert load_run_config(["scenario=flip", "policy.model=tiny"])[0].agent == {"name": "sdpo"}  # tiny has no file
    # the command line and a scenario's defaults are above it
    given, _ = load_run_config(["scenario=flip", "policy.model=tiny-v3", "agent.kl_coef=0"])
    assert given.agent["kl_coef"] == 0 and model_settings_line(given) is None
    scenario = write_yaml({"name": "s", "phases": [{"start": 0, "end": 40, "persona": "no_emojis"}],
                           "defaults": {"agent.kl_coef": 0.2}})
    assert load_run_config([f"scenario={scenario}", "policy.model=tiny-v3"])[0].agent["kl_coef"] == 0.2
    # every SDPO variant has the option; a learner without it runs as it would on any model
    assert load_run_config(["scenario=flip", "policy.model=tiny-v3", "agent=sdpo_paper"])[0].agent["kl_coef"] == 0.1
    bare, _ = load_run_config(["scenario=flip", "policy.model=tiny-v3", "agent=none"])
    assert bare.agent == {"name": "none"} and model_settings_line(bare) is None


def test_a_local_folder_sets_learner_options_and_sampling(tmp_path) -> None:
    folder = _model_with(tmp_path / "m", {"defaults": {"agent": {"lr": 1.5}, "policy.temperature": 0.7}})
    config, _ = load_run_config(["scenario=flip", f"policy.model={folder}", "eval.every=10"])
    assert config.agent == {"name": "sdpo", "lr": 1.5} and config.policy.temperature == 0.7
    assert config.eval.every == 10
    assert model_settings_line(config) == (f"agent.lr=1.5 policy.temperature=0.7 from {folder / MODEL_SETTINGS} (the "
                                           "model's own settings; give another value to change it)")
    assert model_settings("Qwen/Qwen3-0.6B", "sdpo") is None  # a hub id: no folder here to read


@pytest.mark.parametrize(("settings", "expected"), [
    ({"defaults": {"agent.name": "none"}}, "defaults.agent.name: a model may set the learner's options"),
    ({"defaults": {"policy": {"model": "tiny"}}}, "defaults.policy.model: a model may set"),
    ({"defaults": {"eval.every": 5}}, "defaults.eval.every: a model may set"),
    ({"defaults": {"agent.kl_coef": 0.1}, "agent": {"lr": 1}}, "agent: unknown key; a model's settings file holds one "
                                                                "mapping, defaults:"),
    ({"defaults": [1, 2]}, "defaults: expected a mapping of settings, got [1, 2]"),
    ("defaults: [unclosed", "invalid YAML"),
    ({"defaults": {"agent.kl_coef": "lots"}}, "agent.kl_coef: expected a number, got 'lots' (str)"),
    ({"defaults": {"agent.lr": -1}}, "agent.lr: got -1"),
])
def test_a_bad_settings_file_is_refused_naming_the_file_and_the_key(tmp_path, settings, expected) -> None:
    folder = _model_with(tmp_path / "m", settings)
    with pytest.raises(ConfigError) as caught:
        load_run_config(["scenario=flip", f"policy.model={folder}"])
    text = " ".join(str(caught.value).split())
    assert f"{folder / MODEL_SETTINGS}: " in text and expected in text, text


def test_a_run_writes_the_models_settings_into_its_config_and_says_so(tmp_path, capsys) -> None:
    model = build_random_model(tmp_path / "model", hidden=32)
    _model_with(model, {"defaults": {"agent.kl_coef": 0.05, "policy.max_new_tokens": 8}})
    out = tmp_path / "run"
    assert main(["scenario=single", f"policy.model={model}", "n_interactions=2", "eval.every=2", "eval.n_prompts=2",
                 "eval.bootstrap=100", "eval.surprise=false", "agent=sdpo_paper", f"out_dir={out}"]) == 0
    said = " ".join(capsys.readouterr().out.split())  # rich wraps long lines
    assert f"agent.kl_coef=0.05 policy.max_new_tokens=8 from {model / MODEL_SETTINGS}" in said
    written = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert written["agent"]["kl_coef"] == 0.05 and written["policy"]["max_new_tokens"] == 8
    lines = [json.loads(line) for line in (out / "interactions.jsonl").read_text().splitlines()]
    assert all("sdpo/kl_to_base" in line for line in lines)  # the anchor ran: its KL was measured


def test_a_bench_plans_each_learner_with_the_models_settings(tmp_path) -> None:
    _, runs, _ = plan(["scenario=flip", "agents=[sdpo,none]", "seeds=1", "policy.model=tiny-v3", f"out={tmp_path}",
                       "run=false"])
    by_learner = {r.agent: r for r in runs}
    assert by_learner["sdpo"].expected["agent"]["kl_coef"] == 0.1
    assert (by_learner["sdpo"].model_settings or "").startswith("agent.kl_coef=0.1 from")
    assert "kl_coef" not in by_learner["none"].expected["agent"] and by_learner["none"].model_settings is None


def test_tiny_v3_is_the_one_to_three_mean_of_tiny_and_tiny_v2(tmp_path) -> None:
    info = soup_main(["tiny", "tiny-v2", "--weights", "1,3", "--out", str(tmp_path / "soup")])
    shipped = json.loads((SHIPPED_MODELS["tiny-v3"] / "build_info.json").read_text(encoding="utf-8"))
    assert [(e["source"], e["weight"]) for e in shipped["soup"]] == [("tiny", 0.25), ("tiny-v2", 0.75)]
    assert shipped["soup"] == info["soup"]  # the record names the shipped models, wherever the package lies
    made = AutoModelForCausalLM.from_pretrained(tmp_path / "soup", dtype=torch.float32).state_dict()
    ours = AutoModelForCausalLM.from_pretrained(SHIPPED_MODELS["tiny-v3"], dtype=torch.float32).state_dict()
    assert made.keys() == ours.keys() and all(torch.equal(made[name], ours[name]) for name in made)
    for name in ("tokenizer.json", "chat_template.jinja"):  # the first model's, as every soup
        assert (SHIPPED_MODELS["tiny-v3"] / name).read_bytes() == (SHIPPED_MODELS["tiny"] / name).read_bytes()
    shutil.rmtree(tmp_path / "soup")
