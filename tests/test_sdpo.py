"""The SDPO math, checked against references computed another way."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sdpo_env.sdpo import (
    SUM_TOKENS,
    aggregate,
    center_advantages,
    contrasted_teacher_logits,
    divergence,
    full_divergence_loss,
    guided_teacher_logits,
    hindsight_log_ratio,
    policy_gradient_loss,
    rewards_to_go,
    selective_log_softmax,
    signal_rows,
    threshold_advantages,
    token_advantages,
    topk_divergence_loss,
    unlearn_along_gradient,
)

# --- Appendix B: the token policy gradient is an unbiased estimate of the reverse-KL gradient ---------------------

V, T = 5, 3  # vocabulary and completion length: V**T = 125 sequences, enumerable
X, X_O = [1, 2], [1, 3, 4, 0, 2]  # context, and the context with a "follow-up" inserted (the hindsight context)


@pytest.fixture(scope="module")
def tiny_lm() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(6.0)  # peaked, distinct student and teacher distributions
    return model


def _completion_logits(model, context, ys):
    ids = torch.tensor([context + list(y) for y in ys])
    logits = model(input_ids=ids).logits  # (B, L, V)
    return logits[:, len(context) - 1 : len(context) - 1 + T]  # (B, T, V): positions predicting y


def _grad(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _estimator_grads(model, *, sign=1.0, detach_teacher=True):
    """Returns (analytic gradient, exact expectation of the token estimator, per-sequence token gradients' inputs)."""
    ys = list(itertools.product(range(V), repeat=T))
    targets = torch.tensor(ys)  # (N, T)
    mask = torch.ones(len(ys), T, dtype=torch.float64)
    student_logits = _completion_logits(model, X, ys)
    teacher_logits = _completion_logits(model, X_O, ys)
    if detach_teacher:
        teacher_logits = teacher_logits.detach()
    student_lp = selective_log_softmax(student_logits, targets)  # (N, T)
    teacher_lp = selective_log_softmax(teacher_logits, targets)
    weights = student_lp.sum(-1).exp().detach()  # pi(y | x), sums to 1 over all sequences
    assert torch.isclose(weights.sum(), torch.tensor(1.0, dtype=torch.float64))
    # Analytic: E_y[ sum_t grad KL(pi(.|x, y<t) || sg pi(.|x, o, y<t)) ], prefixes fixed, exact over all y.
    student_log, teacher_log = torch.log_softmax(student_logits, -1), torch.log_softmax(teacher_logits.detach(), -1)
    per_position = divergence(student_log, teacher_log, 1.0)  # (N, T) reverse KL per visited prefix
    analytic = _grad(model, (weights[:, None] * per_position).sum())
    student_logits = _completion_logits(model, X, ys)
    teacher_logits = _completion_logits(model, X_O, ys)
    student_lp = selective_log_softmax(student_logits, targets)
    teacher_lp = selective_log_softmax(teacher_logits if not detach_teacher else teacher_logits.detach(), targets)
    if detach_teacher:
        advantages = sign * token_advantages(teacher_logprobs=teacher_lp, student_logprobs=student_lp, mask=mask)
        per_token = -advantages * student_lp  # what policy_gradient_loss differentiates
    else:  # the bug: gradients flow through the teacher and the advantage
        per_token = -(teacher_lp - student_lp) * student_lp
    expected = _grad(model, (weights[:, None] * per_token).sum())
    return analytic, expected, weights, targets, mask


def test_appendix_b_exact_expectation(tiny_lm) -> None:
    analytic, expected, *_ = _estimator_grads(tiny_lm)
    assert analytic.norm() > 1e-3
    # Exact up to rounding (measured 4e-8: Llama's rotary embedding computes in float32 even in a float64 model).
    assert ((expected - analytic).norm() / analytic.norm()).item() < 1e-6


def test_appendix_b_monte_carlo_with_our_loss(tiny_lm) -> None:
    """Averaging the paper's loss over sampled sequences converges to the analytic gradient."""
    analytic, _, weights, targets, mask = _estimator_grads(tiny_lm)
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    counts = torch.bincount(torch.multinomial(weights, n, replacement=True, generator=generator),
                            minlength=len(weights)).double()
    seen = counts > 0
    ys = [tuple(y) for y in targets[seen].tolist()]
    student_lp = selective_log_softmax(_completion_logits(tiny_lm, X, ys), targets[seen])
    with torch.no_grad():
        teacher_lp = selective_log_softmax(_completion_logits(tiny_lm, X_O, ys), targets[seen])
    advantages = token_advantages(teacher_logprobs=teacher_lp, student_logprobs=student_lp, mask=mask[seen])
    # policy_gradient_loss with token_mean over one sequence is sum_t / T; weight each distinct sequence by its count.
    losses = torch.stack([
        policy_gradient_loss(student_logprobs=student_lp[i : i + 1], advantages=advantages[i : i + 1],
                             mask=mask[seen][i : i + 1]) for i in range(len(ys))
    ])
    estimate = _grad(tiny_lm, (counts[seen] / n * T * losses).sum())
    relative_error = ((estimate - analytic).norm() / analytic.norm()).item()
    cosine = torch.nn.functional.cosine_similarity(estimate, analytic, dim=0).item()
    print(f"monte carlo: relative error {relative_error:.4f}, cosine {cosine:.5f}")
    assert relative_error < 0.05, relative_error  # measured 0.019 at n = 20,000, seed 0
    assert cosine > 0.998


@pytest.mark.parametrize("bug", ["flipped_sign", "teacher_not_detached"])
def test_appendix_b_check_catches_wrong_estimators(tiny_lm, bug) -> None:
    kwargs = {"sign": -1.0} if bug == "flipped_sign" else {"detach_teacher": False}
    analytic, expected, *_ = _estimator_grads(tiny_lm, **kwargs)
    assert ((expected - analytic).norm() / analytic.norm()).item() > 0.5


def test_rewards_to_go_give_the_gradient_of_the_sequence_level_reverse_kl(tiny_lm) -> None:
    """With G_t = sum_{t' >= t} A_t' in place of A_t, the paper's loss is, in exact expectation over all
    sequences, the gradient of KL(pi(y | x) || sg pi(y | x, o)): the sampling distribution's dependence on the
    weights included, which the per-prefix KL of Appendix B leaves out."""
    per_prefix, token_estimator, weights, targets, mask = _estimator_grads(tiny_lm)
    ys = [tuple(y) for y in targets.tolist()]
    student_lp = selective_log_softmax(_completion_logits(tiny_lm, X, ys), targets)  # (N, T)
    with torch.no_grad():
        teacher_lp = selective_log_softmax(_completion_logits(tiny_lm, X_O, ys), targets)
    sequence_lp = student_lp.sum(-1)  # log pi(y | x), with gradient
    sequence_kl = (sequence_lp.exp() * (sequence_lp - teacher_lp.sum(-1))).sum()  # exact, over every y
    analytic = _grad(tiny_lm, sequence_kl)
    student_lp = selective_log_softmax(_completion_logits(tiny_lm, X, ys), targets)
    to_go = rewards_to_go(token_advantages(teacher_logprobs=teacher_lp, student_logprobs=student_lp, mask=mask), mask)
    expected = _grad(tiny_lm, (weights[:, None] * -to_go * student_lp).sum())
    assert ((expected - analytic).norm() / analytic.norm()).item() < 1e-6
    # here the sequence-level gradient differs from the per-prefix one and its estimator, so the check tells them apart
    assert ((token_estimator - analytic).norm() / analytic.norm()).item() > 0.1
    assert ((per_prefix - analytic).norm() / analytic.norm()).item() > 0.1


def test_rewards_to_go_sum_each_answers_advantages_from_each_token_to_its_end() -> None:
    advantages = torch.tensor([[1.0, 2.0, 3.0, 9.0], [0.5, -1.0, 9.0, 9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])  # padding after each answer
    expected = torch.tensor([[6.0, 5.0, 3.0, 0.0], [-0.5, -1.0, 0.0, 0.0]])
    torch.testing.assert_close(rewards_to_go(advantages, mask), expected, atol=0, rtol=0)


# --- unit checks on random tensors ------------------------------------------------------------------------------


def _random(b=3, t=6, v=11, seed=0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(b, t, v, generator=g, requires_grad=True)
    teacher = torch.randn(b, t, v, generator=g)
    targets = torch.randint(0, v, (b, t), generator=g)
    mask = torch.ones(b, t)
    mask[0, 4:] = 0
    mask[2, 2:] = 0
    return student, teacher, targets, mask


def test_selective_log_softmax_matches_log_softmax() -> None:
    student, _, targets, _ = _random()
    reference = torch.log_softmax(student, -1).gather(-1, targets[..., None])[..., 0]
    torch.testing.assert_close(selective_log_softmax(student, targets), reference)
    half = selective_log_softmax(student.bfloat16(), targets)
    torch.testing.assert_close(half, reference, atol=0.05, rtol=0.02)


def test_advantages_are_detached_masked_and_signed() -> None:
    student, teacher, targets, mask = _random()
    s_lp, t_lp = selective_log_softmax(student, targets), selective_log_softmax(teacher, targets)
    adv = token_advantages(teacher_logprobs=t_lp, student_logprobs=s_lp, mask=mask)
    assert not adv.requires_grad
    assert torch.all(adv[mask == 0] == 0)
    torch.testing.assert_close(adv[mask == 1], (t_lp - s_lp)[mask == 1].detach())
    centred = center_advantages(adv, mask)
    torch.testing.assert_close((centred * mask).sum(-1), torch.zeros(3), atol=1e-6, rtol=0)


def test_threshold_keeps_large_advantages_exactly_and_zeroes_the_rest() -> None:
    adv = torch.tensor([[0.5, -0.05, -2.0, 0.0], [0.19, -0.2, 0.21, 0.0]])
    kept = threshold_advantages(adv, 0.2)
    assert torch.equal(kept, torch.tensor([[0.5, 0.0, -2.0, 0.0], [0.0, -0.2, 0.21, 0.0]]))  # |A| = 0.2 is kept
    assert torch.equal(threshold_advantages(adv, 0.0), adv)
    assert not threshold_advantages(adv, 3.0).any()


def test_signal_rows_pass_answers_with_a_large_advantage_on_a_completion_token() -> None:
    adv = torch.tensor([[0.1, -0.5, 0.0], [0.2, 0.3, 9.0], [0.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])  # row 1's 9.0 is padding
    assert signal_rows(adv, mask, 0.5).tolist() == [True, False, False]  # |A_t| equal to the gate passes
    assert signal_rows(adv, mask, 0.51).tolist() == [False, False, False]
    assert signal_rows(adv, mask, 0.2).tolist() == [True, True, False]


def test_unlearning_removes_the_weights_component_up_the_gradient_and_nothing_else() -> None:
    torch.manual_seed(0)
    weights = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    grads = [torch.randn(3, 4, dtype=torch.float64), torch.randn(5, dtype=torch.float64)]
    def flat(ts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat([t.flatten() for t in ts])

    if flat(weights) @ flat(grads) < 0:
        grads = [-g for g in grads]
    before, g = flat(weights).clone(), flat(grads)
    removed = unlearn_along_gradient(weights, grads, 0.25)
    after = flat(weights)
    assert after @ g == pytest.approx(0.75 * (before @ g))  # a quarter of the component along g is gone
    def orthogonal(w: torch.Tensor) -> torch.Tensor:
        return w - (w @ g) / (g @ g) * g

    torch.testing.assert_close(orthogonal(after), orthogonal(before))  # the rest is untouched
    assert removed == pytest.approx(float((before - after).norm() / before.norm()))
    assert unlearn_along_gradient(weights, [-x for x in grads], 1.0) == 0.0  # weights point down the gradient
    torch.testing.assert_close(flat(weights), after)


def test_unlearning_reads_what_a_lora_adapter_does_not_how_its_factors_split() -> None:
    """<B, dL/dB> = <A, dL/dA> = <delta W, dL/d(delta W)> for delta W = s B A, checked with a free delta W."""
    torch.manual_seed(1)
    a, b, x, target = (torch.randn(2, 6, dtype=torch.float64, requires_grad=True),
                       torch.randn(4, 2, dtype=torch.float64, requires_grad=True),
                       torch.randn(7, 6, dtype=torch.float64), torch.zeros(7, 4, dtype=torch.float64))
    scale = 1.5

    def loss(w: torch.Tensor) -> torch.Tensor:
        return ((x @ w.T - target) ** 2).sum()

    loss(scale * b @ a).backward()
    delta = (scale * b @ a).detach().requires_grad_(True)
    loss(delta).backward()
    aligned = float((delta.detach() * delta.grad).sum())
    assert float((b.detach() * b.grad).sum()) == pytest.approx(aligned)
    assert float((a.detach() * a.grad).sum()) == pytest.approx(aligned)
    # so unlearning on B alone, as SDPO's unlearn does, takes that share off what the adapter itself does
    assert aligned > 0  # the target 0: shrinking delta W lowers this loss
    b_after = b.detach().clone()
    assert unlearn_along_gradient([b_after], [b.grad], 0.25) > 0
    assert float(((scale * b_after @ a.detach()) * delta.grad).sum()) == pytest.approx(0.75 * aligned)


def test_aggregations() -> None:
    values = torch.tensor([[1.0, 3.0, 0.0], [2.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(2.0)  # (1 + 3 + 2) / 3
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx(2.0)  # (2 + 2) / 2
    values[1, 0] = 5.0
    assert aggregate(values, mask, "token_mean").item() == pytest.approx(3.0)
    assert aggregate(values, mask, "sequence_mean").item() == pytest.approx(3.5)
    assert aggregate(values, mask, "token_sum").item() == pytest.approx((1 + 3 + 5) / (2 * SUM_TOKENS))
    # token_sum: a sequence twice as long with the same per-token values weighs twice as much (the means: the same)
    short, long_ = torch.ones(1, 4), torch.ones(1, 8)
    assert aggregate(long_, long_, "token_sum").item() == pytest.approx(2 * aggregate(short, short, "token_sum").item())
    assert aggregate(long_, long_, "token_mean").item() == aggregate(short, short, "token_mean").item()
    with pytest.raises(ValueError, match="aggregation must be one of"):
        aggregate(values, mask, "sum")


def test_policy_gradient_direction() -> None:
    """A gradient step on the loss raises tokens with positive advantage and lowers negative ones."""
    student, teacher, targets, mask = _random()
    lp = selective_log_softmax(student, targets)
    adv = torch.randn(3, 6)
    policy_gradient_loss(student_logprobs=lp, advantages=adv, mask=mask).backward()
    with torch.no_grad():
        stepped = selective_log_softmax(student - 0.01 * student.grad, targets)
    change = (stepped - lp.detach())[mask == 1]
    signs = adv[mask == 1].sign()
    assert torch.all(change * signs > 0)


def test_clipping_stops_gradients_outside_the_trust_region() -> None:
    student, _, targets, mask = _random()
    lp = selective_log_softmax(student, targets)
    adv = torch.ones(3, 6)
    (plain,) = torch.autograd.grad(policy_gradient_loss(student_logprobs=lp, advantages=adv, mask=mask), student,
                                   retain_graph=True)
    same = policy_gradient_loss(student_logprobs=lp, advantages=adv, mask=mask, old_logprobs=lp.detach(), clip=0.2)
    (clipped,) = torch.autograd.grad(same, student, retain_graph=True)
    torch.testing.assert_close(clipped, plain)  # at ratio 1 the surrogate's gradient is the plain one
    far = policy_gradient_loss(student_logprobs=lp, advantages=adv, mask=mask, old_logprobs=lp.detach() - 1.0, clip=0.2)
    far.backward()
    assert torch.all(student.grad == 0)  # ratio e > 1.2 with A > 0: clipped, no further push
    with pytest.raises(ValueError, match="ratio clipping needs old_logprobs"):
        policy_gradient_loss(student_logprobs=lp, advantages=adv, mask=mask, clip=0.2)


def test_divergence_limits_and_properties() -> None:
    student, teacher, _, mask = _random()
    s, t = torch.log_softmax(student.detach(), -1), torch.log_softmax(teacher, -1)
    reverse = (s.exp() * (s - t)).sum(-1)
    forward = (t.exp() * (t - s)).sum(-1)
    torch.testing.assert_close(divergence(s, t, 1.0), reverse)
    torch.testing.assert_close(divergence(s, t, 0.0), forward)
    jsd = divergence(s, t, 0.5)
    torch.testing.assert_close(jsd, divergence(t, s, 0.5))  # symmetric at 1/2
    assert torch.all(jsd >= 0) and torch.all(jsd <= torch.log(torch.tensor(2.0)) + 1e-6)
    assert torch.all(divergence(s, s, 0.3).abs() < 1e-6)
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        divergence(s, t, 1.5)


def test_topk_with_every_token_equals_the_full_divergence() -> None:
    student, teacher, _, mask = _random()
    for alpha in (0.0, 0.5, 1.0):
        full = full_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, alpha=alpha)
        topk = topk_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, k=11, alpha=alpha)
        torch.testing.assert_close(topk, full, atol=1e-5, rtol=1e-5)
    small = topk_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, k=3)
    renormalised = topk_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, k=3, tail=False)
    assert small.item() > 0 and renormalised.item() > 0 and small.item() != renormalised.item()


@pytest.mark.parametrize("aggregation", ["token_mean", "sequence_mean", "token_sum"])
def test_a_row_weighed_zero_drops_out_of_the_divergence_but_keeps_its_share_of_the_denominator(aggregation) -> None:
    student, teacher, _, mask = _random()
    rows = torch.tensor([1.0, 0.0, 1.0])
    per_token = divergence(torch.log_softmax(student, -1), torch.log_softmax(teacher, -1), 1.0)  # (B, T)
    expected = aggregate(per_token * rows[:, None], mask, aggregation)  # as pg does with zeroed advantages
    full = full_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, rows=rows,
                                aggregation=aggregation)
    torch.testing.assert_close(full, expected)
    kept = [0, 2]
    assert full.item() != pytest.approx(aggregate(per_token[kept], mask[kept], aggregation).item())  # not them alone
    every = topk_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask, k=11, rows=rows,
                                 aggregation=aggregation)
    torch.testing.assert_close(every, expected, atol=1e-5, rtol=1e-5)
    unweighed = full_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask,
                                     aggregation=aggregation)
    torch.testing.assert_close(full_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask,
                                                    rows=torch.ones(3), aggregation=aggregation), unweighed)
    # the policy gradient the same way: a weight of 0 is a row whose advantages are all zero
    log_probs = torch.log_softmax(student, -1)[..., 0]  # (B, T)
    advantages = torch.randn(3, 6, generator=torch.Generator().manual_seed(1))
    for clip in (None, 0.2):
        pg = {"student_logprobs": log_probs, "mask": mask, "aggregation": aggregation, "clip": clip,
              "old_logprobs": log_probs.detach() + 0.1}
        torch.testing.assert_close(policy_gradient_loss(advantages=advantages, rows=rows, **pg),
                                   policy_gradient_loss(advantages=advantages * rows[:, None], **pg))
        assert policy_gradient_loss(advantages=advantages, rows=rows, **pg).item() != pytest.approx(
            policy_gradient_loss(advantages=advantages, **pg).item())


