"""The SDPO learner on a real (random, tiny) HF model with real peft LoRA."""

from __future__ import annotations

import collections
import copy
import dataclasses
import warnings

import pytest
import torch

import agents.sdpo as sdpo_module
from agents import SDPOLearner, Transition, make_learner
from agents.base import with_absent_options
from sdpo_env.errors import ConfigError, SdpoEnvError, UnknownNameError
from sdpo_env.hindsight import hindsight_messages
from sdpo_env.policy import ChatPolicy, Sampling
from sdpo_env.sdpo import rewards_to_go, selective_log_softmax, unlearn_along_gradient
from tests.models import build_random_model

X = [{"role": "user", "content": "How do I water basil?"}]
X2 = [{"role": "user", "content": "Explain inflation."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_random_model(tmp_path_factory.mktemp("random_model"))


def make(model_dir, name="sdpo_paper", **options):
    """A learner on the random model; by default ``sdpo_paper`` (the sampled-token loss, AdamW, no gate), whose
    mechanics most tests here check option by option; ``name="sdpo"`` for the defaults."""
    policy = ChatPolicy.load(str(model_dir), device="cpu", sampling=Sampling(max_new_tokens=10))
    return make_learner({"name": name, "diagnostics_every": 0, **options}, policy, seed=0)


def interact(learner, follow_up="Too long, keep it short.", conversations=(X, X2)):
    responses = learner.act(list(conversations))
    transitions = [Transition(messages=c, response=r, follow_up=follow_up, info={"relevant": True})
                   for c, r in zip(conversations, responses)]
    return responses, transitions


def student_logprobs(learner, messages, response):
    p = learner.policy
    with torch.no_grad():
        logits, targets, mask = p.completion_logits([p.encode(messages)], [learner._completion_ids(response)])
    return selective_log_softmax(logits, targets)[0]


def test_update_moves_tokens_in_the_direction_of_their_advantage(model_dir) -> None:
    learner = make(model_dir, lr=5e-3, weight_decay=0.0)
    (response,), (transition,) = interact(learner, conversations=(X,))
    p = learner.policy
    ids = learner._completion_ids(response)
    with torch.no_grad():
        hind, targets, _ = p.completion_logits([p.encode(hindsight_messages(X, transition.follow_up))], [ids])
    before = student_logprobs(learner, X, response)
    advantages = selective_log_softmax(hind, targets)[0] - before
    metrics = learner.observe([transition])
    after = student_logprobs(learner, X, response)
    change = after - before
    assert metrics["sdpo/advantage_abs_mean"] == pytest.approx(advantages.abs().mean().item(), rel=1e-4)
    assert change[advantages > 0].mean() > 0 and change[advantages < 0].mean() < 0
    assert (advantages * change).sum() > 0  # first-order decrease of the loss


def test_sdpo_defaults_are_the_exact_gradient_stepped_by_sgd_on_signals_and_sdpo_paper_is_the_papers(model_dir):
    sdpo, paper = make(model_dir, "sdpo"), make(model_dir)
    differ = {f.name: (getattr(sdpo.config, f.name), getattr(paper.config, f.name))
              for f in dataclasses.fields(sdpo.config) if getattr(sdpo.config, f.name) != getattr(paper.config, f.name)}
    assert differ == {"lr": (2.0, 1e-3), "optimizer": ("sgd", "adamw"), "weight_decay": (1e-3, 2.0),
                      "loss": ("full", "pg"), "signal_gate": (0.3, 0.0), "contrast": ("Thanks.", None)}
    assert type(sdpo.optimizer) is torch.optim.SGD and type(paper.optimizer) is torch.optim.AdamW
    assert isinstance(paper, SDPOLearner)  # the same learner, other defaults
    # the same shrink per step, lr x weight_decay = 0.002
    assert paper.config.lr * paper.config.weight_decay == pytest.approx(sdpo.config.lr * sdpo.config.weight_decay)


def test_sdpo_is_guided_past_thanks_sdpo_gate_only_gates_and_sdpo_plain_has_no_contrast(model_dir):
    sdpo = make(model_dir, "sdpo")
    assert (sdpo.config.contrast, sdpo.config.contrast_clip, sdpo.config.contrast_use,
            sdpo.config.contrast_scale) == ("Thanks.", 3.0, "guide", 0.5)
    for name, expected in {"sdpo_plain": {"contrast": ("Thanks.", None)},
                           "sdpo_gate": {"contrast_use": ("guide", "gate")}}.items():
        other = make(model_dir, name)
        differ = {f.name: (getattr(sdpo.config, f.name), getattr(other.config, f.name))
                  for f in dataclasses.fields(sdpo.config)
                  if getattr(sdpo.config, f.name) != getattr(other.config, f.name)}
        assert differ == expected, name
        assert isinstance(other, SDPOLearner)


def test_settings_stored_before_the_contrast_existed_read_as_no_contrast() -> None:
    # every learner built on SDPOConfig reads a missing contrast as none; given keys and other learners are kept
    for name in ("sdpo", "sdpo_plain", "sdpo_gate", "sdpo_paper"):
        assert with_absent_options({"name": name, "lr": 0.5}) == {
            "name": name, "lr": 0.5, "contrast": None, "contrast_clip": None, "contrast_use": "target",
            "contrast_scale": 0.5}  # contrast_use=guide came later still; the scale does nothing without it
    assert with_absent_options({"name": "sdpo", "contrast": "Thanks."})["contrast"] == "Thanks."
    assert with_absent_options({"name": "icl_memory"}) == {"name": "icl_memory"}
    assert with_absent_options({"name": "sdpoo"}) == {"name": "sdpoo"}  # reported where the run is resolved


def test_a_default_update_lowers_the_reverse_kl_to_the_hindsight_teacher(model_dir) -> None:
    """The exact gradient of KL(student || teacher) over the vocabulary, stepped by SGD: the divergence on the
    answer falls (computed here from the two distributions, apart from the learner's loss)."""
    learner = make(model_dir, "sdpo_plain", signal_gate=0, weight_decay=0, lr=0.5, grad_clip=0)
    (response,), (transition,) = interact(learner, conversations=(X,))
    p, ids = learner.policy, learner._completion_ids(response)

    def reverse_kl() -> float:
        with torch.no_grad():
            student, _, mask = p.completion_logits([p.encode(X)], [ids])
            teacher, _, _ = p.completion_logits([p.encode(hindsight_messages(X, transition.follow_up))], [ids])
            s, t = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
            return float(((s.exp() * (s - t)).sum(-1) * mask).sum() / mask.sum())

    before = reverse_kl()
    metrics = learner.observe([transition])
    assert metrics["sdpo/loss"] == pytest.approx(before, rel=1e-4) and before > 0
    assert reverse_kl() < before


def _forwards(learner, transitions) -> int:
    calls = []
    handle = learner.policy.model.get_base_model().register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        learner.observe(transitions)
    finally:
        handle.remove()
    return len(calls)


def test_two_forward_passes_per_update_three_with_the_kl(model_dir) -> None:
    learner = make(model_dir)
    _, transitions = interact(learner)
    assert _forwards(learner, transitions) == 2  # one teacher forward (no grad) + one student forward (grad)
    # the KL to the base takes a third, except on an update the signal gate skips (its loss is not used)
    assert _forwards(make(model_dir, kl_coef=0.1), transitions) == 3
    assert _forwards(make(model_dir, kl_coef=0.1, signal_gate=1e6), transitions) == 2
    assert _forwards(make(model_dir, kl_coef=0.1, signal_gate=1e-6), transitions) == 3
    # so do the diagnostics (every N updates), which a skipped update does not count or run
    assert _forwards(make(model_dir, diagnostics_every=1), transitions) == 3
    assert _forwards(make(model_dir, diagnostics_every=1, signal_gate=1e6), transitions) == 2


def test_schedule_update_every_and_batch(model_dir) -> None:
    learner = make(model_dir, update_every=2, batch_size=3)
    _, (t1, t2) = interact(learner)
    assert learner.observe([t1]) == {}
    metrics = learner.observe([t2])
    assert learner.n_updates == 1 and metrics["sdpo/completion_tokens"] > 0
    assert len(learner.buffer) == 2


@pytest.mark.parametrize("options", [
    {"loss": "topk", "topk": 5}, {"loss": "full", "alpha": 0.5}, {"center_advantages": True}, {"credit": "to_go"},
    {"ratio_clip": 0.2}, {"advantage_threshold": 0.01}, {"signal_gate": 0.01}, {"decay_gate": 0.01}, {"kl_coef": 0.1},
    {"replay": 1, "replay_gate": 1e-9}, {"decay_factors": "B"}, {"memory": 2, "memory_gate": 1e-9},
    {"teacher": "base"}, {"teacher": "ema"},
    {"aggregation": "sequence_mean", "batch_size": 2}, {"optimizer": "sgd", "lr": 1.0, "weight_decay": 1e-3},
    {"extra_samples": 2}, {"contrast": "Thanks.", "contrast_use": "target", "contrast_clip": None},
    {"contrast": "Thanks.", "contrast_use": "target", "contrast_clip": 0.5},
    {"name": "sdpo", "contrast_use": "target", "signal_gate": 1e-6}, {"name": "sdpo", "signal_gate": 1e-6},
    {"name": "sdpo_plain", "signal_gate": 1e-6}, {"name": "sdpo", "contrast_use": "guide", "signal_gate": 1e-6},
    {"name": "sdpo", "contrast_use": "guide", "contrast_scale": 2.0, "contrast_clip": None, "signal_gate": 1e-6},
])
def test_every_option_trains(model_dir, options) -> None:
    learner = make(model_dir, **options)
    before = [p.detach().clone() for p in learner.params]
    _, transitions = interact(learner)
    metrics = learner.observe(transitions)
    assert all(v == v for v in metrics.values())  # no NaN
    assert any(not torch.equal(a, b) for a, b in zip(before, learner.params))


def test_adam_beta2_reaches_the_optimizer(model_dir) -> None:
    assert make(model_dir).optimizer.param_groups[0]["betas"] == (0.9, 0.99)  # the default
    assert make(model_dir, adam_beta2=0.999).optimizer.param_groups[0]["betas"] == (0.9, 0.999)  # torch's
    with pytest.raises(ConfigError, match="adam_beta2"):
        make(model_dir, adam_beta2=1.0)  # at 1 the running mean would never move


@pytest.mark.parametrize("factors", ["AB", "B"])
def test_sgd_steps_by_the_gradient_then_decays_the_weights(model_dir, factors) -> None:
    lr, decay = 0.5, 0.1
    learner = make(model_dir, optimizer="sgd", lr=lr, weight_decay=decay, grad_clip=0.0, decay_factors=factors)
    names = [n for n, w in learner.policy.model.named_parameters() if w.requires_grad]
    grads = []
    learner.optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in learner.params]))
    before = [p.detach().clone() for p in learner.params]
    _, transitions = interact(learner)
    learner.observe(transitions)
    assert len(grads) == 1 and any(g.abs().sum() > 0 for g in grads[0])
    for name, old, grad, new in zip(names, before, grads[0], learner.params):
        kept = 1 - lr * decay if factors == "AB" or ".lora_B." in name else 1.0
        torch.testing.assert_close(new.detach(), (old - lr * grad) * kept, atol=1e-7, rtol=1e-6)


