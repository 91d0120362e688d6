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


def model_folder_problem(path: str) -> str | None:
    """What is wrong with ``path`` (a resolved model name) as a local model folder: a folder without
    ``config.json`` (a refinement still running, say) or a path that does not exist. None if nothing is, or if it
    names a hub model (``Qwen/Qwen3-0.6B``), which the loader looks up itself."""
    folder = Path(path).expanduser()
    if folder.is_dir():
        return None if (folder / "config.json").is_file() else (
            "no config.json in that folder; give a model folder (the --out of a finished build or refinement)")
    if folder.exists() or folder.is_absolute() or path.startswith((".", "~")):
        return "no such model folder"
    return None


__all__ = ["TINY_DIR", "TINY_NAME", "model_folder_problem", "resolve_model_path"]