def test_divergence_losses_do_not_train_the_teacher() -> None:
    student, teacher, _, mask = _random()
    teacher.requires_grad_(True)
    full_divergence_loss(student_logits=student, teacher_logits=teacher, mask=mask).backward()
    assert teacher.grad is None and student.grad is not None


def test_the_contrasted_teacher_is_the_student_reweighted_by_the_ratio_of_the_two_hindsight_teachers() -> None:
    gen = torch.Generator().manual_seed(3)
    student, teacher, baseline = (torch.randn(2, 4, 7, generator=gen) * 2 for _ in range(3))  # (B, T, V) logits
    log_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline)
    contrasted = contrasted_teacher_logits(student_logits=student, log_ratio=log_ratio)
    # the reference in probability space: p_s * p_o / p_u, renormalised
    p_s, p_o, p_u = (torch.softmax(x.double(), -1) for x in (student, teacher, baseline))
    reference = p_s * p_o / p_u
    reference = reference / reference.sum(-1, keepdim=True)
    assert torch.allclose(torch.softmax(contrasted.double(), -1), reference, atol=1e-6)
    # a follow-up no different from the neutral one leaves the student's distribution
    same = contrasted_teacher_logits(student_logits=student,
                                     log_ratio=hindsight_log_ratio(teacher_logits=teacher, baseline_logits=teacher))
    assert torch.allclose(torch.log_softmax(same, -1), torch.log_softmax(student, -1), atol=1e-6)
    assert not contrasted.requires_grad and not log_ratio.requires_grad