def test_decay_factors_b_shrinks_the_up_factors_only_by_lr_times_weight_decay(model_dir) -> None:
    lr, decay = 5e-3, 4.0
    decayed, plain, both = (make(model_dir, lr=lr, weight_decay=w, decay_factors=f)
                            for w, f in ((decay, "B"), (0.0, "AB"), (decay, "AB")))
    names = [n for n, w in decayed.policy.model.named_parameters() if w.requires_grad]
    up = [".lora_B." in n for n in names]
    assert sum(up) == len(names) // 2
    _, transitions = interact(decayed)
    plain._ids = both._ids = {**decayed._ids}  # the sampled token ids, not a re-tokenisation
    history = []
    for _ in range(2):  # B is 0 before the first step, so the decay shows from the second
        history.append([p.detach().clone() for p in plain.params])
        for learner in (decayed, plain, both):
            learner.observe(transitions)
    for is_up, old, new, same in zip(up, history[1], decayed.params, plain.params):
        expected = same - lr * decay * old if is_up else same  # the decayed learner and the plain one share A
        torch.testing.assert_close(new.detach(), expected.detach(), atol=1e-7, rtol=1e-5)
    assert any(not torch.equal(a, b) for is_up, a, b in zip(up, both.params, plain.params) if not is_up)


