"""The build path: a miniature build runs and loads like any Hugging Face model."""

from __future__ import annotations

import json

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sdpo_env.tiny import TINY_DIR, resolve_model_path
from sdpo_env.tiny.build import main
from sdpo_env.tiny.train import chat_text


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