def test_the_contrasted_teacher_moves_with_the_student_where_the_plain_one_stays() -> None:
    # why agent.contrast_use exists: a student that reaches the plain hindsight teacher has nothing left to learn from
    # it, but one that reaches the contrasted teacher faces a new one the same ratio further on, so its steps never
    # shrink (on the multi-turn user that ran away: docs/results.md)
    gen = torch.Generator().manual_seed(5)
    student, teacher, baseline = (torch.randn(2, 4, 7, generator=gen) * 2 for _ in range(3))  # (B, T, V) logits
    mask = torch.ones(2, 4)

    def loss(student_logits: torch.Tensor, target: torch.Tensor) -> float:
        return float(full_divergence_loss(student_logits=student_logits, teacher_logits=target, mask=mask))

    assert loss(teacher, teacher) == pytest.approx(0, abs=1e-6)
    log_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline)
    first = contrasted_teacher_logits(student_logits=student, log_ratio=log_ratio)
    second = contrasted_teacher_logits(student_logits=first, log_ratio=log_ratio)
    assert loss(student, first) > 0.1 and loss(first, second) > 0.1  # reached, and as far from the next one
    # each moved by the same log-ratio from the distribution before it
    assert torch.allclose(second - torch.log_softmax(first, -1), first - torch.log_softmax(student, -1), atol=1e-5)