def test_unlearn_removes_the_b_factors_component_up_the_gradient_before_the_step(model_dir) -> None:
    lr, clip = 0.5, 100.0  # a clip no gradient reaches: the share removed is 0.5 x grad norm / 100
    learner = make(model_dir, optimizer="sgd", lr=lr, weight_decay=0.0, grad_clip=clip, unlearn=0.5)
    names = [n for n, w in learner.policy.model.named_parameters() if w.requires_grad]
    up = [i for i, n in enumerate(names) if ".lora_B." in n]
    assert len(up) == len(names) // 2 and [learner.params[i] for i in up] == learner.up_factors
    at_step: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []  # (weights, gradients) as the step sees them
    learner.optimizer.register_step_pre_hook(lambda *_: at_step.append(
        ([w.detach().clone() for w in learner.params], [w.grad.clone() for w in learner.params])))
    checked = 0
    for k in range(12):  # a fresh adapter does nothing (B = 0), so nothing is removed before it has learned
        before = [w.detach().clone() for w in learner.params]
        _, transitions = interact(learner, follow_up=("Too long, keep it short.", "More detail please.")[k % 2])
        metrics = learner.observe(transitions)
        weights, grads = at_step[-1]
        share = 0.5 * metrics["sdpo/grad_norm"] / clip
        expected = [w.clone() for w in before]
        removed = unlearn_along_gradient([expected[i] for i in up], [grads[i] for i in up], share)
        assert metrics["sdpo/unlearned"] == pytest.approx(removed, abs=1e-12)
        for w, e, g, new in zip(weights, expected, grads, learner.params):
            torch.testing.assert_close(w, e)  # the weights the optimizer steps from: A untouched, B unlearned
            torch.testing.assert_close(new.detach(), e - lr * g)
        checked += removed > 0
    assert checked >= 2


def first_gradients(model_dir, **options):
    """The LoRA gradients of a fresh learner's first update (before the optimizer step, unclipped), and its metrics."""
    learner = make(model_dir, grad_clip=0.0, **options)
    grads = []
    learner.optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in learner.params]))
    _, transitions = interact(learner)
    metrics = learner.observe(transitions)
    return grads[0], metrics


def test_advantage_threshold_drops_small_advantages_from_the_gradient_only(model_dir) -> None:
    plain, plain_metrics = first_gradients(model_dir)
    assert any(g.abs().sum() > 0 for g in plain)
    above_all, metrics = first_gradients(model_dir, advantage_threshold=1e6)  # no token's |A_t| comes near
    assert not any(g.any() for g in above_all)
    assert metrics["sdpo/advantage_abs_mean"] == plain_metrics["sdpo/advantage_abs_mean"]  # metrics: raw A_t
    below_all, _ = first_gradients(model_dir, advantage_threshold=1e-12)  # every token kept
    for a, b in zip(plain, below_all):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ConfigError, match=r"agent.advantage_threshold: applies to loss=pg only"):
        make(model_dir, advantage_threshold=0.2, loss="topk")


