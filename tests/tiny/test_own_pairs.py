"""Pairs of the model's own answers and the preference loss a refinement trains on them: the loss is DPO's (checked
against the Bradley-Terry probability), the log-probs it reads are the sampler's, each pair is one question and
phrasing answered once following the complaint and once not, and a refinement with them moves the pairs apart,
keeps its reference across a resume and ends with the weights of one that never stopped."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import sdpo_env.tiny.refine as refine_module
from sdpo_env.hindsight import PAPER_SENTENCE, hindsight_messages
from sdpo_env.tiny import TINY_DIR
from sdpo_env.tiny.build import main as build_main
from sdpo_env.tiny.own import (
    OwnPair,
    chosen_phrasings,
    load_pairs,
    matched_pair,
    mirrored_pairs,
    opposites,
    others_differing,
    own_pairs,
    save_pairs,
    unrelated_preferences,
)
from sdpo_env.tiny.probe import Sampler, preferences, well_formed
from sdpo_env.tiny.refine import PAIRS_FILE, RefineConfig, encode_pairs, refine
from sdpo_env.tiny.train import (
    Refused,
    TrainConfig,
    TrainingStopped,
    answer_logprobs,
    encode,
    preference_loss,
    reference_pairs,
    train,
)

NAMES = ("prose", "bullet_points", "no_emojis", "concise")


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pairs") / "mini"
    build_main(["--mini", "--out", str(folder), "--workers", "1"])
    return folder


def test_preference_loss_is_minus_the_log_bradley_terry_probability_of_the_chosen_answer() -> None:
    torch.manual_seed(0)
    chosen, rejected, chosen_ref, rejected_ref = (torch.randn(6) * 20 for _ in range(4))
    beta = 0.3
    reward_c, reward_r = beta * (chosen - chosen_ref), beta * (rejected - rejected_ref)
    bradley_terry = torch.exp(reward_c) / (torch.exp(reward_c) + torch.exp(reward_r))  # (6,)
    assert torch.allclose(preference_loss(chosen, rejected, chosen_ref, rejected_ref, beta),
                          -torch.log(bradley_terry).mean(), atol=1e-5)
    same = torch.zeros(3)
    assert preference_loss(same, same, same, same, beta).item() == pytest.approx(math.log(2))
    chosen.requires_grad_(True)
    rejected.requires_grad_(True)
    preference_loss(chosen, rejected, chosen_ref, rejected_ref, beta).backward()
    assert chosen.grad is not None and rejected.grad is not None
    assert (chosen.grad < 0).all() and (rejected.grad > 0).all()  # descent raises the chosen, lowers the rejected


def test_answer_logprobs_are_the_samplers_summed_token_logprobs() -> None:
    sampler = Sampler(str(TINY_DIR))
    chats = [[{"role": "user", "content": q}] for q in ("How do I boil an egg?", "Name a goldfish, please.")]
    answers = ["Boil it for nine minutes, then cool it in cold water.", "Call it Bubbles!\n- short\n- cheerful"]
    expected = [float(row.sum()) for row in sampler.token_logprobs(chats, answers)]
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TINY_DIR)
    encoded = encode(tokenizer, [[*c, {"role": "assistant", "content": a}] for c, a in zip(chats, answers)])
    with torch.no_grad():
        got = answer_logprobs(sampler.model, encoded, tokenizer.pad_token_id, torch.device("cpu"))  # type: ignore[arg-type]
    assert got.tolist() == pytest.approx(expected, abs=1e-3)


def test_each_pair_answers_one_question_once_following_the_complaint_and_once_not(mini, tmp_path) -> None:
    sampler = Sampler(str(mini), batch_size=64)
    reports: list[tuple[int, int]] = []
    pairs, stats = own_pairs(sampler, per_phrasing=2, seed=3, max_questions=2, only=NAMES,
                             progress=lambda k, n: reports.append((k, n)))
    prefs = {name: preferences()[name] for name in NAMES}
    assert pairs and reports[-1] == (len(pairs), 2 * sum(len(p.follow_ups) for p in prefs.values()))
    for pair in pairs:
        assert pair.chosen[:-1] == pair.rejected[:-1]  # the same question and phrasing
        assert pair.chosen[-2]["content"].endswith(PAPER_SENTENCE + "]\n" + pair.phrasing)
        assert pair.phrasing in prefs[pair.preference].follow_ups
        good, bad = pair.chosen[-1]["content"], pair.rejected[-1]["content"]
        assert prefs[pair.preference].satisfied_by(good) and not prefs[pair.preference].satisfied_by(bad)
        assert well_formed(good, True) and well_formed(bad, True)
    per_phrasing: dict[str, int] = {}
    for pair in pairs:
        per_phrasing[pair.phrasing] = per_phrasing.get(pair.phrasing, 0) + 1
    assert max(per_phrasing.values()) <= 2
    assert stats.keys() == prefs.keys() and sum(s["pairs"] for s in stats.values()) == len(pairs)
    assert all(s["answers"] <= 4 * 2 * 2 * len(prefs[n].follow_ups) for n, s in stats.items())
    save_pairs(pairs, stats, tmp_path / "pairs.json")
    assert load_pairs(tmp_path / "pairs.json") == (pairs, stats)
    again, _ = own_pairs(Sampler(str(mini), batch_size=64), per_phrasing=2, seed=3, max_questions=2, only=NAMES)
    assert again == pairs  # the seed fixes the questions and the samples
    with pytest.raises(ValueError, match="unknown preference\\(s\\) prosee; one of: "):
        own_pairs(sampler, per_phrasing=1, seed=0, only=["prosee"])


def _margins(model, tokenizer, preferred) -> torch.Tensor:
    """(P,) how far each pair's chosen answer has moved ahead of its rejected one since the reference."""
    with torch.no_grad():
        logp = answer_logprobs(model, [side for c, r, _, _ in preferred for side in (c, r)], tokenizer.pad_token_id,
                               torch.device("cpu"))
    chosen_ref, rejected_ref = (torch.tensor([p[k] for p in preferred]) for k in (2, 3))
    return (logp[0::2] - chosen_ref) - (logp[1::2] - rejected_ref)


