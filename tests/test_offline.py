"""Offline SDPO / SFT on logged conversations with the shipped tiny model and real peft LoRA."""

from __future__ import annotations

import json
import re

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from sdpo_env.errors import ConfigError
from sdpo_env.logs import read_logs
from sdpo_env.offline import SHIPPED_LOGS, main, resolve
from sdpo_env.policy import ChatPolicy
from sdpo_env.sdpo import selective_log_softmax
from sdpo_env.tiny import TINY_DIR
from tests.test_runfolder import holding

# 16 tuples, micro-batches of 4, 2 per optimizer step: 2 steps per epoch, 4 in all.
SMALL = ["data=sample", "train.max_tuples=16", "train.batch_size=4", "train.grad_accum=2", "train.epochs=2",
         "train.lr=1e-3", "policy.device=cpu", "checkpoint_every=1"]


def train(tmp_path, name, *extra):
    out = tmp_path / name
    code = main([*SMALL, f"out_dir={out}", *extra])
    return code, out


def test_resume_equals_an_uninterrupted_run_and_the_adapter_is_plain_peft(tmp_path) -> None:
    code, whole = train(tmp_path, "whole")
    assert code == 0
    code, part = train(tmp_path, "part", "stop_after_steps=1")
    assert code == 130
    assert len((part / "train.jsonl").read_text().splitlines()) == 1
    assert main([f"resume={part}", "stop_after_steps=3"]) == 130  # stopped again mid-way, inside epoch 2
    assert main([f"resume={part}"]) == 0
    whole_log = (whole / "train.jsonl").read_text().splitlines()
    assert len(whole_log) == 4
    assert (part / "train.jsonl").read_text().splitlines() == whole_log
    a = load_file(whole / "adapter" / "adapter_model.safetensors")
    b = load_file(part / "adapter" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert any(v.abs().sum() > 0 for k, v in a.items() if "lora_B" in k)  # it did learn something
    summary = json.loads((whole / "summary.json").read_text())
    assert summary["data_counts"]["conversations"] == 240 and summary["optimizer_steps"] == 4
    assert (whole / "train.png").is_file()

    # The adapter is plain peft: it loads onto the base model without this library and changes its outputs.
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(TINY_DIR)), str(whole / "adapter"))
    policy = ChatPolicy.load("tiny", device="cpu")
    ids = torch.tensor([policy.encode([{"role": "user", "content": "How do I water basil?"}])])
    with torch.no_grad():
        adapted = model.eval()(input_ids=ids).logits
        base = policy.model(input_ids=ids).logits
    assert not torch.allclose(adapted, base, atol=1e-4)


def _nll(model_dir_or_policy, tuples) -> float:
    policy = model_dir_or_policy
    contexts = [policy.encode(list(t.messages)) for t in tuples]
    completions = [policy.encode_completion(t.response) for t in tuples]
    with torch.no_grad():
        logits, targets, mask = policy.completion_logits(contexts, completions)
    return float(-(selective_log_softmax(logits, targets) * mask).sum() / mask.sum())


def test_sft_full_fine_tuning_raises_the_likelihood_of_the_logged_responses(tmp_path) -> None:
    code, out = train(tmp_path, "sft", "method=sft", "train.lora=false", "train.lr=3e-4", "train.epochs=1")
    assert code == 0
    tuples = [t for _, t in zip(range(16), read_logs(SHIPPED_LOGS["sample"]))]
    before = _nll(ChatPolicy.load("tiny", device="cpu"), tuples)
    after = _nll(ChatPolicy.load(str(out / "model"), device="cpu"), tuples)
    assert after < before - 0.01
    log = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert "advantage_abs_mean" not in log[0] and log[0]["loss"] == pytest.approx(log[0]["nll"])


def test_evaluation_reports_win_rate_before_and_after(tmp_path) -> None:
    code, out = train(tmp_path, "eval", "train.epochs=1", "eval.persona=no_emojis", "eval.n_prompts=4",
                      "policy.max_new_tokens=24", "eval.bootstrap=10")
    assert code == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["when"] for r in rows] == ["before", "after"]
    assert all(0.0 <= r["win_rate"] <= 1.0 and r["persona"] == "no_emojis" for r in rows)
    log = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert all(r["advantage_abs_mean"] > 0 for r in log)


def test_config_errors_are_reported_together(tmp_path, capsys) -> None:
    code = main(["data=sample", "methd=sft", "train.lr=-1", "train.hindsight_template=oops", "eval.n_prompts=x",
                 f"out_dir={tmp_path / 'x'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "4 problem(s) in the configuration:" in err
    assert "command line: methd: unknown key. Did you mean 'method'?" in err
    assert "command line: train.lr: got -1.0; must be > 0.0" in err
    assert "command line: eval.n_prompts: expected an integer, got 'x' (str)" in err
    assert "command line: train.hindsight_template: got 'oops'; use 'offline', 'paper' or a text" in err
    assert not (tmp_path / "x").exists()


def test_missing_data_and_bad_lines_fail_before_training(tmp_path, write_jsonl, capsys) -> None:
    with pytest.raises(ConfigError, match=re.escape("data: no such file 'nope.jsonl'; give a .jsonl "
                                                    "path or a shipped log: sample")):
        resolve([("command line", {"data": "nope.jsonl"})])
    with pytest.raises(ConfigError, match="data: missing required key"):
        resolve([("command line", {})])
    path = write_jsonl(["{broken"], "logs.jsonl")
    assert main([f"data={path}", f"out_dir={tmp_path / 'run'}"]) == 2
    assert f"{path}: line 1: not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()  # checked before the run folder is created


def test_a_resumed_run_keeps_its_settings(tmp_path, capsys) -> None:
    code, out = train(tmp_path, "r", "stop_after_steps=1")
    assert code == 130
    assert main([f"resume={out}", "train.lr=1"]) == 2
    assert "train: a resumed run keeps the settings in its config.yaml" in capsys.readouterr().err


def test_a_folder_another_process_writes_is_refused(tmp_path, capsys) -> None:
    code, out = train(tmp_path, "r", "stop_after_steps=1")
    assert code == 130
    holder = holding(out)  # e.g. the same command still running in another terminal
    try:
        assert main([f"resume={out}"]) == 2
        assert f"resume: {out} is being written by another process (pid {holder.pid} on " in capsys.readouterr().err
        assert main([*SMALL, f"out_dir={out}"]) == 2
        assert f"out_dir: {out} is being written by another process (pid {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.communicate("")
    assert main([f"resume={out}"]) == 0