def test_credit_to_go_learns_from_each_tokens_advantage_summed_to_the_end_of_its_answer(model_dir, monkeypatch) -> None:
    plain, plain_metrics = first_gradients(model_dir)
    to_go, metrics = first_gradients(model_dir, credit="to_go")
    assert metrics["sdpo/advantage_abs_mean"] == plain_metrics["sdpo/advantage_abs_mean"]  # metrics: raw A_t
    assert sum((a - b).abs().sum() for a, b in zip(plain, to_go)) > 1e-3 * sum(a.abs().sum() for a in plain)
    token_advantages = sdpo_module.token_advantages  # the reference: the paper's loss on hand-made rewards to go
    monkeypatch.setattr(sdpo_module, "token_advantages", lambda **kw: rewards_to_go(token_advantages(**kw), kw["mask"]))
    by_hand, _ = first_gradients(model_dir)
    for a, b in zip(to_go, by_hand):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    with pytest.raises(ConfigError, match=r"agent.credit: applies to loss=pg only .*; set it to token"):
        make(model_dir, credit="to_go", loss="full")


def test_replay_learns_again_from_the_last_answers_whose_follow_up_carried_a_signal(model_dir) -> None:
    def rows_per_forward(learner, transition):
        sizes = []
        handle = learner.policy.model.get_base_model().register_forward_pre_hook(
            lambda module, args, kwargs: sizes.append(kwargs["input_ids"].shape[0]), with_kwargs=True)
        try:
            learner.observe([transition])
        finally:
            handle.remove()
        return sizes

    learner = make(model_dir, replay=2, replay_gate=1e-9)  # every answer's follow-up moves some token this much
    (_, t1), (_, t2), (_, t3) = (interact(learner, conversations=(x,)) for x in (X, X2, X))
    t1, t2, t3 = t1[0], t2[0], t3[0]
    assert rows_per_forward(learner, t1) == [1, 1]  # teacher and student: the interaction alone
    assert rows_per_forward(learner, t2) == [2, 2]  # and the one before it
    assert rows_per_forward(learner, t3) == [3, 3]
    assert list(learner.replayed) == [t2, t3]  # the last two
    state = copy.deepcopy(learner.state_dict())
    resumed = make(model_dir, replay=2, replay_gate=1e-9)
    resumed.load_state_dict(state)
    assert list(resumed.replayed) == [t2, t3]
    quiet = make(model_dir, replay=2, replay_gate=1e9)  # no follow-up reaches the gate
    assert [rows_per_forward(quiet, t) for t in (t1, t2)] == [[1, 1], [1, 1]] and not quiet.replayed


def test_memory_teaches_with_the_remembered_follow_ups_before_the_current_one(model_dir, monkeypatch) -> None:
    remembering = make(model_dir, memory=2, memory_gate=1e-9)  # every follow-up moves some token this much
    plain = make(model_dir)
    reader = make(model_dir, memory=2, memory_gate=1e9)  # remembers nothing: the paper's update, read by the gate
    read = []  # the advantages each memory gate reads
    signal_rows = sdpo_module.signal_rows
    monkeypatch.setattr(sdpo_module, "signal_rows",
                        lambda a, m, g: read.append(a.detach().clone()) or signal_rows(a, m, g))
    follow_ups = ["Too long.", "No emojis please.", "More detail please."]
    transitions = [interact(remembering, follow_up=f, conversations=(x,))[1][0]
                   for f, x in zip(follow_ups, (X, X2, X))]
    plain._ids = reader._ids = dict(remembering._ids)
    # an empty memory: the paper's update (one teacher forward); then a second forward, with the memory
    assert _forwards(remembering, [transitions[0]]) == 2 and remembering.remembered == collections.deque(["Too long."])
    plain.observe([transitions[0]])
    reader.observe([transitions[0]])
    metrics = remembering.observe([transitions[1]])
    # the reference: the plain learner told both follow-ups, oldest first, in one hindsight block
    plain.observe([dataclasses.replace(transitions[1], follow_up="Too long.\nNo emojis please.")])
    for a, b in zip(remembering.params, plain.params):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    # the signal metrics read the current follow-up alone, as the paper's update does
    assert metrics["sdpo/advantage_abs_mean"] == reader.observe([transitions[1]])["sdpo/advantage_abs_mean"]
    torch.testing.assert_close(read[-2], read[-1], atol=0, rtol=0)  # and so does the gate of what is remembered
    assert metrics["sdpo/remembered"] == 2.0
    assert _forwards(remembering, [transitions[2]]) == 3  # the teacher without the memory, then with it
    assert list(remembering.remembered) == follow_ups[1:]  # the last two
    resumed = make(model_dir, memory=2, memory_gate=1e-9)
    resumed.load_state_dict(copy.deepcopy(remembering.state_dict()))
    assert resumed.remembered == remembering.remembered
    quiet = make(model_dir, memory=2, memory_gate=1e9)  # no follow-up reaches the gate: the paper's update
    assert [_forwards(quiet, [t]) for t in transitions[:2]] == [2, 2] and not quiet.remembered


