"""The model's own answers to complaints as refinement examples: only answers that follow their complaint are kept,
as many per phrasing as asked, and a refinement trains on them and resumes on the same ones."""

from __future__ import annotations

import json

import pytest

import sdpo_env.tiny.refine as refine_module
from sdpo_env.hindsight import PAPER_SENTENCE
from sdpo_env.tiny.build import main as build_main
from sdpo_env.tiny.own import load_examples, own_examples, own_pairs, save_examples
from sdpo_env.tiny.probe import Sampler, preferences, well_formed
from sdpo_env.tiny.refine import OWN_FILE, RefineConfig, refine, refine_examples
from sdpo_env.tiny.train import Refused, TrainConfig, TrainingStopped


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    folder = tmp_path_factory.mktemp("own") / "mini"
    build_main(["--mini", "--out", str(folder), "--workers", "1"])
    return folder


def test_only_answers_that_follow_their_complaint_are_kept(mini, tmp_path) -> None:
    sampler = Sampler(str(mini), batch_size=64)
    reports: list[tuple[int, int]] = []
    names = ("prose", "bullet_points", "no_emojis", "detailed", "concise")
    examples, stats = own_examples(sampler, per_phrasing=2, seed=3, max_tries=2, only=names,
                                   progress=lambda k, n: reports.append((k, n)))
    prefs = {name: preferences()[name] for name in names}
    phrasings = sum(len(p.follow_ups) for p in prefs.values())
    assert examples and reports and reports[-1] == (len(examples), 2 * phrasings)
    for e in examples:
        *_, user, answer = e.messages
        assert user["content"].endswith(PAPER_SENTENCE + "]\n" + e.phrasing)
        assert e.phrasing in prefs[e.preference].follow_ups
        assert prefs[e.preference].satisfied_by(answer["content"]) and well_formed(answer["content"], True)
    kept = {}
    for e in examples:
        kept[e.phrasing] = kept.get(e.phrasing, 0) + 1
    assert max(kept.values()) <= 2
    assert sum(s["kept"] for s in stats.values()) == len(examples) and stats.keys() == prefs.keys()
    assert all(s["kept"] <= s["tries"] <= 2 * 2 * len(prefs[n].follow_ups) for n, s in stats.items())
    with pytest.raises(ValueError, match="unknown preference\\(s\\) prosee; one of: "):
        own_examples(sampler, per_phrasing=1, seed=0, only=["prosee"])
    # the mini model follows some complaints and not others, so the filter has something to do
    assert any(s["followed"] == 0 for s in stats.values()) and any(s["followed"] > 0.5 for s in stats.values())
    save_examples(examples, stats, tmp_path / "own.json")
    assert load_examples(tmp_path / "own.json") == (examples, stats)
    again, _ = own_examples(Sampler(str(mini), batch_size=64), per_phrasing=2, seed=3, max_tries=2, only=names)
    assert again == examples  # the seed fixes the questions and the samples


def test_a_refinement_trains_on_its_own_answers_and_resumes_on_the_same(mini, tmp_path, monkeypatch,
                                                                       refine_draws) -> None:
    calls = []

    def few(sampler, per_phrasing, seed, **kwargs):
        calls.append(per_phrasing)
        return own_examples(sampler, per_phrasing, seed, max_tries=1, **kwargs)

    monkeypatch.setattr(refine_module, "own_examples", few)
    cfg = RefineConfig(n_examples=16, focus_share=0.0, own_share=1.0, own_per_phrasing=1,
                       own_preferences=("prose", "no_emojis", "concise", "answer_first"),
                       train=TrainConfig(steps=2, batch_size=4))
    info = refine(mini, tmp_path / "r", cfg)
    saved, stats = load_examples(tmp_path / "r" / OWN_FILE)
    [drawn] = refine_draws
    assert calls == [1] and len(drawn) == 16 and all(c in [e.messages for e in saved] for c in drawn)
    assert info["refines"][-1]["own_answers"] == stats and info["refines"][-1]["own_share"] == 1.0

    calls.clear()
    with pytest.raises(TrainingStopped):
        refine(mini, tmp_path / "split", cfg, stop_after_steps=1)
    refine(mini, tmp_path / "split", cfg, resume=True)
    assert calls == [1]  # sampled once, before the stop; the resumed part trains on the saved answers
    assert json.loads((tmp_path / "split" / "build_info.json").read_text())["refines"][-1]["own_answers"] == stats

    monkeypatch.setattr(refine_module, "own_examples", lambda *a, **k: ([], {"prose": {"tries": 5, "kept": 0}}))
    with pytest.raises(Refused, match="followed none of the complaints in 5 tries"):
        refine(mini, tmp_path / "none", cfg)


