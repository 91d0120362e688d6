"""A lean sampling loop for Llama and Qwen2 models: the very tokens ``model.generate`` samples, faster.

On a model as small as the shipped tiny one, a generated token is a chain of ~200 tiny tensor operations, and most of
the time goes to the Python around them: module calls, keyword plumbing, the cache object, mask building, the
generation loop's bookkeeping. This loop runs the same arithmetic in the same order on the same weights with the same
shapes (a matrix product's rounding can depend on its shape; the rotary embedding's ``rotate_half(x) * sin`` becomes
a roll of x times a sine with its first half negated, the same products since negation is exact), and draws from the
RNG exactly as ``generate`` does (one ``torch.multinomial`` over the batch per token), so a seeded call computes the
logits ``generate`` would, bit for bit, and returns the same tokens (``tests/test_decoding.py`` checks both against
``generate`` on a Llama with and without grouped-query attention and on a Qwen2, with and without padding, adapted
and base, on the CPU; CUDA runs the same code but is not checked here). Keys and values go into buffers sized for the
whole call, where ``generate``'s cache copies itself into a longer tensor every step. Anything the loop does not
mirror (another architecture, sliding-window attention, another attention implementation or device, rope scaling,
sampling warpers, a generation config with extra rules) is left to ``generate``; ``SDPO_ENV_HF_GENERATE=1`` sends
everything there.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F

# Model classes whose forward this loop mirrors (transformers' modeling_llama; Qwen2 is Llama with q/k/v biases when
# no layer uses sliding-window attention).
MIRRORED = ("LlamaForCausalLM", "Qwen2ForCausalLM")
# Generation-config keys that add no logits processor or stopping rule beyond what ``ChatPolicy.generate`` passes.
PLAIN_GENERATION_KEYS = {"max_new_tokens", "max_length", "do_sample", "temperature", "top_k", "top_p", "pad_token_id",
                         "bos_token_id", "eos_token_id", "transformers_version", "_from_model_config", "use_cache",
                         "output_attentions", "output_hidden_states"}


def _causal_lm(model: Any) -> Any:
    """The transformers model inside a peft wrapper."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: Any, *, temperature: float, top_k: int, top_p: float) -> bool:
    """Whether :func:`sample` reproduces ``model.generate`` for this model (peft-wrapped or not) and these settings."""
    model = _causal_lm(model)
    if os.environ.get("SDPO_ENV_HF_GENERATE") == "1" or type(model).__name__ not in MIRRORED:
        return False
    config, generation = model.config, model.generation_config
    rope = getattr(config, "rope_parameters", None) or {}
    sliding = "sliding_attention" in (getattr(config, "layer_types", None) or [])
    plain_generation = generation is None or set(generation.to_diff_dict()) <= PLAIN_GENERATION_KEYS
    return (plain_generation and not sliding and config._attn_implementation == "sdpa"
            and model.device.type in ("cpu", "cuda") and os.environ.get("TRANSFORMERS_SDPA_FORCE_GQA", "0") != "1"
            and rope.get("rope_type", "default") == "default" and config.hidden_act == "silu"
            and (temperature == 0 or (temperature == 1 and top_k == 0 and top_p == 1)))


def _linear(module: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Weight and bias of a linear layer, under a peft LoRA wrapper if any (callers have the adapter off or merged)."""
    module = getattr(module, "base_layer", module)
    return module.weight, module.bias


class _Weights:
    """The decoder's tensors, read once per call."""

    def __init__(self, model: Any):
        model = _causal_lm(model)
        inner = model.model
        self.embed = inner.embed_tokens.weight
        self.inv_freq, self.rope_scaling = inner.rotary_emb.inv_freq.float(), inner.rotary_emb.attention_scaling
        self.norm = (inner.norm.weight, inner.norm.variance_epsilon)
        self.head = _linear(model.lm_head)
        self.layers = []
        for layer in inner.layers[: model.config.num_hidden_layers]:
            attn, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                (layer.input_layernorm.weight, layer.input_layernorm.variance_epsilon),
                [_linear(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj)],
                (layer.post_attention_layernorm.weight, layer.post_attention_layernorm.variance_epsilon),
                [_linear(m) for m in (mlp.gate_proj, mlp.up_proj, mlp.down_proj)],
                attn.head_dim, attn.scaling,
            ))