def test_training_on_pairs_moves_the_chosen_answers_ahead_of_the_rejected(mini) -> None:
    pairs, _ = own_pairs(Sampler(str(mini), batch_size=64), per_phrasing=1, seed=5, max_questions=4, only=NAMES)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(mini)
    encoded = encode_pairs(tokenizer, [(p.chosen, p.rejected) for p in pairs])
    data = encode(tokenizer, [side for p in pairs for side in (p.chosen, p.rejected)])  # no side taken by itself
    moved = {}
    for weight in (0.0, 1.0):
        model = AutoModelForCausalLM.from_pretrained(mini, dtype=torch.float32)
        preferred = reference_pairs(model, encoded, tokenizer.pad_token_id, torch.device("cpu"))
        assert _margins(model, tokenizer, preferred).abs().max() < 1e-3  # the reference is the model as it starts
        cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup=1, preference_weight=weight, preference_batch=8)
        train(model, data, tokenizer.pad_token_id, cfg, seed=0, device=torch.device("cpu"),
              preference_pairs=preferred, log=lambda line: None)
        moved[weight] = _margins(model, tokenizer, preferred).mean().item()
    assert moved[1.0] > 1.0 and moved[1.0] > moved[0.0] + 1.0, moved


def test_a_refinement_on_pairs_keeps_its_reference_and_pairs_across_a_resume(mini, tmp_path, monkeypatch) -> None:
    calls = []

    def few(sampler, per_phrasing, seed, **kwargs):
        calls.append(per_phrasing)
        return own_pairs(sampler, per_phrasing, seed, max_questions=2, **kwargs)

    monkeypatch.setattr(refine_module, "own_pairs", few)
    cfg = RefineConfig(n_examples=8, focus_share=0.0, pair_per_phrasing=1, pair_preferences=NAMES,
                       train=TrainConfig(steps=3, batch_size=4, lr=1e-3, warmup=1, preference_weight=1.0,
                                         preference_batch=4))
    info = refine(mini, tmp_path / "straight", cfg)
    saved, stats = load_pairs(tmp_path / "straight" / PAIRS_FILE)
    assert calls == [1] and saved and info["refines"][-1]["own_pairs"] == stats
    calls.clear()
    with pytest.raises(TrainingStopped):
        refine(mini, tmp_path / "split", cfg, stop_after_steps=1)
    refine(mini, tmp_path / "split", cfg, resume=True)
    assert calls == [1]  # sampled once, before the stop; the resumed part trains on the saved pairs
    straight, split = (load_file(tmp_path / name / "model.safetensors") for name in ("straight", "split"))
    assert straight.keys() == split.keys() and all(torch.equal(straight[k], split[k]) for k in straight)

    monkeypatch.setattr(refine_module, "own_pairs", lambda *a, **k: ([], {"prose": {"answers": 8, "pairs": 0}}))
    with pytest.raises(Refused, match=r"in 8 answers the model .* gave no question both"):
        refine(mini, tmp_path / "none", cfg)


