"""Validation-loss curves of an ablation, vs step and vs training time (matplotlib, optional)."""

from __future__ import annotations

import os
from pathlib import Path

from mousse.train.config import ConfigError


def plot_curves(records: list[dict], baseline: str | None, out: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ConfigError("--plot needs matplotlib: pip install 'mousse[plot]'") from None
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
        label = None if r["variant"] in labelled else r["variant"] + (" (baseline)" if r["is_baseline"] else "")
        labelled.add(r["variant"])
        style = dict(color=colors[r["variant"]], lw=2.2 if r["is_baseline"] else 1.5,
                     ls="--" if r["is_baseline"] else "-", marker="o", ms=3)
        by_step.plot(steps, losses, label=label, **style)
        by_time.plot(seconds, losses, **style)
    by_step.set(xlabel="step", ylabel="validation loss", title="val loss vs step")
    by_time.set(xlabel="training seconds", title="val loss vs wall time")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_step.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix or '.png'}")
    try:  # written aside, then renamed: an existing plot is never left half-written
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
        plt.close(fig)
