"""Ablation results: the results object, summarized from run records (`records`; pure functions,
no I/O): one row per run and one per variant, each against the baseline.

The headline metric is the paper's, on seed-mean curves: the steps a variant's mean val loss curve
takes to reach the baseline's mean final val loss, the reduction in % of the baseline's steps, and
the speedup (`stats.speedup`); with `--budgets`, the speedup in data at each budget
(`budget_speedup`). Loss statistics use completed runs only;
diverged and failed runs are listed but never averaged. Step times average every run that reported
them (a diverged run's step time is still a real measurement). The statistics are in `stats`, the
tables in `table_rows`.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from mousse.train.budget import Regime
from mousse.train.estimate import BUSY_NOTE
from mousse.train.summary import CurvePoint, TimingContext

from .budget_speedup import BudgetEntry, BudgetFit, BudgetLosses, BudgetSpeedup, speedups
from .records import RunRecord
from .settings import Settings
from .stats import (
    SIGNIFICANCE_LEVEL,
    CurveKey,
    bootstrap_ci,
    holm,
    mean_curve,
    paired_bootstrap_ci,
    paired_differences,
    paired_t_test,
    seeds_for_power,
    speedup,
    speedup_bracket,
    steps_to_target,
    target_bracket,
    welch_interval,
    welch_t_test,
)
from .timing import TimingRecord, TimingRow
from .tuning import PhaseRecord, Tuned


class TuningColumns(TypedDict, total=False):
    """A variant's tuning in its row (`sweep`'s tuning columns, with --tune)."""

    tuned: Tuned | None  # knob -> its tuned value, once done
    tuned_at_edge: list[str]  # the knobs whose tuned value is at an end of its grid
    tuning: list[PhaseRecord]  # each phase's record (`tuning.Phase.to_dict`)


class TunedAtBudget(TuningColumns, total=False):
    """The tuning of one budget, with values tuned per budget (--budgets with --tune)."""

    budget: float


class VariantRow(TuningColumns, total=False):
    """One variant's row of results.json's "variants": what `summarize` computes, then the
    paired comparison (`add_paired`), the timing pass (`apply_timing_pass`) and, with --tune,
    the tuning columns add. Not total: results files from before a key existed lack it."""

    variant: str
    knobs: Settings  # the settings the variant sets
    is_baseline: bool
    n: int  # completed runs with a final loss
    n_runs: int
    statuses: dict[str, int]  # run status -> how many runs ended so
    final_val_loss_mean: float | None
    final_val_loss_std: float | None
    val_loss_se: float | None
    best_val_loss_mean: float | None
    delta_vs_baseline: float | None
    delta_ci: list[float] | None
    t: float | None
    df: float | None
    p_value: float | None
    p_holm: float | None
    significant: bool | None
    significance: str
    steps_to_target: float | None
    steps_to_target_bracket: list[int] | None
    reached: int
    seconds_to_target: float | None
    step_reduction_pct: float | None
    step_ms_median: float | None  # TIMING_KEYS: the runs' own timings
    fwd_bwd_ms_median: float | None
    opt_ms_median: float | None
    refresh_ms_median: float | None
    tokens_per_s: float | None
    overhead_pct: float | None
    overhead_source: str | None  # "timing pass" or "runs"
    peak_mem_bytes: int | None
    peak_mem_source: str | None  # "rss" or "allocator"
    n_seeds: int
    n_params: int | None
    speedup_bracket: list[float | None] | None
    speedup: float | None
    speedup_ci: list[float] | None
    speedup_time: float | None
    speedup_time_ci: list[float] | None
    budget_fit: BudgetFit  # the baseline's, with --budgets
    budget_speedups: list[BudgetSpeedup]  # every other variant's, with --budgets
    paired_n: int
    paired_delta: float | None
    paired_delta_ci: list[float] | None
    paired_t: float | None
    paired_p: float | None
    paired_p_holm: float | None
    paired_significant: bool | None
    paired_seeds_for_power: int | None
    side_by_side: TimingRow | None  # its timing pass row (`timing.summarize_rounds`)
    tuned_by_budget: list[TunedAtBudget]


class RunRow(TypedDict, total=False):
    """One run's row of results.json's "runs" (`_run_row`): its record's numbers and where it
    reaches the baseline's target. Not total: results files from before a key existed lack it."""

    name: str
    variant: str
    knobs: Settings  # the settings the run's variant sets
    seed: int  # every run record has one (`records.record`)
    is_baseline: bool
    status: str
    final_val_loss: float | None
    val_loss_se: float | None
    split: str | None
    best_val_loss: float | None
    steps: int | None
    steps_to_target: float | None
    steps_to_target_bracket: list[int] | None
    seconds_to_target: float | None
    step_reduction_pct: float | None
    step_ms_median: float | None  # TIMING_KEYS
    fwd_bwd_ms_median: float | None
    opt_ms_median: float | None
    refresh_ms_median: float | None
    tokens_per_s: float | None
    peak_mem_bytes: int | None
    n_params: int | None
    peak_mem_source: str | None
    timing_context: TimingContext | None  # where its timings were taken
    overhead_pct: float | None
    budgets: list[BudgetEntry]  # with --budgets


