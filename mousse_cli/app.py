"""The `mousse` Typer application: the commands, and usage errors as one line. Each command
parses and validates its input, calls the engine and renders (its module: <command>_cmd.py)."""

from __future__ import annotations

import io
import os
import sys
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperCommand, TyperGroup

import mousse
from mousse.distributed.process import env_world_size
from mousse.train.compat import RENAMED_FLAGS

from .ablate_cmd import ablate
from .bench_cmd import bench
from .console import console
from .errors import STDOUT, os_error_line
from .presets_cmd import presets
from .report_cmd import report
from .startup import reached
from .train_cmd import train

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer


class _FlagsWithoutType:
    """Help panels that show on/off flags (`--json`, `--compile/--no-compile`, `--help`) bare:
    Typer's rich help prints a `<bool>` placeholder after them as if they took a value."""

    # Any: click's Context and Parameter, which typer (vendoring click) does not export
    def get_params(self, ctx: Any) -> list[Any]:
        params: list[Any] = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""  # what the help panel prints for its type: nothing
        return params


class Command(_FlagsWithoutType, TyperCommand):
    """A `mousse` command (flags shown without a type)."""


class Group(_FlagsWithoutType, TyperGroup):
    """The `mousse` group (flags shown without a type)."""


app = typer.Typer(
    cls=Group,
    name="mousse",
    help="Optimizer ablations for language models around Mousse (Muon whitened by Shampoo's "
    "Kronecker factors, arXiv 2603.09697).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",  # for the help panels: a literal [ in help text is written \\[
)


def _version(value: bool) -> None:
    """--version: print it and exit before any command runs."""
    if value:
        typer.echo(f"mousse {mousse.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Optimizer ablations for language models around Mousse."""


# in the order `mousse --help` lists them, one line each (docstrings' line breaks would show)
app.command(
    cls=Command,
    short_help="Train one model (no arguments: tiny preset, builtin corpus, under a minute).",
)(train)
app.command(
    cls=Command, short_help="The model presets: size, lrs per optimizer, memory, time here."
)(presets)
app.command(
    cls=Command, short_help="Sweep Mousse's knobs (and baselines) with the same budget and compare."
)(ablate)
app.command(
    cls=Command, short_help="Time optimizer steps: Mousse against Muon, torch.optim.Muon and AdamW."
)(bench)
app.command(
    cls=Command, short_help="Re-render an ablation's tables from disk (and check expectations)."
)(report)

# Click's exception classes, reached through typer's public BadParameter (newer typer vendors click).
_clicks = sys.modules[typer.BadParameter.__module__]


def usage_error_line(exc: Any) -> str:  # Any: click's UsageError, not exported by typer
    """A usage error as one line: what is wrong, the closest valid option or command, where the
    help is (click prints four lines and a list of possibilities)."""
    ctx = exc.ctx
    where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
    if isinstance(exc, _clicks.NoSuchOption):  # click's possibilities: the closest first
        if exc.option_name in RENAMED_FLAGS:
            new = RENAMED_FLAGS[exc.option_name]
            return f"error: {exc.option_name} is now {new}{where}"
        hint = f"; did you mean {exc.possibilities[0]}?" if exc.possibilities else ""
        return f"error: no such option {exc.option_name}{hint}{where}"
    message = exc.format_message().replace("\n", " ").rstrip(".")
    return f"error: {message[:1].lower()}{message[1:]}{where}"


def run_app() -> None:
    """The app with usage errors (unknown option or command, bad value) as one line, exit 2."""
    reached("command")  # the test hook's point between the imports and the command
    try:
        code = app(standalone_mode=False)  # returns typer.Exit's code; Abort and errors raise
    except _clicks.UsageError as exc:
        code = 2
        if not isinstance(exc, getattr(_clicks, "NoArgsIsHelpError", ())):  # that one: help shown
            console.print(
                usage_error_line(exc), style="red", highlight=False, markup=False, soft_wrap=True
            )
    except _clicks.ClickException as exc:
        code = exc.exit_code
        console.print(
            f"error: {exc.format_message()}",
            style="red",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
    except typer.Abort:
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


def main() -> None:
    """The console script `mousse` (and `python -m mousse_cli`); under torchrun each rank leaves
    its process group cleanly."""
    name_stdout_in_its_errors()
    tolerate_narrow_encodings()
    if env_world_size() > 1:  # one rank of a torchrun job: leave the process group cleanly
        from mousse.distributed.process import run_rank

        run_rank(run_app)
    try:
        run_app()
    except BrokenPipeError:
        reader_gone()
    except OSError as exc:  # one the commands do not catch: the final results written
        if exc.filename != STDOUT:
            raise
        console.print(f"error: {os_error_line(exc)}", style="red", markup=False, soft_wrap=True)
        stdout_to_devnull()
        sys.exit(2)


class NamedStdout(io.FileIO):
    """stdout's descriptor, whose write errors name it (a full disk or `> /dev/full`: one line
    saying so, not a traceback); a reader gone stays a BrokenPipeError."""

    def write(self, data: ReadableBuffer) -> int:
        try:
            return super().write(data)
        except BrokenPipeError:
            raise
        except OSError as exc:
            raise OSError(exc.errno, exc.strerror, STDOUT) from None


def name_stdout_in_its_errors() -> None:
    """sys.stdout as it was (encoding, errors, buffering), writing through `NamedStdout`."""
    old = sys.stdout
    if old is None or not hasattr(old, "fileno"):
        return
    raw = NamedStdout(old.fileno(), "w", closefd=False)
    sys.stdout = io.TextIOWrapper(
        io.BufferedWriter(raw),
        encoding=old.encoding,
        errors=old.errors,
        line_buffering=bool(old.line_buffering),
    )


def tolerate_narrow_encodings() -> None:
    """Where the output encoding cannot write a character of the results (Δ, ± under
    PYTHONIOENCODING=latin-1 or ascii), write '?' instead of ending with a traceback (one
    character for one: tables stay aligned)."""
    for stream in (sys.stdout, sys.stderr):
        if "utf" not in (getattr(stream, "encoding", None) or "utf").lower():
            stream.reconfigure(errors="replace")  # type: ignore[union-attr]


def reader_gone() -> None:
    """stdout's reader left (`mousse report DIR | head -1`) during a write that neither Rich nor
    click handles: exit 1 quietly, as they do, with stdout pointed at /dev/null so that the
    final flush cannot fail again."""
    stdout_to_devnull()
    sys.exit(1)


def stdout_to_devnull() -> None:
    """Point stdout at /dev/null, so that the final flush of what it could not take succeeds."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
