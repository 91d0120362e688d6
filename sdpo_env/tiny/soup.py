"""Averages the weights of several models refined from one source (a model soup).

Refinements of one model that differ only in their seed follow the complaints about equally well on the whole but
miss different ones: which preference sits lowest on a probe depends on the seed (docs/tiny-model.md, the thirteenth
round). Models fine-tuned from one start tend to lie in one basin of the loss, so the mean of their weights is a
model too, and where their errors are each one's own rather than shared, the mean might make fewer of them. Measured
on the tiny model it does not (docs/tiny-model.md, the fourteenth round): the mean of two refinement seeds follows
the complaints about as well as they do, and its least followed preference is no higher than theirs on most draws.

    python -m sdpo_env.tiny.soup --out DIR A B            # the mean of A's and B's weights
    python -m sdpo_env.tiny.soup --out DIR A B --weights 3,1

The models must share their architecture (config.json) and tokenizer (tokenizer.json); the soup keeps the first
one's tokenizer, chat template and generation settings. Its build_info.json is the first model's with a ``soup``
entry: every source, its weight and its own refinements.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, PreTrainedModel, PreTrainedTokenizerFast

from sdpo_env.tiny import SHIPPED_MODELS, resolve_model_path
from sdpo_env.tiny.train import Refused

# config.json keys that say where or with what a model was saved, not what it computes
UNCOMPARED = frozenset({"_name_or_path", "transformers_version", "dtype", "torch_dtype"})


def averaged(states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of ``states`` (state dicts with the same names and shapes), weights normalised to sum to 1.
    Each tensor keeps the first state's dtype; the sum runs in float64.

    Raises:
        ValueError: no states, a weight count that differs from the states', a negative weight or all zero, or
            states whose names or shapes differ (the message names the first difference).
    """
    if not states:
        raise ValueError("no models to average")
    if len(weights) != len(states):
        raise ValueError(f"{len(weights)} weights for {len(states)} models")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights must be >= 0 and not all zero, got {', '.join(f'{w:g}' for w in weights)}")
    first = states[0]
    for index, state in enumerate(states[1:], start=2):
        missing, extra = sorted(first.keys() - state.keys()), sorted(state.keys() - first.keys())
        if missing or extra:
            raise ValueError(f"model {index} has other tensors than model 1: "
                             f"missing {missing[:3]}, extra {extra[:3]}")
        for name, tensor in first.items():
            if state[name].shape != tensor.shape:
                raise ValueError(f"model {index}'s {name} is {tuple(state[name].shape)}, model 1's "
                                 f"{tuple(tensor.shape)}")
    total = float(sum(weights))
    return {name: sum((state[name].double() * (w / total) for state, w in zip(states, weights, strict=True)),
                      torch.zeros_like(tensor, dtype=torch.float64)).to(tensor.dtype)
            for name, tensor in first.items()}


def _config(folder: Path) -> dict[str, Any]:
    if not (folder / "config.json").is_file():
        raise Refused(f"{folder}: no config.json there; give model folders (the --out of a build or a refinement)")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    return {key: value for key, value in config.items() if key not in UNCOMPARED}


def soup(sources: Sequence[Path], out: Path, weights: Sequence[float] | None = None) -> dict[str, Any]:
    """Saves into ``out`` the weighted mean of the models in ``sources`` (equal weights by default) and returns its
    build info (also in ``out/build_info.json``).

    Raises:
        Refused: fewer than two sources, a source that is no model folder, sources whose architecture or tokenizer
            differ, or weights :func:`averaged` refuses; all before anything is written.
    """
    if len(sources) < 2:
        raise Refused(f"give at least two model folders to average, got {len(sources)}")
    weights = [1.0] * len(sources) if weights is None else list(weights)
    configs = [_config(source) for source in sources]
    for source, config in zip(sources[1:], configs[1:], strict=True):
        differ = sorted(key for key in configs[0].keys() | config.keys() if configs[0].get(key) != config.get(key))
        if differ:
            raise Refused(f"{source}: another architecture than {sources[0]} (config.json differs in "
                          f"{', '.join(differ)}); only refinements of one model can be averaged")
    vocab = [(source / "tokenizer.json").read_bytes() if (source / "tokenizer.json").is_file() else None
             for source in sources]
    for source, text in zip(sources[1:], vocab[1:], strict=True):
        if text != vocab[0]:
            raise Refused(f"{source}: another tokenizer (tokenizer.json) than {sources[0]}")
    models: list[PreTrainedModel] = [AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
                                     for source in sources]
    try:
        mean = averaged([model.state_dict() for model in models], weights)
    except ValueError as exc:
        raise Refused(str(exc)) from None
    model = models[0]
    model.load_state_dict(mean)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)  # with its generation_config.json
    PreTrainedTokenizerFast.from_pretrained(sources[0]).save_pretrained(out)
    infos = []
    for source in sources:
        path = source / "build_info.json"
        infos.append(json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {})
    total = sum(weights)
    info = {**infos[0], "soup": [{"source": _name(source), "weight": round(w / total, 6),
                                   "refines": source_info.get("refines", [])}
                                  for source, w, source_info in zip(sources, weights, infos, strict=True)]}
    (out / "build_info.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _name(source: Path) -> str:
    """A shipped model's name (``tiny``, ``tiny-v2``) for its folder, so a soup's record reads the same wherever the
    package is installed; any other folder as given."""
    shipped = {folder.resolve(): name for name, folder in SHIPPED_MODELS.items()}
    return shipped.get(source.resolve(), str(source))


def _weights(text: str) -> list[float]:
    try:
        return [float(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"comma-separated numbers, one per model (e.g. 3,1), got {text!r}") from None


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sources", nargs="+", metavar="MODEL", type=lambda name: Path(resolve_model_path(name)),
                        help="model folders refined from one model (tiny: the shipped checkpoint)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--weights", type=_weights, default=None,
                        help="comma-separated weights, one per model (default: equal)")
    args = parser.parse_args(argv)
    try:
        info = soup(args.sources, args.out, args.weights)
    except Refused as exc:
        parser.error(str(exc))
    shares = ", ".join(f"{entry['weight']:.2f} {entry['source']}" for entry in info["soup"])
    print(f"averaged {len(args.sources)} models ({shares}); saved to {args.out}", flush=True)
    return info


if __name__ == "__main__":
    main()
