"""The lean sampling loop returns exactly the tokens transformers' ``generate`` samples, and steps aside otherwise."""

from __future__ import annotations

import contextlib

import pytest
import torch
from transformers import GenerationConfig

from sdpo_env import decoding
from sdpo_env.policy import ChatPolicy, LoraSettings, Sampling
from tests.models import build_random_model

PROMPTS = [
    [{"role": "user", "content": "How do I water basil?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Explain inflation to me in a few words, with an example 😀"}],
    [{"role": "user", "content": "What is a good way to start running every morning before work?"}],
]


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"))  # grouped-query attention: 4 heads, 2 kv heads


@pytest.fixture(scope="module")
def qwen2_dir(random_dir, tmp_path_factory):
    """A random Qwen2 (q/k/v biases, grouped-query attention) with the random Llama's tokenizer."""
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    folder = tmp_path_factory.mktemp("random_qwen2")
    tokenizer = AutoTokenizer.from_pretrained(random_dir)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
                         eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id)
    torch.manual_seed(1)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():  # non-zero biases and larger weights, so neither is a no-op
        for name, p in model.named_parameters():
            p.normal_(0.0, 0.5) if name.endswith(".bias") else p.mul_(4.0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(random_dir, qwen2_dir):
    return {"random": str(random_dir), "qwen2": str(qwen2_dir), "tiny": "tiny"}


def _policy(name: str, dtype: str = "auto") -> ChatPolicy:
    policy = ChatPolicy.load(name, device="cpu", dtype=dtype, lora=LoraSettings(r=4, alpha=8),
                             sampling=Sampling(max_new_tokens=40))
    torch.manual_seed(0)
    with torch.no_grad():  # an adapter that changes the policy, so the adapted and the base views differ
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    return policy


def _with_generate(policy, monkeypatch, conversations, **kwargs):
    monkeypatch.setenv("SDPO_ENV_HF_GENERATE", "1")
    try:
        return policy.generate(conversations, **kwargs)
    finally:
        monkeypatch.delenv("SDPO_ENV_HF_GENERATE")


@pytest.mark.parametrize("model", ["random", "qwen2", "tiny"])
def test_lean_sampling_returns_the_tokens_generate_samples(model, models, monkeypatch) -> None:
    policy = _policy(models[model])
    assert decoding.supports(policy.model, temperature=1.0, top_k=0, top_p=1.0)
    calls = []
    original = decoding.sample
    monkeypatch.setattr(decoding, "sample", lambda *a, **k: calls.append(1) or original(*a, **k))
    for conversations in (PROMPTS[:1], PROMPTS):  # one prompt (no padding); mixed lengths (left padding)
        for base in (False, True):
            for sampling in (Sampling(max_new_tokens=40), Sampling(temperature=0.0, max_new_tokens=40)):
                for seed in (0, 1):
                    with policy.base_model() if base else contextlib.nullcontext():
                        lean = policy.generate(conversations, seed=seed, sampling=sampling)
                        reference = _with_generate(policy, monkeypatch, conversations, seed=seed, sampling=sampling)
                    assert [(s.ids, s.text, s.finished) for s in lean] == \
                        [(s.ids, s.text, s.finished) for s in reference]
    assert len(calls) == 16  # every case above took the lean loop; generate ran only with the switch set
    with policy.base_model():
        base = policy.generate(PROMPTS, seed=0)
    assert [s.ids for s in base] != [s.ids for s in policy.generate(PROMPTS, seed=0)], "the views must differ"


@pytest.mark.parametrize(("model", "dtype"), [("random", "auto"), ("qwen2", "auto"), ("tiny", "auto"),
                                              ("tiny", "bfloat16")])
def test_every_step_computes_the_logits_generate_computes(model, dtype, models) -> None:
    # Tokens can agree while logits drift by rounding (a position off by the padding still rotates every query and
    # key alike); the logits of every step must be equal to the bit.
    policy = _policy(models[model], dtype)
    assert policy.model.dtype == (torch.bfloat16 if dtype == "bfloat16" else torch.float32)
    ids, mask = policy._left_pad([policy.encode(c) for c in PROMPTS])
    with policy._merged_for_sampling(), torch.random.fork_rng():
        torch.manual_seed(0)
        ours: list[torch.Tensor] = []
        tokens = decoding.sample(policy.model, ids, mask, max_new_tokens=24, eos_ids=policy.eos_ids,
                                 pad_id=policy.pad_id, greedy=False, logits_log=ours)
        torch.manual_seed(0)
        reference = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=True,
                                          top_k=0, pad_token_id=policy.pad_id, eos_token_id=policy.eos_ids,
                                          output_logits=True, return_dict_in_generate=True)
    assert torch.equal(tokens, reference.sequences)
    assert len(ours) == len(reference.logits) > 1
    for step, (a, b) in enumerate(zip(ours, reference.logits)):
        assert torch.equal(a, b), f"step {step}: max difference {(a - b).abs().max():.3g}"