def test_pair_options_on_the_command_line(refine_cli) -> None:
    cfg = refine_cli.config("--pair-weight", "0.5", "--pair-beta", "0.2", "--pair-per-phrasing", "4",
                            "--pair-preferences", "prose, concise")
    assert (cfg.train.preference_weight, cfg.train.preference_beta, cfg.pair_per_phrasing, cfg.pair_preferences) == (
        0.5, 0.2, 4, ("prose", "concise"))
    default = refine_cli.config()
    assert (default.train.preference_weight, default.pair_per_phrasing, default.pair_preferences) == (0.0, 8, None)
    for bad, message in ((["--pair-weight", "-1"], "--pair-weight must be >= 0, got -1.0"),
                         (["--pair-weight", "1", "--pair-beta", "0"], "--pair-beta must be > 0"),
                         (["--pair-weight", "1", "--pair-per-phrasing", "0"], "--pair-per-phrasing must be >= 1"),
                         (["--pair-weight", "1", "--pair-preferences", "prose,detial"],
                          "--pair-preferences: unknown detial; one of: ")):
        assert message in refine_cli.refused(*bad)


WORDINGS = ("make it shorter pls", "That's a wall of text. Shorter, please.")  # concise's: the mini model gives pairs


def test_pairs_for_chosen_phrasings_only(mini) -> None:
    prefs = preferences()
    assert chosen_phrasings(None, WORDINGS) == [("concise", text) for text in WORDINGS]
    assert chosen_phrasings(["prose", "concise"]) == [(name, text) for name in prefs if name in ("prose", "concise")
                                                        for text in prefs[name].follow_ups]  # in the personas' order
    with pytest.raises(ValueError, match=r"'make it shorter please' is not a follow-up phrasing of any persona "
                                         r"preference\. Did you mean 'make it shorter pls'\?"):
        chosen_phrasings(None, ["make it shorter please"])
    with pytest.raises(ValueError, match=r"not a follow-up phrasing of prose, detailed"):  # concise's
        chosen_phrasings(["prose", "detailed"], WORDINGS[:1])
    reports: list[tuple[int, int]] = []
    pairs, stats = own_pairs(Sampler(str(mini), batch_size=64), per_phrasing=2, seed=3, max_questions=4,
                             phrasings=WORDINGS, progress=lambda done, wanted: reports.append((done, wanted)))
    assert pairs and {pair.phrasing for pair in pairs} <= set(WORDINGS)
    assert stats.keys() == {"concise"} and stats["concise"]["pairs"] == len(pairs) and reports[-1][1] == 4


def _pair(question: str) -> OwnPair:
    conv = hindsight_messages([{"role": "user", "content": question}], WORDINGS[0])
    return OwnPair("concise", WORDINGS[0], [*conv, {"role": "assistant", "content": "It heats water."}],
                   [*conv, {"role": "assistant", "content": "It heats water. " * 40}])