class _BudgetRowAdded(TypedDict, total=False):
    """What a budget row gained after files were first written (`with_power` fills it in)."""

    paired_seeds_for_power: int | None


class BudgetRow(_BudgetRowAdded):
    """One variant's result at one budget (`budget_rows`): results.json's "budgets"."""

    variant: str
    is_baseline: bool
    budget: float
    tokens_per_param: float
    n: int
    final_val_loss_mean: float | None
    final_val_loss_std: float | None
    paired_n: int
    paired_delta: float | None
    paired_delta_ci: list[float] | None
    paired_p: float | None


class _Protocol(TypedDict):
    """What every results file's protocol says."""

    tuned: list[str]  # the knobs tuned ([] without --tune)
    tune_seeds: list[int]  # the seeds tuning ran on ([] without --tune)
    seeds: list[int]  # the seeds the comparison runs on


class AblationProtocol(_Protocol, total=False):
    """The plan's tuning and seeds (written by `sweep.Ablation.results`, which imports this
    module): results.json's "protocol". Files from before `tune_seeds_apart` lack it."""

    tune_seeds_apart: bool | None  # whether tuning had seeds of its own (None: no tuning)


class Results(TypedDict, total=False):
    """The results object (`summarize`, then `sweep.Ablation.results`'s ablation dir, protocol
    and timing pass): what results.json holds. Not total: results files from before a key
    existed lack it."""

    baseline: str | None
    target_loss: float | None
    baseline_steps: float | None
    runs: list[RunRow]
    variants: list[VariantRow]
    timing_comparable: bool
    timing_contexts: int
    precisions: list[str]
    regimes: list[Regime]  # `mousse.train.budget.regime`, as the run records hold it
    budgets: list[BudgetRow]
    splits: list[str]
    ablation_dir: str
    protocol: AblationProtocol
    timing_pass: TimingRecord | None  # the timing pass record (`timing.timing_pass`)
    timing_busy: float | None
    timing_reliable: bool | None


@dataclass(frozen=True)
class Baseline:
    """What every variant is compared with: the baseline's variant name, the final losses of its
    completed runs (their mean is the target) and their val loss curves (what speedups resample),
    their mean steps, whether the runs' timings compare and its mean step time (None when they
    do not)."""

    variant: str | None
    losses: list[float]
    curves: list[list[CurvePoint]]  # each a run's curve
    target: float | None
    steps: float | None
    comparable: bool
    step_ms: float | None