def test_the_clipped_contrast_bounds_the_ratio_of_the_two_hindsight_teachers() -> None:
    gen = torch.Generator().manual_seed(4)
    student, teacher, baseline = (torch.randn(2, 4, 7, generator=gen) * 3 for _ in range(3))  # (B, T, V) logits
    clip = 0.5
    clipped_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline, clip=clip)
    clipped = contrasted_teacher_logits(student_logits=student, log_ratio=clipped_ratio)
    # the reference in probability space: p_s * min(max(p_o / p_u, e^-clip), e^clip), renormalised
    p_s, p_o, p_u = (torch.softmax(x.double(), -1) for x in (student, teacher, baseline))
    ratio = p_o / p_u
    assert (ratio > math.exp(clip)).any() and (ratio < math.exp(-clip)).any()  # both bounds are reached here
    reference = p_s * torch.minimum(torch.maximum(ratio, torch.tensor(math.exp(-clip))), torch.tensor(math.exp(clip)))
    reference = reference / reference.sum(-1, keepdim=True)
    assert torch.allclose(torch.softmax(clipped.double(), -1), reference, atol=1e-6)
    # so the teacher's odds of any two tokens differ from the student's by at most exp(2 clip)
    odds = (torch.log_softmax(clipped.double(), -1) - torch.log_softmax(student.double(), -1))
    assert float(odds.amax(-1).sub(odds.amin(-1)).max()) <= 2 * clip + 1e-5  # float32 logits
    # a clip wider than every ratio changes nothing
    unclipped = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline)
    wide = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline,
                               clip=float(ratio.log().abs().max()) + 1)
    assert torch.equal(wide, unclipped)


