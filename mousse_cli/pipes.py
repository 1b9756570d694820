"""A reader that goes away (`mousse train ... 2>&1 | head -8`) must not stop a run: what would
have been printed to it is dropped, and training goes on to its summary and checkpoints. (Rich's
own answer to a closed pipe, kept for the commands that only print, is to exit 1.)"""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

from rich.console import Console


@contextmanager
def outliving_closed_pipes(*consoles: Console) -> Iterator[None]:
    """Meanwhile a closed pipe silences the console that wrote to it (and the stream, for every
    later write, the exit's flush included) instead of ending the process."""
    for console in consoles:
        console.on_broken_pipe = partial(_silence, console)  # type: ignore[method-assign]
    try:
        yield
    finally:
        for console in consoles:
            vars(console).pop("on_broken_pipe", None)


def _silence(console: Console) -> None:
    console.quiet = True
    silence_closed_pipes()


def silence_closed_pipes() -> None:
    """Point stdout and stderr, where their reader has gone, at /dev/null, so that every later
    write succeeds; a stream that still has a reader is left alone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            if _pipe_closed(fd):
                os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _pipe_closed(fd: int) -> bool:
    """Whether `fd` is a pipe whose reading end was closed (poll reports an error on it)."""
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))