def _finite(x: object) -> float | None:
    """x as a float when it is a finite number, else None (results must be strict JSON)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _mean(values: Iterable[float | None]) -> float | None:
    """Mean of the values that are not None; None when there are none."""
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _pct_change(value: float | None, reference: float | None) -> float | None:
    """`value` over `reference` as a change in %; None when either is missing."""
    return None if value is None or not reference else (value - reference) / reference * 100.0


def _reduction(steps: float | None, baseline_steps: float | None) -> float | None:
    """How many fewer steps than the baseline's, in % of the baseline's."""
    return (
        None
        if steps is None or not baseline_steps
        else (baseline_steps - steps) / baseline_steps * 100.0
    )


def summarize(records: list[RunRecord], baseline_name: str | None = None) -> Results:
    """The results object: {"baseline", "target_loss", "baseline_steps", "runs", "variants"}.

    `baseline_name` is the baseline's run or variant name (default: the runs flagged is_baseline);
    `baseline` in the result is its variant name (= run name with one seed), or None without one.
    Target = mean final val loss of the baseline's completed runs; baseline_steps = their mean
    step count (the baseline reaches its own final loss at the end of its budget).
    """
    base_variant = _baseline_variant(records, baseline_name)
    contexts = timing_contexts(records)
    comparable = len(contexts) == 1 and None not in contexts
    curves = _completed_curves(records)
    base_curves = curves.get(base_variant, []) if base_variant is not None else []
    base = _baseline(records, base_variant, comparable, base_curves)
    runs = [_run_row(r, base) for r in records]
    variants = [
        _variant_row(name, [r for r in runs if r["variant"] == name], base, curves.get(name, []))
        for name in dict.fromkeys(r["variant"] for r in runs)
    ]
    for v, p in zip(variants, holm([v["p_value"] for v in variants]), strict=True):
        v["p_holm"] = p
        v["significant"] = None if p is None else p < SIGNIFICANCE_LEVEL
        v["significance"] = _significance(v["is_baseline"], p, base.losses)
    add_budget_speedups(runs, variants, base.variant)
    return add_paired(
        {
            "baseline": base.variant,
            "target_loss": base.target,
            "baseline_steps": base.steps,
            "runs": runs,
            "variants": variants,
            "timing_comparable": comparable,
            "timing_contexts": len(contexts),
            "precisions": _precisions(records),
            "regimes": _regimes(records),
            "budgets": budget_rows(runs, base.variant),
            "splits": _recorded_values(records, "split"),
        }
    )


def add_budget_speedups(
    runs: Sequence[RunRow], variants: Sequence[VariantRow], baseline: str | None
) -> None:
    """When runs trained to several budgets, give the baseline's variant row `budget_fit` and
    every other variant's `budget_speedups` (`budget_speedup.speedups`); rows of runs without
    budgets are left as they are."""
    if not any(r.get("budgets") for r in runs):
        return
    fit, rows = speedups(
        {v["variant"]: losses_by_budget(runs, v["variant"]) for v in variants}, baseline
    )
    for v in variants:
        if v["is_baseline"]:
            v["budget_fit"] = fit
        else:
            v["budget_speedups"] = rows[v["variant"]]


def losses_by_budget(runs: Sequence[RunRow], variant: str) -> BudgetLosses:
    """seed -> {budget: (tokens, final val loss)} of `variant`'s budgets that completed with a
    finite loss (a budget is its own result: a branch may complete where a longer one diverged)."""
    out: BudgetLosses = {}
    for r in runs:
        if r["variant"] != variant:
            continue
        for entry in r.get("budgets") or []:
            loss = entry.get("final_val_loss")
            if entry.get("status") == "completed" and loss is not None and math.isfinite(loss):
                out.setdefault(r["seed"], {})[entry["budget"]] = (entry["tokens"], loss)
    return out


def budget_losses(runs: list[RunRow], variant: str | None, budget: float) -> dict[int, float]:
    """seed -> final val loss of `variant`'s runs at `budget`, for the budgets that completed
    (runs with budgets: `records.budget_record`)."""
    if variant is None:
        return {}
    by_seed = losses_by_budget(runs, variant)
    return {seed: by[budget][1] for seed, by in by_seed.items() if budget in by}


def budget_rows(runs: list[RunRow], baseline: str | None) -> list[BudgetRow]:
    """Per variant and budget of runs with budgets, ascending: the mean final val loss over the
    seeds that completed it, their standard deviation, and the paired difference from the
    baseline on the seeds both completed (mean, bootstrap interval, t-test p, the seeds the test
    needs for 80% power). None where there is nothing to compute; an empty list without
    budgets."""
    sizes: dict[float, float] = {}
    for r in runs:
        for b in r.get("budgets") or ():
            sizes.setdefault(b["budget"], b["tokens_per_param"])
    rows: list[BudgetRow] = []
    for variant in dict.fromkeys(r["variant"] for r in runs):
        for budget in sorted(sizes):
            values = list(budget_losses(runs, variant, budget).values())
            diffs = _budget_diffs(runs, variant, baseline, budget)
            rows.append(
                {
                    "variant": variant,
                    "is_baseline": variant == baseline,
                    "budget": budget,
                    "tokens_per_param": sizes[budget],
                    "n": len(values),
                    "final_val_loss_mean": statistics.fmean(values) if values else None,
                    "final_val_loss_std": statistics.stdev(values) if len(values) > 1 else None,
                    "paired_n": len(diffs),
                    "paired_delta": statistics.fmean(diffs) if diffs else None,
                    "paired_delta_ci": paired_bootstrap_ci(diffs),
                    "paired_p": paired_t_test(diffs)["p"],
                    "paired_seeds_for_power": _seeds_for_power(diffs),
                }
            )
    return rows


def _budget_diffs(
    runs: list[RunRow], variant: str, baseline: str | None, budget: float
) -> list[float]:
    """`variant`'s final loss at `budget` minus the baseline's, seed by seed (none for the
    baseline itself, or without one)."""
    if baseline is None or variant == baseline:
        return []
    return paired_differences(
        budget_losses(runs, variant, budget), budget_losses(runs, baseline, budget)
    )


def _precisions(records: list[RunRecord]) -> list[str]:
    """The arithmetic the completed runs trained in (`_recorded_values`)."""
    return _recorded_values(records, "precision")


def _recorded_values(records: list[RunRecord], key: Literal["precision", "split"]) -> list[str]:
    """The values of `key` among the completed runs, each once; runs from before it was recorded
    count as 'not recorded' beside ones that say it (none when no run says it)."""
    ran = {r.get(key) or "not recorded" for r in records if r["status"] == "completed"}
    return sorted(ran) if ran != {"not recorded"} else []


def _regimes(records: list[RunRecord]) -> list[Regime]:
    """The regimes the completed runs trained in (`mousse.train.budget.regime`), each once, by
    budget; none for runs from before they were recorded."""
    ran: list[Regime] = []
    for r in records:
        if r["status"] == "completed" and (regime := r.get("regime")) and regime not in ran:
            ran.append(regime)
    return sorted(ran, key=lambda regime: regime.get("budget") or 0.0)


def seed_losses(runs: list[RunRow], variant: str) -> dict[int, float]:
    """seed -> final val loss of `variant`'s completed run rows (the pairs of a paired test)."""
    return {
        r["seed"]: r["final_val_loss"]
        for r in runs
        if r["variant"] == variant
        and r["status"] == "completed"
        and r["final_val_loss"] is not None
    }


