"""Ctrl-C and SIGTERM during training: stop after the current step, and the shell's exit code."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from .console import console
from .startup import Interrupted, raise_when_safe, signal_name


@contextmanager
def graceful_stop() -> Iterator[threading.Event]:
    """Ctrl-C or SIGTERM (what Slurm and Kubernetes send before killing a job) asks the engine to
    stop after the current step (it checkpoints), or at the next micro batch when the rest of the
    step would take more than a few seconds (the step is dropped; the run resumes from the one
    before); a second signal interrupts at once, exiting with its own code (130 for Ctrl-C, 143
    for SIGTERM). The stop flag's `signal` attribute says which signal came first (its exit code:
    128 + number)."""
    stop = threading.Event()
    stop.signal = None  # type: ignore[attr-defined]

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():  # not inside an import (`startup`); SIGTERM: the shell's code is 143
            raise_when_safe(KeyboardInterrupt() if signum == signal.SIGINT else Interrupted(signum))
            return
        stop.signal = signum  # type: ignore[attr-defined]
        stop.set()
        console.print(
            f"[yellow]{signal_name(signum)}: stopping after this step, or sooner if it is long (again to abort)[/]"
        )

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def interrupted_code(stop: threading.Event) -> int:
    """130 after Ctrl-C, 143 after SIGTERM: the shell's codes for the two signals."""
    return 128 + int(getattr(stop, "signal", None) or signal.SIGINT)
