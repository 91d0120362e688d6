"""Growing a model keeps what it computes, trains its new parts, and goes through the refinement's command line."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from sdpo_env.tiny.build import main as build_main
from sdpo_env.tiny.grow import ZEROED, grown, layer_plan
from sdpo_env.tiny.refine import main as refine_main


def _small_llama(seed: int = 0) -> LlamaForCausalLM:
    config = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True,
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # a trained model's norms are not all ones: copying them must keep them
        for name, param in model.named_parameters():
            if "norm" in name:
                param.uniform_(0.5, 1.5)
    return model.eval()


def test_layer_plan_spreads_the_new_layers_and_keeps_the_old_order() -> None:
    assert layer_plan(6, 8) == [0, 1, 2, None, 3, 4, 5, None]
    assert layer_plan(3, 3) == [0, 1, 2]
    assert layer_plan(2, 6) == [0, None, None, 1, None, None]
    for old, new in [(6, 7), (6, 12), (5, 13)]:
        plan = layer_plan(old, new)
        assert len(plan) == new and [i for i in plan if i is not None] == list(range(old))
        assert plan[0] == 0 and plan[-1] is None
    with pytest.raises(ValueError, match="cannot grow 6 layers into 5"):
        layer_plan(6, 5)


@pytest.mark.parametrize("layers, mlp", [(5, None), (None, 80), (4, 96)])
def test_a_grown_model_gives_the_same_logits(layers, mlp) -> None:
    model = _small_llama()
    bigger = grown(model, layers, mlp, seed=1).eval()
    assert bigger.config.num_hidden_layers == (layers or 3) and bigger.config.intermediate_size == (mlp or 48)
    assert bigger.num_parameters() > model.num_parameters()
    ids = torch.randint(0, 300, (3, 17))
    mask = torch.ones_like(ids)
    mask[0, :5] = 0  # left padding, as batched sampling has it
    with torch.no_grad():
        before = model(input_ids=ids, attention_mask=mask).logits
        after = bigger(input_ids=ids, attention_mask=mask).logits
    assert torch.allclose(before, after, atol=1e-5), (before - after).abs().max()
    again = grown(model, layers, mlp, seed=1).state_dict()  # the new neurons' draw comes from the seed
    assert all(torch.equal(again[k], v) for k, v in bigger.state_dict().items())
    prompt = ids[1:2]
    assert torch.equal(model.generate(prompt, max_new_tokens=8, do_sample=False),
                       bigger.generate(prompt, max_new_tokens=8, do_sample=False))


def test_growing_refuses_a_smaller_mlp_and_touches_neither_the_source_nor_the_random_stream() -> None:
    model = _small_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stream = torch.get_rng_state()
    grown(model, 5, 96)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), stream)
    with pytest.raises(ValueError, match="cannot grow an MLP of width 48 into 32"):
        grown(model, mlp=32)


def test_the_new_parts_train() -> None:
    model = _small_llama()
    bigger = grown(model, 4, 64, seed=1).train()
    inserted = layer_plan(3, 4).index(None)
    new_layer = bigger.model.layers[inserted]
    before = model.model.layers[layer_plan(3, 4)[inserted - 1]]
    assert torch.equal(new_layer.self_attn.q_proj.weight, before.self_attn.q_proj.weight)  # a copy of the one before
    for name in ZEROED:
        assert not new_layer.get_submodule(name.rsplit(".", 1)[0]).weight.any()
    opt = torch.optim.SGD(bigger.parameters(), lr=0.1)
    ids = torch.randint(0, 300, (4, 12))
    for _ in range(2):  # the first step moves what a new part writes, the second what it reads
        opt.zero_grad()
        bigger(input_ids=ids, labels=ids).loss.backward()
        opt.step()
    assert new_layer.self_attn.o_proj.weight.any() and new_layer.mlp.down_proj.weight.any()
    assert not torch.equal(new_layer.self_attn.q_proj.weight, before.self_attn.q_proj.weight)
    old_layer = bigger.model.layers[0]
    assert old_layer.mlp.down_proj.weight[:, 48:].any()  # the new neurons now write into the residual stream


def test_refine_grows_the_model_first_and_refuses_to_shrink_it_or_a_folder_with_no_model(tmp_path, capsys) -> None:
    source = tmp_path / "mini"
    build_main(["--mini", "--out", str(source), "--seed", "3", "--workers", "1"])
    info = refine_main(["--from", str(source), "--out", str(tmp_path / "grown"), "--steps", "3",
                        "--layers", "3", "--mlp", "96"])
    assert "grown to 3 layers, MLP width 96" in capsys.readouterr().out
    assert info["refines"][-1]["layers"] == 3 and info["refines"][-1]["mlp"] == 96
    config = json.loads((tmp_path / "grown" / "config.json").read_text())
    assert (config["num_hidden_layers"], config["intermediate_size"]) == (3, 96)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "grown", dtype=torch.float32)
    assert model.config.num_hidden_layers == 3
    for option, size, message in [("--layers", "1", f"cannot grow 2 layers into 1 (the model in {source})"),
                                  ("--mlp", "32", f"cannot grow an MLP of width 64 into 32 (the model in {source})")]:
        with pytest.raises(SystemExit) as refused:
            refine_main(["--from", str(source), "--out", str(tmp_path / "never"), "--steps", "3", option, size])
        err = capsys.readouterr().err
        assert refused.value.code == 2 and message in err and "--layers and --mlp can only grow it" in err
    with pytest.raises(SystemExit) as refused:
        refine_main(["--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "never"), "--steps", "3"])
    assert refused.value.code == 2 and "nothing: no config.json there; give a model folder" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
