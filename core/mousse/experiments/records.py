"""Run records: what one run of an ablation left in its run dir, read back as the row that
`results.summarize` takes, and as the score that tuning compares.

A run record is a dict: name, variant, knobs, seed, is_baseline, status ("completed" | "diverged" |
"failed" | "pending" | "running"), final_val_loss, best_val_loss, steps, step_ms_median,
fwd_bwd_ms_median, opt_ms_median, refresh_ms_median, tokens_per_s, peak_mem_bytes (None on CPU), precision
("bf16 autocast" or "fp32"; None for runs recorded before it was), regime (`mousse.train.budget.regime`;
None for runs recorded before it was), split (where validation came from, `mousse.train.data.Dataset`)
and val_loss_se (the standard error of the final val loss over its windows; both None for runs
recorded before them) and curve, a list of {"step", "val_loss", "seconds"} eval points.
A run with budgets (`mousse.train.branches`) also has budgets: per budget, ascending, {"budget",
"tokens", "tokens_per_param", "steps", "status", "final_val_loss"} (the loss None unless that
budget completed), and "run" where that budget was read from another run (`read_budget_from`);
runs without budgets have no such key.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from mousse.train.fileio import JsonObject
from mousse.train.rundir import FINISHED
from mousse.train.summary import BudgetResult, RunSummary

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
    "split",
    "val_loss_se",
)


def record(run: RunSpec, summary: RunSummary | None) -> JsonObject:
    """The run's row for `results.summarize`."""
    found: RunSummary = summary or {"status": "pending"}
    row: JsonObject = {
        "name": run.name,
        "variant": run.variant,
        "knobs": run.knobs,
        "seed": run.seed,
        "is_baseline": run.is_baseline,
        "status": found["status"],
    }
    row.update({k: found.get(k) for k in _RECORD_KEYS})
    row["curve"] = row["curve"] or []
    if "budgets" in found:
        row["budgets"] = [budget_record(b) for b in found["budgets"]]
    return row


BUDGET_KEYS = ("budget", "tokens", "tokens_per_param", "steps", "status", "final_val_loss")


def budget_record(entry: BudgetResult) -> JsonObject:
    """One budget of a run record: BUDGET_KEYS of its summary's entry, its loss kept only when
    that budget completed (a budget still training is never a result)."""
    out = {k: entry.get(k) for k in BUDGET_KEYS}
    if out["status"] != "completed":
        out["final_val_loss"] = None
    return out


def with_split(row: JsonObject, settings: Mapping[str, object]) -> JsonObject:
    """`row` (a `record`) with the split its run validated on when its summary predates saying
    so: on the built-in corpus, the split of its settings (its plan's, `compat.recorded`: the
    tail for plans from before), which is the only validation that data has."""
    builtin = settings.get("data", "builtin") == "builtin" and not settings.get("val_data")
    if row["split"] is None and row["status"] != "pending" and builtin:
        return {**row, "split": settings["split"]}
    return row


def read_budget_from(row: JsonObject, budget: float, run: str, summary: RunSummary | None) -> None:
    """Put in `row` its entry at `budget` as the run `run` (`summary`: its summary) gives it,
    naming that run: with budgets tuned apart, a budget is read from the run at the values
    chosen for it, not from the row's own run. Pending, without a loss, until that run has
    the budget (no entry while neither run has one)."""
    entries = {b["budget"]: b for b in row.get("budgets") or ()}
    theirs = next(
        (b for b in (summary.get("budgets") if summary else None) or () if b["budget"] == budget),
        None,
    )
    if theirs is not None:
        entries[budget] = {**budget_record(theirs), "run": run}
    elif budget in entries:
        entries[budget] = {
            **entries[budget],
            "status": "pending",
            "final_val_loss": None,
            "run": run,
        }
    row["budgets"] = [entries[b] for b in sorted(entries)]


def final_loss(summary: RunSummary | None) -> float | None:
    """A finished run's score for tuning: its final val loss, inf when it diverged or failed,
    None while it has no result."""
    if not summary or summary.get("status") not in (*FINISHED, "failed"):
        return None
    loss = summary.get("final_val_loss")
    if summary["status"] != "completed" or loss is None or loss != loss:
        return float("inf")
    return float(loss)
