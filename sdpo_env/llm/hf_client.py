"""A local Hugging Face causal LM as a simulator or judge: batched generation on the library's ``ChatPolicy``.

For judges the label probabilities are read from the model's next-token distribution at the start of the reply
(the probabilities of the first tokens of ``A``, ``B`` and ``C``, normalised over the three). Usage is counted in
tokens; a local model costs nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sdpo_env.llm.base import LABELS, ChatReply, ChatRequest, Failure


class HFClient:
    """Generation with a local model, loaded on first use.

    Args:
        model: ``tiny``, a local folder or a Hugging Face id.
        device: ``auto``, ``cpu``, ``cuda``, ...
        dtype: Weights dtype (``auto``).
        batch_size: Most requests generated together.
    """

    backend = "hf"

    def __init__(self, model: str, *, device: str = "auto", dtype: str = "auto", batch_size: int = 16):
        self.model, self.device, self.dtype, self.batch_size = model, device, dtype, batch_size
        self._policy: Any = None

    def identity(self) -> dict[str, Any]:
        return {"backend": self.backend, "model": self.model}

    def _get_policy(self) -> Any:
        if self._policy is None:
            from sdpo_env.policy import ChatPolicy  # local: the API backends do not need torch models

            self._policy = ChatPolicy.load(self.model, device=self.device, dtype=self.dtype)
        return self._policy

    async def complete(self, requests: Sequence[ChatRequest]) -> list[ChatReply | Failure]:
        from sdpo_env.policy import Sampling

        policy = self._get_policy()
        out: list[ChatReply | Failure] = []
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            conversations = [[{"role": "system", "content": r.system}, *r.messages] for r in chunk]
            first = chunk[0]  # a batch shares decoding settings; judges and simulators send uniform batches
            sampling = Sampling(temperature=first.temperature, max_new_tokens=first.max_tokens)
            samples = policy.generate(conversations, seed=first.seed, sampling=sampling)
            probs = self._label_probs(policy, conversations) if first.label_logprobs else [None] * len(chunk)
            for conversation, sample, p in zip(conversations, samples, probs):
                out.append(ChatReply(text=sample.text, input_tokens=len(policy.encode(conversation)),
                                     output_tokens=len(sample.ids), label_probs=p))
        return out

    @torch.no_grad()
    def _label_probs(self, policy: Any, conversations: list[list[dict[str, str]]]) -> list[dict[str, float]]:
        label_ids = [policy.tokenizer(label, add_special_tokens=False)["input_ids"][0] for label in LABELS]
        contexts = [policy.encode(c) for c in conversations]
        logits, _, _ = policy.completion_logits(contexts, [[label_ids[0]]] * len(contexts))  # (B, 1, V)
        chosen = torch.softmax(logits[:, 0, :].float(), dim=-1)[:, label_ids]  # (B, 3)
        chosen = chosen / chosen.sum(dim=-1, keepdim=True)
        return [{label: float(p) for label, p in zip(LABELS, row)} for row in chosen.tolist()]

    async def aclose(self) -> None:
        self._policy = None
