"""The `mousse` command line: Typer app and Rich views over the `mousse` engine."""

import sys
from pathlib import Path

from . import startup


def is_cli_process() -> bool:
    """Whether this process is the `mousse` command (the console script or -m mousse_cli), not
    a program that imports the package."""
    return Path(sys.argv[0]).name == "mousse" or sys.orig_argv[1:3] == ["-m", "mousse_cli"]


if is_cli_process():  # before anything heavy imports: Ctrl-C and SIGTERM end start-up cleanly
    startup.install()