def test_own_options_on_the_command_line(refine_cli) -> None:
    given = [refine_cli.config("--own-share", "0.3", "--own-per-phrasing", "4"),
             refine_cli.config("--own-share", "0.3", "--own-preferences", "prose, detailed")]
    assert [(c.own_share, c.own_per_phrasing, c.own_preferences) for c in given] == [
        (0.3, 4, None), (0.3, 16, ("prose", "detailed"))]
    for bad, message in ((["--own-share", "0.8"], "--own-share 0.8"),
                         (["--own-share", "0.1", "--own-per-phrasing", "0"], "--own-per-phrasing must be >= 1"),
                         (["--own-share", "0.1", "--own-preferences", "prose,detial"],
                          "--own-preferences: unknown detial; one of: ")):
        assert message in refine_cli.refused(*bad)
    with pytest.raises(ValueError, match="needs the model's own answers"):
        refine_examples(5, seed=0, focus_share=0.0, own_share=0.5)
    # at share 0 the draws are those without the option, so earlier refinements reproduce
    assert refine_examples(50, seed=2, focus_share=0.3, own=[[{"role": "user", "content": "x"}]]) == \
        refine_examples(50, seed=2, focus_share=0.3)


class _FollowsByPhrasing:
    """A stand-in sampler: answers a complaint phrased as ``always`` with prose, one phrased as ``never`` with a list,
    and any other phrasing with prose and a list in turn (half its answers follow a ``prose`` complaint)."""

    def __init__(self, always: str | None = None, never: str | None = None) -> None:
        self.always, self.never, self.turn = always, never, 0

    def generate(self, convs):
        prose, listed = "This answer is one plain paragraph of prose.", "Two points:\n- one point here\n- another one"
        out = []
        for conv in convs:
            complaint = conv[-1]["content"]
            self.turn += 1
            if self.always and complaint.endswith(self.always):
                follows = True
            elif self.never and complaint.endswith(self.never):
                follows = False
            else:
                follows = self.turn % 2 == 0
            out.append((prose if follows else listed, True))
        return out


def test_the_followed_share_counts_each_phrasing_once() -> None:
    prose = preferences()["prose"]
    first, n = prose.follow_ups[0], len(prose.follow_ups)
    # pairs: the phrasing always followed gives none and is sampled longest (8 x 2 questions of 4 answers), each other
    # phrasing gives its pairs in three questions; pooled over answers the share would be (64 + 11 x 6) / (64 + 11 x 12)
    _, stats = own_pairs(_FollowsByPhrasing(always=first), per_phrasing=2, seed=0, only=["prose"])  # type: ignore[arg-type]
    assert stats["prose"]["answers"] == 4 * (16 + 3 * (n - 1)) and stats["prose"]["pairs"] == 2 * (n - 1)
    assert stats["prose"]["followed"] == round((1 + 0.5 * (n - 1)) / n, 4)
    # kept answers: the phrasing never followed is tried longest (8 x 2 tries), each other in a few
    _, stats = own_examples(_FollowsByPhrasing(never=first), per_phrasing=2, seed=0, only=["prose"])  # type: ignore[arg-type]
    assert stats["prose"]["kept"] == 2 * (n - 1) and stats["prose"]["tries"] < 16 * n
    assert stats["prose"]["followed"] == round(0.5 * (n - 1) / n, 4)
