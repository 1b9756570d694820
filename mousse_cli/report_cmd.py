"""`mousse report`: an ablation's tables again from disk, its plots, and expectations for CI."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, cast

import typer
from rich.markup import escape

from mousse.train.config import ConfigError
from mousse.train.fileio import dumps, read_json, shaped

from .ablate_run import check_timing_budget, timed
from .console import console, show_wide, where
from .errors import EXIT_EXPECTATION, user_errors
from .results_out import ByPreset, named_presets, scale_of, show_preset_title, show_results
from .rich_tables import scale_table
from .trust import TRUST_MODEL_CODE, check_trusted

if TYPE_CHECKING:
    from mousse.experiments.results import Results
    from mousse.experiments.scale import ScaleSummary
    from mousse.experiments.sweep import Ablation

FORMATS = ("table", "markdown", "json", "csv")


def report(
    ablation_dir: Path = typer.Argument(
        ...,
        help="An ablation directory (holds ablation.toml), the root of `ablate --preset a,b` (holds scale.json), a results file (results.json or `ablate --json`'s output: the tables and, with --plot, the forest plot; its runs' curves are not in it), or a scale summary (a scale root's scale.json: the speedup-by-scale table and, with --plot, its figure).",
    ),
    fmt: str = typer.Option("table", "--format", help="table | markdown | json | csv."),
    plot: Path | None = typer.Option(
        None,
        "--plot",
        help="Also draw val loss vs step and vs time to this PNG (needs matplotlib); with tuning, the tuning curves beside it; with --budgets, the speedup vs budget; for several scales, the speedup vs parameters.",
    ),
    retime: bool = typer.Option(
        False,
        "--retime",
        help="Time every variant's step again, side by side in this process on this machine, and take the overheads from that pass.",
    ),
    timing_budget: float | None = typer.Option(
        None,
        "--timing-budget",
        help="Seconds for --retime (default: 3% of the ablation's training time, at least 10).",
    ),
    expect: list[str] | None = typer.Option(
        None,
        "--expect",
        help='A CI gate, repeatable: "mousse < muon" (mean final loss), "mousse < muon significant" (and Welch p < 0.05), "speedup(mousse) >= 1.05", "speedup_low(mousse) > 1", "overhead(mousse) <= 10", with --budgets "speedup_at(mousse, 1) >= 1.1" (speedup in data at 1x). Exit 5 when one fails (docs/ci.md).',
    ),
    against: str | None = typer.Option(
        None,
        "--against",
        help="Compare every variant with this variant instead of the baseline (e.g. --against mousse: what each change to Mousse costs or gains).",
    ),
    trust_model_code: bool = TRUST_MODEL_CODE,
) -> None:
    """Re-render an ablation's tables from disk (and check expectations, for CI).

    Exit codes: 0 fine, 2 bad input, 5 an --expect failed."""
    with user_errors():
        if fmt not in FORMATS:
            raise ConfigError(f"bad --format {fmt!r}; choose one of {', '.join(FORMATS)}")
        check_timing_budget(timing_budget)
        if plot is not None:
            from .plot import check_plot_path

            check_plot_path(plot)
        # a bad expression is refused before anything is retimed, plotted or printed
        check = partial(check_expressions, expect) if expect else None
        loaded = (
            load_results_file(ablation_dir, plot, retime, check, against)
            if ablation_dir.is_file()
            else load_results(
                ablation_dir, plot, retime, timing_budget, trust_model_code, against, check
            )
        )
    if not isinstance(loaded, tuple):  # a scale summary alone
        print_scale(loaded, fmt)
        return
    scaled, by_preset = loaded
    print_results(by_preset, scaled, fmt)
    if expect:
        gate(expect, by_preset)


def load_results(
    ablation_dir: Path,
    plot: Path | None,
    retime: bool,
    timing_budget: float | None,
    trust_model_code: bool = False,
    against: str | None = None,
    check: Callable[[Results], None] | None = None,
) -> tuple[bool, ByPreset]:
    """(whether `ablation_dir` is the root of several presets, each preset's results; None for
    a plain ablation dir), retimed (model code it names imported only when trusted) and plotted
    when asked; compared with the variant `against` instead of the baseline when given. `check`
    sees each preset's results first, before anything is retimed or written."""
    from mousse.experiments.scale import preset_dirs

    scaled = not (ablation_dir / "ablation.toml").is_file() and bool(preset_dirs(ablation_dir))
    dirs = preset_dirs(ablation_dir) if scaled else {None: ablation_dir}
    ablations = {preset: open_ablation(path) for preset, path in dirs.items()}
    if check is not None:
        for ablation in ablations.values():
            check(ablation.results(against))
    for ablation in ablations.values():  # --retime builds the models
        if retime:
            where = str(ablation.dir / "ablation.toml")
            check_trusted(ablation.plan.to_dict(), None, trust_model_code, where)
    by_preset: ByPreset = {}
    for preset, ablation in ablations.items():
        if retime:
            ablation.trained = True
            timed(ablation, timing_budget)
        by_preset[preset] = results = ablation.results(against)
        if plot is not None:
            draw_plots(ablation, results, preset_plot(plot, preset))
    if scaled and plot is not None:
        draw_scale(scale_of(by_preset), plot)
    return scaled, by_preset


