"""ChatPolicy on a real (random, tiny) Hugging Face model with real peft LoRA."""

from __future__ import annotations

import json

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sdpo_env.errors import SdpoEnvError
from sdpo_env.policy import ChatPolicy, LoraSettings, Sampling
from sdpo_env.sdpo import selective_log_softmax
from sdpo_env.tiny import SHIPPED_MODELS, resolve_model_path
from tests.models import build_random_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"))


@pytest.fixture
def policy(model_dir):
    return ChatPolicy.load(str(model_dir), device="cpu", lora=LoraSettings(r=4, alpha=8),
                           sampling=Sampling(max_new_tokens=12))


CONVERSATIONS = [
    [{"role": "user", "content": "How do I water basil?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "Explain inflation to me in a few words, with an example 😀"}],
]


def _logprobs(policy, contexts, completions):
    logits, targets, mask = policy.completion_logits(contexts, completions)
    return selective_log_softmax(logits, targets) * mask, mask


def test_batched_logprobs_equal_one_at_a_time_under_padding_on_both_sides(policy) -> None:
    # Mixed context lengths pad on the left and mixed completion lengths on the right: the first row is padded on
    # both sides, the second on the left only, the third on the right only.
    contexts = [policy.encode(c) for c in CONVERSATIONS]
    completions = [policy.encode_completion(t) for t in ["Water it.", "Hello there, friend!", "Prices rise."]]
    assert len({len(c) for c in contexts}) == 3 and len({len(c) for c in completions}) == 3  # mixed lengths
    with torch.no_grad():
        singles = [_logprobs(policy, [x], [y])[0][0, : len(y)] for x, y in zip(contexts, completions)]
        for order in (slice(None), slice(None, None, -1)):  # row order must not matter either
            batched, mask = _logprobs(policy, contexts[order], completions[order])
            for single, y, row, row_mask in zip(singles[order], completions[order], batched, mask):
                torch.testing.assert_close(row[: len(y)], single, atol=1e-5, rtol=0)
                assert row_mask.sum() == len(y) and not row[len(y) :].any()


def test_logprobs_match_a_plain_full_forward(policy) -> None:
    x, y = policy.encode(CONVERSATIONS[0]), policy.encode_completion("Water it daily.")
    with torch.no_grad():
        ours, _ = _logprobs(policy, [x], [y])
        full = policy.model(input_ids=torch.tensor([x + y])).logits[0]  # (L, V), every position projected
        reference = torch.log_softmax(full, -1)[len(x) - 1 : len(x) + len(y) - 1].gather(-1, torch.tensor(y)[:, None])
    torch.testing.assert_close(ours[0], reference[:, 0], atol=1e-5, rtol=0)


def test_answer_nll_is_each_answers_mean_token_nll_from_a_plain_full_forward(policy) -> None:
    answers = ["Water it.", "", "Prices rise when money grows faster than goods, e.g. rent.", "Hello there, friend!"]
    conversations = [*CONVERSATIONS, CONVERSATIONS[0]]
    batched = policy.answer_nll(conversations, answers, batch_size=2)  # a batch of two across the empty answer
    assert batched[1] != batched[1]  # NaN: no tokens to score
    for messages, answer, got in zip(conversations, answers, batched):
        if not answer:
            continue
        x, y = policy.encode(messages), policy.tokenizer(answer, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            full = torch.log_softmax(policy.model(input_ids=torch.tensor([x + y])).logits[0], -1)  # (L, V)
        reference = -full[len(x) - 1 : len(x) + len(y) - 1].gather(-1, torch.tensor(y)[:, None]).mean()
        assert got == pytest.approx(float(reference), abs=1e-5)
    with policy.base_model():
        assert policy.answer_nll(conversations[:1], answers[:1]) == pytest.approx(batched[:1], abs=1e-6)  # no updates


def test_generation_is_seeded_and_batched(policy) -> None:
    a = policy.generate(CONVERSATIONS, seed=3)
    b = policy.generate(CONVERSATIONS, seed=3)
    c = policy.generate(CONVERSATIONS, seed=4)
    assert [s.ids for s in a] == [s.ids for s in b]
    assert [s.ids for s in a] != [s.ids for s in c]
    assert all(len(s.ids) <= 12 for s in a)
    greedy = policy.generate(CONVERSATIONS[:1], seed=0, sampling=Sampling(temperature=0.0, max_new_tokens=12))
    alone = policy.generate(CONVERSATIONS[:1], seed=99, sampling=Sampling(temperature=0.0, max_new_tokens=12))
    assert greedy[0].ids == alone[0].ids


def test_base_view_reproduces_the_base_model_after_updates(policy, model_dir) -> None:
    x, y = policy.encode(CONVERSATIONS[2]), policy.encode_completion("Prices go up.")
    optimizer = torch.optim.AdamW(policy.trainable_parameters(), lr=0.05)
    for _ in range(20):
        lp, _ = _logprobs(policy, [x], [y])
        (-lp.sum()).backward()
        optimizer.step()
        optimizer.zero_grad()
        policy.generate(CONVERSATIONS, seed=0)  # samples from merged weights, then restores the originals
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    ids = torch.tensor([x + y])
    with torch.no_grad():
        adapted = policy.model(input_ids=ids).logits
        with policy.base_model():
            base = policy.model(input_ids=ids).logits
        expected = reference(input_ids=ids).logits
    assert not torch.allclose(adapted, expected, atol=1e-3), "the updates did not change the policy"
    torch.testing.assert_close(base, expected, atol=0, rtol=0)


def test_adapter_saves_in_peft_format(policy, model_dir, tmp_path) -> None:
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.1)
    policy.save_adapter(tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").is_file()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), tmp_path / "adapter")
    ids = torch.tensor([policy.encode(CONVERSATIONS[0])])
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, policy.model(input_ids=ids).logits)


def test_errors(policy, model_dir, tmp_path) -> None:
    with pytest.raises(SdpoEnvError, match="cannot score an empty completion"):
        policy.completion_logits([[1, 2]], [[]])
    with pytest.raises(SdpoEnvError, match="already has a LoRA adapter"):
        policy.add_lora(LoraSettings())
    with pytest.raises(SdpoEnvError, match=r"cannot load policy model 'no/such-model-folder'"):
        ChatPolicy.load("no/such-model-folder", device="cpu")  # a hub id, as far as the name tells
    (tmp_path / "refining").mkdir()  # a refinement still running: no model in its folder yet
    for given, said in ((tmp_path / "refining", "no config.json in that folder"),
                        (tmp_path / "gone", "no such model folder")):
        with pytest.raises(SdpoEnvError, match=f"cannot load policy model '{given}' \\({given}\\): {said}"):
            ChatPolicy.load(str(given), device="cpu")


def test_sampling_on_merged_weights_is_the_adapted_policy(policy) -> None:
    assert policy._pristine, "the random test model is small enough to merge for sampling"
    with torch.no_grad():
        for p in policy.trainable_parameters():
            p.add_(0.05 * torch.randn_like(p))
    ids = torch.tensor([policy.encode(CONVERSATIONS[2])])
    with torch.no_grad():
        adapted = policy.model(input_ids=ids).logits
        with policy._merged_for_sampling():
            merged = policy.model(input_ids=ids).logits
        with policy.base_model(), policy._merged_for_sampling():  # the base view never merges
            base = policy.model(input_ids=ids).logits
        with policy.base_model():
            expected_base = policy.model(input_ids=ids).logits
    torch.testing.assert_close(merged, adapted, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(base, expected_base, atol=0, rtol=0)
    assert not torch.allclose(adapted, base, atol=1e-3)


def test_auto_keeps_the_tiny_model_on_the_cpu_even_where_cuda_is_there(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # without the rule, loading would move it to CUDA
    assert ChatPolicy.load("tiny").device.type == "cpu"
    assert ChatPolicy.load("tiny", device="auto").device.type == "cpu"
    assert ChatPolicy.load("tiny-v2").device.type == "cpu"


def test_tiny_v2_names_the_shipped_refinement_of_tiny() -> None:
    assert resolve_model_path("tiny-v2") == str(SHIPPED_MODELS["tiny-v2"]) != resolve_model_path("tiny")
    assert resolve_model_path("./tiny-v2") == "./tiny-v2"  # a folder of that name is still a folder

    def read(name: str, file: str) -> dict:
        return json.loads((SHIPPED_MODELS[name] / file).read_text(encoding="utf-8"))

    # one tokenizer and architecture (the transformers version that saved them aside); other weights, all moved
    assert read("tiny", "config.json") | {"transformers_version": ""} == read("tiny-v2", "config.json") | {
        "transformers_version": ""}
    tiny, v2 = ChatPolicy.load("tiny"), ChatPolicy.load("tiny-v2")
    assert tiny.tokenizer.get_vocab() == v2.tokenizer.get_vocab()
    refined = dict(v2.model.named_parameters())
    assert all(not torch.equal(weight, refined[name]) for name, weight in tiny.model.named_parameters())
    # refined from tiny: its record holds tiny's two stages, then the two that made it (docs/tiny-model.md)
    stages = read("tiny-v2", "build_info.json")["refines"]
    assert stages[:2] == read("tiny", "build_info.json")["refines"] and [s["seed"] for s in stages[2:]] == [13, 18]


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")  # peft's note on tied LoRA
def test_sampling_keeps_an_adapter_that_merging_cannot_cover(model_dir) -> None:
    # LoRA on the embedding as well: merging only covers linear layers, so sampling must run the live adapter
    # (before this was handled, sampling merged the linear layers and switched the embedding's LoRA off).
    policy = ChatPolicy.load(str(model_dir), device="cpu", lora=LoraSettings(r=4, alpha=8,
                             target_modules=["embed_tokens", "q_proj"]), sampling=Sampling(max_new_tokens=12))
    assert not policy._pristine
    with torch.no_grad():
        for name, p in policy.model.named_parameters():
            if "lora_embedding" in name:
                p.add_(2.0 * torch.randn_like(p))
    ids, mask = policy._left_pad([policy.encode(c) for c in CONVERSATIONS])
    with torch.random.fork_rng():
        torch.manual_seed(5)
        live = policy.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=True, top_k=0,
                                     pad_token_id=policy.pad_id, eos_token_id=policy.eos_ids)
    expected = [row[: next((i + 1 for i, t in enumerate(row) if t in policy.eos_ids), len(row))]
                for row in live[:, ids.shape[1]:].tolist()]
    assert [s.ids for s in policy.generate(CONVERSATIONS, seed=5)] == expected
    with policy.base_model():
        assert [s.ids for s in policy.generate(CONVERSATIONS, seed=5)] != expected, "the adapter changed nothing"
