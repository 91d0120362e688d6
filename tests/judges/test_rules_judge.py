"""The rule judge and the win-rate statistics."""

from __future__ import annotations

import numpy as np
import pytest

from sdpo_env.judges import Comparison, Judgement, RuleJudge, is_valid
from sdpo_env.judges.evaluate import policy_outcome, wilson_interval, win_rate_stats
from sdpo_env.personas import load_persona

PERSONA = load_persona("concise_casual_beginner")
GOOD = "Hey, think of it like a sponge: just water it when the soil's dry, super easy stuff."
PRO = "Therefore, it is recommended to water the plant when the soil is dry. Additionally, ensure drainage."
JARGON = "Specifically, the mechanism is osmotic: therefore, it is recommended to calibrate the substrate moisture."


def test_more_satisfied_preferences_win_and_equal_ties() -> None:
    judge = RuleJudge()
    x = [{"role": "user", "content": "How do I water basil?"}]
    verdicts = judge.judge([Comparison(PERSONA, x, GOOD, PRO), Comparison(PERSONA, x, PRO, GOOD),
                            Comparison(PERSONA, x, GOOD, GOOD), Comparison(PERSONA, x, PRO, JARGON)])
    assert [v.verdict for v in verdicts] == ["A", "B", "tie", "tie"]  # PRO and JARGON: only concise holds (1 of 3)


def test_invalid_answers_lose_to_valid_ones() -> None:
    judge = RuleJudge(min_words=5)
    x = [{"role": "user", "content": "Hi"}]
    fragment = "Hey, super!"  # satisfies concise and casual, but is no answer
    assert judge.judge([Comparison(PERSONA, x, fragment, PRO)])[0].verdict == "B"
    assert not is_valid("the the the the the the the the the the the the")
    assert not is_valid("")
    assert is_valid(GOOD)


def test_ceiling_counts_base_answers_that_already_satisfy_everything() -> None:
    judge = RuleJudge()
    assert judge.ceiling(PERSONA, [GOOD, PRO, JARGON, GOOD]) == pytest.approx((0.5 + 1 + 1 + 0.5) / 4)


def test_judgement_rejects_unknown_verdicts() -> None:
    with pytest.raises(ValueError, match="verdict must be one of"):
        Judgement("C")


def test_policy_outcome_maps_positions() -> None:
    assert policy_outcome("A", True) == "win" and policy_outcome("A", False) == "loss"
    assert policy_outcome("B", False) == "win" and policy_outcome("tie", True) == "tie"
    assert policy_outcome("missing", False) == "missing"


def test_win_rate_stats_by_hand() -> None:
    outcomes = [
        [("win", "win")],        # 1.0
        [("win", "tie")],        # 0.75
        [("tie", "tie")],        # 0.5
        [("loss", "missing")],   # 0.0 (the missing order is dropped, never a tie)
        [("missing", "missing")],  # no judgement: excluded
    ]
    stats = win_rate_stats(outcomes, bootstrap=2000, seed=0)
    assert stats["win_rate"] == pytest.approx((1 + 0.75 + 0.5 + 0) / 4)
    assert stats["win_rate_excl_ties"] == pytest.approx(3 / 4)  # 3 wins, 1 loss
    assert stats["coverage"] == pytest.approx(4 / 7)  # 4 decisive of 7 non-missing
    assert stats["missing_rate"] == pytest.approx(3 / 10)
    assert stats["position_consistency"] == pytest.approx(2 / 3)  # agreeing pairs among complete ones
    assert stats["n_prompts"] == 4
    assert stats["ci_low"] <= stats["win_rate"] <= stats["ci_high"]


def test_bootstrap_ci_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(1)
    hits = 0
    for trial in range(200):
        scores = rng.choice(["win", "loss"], size=64, p=[0.7, 0.3])
        stats = win_rate_stats([[(s, s)] for s in scores], bootstrap=500, seed=trial)
        hits += stats["ci_low"] <= 0.7 <= stats["ci_high"]
    assert 0.88 <= hits / 200 <= 0.99


def test_wilson_interval_against_textbook_values_and_the_score_test() -> None:
    assert wilson_interval(0.0, 10) == pytest.approx((0.0, 0.27754), abs=1e-5)
    assert wilson_interval(0.5, 10) == pytest.approx((0.23659, 0.76341), abs=1e-5)
    # each end is a p the score test only just accepts: (share - p)^2 = z^2 p (1 - p) / n
    for share, n in ((57 / 64, 64), (0.3, 17), (1.0, 64), (0.02, 200)):
        low, high = wilson_interval(share, n)
        assert low <= share <= high
        for end in (low, high):
            if 0 < end < 1:
                assert (share - end) ** 2 == pytest.approx(1.96**2 * end * (1 - end) / n, rel=1e-9)
    assert wilson_interval(1.0, 64)[0] == pytest.approx(0.9434, abs=1e-4)  # not empty at the boundary
    assert all(np.isnan(wilson_interval(0.5, 0)))


def test_wilson_interval_covers_the_truth_about_95_percent_of_the_time() -> None:
    rng = np.random.default_rng(2)
    shares = rng.binomial(64, 0.9, size=4000) / 64
    hits = [low <= 0.9 <= high for low, high in (wilson_interval(s, 64) for s in shares)]
    assert 0.92 <= np.mean(hits) <= 0.98
