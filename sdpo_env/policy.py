"""ChatPolicy: any Hugging Face causal LM with its chat template, sampling, per-token log-probs and LoRA.

- Batched sampling (left padding), seeded per call so a run is reproducible and resumable; on Llama and Qwen2 models
  a lean loop (``sdpo_env.decoding``) samples the tokens ``generate`` would, in less time (README, "Sampling speed").
- Per-token log-probs of given completions under given contexts, batched and correct under either padding side;
  only the completion positions are projected to the vocabulary (``logits_to_keep`` with per-row indices).
- LoRA through peft; ``with policy.base_model():`` gives the frozen base by disabling the adapter (one copy of the
  weights in memory); the adapter saves in peft's own format.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from sdpo_env import decoding
from sdpo_env.errors import SdpoEnvError
from sdpo_env.sdpo import selective_log_softmax
from sdpo_env.tiny import SHIPPED_MODELS, model_folder_problem, resolve_model_path

Messages = Sequence[dict[str, str]]
# peft still calls a transformers method that transformers 5 deprecates; the warning is not the user's to act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Sampling through peft's LoRA wrappers costs ~60% more per token on small models. Below this many adapted weights,
# sampling runs on merged weights (W + scale * B @ A) and the saved originals are copied back afterwards, so the base
# view stays bit-identical. Above it, keeping a copy of the adapted weights would cost too much memory.
MERGE_LIMIT = 50_000_000


@dataclass
class LoraSettings:
    """LoRA adapter settings; ``target_modules="all-linear"`` adapts every linear layer but the output head."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: str | list[str] = "all-linear"


@dataclass
class Sampling:
    """How the policy samples. ``top_k=0`` and ``top_p=1`` sample from the full distribution (on-policy)."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_new_tokens: int = 192


@dataclass
class Sample:
    """One sampled completion: its text (special tokens removed) and token ids (EOS included when reached)."""

    text: str
    ids: list[int] = field(repr=False)
    finished: bool


def lora_delta(layer: Any, adapter: str = "default") -> torch.Tensor:
    """The dense update ``scaling * B @ A`` that a LoRA layer adds to its linear layer's weight, (d_out, d_in)."""
    a, b = layer.lora_A[adapter].weight, layer.lora_B[adapter].weight  # (r, d_in), (d_out, r)
    return (b @ a).detach() * layer.scaling[adapter]


