"""The run folder's claim: one process writes a folder at a time, and a dead process never leaves a stale claim."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sdpo_env.errors import ConfigError
from sdpo_env.runfolder import HANDED_OVER, RunFolder

ROOT = Path(__file__).resolve().parents[1]
HOLD = ("import sys; from sdpo_env.runfolder import RunFolder; RunFolder(sys.argv[1]).claim('out_dir'); "
        "print('claimed', flush=True); sys.stdin.read()")  # holds the folder until its stdin closes


TRY = ("import sys; from sdpo_env.errors import ConfigError; from sdpo_env.runfolder import RunFolder\n"
       "try:\n    RunFolder(sys.argv[1]).claim('out_dir'); print('claimed')\n"
       "except ConfigError as e:\n    print(e.problems[0].message)")  # claims, says what happened, ends


def _claim_elsewhere(folder: Path) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(folder)], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout


def holding(folder: Path) -> subprocess.Popen:
    """Another process that claims ``folder`` and holds it until its stdin closes (``communicate("")``)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "claimed\n"
    return proc


def test_a_folder_another_process_writes_is_refused_with_its_pid(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    holder = holding(folder.path)
    try:
        with pytest.raises(ConfigError) as caught:
            folder.claim("resume")
        problem = caught.value.problems[0]
        assert problem.key == "resume"
        assert f"{folder.path} is being written by another process (pid {holder.pid} on " in problem.message
        assert f"resume={folder.path}" in problem.message
    finally:
        holder.communicate("")  # ends it normally
    folder.claim("resume")  # free once the other process has ended
    folder.release()


def test_a_killed_process_leaves_no_claim_behind(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    holder = holding(folder.path)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    folder.claim("out_dir")  # no stale lock: the system dropped it with the process
    folder.release()


def test_this_process_may_claim_again_and_others_may_claim_after_release(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.claim("out_dir")
    try:
        RunFolder(tmp_path / "run" / ".." / "run").claim("resume")  # the same folder, spelled differently: held already
        assert "is being written by another process" in _claim_elsewhere(folder.path)
    finally:
        folder.release()
    assert _claim_elsewhere(folder.path) == "claimed\n"


def test_a_claim_handed_to_a_child_is_never_free_in_between(tmp_path) -> None:
    folder = RunFolder(tmp_path / "run")
    folder.claim("out_dir")
    fd = folder.hand_over()  # as a bench does before it starts a run
    assert "is being written by another process" in _claim_elsewhere(folder.path)  # still held, through fd
    try:
        child = subprocess.Popen([sys.executable, "-c", HOLD, str(folder.path)], cwd=ROOT, stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, pass_fds=(fd,),
                                 env={**os.environ, HANDED_OVER: str(fd)})
    finally:
        os.close(fd)
    assert child.stdout is not None and child.stdout.readline() == "claimed\n"  # it adopted the claim
    try:
        assert f"another process (pid {child.pid} on " in _claim_elsewhere(folder.path)  # and holds it alone
    finally:
        child.communicate("")
    assert _claim_elsewhere(folder.path) == "claimed\n"