def add_paired(results: Results) -> Results:
    """Each variant's paired comparison with the baseline, from the results' run rows: the mean
    per-seed difference in final loss, its bootstrap interval, the paired t-test and its p
    Holm-adjusted over the variants, and the seeds the test would need for 80% power at the
    observed difference (None for the baseline and without two shared seeds)."""
    for v, diffs in _paired_diffs(results):
        test = paired_t_test(diffs)
        v["paired_n"] = len(diffs)
        v["paired_delta"] = statistics.fmean(diffs) if diffs else None
        v["paired_delta_ci"] = paired_bootstrap_ci(diffs)
        v["paired_t"], v["paired_p"] = _finite(test["t"]), test["p"]
        v["paired_seeds_for_power"] = _seeds_for_power(diffs)
    paired_holm = holm([v["paired_p"] for v in results["variants"]])
    for v, p in zip(results["variants"], paired_holm, strict=True):
        v["paired_p_holm"] = p
        v["paired_significant"] = None if p is None else p < SIGNIFICANCE_LEVEL
    return results


def _paired_diffs(results: Results) -> Iterator[tuple[VariantRow, list[float]]]:
    """Each variant with its final loss minus the baseline's, seed by seed (none for the
    baseline)."""
    base = seed_losses(results["runs"], results["baseline"]) if results["baseline"] else {}
    for v in results["variants"]:
        yield (
            v,
            (
                []
                if v["is_baseline"]
                else paired_differences(seed_losses(results["runs"], v["variant"]), base)
            ),
        )


def _seeds_for_power(diffs: list[float]) -> int | None:
    """The seeds the paired t-test needs for 80% power at the mean and spread of `diffs` (None
    with fewer than two)."""
    return (
        seeds_for_power(statistics.fmean(diffs), statistics.stdev(diffs))
        if len(diffs) >= 2
        else None
    )


def recorded(results: Results) -> Results:
    """A results object as a file recorded it, with what was added to results since filled in
    from its run rows (`with_delta_intervals`, `with_power`) and nothing it holds changed."""
    return with_power(with_delta_intervals(results))


