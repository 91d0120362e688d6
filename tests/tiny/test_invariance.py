"""Invariance to neutral follow-ups: the KL term, the pairs it is measured on, and one training step on the shipped
model that lowers it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from sdpo_env.hindsight import PAPER_SENTENCE
from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.corpus import neutral_follow_ups, questions
from sdpo_env.tiny.refine import encode_pairs, neutral_pairs
from sdpo_env.tiny.train import TrainConfig, encode, invariance_loss, pair_divergence, train


def test_invariance_loss_is_the_kl_from_the_plain_side() -> None:
    torch.manual_seed(0)
    plain, moved = torch.randn(7, 11), torch.randn(7, 11)
    # torch's kl_div(input=log q, target=log p, log_target=True) sums p * (log p - log q): KL(p || q) per row.
    reference = F.kl_div(torch.log_softmax(moved, -1), torch.log_softmax(plain, -1), log_target=True,
                         reduction="batchmean")
    assert torch.allclose(invariance_loss(plain, moved), reference, atol=1e-6)
    assert invariance_loss(plain, plain + 3.0).abs() < 1e-6  # a shift of every logit leaves the distribution
    plain.requires_grad_(True)
    moved.requires_grad_(True)
    invariance_loss(plain, moved).backward()
    assert plain.grad is not None and plain.grad.abs().sum() > 0  # both sides are trained (see the docstring)
    assert moved.grad is not None and moved.grad.abs().sum() > 0


def test_neutral_pairs_differ_only_by_a_neutral_hindsight_block() -> None:
    pairs = neutral_pairs(40, seed=3)
    assert pairs == neutral_pairs(40, seed=3)
    neutral = set(neutral_follow_ups()) | {q.text for q in questions()}
    for plain, moved in pairs:
        assert plain[-1] == moved[-1] and plain[-1]["role"] == "assistant"  # the same answer
        assert PAPER_SENTENCE not in plain[0]["content"] and PAPER_SENTENCE in moved[0]["content"]
        assert moved[0]["content"].startswith(plain[0]["content"])
        assert any(moved[0]["content"].rstrip().endswith(f) for f in neutral), moved[0]["content"]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_DIR)
    for (plain_ids, plain_start), (moved_ids, moved_start) in encode_pairs(tokenizer, pairs):
        assert plain_ids[plain_start:] == moved_ids[moved_start:]  # the answer's tokens line up


def _divergence(model, tokenizer, pairs) -> float:
    with torch.no_grad():
        return pair_divergence(model, pairs, tokenizer.pad_token_id, torch.device("cpu")).item()


def test_invariance_training_lowers_the_divergence_on_neutral_follow_ups() -> None:
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_DIR)
    pairs = encode_pairs(tokenizer, neutral_pairs(4, seed=0))
    data = encode(tokenizer, [plain for plain, _ in neutral_pairs(4, seed=1)])
    after = {}
    for weight in (0.0, 100.0):
        model = AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32)
        before = _divergence(model, tokenizer, pairs)
        cfg = TrainConfig(steps=4, batch_size=4, lr=5e-5, warmup=1, invariance_weight=weight, invariance_batch=4)
        train(model, data, tokenizer.pad_token_id, cfg, seed=0, device=torch.device("cpu"), pairs=pairs,
              log=lambda line: None)
        after[weight] = _divergence(model, tokenizer, pairs)
    assert after[100.0] < 0.85 * before and after[100.0] < 0.85 * after[0.0], (before, after)
