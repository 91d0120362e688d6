"""A fake LLM provider on loopback that speaks OpenAI's ``/v1/chat/completions`` and Anthropic's ``/v1/messages``.

Tests point the real ``openai`` and ``anthropic`` SDK clients at it (``base_url``). A *plan* decides, per request,
what the server does: answer normally, or inject a fault (429 with retry-after, 500, 529 overloaded, a reply slower
than the client's timeout, an empty reply, malformed JSON, a 400/401), or answer with a given text (ambiguous
verdicts). Every request is recorded, so tests can count what reached the server.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

FAULTS = ("ok", "429", "500", "529", "slow", "empty", "malformed", "400", "401")


@dataclass
class Call:
    """One request as the server saw it."""

    api: str  # "openai" or "anthropic"
    role: str  # "judge" or "simulator" (from the system prompt)
    body: dict[str, Any]
    system: str
    user: str  # the first user turn
    reask: bool  # a judge's second question about the same pair
    attempt: int  # how many times this exact body was seen before (SDK retries resend it)
    headers: dict[str, str] = field(default_factory=dict)
    served: str = ""

    @property
    def digest(self) -> int:
        return int(hashlib.sha256(self.user.encode()).hexdigest()[:8], 16)


Plan = Callable[[Call], str]  # a fault name from FAULTS, or "text:<reply>"


def default_reply(call: Call) -> str:
    """Simulator: a complaint. Judge: the shorter response wins (a stand-in for a real preference)."""
    if call.role == "simulator":
        return "Too long, keep it short please."
    if "[Response A]" not in call.user or "[Response B]" not in call.user:
        return "A"
    a = call.user.split("[Response A]\n", 1)[1].split("\n[End of response A]", 1)[0]
    b = call.user.split("[Response B]\n", 1)[1].split("\n[End of response B]", 1)[0]
    return "A" if len(a.split()) < len(b.split()) else "B" if len(b.split()) < len(a.split()) else "C"


class FakeLLMServer:
    """Runs in a background thread; use as a context manager.

    Args:
        api_key: The only key accepted (``Authorization: Bearer`` or ``x-api-key``); others get 401.
        plan: What to do with each request (default: answer normally).
        slow_s: How long a ``slow`` reply takes.
    """

    def __init__(self, api_key: str, plan: Plan | None = None, *, slow_s: float = 1.0):
        self.api_key, self.plan, self.slow_s = api_key, plan or (lambda call: "ok"), slow_s
        self.calls: list[Call] = []
        self._seen: Counter[str] = Counter()
        self.in_flight = self.max_in_flight = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def served(self) -> Counter[str]:
        """How many responses of each kind were served."""
        return Counter(c.served for c in self.calls)

    def __enter__(self) -> FakeLLMServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _record(self, api: str, raw: bytes, body: dict[str, Any], headers: dict[str, str]) -> Call:
        if api == "openai":
            system = next((m["content"] for m in body["messages"] if m["role"] == "system"), "")
            turns = [m for m in body["messages"] if m["role"] != "system"]
        else:
            system, turns = body.get("system", ""), body["messages"]
        role = "judge" if "impartial judge" in system else "simulator"
        with self._lock:
            digest = hashlib.sha256(raw).hexdigest()
            call = Call(api=api, role=role, body=body, system=system, user=turns[0]["content"],
                        reask=len(turns) > 1, attempt=self._seen[digest], headers=headers)
            self._seen[digest] += 1
            self.calls.append(call)
        return call

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("content-type", "application/json")
                    self.send_header("content-length", str(len(payload)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("content-length", 0)))
                api = "openai" if self.path.endswith("/chat/completions") else "anthropic"
                if not self.path.endswith(("/chat/completions", "/v1/messages")):
                    self._send(404, b'{"error": {"message": "no such route"}}')
                    return
                body = json.loads(raw)
                call = server._record(api, raw, body, {k.lower(): v for k, v in self.headers.items()})
                sent = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
                action = "401" if sent != server.api_key else server.plan(call)
                call.served = action.split(":", 1)[0]
                with server._lock:
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._act(api, call, action)
                finally:
                    with server._lock:
                        server.in_flight -= 1

            def _error(self, api: str, status: int, kind: str, message: str, headers: dict[str, str]) -> None:
                if api == "openai":
                    payload = {"error": {"message": message, "type": kind, "code": None}}
                else:
                    payload = {"type": "error", "error": {"type": kind, "message": message}}
                self._send(status, json.dumps(payload).encode(), headers)

            def _act(self, api: str, call: Call, action: str) -> None:
                fast_retry = {"retry-after": "0.01"}
                if action == "429":
                    self._error(api, 429, "rate_limit_error", "Rate limit reached", fast_retry)
                elif action == "500":
                    self._error(api, 500, "api_error", "Internal server error", {"retry-after-ms": "10"})
                elif action == "529":
                    self._error(api, 529, "overloaded_error", "Overloaded", fast_retry)
                elif action == "400":
                    self._error(api, 400, "invalid_request_error", "max_tokens: must be positive", {})
                elif action == "401":
                    self._error(api, 401, "authentication_error", "invalid x-api-key", {})
                elif action == "malformed":
                    self._send(200, b'{"id": "x", "choices": [{"message": ')
                else:
                    if action == "slow":
                        time.sleep(server.slow_s)
                    text = action[5:] if action.startswith("text:") else default_reply(call)
                    text = "" if action == "empty" else text
                    self._send(200, json.dumps(self._reply(api, call, text)).encode())

            def _reply(self, api: str, call: Call, text: str) -> dict[str, Any]:
                prompt_tokens = len(json.dumps(call.body)) // 4
                completion_tokens = len(text) // 4 + 1
                if api == "anthropic":
                    return {"id": "msg_fake", "type": "message", "role": "assistant", "model": call.body["model"],
                            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
                            "stop_sequence": None,
                            "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}
                choice: dict[str, Any] = {"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}, "logprobs": None}
                if call.body.get("logprobs") and text in ("A", "B", "C"):
                    top = [{"token": label, "logprob": -0.1 if label == text else -2.5, "bytes": None}
                           for label in ("A", "B", "C")]
                    choice["logprobs"] = {"content": [{"token": text, "logprob": -0.1, "bytes": None,
                                                       "top_logprobs": top}]}
                return {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                        "model": call.body["model"], "choices": [choice],
                        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                                  "total_tokens": prompt_tokens + completion_tokens}}

        return Handler
