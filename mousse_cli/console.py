"""The CLI's two streams and the small text helpers every command and view shares: `console`
(stderr) for progress, live views, warnings and errors; `out` (stdout) for results, so that a
pipe or a redirect gets the result alone."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.console import Console, RenderableType
from rich.markup import escape

if TYPE_CHECKING:
    from pathlib import Path

    from rich.table import Table
    from rich.text import Text

console = Console(stderr=True, emoji=False)  # ":llama:" in a path is no emoji
out = Console(emoji=False)


def fmt(value: object, spec: str = ".4f", none: str = "-") -> str:
    """`value` formatted by `spec`; `none` for a missing value or NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return none
    return format(value, spec)


def clock(seconds: float | None) -> str:
    """Seconds as m:ss, or h:mm:ss from an hour on; '-' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(seconds)
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def result_stream(json_out: bool = False) -> Console:
    """Where a command's human-readable result goes: stdout, or stderr when stdout carries the
    JSON form (--json)."""
    return console if json_out else out


def show_wide(renderable: RenderableType, json_out: bool = False) -> None:
    """Print a result (tables) on `result_stream`; in logs and pipes wide enough not to cut
    cells. Nothing on a rank whose console is quiet (torchrun)."""
    stream = result_stream(json_out)
    if console.quiet:
        return
    if stream.is_terminal:
        stream.print(fit_width(renderable, stream))
        return
    width, stream.width = stream.width, 160
    try:
        stream.print(renderable)
    finally:
        stream.width = width


# Terminal columns a table needs per column (its border and padding, and four characters of its
# cells): narrower, its columns shrink to empty boxes, so it is printed as plain lines instead.
MIN_COLUMN_WIDTH = 7


def fit_width(renderable: RenderableType, stream: Console) -> RenderableType:
    """`renderable` as it reads at `stream`'s width: each table (alone or in a Group) that the
    width would squeeze below a few characters a column becomes plain lines, one cell a line."""
    from rich.console import Group
    from rich.measure import Measurement
    from rich.table import Table

    if isinstance(renderable, Group):
        return Group(*(fit_width(r, stream) for r in renderable.renderables), fit=renderable.fit)
    if not isinstance(renderable, Table):
        return renderable
    need = Measurement.get(stream, stream.options.update_width(10**4), renderable).minimum
    if stream.width >= min(need, MIN_COLUMN_WIDTH * len(renderable.columns)):
        return renderable
    return table_lines(renderable)


def table_lines(table: Table) -> Text:
    """A Rich table as plain lines: its title, then per row each non-empty cell as 'header: value',
    the first in bold and the others indented under it, then its caption. Wraps at any width."""
    from rich.text import Text

    def markup(cell: RenderableType) -> str:
        return cell.markup if isinstance(cell, Text) else str(cell)

    columns = [(markup(c.header), [markup(cell) for cell in c.cells]) for c in table.columns]
    lines = [f"[bold]{markup(table.title)}[/]"] if table.title else []
    for row in range(table.row_count):
        (head, first), *rest = columns
        lines.append(f"[bold]{head}: {first[row]}[/]")
        lines += [
            f"  {header}: " + "\n    ".join(cells[row].splitlines())
            for header, cells in rest
            if cells[row].strip()
        ]
    if table.caption:
        lines.append(markup(table.caption))
    return Text.from_markup("\n".join(lines))


def show_lines(lines: list[str]) -> None:
    """Print lines of Rich markup (what `check_cost` returns) as they are."""
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def where(label: str, path: Path) -> None:
    """`label: path`, on one line however narrow the terminal: a path stays copyable."""
    console.print(f"{label}: {path}", highlight=False, soft_wrap=True, markup=False)


def notice(text: str) -> None:
    """A warning from the engine, as one yellow line."""
    console.print(f"[yellow]warning: {escape(text)}[/]", highlight=False, soft_wrap=True)