def test_the_guided_teacher_is_the_hindsight_teacher_moved_by_the_ratio_again() -> None:
    gen = torch.Generator().manual_seed(6)
    teacher, baseline = (torch.randn(2, 4, 7, generator=gen) * 2 for _ in range(2))  # (B, T, V) logits
    p_o, p_u = (torch.softmax(x.double(), -1) for x in (teacher, baseline))
    log_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline)
    for scale in (0.5, 1.0):
        guided = guided_teacher_logits(teacher_logits=teacher, log_ratio=log_ratio, scale=scale)
        # the reference in probability space: p_o^(1 + scale) / p_u^scale, renormalised (classifier-free guidance)
        reference = p_o ** (1 + scale) / p_u ** scale
        reference = reference / reference.sum(-1, keepdim=True)
        assert torch.allclose(torch.softmax(guided.double(), -1), reference, atol=1e-6)
        assert not guided.requires_grad
    # clipped, the ratio is bounded as the contrast's is: p_o * min(max(p_o / p_u, e^-clip), e^clip)^scale
    clip, scale = 0.5, 0.5
    clipped_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=baseline, clip=clip)
    clipped = guided_teacher_logits(teacher_logits=teacher, log_ratio=clipped_ratio, scale=scale)
    bounded = torch.clamp(p_o / p_u, math.exp(-clip), math.exp(clip))
    assert (p_o / p_u > math.exp(clip)).any() and (p_o / p_u < math.exp(-clip)).any()  # both bounds are reached
    reference = p_o * bounded ** scale
    reference = reference / reference.sum(-1, keepdim=True)
    assert torch.allclose(torch.softmax(clipped.double(), -1), reference, atol=1e-6)
    # a follow-up no different from the neutral one leaves the plain hindsight teacher
    no_ratio = hindsight_log_ratio(teacher_logits=teacher, baseline_logits=teacher)
    same = guided_teacher_logits(teacher_logits=teacher, log_ratio=no_ratio, scale=1.0)
    assert torch.allclose(same, torch.log_softmax(teacher, -1), atol=1e-6)
    # unlike the contrasted teacher it does not start from the student: it is the contrasted teacher of a student
    # that stands where the hindsight teacher stands, with the ratio scaled
    contrasted = contrasted_teacher_logits(student_logits=teacher, log_ratio=log_ratio)
    assert torch.allclose(guided_teacher_logits(teacher_logits=teacher, log_ratio=log_ratio, scale=1.0), contrasted,
                          atol=1e-6)
