"""The shared command wrapper: help, error exit codes and Ctrl-C outside a checkpointing loop, for every command."""

from __future__ import annotations

import os
import signal

import pytest

from sdpo_env import bench, compare, heatmap, offline, reevaluate, run
from sdpo_env.cli import command_main, terminate_as_interrupt
from sdpo_env.errors import SdpoEnvError

COMMANDS = {"run": run, "bench": bench, "offline": offline, "heatmap": heatmap, "reevaluate": reevaluate,
            "compare": compare}


def test_bad_input_exits_2_with_one_plain_message(capsys) -> None:
    def body(args, console):
        raise SdpoEnvError("scenario 'flp' not found; did you mean 'flip'?")

    assert command_main("doc", ["scenario=flp"], body, interrupted="stopped") == 2
    err = capsys.readouterr().err
    assert err == "error: scenario 'flp' not found; did you mean 'flip'?\n"


def test_ctrl_c_outside_a_loop_exits_130_with_the_message(capsys) -> None:
    def body(args, console):
        raise KeyboardInterrupt

    assert command_main("doc", [], body, interrupted="stopped; nothing written") == 130
    assert capsys.readouterr().err == "stopped; nothing written\n"


def test_sigterm_during_a_command_is_its_ctrl_c_and_the_old_handler_comes_back(capsys) -> None:
    def body(args, console):
        os.kill(os.getpid(), signal.SIGTERM)  # Python's SIGINT handler in force: the interrupt is raised here
        raise AssertionError("SIGTERM did not stop the command")

    def before(signum, frame):  # in force outside the command (and what hears it if the command sets none)
        pass

    previous = signal.signal(signal.SIGTERM, before)
    try:
        assert command_main("doc", [], body, interrupted="stopped by SIGTERM") == 130
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert capsys.readouterr().err == "stopped by SIGTERM\n"


@pytest.mark.parametrize("sigint", ["loop", "ignored", "default"])
def test_sigterm_does_what_ctrl_c_would(sigint) -> None:
    heard = []
    handler = {"loop": lambda signum, frame: heard.append(signum), "ignored": signal.SIG_IGN,
               "default": signal.SIG_DFL}[sigint]
    previous = signal.signal(signal.SIGINT, handler)
    try:
        terminate_as_interrupt(signal.SIGTERM, None)
        raised = False
    except KeyboardInterrupt:  # caught here, so a wrong one fails this test instead of aborting pytest
        raised = True
    finally:
        signal.signal(signal.SIGINT, previous)
    assert raised == (sigint == "default")
    assert heard == ([signal.SIGINT] if sigint == "loop" else [])


def test_other_errors_are_not_swallowed() -> None:
    def body(args, console):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        command_main("doc", [], body, interrupted="stopped")


def test_the_body_gets_the_arguments_and_its_code_is_returned() -> None:
    seen = []

    def body(args, console):
        seen.append(args)
        return 3

    assert command_main("doc", ["a=1", "b=2"], body, interrupted="stopped") == 3
    assert seen == [["a=1", "b=2"]]


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_prints_its_help(name, capsys) -> None:
    module = COMMANDS[name]
    assert module.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert f"python -m sdpo_env.{name}" in out
    assert out == module.__doc__ + "\n"  # verbatim: brackets such as agents=[sdpo,none] survive


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_reports_an_unknown_key_with_exit_2(name, capsys) -> None:
    assert COMMANDS[name].main(["no_such_key=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "no_such_key" in err
