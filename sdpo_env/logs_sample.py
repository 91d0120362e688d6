"""Writes the shipped sample of logged conversations (``sdpo_env/data/logs/``), deterministically from a seed.

    python -m sdpo_env.logs_sample                 # rewrites sample.jsonl, sample_sharegpt.jsonl, sample_wildchat.jsonl

The conversations are written for this project, not copied from any dataset: requests from the shipped training
prompt pool, answers assembled by the tiny model's corpus renderer in a chosen style, and user turns taken from the
shipped personas' phrasings (complaints, thanks) and the unrelated follow-up pool. Like WildFeedback, most logged
first answers leave the user dissatisfied: each simulated user's first answer violates one of their preferences
with probability ``VIOLATE`` and the user says so; the assistant's revision satisfies them. Users are ``no_emojis``
and ``concise_casual_beginner``, so their complaints (emojis; length, tone, jargon) appear in the logs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from sdpo_env.files import DATA_DIR
from sdpo_env.personas import Persona, load_persona
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny.render import render
from sdpo_env.tiny.style import AXES, Style, persona_axes, preference_axes, sample_style

LOGS_DIR = DATA_DIR / "logs"
SAMPLE = LOGS_DIR / "sample.jsonl"
USERS = {"no_emojis": 0.6, "concise_casual_beginner": 0.4}
VIOLATE = 0.75
Messages = list[dict[str, str]]


def _pick(rng: np.random.Generator, items: Any) -> Any:
    return items[int(rng.integers(len(items)))]


def _answer(rng: np.random.Generator, question: str, category: str, fixed: Style) -> str:
    while True:
        text = render(sample_style(rng, fixed), question, category, rng)
        if text is not None:
            return text


def _first_style(rng: np.random.Generator, persona: Persona) -> Style:
    """Every preference satisfied, or (with probability VIOLATE) one of them violated."""
    fixed = dict(persona_axes(persona) or {})
    if rng.random() < VIOLATE:
        pref = _pick(rng, persona.preferences)
        for axis, allowed in preference_axes(pref).items():
            fixed[axis] = tuple(v for v in AXES[axis] if v not in allowed)  # type: ignore[operator]
    return fixed


def conversation(rng: np.random.Generator, persona: Persona) -> Messages:
    """One logged conversation with a user who has ``persona``'s preferences."""
    prompts = load_prompts("train")
    prompt = _pick(rng, prompts)
    messages: Messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(int(rng.integers(1, 4))):  # one to three requests in a conversation
        messages.append({"role": "user", "content": prompt.text})
        answer = _answer(rng, prompt.text, prompt.category, _first_style(rng, persona))
        messages.append({"role": "assistant", "content": answer})
        violated = [p for p in persona.preferences if not p.satisfied_by(answer)]
        if violated:  # the user complains; the assistant revises
            messages.append({"role": "user", "content": _pick(rng, _pick(rng, violated).follow_ups)})
            revised = _answer(rng, prompt.text, prompt.category, dict(persona_axes(persona) or {}))
            messages.append({"role": "assistant", "content": revised})
        roll = rng.random()
        if roll < 0.45:
            messages.append({"role": "user", "content": _pick(rng, persona.satisfied.replies)})
            return messages
        if roll < 0.55:
            messages.append({"role": "user", "content": _pick(rng, persona.unrelated_pool)})
            return messages
        if roll < 0.7:
            return messages  # the user leaves: the last answer has no follow-up
        prompt = _pick(rng, prompts)  # a new request continues the conversation
    return messages


def sample(n: int = 240, seed: int = 0) -> list[tuple[str, Messages]]:
    """``n`` conversations as ``(user name, messages)``; each depends only on ``(seed, index)``."""
    personas = {name: load_persona(name) for name in USERS}
    names, weights = list(USERS), np.array(list(USERS.values()))
    out = []
    for index in range(n):
        rng = np.random.default_rng([seed, index])
        name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
        out.append((name, conversation(rng, personas[name])))
    return out


def as_sharegpt(messages: Messages) -> dict[str, Any]:
    role = {"user": "human", "assistant": "gpt", "system": "system"}
    return {"conversations": [{"from": role[m["role"]], "value": m["content"]} for m in messages]}


def as_wildchat(messages: Messages, index: int) -> dict[str, Any]:
    """The WildChat layout, with made-up metadata (the loader ignores every extra field)."""
    turns = [{"role": m["role"], "content": m["content"], "language": "English", "toxic": False}
             for m in messages if m["role"] != "system"]
    return {"conversation_hash": f"sample-{index:04d}", "model": "sample-writer", "language": "English",
            "turn": sum(m["role"] == "user" for m in messages), "toxic": False, "conversation": turns}


def write(out: Path = LOGS_DIR, n: int = 240, seed: int = 0, n_small: int = 24) -> dict[str, int]:
    """Writes the OpenAI-format sample and small ShareGPT and WildChat files of its first ``n_small`` lines."""
    out.mkdir(parents=True, exist_ok=True)
    rows = sample(n, seed)
    lines = {
        "sample.jsonl": [{"messages": m, "user": name} for name, m in rows],
        "sample_sharegpt.jsonl": [as_sharegpt(m) for _, m in rows[:n_small]],
        "sample_wildchat.jsonl": [as_wildchat(m, i) for i, (_, m) in enumerate(rows[:n_small])],
    }
    for name, records in lines.items():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        (out / name).write_text(text, encoding="utf-8")
    return {name: len(records) for name, records in lines.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=LOGS_DIR)
    parser.add_argument("--n", type=int, default=240)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write(args.out, args.n, args.seed))


if __name__ == "__main__":
    main()
