"""Teachers for SDPO: which model scores the response under the hindsight context.

- ``live``: the current policy itself (the paper's default): adapter on, no gradient.
- ``base``: the frozen base model (adapter disabled): a fixed, never-weakened teacher.
- ``ema``: an exponential moving average of the policy. With LoRA, averaging A and B separately is *not* an average
  of the weight update B @ A, so this teacher keeps the average of each adapted layer's dense update
  ``scaling * B @ A`` and adds it to the base layer's output. Memory: one dense matrix per adapted layer, the size
  of the adapted weights; fine for small models, costly for billion-parameter ones.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F

from sdpo_env.policy import ChatPolicy, lora_delta

TEACHERS = ("live", "base", "ema")


class EmaTeacher:
    """The policy's exponential moving average, held as dense per-layer updates on top of the base weights.

    Args:
        policy: A policy with a LoRA adapter.
        decay: Weight of the old average in each update (0.99 = slow teacher).
    """

    def __init__(self, policy: ChatPolicy, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {decay}")
        self.policy, self.decay = policy, decay
        self.layers = policy.lora_layers()
        if not self.layers:
            raise ValueError("the EMA teacher needs a policy with a LoRA adapter")
        self.updates = {name: torch.zeros_like(lora_delta(layer)) for name, layer in self.layers.items()}

    @torch.no_grad()
    def step(self) -> None:
        """Moves the average towards the current policy (call after each optimizer step)."""
        for name, layer in self.layers.items():
            self.updates[name].mul_(self.decay).add_(lora_delta(layer), alpha=1.0 - self.decay)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Within the block the policy computes the EMA teacher: base weights plus the averaged updates."""
        handles = []
        for name, layer in self.layers.items():
            update = self.updates[name]

            def hook(module: torch.nn.Module, inputs: tuple, output: torch.Tensor, update=update) -> torch.Tensor:
                return output + F.linear(inputs[0].to(update.dtype), update).to(output.dtype)

            handles.append(layer.register_forward_hook(hook))  # type: ignore[attr-defined]  # an nn.Module
        try:
            with self.policy.base_model():
                yield
        finally:
            for handle in handles:
                handle.remove()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.clone() for k, v in self.updates.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        for k, v in state.items():
            self.updates[k].copy_(v)


@contextlib.contextmanager
def teacher_view(policy: ChatPolicy, kind: str, ema: EmaTeacher | None = None) -> Iterator[None]:
    """Puts the policy in the requested teacher's state for the duration of the block."""
    if kind == "live":
        yield
    elif kind == "base":
        with policy.base_model():
            yield
    elif kind == "ema":
        if ema is None:
            raise ValueError("teacher 'ema' needs an EmaTeacher")
        with ema.active():
            yield
    else:
        raise ValueError(f"teacher must be one of {TEACHERS}, got {kind!r}")