def with_power(results: Results) -> Results:
    """A results object with every variant's and budget row's `paired_seeds_for_power`, from
    its run rows: for results files written before the key existed. The paired comparison a
    file records stands as its ablation computed it (Holm over that ablation's variants, which a
    file that keeps some of them no longer lists); one from before the paired comparison gets
    it (`add_paired`)."""
    budgets = results.get("budgets") or []
    if all("paired_seeds_for_power" in r for r in [*results["variants"], *budgets]):
        return results
    copy: Results = {**results, "variants": [VariantRow(**v) for v in results["variants"]]}
    if budgets:
        copy["budgets"] = [BudgetRow(**row) for row in budgets]
        for row in copy["budgets"]:  # from the same run rows `budget_rows` reads
            diffs = _budget_diffs(
                results["runs"], row["variant"], results["baseline"], row["budget"]
            )
            row["paired_seeds_for_power"] = _seeds_for_power(diffs)
    if not all("paired_p_holm" in v for v in copy["variants"]):
        return add_paired(copy)
    for v, diffs in _paired_diffs(copy):
        v["paired_seeds_for_power"] = _seeds_for_power(diffs)
    return copy


def _baseline_variant(records: list[RunRecord], baseline_name: str | None) -> str | None:
    """The baseline's variant: the one `baseline_name` names (as a run or a variant), else that of
    the runs flagged is_baseline; ValueError when `baseline_name` names no record."""
    variant = next(
        (
            r["variant"]
            for r in records
            if baseline_name in (r["name"], r["variant"])
            or (baseline_name is None and r.get("is_baseline"))
        ),
        None,
    )
    if baseline_name is not None and variant is None:
        raise ValueError(f"baseline {baseline_name!r} is not among the run records")
    return variant


def _completed_curves(records: list[RunRecord]) -> dict[str, list[list[CurvePoint]]]:
    """Per variant, the val loss curves of its completed runs with a final loss (what speedups
    resample)."""
    curves: dict[str, list[list[CurvePoint]]] = {}
    for r in records:
        if r["status"] == "completed" and _finite(r.get("final_val_loss")) is not None:
            curves.setdefault(r["variant"], []).append(r.get("curve") or [])
    return curves


def _baseline(
    records: list[RunRecord], variant: str | None, comparable: bool, curves: list[list[CurvePoint]]
) -> Baseline:
    """The baseline's numbers from its runs (its step time only when the timings compare)."""
    done = [r for r in records if r["variant"] == variant and r["status"] == "completed"]
    losses = [x for x in (_finite(r.get("final_val_loss")) for r in done) if x is not None]
    target = _mean(losses)
    step_ms = (
        _mean(_finite(r.get("step_ms_median")) for r in records if r["variant"] == variant)
        if comparable
        else None
    )
    return Baseline(
        variant=variant,
        losses=losses,
        curves=curves,
        target=target,
        steps=_mean(r.get("steps") for r in done) if target is not None else None,
        comparable=comparable,
        step_ms=step_ms,
    )


def _run_row(r: RunRecord, base: Baseline) -> RunRow:
    """One run's row: its record's numbers (non-finite ones as None) and where it reaches the
    baseline's target."""
    steps, seconds = steps_to_target(r.get("curve") or [], base.target)
    row: RunRow = {
        "name": r["name"],
        "variant": r["variant"],
        "knobs": Settings(**(r.get("knobs") or {})),  # a copy
        "seed": r["seed"],
        "is_baseline": r["variant"] == base.variant,
        "status": r["status"],
        "final_val_loss": _finite(r.get("final_val_loss")),
        "val_loss_se": _finite(r.get("val_loss_se")),
        "split": r.get("split"),
        "best_val_loss": _finite(r.get("best_val_loss")),
        "steps": r.get("steps"),
        "steps_to_target": steps,
        "steps_to_target_bracket": target_bracket(r.get("curve") or [], base.target),
        "seconds_to_target": seconds,
        "step_reduction_pct": _reduction(steps, base.steps),
        "step_ms_median": _finite(r.get("step_ms_median")),
        "fwd_bwd_ms_median": _finite(r.get("fwd_bwd_ms_median")),
        "opt_ms_median": _finite(r.get("opt_ms_median")),
        "refresh_ms_median": _finite(r.get("refresh_ms_median")),
        "tokens_per_s": _finite(r.get("tokens_per_s")),
        "peak_mem_bytes": r.get("peak_mem_bytes"),
        "n_params": r.get("n_params"),
        "peak_mem_source": r.get("peak_mem_source"),
        "timing_context": r.get("timing_context"),
        "overhead_pct": _pct_change(_finite(r.get("step_ms_median")), base.step_ms),
    }
    if r.get("budgets") is not None:
        row["budgets"] = r["budgets"]
    return row


