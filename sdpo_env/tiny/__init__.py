"""The embedded default policy: a tiny Llama trained by this package on a synthetic style corpus.

``policy.model=tiny`` names the shipped checkpoint and ``policy.model=tiny-v2`` a refinement of it that follows the
complaints more often (not the default yet: SDPO's defaults were set on ``tiny``); any other name (a local folder or a
Hugging Face id) is passed through unchanged, so all load through the same ``AutoModelForCausalLM`` / ``AutoTokenizer``
code.
Rebuild it with ``python -m sdpo_env.tiny.build``; measure it with ``python -m sdpo_env.tiny.probe``.
"""

from __future__ import annotations

from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent / "checkpoint"
TINY_NAME = "tiny"
# Every shipped checkpoint by name: the default and its refinement (docs/tiny-model.md, "A sixteenth round").
SHIPPED_MODELS = {TINY_NAME: TINY_DIR, "tiny-v2": TINY_DIR.with_name("checkpoint-v2")}


def resolve_model_path(name: str) -> str:
    """The folder of a shipped tiny model for its name (``"tiny"``, ``"tiny-v2"``); any other name or path unchanged."""
    folder = SHIPPED_MODELS.get(name)
    return str(folder) if folder is not None else name


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


__all__ = ["SHIPPED_MODELS", "TINY_DIR", "TINY_NAME", "model_folder_problem", "resolve_model_path"]
