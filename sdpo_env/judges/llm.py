"""LLM judges: ``openai``, ``anthropic`` and ``hf``, with a strict verdict format and a strict parser.

The persona is in the system prompt; the request and the two responses in the user turn. The judge must answer
``[[A]]``, ``[[B]]`` or ``[[C]]`` (a tie). :func:`parse_verdict` accepts a reply that *is* a label (``A``,
``[[B]]``) or takes the *last* ``[[X]]`` marker; anything else ("Both are good", "A or B?", "B... actually A") is
unparseable, never read by its first letter. An unparseable reply gets one re-ask; a second one, or an API failure
after the SDK's retries, is ``missing`` (never a tie).

Where the backend returns log-probs (OpenAI ``logprobs``/``top_logprobs``; a local HF model's label-token scores),
the judgement also carries ``prob_a`` and ``prob_tie``: the label distribution, normalised over A/B/C.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from sdpo_env.judges.base import JUDGES, Comparison, Judgement
from sdpo_env.llm.base import ChatReply, ChatRequest
from sdpo_env.llm.service import LLMService
from sdpo_env.personas import Persona

TEMPLATE_VERSION = "judge-v1"
LABELS = {"A": "A", "B": "B", "C": "tie"}
_MARKER = re.compile(r"\[\[\s*([ABC])\s*\]\]")
_BARE = re.compile(r"^[\s\"'`*(\[]*([ABC])[\s\"'`*)\].]*$")
INSTRUCTION = ("Which response better suits this user's preferences? Answer with exactly one label and nothing else: "
               "[[A]] if response A is better, [[B]] if response B is better, [[C]] if they are equally good.")
REASK = "I could not read a verdict in your reply. Answer with exactly one of [[A]], [[B]] or [[C]] and nothing else."


def parse_verdict(text: str) -> str | None:
    """``A``, ``B`` or ``tie`` from a judge's reply, or ``None`` when it is not a verdict.

    The whole reply may be the label (``A``, ``[[A]]``, ``**A**``); otherwise the last ``[[A]]``/``[[B]]``/``[[C]]``
    marker counts. The first letter of free text never does.
    """
    bare = _BARE.match(text)
    if bare:
        return LABELS[bare.group(1)]
    markers = _MARKER.findall(text)
    return LABELS[markers[-1]] if markers else None


def judge_system_prompt(persona: Persona) -> str:
    preferences = "\n".join(f"- {p.description}" for p in persona.preferences)
    return ("You are an impartial judge of which of two AI assistant responses better suits one particular user.\n\n"
            f"User profile:\n{persona.profile.strip()}\n\nThe user's preferences:\n{preferences}\n\n"
            "Judge only how well each response fits this user's preferences (style, length, tone, format) while "
            "still addressing the request. The order of the responses must not matter.")


def judge_user_turn(comparison: Comparison) -> str:
    history = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in comparison.messages)
    return (f"The conversation:\n{history}\n\n[Response A]\n{comparison.response_a}\n[End of response A]\n\n"
            f"[Response B]\n{comparison.response_b}\n[End of response B]\n\n{INSTRUCTION}")


class LLMJudge:
    """A pairwise judge backed by an LLM.

    Args:
        service: Cached, metered calls to the provider.
        temperature: Sampling temperature (0: the paper's API judge; not sent to Anthropic's current API).
        max_tokens: Longest reply in tokens (a label needs few).
        seed: The run's seed.
        logprobs: Ask for label log-probs where the backend returns them.
    """

    def __init__(self, service: LLMService, *, temperature: float = 0.0, max_tokens: int = 16, seed: int = 0,
                 logprobs: bool = True):
        self.service, self.temperature, self.max_tokens, self.seed = service, temperature, max_tokens, seed
        self.logprobs = logprobs and service.client.backend != "anthropic"
        self.reasks = 0

    def _request(self, comparison: Comparison, previous: str | None = None) -> ChatRequest:
        messages: tuple[dict[str, str], ...] = ({"role": "user", "content": judge_user_turn(comparison)},)
        if previous is not None:
            messages += ({"role": "assistant", "content": previous}, {"role": "user", "content": REASK})
        return ChatRequest(system=judge_system_prompt(comparison.persona), messages=messages,
                           temperature=self.temperature, max_tokens=self.max_tokens, seed=self.seed,
                           label_logprobs=self.logprobs)

    def _ask(self, comparisons: Sequence[Comparison], previous: Sequence[str | None]) -> list[Judgement | str]:
        """One round: a judgement, or the unparseable reply text (to re-ask about)."""
        out: list[Judgement | str] = [Judgement("missing", reason="not asked")] * len(comparisons)
        by_persona: dict[str, list[int]] = {}
        for i, c in enumerate(comparisons):
            by_persona.setdefault(c.persona.name, []).append(i)
        for persona, indices in by_persona.items():
            requests = [self._request(comparisons[i], previous[i]) for i in indices]
            for i, reply in zip(indices, self.service.complete(requests, persona=persona)):
                if not isinstance(reply, ChatReply):
                    out[i] = Judgement("missing", reason=f"API failure: {reply.reason}")
                    continue
                verdict = parse_verdict(reply.text)
                if verdict is None:
                    out[i] = reply.text
                    continue
                probs = reply.label_probs
                out[i] = Judgement(verdict, prob_a=probs["A"] if probs else None,
                                   prob_tie=probs["C"] if probs else None, reason=reply.text[:200])
        return out

    def judge(self, comparisons: Sequence[Comparison]) -> list[Judgement]:
        """Judges every comparison (concurrently, up to the client's limit); failures are ``missing``."""
        first = self._ask(comparisons, [None] * len(comparisons))
        again = [i for i, j in enumerate(first) if isinstance(j, str)]
        self.reasks += len(again)
        if again:
            second = self._ask([comparisons[i] for i in again], [first[i] for i in again])  # type: ignore[misc]
            for i, j in zip(again, second):
                first[i] = j if isinstance(j, Judgement) else Judgement(
                    "missing", reason=f"unparseable twice: {str(first[i])[:80]!r}, then {j[:80]!r}")
        return [j for j in first if isinstance(j, Judgement)]


def _factory(backend: str) -> Callable[..., LLMJudge]:
    def make(*, service: LLMService | None = None, **kwargs: Any) -> LLMJudge:
        if service is None:  # built outside the runner: connection settings come as keyword arguments
            from sdpo_env.llm.setup import standalone_service

            service = standalone_service(backend, "judge", TEMPLATE_VERSION, empty_is_failure=False, **kwargs)
        if service.client.backend != backend:
            raise ValueError(f"the {backend} judge needs a {backend} service, got {service.client.backend}")
        options = ("temperature", "max_tokens", "seed", "logprobs")
        return LLMJudge(service, **{k: v for k, v in kwargs.items() if k in options})

    make.__doc__ = (f"A pairwise judge backed by the {backend} backend (``service=``, or ``model=`` and connection "
                    "settings).")
    return make


for _backend in ("openai", "anthropic", "hf"):
    JUDGES.register(_backend)(_factory(_backend))
