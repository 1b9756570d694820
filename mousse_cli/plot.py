"""An ablation's figures (matplotlib, optional): seed-mean val loss with its band over seeds, over
the whole run and zoomed on its last part; the forest plot of final-loss differences from the
baseline; loss against comparable time; the tuning curves; the speedup against parameters and
against budget. A variant keeps one colour in every figure (`variant_colors`)."""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from mousse.experiments.stats import losses_by_step, mean_curve
from mousse.experiments.table_rows import busy_timing
from mousse.train.config import ConfigError
from mousse.train.estimate import counted
from mousse.train.summary import CurvePoint

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.typing import ColorType

    from mousse.experiments.budget_speedup import BudgetSpeedup
    from mousse.experiments.records import RunRecord
    from mousse.experiments.results import Results, VariantRow
    from mousse.experiments.scale import ScaleSummary
    from mousse.experiments.tuning import PhaseRecord

# A variant's seed-mean curve at one evaluation step: (step, mean, min, max) of the val loss.
Band = tuple[int, float, float, float]
# One speedup as drawn: (x, speedup, its 95% interval or None, marker).
SpeedupPoint = tuple[float, float, list[float] | None, str]

ZOOM_FROM = 0.6  # the zoomed panel: the last 40% of the steps, where the variants separate
BASELINE_COLOR = "black"
MARKERS = "osD^v<>ph*"  # one per non-baseline variant, so that curves drawn over each other show
OVERLAP_TOL = 1e-3  # seed-mean curves closer than this at every step draw as one line
NO_TIMING = (
    "no side-by-side timing pass: the runs' own seconds\n"
    "were counted under different loads, so loss against\n"
    "time is not drawn (`mousse report DIR --retime`)"
)