def load_results_file(
    path: Path,
    plot: Path | None,
    retime: bool,
    check: Callable[[Results], None] | None = None,
    against: str | None = None,
) -> tuple[bool, ByPreset] | ScaleSummary:
    """(whether the file holds several presets, each preset's results) from a results file, with
    every variant's difference interval filled in for files older than it; plotted from what
    the file holds when asked (no curves: the forest plot and the tuning curves), after `check`
    saw each preset's results. A scale summary alone (a scale root's scale.json) as it is,
    its speedup against parameters plotted when asked."""
    read = read_results_file(path)
    if not isinstance(read, tuple):
        refuse_per_variant_options(path, retime, check is not None, against)
        if plot is not None:
            draw_scale(read, plot)
        return read
    if retime:
        raise ConfigError("--retime needs the ablation dir, not a results file")
    if against is not None:
        raise ConfigError("--against needs the ablation dir, not a results file")
    scaled, by_preset = read
    if check is not None:
        for results in by_preset.values():
            check(results)
    if plot is not None:
        for preset, results in by_preset.items():
            draw_plots(None, results, preset_plot(plot, preset))
    if scaled and plot is not None:
        draw_scale(scale_of(by_preset), plot)
    return scaled, by_preset


def read_results_file(path: Path) -> tuple[bool, ByPreset] | ScaleSummary:
    """What a results file holds: (whether several presets, each preset's results, every
    variant's difference interval filled in for files older than it), or a scale summary
    alone; ConfigError when it is neither."""
    from mousse.experiments.results import Results, recorded
    from mousse.experiments.scale import ScaledResults, ScaleSummary

    try:
        data = read_json(path)
    except ValueError:
        data = None
    if shaped(data, ScaleSummary):
        return data
    try:  # `recorded` reads each preset's baseline, variant rows and run rows
        if shaped(data, ScaledResults):
            return True, {preset: recorded(r) for preset, r in data["presets"].items()}
        if shaped(data, Results):
            return False, {None: recorded(data)}
    except KeyError:
        pass
    raise ConfigError(
        f"{path} is not a results file (results.json, what `mousse ablate --json` prints, "
        "or a scale summary: scale.json)"
    )


def refuse_per_variant_options(path: Path, retime: bool, expect: bool, against: str | None) -> None:
    """A scale summary holds no variant's results: --retime, --expect and --against are refused
    (ConfigError), naming the one given first."""
    given = [
        o for o, on in (("--retime", retime), ("--expect", expect), ("--against", against)) if on
    ]
    if given:
        raise ConfigError(
            f"{given[0]} needs each variant's results, and {path} is a scale summary (the "
            "speedup by scale alone); report the ablation dir it came from instead (the root "
            "of `mousse ablate --preset a,b`)"
        )


def preset_plot(plot: Path, preset: str | None) -> Path:
    """Where one preset's figure of a multi-preset report goes: beside `plot`, named after it."""
    return (
        plot if preset is None else plot.with_name(f"{plot.stem}-{preset}{plot.suffix or '.png'}")
    )


