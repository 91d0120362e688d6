"""The probe's verdicts and table, on figures written by hand (no model)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest

from sdpo_env.hindsight import DEFAULT_TEMPLATE
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny import probe as probe_module
from sdpo_env.tiny.corpus import personas
from sdpo_env.tiny.probe import (
    _continued,
    _phrasing_shares,
    phrasing_reading,
    preferences,
    shift_noise_floor,
    table,
    verdicts,
)


def shipped_like() -> dict:
    """Figures shaped like ``probe``'s, with the shipped model's headline values (README)."""
    figures = {
        "room": {"concise": 0.46, "detailed": 0.67}, "hindsight": {"concise": 125 / 128, "bullet_points": 0.75},
        "hindsight_followed": {"concise": 125, "bullet_points": 96}, "n_per_complaint": 128,
        "unrelated_shift": {"concise": 0.07, "detailed": -0.03}, "oracle": {"no_emojis": 0.96},
        "signal": {"n_triples": 200, "abs_relevant": 0.101, "abs_unrelated": 0.041, "ratio": 0.101 / 0.041,
                   "relevant_negative": 0.97, "unrelated_negative": 0.76},
        "signal_held_out": {"n_triples": 200, "abs_relevant": 0.3, "abs_unrelated": 0.01, "ratio": 30.0,
                            "relevant_negative": 0.5, "unrelated_negative": 0.4},
        "room_min": 0.46, "room_max": 0.67, "unrelated_max_shift": 0.07, "hindsight_min": 0.75,
        "oracle_mean": 0.96, "fluency": 0.996, "n_samples": 1408, "prompts": "eval", "n": 256,
    }
    figures["pass"] = verdicts(figures)
    return figures


def test_each_signal_figure_has_its_own_verdict() -> None:
    figures = shipped_like()
    assert figures["pass"] == {"room": True, "hindsight": False, "unrelated": True, "signal_ratio": False,
                               "signal_negative": True, "oracle": True, "fluency": True}
    lines = {line.split("  ")[0].strip(): line for line in table(figures).splitlines()}
    assert lines["signal: mean |A| relevant / unrelated"].endswith("[MISS]")
    assert "ratio 2.5 >= 5" in lines["signal: mean |A| relevant / unrelated"]
    assert lines["signal: summed A < 0, relevant (unrelated)"].endswith("(0.76)  [ok]")
    # the held-out signal is reported, never judged: its ratio of 30 and its 0.5 negative share change no verdict
    held_out = lines["signal on held-out prompts: |A| rel / unrel"]
    assert "0.300/0.010  ratio 30.0, summed A < 0 0.50 (0.40)" in held_out and held_out.endswith("(reported)")
    assert lines["hindsight compliance (worst preference)"].endswith("[MISS]")


def test_the_table_counts_the_answers_that_follow_each_complaint() -> None:
    def lines(figures: dict) -> dict[str, str]:
        return {" ".join(line.split()[:2]).strip(): line for line in table(figures).splitlines()}

    figures = shipped_like()
    figures["hindsight_followed"]["concise"] = 115  # 0.898, which two decimals print as 0.90
    figures["hindsight"]["concise"] = figures["hindsight_min"] = 115 / 128
    assert lines(figures)["hindsight concise"].split()[2:] == ["0.90", ">=", "0.90", "115/128", "[MISS]"]
    assert lines(figures)["hindsight bullet_points"].endswith("96/128 [MISS]")
    assert lines(figures)["hindsight: complaints"].split()[-4:] == ["0", "of", "2", "(reported)"]
    figures["hindsight_followed"]["concise"] = 116
    figures["hindsight"]["concise"] = 116 / 128  # 0.906
    assert lines(figures)["hindsight concise"].endswith("  116/128")
    assert lines(figures)["hindsight: complaints"].split()[-4:] == ["1", "of", "2", "(reported)"]


def test_the_noise_floor_of_the_unrelated_shift_matches_the_normal_approximation() -> None:
    # 18 independent shares at 0.5: each difference of two shares of n answers is about N(0, sqrt(0.5 / n)), and
    # the median of the largest of 18 |N(0, s)| is z s with P(|Z| < z) = 0.5 ** (1 / 18), z = 2.076
    room = {f"p{i}": 0.5 for i in range(18)}
    assert shift_noise_floor(room, 256) == pytest.approx(2.076 * np.sqrt(0.5 / 256), abs=0.006)  # 0.092
    assert shift_noise_floor(room, 1024) == pytest.approx(2.076 * np.sqrt(0.5 / 1024), abs=0.003)  # 0.046
    # a share of 0 or 1 never moves by chance: one share at 0.5 among them sets the floor alone (0.6745 s)
    assert shift_noise_floor({"a": 0.5, "b": 0.0, "c": 1.0}, 256) == pytest.approx(0.6745 * np.sqrt(0.5 / 256),
                                                                                  abs=0.004)


def test_the_largest_shift_is_printed_with_its_noise() -> None:
    figures = shipped_like()
    line = next(line for line in table(figures).splitlines() if line.startswith("unrelated follow-up"))
    # concise: 0.46 -> 0.53 of 256 answers each, s.e. sqrt((0.46 * 0.54 + 0.53 * 0.47) / 256) = 0.044
    assert line.endswith(f"[ok]  (concise, s.e. 0.04; no shift at all gives about "
                         f"{shift_noise_floor(figures['room'], 256):.2f} at n=256)")
    figures["unrelated_shift"] = {"concise": 0.02, "detailed": -0.09}
    assert "(detailed, s.e. 0.04;" in next(line for line in table(figures).splitlines()
                                           if line.startswith("unrelated follow-up"))
    # the s.e. takes both shares: 0.02 -> 0.50 of 256 answers gives sqrt((0.02 * 0.98 + 0.5 * 0.5) / 256) = 0.032,
    # where the base share alone would give 0.012 and the shifted one alone 0.044
    figures["room"], figures["unrelated_shift"] = {"emojis": 0.02}, {"emojis": 0.48}
    noise = f"(emojis, s.e. 0.03; no shift at all gives about {shift_noise_floor(figures['room'], 256):.2f} at n=256)"
    assert next(line for line in table(figures).splitlines() if line.startswith("unrelated follow-up")).endswith(noise)


def test_room_outside_the_band_misses() -> None:
    figures = shipped_like()
    figures["room_max"] = 0.85
    assert not verdicts(figures)["room"]
    figures["room_max"], figures["room_min"] = 0.80, 0.20  # the band's ends are inside it
    assert verdicts(figures)["room"]


def test_the_table_lists_the_phrasings_followed_too_rarely_weakest_first() -> None:
    figures = shipped_like()
    assert not any(line.startswith("  phrasing") for line in table(figures).splitlines())  # not measured
    figures["room"].update(prose=0.52, bullet_points=0.48)
    figures["phrasings"] = {"bullet_points": {"list form pls": 0.62, "bullet points please": 0.9},
                            "prose": {"no lists, paragraphs please": 1.0, "no bullet points please": 0.5}}
    figures["n_per_phrasing"] = 16
    listed = [line.split() for line in table(figures).splitlines() if line.startswith("  phrasing")]
    assert [(words[1], words[2]) for words in listed] == [("prose", "0.50"), ("bullet_points", "0.62")]
    # each next to its preference's share without hindsight, and how it compares with that (16 answers: s.e. 0.13)
    assert listed[0][3:] == ["(none", "0.52:", "ignored", ")", "'no", "bullet", "points", "please'"]
    assert listed[1][3:6] == ["(none", "0.48:", "ignored"]


def test_a_phrasing_is_read_against_the_share_without_hindsight() -> None:
    # 128 answers per phrasing and 256 without hindsight at a base share of 0.52: two standard errors are 0.108
    assert phrasing_reading(0.54, 0.52, 128, 256) == "ignored"
    assert phrasing_reading(0.62, 0.52, 128, 256) == "ignored"
    assert phrasing_reading(0.63, 0.52, 128, 256) == "partly"
    assert phrasing_reading(0.84, 0.52, 128, 256) == "partly"
    assert phrasing_reading(0.42, 0.52, 128, 256) == "ignored"
    assert phrasing_reading(0.40, 0.52, 128, 256) == "reversed"
    assert phrasing_reading(0.29, 0.52, 128, 256) == "reversed"
    # fewer answers, wider band: 0.29 of 16 is within the noise of 0.52
    assert phrasing_reading(0.29, 0.52, 16, 256) == "ignored"
    # 7 of 8 is within the noise of 0.55 and of the target alike: too few answers to tell
    assert phrasing_reading(7 / 8, 0.55, 8, 64) == "unclear"
    assert phrasing_reading(7 / 8, 0.55, 64, 64) == "partly"
    assert phrasing_reading(0.9, 0.55, 8, 64) == phrasing_reading(0.95, 0.99, 8, 64) == "followed"


class FollowsOnePhrasing:
    """Stands in for the sampler: answers briefly only when the hindsight block carries ``phrasing``."""

    def __init__(self, phrasing: str):
        self.phrasing = phrasing

    def generate(self, conversations):
        return [("Short and to the point." if self.phrasing in c[-1]["content"] else "word " * 80, True)
                for c in conversations]


def test_each_phrasings_share_counts_the_answers_to_that_phrasing() -> None:
    concise = preferences()["concise"]  # at most 50 words
    followed = concise.follow_ups[3]
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(2 * len(concise.follow_ups))]
    shares = _phrasing_shares(FollowsOnePhrasing(followed), concise, convs)  # type: ignore[arg-type]
    assert shares == {f: float(f == followed) for f in concise.follow_ups}


class Recorder:
    """Stands in for the sampler in ``probe``: long answers, zero log-probs; keeps every question it was asked."""

    questions: ClassVar[list[str]] = []

    def __init__(self, *args):
        Recorder.questions = []

    def generate(self, conversations):
        users = [next(m["content"] for m in c if m["role"] == "user") for c in conversations]
        block = DEFAULT_TEMPLATE.partition("{follow_up}")[0]
        Recorder.questions += [text.partition(block)[0] for text in users]  # the question alone
        return [("word " * 80, True) for _ in conversations]

    def token_logprobs(self, conversations, answers):
        return [np.zeros(3) for _ in conversations]


@pytest.mark.parametrize("pool", ["eval", "train"])
def test_the_probe_measures_on_the_prompt_pool_it_is_given(monkeypatch: pytest.MonkeyPatch, pool: str) -> None:
    monkeypatch.setattr(probe_module, "Sampler", Recorder)
    n = 4
    figures = probe_module.probe(n=n, n_per_complaint=1, n_per_persona=1, n_triples=2, n_per_phrasing=1,
                                 prompt_pool=pool)
    texts = {p.messages[0]["content"] for p in load_prompts(pool)}
    asked = Recorder.questions[:-n]  # the last n: the interaction conversations continued by a second turn
    interaction = asked[-n_phrasings() - n:-n_phrasings()]  # drawn before the phrasings
    assert Recorder.questions[-n:] == interaction
    assert set(interaction) <= {p.messages[0]["content"] for p in load_prompts("train")}
    others = asked[: -n_phrasings() - n] + asked[-n_phrasings():]
    assert len(others) > 20 and set(others) <= texts
    label = "signal on held-out prompts" if pool == "eval" else "signal, second draw"
    assert any(line.startswith(label) for line in probe_module.table(figures).splitlines())
    assert figures["signal_history"]["n_triples"] == 2
    assert any(line.startswith("signal on a second turn") for line in probe_module.table(figures).splitlines())


def n_phrasings() -> int:
    return sum(len(p.follow_ups) for p in preferences().values())


def test_a_second_turn_complains_about_a_preference_the_answer_breaks() -> None:
    convs = [[{"role": "user", "content": f"question {i}"}] for i in range(40)]
    answers = ["Hey!! 😊 " + "word " * 150 for _ in convs]  # long, casual, with emojis: breaks several preferences
    continued = _continued(convs, answers, np.random.default_rng(0))
    complaints_about_it = {f for pref in preferences().values() if not pref.satisfied_by(answers[0])
                           for f in pref.follow_ups}
    # a persona whose every preference the answer meets complains about any of them
    complaints_about_it |= {f for persona in personas() if all(p.satisfied_by(answers[0]) for p in persona.preferences)
                            for p in persona.preferences for f in p.follow_ups}
    for conv, answer, out in zip(convs, answers, continued, strict=True):
        assert out[:2] == [*conv, {"role": "assistant", "content": answer}] and out[2]["role"] == "user"
        assert out[2]["content"] in complaints_about_it
    assert len({out[2]["content"] for out in continued}) > 10
