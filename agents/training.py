"""What the LoRA-training baselines share with SDPO: the same options and the same optimiser step.

- :func:`same_as_sdpo` declares a config field with the default, help text and checks of ``agent=sdpo_paper`` (read
  from :class:`agents.sdpo.SDPOPaperConfig`: SDPO stepped by AdamW), so a comparison uses one set of LoRA and AdamW
  settings by construction.
- :class:`LoraTrainer` adds the adapter, owns the AdamW optimiser, and takes a step with SDPO's rules: gradient
  clipping, non-finite losses and gradients skipped, counted and warned about; its state resumes exactly.
- :class:`SampledIds` remembers the token ids of the policy's own answers, so a loss scores exactly the sampled
  tokens rather than a re-tokenisation of the text.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from agents.base import Messages
from agents.sdpo import SDPOPaperConfig, load_optimizer_state, lora_settings
from sdpo_env.policy import ChatPolicy
from sdpo_env.schema import option_like


def same_as_sdpo(name: str) -> Any:
    """A dataclass field equal to ``agent=sdpo_paper``'s option ``name`` (default, help text, allowed range): the
    baselines build an AdamW, so they take the AdamW setting of SDPO, not ``agent=sdpo``'s SGD one.

    Raises:
        KeyError: SDPO has no such option.
    """
    return option_like(SDPOPaperConfig, name)


class LoraTrainer:
    """A LoRA adapter on the policy and its AdamW optimiser, stepped like SDPO's.

    Args:
        policy: The policy; a LoRA adapter is added if it has none.
        config: Any learner config with SDPO's ``lr``, ``weight_decay``, ``adam_beta2``, ``grad_clip`` and ``lora_*``
            fields.
        seed: Seeds the adapter's initialisation.
        name: Metric namespace and the learner's name in warnings (``sft``, ``dpo``, ...).
    """

    def __init__(self, policy: ChatPolicy, config: Any, *, seed: int, name: str):
        if not policy.has_adapter:
            policy.add_lora(lora_settings(config), seed=seed)
        self.policy, self.name = policy, name
        self.grad_clip = config.grad_clip
        self.params = policy.trainable_parameters()
        self.optimizer = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay,
                                           betas=(0.9, config.adam_beta2))
        self.n_updates = self.n_skipped = 0

    def step(self, loss: torch.Tensor) -> dict[str, float]:
        """Backward, clip, AdamW step; a non-finite loss or gradient skips the step (counted, warned)."""
        self.optimizer.zero_grad(set_to_none=True)
        if not torch.isfinite(loss):
            return self._skip(f"non-finite loss ({loss.item()})")
        loss.backward()
        clip = self.grad_clip if self.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip).item()
        if not math.isfinite(grad_norm):
            self.optimizer.zero_grad(set_to_none=True)
            return self._skip("non-finite gradient")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.n_updates += 1
        return {f"{self.name}/loss": loss.item(), f"{self.name}/grad_norm": grad_norm,
                f"{self.name}/skipped_updates": float(self.n_skipped)}

    def _skip(self, why: str) -> dict[str, float]:
        self.n_skipped += 1
        warnings.warn(f"{self.name} update {self.n_updates} skipped: {why}; {self.n_skipped} skipped so far",
                      RuntimeWarning, stacklevel=3)
        return {f"{self.name}/skipped_updates": float(self.n_skipped)}

    def state_dict(self) -> dict[str, Any]:
        return {"adapter": self.policy.adapter_state(), "optimizer": self.optimizer.state_dict(),
                "n_updates": self.n_updates, "n_skipped": self.n_skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_adapter_state(state["adapter"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        self.n_updates, self.n_skipped = state["n_updates"], state["n_skipped"]


class SampledIds:
    """Answer text -> the token ids the policy sampled for it (EOS included when reached)."""

    def __init__(self) -> None:
        self.ids: dict[str, list[int]] = {}

    def remember(self, text: str, ids: list[int]) -> None:
        self.ids[text] = list(ids)

    def sample(self, policy: ChatPolicy, conversations: Sequence[Messages], *, seed: int) -> list[str]:
        """The policy's answers to ``conversations``, each remembered with its sampled ids."""
        samples = policy.generate(conversations, seed=seed)
        for s in samples:
            self.remember(s.text, s.ids)
        return [s.text for s in samples]

    def get(self, policy: ChatPolicy, text: str) -> list[int]:
        """The sampled ids, or the text's encoding when it was not sampled here (e.g. a logged answer)."""
        ids = self.ids.get(text)
        return list(ids) if ids else policy.encode_completion(text)

    def keep_only(self, texts: Iterable[str]) -> None:
        """Forgets every answer not in ``texts`` (those that can no longer be trained on)."""
        live = set(texts)
        self.ids = {k: v for k, v in self.ids.items() if k in live}
