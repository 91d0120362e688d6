"""The embedded default policy: a tiny Llama trained by this package on a synthetic style corpus.

``policy.model=tiny`` names the shipped checkpoint; any other name (a local folder or a Hugging Face id) is passed
through unchanged, so both load through the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` code.
Rebuild it with ``python -m sdpo_env.tiny.build``; measure it with ``python -m sdpo_env.tiny.probe``.
"""

from __future__ import annotations

from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent / "checkpoint"
TINY_NAME = "tiny"


def resolve_model_path(name: str) -> str:
    """The folder of the shipped tiny model for ``"tiny"``; any other model name or path unchanged."""
    return str(TINY_DIR) if name == TINY_NAME else name


__all__ = ["TINY_DIR", "TINY_NAME", "resolve_model_path"]
