"""The CLI's stderr console and the small text helpers every command and view shares. Everything
printed through it goes to stderr; machine-readable results go to stdout from the commands."""

from __future__ import annotations

import math

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True)


def fmt(value, spec: str = ".4f", none: str = "-") -> str:
    """`value` formatted by `spec`; `none` for a missing value or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def duration(seconds: float | None) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def show_wide(renderable) -> None:
    """Print tables to stderr; in logs and pipes wide enough not to cut cells."""
    if console.is_terminal:
        console.print(renderable)
        return
    width, console.width = console.width, 160
    try:
        console.print(renderable)
    finally:
        console.width = width


def show_lines(lines: list[str]) -> None:
    """Print lines of Rich markup (what `check_cost` returns) as they are."""
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def notice(text: str) -> None:
    """A warning from the engine, as one yellow line."""
    console.print(f"[yellow]warning: {escape(text)}[/]", highlight=False, soft_wrap=True)
