"""The build path: a miniature build runs and loads like any Hugging Face model, and resumes exactly."""

from __future__ import annotations

import json
import signal

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_env.cli import sigterm_as_ctrl_c
from sdpo_env.tiny import TINY_DIR, resolve_model_path
from sdpo_env.tiny.build import main
from sdpo_env.tiny.corpus import corpus
from sdpo_env.tiny.refine import main as refine_main
from sdpo_env.tiny.train import (
    MINI,
    STATE_FILE,
    Saving,
    TrainConfig,
    TrainingStopped,
    build_model,
    build_tokenizer,
    chat_text,
    encode,
    train,
)

MINI_ARGS = ["--mini", "--seed", "3", "--workers", "1"]


def test_mini_build_loads_through_auto_classes(tmp_path) -> None:
    info = main(["--mini", "--out", str(tmp_path), "--seed", "3", "--workers", "1"])
    assert info["final_loss"] > 0
    assert json.loads((tmp_path / "build_info.json").read_text())["seed"] == 3
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    model = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    messages = [{"role": "user", "content": "Any emoji? 🌱 ünïcödé"}]
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = torch.tensor([encoded["input_ids"]])
    assert tokenizer.decode(encoded["input_ids"]).endswith("<|im_start|>assistant\n")
    out = model.generate(input_ids=ids, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 4 or out[0, -1] == tokenizer.eos_token_id


def test_chat_text_matches_the_shipped_template() -> None:
    tokenizer = AutoTokenizer.from_pretrained(TINY_DIR)
    messages = [{"role": "system", "content": "p"}, {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a"}, {"role": "user", "content": "r 😊"}]
    assert tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == chat_text(
        messages, add_generation_prompt=True)
    assert tokenizer.eos_token == "<|im_end|>"


def test_resolve_model_path() -> None:
    assert resolve_model_path("tiny") == str(TINY_DIR)
    assert resolve_model_path("Qwen/Qwen3-4B") == "Qwen/Qwen3-4B"
    assert (TINY_DIR / "model.safetensors").is_file()


def _same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_build_stopped_part_way_resumes_to_the_same_model(tmp_path, capsys) -> None:
    straight, split = tmp_path / "straight", tmp_path / "split"
    info = main([*MINI_ARGS, "--out", str(straight)])
    with pytest.raises(SystemExit) as stopped:
        main([*MINI_ARGS, "--out", str(split), "--stop-after-steps", "8"])  # the mini build has 20 steps
    assert stopped.value.code == 130
    assert "stopped after step 8 of 20" in capsys.readouterr().err
    assert (split / STATE_FILE).is_file() and not (split / "model.safetensors").exists()
    refusals = [([], "holds an unfinished training (step 8 of 20); continue it with the same command and --resume"),
                (["--resume", "--steps", "30"], "train.steps: 20 saved, 30 now"),
                (["--resume", "--seed", "4"], "build.seed: 3 saved, 4 now")]
    for extra, message in refusals:
        with pytest.raises(SystemExit) as refused:
            main([*MINI_ARGS, "--out", str(split), *extra])
        assert refused.value.code == 2 and message in capsys.readouterr().err
    resumed = main([*MINI_ARGS, "--out", str(split), "--resume"])
    assert "resuming at step 8/20" in capsys.readouterr().out
    assert resumed["final_loss"] == info["final_loss"] and resumed["resumed_at_step"] == 8
    assert _same_weights(load_file(split / "model.safetensors"), load_file(straight / "model.safetensors"))
    assert (split / "tokenizer.json").read_text() == (straight / "tokenizer.json").read_text()
    assert not (split / STATE_FILE).exists()  # a finished folder is a plain model folder
    with pytest.raises(SystemExit) as nothing:
        main([*MINI_ARGS, "--out", str(split), "--resume"])
    assert nothing.value.code == 2 and "holds no unfinished training" in capsys.readouterr().err


@pytest.mark.parametrize("grow", [[], ["--layers", "3", "--mlp", "80"]], ids=["as is", "grown"])
def test_a_refinement_stopped_part_way_resumes_to_the_same_model(tmp_path, capsys, grow) -> None:
    source = tmp_path / "mini"
    main([*MINI_ARGS, "--out", str(source)])
    args = ["--from", str(source), "--steps", "3", "--focus-share", "0.5", *grow]
    refine_main([*args, "--out", str(tmp_path / "straight")])
    with pytest.raises(SystemExit):
        refine_main([*args, "--out", str(tmp_path / "split"), "--stop-after-steps", "1"])
    with pytest.raises(SystemExit) as refused:
        refine_main([*args, "--out", str(tmp_path / "split"), "--resume", "--focus-share", "0.4"])
    assert refused.value.code == 2 and "refine.focus_share: 0.5 saved, 0.4 now" in capsys.readouterr().err
    info = refine_main([*args, "--out", str(tmp_path / "split"), "--resume"])
    assert info["refines"][-1]["resumed_at_step"] == 1
    assert _same_weights(load_file(tmp_path / "split" / "model.safetensors"),
                         load_file(tmp_path / "straight" / "model.safetensors"))


@pytest.fixture(scope="module")
def mini_training():
    chats = corpus(64, 0)
    tokenizer = build_tokenizer([m["content"] for chat in chats for m in chat], MINI.vocab_size)
    return tokenizer, encode(tokenizer, chats)


def test_fewer_examples_than_a_batch_is_an_error_not_a_crash(mini_training) -> None:
    tokenizer, data = mini_training
    model = build_model(tokenizer, MINI, seed=0)
    with pytest.raises(ValueError, match="3 training examples, fewer than one batch of 4"):
        train(model, data[:3], tokenizer.pad_token_id, TrainConfig(steps=2, batch_size=4), seed=1,
              device=torch.device("cpu"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_ctrl_c_or_sigterm_saves_the_training_at_the_end_of_a_step(tmp_path, mini_training, signum) -> None:
    tokenizer, data = mini_training
    # 16 batches an epoch: stopped in the second, resumed into the third, whose order comes from the saved stream
    cfg = TrainConfig(steps=40, batch_size=4, warmup=2)

    def run(saving=None, log=lambda line: None):
        model = build_model(tokenizer, MINI, seed=0)
        loss = train(model, data, tokenizer.pad_token_id, cfg, seed=1, device=torch.device("cpu"), log=log,
                     log_every=1, saving=saving)
        return loss, model.state_dict()

    def interrupt_during_step_20(line: str) -> None:
        if line.startswith("step    20/"):
            signal.raise_signal(signum)

    straight_loss, straight = run()
    saving = Saving(tmp_path / STATE_FILE, {"what": "test"}, every_s=1e9)  # no timed saves: only the stop saves
    previous = signal.signal(signal.SIGTERM, lambda *_: None)  # stands in for the default, which would kill pytest
    try:
        with sigterm_as_ctrl_c():
            run(saving, interrupt_during_step_20)
    except TrainingStopped as stop:
        assert stop.step == 21 and stop.path == saving.path  # step 20 (the 21st) finished first
    except KeyboardInterrupt:
        pytest.fail("the signal stopped the training mid-step instead of saving it")
    else:
        pytest.fail("the signal did not stop the training")
    finally:
        signal.signal(signal.SIGTERM, previous)
    lines: list[str] = []
    resumed_loss, resumed = run(saving, lines.append)
    assert lines[0] == f"resuming at step 21/40 from {saving.path}"
    assert resumed_loss == straight_loss and _same_weights(resumed, straight)
