"""The `mousse` Typer application: parse, validate, call the engine, render."""

from __future__ import annotations

import typer

import mousse

app = typer.Typer(
    name="mousse",
    help="Optimizer ablations for language models around Mousse (Muon whitened by Shampoo's factors).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"mousse {mousse.__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Optimizer ablations for language models around Mousse."""


def main() -> None:
    app()