def draw_scale(scale: ScaleSummary, plot: Path) -> None:
    """The speedup against parameters over the presets."""
    from .plot import plot_scale

    plot_scale(scale, plot)
    where("speedup vs scale", plot)


def print_results(by_preset: ByPreset, scaled: bool, fmt: str) -> None:
    """The results in `fmt` on stdout; for several presets each one's under its name, then the
    speedup by scale (JSON: one object; csv: one table with a preset column)."""
    from mousse.experiments.scale import combine
    from mousse.experiments.table_rows import render, render_scaled

    if scaled and fmt == "json":
        typer.echo(dumps(combine(named_presets(by_preset))))
        return
    if fmt != "table":
        typer.echo(
            render_scaled(named_presets(by_preset), fmt)
            if scaled
            else render(by_preset[None], fmt),
            nl=False,
        )
        return
    for preset, results in by_preset.items():
        if scaled:
            show_preset_title(cast(str, preset))  # scaled: a preset's name
        show_results(results)
    if scaled:
        show_wide(scale_table(scale_of(by_preset)))


def print_scale(scale: ScaleSummary, fmt: str) -> None:
    """A scale summary alone in `fmt` on stdout: the speedup-by-scale table (csv: one row per
    preset and variant; json: the summary)."""
    from mousse.experiments.table_rows import render_scale

    if fmt == "table":
        show_wide(scale_table(scale))
    else:
        typer.echo(render_scale(scale, fmt), nl=False)


def check_expressions(expectations: list[str], results: Results) -> None:
    """Check every --expect against one preset's variants and budgets: a malformed one is a
    ConfigError (exit 2) before anything is retimed, plotted or printed, whatever the results."""
    from mousse.experiments.expect import budgets_of, validate

    for expr in expectations:
        validate(expr, [v["variant"] for v in results["variants"]], budgets_of(results))


def gate(expectations: list[str], by_preset: ByPreset) -> None:
    """Check every expectation on every preset's results; one line each on stderr; exit 5 after
    the tables when one fails (bad expressions were refused before them)."""
    from mousse.experiments.expect import check

    with user_errors():
        failed = []
        for preset, results in by_preset.items():
            for expr in expectations:
                ok, reason = check(expr, results)
                where = f"[{preset}] " if preset else ""
                console.print(
                    f"[{'green' if ok else 'red'}]{'ok' if ok else 'FAILED'}:[/] "
                    f"{escape(where + reason)}",
                    highlight=False,
                    soft_wrap=True,
                )
                if not ok:
                    failed.append(reason)
    if failed:
        raise typer.Exit(EXIT_EXPECTATION)


def open_ablation(path: Path) -> Ablation:
    """The Ablation recorded in `path` (its ablation.toml); ConfigError when there is none."""
    from mousse.experiments.sweep import Ablation, read_plan

    plan_file = path / "ablation.toml"
    if not plan_file.is_file():
        raise ConfigError(
            f"{path} is not an ablation dir (no ablation.toml); pass the "
            "--ablation-dir of a `mousse ablate` run"
        )
    return Ablation(read_plan(plan_file, "rerun the ablation"), path)


def draw_plots(ablation: Ablation | None, results: Results, plot: Path) -> None:
    """The loss curves (from the ablation's runs; none from a results file) and the forest plot,
    and beside them the tuning curves after tuning and the speedup against budget with budgets."""
    from .plot import plot_curves, plot_tuning

    plot_curves(results, ablation.records() if ablation is not None else [], plot)
    where("plot", plot)
    if any(v.get("tuning") for v in results["variants"]):
        tuning_plot = plot.with_name(f"{plot.stem}-tuning{plot.suffix or '.png'}")
        plot_tuning(results, tuning_plot)
        where("tuning curves", tuning_plot)
    draw_budget_speedup(results, plot)


def draw_budget_speedup(results: Results, plot: Path) -> None:
    """With speedups from budgets, their figure beside `plot`, named after it (-budgets)."""
    from .plot import has_budget_speedups, plot_budget_speedup

    if has_budget_speedups(results):
        budget_plot = plot.with_name(f"{plot.stem}-budgets{plot.suffix or '.png'}")
        plot_budget_speedup(results, budget_plot)
        where("speedup vs budget", budget_plot)
