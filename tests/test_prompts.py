"""Prompt pools: the shipped ones, and users' JSONL files."""

from __future__ import annotations

import pytest

from sdpo_env.errors import PromptFileError, UnknownNameError
from sdpo_env.prompts import load_prompts, read_prompts


def test_shipped_pools_are_large_and_disjoint() -> None:
    train, held_out = load_prompts("train"), load_prompts("eval")
    assert len(train) >= 300 and len(held_out) >= 64
    assert not {p.text for p in train} & {p.text for p in held_out}
    assert len({p.text for p in train}) == len(train)
    assert {p.category for p in held_out} == {p.category for p in train}


def test_both_formats(write_jsonl) -> None:
    path = write_jsonl([
        {"prompt": "How do I boil an egg? 🥚", "topic": "eggs"},
        "# a comment line",
        "",
        {"messages": [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "Tell me a joke"}]},
    ])
    prompts = read_prompts(path)
    assert [p.text for p in prompts] == ["How do I boil an egg? 🥚", "Tell me a joke"]
    assert prompts[0].topic == "eggs" and len(prompts[1].messages) == 4


def test_bad_lines_are_listed_by_number(write_jsonl) -> None:
    path = write_jsonl([
        {"prompt": "fine"},
        "{not json",
        {"prompt": ""},
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]},
        {"text": "wrong field"},
        ["a", "list"],
        {"prompt": "x", "messages": []},
        {"messages": [{"role": "robot", "content": "hi"}]},
    ])
    with pytest.raises(PromptFileError) as caught:
        read_prompts(path)
    text = str(caught.value)
    assert text.startswith("7 problem(s) in a prompt file:")
    assert f"{path}: line 2: not valid JSON" in text
    assert f"{path}: line 3: prompt: expected a non-empty string" in text
    assert f"{path}: line 4: messages: the conversation must end with a user turn" in text
    assert f"{path}: line 5: unknown field(s) ['text']" in text
    assert f"{path}: line 6: expected a JSON object, got list" in text
    assert f'{path}: line 7: expected exactly one of "prompt"' in text
    assert f"{path}: line 8: messages[0]: expected {{'role': one of ('system', 'user', 'assistant')" in text


def test_empty_file_and_unknown_pool(write_jsonl) -> None:
    with pytest.raises(PromptFileError, match="no prompts found"):
        read_prompts(write_jsonl(["", "# only a comment"]))
    with pytest.raises(UnknownNameError, match=r"unknown prompt pool 'evl'\. Did you mean 'eval'"):
        load_prompts("evl")