def test_rows_stop_at_eos_or_at_the_token_limit(monkeypatch) -> None:
    policy = _policy("tiny")
    samples = policy.generate(PROMPTS * 4, seed=3, sampling=Sampling(max_new_tokens=40))
    reference = _with_generate(policy, monkeypatch, PROMPTS * 4, seed=3, sampling=Sampling(max_new_tokens=40))
    assert {s.finished for s in samples} == {True, False}, "the case needs rows that finish and rows that are cut"
    assert [s.ids for s in samples] == [s.ids for s in reference]
    for s in samples:
        assert len(s.ids) <= 40 and (s.ids[-1] in policy.eos_ids) == s.finished


def test_generate_runs_what_the_lean_loop_does_not_mirror(random_dir, qwen2_dir, monkeypatch) -> None:
    qwen2 = _policy(str(qwen2_dir))
    assert decoding.supports(qwen2.model, temperature=1.0, top_k=0, top_p=1.0)
    qwen2.model.config.layer_types = ["sliding_attention", "full_attention"]  # transformers masks those differently
    assert not decoding.supports(qwen2.model, temperature=1.0, top_k=0, top_p=1.0)
    policy = _policy(str(random_dir))
    for settings in ({"temperature": 0.7, "top_k": 0, "top_p": 1.0}, {"temperature": 1.0, "top_k": 5, "top_p": 1.0},
                     {"temperature": 1.0, "top_k": 0, "top_p": 0.9}):
        assert not decoding.supports(policy.model, **settings)
    plain = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}
    model = policy.model.get_base_model()
    model.generation_config = GenerationConfig(repetition_penalty=1.3, eos_token_id=policy.eos_ids)
    assert not decoding.supports(policy.model, **plain)  # generate would apply the penalty
    model.generation_config = GenerationConfig(eos_token_id=policy.eos_ids)
    assert decoding.supports(policy.model, **plain)
    model.config._attn_implementation = "eager"
    assert not decoding.supports(policy.model, **plain)
    model.config._attn_implementation = "sdpa"
    monkeypatch.setenv("SDPO_ENV_HF_GENERATE", "1")
    assert not decoding.supports(policy.model, **plain)
    monkeypatch.delenv("SDPO_ENV_HF_GENERATE")

    def refuse(*args, **kwargs):
        raise AssertionError("the lean loop ran with the adapter live")

    monkeypatch.setattr(decoding, "sample", refuse)
    policy._pristine = {}  # an adapter too large to merge: sampling goes through peft's LoRA layers
    live = policy.generate(PROMPTS, seed=0)
    assert [s.ids for s in live] == [s.ids for s in _with_generate(policy, monkeypatch, PROMPTS, seed=0)]


def test_sampling_bench_prints_both_ways_and_their_agreement(random_dir, capsys) -> None:
    from sdpo_env.bench_sampling import main

    main(["--models", str(random_dir), "--batch-sizes", "1", "3", "--rounds", "2", "--max-new-tokens", "8"])
    table = [line.split("│") for line in capsys.readouterr().out.splitlines() if line.count("│") == 8]
    assert [cells[3].strip() for cells in table] == ["1", "3"]
    assert all(cells[7].strip() == "100%" and float(cells[6]) > 0 for cells in table)
