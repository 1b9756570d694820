"""Ctrl-C and SIGTERM before a command can stop cleanly (start-up, and the commands that never
take the signals over): one line on stderr and the shell's exit code (130, 143), never a
traceback or a crash. Only the standard library here: this runs before anything else imports.

A Python exception raised inside an import can land in a C++ extension's initialization
(triton's, through nanobind), which aborts the process instead of unwinding; so a signal that
arrives while this process imports is held until the outermost import returns, and raised there.
`MOUSSE_TEST_SIGNAL` (tests) makes the process signal itself at a named point of its start-up."""

from __future__ import annotations

import builtins
import functools
import importlib
import os
import signal
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

SIGNALS = (signal.SIGINT, signal.SIGTERM)
# "SIGINT@import:triton": send SIGINT to this process at that point (`reached`), and append
# the point's name to the file MOUSSE_TEST_SIGNAL_LOG names, so a test knows it got there;
# "SIGKILL@StepLogged#12": at the 12th time the point is reached
TEST_SIGNAL_ENV, TEST_LOG_ENV = "MOUSSE_TEST_SIGNAL", "MOUSSE_TEST_SIGNAL_LOG"


class Interrupted(SystemExit):
    """A signal that ends the command: exit 128 + its number (SystemExit: files being written
    are cleaned up on the way out, and no traceback is printed)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


class _State:
    """The imports the main thread is in, what waits for the outermost to return, whether
    a signal already ends the command (the next ones are ignored: it is on its way), and how
    often the test signal's point was reached."""

    importing: ClassVar[list[str]] = []  # the modules being imported, outermost first
    held: BaseException | None = None
    ending = False
    reached = 0


def raise_when_safe(exc: BaseException) -> None:
    """Raise `exc` now, or when the main thread's outermost import returns if it is inside one;
    for signal handlers (they run on the main thread)."""
    if _State.importing:
        _State.held = _State.held or exc
        return
    raise exc


def signal_name(signum: int) -> str:
    """Ctrl-C for SIGINT (what users press), the signal's name otherwise."""
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def _interrupt(signum: int, frame: object) -> None:
    """Start-up's handler: the command ends with one line and 128 + signum."""
    if _State.ending:
        return
    _State.ending = True
    os.write(2, f"interrupted by {signal_name(signum)}\n".encode())  # no buffer: reentrant
    raise_when_safe(Interrupted(signum))


# Any: wraps builtins.__import__ and importlib.import_module alike, whose typeshed signatures
# differ; the wrapper stands in for either
def _holding(load: Callable[..., Any]) -> Callable[..., Any]:
    """`load` (the import machinery's entry) with signals held while it runs on the main thread."""
    main = threading.main_thread().ident

    @functools.wraps(load)
    def held_load(name: str, *args: Any, **kwargs: Any) -> Any:
        if threading.get_ident() != main:
            return load(name, *args, **kwargs)
        _State.importing.append(name)
        try:
            _reached_import(name)
            return load(name, *args, **kwargs)
        finally:
            _State.importing.pop()
            if not _State.importing and _State.held is not None:
                exc, _State.held = _State.held, None
                raise exc

    return held_load


def install() -> None:
    """First thing in the `mousse` process: imports hold signals, and Ctrl-C or SIGTERM ends the
    command in one line until the command takes them over (`interrupts.graceful_stop`)."""
    builtins.__import__ = _holding(builtins.__import__)
    importlib.import_module = _holding(importlib.import_module)
    for signum in SIGNALS:
        signal.signal(signum, _interrupt)
    reached("start")


def _reached_import(name: str) -> None:
    """The import of `name` starts: the point `import:NAME`, and `import:OUTER>NAME` while
    OUTER's import is under way (a C++ extension's initialization importing `name`)."""
    point = os.environ.get(TEST_SIGNAL_ENV, "").partition("@")[2]
    if point.startswith("import:"):
        outer, _, target = point.removeprefix("import:").rpartition(">")
        if target == name and (not outer or outer in _State.importing[:-1]):
            reached(point)


def reached(point: str) -> None:
    """A named point of start-up or of a run (an event's name); the MOUSSE_TEST_SIGNAL test
    hook signals this process there (once: the first time, or the N-th for `POINT#N`; import
    points: `_reached_import`)."""
    spec = os.environ.get(TEST_SIGNAL_ENV)
    at, _, count = spec.partition("@")[2].partition("#") if spec else ("", "", "")
    if not spec or at != point:
        return
    _State.reached += 1
    if _State.reached < int(count or 1):
        return
    del os.environ[TEST_SIGNAL_ENV]
    log = os.environ.get(TEST_LOG_ENV)
    if log:
        with Path(log).open("a") as fh:
            fh.write(point + "\n")
    os.kill(os.getpid(), signal.Signals[spec.partition("@")[0]])
