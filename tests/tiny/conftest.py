"""Fixtures of the tiny model's tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

import sdpo_env.tiny.refine as refine_module
from sdpo_env.tiny.corpus import Messages
from sdpo_env.tiny.refine import RefineConfig, refine_examples
from sdpo_env.tiny.refine import main as refine_main


@dataclass
class RefineCli:
    """``python -m sdpo_env.tiny.refine ARGS`` up to the point where it would refine (nothing is trained)."""

    out: Path
    capsys: pytest.CaptureFixture[str]
    given: list[RefineConfig]

    def config(self, *args: str) -> RefineConfig:
        """The settings the command would refine with."""
        refine_main(["--out", str(self.out), *args])
        return self.given.pop()

    def refused(self, *args: str) -> str:
        """What the command prints when it refuses ``args`` (a usage error, exit code 2)."""
        self.capsys.readouterr()
        with pytest.raises(SystemExit) as stopped:
            refine_main(["--out", str(self.out), *args])
        assert stopped.value.code == 2 and not self.given
        return self.capsys.readouterr().err


@pytest.fixture
def refine_cli(tmp_path, monkeypatch, capsys) -> RefineCli:
    given: list[RefineConfig] = []
    monkeypatch.setattr(refine_module, "refine", lambda source, out, cfg, **_: given.append(cfg))
    return RefineCli(tmp_path / "refined", capsys, given)


@pytest.fixture
def refine_draws(monkeypatch) -> list[list[Messages]]:
    """Each call's examples, as :func:`sdpo_env.tiny.refine.refine` draws them (the calls go on unchanged)."""
    calls: list[list[Messages]] = []

    def recorded(*args, **kwargs) -> list[Messages]:
        calls.append(refine_examples(*args, **kwargs))
        return list(calls[-1])

    monkeypatch.setattr(refine_module, "refine_examples", recorded)
    return calls