def test_a_refinement_trains_on_saved_pairs_as_well(mini, tmp_path, monkeypatch) -> None:
    earlier = [_pair("How does a kettle work?"), _pair("Why is the sky blue?")]
    save_pairs(earlier, {"concise": {"answers": 8, "pairs": 2, "followed": 0.5}}, tmp_path / "earlier.json")
    calls = []

    def few(sampler, per_phrasing, seed, **kwargs):
        calls.append(kwargs)
        return own_pairs(sampler, per_phrasing, seed, max_questions=4, **kwargs)

    monkeypatch.setattr(refine_module, "own_pairs", few)
    train_cfg = TrainConfig(steps=2, batch_size=4, lr=1e-3, warmup=1, preference_weight=1.0, preference_batch=4)
    cfg = RefineConfig(n_examples=8, focus_share=0.0, seed=3, pair_per_phrasing=2, pair_phrasings=WORDINGS,
                       pairs_from=(str(tmp_path / "earlier.json"),), train=train_cfg)
    refine(mini, tmp_path / "both", cfg)
    (kwargs,) = calls
    assert kwargs["phrasings"] == WORDINGS and (kwargs["matched"], kwargs["answers_per_question"]) == (False, 4)
    saved, stats = load_pairs(tmp_path / "both" / PAIRS_FILE)
    assert len(saved) > len(earlier) and saved[-len(earlier):] == earlier  # sampled first, then the file's
    assert stats.keys() == {"concise"} and stats["concise"]["pairs"] == len(saved) - len(earlier)  # the sampling's

    calls.clear()
    refine(mini, tmp_path / "saved-only", replace(cfg, pair_per_phrasing=0))
    assert calls == [] and load_pairs(tmp_path / "saved-only" / PAIRS_FILE) == (earlier, {})
    refine(mini, tmp_path / "mirrored", replace(cfg, pair_per_phrasing=0, pair_mirror=True))
    mirrored = mirrored_pairs(earlier, seed=3)
    assert [p.preference for p in mirrored] == ["detailed", "detailed"]  # the long answers are the detailed ones
    assert load_pairs(tmp_path / "mirrored" / PAIRS_FILE) == (earlier + mirrored, {})
    info = json.loads((tmp_path / "saved-only" / "build_info.json").read_text(encoding="utf-8"))
    assert info["refines"][-1]["pairs_from"] == [str(tmp_path / "earlier.json")]  # the model says what it saw
    (tmp_path / "answers.json").write_text('{"examples": [{"preference": "prose"}], "stats": {}}', encoding="utf-8")
    for name, message in (("missing.json", "no such file"), ("answers.json", "not a pairs file as refine saves it")):
        with pytest.raises(Refused, match=f"--pairs-from {tmp_path / name}: {message}"):
            refine(mini, tmp_path / "bad", replace(cfg, pairs_from=(str(tmp_path / name),)))

    calls.clear()
    refine(mini, tmp_path / "matched", replace(cfg, pairs_from=(), pair_match=True, pair_answers=6))
    (kwargs,) = calls
    assert (kwargs["matched"], kwargs["answers_per_question"]) == (True, 6)
    stage = json.loads((tmp_path / "matched" / "build_info.json").read_text(encoding="utf-8"))["refines"][-1]
    assert (stage["pair_match"], stage["pair_answers"]) == (True, 6)
    # how far apart its pairs are, recorded: the mean over the saved pairs
    saved, stats = load_pairs(tmp_path / "matched" / PAIRS_FILE)
    judged = unrelated_preferences("concise")
    apart = [others_differing(p.chosen[-1]["content"], p.rejected[-1]["content"], judged) for p in saved]
    assert saved and stage["own_pairs"] == stats and stats["concise"]["others_differing"] == round(
        sum(apart) / len(apart), 2)


def test_pair_phrasings_and_saved_pairs_on_the_command_line(refine_cli, tmp_path) -> None:
    cfg = refine_cli.config("--pair-weight", "0.3", "--pair-phrasing", WORDINGS[0], "--pair-phrasing",
                            WORDINGS[1], "--pairs-from", "a.json", "--pairs-from", "b.json")
    assert (cfg.pair_phrasings, cfg.pairs_from) == (WORDINGS, ("a.json", "b.json"))
    assert refine_cli.config("--pair-weight", "0.3", "--pairs-from", "a.json", "--pair-per-phrasing", "0"
                             ).pair_per_phrasing == 0  # train on the saved pairs only
    default = refine_cli.config()
    assert (default.pair_phrasings, default.pairs_from) == (None, ())
    for bad, message in ((["--pair-weight", "1", "--pair-phrasing", "make it shorter please"],
                          "--pair-phrasing: 'make it shorter please' is not a follow-up phrasing of any persona "
                          "preference. Did you mean 'make it shorter pls'?"),
                         (["--pair-weight", "1", "--pair-preferences", "prose", "--pair-phrasing", WORDINGS[0]],
                          "is not a follow-up phrasing of prose"),
                         (["--pairs-from", "a.json"], "--pairs-from need(s) --pair-weight > 0"),
                         (["--pair-per-phrasing", "2", "--pair-phrasing", WORDINGS[0]],
                          "--pair-per-phrasing, --pair-phrasing need(s) --pair-weight > 0"),
                         (["--pair-weight", "1", "--pair-per-phrasing", "-1", "--pairs-from", "a.json"],
                          "--pair-per-phrasing must be >= 1 (0 with --pairs-from), got -1")):
        assert message in refine_cli.refused(*bad)