def _variant_row(
    name: str, group: list[RunRow], base: Baseline, curves: list[list[CurvePoint]]
) -> VariantRow:
    """One variant's summary over its seeds (`group`: its run rows; loss statistics from
    completed runs only)."""
    is_base = name == base.variant
    done = [r for r in group if r["status"] == "completed"]
    losses = [r["final_val_loss"] for r in done if r["final_val_loss"] is not None]
    return {
        "variant": name,
        "knobs": group[0]["knobs"],
        "is_baseline": is_base,
        "n": len(losses),
        "n_runs": len(group),
        "statuses": dict(Counter(r["status"] for r in group)),
        **_loss_columns(done, losses, is_base, base),
        **_target_columns(done, base, curves),
        **_timing_columns(group, base),
        "n_seeds": len(losses),
        "n_params": max((n for r in group if (n := r.get("n_params"))), default=None),
        **_speedups(is_base, base, curves),
    }


def _loss_columns(
    done: list[RunRow], losses: list[float], is_base: bool, base: Baseline
) -> VariantRow:
    """A variant's final loss against the baseline's: mean, spread over seeds, the evaluation's
    own standard error (its runs' mean: what another sample of validation windows would move one
    run's loss by), difference with the 95% interval Welch's test inverts, and the test (its
    verdict, Holm-adjusted over all the variants, is `summarize`'s)."""
    mean = _mean(losses)
    test = {"t": None, "df": None, "p": None} if is_base else welch_t_test(losses, base.losses)
    return {
        "final_val_loss_mean": mean,
        "final_val_loss_std": statistics.stdev(losses) if len(losses) >= 2 else None,
        "val_loss_se": _mean(r["val_loss_se"] for r in done),
        "best_val_loss_mean": _mean(r["best_val_loss"] for r in done),
        "delta_vs_baseline": None if mean is None or base.target is None else mean - base.target,
        "delta_ci": None if is_base else welch_interval(losses, base.losses),
        "t": _finite(test["t"]),
        "df": test["df"],
        "p_value": test["p"],
    }


def with_delta_intervals(results: Results) -> Results:
    """A results object with every variant's `delta_ci` as `summarize` computes it, from the run
    rows' final losses: for results files written before the key existed."""
    losses: dict[str | None, list[float]] = {}
    for r in results["runs"]:
        if r["status"] == "completed" and r["final_val_loss"] is not None:
            losses.setdefault(r["variant"], []).append(r["final_val_loss"])
    base = losses.get(results["baseline"], [])
    return {
        **results,
        "variants": [
            {
                **v,
                "delta_ci": None
                if v["is_baseline"]
                else welch_interval(losses.get(v["variant"], []), base),
            }
            for v in results["variants"]
        ],
    }


def _significance(is_base: bool, p: float | None, base_losses: list[float]) -> str:
    """The verdict of the (Holm-adjusted) p in words, or why there is none."""
    if is_base:
        return "baseline"
    if p is None:
        return "n<2" if base_losses else "no baseline loss"
    return "significant" if p < SIGNIFICANCE_LEVEL else "not significant"


def _target_columns(
    done: list[RunRow], base: Baseline, curves: list[list[CurvePoint]]
) -> VariantRow:
    """When the variant's seed-mean curve reaches the baseline's target, between which two of its
    evaluations, and on how many of its completed runs' own curves the target is reached."""
    mean = mean_curve(curves)
    steps, seconds = steps_to_target(mean, base.target)
    return {
        "steps_to_target": steps,
        "steps_to_target_bracket": target_bracket(mean, base.target),
        "reached": sum(r["steps_to_target"] is not None for r in done),
        "seconds_to_target": seconds,
        "step_reduction_pct": _reduction(steps, base.steps),
    }


