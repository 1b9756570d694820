"""How a command fails: its exit codes, and the user's errors as one line on stderr (exit 2)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer
from rich.markup import escape

from mousse.distributed.process import is_main_process, rank_prefix
from mousse.train.config import ConfigError
from mousse.train.data import DataError
from mousse.train.fileio import dumps
from mousse.train.optstate import CheckpointError

from .console import console

if TYPE_CHECKING:
    from mousse.experiments.results import RunRow
    from mousse.train.summary import RunSummary

USER_ERRORS = (ConfigError, DataError, CheckpointError)
EXIT_DIVERGED = 3
EXIT_WAITING = 4
EXIT_EXPECTATION = 5
EXIT_RUN_FAILED = 6  # an ablation run failed (a damaged checkpoint, a killed worker)


def diverged(run: RunSummary | RunRow) -> bool:
    """Whether a run (its summary, or its row of an ablation's results) diverged, or one of its
    budgets' cooldown branches did (whose run's status is its trunk's): exit EXIT_DIVERGED."""
    return "diverged" in (run["status"], *(b["status"] for b in run.get("budgets") or ()))


def fail(message: str, code: int = 2, json_out: bool = False) -> None:
    """One line on stderr and the exit code (2: the user's input was wrong; under torchrun the
    line names the rank); with --json also {"error", "exit_code"} on stdout for scripts."""
    console.quiet = False  # shown even on a rank that is otherwise silent
    console.print(
        f"[red]error:[/] {escape(rank_prefix() + message)}", highlight=False, soft_wrap=True
    )
    if json_out and is_main_process():
        typer.echo(dumps({"error": message, "exit_code": code}))
    raise typer.Exit(code)


@contextmanager
def user_errors(json_out: bool = False) -> Iterator[None]:
    """Errors of the user's input, and of the file system the user pointed at (a directory given
    as a file, a read-only dir, a name too long), as one line and exit 2."""
    try:
        yield
    except USER_ERRORS as exc:
        fail(str(exc), json_out=json_out)
    except OSError as exc:
        fail(os_error_line(exc), json_out=json_out)


STDOUT = "<stdout>"  # the file name of a failed write to stdout (app.NamedStdout)


def os_error_line(exc: OSError) -> str:
    """A file system error as one line naming its file; stdout's names the way out."""
    if exc.filename == STDOUT:
        return (
            f"cannot write the output to stdout ({exc.strerror}); redirect it where there is room"
        )
    where = f" ({exc.filename})" if exc.filename else ""
    return f"{exc.strerror or exc}{where}"
