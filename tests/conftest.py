"""Shared fixtures: writing YAML and JSONL files users would write."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a model hub; a missing path must fail fast

import json
import signal
from pathlib import Path
from typing import Any

import pytest
import yaml

VALID_PERSONA: dict[str, Any] = {
    "name": "tester",
    "profile": "The user wants short answers without emojis.",
    "preferences": [
        {"name": "concise", "description": "Short answers.", "rule": {"metric": "word_count", "max": 50},
         "follow_ups": ["Too long, keep it short."]},
        {"name": "no_emojis", "description": "No emojis.", "rule": [{"metric": "emoji_count", "max": 0}],
         "follow_ups": ["Please drop the emojis."]},
    ],
    "satisfied": {"replies": ["Thanks."], "new_question_rate": 0.2},
    "unrelated_rate": 0.1,
}


@pytest.fixture
def write_yaml(tmp_path: Path):
    """Writes data (or raw text) to a YAML file under tmp_path and returns its path."""

    def write(data: Any, name: str = "file.yaml") -> Path:
        path = tmp_path / name
        if isinstance(data, bytes):
            path.write_bytes(data)
        elif isinstance(data, str):
            path.write_text(data, encoding="utf-8")
        else:
            path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write


@pytest.fixture
def write_jsonl(tmp_path: Path):
    """Writes records (dicts, or raw strings as lines) to a JSONL file and returns its path."""

    def write(records: list[Any], name: str = "prompts.jsonl") -> Path:
        path = tmp_path / name
        lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return path

    return write


@pytest.fixture(autouse=True)
def _default_ctrl_c():
    """Every test starts with Python's own Ctrl-C handler, and the handler it found is put back afterwards.

    The Ctrl-C tests send this process a real SIGINT. A shell starts background jobs (``cmd &``) with SIGINT ignored
    and Python keeps it ignored, so without this those tests fail whenever the suite runs in the background.
    """
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, before)
