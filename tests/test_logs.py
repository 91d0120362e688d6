"""The logged-conversation loader: formats, truncation, drops and counts, bad lines, streaming, the shipped sample."""

from __future__ import annotations

import gzip
import json
import re
import types

import pytest

from sdpo_env.logs import LogFileError, LogStats, read_logs, scan
from sdpo_env.logs_sample import LOGS_DIR

CHAT = [("user", "How do I water basil?"), ("assistant", "Hey! 🌿 Water it daily!"),
        ("user", "Please stop using emojis."), ("assistant", "Water it when the soil is dry."),
        ("user", "Thanks.")]


def openai(turns=CHAT, **extra):
    return {"messages": [{"role": r, "content": c} for r, c in turns], **extra}


def sharegpt(turns=CHAT):
    names = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": names[r], "value": c} for r, c in turns]}


def wildchat(turns=CHAT):
    return {"conversation_hash": "abc", "model": "gpt-3.5-turbo", "turn": 2, "language": "English",
            "conversation": [{"role": r, "content": c, "timestamp": None, "toxic": False} for r, c in turns]}


@pytest.mark.parametrize("record", [openai(), sharegpt(), wildchat()], ids=["openai", "sharegpt", "wildchat"])
def test_each_format_gives_the_same_tuples(write_jsonl, record) -> None:
    stats = LogStats()
    tuples = list(read_logs(write_jsonl([record], "logs.jsonl"), stats=stats))
    assert [(t.response, t.follow_up) for t in tuples] == [
        ("Hey! 🌿 Water it daily!", "Please stop using emojis."), ("Water it when the soil is dry.", "Thanks.")]
    assert tuples[0].messages == ({"role": "user", "content": "How do I water basil?"},)
    assert tuples[1].messages[-1] == {"role": "user", "content": "Please stop using emojis."}
    assert (stats.conversations, stats.tuples, stats.skipped) == (1, 2, 0)
    assert sum(stats.formats.values()) == 1


def test_an_explicit_format_rejects_the_others(write_jsonl) -> None:
    path = write_jsonl([openai()], "logs.jsonl")
    with pytest.raises(LogFileError, match='line 1: "conversations": expected a list of turns, got NoneType'):
        list(read_logs(path, fmt="sharegpt"))


def test_openai_content_parts_are_joined(write_jsonl) -> None:
    record = {"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi "}, {"type": "text",
                                                                                           "text": "there"}]},
                           {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "shorter"}]}
    (t,) = read_logs(write_jsonl([record], "logs.jsonl"))
    assert t.messages[0]["content"] == "Hi there"


def test_history_keeps_the_last_five_messages_and_the_system_prompt(write_jsonl) -> None:
    turns = [("system", "Be brief.")]
    for i in range(6):
        turns += [("user", f"q{i}"), ("assistant", f"a{i}")]
    turns.append(("user", "last"))
    tuples = list(read_logs(write_jsonl([openai(turns)], "logs.jsonl")))
    assert len(tuples) == 6
    last = tuples[-1]
    assert last.response == "a5" and last.follow_up == "last"
    assert [m["content"] for m in last.messages] == ["Be brief.", "q3", "a3", "q4", "a4", "q5"]
    assert [m["content"] for m in tuples[0].messages] == ["Be brief.", "q0"]
    three = list(read_logs(write_jsonl([openai(turns)], "logs3.jsonl"), history=3))
    assert [m["content"] for m in three[-1].messages] == ["Be brief.", "q4", "a4", "q5"]


def test_conversations_without_a_follow_up_are_dropped_and_counted(write_jsonl) -> None:
    records = [openai(CHAT[:2]), openai(CHAT), openai([]), openai([("user", "hi"), ("assistant", " "),
                                                                  ("user", "?")])]
    stats = scan(write_jsonl(records, "logs.jsonl"))
    assert (stats.conversations, stats.tuples) == (4, 2)
    assert dict(stats.dropped) == {"no follow-up": 1, "empty conversation": 1, "empty response or follow-up": 1}
    assert stats.summary() == ("4 conversations -> 2 interaction tuples; dropped conversations: 1 empty "
                               "conversation, 1 empty response or follow-up, 1 no follow-up; bad lines skipped: 0")


