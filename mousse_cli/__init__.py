"""The `mousse` command line: Typer app and Rich views over the `mousse` engine."""

import os
import signal
import sys
from pathlib import Path


def _quiet_interrupt(signum, frame):
    """Ctrl-C while the CLI starts (importing torch takes seconds): exit 130 at once, with no
    traceback (an exception raised inside a half-done import can fail again at exit)."""
    os._exit(130)


def is_cli_process() -> bool:
    """Whether this process is the `mousse` command (the console script or -m mousse_cli), not
    a program that imports the package."""
    return Path(sys.argv[0]).name == "mousse" or sys.orig_argv[1:3] == ["-m", "mousse_cli"]


if is_cli_process():  # `app.run_app` gives Ctrl-C back to the commands once they can answer it
    signal.signal(signal.SIGINT, _quiet_interrupt)
