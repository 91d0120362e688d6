"""Grows a trained tiny model into a deeper or wider one that computes exactly the same function.

A larger model trained from scratch needs a GPU (a 4.2M-parameter build step takes 29-43 s on the project's 2-core
CPU). Growing the trained model and refining the result gives the refinement more capacity at a CPU's cost:

    python -m sdpo_env.tiny.refine --out DIR --layers 8 --mlp 768     # grow the shipped model, then refine

- New layers are copies of the layer before them with the two projections that write to the residual stream (the
  attention's ``o_proj`` and the MLP's ``down_proj``) set to zero, so at first each adds nothing: it passes its
  input on. Training moves those projections first, then the rest of the layer.
- New MLP neurons start from the model's own random initialisation with their ``down_proj`` columns set to zero, so
  at first they read the residual stream and write nothing into it.

The grown model's logits equal the source's up to float rounding (tested).
"""

from __future__ import annotations

import copy

import torch
from transformers import PreTrainedModel

ZEROED = ("self_attn.o_proj.weight", "mlp.down_proj.weight")  # what a layer writes into the residual stream


def layer_plan(old: int, new: int) -> list[int | None]:
    """For each of ``new`` layers, the old layer it is (an int) or ``None`` for an inserted one.

    Inserted layers are spread evenly: each follows an old layer, the last one always among them.

    >>> layer_plan(6, 8)
    [0, 1, 2, None, 3, 4, 5, None]
    """
    if new < old:
        raise ValueError(f"cannot grow {old} layers into {new}")
    extra, plan = new - old, list[int | None]()
    for index in range(old):
        plan.append(index)
        plan.extend([None] * ((index + 1) * extra // old - index * extra // old))
    return plan


def grown(model: PreTrainedModel, layers: int | None = None, mlp: int | None = None,
          seed: int = 0) -> PreTrainedModel:
    """A copy of ``model`` (a Llama, or a model whose layers are named like a Llama's) with ``layers`` decoder
    layers and MLP width ``mlp`` (default: the model's own) that computes the same logits; ``seed`` draws the new
    neurons' input weights.

    Raises:
        ValueError: a size smaller than the model's.
    """
    config = copy.deepcopy(model.config)
    old_layers, old_mlp = config.num_hidden_layers, config.intermediate_size
    layers, mlp = layers or old_layers, mlp or old_mlp
    if mlp < old_mlp:
        raise ValueError(f"cannot grow an MLP of width {old_mlp} into {mlp}")
    plan = layer_plan(old_layers, layers)
    sources: list[int] = []  # the old layer each new one copies: itself, or for an inserted one the layer before it
    for kept in plan:
        sources.append(sources[-1] if kept is None else kept)
    config.num_hidden_layers, config.intermediate_size = layers, mlp
    with torch.random.fork_rng():  # the caller's random stream stays where it was
        torch.manual_seed(seed)
        bigger = type(model)(config).to(model.dtype)  # type: ignore[arg-type]  # .to() typed as a decorator
    old = model.state_dict()
    new = {name: tensor.clone() for name, tensor in bigger.state_dict().items()}
    for name, target in new.items():
        if not name.startswith("model.layers."):
            target.copy_(old[name])  # embeddings, final norm, head
            continue
        index, part = name.removeprefix("model.layers.").split(".", 1)
        value = old[f"model.layers.{sources[int(index)]}.{part}"]
        if plan[int(index)] is None and part in ZEROED:
            target.zero_()
        elif value.shape == target.shape:
            target.copy_(value)
        elif part == "mlp.down_proj.weight":  # (hidden, mlp): new neurons write nothing
            target.zero_()
            target[:, :old_mlp] = value
        else:  # gate_proj / up_proj (mlp, hidden): new neurons keep their random input weights
            target[:old_mlp] = value
    bigger.load_state_dict(new)
    bigger.generation_config = copy.deepcopy(model.generation_config)
    return bigger
