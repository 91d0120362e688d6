"""Logged conversations -> interaction tuples (x, y, o), streamed from JSONL.

Three line formats are read (``format=auto`` tells them apart line by line):

- OpenAI messages: ``{"messages": [{"role": "user", "content": "..."}, ...]}`` (content may also be a list of
  ``{"type": "text", "text": ...}`` parts);
- ShareGPT: ``{"conversations": [{"from": "human" | "gpt" | "system", "value": "..."}, ...]}``;
- WildChat / WildFeedback: ``{"conversation": [{"role": ..., "content": ...}, ...], ...}`` (extra fields, on the
  record and on each turn, are ignored).

Every assistant turn that is answered by a later user turn gives one interaction: x = the conversation up to and
including the prompt it answers, truncated to the last ``history`` user/assistant messages (a leading system
message is kept), y = the assistant's turn, o = the user's next message. Conversations without any follow-up are
dropped and counted. Files are read line by line (``.gz`` too), so a million-line file never sits in memory.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from sdpo_env.errors import Problem, ValidationError

FORMATS = ("auto", "openai", "sharegpt", "wildchat")
ON_BAD_LINE = ("error", "skip")
_KEYS = {"openai": "messages", "sharegpt": "conversations", "wildchat": "conversation"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "system": "system"}
_ROLES = ("system", "user", "assistant")


class LogFileError(ValidationError):
    """A logged-conversation file cannot be read or has a malformed line."""

    what = "a logged-conversation file"


@dataclass(frozen=True)
class Interaction:
    """One interaction tuple from a log.

    Attributes:
        messages: x, the conversation the response answered (ends with a user turn).
        response: y, the logged assistant turn.
        follow_up: o, the user's next message.
        line: Line number in the file (1-based).
        turn: Index of the response among the conversation's messages.
    """

    messages: tuple[dict[str, str], ...]
    response: str
    follow_up: str
    line: int = 0
    turn: int = 0


@dataclass
class LogStats:
    """What a pass over a file found: ``dropped`` counts conversations by reason, ``skipped`` bad lines."""

    lines: int = 0
    conversations: int = 0
    tuples: int = 0
    dropped: Counter = field(default_factory=Counter)
    skipped: int = 0
    formats: Counter = field(default_factory=Counter)
    first_skipped: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the console."""
        dropped = ", ".join(f"{n} {why}" for why, n in sorted(self.dropped.items())) or "none"
        text = (f"{self.conversations} conversations -> {self.tuples} interaction tuples; "
                f"dropped conversations: {dropped}; bad lines skipped: {self.skipped}")
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"lines": self.lines, "conversations": self.conversations, "tuples": self.tuples,
                "dropped": dict(self.dropped), "skipped_bad_lines": self.skipped, "formats": dict(self.formats)}


class _BadLine(Exception):
    pass