def test_pair_mirror_on_the_command_line(refine_cli) -> None:
    wording = "no bullet points please, just write it out"
    cfg = refine_cli.config("--pair-weight", "0.3", "--pair-mirror", "--pair-mirror-phrasing", wording)
    assert (cfg.pair_mirror, cfg.pair_mirror_phrasings) == (True, (wording,))
    assert (refine_cli.config().pair_mirror, refine_cli.config().pair_mirror_phrasings) == (False, ())
    for bad, message in ((["--pair-mirror"], "--pair-mirror need(s) --pair-weight > 0"),
                         (["--pair-weight", "1", "--pair-mirror-phrasing", wording], "needs --pair-mirror"),
                         (["--pair-weight", "1", "--pair-mirror", "--pair-mirror-phrasing", "no outro please"],
                          "'no outro please' is not a follow-up phrasing of concise, casual, beginner, expert, "),
                         (["--pair-weight", "1", "--pair-mirror", "--pair-mirror-phrasing", "no bullets please"],
                          "Did you mean 'bullet points please' or ")):
        assert message in refine_cli.refused(*bad)


def _answered(preference: str, phrasing: str, chosen: str, rejected: str) -> OwnPair:
    conv = hindsight_messages([{"role": "user", "content": "How do I boil an egg?"}], phrasing)
    return OwnPair(preference, phrasing, [*conv, {"role": "assistant", "content": chosen}],
                   [*conv, {"role": "assistant", "content": rejected}])


def test_a_mirrored_pair_swaps_the_answers_under_the_opposite_complaint() -> None:
    opposite = opposites()
    assert opposite["prose"] == ["bullet_points"] and opposite["expert"] == ["beginner"]
    assert opposite["no_questions_back"] == [] and all(name in opposite[o] for name in opposite for o in opposite[name])
    listed = "Boil it like this:\n- Put the egg in water\n- Boil it for nine minutes\n- Cool it in cold water"
    flowing = "Boil the egg in water for nine minutes, then cool it in cold water."
    pairs = [_answered("bullet_points", "bullet points please", listed, flowing),
             _answered("bullet_points", "list form pls", listed, "Boil it like this:\n- Put the egg in water"),
             _answered("no_questions_back", "Please stop asking me questions, just answer.", flowing,
                       flowing + " Do you like them soft?")]
    (mirrored,) = mirrored_pairs(pairs, seed=0)  # one bullet is neither prose nor a list; no opposite for questions
    assert mirrored.preference == "prose" and mirrored.phrasing in preferences()["prose"].follow_ups
    asked = hindsight_messages([{"role": "user", "content": "How do I boil an egg?"}], mirrored.phrasing)
    assert mirrored.chosen == [*asked, pairs[0].rejected[-1]] and mirrored.rejected == [*asked, pairs[0].chosen[-1]]
    assert mirrored_pairs(pairs, seed=0) == [mirrored]  # the seed fixes the wording
    wording = "Turn the bullet points into connected sentences."
    assert {p.phrasing for seed in range(8) for p in mirrored_pairs(pairs, seed, [wording, "list form pls"])} == {
        wording}  # only the given ones of prose's wordings
    broken = replace(pairs[0], phrasing="bullets please")
    with pytest.raises(ValueError, match="does not end with its phrasing 'bullets please'"):
        mirrored_pairs([broken], seed=0)


