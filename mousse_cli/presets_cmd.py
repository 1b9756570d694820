"""`mousse presets`: the model presets and their recipes at once; with --measure, what each would
cost here (a probe of this machine: tens of seconds)."""

from __future__ import annotations

import typer

from mousse.train.config import resolve
from mousse.train.fileio import dumps

from .console import show_wide
from .errors import user_errors
from .preset_rows import builtin_train_tokens, preset_row
from .rich_tables import presets_table


def presets(
    json_out: bool = typer.Option(False, "--json", help="Print as JSON on stdout."),
    measure: bool = typer.Option(
        False,
        "--measure",
        help="Also time a Mousse run of each preset on this machine: a measured probe for the "
        "small presets, FLOPs at the measured matmul rate for the others (tens of seconds).",
    ),
    device: str = typer.Option(
        "auto", "--device", help="With --measure, time on this device: auto | cpu | cuda."
    ),
) -> None:
    """List model presets with parameter counts, recipe (the block matrices' lr for every
    optimizer, and what it was tuned for) and memory estimate, at once; with --measure, also the
    time a Mousse run of each would take on this machine."""
    from mousse.train.estimate import estimate
    from mousse.train.machine import pick_device
    from mousse.train.presets import PRESETS

    with user_errors():
        where = pick_device(device)
        builtin = builtin_train_tokens()
        costs = {
            name: estimate(resolve({"preset": name, "device": device}), p.vocab_size, where)
            for name, p in PRESETS.items()
            if measure
        }
    rows = [preset_row(p, costs.get(p.name), where, builtin) for p in PRESETS.values()]
    if json_out:
        typer.echo(dumps(rows))
    else:
        show_wide(presets_table(rows))
