"""The run folder: append-only JSONL logs, atomic checkpoints, and the summary.

Layout: ``config.yaml`` (resolved), ``interactions.jsonl`` (one line per interaction), ``metrics.jsonl`` (one line
per evaluation), ``summary.json``, ``checkpoint.pt``, ``snapshots/t<T>.pt`` (the run's state at each persona change
and every ``snapshot_every``), ``adapter/`` (peft format), the plots, and for a branch ``branch.json`` (where it
started). Lines are flushed as they are written, so a crash loses nothing already logged; a checkpoint records how
many lines it covers, and a resume truncates the logs back to it before continuing. ``.lock`` marks the folder as
being written (``RunFolder.claim``): a second process that would write the same folder (the same ``out_dir``, or a
resume of a run still going) stops with an error instead of interleaving its lines and checkpoints with the first's.
A bench claims a run's folder before it starts the run and hands the claim over (``hand_over``), so two benches over
one grid never start the same run.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import socket
import warnings
from pathlib import Path
from typing import IO, Any

import torch
import yaml

from sdpo_env.config import COMMAND_LINE
from sdpo_env.errors import ConfigError, Problem
from sdpo_env.llm.cache import CACHE_FILE

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; folders are not guarded there
    fcntl = None  # type: ignore[assignment]

BRANCHES_FILE = "branch.json"
_CLAIMED: dict[Path, IO[str]] = {}  # folders this process writes -> their open, locked .lock file
HANDED_OVER = "SDPO_ENV_RUN_FOLDER_LOCK"  # env: the descriptor of a claim a parent handed to this process


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


def write_json(path: Path, value: Any) -> None:
    """Writes ``value`` to ``path`` as indented JSON: NaN/inf as null, tensors and numpy scalars as numbers."""
    path.write_text(json.dumps(_clean(value), indent=2, ensure_ascii=False), encoding="utf-8")


def save_atomically(state: dict[str, Any], path: Path) -> None:
    """``torch.save`` through a temporary file: a crash mid-write leaves the previous file intact."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _load(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=False)  # our own file: learner state holds plain objects