def test_a_matched_pair_differs_on_the_fewest_other_preferences() -> None:
    prefs = preferences()
    judged = unrelated_preferences("concise")
    assert {p.name for p in judged} == set(prefs) - {"concise", "detailed"}  # detailed bounds word_count too
    assert {p.name for p in unrelated_preferences("prose")} == set(prefs) - {"prose", "bullet_points"}
    short = "Boil the egg for nine minutes, then cool it."
    short_listed = "Boil it:\n- Put the egg in water\n- Boil nine minutes\n- Cool it"
    long_text = " ".join(["Put the egg in a pan of cold water and bring it to the boil."] * 6)
    long_listed = "Here is how:\n" + "\n".join(f"- Step {i}: put the egg in water and wait a while." for i in range(9))
    long_chatty = long_text + " Do you like them soft? 😀"
    # a reference computed another way: the rules read one by one
    assert others_differing(short, long_listed, judged) == sum(
        p.satisfied_by(short) != p.satisfied_by(long_listed) for p in prefs.values()
        if p.name not in ("concise", "detailed"))
    assert others_differing(short, long_listed, judged) > 0 and others_differing(short, short, judged) == 0
    followed, missed = [short, short_listed], [long_listed, long_chatty, long_text]
    assert prefs["concise"].satisfied_by(short) and not any(prefs["concise"].satisfied_by(m) for m in missed)
    best = matched_pair(followed, missed, judged)
    assert best == (short, long_text)  # both prose, plain, no emoji, no question: length and tone differ
    assert others_differing(*best, judged) == 1 == min(others_differing(a, b, judged) for a in followed
                                                       for b in missed)
    assert matched_pair([short_listed], missed, judged) == (short_listed, long_listed)
    assert matched_pair(followed, [long_chatty], judged) == (short, long_chatty)  # the one there is
    assert matched_pair([short, short], [long_text, long_text], judged) == (short, long_text)
    with pytest.raises(ValueError, match="an answer on each side; got 2 followed, 0 missed"):
        matched_pair(followed, [], judged)


def test_matched_pairs_differ_on_fewer_other_preferences_than_the_first_answers() -> None:
    def sampled(matched: bool):  # the shipped model: its answers vary in every style, as pairs need
        return own_pairs(Sampler(str(TINY_DIR), batch_size=64), per_phrasing=3, seed=3, answers_per_question=8,
                         max_questions=2, only=["concise"], phrasings=WORDINGS, matched=matched)

    first, first_stats = sampled(False)
    matched, matched_stats = sampled(True)
    assert [(p.preference, p.phrasing, p.chosen[:-1]) for p in matched] == [
        (p.preference, p.phrasing, p.chosen[:-1]) for p in first]  # the same questions and samples, paired otherwise
    differ = {}
    for name, pairs in (("first", first), ("matched", matched)):
        differ[name] = [others_differing(p.chosen[-1]["content"], p.rejected[-1]["content"],
                                         unrelated_preferences(p.preference)) for p in pairs]
    assert all(m <= f for m, f in zip(differ["matched"], differ["first"]))
    assert sum(differ["matched"]) < sum(differ["first"])
    for stats, counts, pairs in ((first_stats, differ["first"], first), (matched_stats, differ["matched"], matched)):
        for name, entry in stats.items():
            mine = [n for n, p in zip(counts, pairs) if p.preference == name]
            assert entry["others_differing"] == round(sum(mine) / max(len(mine), 1), 2)
    prefs = preferences()
    assert all(prefs[p.preference].satisfied_by(p.chosen[-1]["content"])
               and not prefs[p.preference].satisfied_by(p.rejected[-1]["content"]) for p in matched)


def test_pair_match_on_the_command_line(refine_cli) -> None:
    cfg = refine_cli.config("--pair-weight", "0.3", "--pair-match", "--pair-answers", "16")
    assert (cfg.pair_match, cfg.pair_answers) == (True, 16)
    assert (refine_cli.config().pair_match, refine_cli.config().pair_answers) == (False, 4)
    for bad, message in ((["--pair-match"], "--pair-match need(s) --pair-weight > 0"),
                         (["--pair-answers", "8"], "--pair-answers need(s) --pair-weight > 0"),
                         (["--pair-weight", "1", "--pair-answers", "1"], "--pair-answers must be >= 2")):
        assert message in refine_cli.refused(*bad)