def _text(content: Any, where: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts: keep the text ones
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if all(isinstance(p, str) for p in parts):
            return "".join(parts)
    if content is None:
        return ""
    raise _BadLine(f"{where}: expected text content (a string or a list of text parts), got "
                   f"{type(content).__name__}")


def parse_conversation(record: Any, fmt: str = "auto") -> tuple[str, list[dict[str, str]]]:
    """The conversation of one JSON record as ``{role, content}`` messages.

    Args:
        record: One parsed JSONL line.
        fmt: One of ``FORMATS``.

    Returns:
        ``(format, messages)`` with roles ``system``, ``user`` or ``assistant``.

    Raises:
        ValueError: the record does not match the format (the message says what was expected).
    """
    try:
        return _parse(record, fmt)
    except _BadLine as exc:
        raise ValueError(str(exc)) from None


def _parse(record: Any, fmt: str) -> tuple[str, list[dict[str, str]]]:
    if not isinstance(record, dict):
        raise _BadLine(f"expected a JSON object, got {type(record).__name__}")
    if fmt == "auto":
        found = [f for f, key in _KEYS.items() if key in record]
        if len(found) != 1:
            what = "none" if not found else " and ".join(repr(_KEYS[f]) for f in found)
            raise _BadLine(f'expected exactly one of "messages" (OpenAI), "conversations" (ShareGPT) or '
                           f'"conversation" (WildChat); found {what}')
        fmt = found[0]
    key = _KEYS[fmt]
    turns = record.get(key)
    if not isinstance(turns, list):
        raise _BadLine(f'"{key}": expected a list of turns, got {type(turns).__name__}')
    messages = []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        if not isinstance(turn, dict):
            raise _BadLine(f"{where}: expected an object, got {type(turn).__name__}")
        if fmt == "sharegpt":
            role = _SHAREGPT_ROLES.get(str(turn.get("from", "")).lower())
            if role is None:
                raise _BadLine(f"{where}.from: got {turn.get('from')!r}; allowed: human, gpt, system")
            content = _text(turn.get("value"), f"{where}.value")
        else:
            role = turn.get("role")
            if role not in _ROLES:
                raise _BadLine(f"{where}.role: got {role!r}; allowed: system, user, assistant")
            content = _text(turn.get("content"), f"{where}.content")
        messages.append({"role": str(role), "content": content})
    return fmt, messages


def interactions(messages: list[dict[str, str]], *, history: int = 5) -> Iterator[tuple[int, list[dict[str, str]]]]:
    """``(index of y, x)`` for every assistant turn between a user prompt and a user follow-up.

    Args:
        messages: A conversation.
        history: Keep the last ``history`` user/assistant messages of x (a leading system message is kept too).
    """
    system = [messages[0]] if messages and messages[0]["role"] == "system" else []
    for i in range(1, len(messages) - 1):
        if (messages[i]["role"] == "assistant" and messages[i - 1]["role"] == "user"
                and messages[i + 1]["role"] == "user"):
            turns = [m for m in messages[len(system) : i] if m["role"] != "system"]
            yield i, [dict(m) for m in system + turns[-history:]]


def _open(path: Path) -> IO[str]:
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8")
    return path.open(encoding="utf-8")


def read_logs(path: str | Path, *, fmt: str = "auto", history: int = 5, on_bad_line: str = "error",
              stats: LogStats | None = None) -> Iterator[Interaction]:
    """Streams the interaction tuples of a JSONL log, one line at a time.

    Args:
        path: A ``.jsonl`` (or ``.jsonl.gz``) file, one conversation per line; blank lines are ignored.
        fmt: One of ``FORMATS``; ``auto`` detects each line's format by its key.
        history: Messages of history kept in x (the paper keeps 5).
        on_bad_line: ``error`` raises at the first malformed line, naming file and line; ``skip`` counts it in
            ``stats.skipped`` and goes on.
        stats: Filled in as the file is read (counts of conversations, tuples, drops and skipped lines).

    Yields:
        One :class:`Interaction` per assistant turn followed by a user turn.

    Raises:
        LogFileError: the file cannot be read, or a line is malformed and ``on_bad_line=error``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if on_bad_line not in ON_BAD_LINE:
        raise ValueError(f"on_bad_line must be one of {ON_BAD_LINE}, got {on_bad_line!r}")
    stats = stats if stats is not None else LogStats()
    source = str(path)
    try:
        handle = _open(Path(path))
    except OSError as exc:
        raise LogFileError([Problem(source, "(file)", f"cannot open: {exc.strerror or exc}")]) from None
    with handle:
        number = 0
        while True:
            try:
                line = handle.readline()
            except (UnicodeDecodeError, OSError, EOFError) as exc:
                raise LogFileError([Problem(source, f"line {number + 1}", f"cannot read as UTF-8 text: {exc}")]
                                   ) from None
            if not line:
                break
            number += 1
            if not line.strip():
                continue
            stats.lines += 1
            try:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise _BadLine(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
                found, messages = _parse(record, fmt)
            except _BadLine as exc:
                if on_bad_line == "error":
                    hint = "; pass on_bad_line=skip to skip and count bad lines"
                    raise LogFileError([Problem(source, f"line {number}", f"{exc}{hint}")]) from None
                stats.skipped += 1
                if len(stats.first_skipped) < 5:
                    stats.first_skipped.append(f"line {number}: {exc}")
                continue
            stats.conversations += 1
            stats.formats[found] += 1
            yield from _tuples(messages, number, history, stats)


def _tuples(messages: list[dict[str, str]], number: int, history: int, stats: LogStats) -> Iterator[Interaction]:
    if not messages:
        stats.dropped["empty conversation"] += 1
        return
    kept = 0
    empty = 0
    for i, context in interactions(messages, history=history):
        response, follow_up = messages[i]["content"], messages[i + 1]["content"]
        if not response.strip() or not follow_up.strip():
            empty += 1
            continue
        kept += 1
        stats.tuples += 1
        yield Interaction(messages=tuple(context), response=response, follow_up=follow_up, line=number, turn=i)
    if not kept:
        stats.dropped["empty response or follow-up" if empty else "no follow-up"] += 1


def scan(path: str | Path, *, fmt: str = "auto", history: int = 5, on_bad_line: str = "error") -> LogStats:
    """Reads the whole file once (streaming) and returns its counts; raises on a bad line like :func:`read_logs`."""
    stats = LogStats()
    for _ in read_logs(path, fmt=fmt, history=history, on_bad_line=on_bad_line, stats=stats):
        pass
    return stats
