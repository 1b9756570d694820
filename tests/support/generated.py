"""Checks of the lines `scripts/typed_fields.py` writes into a module (between the markers of
`knobs.rewrite_lines`): each one is there, and rewriting them changes nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

from mousse.optim import knobs


def assert_generated(
    source: Path, marker: str, lines: list[str], owner: str, tmp_path: Path
) -> Path:
    """`lines` are in `source` (named `owner` in the failure, with the script to run), and
    rewriting them after `marker` leaves a copy of it as it is. Returns that copy."""
    missing = [line for line in lines if f"    {line}\n" not in source.read_text()]
    assert not missing, f"{owner} lacks {missing}: run python scripts/typed_fields.py"
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    assert not knobs.rewrite_lines(copy, marker, lines), (
        f"{owner} differs from its source: run python scripts/typed_fields.py"
    )
    return copy
