"""The run folder: append-only JSONL logs, atomic checkpoints, and the summary.

Layout: ``config.yaml`` (resolved), ``interactions.jsonl`` (one line per interaction), ``metrics.jsonl`` (one line
per evaluation), ``summary.json``, ``checkpoint.pt``, ``adapter/`` (peft format) and the plots. Lines are flushed as
they are written, so a crash loses nothing already logged; a checkpoint records how many lines it covers, and a
resume truncates the logs back to it before continuing.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import torch
import yaml


def _clean(value: Any) -> Any:
    """JSON-safe: NaN/inf become null; tensors and numpy scalars become numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RunFolder:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.interactions = self.path / "interactions.jsonl"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"
        self.summary = self.path / "summary.json"
        self.config = self.path / "config.yaml"

    def write_config(self, config: dict[str, Any]) -> None:
        self.config.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True), encoding="utf-8")

    def read_config(self) -> dict[str, Any]:
        return yaml.safe_load(self.config.read_text(encoding="utf-8"))

    def append(self, path: Path, record: dict[str, Any]) -> None:
        with path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(_clean(record), ensure_ascii=False) + "\n")
            f.flush()

    def read_jsonl(self, path: Path) -> list[dict[str, Any]]:
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def truncate(self, path: Path, n_lines: int) -> None:
        """Keeps the first ``n_lines`` lines (those a checkpoint covers)."""
        if not path.is_file():
            path.touch()
            return
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        path.write_text("".join(lines[:n_lines]), encoding="utf-8")

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        """Writes the checkpoint atomically: a crash mid-write leaves the previous one intact."""
        tmp = self.checkpoint.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint.is_file():
            return None
        return torch.load(self.checkpoint, weights_only=False)  # our own file: learner state holds plain objects

    def write_summary(self, summary: dict[str, Any]) -> None:
        self.write_json(self.summary, summary)

    def write_json(self, path: Path, value: Any) -> None:
        """Writes ``value`` as indented JSON (NaN as null)."""
        path.write_text(json.dumps(_clean(value), indent=2, ensure_ascii=False), encoding="utf-8")
