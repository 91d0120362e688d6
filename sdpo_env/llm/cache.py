"""A SQLite cache of LLM calls, so a rerun or a resume costs nothing and reproduces.

The key hashes everything that determines an answer: backend, model, server, prompt template version, persona, the
full request (system prompt, messages), decoding parameters and seed. Answers are stored as answers; failures are
stored as failures (with a count and the last reason) and are never served: the next run asks again. API keys are
never part of a key or a row.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from sdpo_env.llm.base import ChatReply, ChatRequest

CACHE_FILE = "llm_cache.sqlite"
SCHEMA = """CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,   -- sha256 of the request's identity (see cache_key)
    ok INTEGER NOT NULL,    -- 1: an answer; 0: only failures so far
    reply TEXT,             -- the answer as JSON (text, usage, label probabilities)
    failures INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    updated REAL NOT NULL
)"""


def cache_key(identity: dict[str, Any], *, template: str, persona: str, request: ChatRequest,
              sent_temperature: bool = True) -> str:
    """Hex digest identifying one call's answer.

    Args:
        identity: The client's backend, model and server.
        template: The prompt template version (bumped whenever the prompt wording changes).
        persona: The persona's name (its profile is in the system prompt too).
        request: The request.
        sent_temperature: Whether the backend receives the temperature (Anthropic's current API does not).
    """
    data = {
        **identity, "template": template, "persona": persona, "system": request.system,
        "messages": [dict(m) for m in request.messages], "max_tokens": request.max_tokens, "seed": request.seed,
        "label_logprobs": request.label_logprobs,
        "temperature": request.temperature if sent_temperature else None,
    }
    return hashlib.sha256(json.dumps(data, sort_keys=True, ensure_ascii=False).encode("utf-8")).hexdigest()


class ResponseCache:
    """Answers by key in one SQLite file; safe to share between runs (WAL mode, short write transactions).

    Args:
        path: The database file (created with its folder), or ``":memory:"`` for a cache that lasts one process.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(SCHEMA)
        self._db.commit()

    def get(self, key: str) -> ChatReply | None:
        """The stored answer, or ``None`` when there is none (never a failure)."""
        with self._lock:
            row = self._db.execute("SELECT reply FROM calls WHERE key = ? AND ok = 1", (key,)).fetchone()
        return None if row is None else ChatReply(**json.loads(row[0]))

    def put(self, key: str, reply: ChatReply) -> None:
        """Stores an answer (replacing any failures recorded for the key)."""
        with self._lock, self._db:
            self._db.execute("INSERT INTO calls (key, ok, reply, updated) VALUES (?, 1, ?, ?) ON CONFLICT(key) DO "
                             "UPDATE SET ok = 1, reply = excluded.reply, updated = excluded.updated",
                             (key, json.dumps(reply.to_dict(), ensure_ascii=False), time.time()))

    def put_failure(self, key: str, reason: str) -> None:
        """Records a failure; an answer already stored for the key is kept."""
        with self._lock, self._db:
            self._db.execute("INSERT INTO calls (key, ok, failures, last_error, updated) VALUES (?, 0, 1, ?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET failures = failures + 1, last_error = excluded.last_error,"
                             " updated = excluded.updated WHERE ok = 0", (key, reason[:500], time.time()))

    def counts(self) -> dict[str, int]:
        """Rows with answers and rows with only failures."""
        with self._lock:
            ok, failed = self._db.execute("SELECT COALESCE(SUM(ok), 0), COALESCE(SUM(1 - ok), 0) FROM calls").fetchone()
        return {"answers": int(ok), "failures": int(failed)}

    def close(self) -> None:
        with self._lock:
            self._db.close()
