"""Run records: what one run of an ablation left in its run dir, read back as the row that
`results.summarize` takes, and as the score that tuning compares.

A run record (`RunRecord`) is a dict: name, variant, knobs, seed, is_baseline, status ("completed" | "diverged" |
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

from typing import TYPE_CHECKING, TypedDict

from mousse.train.budget import Regime
from mousse.train.rundir import FINISHED
from mousse.train.summary import BudgetResult, CurvePoint, RunSummary, TimingContext

from .budget_speedup import BudgetEntry
from .settings import Settings

if TYPE_CHECKING:
    from .ablation import RunSpec

TIMING_KEYS = (
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "tokens_per_s",
)


class _RunResult(TypedDict):
    """A run record's part read from its summary (`record`): None where the summary lacks it."""

    final_val_loss: float | None
    best_val_loss: float | None
    step_ms_median: float | None
    fwd_bwd_ms_median: float | None
    opt_ms_median: float | None
    refresh_ms_median: float | None
    tokens_per_s: float | None
    peak_mem_bytes: int | None
    steps: int | None
    curve: list[CurvePoint]
    train_seconds: float | None
    n_params: int | None
    peak_mem_source: str | None
    timing_context: TimingContext | None
    precision: str | None
    regime: Regime | None
    split: str | None
    val_loss_se: float | None


class _RunRecord(_RunResult):
    name: str
    variant: str
    knobs: Settings
    seed: int
    is_baseline: bool
    status: str


class RunRecord(_RunRecord, total=False):
    """One run of an ablation as `results.summarize` takes it (`record`; the module's doc)."""

    budgets: list[BudgetEntry]  # a run with budgets only


def record(run: RunSpec, summary: RunSummary | None) -> RunRecord:
    """The run's row for `results.summarize`."""
    found: RunSummary = summary or {"status": "pending"}
    row: RunRecord = {
        "name": run.name,
        "variant": run.variant,
        "knobs": run.knobs,
        "seed": run.seed,
        "is_baseline": run.is_baseline,
        "status": found["status"],
        "final_val_loss": found.get("final_val_loss"),
        "best_val_loss": found.get("best_val_loss"),
        "step_ms_median": found.get("step_ms_median"),
        "fwd_bwd_ms_median": found.get("fwd_bwd_ms_median"),
        "opt_ms_median": found.get("opt_ms_median"),
        "refresh_ms_median": found.get("refresh_ms_median"),
        "tokens_per_s": found.get("tokens_per_s"),
        "peak_mem_bytes": found.get("peak_mem_bytes"),
        "steps": found.get("steps"),
        "curve": found.get("curve") or [],
        "train_seconds": found.get("train_seconds"),
        "n_params": found.get("n_params"),
        "peak_mem_source": found.get("peak_mem_source"),
        "timing_context": found.get("timing_context"),
        "precision": found.get("precision"),
        "regime": found.get("regime"),
        "split": found.get("split"),
        "val_loss_se": found.get("val_loss_se"),
    }
    if "budgets" in found:
        row["budgets"] = [budget_record(b) for b in found["budgets"]]
    return row


def budget_record(entry: BudgetResult) -> BudgetEntry:
    """One budget of a run record: the keys of a BudgetEntry from its summary's entry, its loss
    kept only when that budget completed (a budget still training is never a result)."""
    completed = entry["status"] == "completed"
    return {
        "budget": entry["budget"],
        "tokens": entry["tokens"],
        "tokens_per_param": entry["tokens_per_param"],
        "steps": entry["steps"],
        "status": entry["status"],
        "final_val_loss": entry["final_val_loss"] if completed else None,
    }


def with_split(row: RunRecord, settings: Settings) -> RunRecord:
    """`row` (a `record`) with the split its run validated on when its summary predates saying
    so: on the built-in corpus, the split of its settings (its plan's, `compat.recorded`: the
    tail for plans from before), which is the only validation that data has."""
    builtin = settings.get("data", "builtin") == "builtin" and not settings.get("val_data")
    if row["split"] is None and row["status"] != "pending" and builtin:
        return {**row, "split": settings["split"]}
    return row


def read_budget_from(row: RunRecord, budget: float, run: str, summary: RunSummary | None) -> None:
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
