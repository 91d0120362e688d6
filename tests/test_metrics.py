"""Each style metric on hand-written responses."""

from __future__ import annotations

import pytest

from sdpo_env.errors import UnknownNameError
from sdpo_env.metrics import METRICS, get_metric

CASES = [
    # (metric, text, expected)
    ("word_count", "Water it twice a week.", 5),
    ("word_count", "It's a well-known trick: don't over-water!", 6),
    ("word_count", "😀 🎉", 0),
    ("sentence_count", "One. Two! Three? Four", 4),
    ("sentence_count", "- first item\n- second item\nDone.", 3),
    ("sentence_count", "", 0),
    ("emoji_count", "Nice 😀🎉 and ✨ plus 👍🏽", 4),
    ("emoji_count", "No emojis here: just text (and :) ).", 0),
    ("emoji_count", "Flag 🇫🇷", 1),
    ("bullet_count", "Steps:\n- one\n* two\n• three\n1. four\n2) five", 5),
    ("bullet_count", "A - B is not a list. -not a bullet", 0),
    ("header_count", "# Title\nText\n## Part\n#hashtag", 2),
    ("bold_count", "This is **very** important and __also__ this.", 2),
    ("markdown_count", "# Plan\n- **Buy** milk\n- eggs", 4),
    ("exclamation_count", "Wow! Really!! ok", 3),
    ("question_count", "Does that help? It should. Want more?", 2),
    ("question_count", "No questions here.", 0),
    ("first_person_count", "I think my plan works for me. Myself, I'm sure.", 5),
    ("first_person_count", "You should water it in the morning.", 0),
    ("opening_praise", "Great question! Basil needs sun.", 1),
    ("opening_praise", "What a great question. Basil needs sun.", 1),
    ("opening_praise", "Basil needs sun. Great question though.", 0),
    ("closing_filler", "Basil needs sun. Hope this helps!", 1),
    ("closing_filler", "Basil needs sun. Let me know if you need more.", 1),
    ("closing_filler", "Hope this helps!", 0),
    ("closing_filler", "Basil needs sun and water.", 0),
    ("preamble", "Sure! Basil needs sun.", 1),
    ("preamble", "Certainly. Basil needs sun.", 1),
    ("preamble", "Let me explain how basil grows.", 1),
    ("preamble", "Basil needs six hours of sun.", 0),
    ("preamble", "Surely nobody waters daily.", 0),
    ("alternatives_count", "Use a pot. Alternatively, use a bed. You could also try hydroponics.", 2),
    ("alternatives_count", "Use a pot with drainage.", 0),
]


@pytest.mark.parametrize(("name", "text", "expected"), CASES)
def test_metric_values(name: str, text: str, expected: float) -> None:
    assert get_metric(name)(text) == expected


def test_formality_sign() -> None:
    casual = "Hey, you're gonna love this, it's super easy stuff!"
    professional = "Therefore, it is recommended to ensure adequate light. Additionally, water regularly."
    assert METRICS["formality"](casual) == -1.0
    assert METRICS["formality"](professional) == 1.0
    assert METRICS["formality"]("Water the plant weekly.") == 0.0
    mixed = "Hey, however, it is recommended to water it."  # 2 professional vs 1 casual marker
    assert METRICS["formality"](mixed) == pytest.approx(1 / 3)


def test_technicality_sign() -> None:
    beginner = "In simple terms, think of it like a bank for energy. Imagine a battery."
    expert = "Specifically, the mechanism trades latency for throughput; the trade-off depends on the threshold."
    assert METRICS["technicality"](beginner) == -1.0
    assert METRICS["technicality"](expert) == 1.0
    assert METRICS["technicality"]("Water the plant weekly.") == 0.0


def test_unknown_metric_suggests_close_name() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown metric 'word_cont'\. Did you mean 'word_count'"):
        get_metric("word_cont")


def test_every_metric_accepts_any_unicode() -> None:
    for fn in METRICS.values():
        for text in ["", "你好世界", "😀" * 50, "\x00\n\t", "a" * 10_000]:
            assert isinstance(fn(text), float)