def test_ema_teacher_with_zero_decay_is_the_live_policy(model_dir) -> None:
    learner = make(model_dir, teacher="ema", ema_decay=0.0, lr=0.05)
    for _ in range(3):
        _, transitions = interact(learner)
        learner.observe(transitions)
    p = learner.policy
    ids = [p.encode(X)]
    comp = [p.encode_completion("Water it daily.")]
    with torch.no_grad():
        live, _, _ = p.completion_logits(ids, comp)
        with learner.ema.active():
            ema, _, _ = p.completion_logits(ids, comp)
        with p.base_model():
            base, _, _ = p.completion_logits(ids, comp)
    # the EMA teacher adds a dense update (x @ (scaling B A)^T) where the live policy applies LoRA's two factors: the
    # same function by another order of float operations, so it is held to a share of how far training moved it
    moved = (live - base).abs().max()
    assert moved > 1e-3 and (ema - live).abs().max() < 1e-4 * moved  # moved ~10, the two paths ~2e-5 apart


@pytest.mark.parametrize("gate", [0.0, 0.3])  # non-finite advantages pass no gate: still counted and warned
def test_non_finite_loss_is_skipped_counted_and_warned(model_dir, monkeypatch, gate) -> None:
    learner = make(model_dir, signal_gate=gate)
    _, transitions = interact(learner)
    before = [p.detach().clone() for p in learner.params]
    monkeypatch.setattr(sdpo_module, "token_advantages", lambda **kw: torch.full_like(kw["mask"], float("nan")))
    with pytest.warns(RuntimeWarning, match=r"SDPO update 0 skipped: non-finite loss \(nan\); 1 skipped so far"):
        metrics = learner.observe(transitions)
    assert metrics["sdpo/skipped_updates"] == 1.0 and learner.n_updates == 0
    assert all(torch.equal(a, b) for a, b in zip(before, learner.params))


def test_empty_follow_up_warns(model_dir) -> None:
    learner = make(model_dir)
    _, transitions = interact(learner, follow_up="  ")
    with pytest.warns(RuntimeWarning, match="empty follow-up"):
        learner.observe(transitions)


@pytest.mark.parametrize("options", [{"teacher": "ema"}, {"extra_samples": 1}, {"replay": 2, "replay_gate": 1e-9},
                                     {"decay_factors": "B"}, {"memory": 1, "memory_gate": 1e-9}])
def test_resume_continues_exactly(model_dir, options) -> None:
    def run(learner, n):
        out = []
        for _ in range(n):
            responses, transitions = interact(learner)
            learner.observe(transitions)
            out.append(responses)
        return out

    straight = make(model_dir, lr=0.02, batch_size=3, **options)
    run(straight, 3)
    state = copy.deepcopy(straight.state_dict())
    expected = run(straight, 3)
    resumed = make(model_dir, lr=0.02, batch_size=3, **options)
    resumed.load_state_dict(state)
    assert run(resumed, 3) == expected
    for a, b in zip(straight.params, resumed.params):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_extra_samples_are_fresh_answers_learned_under_the_same_follow_up(model_dir) -> None:
    resampling, twin = make(model_dir, extra_samples=2), make(model_dir, extra_samples=2)
    _, (seen,) = interact(resampling, conversations=(X,))
    extras = twin.resample([seen])  # the same state and stream: the answers the update will sample
    assert [(t.messages, t.follow_up, t.info) for t in extras] == [(X, seen.follow_up, seen.info)] * 2
    assert extras[0].response != extras[1].response and all(t.response in twin._ids for t in extras)
    assert [t.response for t in twin.resample([seen])] != [t.response for t in extras]  # the stream moves on

    metrics = resampling.observe([seen])  # one update on the seen answer and two fresh ones
    plain = make(model_dir, batch_size=3)
    plain._ids = {**resampling._ids}
    plain_metrics = plain.observe([seen, *extras])
    assert metrics["sdpo/loss"] == plain_metrics["sdpo/loss"] and resampling.n_resamples == 1
    for a, b in zip(resampling.params, plain.params):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_contrast_with_the_follow_up_itself_teaches_nothing(model_dir) -> None:
    # the teacher contrasted with the same hindsight block is the student's own distribution: no advantage, and an
    # SGD step (without weight decay, which would shrink the weights anyway) leaves the weights as they were (AdamW
    # would blow the float noise up to a full step)
    for name in ("sdpo", "sdpo_paper"):
        learner = make(model_dir, name=name, contrast="Too long, keep it short.", contrast_use="target",
                       signal_gate=0, weight_decay=0)
        before = [p.detach().clone() for p in learner.params]
        _, transitions = interact(learner)  # its follow-up is the contrast
        metrics = learner.observe(transitions)
        assert metrics["sdpo/advantage_abs_mean"] < 1e-6 and abs(metrics["sdpo/loss"]) < 1e-6, metrics
        if name == "sdpo":
            assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(before, learner.params))
    # and with a gate, the update is skipped; another follow-up than the contrast does teach
    learner = make(model_dir, name="sdpo", contrast="Too long, keep it short.")
    assert learner.observe(interact(learner)[1])["sdpo/signal_passed"] == 0
    learner = make(model_dir, name="sdpo", contrast_use="target", signal_gate=0)
    assert learner.observe(interact(learner)[1])["sdpo/advantage_abs_mean"] > 1e-4


