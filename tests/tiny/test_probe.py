"""The shipped tiny model against the embedded default's acceptance figures (a fixed seed, small samples).

Sample sizes are cut to run in about two minutes on two CPU cores, so thresholds leave room for sampling noise;
``python -m sdpo_env.tiny.probe`` with the default sizes gives the figures quoted in the README.
"""

from __future__ import annotations

import pytest

from sdpo_env.tiny.probe import probe

pytestmark = pytest.mark.slow

# Preferences whose hindsight complaints the shipped checkpoint follows (>= 0.88 at 64 samples each).
WORKING_COMPLAINTS = ("answer_first", "no_opening_praise", "casual", "professional", "beginner", "expert", "emojis",
                      "no_exclamation_marks")


@pytest.fixture(scope="module")
def figures() -> dict:
    return probe(n=160, n_per_complaint=16, n_per_persona=8, n_triples=200, seed=0, batch_size=80)


def test_room_to_personalize(figures: dict) -> None:
    assert 0.25 <= figures["room_min"] and figures["room_max"] <= 0.75, figures["room"]


def test_fluency(figures: dict) -> None:
    assert figures["fluency"] >= 0.95


def test_unrelated_follow_ups_keep_the_base_style(figures: dict) -> None:
    # 0.05 at 512 samples; 160 samples add about +-0.05 of noise per preference.
    assert figures["unrelated_max_shift"] <= 0.16, figures["unrelated_shift"]


@pytest.mark.parametrize("name", WORKING_COMPLAINTS)
def test_hindsight_complaints_are_followed(figures: dict, name: str) -> None:
    assert figures["hindsight"][name] >= 0.75, figures["hindsight"]


def test_relevant_follow_ups_carry_more_signal_than_unrelated(figures: dict) -> None:
    signal = figures["signal"]
    assert signal["n_triples"] >= 200
    assert signal["ratio"] >= 1.5 and signal["relevant_negative"] >= 0.8, signal


@pytest.mark.xfail(reason="issue 3 acceptance not yet met: length, list, emoji removal, closing filler, first "
                          "person, questions-back and alternatives complaints are followed only 50-75% of the time; "
                          "signal ratio ~2 (target 5); oracle ~0.8 (target 0.85)", strict=False)
def test_full_acceptance(figures: dict) -> None:
    assert figures["hindsight_min"] >= 0.90
    assert figures["signal"]["ratio"] >= 5.0 and figures["signal"]["relevant_negative"] >= 0.90
    assert figures["oracle_mean"] >= 0.85
