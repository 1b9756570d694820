"""Printing an ablation's results (tables on stdout, on stderr beside --json), and for several
presets the speedup by scale, which scale.json beside the per-preset dirs records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, cast

from rich.markup import escape

from mousse.distributed.process import is_main_process

from .console import console, result_stream, show_wide, where
from .rich_tables import results_tables, scale_table

if TYPE_CHECKING:
    from mousse.experiments.results import Results
    from mousse.experiments.scale import ScaleSummary

# Each preset's results by its name; a plain ablation's (no --preset a,b) alone, under None.
ByPreset = dict[str | None, "Results"]


def named_presets(by_preset: ByPreset) -> dict[str, Results]:
    """Several presets' results, whose keys are then all preset names (for the engine's scale
    functions)."""
    return cast("dict[str, Results]", by_preset)


def show_results(results: Results, json_out: bool = False) -> None:
    """The convergence and step-time tables."""
    show_wide(results_tables(results), json_out)


def show_preset_title(preset: str, json_out: bool = False) -> None:
    """The line above one preset's results when an ablation covers several presets."""
    if not console.quiet:
        result_stream(json_out).print(f"[bold]preset {escape(preset)}[/]", highlight=False)


def scale_of(by_preset: ByPreset) -> ScaleSummary:
    """The speedup of every variant at every preset (the scale summary)."""
    from mousse.experiments.scale import scale_summary

    return scale_summary(named_presets(by_preset))


def record_presets(root: Path, presets: list[str] | None) -> None:
    """Before the runs: scale.json in `root` lists the presets (`report` finds them there)."""
    from mousse.experiments.scale import SCALE_FILE
    from mousse.train.fileio import write_json

    if presets and is_main_process():
        root.mkdir(parents=True, exist_ok=True)
        write_json(root / SCALE_FILE, {"presets": presets})


def show_scale(root: Path, by_preset: ByPreset, json_out: bool = False) -> None:
    """The speedup per scale (and scale.json beside the per-preset dirs)."""
    from mousse.experiments.scale import SCALE_FILE
    from mousse.train.fileio import write_json

    scale = scale_of(by_preset)
    if is_main_process():
        write_json(root / SCALE_FILE, scale)
    show_wide(scale_table(scale), json_out)
    where("scale", root / SCALE_FILE)