class RunFolder:
    """Reads and writes one run's files."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.interactions = self.path / "interactions.jsonl"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoint = self.path / "checkpoint.pt"
        self.snapshots = self.path / "snapshots"
        self.summary = self.path / "summary.json"
        self.config = self.path / "config.yaml"
        self.lock = self.path / ".lock"

    def claim(self, key: str) -> None:
        """Marks the folder as written by this process until it calls ``release`` or ends, however it ends.

        An advisory lock (``flock``) on ``.lock``: the system drops it when the process dies, even by SIGKILL, so a
        crashed run never leaves a stale claim. Claiming a folder this process already holds does nothing.

        Args:
            key: The command-line key that named the folder (``out_dir`` or ``resume``), for the error.

        Raises:
            ConfigError: another process holds the folder; the message names it (pid and host).
        """
        where = self.path.resolve()
        if where in _CLAIMED or fcntl is None:
            return
        handle = self._handed_over()
        if handle is not None:  # the parent (a bench) claimed it for this process: no moment when it is free
            self._write_holder(handle)
            _CLAIMED[where] = handle
            return
        handle = self.lock.open("a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "a process that has not written its pid yet"
            handle.close()
            busy = (f"{self.path} is being written by another process ({holder}); wait for it to end, or stop it "
                    f"(Ctrl-C or SIGTERM write a checkpoint) and then resume={self.path}")
            raise ConfigError([Problem(COMMAND_LINE, key, busy)]) from None
        except OSError as exc:  # a file system without locks (some network mounts): run unguarded, and say so
            handle.close()
            warnings.warn(f"{self.path}: cannot lock {self.lock.name} ({exc}); nothing stops a second process from "
                          "writing this run folder at the same time", stacklevel=2)
            return
        self._write_holder(handle)
        _CLAIMED[where] = handle

    @staticmethod
    def _write_holder(handle: IO[str]) -> None:
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()

    def hand_over(self) -> int | None:
        """Gives up this process's claim (``claim`` first) to a child process it is about to start.

        Returns a descriptor of the locked ``.lock`` file for ``subprocess.Popen(pass_fds=[fd], env={HANDED_OVER:
        str(fd), ...})``; the child's ``claim`` adopts it, so the folder is never free between the two. Close the
        descriptor here once the child has started: the lock then lives as long as the child. None where there is
        no lock to hand over (no claim held: Windows, or a file system without locks).
        """
        handle = _CLAIMED.pop(self.path.resolve(), None)
        if handle is None:
            return None
        fd = os.dup(handle.fileno())  # the same open file, hence the same lock
        handle.close()
        os.set_inheritable(fd, True)
        return fd

    def _handed_over(self) -> IO[str] | None:
        """The descriptor ``hand_over`` passed to this process for this folder, if any, opened as a file."""
        given = os.environ.get(HANDED_OVER)
        if not given or not self.lock.is_file():
            return None
        try:
            same = os.path.samestat(os.fstat(int(given)), os.stat(self.lock))
        except (OSError, ValueError):
            return None
        if not same:
            return None
        del os.environ[HANDED_OVER]  # adopted once; nothing this process starts inherits the claim
        return os.fdopen(int(given), "a+", encoding="utf-8")

    def release(self) -> None:
        """Lets other processes write the folder again (after ``claim``)."""
        handle = _CLAIMED.pop(self.path.resolve(), None)
        if handle is not None:
            handle.close()  # closing the only descriptor drops the lock

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
        save_atomically(state, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any] | None:
        return _load(self.checkpoint) if self.checkpoint.is_file() else None

    def save_snapshot(self, state: dict[str, Any]) -> None:
        """Keeps the run's state before interaction ``state["t"]`` (a persona change, or every ``snapshot_every``):
        what a checkpoint holds, so the policy there can be judged again (``reevaluate at=T``) and a branch can start
        there (``branch at=T``)."""
        self.snapshots.mkdir(exist_ok=True)
        save_atomically(state, self.snapshots / f"t{state['t']}.pt")

    def snapshot_points(self) -> list[int]:
        """The interactions the run kept a snapshot of, in order."""
        found = (re.fullmatch(r"t(\d+)\.pt", p.name) for p in self.snapshots.glob("t*.pt"))
        return sorted(int(m.group(1)) for m in found if m)

    def load_snapshot(self, t: int) -> dict[str, Any]:
        return _load(self.snapshots / f"t{t}.pt")

    def state_at(self, at: int | None) -> dict[str, Any]:
        """The run's state after ``at`` interactions (a snapshot, or the checkpoint if it is there), by default the
        checkpoint's; an ``at`` the run kept no state of is an error that lists the ones it kept."""
        state = self.load_checkpoint()
        if state is None:
            raise FileNotFoundError(self.checkpoint)
        if at is None or at == state["t"]:
            return state
        kept = self.snapshot_points()
        if at not in kept:
            listed = ", ".join(str(k) for k in sorted({*kept, state["t"]}))
            raise ConfigError([Problem(COMMAND_LINE, "at", f"{self.path} kept its state after {listed} interactions "
                                                           f"(snapshots/: each persona change and every "
                                                           f"snapshot_every; and the latest checkpoint), not after "
                                                           f"{at}")])
        return self.load_snapshot(at)

    def copy_state_to(self, other: RunFolder, state: dict[str, Any]) -> None:
        """Copies what a resume from ``state`` (one of :meth:`state_at`'s) reads into ``other``: that state as the
        checkpoint, the interactions, evaluations and snapshots up to it, and the LLM cache; its resume then
        truncates the logs to that point."""
        other.path.mkdir(parents=True, exist_ok=True)
        other.save_checkpoint(state)
        for path in (self.interactions, self.metrics, self.path / CACHE_FILE):
            if path.is_file():
                shutil.copyfile(path, other.path / path.name)
        for t in self.snapshot_points():
            if t <= state["t"]:
                other.snapshots.mkdir(exist_ok=True)
                shutil.copyfile(self.snapshots / f"t{t}.pt", other.snapshots / f"t{t}.pt")

    def read_branches(self) -> list[dict[str, Any]]:
        """Where this run branched off (``branch.json``): each source run, the interaction it started from and the
        settings it changed (``{key: [before, after]}``), oldest first; empty for a run that is no branch."""
        path = self.path / BRANCHES_FILE
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []

    def write_branches(self, branches: list[dict[str, Any]]) -> None:
        write_json(self.path / BRANCHES_FILE, branches)

    def write_summary(self, summary: dict[str, Any]) -> None:
        write_json(self.summary, summary)