def test_the_contrast_clip_bounds_what_a_token_learns(model_dir) -> None:
    # each token's advantage under the contrasted teacher is within 2 * clip of zero (its log-ratio to the student
    # is held to [-clip, clip] before the teacher is renormalised): a gate just above that passes no answer
    _, transitions = interact(make(model_dir))

    def passed(gate, **options):
        learner = make(model_dir, name="sdpo", contrast="Thanks.", signal_gate=gate, **options)
        return learner.observe(transitions)["sdpo/signal_passed"]

    assert passed(0.1 + 1e-6, contrast_clip=0.05) == 0
    assert passed(1e-3, contrast_clip=0.05) == 1  # a signal, only a bounded one
    assert passed(0.1 + 1e-6, contrast_clip=None) == 1  # unclipped, both answers move a token further


def test_a_contrast_used_as_a_gate_decides_what_passes_and_the_plain_teacher_teaches(model_dir) -> None:
    _, transitions = interact(make(model_dir))
    runs = {}
    for key, options in {"plain": {"contrast": None}, "gate": {"contrast": "Thanks.", "contrast_use": "gate"},
                         "target": {"contrast": "Thanks.", "contrast_use": "target"}}.items():
        learner = make(model_dir, name="sdpo", signal_gate=1e-6, **options)
        runs[key] = learner.observe(transitions), learner.params
    (plain, plain_params), (gate, gate_params), (target, target_params) = runs["plain"], runs["gate"], runs["target"]
    assert gate["sdpo/signal_passed"] == 1
    for a, b in zip(plain_params, gate_params):  # the step is the plain teacher's
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert any(not torch.equal(a, b) for a, b in zip(plain_params, target_params))
    # what the metrics read is the contrasted teacher
    assert gate["sdpo/advantage_abs_mean"] == target["sdpo/advantage_abs_mean"] != plain["sdpo/advantage_abs_mean"]
    # the follow-up contrasted with itself carries nothing: the gate passes no answer, and nothing is learned
    for use in ("gate", "guide"):
        learner = make(model_dir, name="sdpo", contrast="Too long, keep it short.", contrast_use=use)
        before = [p.detach().clone() for p in learner.params]
        assert learner.observe(transitions)["sdpo/signal_passed"] == 0
        assert all(torch.equal(a, b) for a, b in zip(before, learner.params))


def test_a_guided_contrast_gates_as_the_gate_does_and_teaches_past_the_plain_teacher(model_dir) -> None:
    _, transitions = interact(make(model_dir))
    runs = {}
    for use, scale in (("gate", 0.5), ("guide", 0.5), ("guide", 1.0)):
        learner = make(model_dir, name="sdpo", signal_gate=1e-6, contrast_use=use, contrast_scale=scale)
        before = [p.detach().clone() for p in learner.params]
        metrics = learner.observe(transitions)
        runs[use, scale] = metrics, [p.detach() - b for p, b in zip(learner.params, before)]
    (gate, gate_step), (half, half_step), (whole, whole_step) = runs.values()
    # the same answers pass, read through the same contrasted teacher
    assert gate["sdpo/signal_passed"] == half["sdpo/signal_passed"] == whole["sdpo/signal_passed"] == 1
    assert gate["sdpo/advantage_abs_mean"] == half["sdpo/advantage_abs_mean"] == whole["sdpo/advantage_abs_mean"]
    # the step is not the plain teacher's, and a larger scale moves it further from it

    def distance(a, b):
        return sum(float((x - y).pow(2).sum()) for x, y in zip(a, b)) ** 0.5

    assert 0 < distance(half_step, gate_step) < distance(whole_step, gate_step)


def test_contrast_takes_one_more_teacher_forward_and_one_log_ratio(model_dir, monkeypatch) -> None:
    learner = make(model_dir)
    _, transitions = interact(learner)
    ratios = []
    real = sdpo_module.hindsight_log_ratio
    monkeypatch.setattr(sdpo_module, "hindsight_log_ratio", lambda **kw: ratios.append(1) or real(**kw))
    for name, options in {"sdpo_paper": {"contrast": "Thanks.", "contrast_use": "target"},
                          "sdpo": {"signal_gate": 1e-6},  # the default: the guided teacher, gated by the contrast
                          "sdpo_gate": {"signal_gate": 1e-6}}.items():
        ratios.clear()
        assert _forwards(make(model_dir, name, **options), transitions) == 3, name
        assert len(ratios) == 1, name  # the gate's contrasted teacher and the guided one share one log-ratio
    ratios.clear()
    assert _forwards(make(model_dir, "sdpo_plain", signal_gate=1e-6), transitions) == 2
    assert not ratios


