"""``probe --adapter``: a run's final policy is measured as one model, its LoRA adapter merged."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sdpo_env.tiny.probe as probe_module
import sdpo_env.tiny.refine as refine_module
from sdpo_env.policy import ChatPolicy, LoraSettings
from sdpo_env.tiny import TINY_DIR, model_folder_problem
from sdpo_env.tiny.probe import Sampler, adapter_folder, main
from tests.models import build_random_model

X = [{"role": "user", "content": "How do I water basil?"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random model and a run folder whose adapter moves it (B != 0, as after training)."""
    model_dir = build_random_model(tmp_path_factory.mktemp("model"))
    policy = ChatPolicy.load(str(model_dir), device="cpu", lora=LoraSettings(r=4, alpha=8.0))
    with torch.no_grad():
        for layer in policy.lora_layers().values():
            layer.lora_B["default"].weight.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    run = tmp_path_factory.mktemp("run")
    policy.save_adapter(run / "adapter")
    return model_dir, run, policy


def _logits(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


def test_the_sampler_computes_the_adapted_policy(trained) -> None:
    model_dir, run, policy = trained
    ids = policy.encode(X)
    adapted = _logits(policy.model, ids)
    with policy.base_model():
        base = _logits(policy.model, ids)
    for given in (run, run / "adapter"):  # a run folder or the adapter folder itself
        merged = _logits(Sampler(str(model_dir), adapter=str(given)).model, ids)
        torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    assert (adapted - base).abs().max() > 0.1  # the adapter does move the model
    torch.testing.assert_close(_logits(Sampler(str(model_dir)).model, ids), base, atol=1e-5, rtol=1e-5)


def test_a_folder_without_an_adapter_is_refused_before_any_work(trained, tmp_path, capsys) -> None:
    assert adapter_folder(trained[1]) == trained[1] / "adapter"
    with pytest.raises(SystemExit) as stopped:
        main(["--model", str(trained[0]), "--adapter", str(tmp_path)])
    assert stopped.value.code == 2
    assert f"--adapter {tmp_path}: no adapter_config.json there or in {tmp_path / 'adapter'}" in capsys.readouterr().err


def test_a_run_folder_names_its_own_model(trained, monkeypatch, capsys) -> None:
    model_dir, run, _ = trained
    (run / "config.yaml").write_text(f"policy:\n  model: {model_dir}\n")
    given: list = []
    monkeypatch.setattr(probe_module, "probe", lambda model, **kw: given.append((model, kw["adapter"])) or {})
    monkeypatch.setattr(probe_module, "table", lambda figures: "")
    main(["--adapter", str(run)])
    assert given == [(str(model_dir), run / "adapter")]  # the adapter folder, found once
    assert f"model: {model_dir} (policy.model in {run / 'config.yaml'})" in capsys.readouterr().out
    main(["--adapter", str(run / "adapter")])  # the run's adapter folder itself: the same run
    assert given[-1] == (str(model_dir), run / "adapter")
    main(["--adapter", str(run), "--model", "tiny"])  # the user's choice wins, with a warning
    assert given[-1] == ("tiny", run / "adapter")
    assert f"warning: --model tiny, but the run trained {model_dir}" in capsys.readouterr().out
    (run / "config.yaml").unlink()
    main(["--adapter", str(run)])  # no config.yaml: the shipped model, as without --adapter
    assert given[-1] == (None, run / "adapter")


def test_a_model_folder_that_holds_no_model_is_refused_before_any_work(trained, tmp_path, monkeypatch,
                                                                      capsys) -> None:
    monkeypatch.setattr(probe_module, "probe", lambda *a, **k: pytest.fail("measured a folder with no model"))
    (tmp_path / "refining").mkdir()  # a refinement still running: its folder holds own_answers.json, no model
    for given, said in ((tmp_path / "refining", "no config.json in that folder"),
                        (tmp_path / "gone", "no such model folder")):
        with pytest.raises(SystemExit) as stopped:
            main(["--model", str(given)])
        assert stopped.value.code == 2 and f"--model {given}: {said}" in capsys.readouterr().err
    assert model_folder_problem(str(trained[0])) is None
    assert model_folder_problem("Qwen/Qwen3-0.6B") is None  # a hub id goes through as before


def test_the_shipped_model_goes_by_its_name(tmp_path, monkeypatch) -> None:
    # "tiny" names the shipped checkpoint for the probe's --model and refine's --from, as for policy.model
    assert Sampler("tiny").model.name_or_path == str(TINY_DIR)
    sources: list[Path] = []
    monkeypatch.setattr(refine_module, "refine", lambda source, out, cfg, **_: sources.append(source))
    refine_module.main(["--from", "tiny", "--out", str(tmp_path / "refined")])
    refine_module.main(["--from", str(tmp_path), "--out", str(tmp_path / "refined")])  # a folder, as given
    assert sources == [TINY_DIR, tmp_path]