def pick_device(device: str) -> torch.device:
    """``auto`` picks CUDA, then MPS, then CPU (``ChatPolicy.load`` keeps the shipped tiny model on the CPU)."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class ChatPolicy:
    """A causal LM and its tokenizer behind one small interface.

    Args:
        model: A ``transformers`` causal LM (optionally already wrapped by peft).
        tokenizer: Its tokenizer, with a chat template.
        sampling: Default sampling settings.
    """

    def __init__(self, model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase,
                 sampling: Sampling | None = None):
        if tokenizer.chat_template is None:
            raise SdpoEnvError(f"the tokenizer of {model.name_or_path!r} has no chat template; use a chat model")
        self.model = model
        self.tokenizer = tokenizer
        self.sampling = sampling or Sampling()
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = self._eos_ids()
        self._pristine: dict[str, torch.Tensor] = {}  # adapted layers' original weights, when merging for sampling
        self._base_view = False

    @classmethod
    def load(cls, name: str, *, device: str = "auto", dtype: str = "auto", lora: LoraSettings | None = None,
             sampling: Sampling | None = None) -> ChatPolicy:
        """Loads a model folder or hub id (``tiny`` = the shipped model, ``tiny-v2`` its refinement, ``tiny-v3``
        their mean) with safetensors and no remote code.

        Raises:
            SdpoEnvError: the model cannot be loaded (the message names it and why).
        """
        path = resolve_model_path(name)
        if problem := model_folder_problem(path):
            raise SdpoEnvError(f"cannot load policy model {name!r} ({path}): {problem}")
        # The shipped tiny models are too small for a GPU to help (each token is a chain of tiny kernel launches): on
        # an H200 a flip run went about half as fast as on 2 CPU cores (README), so ``auto`` keeps it on the CPU.
        target = torch.device("cpu") if device == "auto" and name in SHIPPED_MODELS else pick_device(device)
        torch_dtype = DTYPES.get(dtype) or (torch.bfloat16 if target.type == "cuda" else torch.float32)
        try:
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, trust_remote_code=False,
                                                         use_safetensors=True)
        except (OSError, ValueError) as exc:
            raise SdpoEnvError(f"cannot load policy model {name!r} ({path}): {exc}") from exc
        model.to(target)  # type: ignore[arg-type]  # transformers types .to() as a model decorator
        model.eval()  # no dropout in the base; LoRA dropout is configured separately
        policy = cls(model, tokenizer, sampling)
        if lora is not None:
            policy.add_lora(lora)
        return policy

    # --- adapters ---------------------------------------------------------------------------------------------

    def add_lora(self, settings: LoraSettings, *, seed: int = 0) -> None:
        """Wraps the model with a fresh, trainable LoRA adapter (``B = 0``: the policy starts equal to the base).

        Args:
            settings: Rank, alpha, dropout, target modules.
            seed: Seeds the random initialisation of ``A`` (peft draws it from the global generator, which would make
                runs depend on whatever ran before them in the process).
        """
        if isinstance(self.model, PeftModel):
            raise SdpoEnvError("the policy already has a LoRA adapter")
        config = LoraConfig(r=settings.r, lora_alpha=settings.alpha,  # type: ignore[arg-type]  # a float works lora_dropout=settings.dropout,
                            target_modules=settings.target_modules, task_type="CAUSAL_LM", bias="none")
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            self.model = get_peft_model(self.model, config)
        self.model.eval()
        layers = self.lora_layers()
        # Merging covers linear layers only: with LoRA on anything else (an embedding), sampling keeps peft's layers.
        only_linear = all(layer.lora_A for layer in self.lora_layers(linear_only=False).values())
        if only_linear and sum(layer.base_layer.weight.numel() for layer in layers.values()) <= MERGE_LIMIT:
            self._pristine = {name: layer.base_layer.weight.detach().clone() for name, layer in layers.items()}

    def lora_layers(self, *, linear_only: bool = True) -> dict[str, Any]:
        """The adapter's layers by module name (``linear_only``: those that adapt a linear layer)."""
        from peft.tuners.lora import LoraLayer

        return {n: m for n, m in self.model.named_modules()
                if isinstance(m, LoraLayer) and (m.lora_A or not linear_only)}

    @contextlib.contextmanager
    def _merged_for_sampling(self, *, switch_off: bool = True) -> Iterator[bool]:
        """Samples from merged weights when the adapter is small enough to keep the originals (see MERGE_LIMIT).

        Yields whether the model's plain layers now compute the policy (no adapter, the base view, or merged).
        ``switch_off=False`` leaves peft's adapter switch alone (about 35 ms a call on the tiny model): for callers
        that read the plain layers' weights directly, as the lean sampling loop does, instead of calling the model.
        """
        if not self._pristine or self._base_view:
            yield not self.has_adapter or self._base_view
            return
        layers = self.lora_layers()
        try:
            with torch.no_grad():
                for name, layer in layers.items():
                    delta = lora_delta(layer)
                    layer.base_layer.weight.copy_(self._pristine[name] + delta.to(self._pristine[name].dtype))
            with self.model.disable_adapter() if switch_off else contextlib.nullcontext():  # type: ignore[operator]
                yield True
        finally:
            with torch.no_grad():
                for name, layer in layers.items():
                    layer.base_layer.weight.copy_(self._pristine[name])

    @property
    def has_adapter(self) -> bool:
        return isinstance(self.model, PeftModel)

    def weight_bytes(self) -> int:
        """Memory the model's parameters take (the adapter's included)."""
        return sum(p.numel() * p.element_size() for p in self.model.parameters())

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that learn (the LoRA weights when an adapter is present)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @contextlib.contextmanager
    def base_model(self) -> Iterator[None]:
        """Within the block the policy is the frozen base model (the adapter is disabled, not copied)."""
        if not self.has_adapter:
            yield
            return
        outer, self._base_view = self._base_view, True
        try:
            with self.model.disable_adapter():  # type: ignore[operator]
                yield
        finally:
            self._base_view = outer

    def adapter_state(self) -> dict[str, torch.Tensor]:
        """The adapter's weights (for checkpoints)."""
        return {k: v.detach().clone() for k, v in get_peft_model_state_dict(self.model).items()}

    def load_adapter_state(self, state: dict[str, torch.Tensor]) -> None:
        set_peft_model_state_dict(self.model, state)

    def save_adapter(self, path: str | Path) -> None:
        """Writes the adapter in peft's format (``PeftModel.from_pretrained(base, path)`` loads it)."""
        if not self.has_adapter:
            raise SdpoEnvError("the policy has no adapter to save")
        self.model.save_pretrained(str(path))  # type: ignore[operator]  # peft forwards it to the wrapper

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --- text <-> ids -----------------------------------------------------------------------------------------

    def encode(self, messages: Messages) -> list[int]:
        """Token ids of a conversation rendered by the chat template, ending with the assistant prompt."""
        out: Any = self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=True)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return list(ids)

    def encode_completion(self, text: str) -> list[int]:
        """Token ids of an answer as the model would write it (followed by EOS)."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_ids[0]]

    def _eos_ids(self) -> list[int]:
        ids = self.model.generation_config.eos_token_id if self.model.generation_config else None
        ids = ids if ids is not None else self.tokenizer.eos_token_id
        ids = [ids] if isinstance(ids, int) else list(ids or [])
        if not ids:
            raise SdpoEnvError("the model defines no end-of-sequence token")
        return ids

    # --- sampling ---------------------------------------------------------------------------------------------

    def _left_pad(self, rows: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(r) for r in rows)
        ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, row in enumerate(rows):
            span = slice(length - len(row), length)
            ids[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = 1
        return ids.to(self.device), mask.to(self.device)

    @torch.no_grad()
    def generate(self, conversations: Sequence[Messages], *, seed: int,
                 sampling: Sampling | None = None) -> list[Sample]:
        """Samples one answer per conversation.

        Args:
            conversations: Conversations ending with a user turn.
            seed: Seeds this call only (the global RNG is restored afterwards), so reruns and resumes agree.
            sampling: Overrides the policy's default sampling settings.
        """
        s = sampling or self.sampling
        ids, mask = self._left_pad([self.encode(c) for c in conversations])
        devices = [self.device] if self.device.type == "cuda" else []
        lean = decoding.supports(self.model, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
        with torch.random.fork_rng(devices=devices), self._merged_for_sampling(switch_off=not lean) as plain:
            torch.manual_seed(seed)  # the lean loop (when plain) samples generate's tokens in less time
            out = decoding.generate_ids(self.model, ids, mask, max_new_tokens=s.max_new_tokens, eos_ids=self.eos_ids,
                                        pad_id=self.pad_id, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                        lean=plain)
        samples = []
        for row in out[:, ids.shape[1]:].tolist():
            cut = next((i for i, t in enumerate(row) if t in self.eos_ids), None)
            kept = row if cut is None else row[: cut + 1]
            text = self.tokenizer.decode(kept if cut is None else kept[:-1], skip_special_tokens=True)
            samples.append(Sample(text=str(text).strip(), ids=kept, finished=cut is not None))
        return samples

    # --- scoring ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def answer_nll(self, conversations: Sequence[Messages], answers: Sequence[str], *,
                   batch_size: int = 8) -> list[float]:
        """Each answer's mean negative log-likelihood per token (nats) given its conversation, under the model as it
        stands (within :meth:`base_model`, the frozen base); NaN for an answer with no tokens.

        The answer's text is scored as tokenized (the sampled ids of a policy's answer may have been split
        differently) and without an end-of-sequence token, so an answer cut at ``max_new_tokens`` and one that
        ended are scored alike. Batches of ``batch_size`` keep the (B, T, V) logits small on a large vocabulary;
        answers of similar length share a batch, so little of it is padding.
        """
        rows = [(self.encode(c), list(self.tokenizer(a, add_special_tokens=False)["input_ids"]))
                for c, a in zip(conversations, answers, strict=True)]
        out = [float("nan")] * len(rows)
        scored = sorted((i for i, (_, y) in enumerate(rows) if y), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
        for start in range(0, len(scored), batch_size):
            batch = scored[start : start + batch_size]
            logits, targets, mask = self.completion_logits([rows[i][0] for i in batch], [rows[i][1] for i in batch])
            nll = -(selective_log_softmax(logits, targets) * mask).sum(-1) / mask.sum(-1)  # (B,)
            for i, value in zip(batch, nll.tolist()):
                out[i] = float(value)
        return out

    def completion_logits(
        self, contexts: Sequence[Sequence[int]], completions: Sequence[Sequence[int]]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Logits at the positions that predict each completion token.

        Each row is laid out as ``[pad.. context][completion ..pad]``: contexts are padded on the left to a common
        length C and completions on the right to the longest, T. The positions predicting completion tokens are then
        C - 1 .. C + T - 2 in every row, so the model projects only the last T + 1 positions to the vocabulary (an
        integer ``logits_to_keep``, which every transformers 5 model takes; per-row index tensors are newer).

        Args:
            contexts: Token ids of each context (ending with the assistant prompt).
            completions: Token ids of each completion.

        Returns:
            ``(logits, targets, mask)``: (B, T, V) logits, (B, T) completion ids, (B, T) 1 on real tokens. Gradients
            flow unless the caller disables them.
        """
        if any(len(c) == 0 for c in completions):
            raise SdpoEnvError("cannot score an empty completion")
        n_ctx, n_comp = max(len(x) for x in contexts), max(len(y) for y in completions)
        ids = torch.full((len(contexts), n_ctx + n_comp), self.pad_id, dtype=torch.long)
        attention = torch.zeros_like(ids)
        targets = torch.full((len(contexts), n_comp), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(contexts), n_comp))
        for i, (x, y) in enumerate(zip(contexts, completions)):
            ids[i, n_ctx - len(x) : n_ctx + len(y)] = torch.tensor(list(x) + list(y))
            attention[i, n_ctx - len(x) : n_ctx + len(y)] = 1
            targets[i, : len(y)] = torch.tensor(list(y))
            mask[i, : len(y)] = 1.0
        positions = (attention.cumsum(-1) - 1).clamp(min=0)  # (B, L): padding must not shift positions
        out = self.model(input_ids=ids.to(self.device), attention_mask=attention.to(self.device),
                         position_ids=positions.to(self.device), logits_to_keep=n_comp + 1, use_cache=False)
        logits = out.logits[:, :-1]  # (B, T, V): the last kept position predicts past the longest completion
        return logits, targets.to(self.device), mask.to(self.device)  # (B, T, V), (B, T), (B, T)