def test_options_are_validated_together(model_dir) -> None:
    policy = ChatPolicy.load(str(model_dir), device="cpu")
    with pytest.raises(ConfigError) as caught:
        make_learner({"name": "sdpo", "lr": -1, "teachr": "base", "loss": "kl"}, policy, seed=0)
    text = str(caught.value)
    assert "command line: agent.lr: got -1.0; must be > 0.0" in text
    assert "command line: agent.teachr: unknown key. Did you mean 'teacher'?" in text
    assert "command line: agent.loss: got 'kl'; allowed: 'pg', 'topk', 'full'." in text
    shrink = r"agent.weight_decay: each step shrinks the LoRA weights by lr x weight_decay = 4, which must be below 1"
    with pytest.raises(ConfigError, match=shrink + r" \(with lr=2, give weight_decay < 0.5\)"):
        make_learner({"name": "sdpo_paper", "optimizer": "sgd", "lr": 2}, policy, seed=0)  # weight_decay 2
    with pytest.raises(ConfigError, match=r"agent\.credit: applies to loss=pg only \(loss=full .* or give loss=pg too"):
        make_learner({"name": "sdpo", "credit": "to_go"}, policy, seed=0)  # the default loss is the exact gradient
    assert make_learner({"name": "sdpo", "credit": "to_go", "loss": "pg"}, policy, seed=0).config.credit == "to_go"
    with pytest.raises(ConfigError, match=r"agent\.contrast: not with memory .* turn the contrast off "
                                          r"\(agent\.contrast=null\)"):
        make_learner({"name": "sdpo", "memory": 2}, policy, seed=0)  # the default contrast
    assert make_learner({"name": "sdpo", "contrast": None, "memory": 2}, policy, seed=0).config.memory == 2
    with pytest.raises(ConfigError, match=r"agent\.contrast: no leading or trailing spaces"):
        make_learner({"name": "sdpo", "contrast": " Thanks."}, policy, seed=0)
    with pytest.raises(ConfigError, match=r"agent\.contrast_use: guide needs signal_gate > 0 .*agent\.contrast=null"):
        make_learner({"name": "sdpo", "signal_gate": 0}, policy, seed=0)
    with pytest.raises(ConfigError, match=r"agent\.contrast_use: guide needs signal_gate > 0"):
        make_learner({"name": "sdpo_paper", "contrast": "Thanks."}, policy, seed=0)  # its signal_gate is 0
    with pytest.raises(ConfigError, match=r"agent\.contrast_use: gate needs signal_gate > 0"):
        make_learner({"name": "sdpo_gate", "signal_gate": 0}, policy, seed=0)
    with pytest.raises(ConfigError, match=r"agent\.contrast_scale"):
        make_learner({"name": "sdpo", "contrast_use": "guide", "contrast_scale": 0}, policy, seed=0)
    assert make_learner({"name": "sdpo", "contrast": None, "signal_gate": 0}, policy, seed=0).config.signal_gate == 0
    with pytest.raises(ConfigError, match=r"agent\.contrast_clip"):
        make_learner({"name": "sdpo", "contrast": "Thanks.", "contrast_clip": 0}, policy, seed=0)
    with pytest.raises(UnknownNameError, match=r"unknown learner 'sdp'\. Did you mean 'sdpo'"):
        make_learner({"name": "sdp"}, policy, seed=0)
    with pytest.raises(SdpoEnvError, match=r"cannot import learner 'nowhere\.mod:Learner': module 'nowhere\.mod'"):
        make_learner({"name": "nowhere.mod:Learner"}, policy, seed=0)


