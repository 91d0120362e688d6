"""The baselines' losses against references computed another way (plain loops in float64, autograd identities)."""

from __future__ import annotations

import math

import pytest
import torch

from sdpo_env.losses import dpo_loss, nll_loss, reinforce_loss, running_baseline, sequence_logprobs
from sdpo_env.sdpo import selective_log_softmax


def batch(seed: int = 0, b: int = 3, t: int = 5, v: int = 11):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t, dtype=torch.float64)
    mask[0, 3:] = 0  # a shorter first sequence
    mask[2, 1:] = 0
    return logits, targets, mask


def test_nll_matches_cross_entropy_on_real_tokens() -> None:
    logits, targets, mask = batch()
    loss = nll_loss(token_logprobs=selective_log_softmax(logits, targets), mask=mask)
    keep = mask.bool()
    reference = torch.nn.functional.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(loss, reference)
    per_sequence = [torch.nn.functional.cross_entropy(logits[i][mask[i].bool()], targets[i][mask[i].bool()])
                    for i in range(3)]
    torch.testing.assert_close(nll_loss(token_logprobs=selective_log_softmax(logits, targets), mask=mask,
                                        aggregation="sequence_mean"), torch.stack(per_sequence).mean())


def test_dpo_loss_matches_the_formula_in_plain_python() -> None:
    pc, pr, rc, rr = [-3.0, -10.0], [-4.0, -2.0], [-3.5, -9.0], [-3.0, -2.5]
    beta = 0.3
    loss, margins = dpo_loss(policy_chosen=torch.tensor(pc), policy_rejected=torch.tensor(pr),
                             reference_chosen=torch.tensor(rc), reference_rejected=torch.tensor(rr), beta=beta)
    expected_margins = [beta * ((a - c) - (b - d)) for a, b, c, d in zip(pc, pr, rc, rr)]
    expected = sum(math.log(1 + math.exp(-z)) for z in expected_margins) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert margins.tolist() == pytest.approx(expected_margins, rel=1e-6)


def test_dpo_gradient_is_beta_sigmoid_of_minus_margin_and_ignores_the_reference() -> None:
    chosen = torch.tensor([-2.0, -5.0], requires_grad=True)
    rejected = torch.tensor([-3.0, -1.0], requires_grad=True)
    reference = torch.tensor([-2.5, -4.0], requires_grad=True)
    beta = 0.5
    loss, margins = dpo_loss(policy_chosen=chosen, policy_rejected=rejected, reference_chosen=reference,
                             reference_rejected=reference, beta=beta)
    loss.backward()
    weight = beta * torch.sigmoid(-margins) / 2  # d(mean -log sigmoid(z))/dz = -sigmoid(-z) / B
    torch.testing.assert_close(chosen.grad, -weight)
    torch.testing.assert_close(rejected.grad, weight)
    assert reference.grad is None or torch.all(reference.grad == 0)
    with pytest.raises(ValueError, match="beta must be > 0, got 0"):
        dpo_loss(policy_chosen=chosen, policy_rejected=rejected, reference_chosen=reference,
                 reference_rejected=reference, beta=0)


def test_sequence_logprobs_sum_real_tokens_only() -> None:
    logits, targets, mask = batch()
    token = selective_log_softmax(logits, targets)
    loop = [sum(float(torch.log_softmax(logits.detach()[i, j], -1)[targets[i, j]]) for j in range(5) if mask[i, j])
            for i in range(3)]
    assert sequence_logprobs(token, mask).tolist() == pytest.approx(loop, rel=1e-9)


def test_reinforce_gradient_matches_the_score_function_in_a_loop() -> None:
    logits, targets, mask = batch(seed=1)
    advantages = torch.tensor([0.5, -0.25, 1.0], dtype=torch.float64)
    loss = reinforce_loss(token_logprobs=selective_log_softmax(logits, targets), mask=mask, advantages=advantages)
    loss.backward()
    # d/dlogits of -A * log softmax(l)[y] is -A * (onehot(y) - softmax(l)), averaged over the real tokens.
    expected = torch.zeros_like(logits)
    n = mask.sum()
    for i in range(3):
        for j in range(5):
            if mask[i, j]:
                onehot = torch.nn.functional.one_hot(targets[i, j], 11).double()
                expected[i, j] = -advantages[i] * (onehot - torch.softmax(logits[i, j].detach(), -1)) / n
    torch.testing.assert_close(logits.grad, expected)


def test_reinforce_with_zero_advantage_has_no_gradient_and_advantages_are_constants() -> None:
    logits, targets, mask = batch(seed=2)
    advantages = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    reinforce_loss(token_logprobs=selective_log_softmax(logits, targets), mask=mask, advantages=advantages).backward()
    assert torch.all(logits.grad == 0)
    assert advantages.grad is None


def test_running_baseline_is_an_exponential_moving_average() -> None:
    b = None
    for r in (1.0, 0.0, 0.5):
        b = running_baseline(b, r, decay=0.75)
    assert b == pytest.approx(0.75 * (0.75 * 1.0 + 0.25 * 0.0) + 0.25 * 0.5)
    assert running_baseline(0.3, 1.0, decay=0.0) == 1.0
