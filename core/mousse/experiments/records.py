"""Run records: what one run of an ablation left in its run dir, read back as the row that
`results.summarize` takes, and as the score that tuning compares.

A run record is a dict: name, variant, knobs, seed, is_baseline, status ("completed" | "diverged" |
"failed" | "pending" | "running"), final_val_loss, best_val_loss, steps, step_ms_median,
fwd_bwd_ms_median, opt_ms_median, refresh_ms_median, tokens_per_s, peak_mem_bytes (None on CPU), precision
("bf16 autocast" or "fp32"; None for runs recorded before it was), regime (`mousse.train.budget.regime`;
None for runs recorded before it was) and curve, a list of {"step", "val_loss", "seconds"} eval points.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mousse.train.fileio import JsonObject, read_json
from mousse.train.rundir import FINISHED

if TYPE_CHECKING:
    from .ablation import RunSpec

TIMING_KEYS = (
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "tokens_per_s",
)
_RECORD_KEYS = (
    "final_val_loss",
    "best_val_loss",
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "tokens_per_s",
    "peak_mem_bytes",
    "steps",
    "curve",
    "train_seconds",
    "n_params",
    "peak_mem_source",
    "timing_context",
    "precision",
    "regime",
)


def read_summary(run_dir: Path) -> JsonObject | None:
    """The run's summary.json, or None while it has none (or an unreadable one: not JSON, not
    UTF-8, not an object with a status)."""
    try:
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return summary if isinstance(summary, dict) and isinstance(summary.get("status"), str) else None


def record(run: RunSpec, summary: JsonObject | None) -> JsonObject:
    """The run's row for `results.summarize`."""
    row: JsonObject = {
        "name": run.name,
        "variant": run.variant,
        "knobs": run.knobs,
        "seed": run.seed,
        "is_baseline": run.is_baseline,
        "status": summary["status"] if summary else "pending",
    }
    row.update({k: (summary or {}).get(k) for k in _RECORD_KEYS})
    row["curve"] = row["curve"] or []
    return row


def final_loss(summary: JsonObject | None) -> float | None:
    """A finished run's score for tuning: its final val loss, inf when it diverged or failed,
    None while it has no result."""
    if not summary or summary.get("status") not in (*FINISHED, "failed"):
        return None
    loss = summary.get("final_val_loss")
    if summary["status"] != "completed" or loss is None or loss != loss:
        return float("inf")
    return float(loss)