def test_metrics_report_relevance_split(model_dir) -> None:
    learner = make(model_dir, batch_size=2, diagnostics_every=1)
    responses, (t1, t2) = interact(learner)
    t2.info["relevant"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = learner.observe([t1, t2])
    assert {"sdpo/advantage_abs_mean_relevant", "sdpo/advantage_abs_mean_unrelated", "sdpo/kl_to_base",
            "sdpo/entropy", "sdpo/grad_norm", "time/teacher_s"} <= set(metrics)
    assert isinstance(learner, SDPOLearner)


def test_truncated_skip_leaves_cut_answers_out_of_the_update(model_dir) -> None:
    finished = Transition(messages=X2, response="Prices rise over time.", follow_up="Too long.",
                          info={"relevant": True})  # not sampled by the learner: scored with its EOS, never cut
    skipping, training, alone = (make(model_dir, truncated=t, batch_size=2) for t in ("skip", "train", "skip"))
    (response,), (cut,) = interact(skipping, conversations=(X,))
    assert skipping.is_cut(response) and not skipping.is_cut(finished.response)  # 10 tokens, no EOS

    before = [p.detach().clone() for p in skipping.params]
    assert skipping.observe([cut]) == {"sdpo/cut_share": 1.0}
    assert skipping.n_updates == 0 and all(torch.equal(a, b) for a, b in zip(before, skipping.params))

    skipping.buffer.clear()
    metrics = skipping.observe([cut, finished])  # the same update as on the finished answer alone
    alone.observe([finished])
    assert metrics["sdpo/cut_share"] == 0.5 and skipping.n_updates == 1
    for a, b in zip(skipping.params, alone.params):
        torch.testing.assert_close(a, b, atol=0, rtol=0)

    training._ids = dict(skipping._ids)  # the default learns from the cut answer too, and counts it
    metrics = training.observe([cut, finished])
    assert metrics["sdpo/cut_share"] == 0.5 and metrics["sdpo/completion_tokens"] > 5
    assert any(not torch.equal(a, b) for a, b in zip(training.params, alone.params))


def _max_abs_advantage(learner, transition) -> float:
    p = learner.policy
    ids = [learner._completion_ids(transition.response)]
    with torch.no_grad():
        hind, targets, _ = p.completion_logits([p.encode(hindsight_messages(transition.messages,
                                                                              transition.follow_up))], ids)
    plain = student_logprobs(learner, transition.messages, transition.response)
    return (selective_log_softmax(hind, targets)[0] - plain).abs().max().item()


def test_signal_gate_learns_only_from_answers_with_a_large_advantage(model_dir) -> None:
    _, transitions = interact(make(model_dir))  # two answers under one complaint, fed to fresh learners below

    def update(batch, **options):
        learner = make(model_dir, grad_clip=0.0, batch_size=len(batch), **options)
        grads = []
        learner.optimizer.register_step_pre_hook(lambda *_: grads.append([p.grad.clone() for p in learner.params]))
        before = [p.detach().clone() for p in learner.params]
        return learner, before, grads, learner.observe(batch)

    learner, before, grads, metrics = update(transitions, signal_gate=1e6)  # no answer passes
    assert grads == [] and learner.n_updates == 0 and not learner.optimizer.state  # no optimizer step
    assert all(torch.equal(a, b) for a, b in zip(before, learner.params))  # and no weight decay
    assert metrics["sdpo/signal_passed"] == 0.0 and metrics["sdpo/advantage_abs_mean"] > 0  # metrics: raw A_t
    learner, before, grads, _ = update(transitions, signal_gate=1e6, gate_decay=True)
    assert grads == [] and not learner.optimizer.state
    shrink = 1 - learner.config.lr * learner.config.weight_decay  # AdamW's weight decay alone, as a step applies it
    assert all(torch.equal(new, old * shrink) for new, old in zip(learner.params, before))

    # A gate between the two answers' largest |A_t|: the update learns from the one above it, as if alone (token_mean
    # divides by both answers' tokens).
    peaks = [_max_abs_advantage(learner, t) for t in transitions]
    assert abs(peaks[0] - peaks[1]) > 1e-3
    strong = int(peaks[1] > peaks[0])
    _, _, gated, metrics = update(transitions, signal_gate=sum(peaks) / 2)
    assert metrics["sdpo/signal_passed"] == 0.5
    _, _, alone, _ = update([transitions[strong]])
    n_tokens = [len(learner._completion_ids(t.response)) for t in transitions]
    share = n_tokens[strong] / sum(n_tokens)
    close = {"atol": 1e-5, "rtol": 1e-3}  # the batch pads the shorter answer: float noise of order 1e-6
    for g, a in zip(gated[0], alone[0]):
        torch.testing.assert_close(g, a * share, **close)
    _, _, plain, _ = update(transitions)  # without the gate the weaker answer's gradient is there too
    assert not all(torch.allclose(g, q, **close) for g, q in zip(gated[0], plain[0]))
    # the divergence losses (which do not read the advantages) are gated the same way
    for loss in ("topk", "full"):
        _, _, gated, _ = update(transitions, signal_gate=sum(peaks) / 2, loss=loss)
        _, _, alone, _ = update([transitions[strong]], loss=loss)
        for g, a in zip(gated[0], alone[0]):
            torch.testing.assert_close(g, a * share, **close)
        learner, _, grads, _ = update(transitions, signal_gate=1e6, loss=loss)
        assert grads == [] and learner.n_updates == 0


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_decay_gate_decays_only_on_updates_with_a_large_advantage(model_dir, optimizer) -> None:
    _, transitions = interact(make(model_dir))
    peak = max(_max_abs_advantage(make(model_dir), t) for t in transitions)
    options = {"optimizer": optimizer, "lr": 1e-3 if optimizer == "adamw" else 0.5, "weight_decay": 1.0,
               "batch_size": 2}

    def weights(**more):
        learner = make(model_dir, **{**options, **more})
        learner.observe(transitions)
        return [p.detach().clone() for p in learner.params]

    decayed, undecayed = weights(), weights(weight_decay=0.0)
    assert not all(torch.equal(a, b) for a, b in zip(decayed, undecayed))
    below, above = weights(decay_gate=peak * 1.01), weights(decay_gate=peak * 0.99)
    assert all(torch.equal(a, b) for a, b in zip(below, undecayed))  # the gradient step alone
    assert all(torch.equal(a, b) for a, b in zip(above, decayed))  # the step and the decay
    with pytest.raises(ConfigError, match=r"agent.decay_gate: applies to loss=pg only"):
        make(model_dir, decay_gate=0.5, loss="topk")
