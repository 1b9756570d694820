"""Validation-loss curves of an ablation, vs step and vs training time (matplotlib, optional)."""

from __future__ import annotations

import os
from pathlib import Path

from mousse.train.config import ConfigError


def _pyplot():
    """matplotlib's pyplot on the Agg backend (files only); ConfigError when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mousse[plot]'") from None
    return plt


def plot_curves(records: list[dict], out: Path) -> None:
    """Every run's val loss vs step and vs training seconds, one color per variant (the
    baseline dashed)."""
    plt = _pyplot()
    fig, (by_step, by_time) = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    variants = list(dict.fromkeys(r["variant"] for r in records))
    colors = {v: plt.cm.tab10(i % 10) for i, v in enumerate(variants)}
    labelled = set()
    for r in records:
        if not r["curve"]:
            continue
        steps = [p["step"] for p in r["curve"]]
        losses = [p["val_loss"] for p in r["curve"]]
        seconds = [p["seconds"] for p in r["curve"]]
        label = (
            None
            if r["variant"] in labelled
            else r["variant"] + (" (baseline)" if r["is_baseline"] else "")
        )
        labelled.add(r["variant"])
        style = dict(
            color=colors[r["variant"]],
            lw=2.2 if r["is_baseline"] else 1.5,
            ls="--" if r["is_baseline"] else "-",
            marker="o",
            ms=3,
        )
        by_step.plot(steps, losses, label=label, **style)
        by_time.plot(seconds, losses, **style)
    by_step.set(xlabel="step", ylabel="validation loss", title="val loss vs step")
    by_time.set(xlabel="training seconds", title="val loss vs wall time")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    _save(fig, out, plt)


def _save(fig, out: Path, plt) -> None:
    """Write the figure to `out` as a PNG, atomically, and close it."""
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix or '.png'}")
    try:  # written aside, then renamed: an existing plot is never left half-written
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)


def plot_tuning(results: dict, out: Path) -> None:
    """Tuning curves: final val loss against each tuned knob (log axis for positive numbers), one
    line per variant, its chosen value ringed."""
    plt = _pyplot()
    variants = results["variants"]
    knobs = list(dict.fromkeys(p["knob"] for v in variants for p in v.get("tuning") or []))
    fig, axes = plt.subplots(
        1, max(1, len(knobs)), figsize=(6 * max(1, len(knobs)), 4.5), squeeze=False
    )
    for ax, knob in zip(axes[0], knobs):
        _tuning_axis(ax, knob, variants, plt)
    _save(fig, out, plt)


def _tuning_axis(ax, knob: str, variants: list[dict], plt) -> None:
    """One knob's plot: every variant's tuning phases of that knob (the last phase plotted says
    whether the values are numbers, then shown on a log axis)."""
    numeric = True
    for i, v in enumerate(variants):
        for phase in v.get("tuning") or []:
            if phase["knob"] != knob:
                continue
            points = [(x, y) for x, y in zip(phase["grid"], phase["losses"]) if y is not None]
            if points:
                numeric = all(
                    isinstance(x, (int, float)) and not isinstance(x, bool) for x, _ in points
                )
                _plot_phase(ax, v, phase, points, numeric, plt.cm.tab10(i % 10))
    if numeric:
        _tried_ticks(ax, knob, variants)
    ax.set(
        xlabel=knob,
        ylabel="final val loss (mean over tuning seeds)",
        title=f"tuning {knob} (ringed: chosen)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)


def _plot_phase(ax, variant: dict, phase: dict, points: list, numeric: bool, color) -> None:
    """A variant's losses over one phase's grid, its chosen value ringed (non-numbers as text)."""
    ax.plot(
        [x if numeric else str(x) for x, _ in points],
        [y for _, y in points],
        marker="o",
        ms=3,
        color=color,
        label=variant["variant"] + (" (baseline)" if variant["is_baseline"] else ""),
        ls="--" if variant["is_baseline"] else "-",
    )
    chosen = phase["chosen"]
    if chosen is None or chosen not in phase["grid"]:
        return
    y = phase["losses"][phase["grid"].index(chosen)]
    if y is not None:
        x = chosen if numeric else str(chosen)
        ax.plot([x], [y], marker="o", ms=10, mfc="none", mec=color, mew=2)


def _tried_ticks(ax, knob: str, variants: list[dict]) -> None:
    """A log axis with ticks at the values tried, not log decades that overprint each other."""
    ax.set_xscale("log")
    ax.minorticks_off()
    tried = sorted(
        {x for v in variants for p in v.get("tuning") or [] if p["knob"] == knob for x in p["grid"]}
    )
    ax.set_xticks(tried, [f"{x:.3g}" for x in tried], rotation=45 if len(tried) > 6 else 0)


def plot_scale(scale: dict, out: Path) -> None:
    """Speedup over the baseline against parameter count (log axis), one line per variant, with
    the 95% bootstrap intervals as error bars."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, variant in enumerate(dict.fromkeys(r["variant"] for r in scale["rows"])):
        rows = [
            r
            for r in scale["rows"]
            if r["variant"] == variant
            and not r["is_baseline"]
            and r["speedup"] is not None
            and r["params"]
        ]
        if rows:
            _speedup_line(ax, variant, rows, plt.cm.tab10(i % 10))
    ax.axhline(1.0, color="gray", ls="--", lw=1, label="baseline")
    ax.set_xscale("log")
    ax.set(
        xlabel="parameters",
        ylabel="speedup over the baseline (steps)",
        title="speedup vs scale (95% bootstrap intervals)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, out, plt)


def _speedup_line(ax, variant: str, rows: list[dict], color) -> None:
    """One variant's speedups with their 95% intervals as error bars."""
    xs, ys = [r["params"] for r in rows], [r["speedup"] for r in rows]
    low = [y - (r["speedup_ci"] or [y, y])[0] for y, r in zip(ys, rows)]
    high = [(r["speedup_ci"] or [y, y])[1] - y for y, r in zip(ys, rows)]
    ax.errorbar(xs, ys, yerr=[low, high], marker="o", capsize=4, label=variant, color=color)
