"""Prompt pools: the requests a simulated user sends, and the held-out requests the judge evaluates on.

The package ships a training pool and a disjoint held-out pool (``sdpo_env/data/prompts/{train,eval}.jsonl``).
Users bring their own as JSONL, one request per line, either ``{"prompt": "..."}`` or
``{"messages": [{"role": "user", "content": "..."}, ...]}`` (a conversation ending with a user turn); the optional
``category`` and ``topic`` fields are kept.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

from sdpo_env.errors import Problem, PromptFileError, UnknownNameError
from sdpo_env.files import DATA_DIR

BUILTIN = {"train": DATA_DIR / "prompts" / "train.jsonl", "eval": DATA_DIR / "prompts" / "eval.jsonl"}
ROLES = ("system", "user", "assistant")
MAX_PROBLEMS = 20  # a broken 10,000-line file should not print 10,000 lines


@dataclass(frozen=True)
class Prompt:
    """One request: a conversation ending with a user turn."""

    messages: tuple[dict[str, str], ...]
    category: str = ""
    topic: str = ""

    @property
    def text(self) -> str:
        """The last user message."""
        return self.messages[-1]["content"]


def _parse_line(line: str, where: str, problems: list[Problem], source: str) -> Prompt | None:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        problems.append(Problem(source, where, f"not valid JSON ({exc.msg} at column {exc.colno})"))
        return None
    if not isinstance(record, dict):
        problems.append(Problem(source, where, f"expected a JSON object, got {type(record).__name__}"))
        return None
    unknown = set(record) - {"prompt", "messages", "category", "topic", "id"}
    if unknown:
        problems.append(Problem(source, where, f"unknown field(s) {sorted(unknown)}; allowed: prompt or messages, "
                                               "plus optional category, topic, id"))
        return None
    meta = {k: record.get(k, "") for k in ("category", "topic")}
    if not all(isinstance(v, str) for v in meta.values()):
        problems.append(Problem(source, where, "category and topic must be strings"))
        return None
    if ("prompt" in record) == ("messages" in record):
        problems.append(Problem(source, where, 'expected exactly one of "prompt" (a string) or "messages" (a list)'))
        return None
    if "prompt" in record:
        prompt = record["prompt"]
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(Problem(source, f"{where}: prompt", f"expected a non-empty string, got {prompt!r:.60}"))
            return None
        return Prompt(messages=({"role": "user", "content": prompt},), **meta)
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        problems.append(Problem(source, f"{where}: messages", "expected a non-empty list of {role, content} objects"))
        return None
    for i, m in enumerate(messages):
        if not (isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)):
            problems.append(Problem(source, f"{where}: messages[{i}]",
                                    f"expected {{'role': one of {ROLES}, 'content': a string}}, got {m!r:.80}"))
            return None
    if messages[-1]["role"] != "user":
        problems.append(Problem(source, f"{where}: messages", "the conversation must end with a user turn"))
        return None
    return Prompt(messages=tuple({"role": m["role"], "content": m["content"]} for m in messages), **meta)


def read_prompts(path: str | Path) -> list[Prompt]:
    """Reads a prompt JSONL file (blank lines and lines starting with ``#`` are skipped).

    Raises:
        PromptFileError: unreadable file, or bad lines (each named by line number; the first 20 are listed).
    """
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptFileError([Problem(source, "(file)", f"cannot read as UTF-8 text: {exc}")]) from None
    problems: list[Problem] = []
    prompts: list[Prompt] = []
    n_bad = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        found: list[Problem] = []
        prompt = _parse_line(line, f"line {number}", found, source)
        if prompt is None:
            n_bad += 1
            problems.extend(found[: max(0, MAX_PROBLEMS - len(problems))])
        else:
            prompts.append(prompt)
    if n_bad > len(problems):
        problems.append(Problem(source, "(file)", f"... and {n_bad - len(problems)} more bad line(s)"))
    if problems:
        raise PromptFileError(problems)
    if not prompts:
        raise PromptFileError([Problem(source, "(file)", "no prompts found; expected one JSON object per line")])
    return prompts


@functools.cache
def _cached(path: str) -> tuple[Prompt, ...]:
    return tuple(read_prompts(path))


def load_prompts(name_or_path: str | Path) -> tuple[Prompt, ...]:
    """Loads a built-in pool (``train`` or ``eval``) or a user's JSONL file by path.

    Raises:
        UnknownNameError: not a built-in name and no such file.
        PromptFileError: the file has bad lines.
    """
    text = str(name_or_path)
    if text in BUILTIN:
        return _cached(str(BUILTIN[text]))
    path = Path(text).expanduser()
    if not path.is_file():
        raise UnknownNameError("prompt pool", text, BUILTIN, hint="Give a built-in pool or a path to a .jsonl file.")
    return _cached(str(path.resolve()))
