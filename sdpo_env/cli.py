"""What every ``python -m sdpo_env.<command>`` shares: ``--help``, error exit codes, Ctrl-C outside a loop, and
tables printed in the terminal and written as markdown.

Exit codes: 0 done, 2 bad input (our ``SdpoEnvError``, printed as one plain ``error:`` message, no traceback),
130 interrupted. Long loops checkpoint on Ctrl-C themselves (``StopRequest``); this catches the interrupt anywhere
else, such as while a model loads, and prints ``interrupted`` instead of a traceback.

SIGTERM (``kill PID``, ``timeout``, a batch scheduler's time limit) counts as a Ctrl-C: a run checkpoints and stops,
a bench asks its runs to do the same and waits for them, so no run goes on writing to its folder unsupervised.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.table import Table

from sdpo_env.errors import SdpoEnvError


def command_main(doc: str | None, argv: Sequence[str] | None, body: Callable[[list[str], Console], int], *,
                 interrupted: str, width: int = 140) -> int:
    """Runs ``body(args, console)`` as a command; returns its exit code.

    Args:
        doc: The command's help text (its module docstring), printed for ``-h`` / ``--help``.
        argv: The arguments; None reads ``sys.argv``.
        body: The command itself; returns its exit code.
        interrupted: What to tell the user when Ctrl-C stops the command outside a checkpointing loop.
        width: Console width when the output is not a terminal (pipes and logs get full tables).
    """
    console = Console(width=None if sys.stdout.isatty() else width)
    args = list(sys.argv[1:] if argv is None else argv)
    if any(a in ("-h", "--help") for a in args):
        print(doc or "")  # verbatim: rich markup would eat bracketed text such as agents=[sdpo,none]
        return 0
    try:
        with sigterm_as_ctrl_c():
            return body(args, console)
    except SdpoEnvError as exc:
        print(f"error: {exc}", file=sys.stderr)  # plain print: rich would re-wrap the lines users copy
        return 2
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # only there can signal handlers be set


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """Within the block SIGTERM does what Ctrl-C does (:func:`terminate_as_interrupt`); afterwards what it did."""
    previous = signal.signal(signal.SIGTERM, terminate_as_interrupt) if _in_main_thread() else None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def terminate_as_interrupt(signum: int, frame: Any) -> None:
    """A SIGTERM handler that does what Ctrl-C does at that moment: calls the SIGINT handler in force (a loop's
    checkpointing one, or Python's, which raises ``KeyboardInterrupt``); nothing where SIGINT is ignored. With no
    Python handler in force (SIG_DFL, or one set outside Python) it raises ``KeyboardInterrupt``, so SIGTERM still
    stops the command."""
    handler = signal.getsignal(signal.SIGINT)
    if callable(handler):
        handler(signal.SIGINT, frame)
    elif handler != signal.SIG_IGN:
        raise KeyboardInterrupt


class StopRequest:
    """Ctrl-C sets a flag that the loop honours at the next consistent point; a second Ctrl-C stops at once."""

    def __init__(self) -> None:
        self.requested = False

    def __enter__(self) -> StopRequest:
        # Outside the main thread no handler can be set: Ctrl-C then stops as Python's default does.
        self._previous = signal.signal(signal.SIGINT, self._handle) if _in_main_thread() else None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def table_section(console: Console, caption: str, head: Sequence[str], body: Sequence[Sequence[str]], *,
                  left: Sequence[str] = (), wrap: Sequence[str] = ()) -> list[str]:
    """Prints ``body`` as a table titled ``caption`` and returns the same as a markdown section (``## caption``, the
    table, a blank line). Columns named in ``left`` are left-justified, the rest right-justified (numbers); only
    those in ``wrap`` may break across lines, and a long word in them folds."""
    table = Table(title=caption)
    for h in head:
        table.add_column(h, justify="left" if h in left else "right", no_wrap=h not in wrap, overflow="fold")
    for row in body:
        table.add_row(*row)
    console.print(table)
    return [f"## {caption}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(row) + " |" for row in body), ""]
