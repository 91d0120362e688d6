"""Writes the shipped sample of logged conversations (``sdpo_env/data/logs/``), deterministically from a seed.

    python -m sdpo_env.logs_sample                 # rewrites sample.jsonl, sample_sharegpt.jsonl, sample_wildchat.jsonl

The conversations are written for this project, not copied from any dataset: requests from the shipped training
prompt pool, answers assembled by the tiny model's corpus renderer in a chosen style, and user turns taken from the
shipped personas' phrasings (complaints, thanks) and the unrelated follow-up pool. The logged assistant does not
know its user: it answers in a style drawn from the tiny corpus's base distribution; when the answer breaks one of
the user's preferences the user complains about one of them, and the assistant revises that aspect (keeping the
rest of its style), up to ``MAX_COMPLAINTS`` rounds. As in WildFeedback, many conversations carry dissatisfaction.
Users are ``no_emojis`` and ``concise_casual_beginner``, so their complaints (emojis; length, tone, jargon) appear.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from sdpo_env.files import DATA_DIR
from sdpo_env.personas import Persona, Preference, load_persona
from sdpo_env.prompts import load_prompts
from sdpo_env.tiny.render import render
from sdpo_env.tiny.style import Style, measure, preference_axes, sample_style

LOGS_DIR = DATA_DIR / "logs"
SAMPLE = LOGS_DIR / "sample.jsonl"
USERS = {"no_emojis": 0.6, "concise_casual_beginner": 0.4}
MAX_COMPLAINTS = 2  # complaint rounds per request before the user moves on
Messages = list[dict[str, str]]


def _pick(rng: np.random.Generator, items: Any) -> Any:
    return items[int(rng.integers(len(items)))]


def _answer(rng: np.random.Generator, question: str, category: str, fixed: Style) -> str:
    while True:
        text = render(sample_style(rng, fixed), question, category, rng)
        if text is not None:
            return text


def _revise(rng: np.random.Generator, question: str, category: str, style: Style,
            pref: Preference) -> tuple[str, Style]:
    """The assistant fixes what the user complained about and keeps the rest of its style when it can."""
    fixed = dict(style)
    fixed.update(preference_axes(pref))
    for _ in range(5):
        text = render(sample_style(rng, fixed), question, category, rng)
        if text is not None:
            return text, measure(text)
    text = _answer(rng, question, category, dict(preference_axes(pref)))
    return text, measure(text)


def conversation(rng: np.random.Generator, persona: Persona) -> Messages:
    """One logged conversation between an assistant that does not know the user and a user with ``persona``."""
    prompts = load_prompts("train")
    prompt = _pick(rng, prompts)
    messages: Messages = []
    if rng.random() < 0.1:
        messages.append({"role": "system", "content": "You are a helpful assistant."})
    for _ in range(int(rng.integers(1, 4))):  # one to three requests in a conversation
        messages.append({"role": "user", "content": prompt.text})
        style = sample_style(rng)  # the logged model's own style: the base distribution
        answer = render(style, prompt.text, prompt.category, rng) or _answer(rng, prompt.text, prompt.category, {})
        messages.append({"role": "assistant", "content": answer})
        for _ in range(MAX_COMPLAINTS):
            violated = [p for p in persona.preferences if not p.satisfied_by(answer)]
            if not violated:
                break
            pref = _pick(rng, violated)  # the user complains about one thing at a time
            messages.append({"role": "user", "content": _pick(rng, pref.follow_ups)})
            answer, style = _revise(rng, prompt.text, prompt.category, style, pref)
            messages.append({"role": "assistant", "content": answer})
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