def _pyplot() -> ModuleType:
    """matplotlib's pyplot on the Agg backend (files only); ConfigError when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mousse[plot]'") from None
    return plt


def check_plot_path(out: Path) -> None:
    """Refuse, before any work, a --plot that names no file or a format matplotlib cannot
    write (no suffix: PNG)."""
    if str(out) in ("", ".") or out.is_dir():
        raise ConfigError(f"--plot needs a file name, e.g. --plot loss.png ({out} is a directory)")
    _pyplot()  # matplotlib missing: that is the error
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix and out.suffix[1:].lower() not in formats:
        raise ConfigError(
            f"--plot {out}: matplotlib cannot write {out.suffix} files; use .png, .pdf or .svg"
        )


def variant_colors(variants: list[str], baseline: str | None) -> dict[str, ColorType]:
    """One colour per variant, the same in every figure of an ablation: the baseline black, the
    others tab10 in plan order."""
    from matplotlib import colormaps

    others = [v for v in dict.fromkeys(variants) if v != baseline]
    colors: dict[str, ColorType] = {v: colormaps["tab10"](i % 10) for i, v in enumerate(others)}
    if baseline is None or baseline not in variants:
        return colors
    return {**colors, baseline: BASELINE_COLOR}


def seed_bands(records: list[RunRecord]) -> dict[str, list[Band]]:
    """Per variant, (step, mean, min, max) of the val loss over its completed runs' curves at the
    evaluation steps they all share (the mean is the results' seed-mean curve)."""
    curves: dict[str, list[list[CurvePoint]]] = {}
    for r in records:
        if r["status"] == "completed" and r.get("curve"):
            curves.setdefault(r["variant"], []).append(r["curve"])
    bands: dict[str, list[Band]] = {}
    for variant, group in curves.items():
        by_step = [losses_by_step(c) for c in group]
        bands[variant] = []
        for point in mean_curve(group):
            losses = [c[point["step"]][0] for c in by_step]
            bands[variant].append((point["step"], point["val_loss"], min(losses), max(losses)))
    return bands


def seconds_per_step(results: Results) -> dict[str, float]:
    """Per variant, its step time in the side-by-side timing pass, in seconds: the only timings
    that compare across variants (the runs' own seconds were counted under different loads)."""
    if not results.get("timing_pass"):
        return {}
    return {
        v["variant"]: ms / 1000
        for v in results["variants"]
        if (row := v.get("side_by_side")) and (ms := row.get("step_ms_median"))
    }


def overlapping(bands: dict[str, list[Band]]) -> dict[str, list[str]]:
    """Per variant, the other variants whose seed-mean curve coincides with its own (the same
    evaluation steps, within OVERLAP_TOL at each): drawn, one would hide the other (Muon and
    alpha 0, the same update on two code paths)."""
    means = {v: {b[0]: b[1] for b in band} for v, band in bands.items()}

    def same(a: dict[int, float], b: dict[int, float]) -> bool:
        return a.keys() == b.keys() and all(abs(a[s] - b[s]) <= OVERLAP_TOL for s in a)

    return {
        v: [w for w in means if w != v and same(means[v], means[w])]
        for v in means
        if any(w != v and same(means[v], means[w]) for w in means)
    }


def overlap_note(bands: dict[str, list[Band]], baseline: str | None) -> str | None:
    """A line saying which curves coincide and how they are still told apart (None: none do)."""
    groups = {tuple(sorted([v, *others])) for v, others in overlapping(bands).items()}
    if not groups:
        return None
    named = "; ".join(" and ".join(g) for g in sorted(groups))
    return (
        f"same curve (within {OVERLAP_TOL:g} at every step): {named}; each variant has its own "
        f"markers{', the baseline is dashed and drawn on top' if baseline in bands else ''}"
    )


def forest_rows(results: Results) -> list[VariantRow]:
    """The variants with a final-loss difference from the baseline, lowest first."""
    rows = [
        (delta, v)
        for v in results["variants"]
        if not v["is_baseline"] and (delta := v.get("delta_vs_baseline")) is not None
    ]
    return [v for _, v in sorted(rows, key=lambda row: row[0])]


def plot_curves(results: Results, records: list[RunRecord], out: Path) -> None:
    """The ablation's figure: seed-mean val loss with its band over seeds, over the whole run and
    its last part; the forest plot; loss against comparable time. Without curves (a results
    file), the forest plot alone, saying so."""
    plt = _pyplot()
    bands = seed_bands(records)
    colors = variant_colors([v["variant"] for v in results["variants"]], results["baseline"])
    if not bands:
        fig, forest = plt.subplots(
            figsize=(10, 1.8 + 0.42 * len(results["variants"])), layout="constrained"
        )
        _forest(forest, results, colors)
        fig.suptitle("(loss curves not drawn: a results file holds no curves)", fontsize=9)
        _save(fig, out, plt)
        return
    fig, ((full, zoom), (forest, timed)) = plt.subplots(
        2, 2, figsize=(15, 10.5), layout="constrained"
    )
    for ax in (full, zoom):
        _bands(ax, bands, colors, results["baseline"])
    seeds = max(
        sum(r["variant"] == v and r["status"] == "completed" for r in records) for v in bands
    )
    full.set(
        xlabel="step",
        ylabel="validation loss",
        title=f"val loss: mean over seeds, band min to max ({counted(seeds, 'seed')})",
    )
    _zoom(zoom, bands)
    _forest(forest, results, colors)
    _timed(timed, results, bands, colors)
    handles, labels = full.get_legend_handles_labels()
    first = sorted(range(len(labels)), key=lambda i: "(baseline)" not in labels[i])  # drawn last
    handles, labels = [handles[i] for i in first], [labels[i] for i in first]
    fig.legend(handles, labels, loc="outside upper center", ncol=min(5, len(labels)), fontsize=9)
    note = overlap_note(bands, results["baseline"])
    if note:
        fig.supxlabel(note, fontsize=9)
    _save(fig, out, plt)


def _bands(
    ax: Axes,
    bands: dict[str, list[Band]],
    colors: dict[str, ColorType],
    baseline: str | None,
    per_step: dict[str, float] | None = None,
) -> None:
    """Each variant's seed-mean curve, its band shaded; against steps, or against steps times
    `per_step[variant]` seconds (variants without one are left out). Curves that coincide stay
    visible: every other variant has its own markers, staggered along the curve, and the
    baseline is dashed and drawn last, on top; the legend names the curves each one covers."""
    same = overlapping(bands)
    drawn = [v for v in bands if per_step is None or v in per_step]
    others = [v for v in drawn if v != baseline]
    for i, variant in enumerate(others + [v for v in drawn if v == baseline]):
        band = bands[variant]
        scale = 1.0 if per_step is None else per_step[variant]
        xs = [b[0] * scale for b in band]
        is_base = variant == baseline
        ax.fill_between(
            xs, [b[2] for b in band], [b[3] for b in band], color=colors[variant], alpha=0.15, lw=0
        )
        ax.plot(
            xs,
            [b[1] for b in band],
            color=colors[variant],
            lw=2.2 if is_base else 1.5,
            ls="--" if is_base else "-",
            marker=None if is_base else MARKERS[i % len(MARKERS)],
            ms=6,
            markevery=(i % max(1, len(others)), max(1, len(others))),
            zorder=3 if is_base else 2,
            label=variant
            + (" (baseline)" if is_base else "")
            + (f" (same curve as {', '.join(same[variant])})" if variant in same else ""),
        )
    ax.grid(alpha=0.3)


def _zoom(ax: Axes, bands: dict[str, list[Band]], per_step: dict[str, float] | None = None) -> None:
    """Limit the axes to the last part of training, from ZOOM_FROM of the shortest curve's end
    (in time, the fastest variant's) to the longest's, the loss axis to the bands there."""
    scale = per_step or dict.fromkeys(bands, 1.0)
    ends = [band[-1][0] * scale[v] for v, band in bands.items() if v in scale and band]
    start, last = ZOOM_FROM * min(ends), max(ends)
    inside = [
        b for v, band in bands.items() if v in scale for b in band if b[0] * scale[v] >= start
    ]
    low, high = min(b[2] for b in inside), max(b[3] for b in inside)
    pad = 0.08 * (high - low) or 0.01
    ax.set_xlim(start, last + 0.01 * (last - start))
    ax.set_ylim(low - pad, high + pad)
    if per_step is None:
        ax.set(
            xlabel="step",
            ylabel="validation loss",
            title=f"zoom: the last {100 - 100 * ZOOM_FROM:.0f}% of the steps",
        )


def _forest(ax: Axes, results: Results, colors: dict[str, ColorType]) -> None:
    """Each variant's mean final loss minus the baseline's with its 95% interval (Welch's, the
    test the tables report), sorted; filled where the tables call it significant (Holm-adjusted
    p < 0.05), hollow where not."""
    rows = forest_rows(results)
    ax.axvline(0.0, color=BASELINE_COLOR, lw=1, ls="--")
    for y, v in enumerate(reversed(rows)):
        delta, ci = v.get("delta_vs_baseline"), v.get("delta_ci")
        assert delta is not None  # `forest_rows` keeps the variants with one
        color = colors[v["variant"]]
        ax.errorbar(
            [delta],
            [y],
            xerr=None if ci is None else [[delta - ci[0]], [ci[1] - delta]],
            fmt="o",
            ms=8,
            capsize=4,
            color=color,
            mfc=color if v.get("significant") else "white",
            mew=2,
        )
        ax.annotate(
            _p_label(v),
            (1.0, y),
            xycoords=("axes fraction", "data"),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
        )
    ax.set_yticks(range(len(rows)), [v["variant"] for v in reversed(rows)])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.grid(alpha=0.3, axis="x")
    ax.set(
        xlabel=f"final val loss minus {results['baseline']}'s (mean over seeds; 95% Welch "
        "interval, unadjusted; left is lower)",
        title="final loss vs the baseline (filled: significant, Holm-adjusted p < 0.05)",
    )


def _p_label(v: VariantRow) -> str:
    """The p-value a forest row stands on, as the tables give it: Holm-adjusted when it differs."""
    p, adjusted = v.get("p_value"), v.get("p_holm", v.get("p_value"))
    if p is None:
        return v.get("significance") or ""
    return f"p {p:.2g}" if adjusted == p else f"p {p:.2g}, Holm {adjusted:.2g}"


def _timed(
    ax: Axes,
    results: Results,
    bands: dict[str, list[Band]],
    colors: dict[str, ColorType],
) -> None:
    """Loss against time from comparable timings only: steps times each variant's side-by-side
    step time (zoomed like the step panel); a note instead when there was no timing pass."""
    per_step = {v: s for v, s in seconds_per_step(results).items() if v in bands}
    if not per_step:
        ax.axis("off")
        ax.text(0.5, 0.5, NO_TIMING, ha="center", va="center", fontsize=10, transform=ax.transAxes)
        return
    _bands(ax, bands, colors, results["baseline"], per_step)
    _zoom(ax, bands, per_step)
    record = results.get("timing_pass")  # there is one: `per_step` is its step times
    rounds = record.get("rounds") if record else None
    busy = busy_timing(results)
    ax.set(
        xlabel="steps x side-by-side step time (s): an estimate, not the runs' own seconds",
        ylabel="validation loss",
        title="val loss vs time, step times of the timing pass"
        + (f" ({counted(rounds, 'round')})" if rounds else "")
        + (
            f"\nunreliable: others used {results['timing_busy']:.0%} of the CPU meanwhile"
            if busy
            else ""
        ),
    )


def _save(fig: Figure, out: Path, plt: ModuleType) -> None:
    """Write the figure to `out` as a PNG, atomically, and close it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix or '.png'}")
    try:  # written aside, then renamed: an existing plot is never left half-written
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def plot_tuning(results: Results, out: Path) -> None:
    """Tuning curves: final val loss against each tuned knob (log axis for positive numbers), one
    line per variant in its colour, its chosen value ringed."""
    plt = _pyplot()
    variants = results["variants"]
    colors = variant_colors([v["variant"] for v in variants], results["baseline"])
    knobs = list(dict.fromkeys(p["knob"] for v in variants for p in v.get("tuning") or []))
    fig, axes = plt.subplots(
        1,
        max(1, len(knobs)),
        figsize=(6 * max(1, len(knobs)), 4.8),
        squeeze=False,
        layout="constrained",
    )
    # strict=False: without tuned knobs there is still one (empty) panel
    for ax, knob in zip(axes[0], knobs, strict=False):
        _tuning_axis(ax, knob, variants, colors)
    _save(fig, out, plt)


def _tuning_axis(
    ax: Axes, knob: str, variants: list[VariantRow], colors: dict[str, ColorType]
) -> None:
    """One knob's plot: every variant's tuning phases of that knob (the last phase plotted says
    whether the values are numbers, then shown on a log axis)."""
    numeric = True
    for v in variants:
        for phase in v.get("tuning") or []:
            if phase["knob"] != knob:
                continue
            points = [
                (x, y) for x, y in zip(phase["grid"], phase["losses"], strict=True) if y is not None
            ]
            if points:
                numeric = all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points
                )
                _plot_phase(ax, v, phase, points, numeric, colors[v["variant"]])
    if numeric:
        _tried_ticks(ax, knob, variants)
    # with budgets tuned apart, "tuning" is the largest budget's (the tables give each budget's)
    largest = max(
        (t["budget"] for v in variants for t in v.get("tuned_by_budget") or ()), default=0
    )
    ax.set(
        xlabel=knob,
        ylabel="final val loss (mean over tuning seeds)",
        title=f"tuning {knob}{f' at {largest:g}x, the largest budget' if largest else ''} "
        "(ringed: chosen)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plot_phase(
    ax: Axes,
    variant: VariantRow,
    phase: PhaseRecord,
    points: list[tuple[float | str, float]],
    numeric: bool,
    color: ColorType,
) -> None:
    """A variant's losses over one phase's grid, its chosen value ringed (non-numbers as text);
    the baseline dashed and on top, so that a variant that tunes the same (alpha 0) shows
    through it."""
    ax.plot(
        [x if numeric else str(x) for x, _ in points],
        [y for _, y in points],
        marker="o",
        ms=3,
        color=color,
        label=variant["variant"] + (" (baseline)" if variant["is_baseline"] else ""),
        ls="--" if variant["is_baseline"] else "-",
        zorder=3 if variant["is_baseline"] else 2,
    )
    chosen = phase["chosen"]
    if chosen is None or chosen not in phase["grid"]:
        return
    y = phase["losses"][phase["grid"].index(chosen)]
    if y is not None:
        x = chosen if numeric else str(chosen)
        ax.plot([x], [y], marker="o", ms=10, mfc="none", mec=color, mew=2)


def _tried_ticks(ax: Axes, knob: str, variants: list[VariantRow]) -> None:
    """A log axis with ticks at the values tried, not log decades that overprint each other."""
    ax.set_xscale("log")
    ax.minorticks_off()
    tried = sorted(
        {x for v in variants for p in v.get("tuning") or [] if p["knob"] == knob for x in p["grid"]}
    )
    ax.set_xticks(tried, [f"{x:.3g}" for x in tried], rotation=45 if len(tried) > 6 else 0)


def plot_scale(scale: ScaleSummary, out: Path) -> None:
    """Speedup in steps over each preset's baseline against parameter count (log axis), one line
    per variant in its colour, with the 95% intervals the scale table gives; filled where the
    interval excludes 1 (the table's significance), hollow where not."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5), layout="constrained")
    baseline = next((r["variant"] for r in scale["rows"] if r["is_baseline"]), None)
    colors = variant_colors([r["variant"] for r in scale["rows"]], baseline)
    others = [v for v in colors if v != baseline]
    for i, variant in enumerate(others):
        # side by side around each scale, so that intervals do not hide each other
        nudge = 1 + 0.025 * (i - (len(others) - 1) / 2)
        points: list[SpeedupPoint] = [
            (r["params"] * nudge, r["speedup"], r["speedup_ci"], "o")
            for r in scale["rows"]
            if r["variant"] == variant and r["speedup"] is not None and r["params"]
        ]
        _speedup_line(ax, variant, points, colors[variant])
    ax.axhline(1.0, color=BASELINE_COLOR, ls="--", lw=1, label=f"{baseline} (baseline)")
    ax.set_xscale("log")
    ax.minorticks_off()
    params = {r["preset"]: r["params"] for r in scale["rows"] if r["params"]}
    ax.set_xticks(list(params.values()), [f"{p}\n{n / 1e6:.2f}M" for p, n in params.items()])
    ax.set(
        xlabel="parameters (preset)",
        ylabel="speedup in steps (baseline steps / steps to its final loss)",
        title="speedup vs scale, 95% intervals over seeds (hollow: interval holds 1)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out, plt)


def _speedup_line(ax: Axes, variant: str, points: list[SpeedupPoint], color: ColorType) -> None:
    """One variant's speedups, (x, y, 95% interval or None, marker) each, joined by a line, the
    intervals as error bars; filled where the interval excludes 1, hollow where not."""
    ax.plot([p[0] for p in points], [p[1] for p in points], color=color, lw=1.2, label=variant)
    for x, y, ci, marker in points:
        ci = ci or [y, y]
        ax.errorbar(
            [x],
            [y],
            yerr=[[y - ci[0]], [ci[1] - y]],
            fmt=marker,
            ms=7,
            capsize=4,
            color=color,
            mfc=color if ci[0] > 1 or ci[1] < 1 else "white",
            mew=2,
        )


def has_budget_speedups(results: Results) -> bool:
    """Whether any variant has a speedup from budgets to draw."""
    return any(
        row["speedup"] is not None or row["unbounded"]
        for v in results["variants"]
        for row in v.get("budget_speedups") or ()
    )


def plot_budget_speedup(results: Results, out: Path) -> None:
    """Speedup in data against budget (log axis; `budget_speedup`), one line per variant in its
    colour with its 95% intervals: filled where the interval excludes 1, hollow where not,
    diamonds where the baseline's law is read beyond its budgets. What lies above the axis (an
    unbounded speedup, a loss below the law's floor, or a far extrapolation) is drawn at its top
    as a triangle with its value, ∞ where unbounded."""
    plt = _pyplot()
    from mousse.experiments.table_rows import budget_speedup_notes

    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    colors = variant_colors([v["variant"] for v in results["variants"]], results["baseline"])
    drawn = [v for v in results["variants"] if not v["is_baseline"] and v.get("budget_speedups")]
    top = 1.25 * max(
        (row["speedup"] for v in drawn for row in v["budget_speedups"] if row["speedup"]),
        default=1.0,
    )
    top = max(top, 1.25)
    for i, v in enumerate(drawn):
        nudge = 1 + 0.03 * (i - (len(drawn) - 1) / 2)  # intervals side by side, not on top
        side = (nudge > 1) - (nudge < 1)  # off-axis labels lean the same way, not on top either
        color = colors[v["variant"]]
        rows = [r for r in v["budget_speedups"] if r["speedup"] is not None or r["unbounded"]]
        points = [_budget_point(row, nudge, top) for row in rows]
        _speedup_line(ax, v["variant"], points, color)
        for (x, y, _, marker), row in zip(points, rows, strict=True):
            label = _high_end_off_axis(row, top)
            if marker == "^":
                label = "∞" if row["unbounded"] else f"{row['speedup']:.3g}x"
            elif label is not None:  # the error bar stops at the top: a triangle says so
                ax.plot([x], [top], marker="^", ms=7, color=color)
                y = top
            if label is not None:
                ax.annotate(
                    label,
                    (x, y),
                    xytext=(2 * side, 7),
                    textcoords="offset points",
                    ha=("right", "center", "left")[side + 1],
                    color=color,
                )
    ax.axhline(1.0, color=BASELINE_COLOR, ls="--", lw=1, label=f"{results['baseline']} (baseline)")
    ax.set_ylim(0, top * 1.12)
    ax.set_xscale("log")
    ax.minorticks_off()
    budgets = sorted({row["budget"] for v in drawn for row in v["budget_speedups"]})
    ax.set_xticks(budgets, [f"{b:g}x\n{20 * b:g} tok/param" for b in budgets])
    ax.set(
        xlabel="budget (multiple of 20 tokens per non-embedding parameter)",
        ylabel="speedup in data (baseline tokens to the variant's loss / tokens)",
        title="speedup vs budget, 95% intervals over seeds\n(hollow: interval holds 1; diamond: "
        "the baseline's law extrapolated; triangle: off the axis)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.supxlabel("\n".join(_wrapped(n) for n in budget_speedup_notes(results)[:1]), fontsize=8)
    _save(fig, out, plt)


def _budget_point(row: BudgetSpeedup, nudge: float, top: float) -> SpeedupPoint:
    """(x, y, interval, marker) of one budget's speedup, what lies above `top` (unbounded
    included) drawn at it."""
    speedup, ends = row["speedup"], row["speedup_ci"]
    y = top if row["unbounded"] or speedup is None else min(speedup, top)  # None: unbounded
    ci = None if ends is None else [top if end is None else min(end, top) for end in ends]
    marker = "^" if y == top else "D" if row["extrapolated"] else "o"
    return row["budget"] * nudge, y, ci, marker


def _high_end_off_axis(row: BudgetSpeedup, top: float) -> str | None:
    """The high end of a speedup's interval where it lies above `top`, the axis's top, as its
    label (∞ where unbounded); None where it is on the axis or has none."""
    high = (row["speedup_ci"] or [None, 0.0])[1]
    if high is None:
        return "∞"
    return f"{high:.3g}x" if high > top else None


def _wrapped(text: str, width: int = 150) -> str:
    """`text` broken into lines of at most `width` characters, at spaces."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width))
