"""The refinement's consistency term: an unrelated follow-up as hindsight should leave the answer alone."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from sdpo_env.hindsight import PAPER_SENTENCE
from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.build import main as build_main
from sdpo_env.tiny.corpus import corpus
from sdpo_env.tiny.refine import consistency_pairs, encode_pairs
from sdpo_env.tiny.refine import main as refine_main
from sdpo_env.tiny.train import TrainConfig, consistency_kl, encode, train

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def mini(tmp_path_factory) -> tuple:
    folder = tmp_path_factory.mktemp("mini")
    build_main(["--mini", "--out", str(folder), "--workers", "1"])
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder)
    return folder, tokenizer, AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)


def test_pairs_share_the_answer_and_differ_by_the_hindsight_block() -> None:
    pairs = consistency_pairs(60, seed=0)
    assert pairs == consistency_pairs(60, seed=0)
    for plain, hind in pairs:
        assert plain[-1] == hind[-1] and plain[-1]["role"] == "assistant" and plain[-1]["content"]
        assert PAPER_SENTENCE not in plain[-2]["content"] and PAPER_SENTENCE in hind[-2]["content"]
        assert hind[-2]["content"].startswith(plain[-2]["content"])
    assert len({hind[-2]["content"].split("]")[-1] for _, hind in pairs}) > 20  # many different follow-ups


def test_consistency_kl_matches_one_pair_at_a_time() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_DIR)
    model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
    pairs = encode_pairs(tokenizer, consistency_pairs(6, seed=1))
    # The same answers after another pair's prompt: far apart, so KL's direction matters.
    swapped = [(plain, (hind[0][: hind[1]] + plain[0][plain[1] :], hind[1]))
               for (plain, _), (_, hind) in zip(pairs, pairs[1:] + pairs[:1])]

    def answer_log_probs(ids: list[int], n_prompt: int) -> torch.Tensor:
        logits = model(input_ids=torch.tensor([ids])).logits[0]  # (T, V), no padding
        return logits[n_prompt - 1 : len(ids) - 1].log_softmax(-1)  # the positions that predict the answer

    for chosen in (pairs, swapped):
        with torch.no_grad():
            terms = [torch.nn.functional.kl_div(answer_log_probs(*hind), answer_log_probs(*plain), log_target=True,
                                                reduction="none").sum(-1) for plain, hind in chosen]
            reference = torch.cat(terms).mean()  # KL(plain || hindsight) per answer token
            batched = consistency_kl(model, chosen, tokenizer.pad_token_id, CPU)
        torch.testing.assert_close(batched, reference, rtol=1e-4, atol=1e-7)
    assert reference > 0.05
    same = [(plain, plain) for plain, _ in pairs]
    assert consistency_kl(model, same, tokenizer.pad_token_id, CPU).abs() < 1e-6


def test_the_plain_side_gets_no_gradient(mini) -> None:
    _, tokenizer, model = mini
    model = copy.deepcopy(model)
    (plain, hind), = encode_pairs(tokenizer, consistency_pairs(1, seed=2))
    # The gradient is that of KL(fixed plain || hindsight); were the plain side differentiable, it would differ.
    kl = consistency_kl(model, [(plain, hind)], tokenizer.pad_token_id, CPU)
    kl.backward()
    from_hind = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    with torch.no_grad():
        target = model(input_ids=torch.tensor([plain[0]])).logits[0, plain[1] - 1 : -1].log_softmax(-1)
    logits = model(input_ids=torch.tensor([hind[0]])).logits[0, hind[1] - 1 : -1].log_softmax(-1)
    torch.nn.functional.kl_div(logits, target, log_target=True, reduction="none").sum(-1).mean().backward()
    for name, param in model.named_parameters():
        if param.grad is not None:
            torch.testing.assert_close(from_hind[name], param.grad, rtol=1e-3, atol=1e-7)


def _trained(model, tokenizer, pairs, weight: float, steps: int = 30):
    model = copy.deepcopy(model)
    data = encode(tokenizer, corpus(64, seed=5))
    cfg = TrainConfig(steps=steps, batch_size=16, lr=3e-4, warmup=1, consistency_weight=weight, pair_batch_size=16)
    train(model, data, tokenizer.pad_token_id, cfg, seed=0, device=CPU, log=lambda _: None, pairs=pairs)
    return model


def test_the_term_brings_the_two_prompts_together_and_is_off_at_weight_zero(mini) -> None:
    _, tokenizer, model = mini
    pairs = encode_pairs(tokenizer, consistency_pairs(64, seed=3))
    held_out = encode_pairs(tokenizer, consistency_pairs(100, seed=4))[-32:]
    without = _trained(model, tokenizer, [], 0.0)
    off = _trained(model, tokenizer, pairs, 0.0)
    on = _trained(model, tokenizer, pairs, 300.0)  # measured: 17x lower KL
    assert all(torch.equal(p, q) for p, q in zip(without.parameters(), off.parameters()))  # same batches
    with torch.no_grad():
        kl_without = consistency_kl(without, held_out, tokenizer.pad_token_id, CPU).item()
        kl_on = consistency_kl(on, held_out, tokenizer.pad_token_id, CPU).item()
    assert kl_on < 0.25 * kl_without, (kl_on, kl_without)


def test_refine_rejects_a_negative_weight(capsys) -> None:
    with pytest.raises(SystemExit):
        refine_main(["--out", "/nonexistent", "--consistency", "-1"])
    assert "--consistency must be >= 0" in capsys.readouterr().err