def _rms_norm(x: torch.Tensor, weight_eps: tuple[torch.Tensor, float]) -> torch.Tensor:
    weight, eps = weight_eps  # LlamaRMSNorm.forward, op for op (the casts only when they change the dtype)
    dtype = x.dtype
    if dtype != torch.float32:
        x = x.to(torch.float32)
    variance = x.pow(2).mean(-1, keepdim=True)
    x = x * torch.rsqrt(variance + eps)
    return weight * (x if dtype == torch.float32 else x.to(dtype))


def _rotary(w: _Weights, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos`` and a signed ``sin`` (B, 1, q, D) such that ``_rotate(x, cos, sin)`` is transformers'
    ``apply_rotary_pos_emb`` for one of q or k: its rotary module's arithmetic, on the same shapes."""
    freqs = positions[..., None].float() * w.inv_freq  # (B, q, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = (emb.cos() * w.rope_scaling).to(dtype), (emb.sin() * w.rope_scaling).to(dtype)
    half = sin.shape[-1] // 2
    # rotate_half(x) * sin = cat(-x2, x1) * sin = roll(x) * cat(-sin1, sin2): negation is exact, so no bit changes
    signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return cos.unsqueeze(1), signed.unsqueeze(1)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return (x * cos) + (x.roll(x.shape[-1] // 2, -1) * sin)


class _Cache:
    """Each layer's keys and values in buffers sized for the whole call, so a step writes one slot instead of
    copying the cache into a longer tensor (at batch 64 the copies took half of generate's time)."""

    def __init__(self, n_layers: int, capacity: int):
        self.capacity, self.length = capacity, 0
        self.buffers: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.n_layers = n_layers

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stores ``k``/``v`` (B, heads, q, D) after the layer's earlier ones; returns all of them so far (views)."""
        if len(self.buffers) == layer:
            shape = (*k.shape[:2], self.capacity, k.shape[-1])
            self.buffers.append((k.new_empty(shape), v.new_empty(shape)))
        keys, values = self.buffers[layer]
        end = self.length + k.shape[2]
        keys[:, :, self.length : end] = k
        values[:, :, self.length : end] = v
        if layer == self.n_layers - 1:
            self.length = end
        return keys[:, :, :end], values[:, :, :end]


def _forward(w: _Weights, ids: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
             cache: _Cache) -> torch.Tensor:
    """Logits (B, V) after ``ids`` (B, q); appends each layer's keys and values to ``cache``."""
    hidden = F.embedding(ids, w.embed)  # (B, q, H)
    cos, sin = _rotary(w, positions, hidden.dtype)  # (B, 1, q, D)
    batch, q_len = ids.shape
    for i, (norm1, (wq, wk, wv, wo), norm2, (gate, up, down), head_dim, scaling) in enumerate(w.layers):
        x = _rms_norm(hidden, norm1)
        shape = (batch, q_len, -1, head_dim)
        q = F.linear(x, *wq).view(shape).transpose(1, 2)  # (B, heads, q, D)
        k = F.linear(x, *wk).view(shape).transpose(1, 2)
        v = F.linear(x, *wv).view(shape).transpose(1, 2)
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        k, v = cache.append(i, k, v)
        attn = _attention(q, k, v, mask, scaling)
        hidden = hidden + F.linear(attn, *wo)
        x = _rms_norm(hidden, norm2)
        hidden = hidden + F.linear(F.silu(F.linear(x, *gate)) * F.linear(x, *up), *down)
    hidden = _rms_norm(hidden, w.norm)
    return F.linear(hidden[:, -1:, :], *w.head)[:, -1]  # (B, V): only the last position, as generate keeps


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
               scaling: float) -> torch.Tensor:
    """transformers' sdpa_attention_forward on a CPU or CUDA device, grouped-query branches included: (B, q, H*D)."""
    batch, heads, q_len, dim = q.shape
    groups = heads // k.shape[1]
    options = {}
    if groups > 1:
        if mask is None and k.shape[-1] == v.shape[-1] <= 256:
            options["enable_gqa"] = True
        elif q_len == 1:  # one query: fold the heads sharing a key/value head into the query axis
            q = q.reshape(batch, heads // groups, groups, dim)
        else:
            k = k[:, :, None].expand(batch, k.shape[1], groups, *k.shape[2:]).reshape(batch, heads, -1, dim)
            v = v[:, :, None].expand(batch, v.shape[1], groups, *v.shape[2:]).reshape(batch, heads, -1, dim)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=0.0, scale=scaling,
                                         is_causal=q_len > 1 and mask is None, **options)
    out = out.reshape(out.shape[0], -1, q_len, v.shape[-1]).transpose(1, 2).contiguous()
    return out.reshape(batch, q_len, -1).contiguous()


def _mask(attention: torch.Tensor, q_len: int) -> torch.Tensor | None:
    """transformers' sdpa mask: None without padding (sdpa's causal flag instead), else causal & not padding."""
    if bool(attention.all()):
        return None
    kv_len = attention.shape[1]
    rows = torch.arange(kv_len - q_len, kv_len, device=attention.device)[:, None]  # (q, 1): absolute positions
    causal = torch.arange(kv_len, device=attention.device)[None, :] <= rows  # (q, kv)
    return causal[None, None] & attention.bool()[:, None, None, :]  # (B, 1, q, kv)


@torch.no_grad()
def sample(model: Any, ids: torch.Tensor, attention: torch.Tensor, *, max_new_tokens: int, eos_ids: list[int],
           pad_id: int, greedy: bool, logits_log: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Prompt and generated ids (B, P + n) for left-padded ``ids`` (B, P), as ``model.generate`` returns them.

    Args:
        model: A model :func:`supports` accepts; a LoRA adapter must be off or merged into the base weights.
        ids: Prompt ids, left-padded.
        attention: 1 on prompt tokens, 0 on padding.
        max_new_tokens: Stop after this many tokens.
        eos_ids: A row stops at any of these; later positions hold ``pad_id``.
        pad_id: Filler for finished rows.
        greedy: Argmax instead of sampling from the full distribution.
        logits_log: Receives each step's logits (B, V), as ``generate(output_logits=True)`` returns them.
    """
    w = _Weights(model)
    cache = _Cache(len(w.layers), ids.shape[1] + max_new_tokens)
    eos = torch.tensor(eos_ids, device=ids.device)
    unfinished = torch.ones(ids.shape[0], dtype=torch.long, device=ids.device)
    positions = attention.long().cumsum(-1) - 1  # as generate: padding does not shift positions
    positions.masked_fill_(attention == 0, 1)
    logits = _forward(w, ids, positions, _mask(attention, ids.shape[1]), cache)
    out = ids
    while True:
        scores = logits.to(copy=True, dtype=torch.float32)
        if logits_log is not None:
            logits_log.append(scores)
        if greedy:
            tokens = torch.argmax(scores, dim=-1)
        else:
            tokens = torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)
        tokens = tokens * unfinished + pad_id * (1 - unfinished)
        out = torch.cat([out, tokens[:, None]], dim=-1)
        unfinished = unfinished & ~torch.isin(tokens, eos)
        if not bool(unfinished.any()) or out.shape[1] - ids.shape[1] >= max_new_tokens:
            return out
        attention = torch.cat([attention, attention.new_ones((attention.shape[0], 1))], dim=-1)
        positions = positions[:, -1:] + 1
        logits = _forward(w, tokens[:, None], positions, _mask(attention, 1), cache)


def generate_ids(model: Any, ids: torch.Tensor, attention: torch.Tensor, *, max_new_tokens: int, eos_ids: list[int],
                 pad_id: int, temperature: float, top_k: int, top_p: float, lean: bool = True) -> torch.Tensor:
    """What ``model.generate`` returns for these settings (temperature 0 = greedy): the lean loop's output where
    :func:`supports` says it mirrors ``generate`` and ``lean`` allows it (the caller's adapter is merged or off),
    else ``generate``'s own."""
    if lean and supports(model, temperature=temperature, top_k=top_k, top_p=top_p):
        return sample(model, ids, attention, max_new_tokens=max_new_tokens, eos_ids=eos_ids, pad_id=pad_id,
                      greedy=temperature == 0)
    kwargs: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": pad_id, "eos_token_id": eos_ids}
    if temperature > 0:
        kwargs.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=top_k)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    return model.generate(input_ids=ids, attention_mask=attention, **kwargs)
