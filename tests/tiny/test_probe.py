"""The shipped tiny models against the embedded default's acceptance figures (a fixed seed, small samples).

The default policy (``tiny-v3``) and ``tiny-v2`` meet them (the last test); the first shipped model, ``tiny`` (the
default until December 2026), meets all but two complaints, and the other tests keep its figures. Sample sizes are cut
to run in about two minutes on two CPU cores, so thresholds leave room for sampling noise; ``python -m
sdpo_env.tiny.probe --model tiny`` with the default sizes gives the figures quoted in the README.
"""

from __future__ import annotations

import pytest

from sdpo_env.tiny import DEFAULT_MODEL
from sdpo_env.tiny.probe import preferences, probe

pytestmark = pytest.mark.slow

# Preferences whose hindsight complaints `tiny` follows: >= 0.93 at 32 samples each on this test's
# CPU run (prose 0.78, bullet points 0.78, no closing filler 0.84, detailed and no questions back 0.88, no first
# person 0.91 are left out).
WORKING_COMPLAINTS = ("answer_first", "plain_text", "concise", "casual", "beginner", "expert", "professional",
                      "no_opening_praise", "emojis", "no_emojis", "no_exclamation_marks", "single_answer")


@pytest.fixture(scope="module")
def figures() -> dict:
    return probe("tiny", n=160, n_per_complaint=32, n_per_persona=8, n_triples=200, n_per_phrasing=1, seed=0,
                 batch_size=80)


def test_room_to_personalize(figures: dict) -> None:
    assert 0.25 <= figures["room_min"] and figures["room_max"] <= 0.75, figures["room"]


def test_fluency(figures: dict) -> None:
    assert figures["fluency"] >= 0.95


def test_unrelated_follow_ups_keep_the_base_style(figures: dict) -> None:
    # 0.07 at the probe's default sizes (0.13 here); 160 samples add about +-0.05 of noise per preference.
    assert figures["unrelated_max_shift"] <= 0.16, figures["unrelated_shift"]


@pytest.mark.parametrize("name", WORKING_COMPLAINTS)
def test_hindsight_complaints_are_followed(figures: dict, name: str) -> None:
    assert figures["hindsight"][name] >= 0.75, figures["hindsight"]


def test_relevant_follow_ups_carry_more_signal_than_unrelated(figures: dict) -> None:
    # on the interaction prompts, where SDPO computes its advantages: 5.8x here, 6.7x at the probe's default sizes
    signal = figures["signal"]
    assert signal["n_triples"] >= 200
    assert signal["ratio"] >= 4.5 and signal["relevant_negative"] >= 0.90, signal
    # on held-out prompts (unseen by the corpus) an unrelated follow-up moves the tokens more: 2.4x
    held_out = figures["signal_held_out"]
    assert held_out["n_triples"] >= 200
    assert 1.5 <= held_out["ratio"] < signal["ratio"] and held_out["abs_unrelated"] > 2 * signal["abs_unrelated"]


def test_each_phrasing_of_each_preference_is_measured(figures: dict) -> None:
    prefs = preferences()
    assert figures["phrasings"].keys() == prefs.keys()
    for name, shares in figures["phrasings"].items():
        assert list(shares) == list(prefs[name].follow_ups)
        assert set(shares.values()) <= {0.0, 1.0}  # one sample per phrasing
    followed = [share for shares in figures["phrasings"].values() for share in shares.values()]
    assert 0.75 <= sum(followed) / len(followed) < 1.0  # most phrasings are followed, not all


def test_in_context_oracle(figures: dict) -> None:
    assert figures["oracle_mean"] >= 0.80, figures["oracle"]  # 0.95 at 16 samples per persona


@pytest.mark.xfail(reason="tiny, no longer the default, misses the acceptance (the default tiny-v3 and tiny-v2 "
                          "meet it, below): 'bullet points' (0.75) and 'detailed' (0.81) complaints are followed "
                          "below 0.90 (full probe; 128 samples each: bullet points, prose, plain text and no closing "
                          "filler)", strict=False)
def test_full_acceptance(figures: dict) -> None:
    assert figures["hindsight_min"] >= 0.90
    assert figures["signal"]["ratio"] >= 5.0 and figures["signal"]["relevant_negative"] >= 0.90
    assert figures["oracle_mean"] >= 0.85


# 512 answers per complaint on two draws (docs/tiny-model.md): each complaint followed in 0.92 or more by tiny-v2 (the
# sixteenth round), 0.90 or more by tiny-v3 (the eighteenth). Here 32 each, a share within about +-0.10: the least
# followed 0.88 for both (tiny: 0.78); the shift 0.13 at n=160; the signal 29x for tiny-v3
@pytest.mark.parametrize("model", [DEFAULT_MODEL, "tiny-v2"])
def test_the_default_and_tiny_v2_meet_the_acceptance_figures_with_margins(model: str) -> None:
    figures = probe(model, n=160, n_per_complaint=32, n_per_persona=8, n_triples=200, seed=0, batch_size=80)
    assert figures["hindsight"].keys() == preferences().keys()
    assert min(figures["hindsight"].values()) >= 0.80, figures["hindsight"]
    assert 0.25 <= figures["room_min"] and figures["room_max"] <= 0.75, figures["room"]
    assert figures["unrelated_max_shift"] <= 0.16, figures["unrelated_shift"]
    signal = figures["signal"]
    assert signal["ratio"] >= 5.0 and signal["relevant_negative"] >= 0.90, signal
    assert figures["oracle_mean"] >= 0.85 and figures["fluency"] >= 0.95