def _timing_columns(group: list[RunRow], base: Baseline) -> VariantRow:
    """A variant's mean step timings over all its runs, its overhead over the baseline's step
    time and its peak memory."""
    peak = [r["peak_mem_bytes"] for r in group if r["peak_mem_bytes"] is not None]
    return {
        "step_ms_median": _mean(r["step_ms_median"] for r in group),
        "fwd_bwd_ms_median": _mean(r["fwd_bwd_ms_median"] for r in group),
        "opt_ms_median": _mean(r["opt_ms_median"] for r in group),
        "refresh_ms_median": _mean(r["refresh_ms_median"] for r in group),
        "tokens_per_s": _mean(r["tokens_per_s"] for r in group),
        "overhead_pct": _pct_change(_mean(r["step_ms_median"] for r in group), base.step_ms),
        "peak_mem_bytes": max(peak) if peak else None,
        "peak_mem_source": next(
            (r.get("peak_mem_source") for r in group if r.get("peak_mem_source")), None
        ),
    }


def _speedups(is_base: bool, base: Baseline, curves: list[list[CurvePoint]]) -> VariantRow:
    """Speedup over the baseline in steps and in training seconds, each with its bootstrap
    interval, and the range of step speedups the evaluations' spacing allows (None for the
    baseline itself, without a target, and in seconds when the runs' seconds were counted on
    differently loaded machines)."""
    bracket = None if is_base else speedup_bracket(base.curves, curves)
    steps, steps_ci = _speedup_and_ci(base, curves, "step", is_base)
    time, time_ci = _speedup_and_ci(base, curves, "seconds", is_base or not base.comparable)
    return {
        "speedup_bracket": bracket,
        "speedup": steps,
        "speedup_ci": steps_ci,
        "speedup_time": time,
        "speedup_time_ci": time_ci,
    }


def _speedup_and_ci(
    base: Baseline, curves: list[list[CurvePoint]], key: CurveKey, skip: bool
) -> tuple[float | None, list[float] | None]:
    """The speedup counted in `key` and its bootstrap interval (both None when `skip`, and the
    interval when there is no speedup)."""
    point = None if skip else speedup(base.curves, curves, key)
    return point, None if point is None else bootstrap_ci(base.curves, curves, key)


def _context_key(context: TimingContext | None) -> tuple[object, ...] | None:
    """Where a run's timings were taken: (host, invocation, device, --parallel share)."""
    if not context or not context.get("invocation"):
        return None
    return (
        context.get("host"),
        context["invocation"],
        context.get("device"),
        context.get("parallel", 1),
    )


def timing_contexts(records: list[RunRecord]) -> set[tuple[object, ...] | None]:
    """The distinct places the runs' timings were taken (None: a run that does not say)."""
    return {
        _context_key(r.get("timing_context"))
        for r in records
        if r.get("status") not in ("pending", None) and r.get("step_ms_median") is not None
    }


def apply_timing_pass(results: Results, record: TimingRecord | None) -> Results:
    """The side-by-side timings of the timing pass (`experiments.timing`) into each variant: its
    step time with quartiles and its overhead over the baseline measured in the same pass; and
    how busy other processes kept the CPU meanwhile (`timing_busy`), with `timing_reliable`
    False when that was more than BUSY_NOTE of it (None: not known, or no pass)."""
    busy = record.get("busy") if record else None
    results = {
        **results,
        "timing_pass": record,
        "timing_busy": busy,
        "timing_reliable": None if busy is None else busy <= BUSY_NOTE,
    }
    passed = record["variants"] if record else {}
    for v in results["variants"]:
        row = passed.get(v["variant"])
        v["side_by_side"] = row
        if (
            row is not None
            and record is not None  # as `row` came from it
            and results["baseline"]
            and record.get("baseline") == results["baseline"]
        ):
            v["overhead_pct"] = row["overhead_pct"]
            v["overhead_source"] = "timing pass"
            _time_speedup_from_pass(v)
        elif results.get("timing_comparable") and v["overhead_pct"] is not None:
            v["overhead_source"] = "runs"
        else:
            v["overhead_pct"], v["overhead_source"] = None, None
    return results


def _time_speedup_from_pass(v: VariantRow) -> None:
    """The speedup in time as the speedup in steps over the side-by-side step-time ratio (its
    interval scaled by the same ratio): the runs' own seconds, even from one invocation, were
    counted beside whatever else the machine ran."""
    if v["speedup"] is None or v["overhead_pct"] is None:
        return
    ratio = 1 + v["overhead_pct"] / 100
    v["speedup_time"] = v["speedup"] / ratio
    v["speedup_time_ci"] = v["speedup_ci"] and [x / ratio for x in v["speedup_ci"]]