BAD = ["{not json", json.dumps([1, 2]), json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
       json.dumps({"text": "no conversation key"}), json.dumps({"conversations": [{"from": "alien", "value": "x"}]}),
       json.dumps({"messages": [{"role": "user", "content": 3}]})]


def test_a_bad_line_is_an_error_naming_file_and_line(write_jsonl) -> None:
    path = write_jsonl([openai(), BAD[2], openai()], "logs.jsonl")
    with pytest.raises(LogFileError) as caught:
        list(read_logs(path))
    assert str(caught.value) == (
        f"1 problem(s) in a logged-conversation file:\n  - {path}: line 2: messages[0].role: got 'bot'; allowed: "
        "system, user, assistant; pass on_bad_line=skip to skip and count bad lines")


@pytest.mark.parametrize("line", BAD)
def test_every_kind_of_bad_line_is_reported(write_jsonl, line) -> None:
    with pytest.raises(LogFileError, match="line 1: "):
        scan(write_jsonl([line], "logs.jsonl"))


def test_skip_mode_counts_bad_lines_and_keeps_the_good_ones(write_jsonl) -> None:
    path = write_jsonl([openai(), *BAD, "", wildchat()], "logs.jsonl")
    stats = scan(path, on_bad_line="skip")
    assert (stats.conversations, stats.tuples, stats.skipped) == (2, 4, len(BAD))
    assert stats.first_skipped[0].startswith("line 2: not valid JSON")
    assert len(stats.first_skipped) == 5


def test_reading_streams_line_by_line(write_jsonl) -> None:
    path = write_jsonl([openai(), "{broken"], "logs.jsonl")
    stream = read_logs(path)
    assert isinstance(stream, types.GeneratorType)
    first = next(stream)  # the bad second line is not read yet
    assert first.line == 1
    with pytest.raises(LogFileError, match="line 2"):
        list(stream)


def test_gzip_and_missing_files(tmp_path) -> None:
    path = tmp_path / "logs.jsonl.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write(json.dumps(openai()) + "\n")
    assert scan(path).tuples == 2
    with pytest.raises(LogFileError, match=re.escape("nope.jsonl: (file): cannot open")):
        scan(tmp_path / "nope.jsonl")


def test_the_shipped_sample_in_three_formats() -> None:
    stats = scan(LOGS_DIR / "sample.jsonl")
    assert stats.conversations == 240 and stats.tuples > 300 and stats.skipped == 0
    assert stats.dropped["no follow-up"] > 0
    small = {name: list(read_logs(LOGS_DIR / f"sample_{name}.jsonl")) for name in ("sharegpt", "wildchat")}
    openai_rows = list(read_logs(LOGS_DIR / "sample.jsonl"))[: len(small["sharegpt"])]
    assert [(t.response, t.follow_up) for t in small["sharegpt"]] == [(t.response, t.follow_up) for t in openai_rows]
    assert [(t.response, t.follow_up) for t in small["wildchat"]] == [(t.response, t.follow_up) for t in openai_rows]
    complaints = {"Please stop using emojis.", "no emojis pls", "get rid of the emojis"}
    assert any(t.follow_up in complaints for t in read_logs(LOGS_DIR / "sample.jsonl"))


def test_the_sample_is_reproducible(tmp_path) -> None:
    from sdpo_env.logs_sample import write

    write(tmp_path, n=240, seed=0)
    for name in ("sample.jsonl", "sample_sharegpt.jsonl", "sample_wildchat.jsonl"):
        assert (tmp_path / name).read_bytes() == (LOGS_DIR / name).read_bytes(), name
