"""The embedded default policy: a tiny Llama trained by this package on a synthetic style corpus.

``policy.model=tiny`` names the first shipped checkpoint, ``policy.model=tiny-v2`` a refinement of it that follows
the complaints more often, and ``policy.model=tiny-v3`` the weighted mean of the two (1:3): the default
(``DEFAULT_MODEL``), the one that meets every acceptance figure, and learns the shipped users as well as ``tiny`` with
the anchor its ``sdpo_env.yaml`` sets (``tiny`` was the default until 7 December 2026; most figures in the docs were
measured on it). Any other name (a local folder or a Hugging Face id) is passed through unchanged, so all load through
the same ``AutoModelForCausalLM`` / ``AutoTokenizer`` code.
Rebuild ``tiny`` with ``python -m sdpo_env.tiny.build``; measure a model with ``python -m sdpo_env.tiny.probe``.
"""

from __future__ import annotations

from pathlib import Path

TINY_DIR = Path(__file__).resolve().parent / "checkpoint"
TINY_NAME = "tiny"
# Every shipped checkpoint by name: the default, its refinement (docs/tiny-model.md, "A sixteenth round") and their
# weighted mean ("An eighteenth round"; python -m sdpo_env.tiny.soup tiny tiny-v2 --weights 1,3 makes it again).
SHIPPED_MODELS = {TINY_NAME: TINY_DIR, "tiny-v2": TINY_DIR.with_name("checkpoint-v2"),
                  "tiny-v3": TINY_DIR.with_name("checkpoint-v3")}
# The policy every command uses unless told otherwise (``policy.model=``, ``--model``): the shipped model that meets
# the acceptance figures (README, "The embedded default model").
DEFAULT_MODEL = "tiny-v3"


def resolve_model_path(name: str) -> str:
    """The folder of a shipped tiny model for its name (``"tiny"``, ``"tiny-v2"``, ``"tiny-v3"``); any other name or
    path unchanged."""
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


__all__ = ["DEFAULT_MODEL", "SHIPPED_MODELS", "TINY_DIR", "TINY_NAME", "model_folder_problem", "resolve_model_path"]
