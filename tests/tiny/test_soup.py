"""Averaging refinements of one model: the weighted mean of their weights, saved as a model that loads like any."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.soup import averaged
from sdpo_env.tiny.soup import main as soup_main


def _small_state(seed: int, hidden: int = 16) -> dict[str, torch.Tensor]:
    config = LlamaConfig(vocab_size=50, hidden_size=hidden, intermediate_size=24, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2)
    with torch.random.fork_rng():  # built at collection time too: the other tests' random stream stays as it was
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).state_dict()


def _refined(folder: Path, seed: int) -> Path:
    """The shipped model with its weights moved a little (as a refinement would), saved like a refinement."""
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * 0.01)
    model.save_pretrained(folder, safe_serialization=True)
    AutoTokenizer.from_pretrained(TINY_DIR).save_pretrained(folder)
    (folder / "build_info.json").write_text(json.dumps({"seed": 0, "refines": [{"seed": seed}]}), encoding="utf-8")
    return folder


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()


def test_averaged_is_the_weighted_mean_and_keeps_each_dtype() -> None:
    a, b = _small_state(0), _small_state(1)
    mean = averaged([a, b], [1, 3])
    assert mean.keys() == a.keys()
    for name in a:
        torch.testing.assert_close(mean[name], torch.lerp(a[name], b[name], 0.75), rtol=0, atol=1e-6)
    one = averaged([a], [2.0])
    assert all(torch.equal(one[name], a[name]) for name in a)
    half = averaged([{k: v.to(torch.bfloat16) for k, v in a.items()}, b], [1, 1])
    assert all(t.dtype == torch.bfloat16 for t in half.values())


@pytest.mark.parametrize(("states", "weights", "message"), [
    ([], [], "no models to average"),
    ([_small_state(0), _small_state(1)], [1.0], "1 weights for 2 models"),
    ([_small_state(0), _small_state(1)], [1.0, -1.0], "weights must be >= 0 and not all zero, got 1, -1"),
    ([_small_state(0), _small_state(1)], [0.0, 0.0], "not all zero"),
    ([_small_state(0), {k: v for k, v in _small_state(1).items() if k != "lm_head.weight"}], [1, 1],
     "model 2 has other tensors than model 1: missing ['lm_head.weight'], extra []"),
    ([_small_state(0), _small_state(1, hidden=8)], [1, 1], "model 2's model.embed_tokens.weight is (50, 8), model 1's "
                                                           "(50, 16)"),
])
def test_averaged_refuses_what_it_cannot_average(states, weights, message) -> None:
    with pytest.raises(ValueError) as refused:
        averaged(states, weights)
    assert message in str(refused.value)


def test_the_command_saves_the_mean_of_the_models_and_says_where_they_came_from(tmp_path, capsys) -> None:
    a, b = _refined(tmp_path / "a", 1), _refined(tmp_path / "b", 2)
    info = soup_main([str(a), str(b), "--out", str(tmp_path / "soup"), "--weights", "3,1"])
    assert f"averaged 2 models (0.75 {a}, 0.25 {b}); saved to {tmp_path / 'soup'}" in capsys.readouterr().out
    wa, wb, mean = _weights(a), _weights(b), _weights(tmp_path / "soup")
    assert not torch.equal(wa["model.norm.weight"], wb["model.norm.weight"])
    for name in wa:
        torch.testing.assert_close(mean[name], 0.75 * wa[name] + 0.25 * wb[name], rtol=0, atol=1e-6)
    assert [(entry["source"], entry["weight"], entry["refines"]) for entry in info["soup"]] == [
        (str(a), 0.75, [{"seed": 1}]), (str(b), 0.25, [{"seed": 2}])]
    assert json.loads((tmp_path / "soup" / "build_info.json").read_text()) == info
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "soup")  # loads, with its chat template, like any model
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    soup_main(["tiny", "tiny", "--out", str(tmp_path / "same")])  # a model averaged with itself is itself
    shipped = _weights(TINY_DIR)
    assert all(torch.equal(_weights(tmp_path / "same")[name], shipped[name]) for name in shipped)


def test_the_command_refuses_before_writing_anything(tmp_path, capsys) -> None:
    a, b = _refined(tmp_path / "a", 1), _refined(tmp_path / "b", 2)
    deeper = tmp_path / "deeper"
    shutil.copytree(b, deeper)
    config = json.loads((deeper / "config.json").read_text())
    (deeper / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 7}))
    other_head = tmp_path / "other-head"
    shutil.copytree(b, other_head)
    (other_head / "config.json").write_text(json.dumps({**config, "architectures": ["LlamaForSequenceClassification"]}))
    other_vocab = tmp_path / "other-vocab"
    shutil.copytree(b, other_vocab)
    (other_vocab / "tokenizer.json").write_text((b / "tokenizer.json").read_text() + " ")
    out = tmp_path / "never"
    for args, message in [
        ([str(a)], "give at least two model folders to average, got 1"),
        ([str(a), str(tmp_path / "nothing")], f"{tmp_path / 'nothing'}: no config.json there; give model folders"),
        ([str(a), str(deeper)], f"{deeper}: another architecture than {a} (config.json differs in "
                                "num_hidden_layers); only refinements of one model can be averaged"),
        ([str(a), str(other_head)], f"{other_head}: another architecture than {a} (config.json differs in "
                                    "architectures)"),
        ([str(a), str(other_vocab)], f"{other_vocab}: another tokenizer (tokenizer.json) than {a}"),
        ([str(a), str(b), "--weights", "1,2,3"], "3 weights for 2 models"),
        ([str(a), str(b), "--weights", "1,x"],
         "--weights: comma-separated numbers, one per model (e.g. 3,1), got '1,x'"),
    ]:
        with pytest.raises(SystemExit) as refused:
            soup_main([*args, "--out", str(out)])
        assert refused.value.code == 2 and message in capsys.readouterr().err
        assert not out.exists()
