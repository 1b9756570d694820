"""Ablation tables: the results object (`results.summarize`) as formatted rows for the
convergence and step-time tables, the notes that qualify them, and the whole rendered as markdown,
csv or json (pure functions, no I/O)."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from mousse.train.budget import Regime, regime_warnings
from mousse.train.estimate import counted
from mousse.train.fileio import dumps

from .budget_speedup import BudgetFit, BudgetSpeedup
from .records import TIMING_KEYS
from .results import BudgetRow, Results, TuningColumns, VariantRow
from .stats import PowerLawFit

if TYPE_CHECKING:
    from .scale import ScaleSummary
    from .tuning import PhaseRecord

TextRow = dict[str, str]  # a table's row: column -> its formatted text

CONVERGENCE_COLUMNS = (
    "Variant",
    "Tuned",
    "n",
    "Final val loss",
    "Δ vs baseline",
    "Welch p",
    "Paired Δ [95% CI], p",
    "Steps to baseline loss",
    "Speedup (95% CI)",
    "Time speedup (95% CI)",
    "Status",
)
TIMING_COLUMNS = (
    "Variant",
    "Step ms (runs)",
    "Fwd+bwd ms",
    "Optimizer ms",
    "Refresh ms",
    "Tokens/s",
    "Side by side ms [IQR]",
    "Overhead [IQR]",
    "Peak memory",
)
CSV_COLUMNS = (
    "variant",
    "is_baseline",
    "tuned",
    "n",
    "n_runs",
    "final_val_loss_mean",
    "final_val_loss_std",
    "val_loss_se",
    "delta_vs_baseline",
    "p_value",
    "p_holm",
    "significant",
    "paired_n",
    "paired_delta",
    "paired_delta_ci_low",
    "paired_delta_ci_high",
    "paired_p",
    "paired_p_holm",
    "paired_significant",
    "steps_to_target",
    "steps_to_target_low",
    "steps_to_target_high",
    "reached",
    "step_reduction_pct",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_bracket_low",
    "speedup_bracket_high",
    "speedup_time",
    "timing_busy",
    *TIMING_KEYS,
    "overhead_pct",
    "peak_mem_bytes",
)

# A scale summary's csv: a ScaleRow's raw numbers, its speedup interval in two columns
SCALE_CSV_COLUMNS = (
    "preset",
    "params",
    "variant",
    "is_baseline",
    "tuned",
    "n_seeds",
    "final_val_loss_mean",
    "final_val_loss_std",
    "p_value",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
)


UNRELIABLE = " (unreliable)"  # marks a time measured on a busy machine (`busy_timing_note`)


def busy_timing(results: Results) -> bool:
    """Whether the timing pass ran while other processes kept the CPU busy
    (`results.apply_timing_pass`): its overheads and the time speedups are then unreliable."""
    return results.get("timing_reliable") is False


def busy_timing_note(results: Results) -> str:
    """What the "(unreliable)" marks mean, with how busy the machine was."""
    return (
        f"busy machine: other processes used {results['timing_busy']:.0%} of the CPU while the "
        "timing pass ran, so its step times, and the overheads and time speedups marked "
        "(unreliable), may not hold on a quiet machine; rerun `mousse report DIR --retime` there"
    )


def timing_notes(results: Results) -> list[str]:
    """Where the step-time table's numbers come from, and when they do not compare."""
    notes = []
    record = results.get("timing_pass")
    if record:
        notes.append(
            f"side by side: one process on {record['host']} ({record['device']}, "
            f"{counted(record['threads'], 'thread')}), "
            f"{counted(record['rounds'], 'interleaved round')} of "
            f"{counted(record['steps_per_round'], 'step')}, {record['when']}; overheads are "
            "per-round ratios to the baseline, median [interquartile range]; time speedups "
            "are the step speedups over those ratios"
        )
    if busy_timing(results):
        notes.append(busy_timing_note(results))
    if not results.get("timing_comparable"):
        n = results.get("timing_contexts", 0)
        place = f"{n} different invocations or hosts" if n > 1 else "an unrecorded place"
        why = (
            "no finished run has step times yet, so no overhead or time speedup is computed"
            if n == 0
            else f"the runs' own step times were taken in {place}: they do not compare, and no "
            "overhead or time speedup is computed from them"
        )
        retime = " (run `mousse report DIR --retime` for a side-by-side pass)"
        notes.append(why + ("" if record else retime))
    return notes


def protocol_notes(results: Results) -> list[str]:
    """What a comparison does not establish, in plain words: untuned lrs, a single seed."""
    protocol = results.get("protocol")
    notes = []
    if not (protocol and protocol.get("tuned")):
        notes.append(
            "untuned: every variant ran at its preset lr, so a gap may only mean one lr "
            "suits one variant better (add --tune lr)"
        )
    n = [v["n_seeds"] for v in _variants(results) if v.get("n_seeds")]
    if n and min(n) < 2:
        notes.append(
            "single seed: no interval or significance test, so no gap here is "
            "established (add --seeds 3)"
        )
    if busy_timing(results):
        notes.append(busy_timing_note(results))
    return notes + tuning_seed_notes(results) + regime_notes(results)


def tuning_seed_notes(results: Results) -> list[str]:
    """Results tuned on seeds they also compare on (recorded before tuning seeds were kept
    apart): each arm's mean holds the seed its tuned value won on (the winner's curse)."""
    protocol = results.get("protocol")
    if not (protocol and protocol.get("tuned")):
        return []
    shared = sorted(set(protocol.get("tune_seeds") or ()) & set(protocol.get("seeds") or ()))
    if not shared:
        return []
    return [
        f"tuned on {'seed' if len(shared) == 1 else 'seeds'} {', '.join(map(str, shared))}, "
        "which the comparison also averages: each arm's mean includes the seed its tuned value "
        "was chosen for doing best on, which flatters it (the winner's curse; an ablation "
        "made now tunes on seeds of its own)"
    ]


def regime_notes(results: Results) -> list[str]:
    """What the regime of the runs does not establish (`budget.regime_warnings`): the smallest
    budget below 1x, the most epochs beyond 4. Runs with budgets (whose regime is their
    largest budget's) reach 1x by their largest budget, as `--budget` is refused with them."""
    regimes = results.get("regimes") or []
    budgets = [b for r in regimes if (b := r.get("budget")) is not None]
    epochs = [e for r in regimes if (e := r.get("epochs")) is not None]
    remedy = (
        "pass --budgets up to 1 or more, e.g. --budgets 0.25,0.5,1,2"
        if results.get("budgets")
        else "pass --budget 1"
    )
    return regime_warnings(min(budgets, default=None), max(epochs, default=None), remedy)


def regime_note(results: Results) -> str | None:
    """The regime the runs trained in: tokens per non-embedding parameter, that as a multiple
    of 20, and epochs over the train data (None for results from before runs recorded it)."""
    regimes = results.get("regimes") or []
    if not regimes:
        return None
    text = "; ".join(_regime_text(r) for r in regimes)
    return f"regime: {text}" + (", every run" if len(regimes) == 1 else "")


def _regime_text(regime: Regime) -> str:
    per_param, budget, epochs = (
        regime.get("tokens_per_param"),
        regime.get("budget"),
        regime.get("epochs"),
    )
    return (
        f"{_num(per_param, '.3g')} tokens per non-embedding parameter "
        f"({_num(budget, '.3g', 'x')} of 20), {_num(epochs, '.3g')} epochs over the train data"
    )


def power_note(results: Results) -> str | None:
    """The seeds a paired t-test at 0.05 would need for 80% power at each variant's observed
    mean difference from the baseline and its seed spread (`stats.seeds_for_power`); None
    without any (one seed, or results from before it was computed)."""
    needed = [
        (v["variant"], v["paired_seeds_for_power"], v.get("paired_n"))
        for v in _variants(results)
        if v.get("paired_seeds_for_power") is not None
    ]
    if not needed:
        return None
    text = ", ".join(f"{name} {n} (has {ran})" for name, n, ran in needed)
    return (
        "seeds a paired t-test at 0.05 needs for 80% power at the observed difference from "
        f"the baseline and its seed spread: {text}"
    )


def _sentence_paragraph(note: str | None) -> str:
    """A note as a markdown paragraph of its own (empty without one)."""
    return f"{note[0].upper()}{note[1:]}.\n\n" if note else ""


def precision_note(results: Results) -> str | None:
    """The arithmetic the runs trained in (None for results from before runs recorded it)."""
    precisions = results.get("precisions") or []
    if len(precisions) > 1:
        return (
            f"runs differ in arithmetic ({', '.join(precisions)}): their losses differ by "
            "rounding as well as by what varies"
        )
    return f"arithmetic: {precisions[0]}, every run" if precisions else None


# where validation came from (`mousse.train.data.Dataset.split`), in words
SPLIT_TEXT = {
    "files": "whole files held out across the builtin corpus, a fixed sample of windows",
    "tail": "the corpus tail",
    "val data": "validation files of the data's own",
}


def split_note(results: Results) -> str | None:
    """Where the runs' validation losses were measured, and what SE means where the results
    record it (None for results from before runs recorded their split)."""
    splits = results.get("splits") or []
    if not splits:
        return None
    text = "validation on " + "; ".join(SPLIT_TEXT.get(s, s) for s in splits)
    if len(splits) > 1:
        text += " (runs differ: their losses do not compare)"
    if any(v.get("val_loss_se") is not None for v in _variants(results)):
        text += (
            "; SE: the evaluation's standard error of a run's final loss over those windows, "
            "beside ± the spread over seeds"
        )
    return text


_DASH = "—"


def _variants(results: Results) -> list[VariantRow]:
    """The results' variant rows."""
    return results["variants"]


def _budget_rows(results: Results) -> list[BudgetRow]:
    """The results' rows per variant and budget (none without budgets)."""
    return results.get("budgets") or []


def _num(value: float | None, spec: str, suffix: str = "") -> str:
    """`value` formatted by `spec` (and `suffix`), or a dash when missing."""
    return _DASH if value is None else f"{value:{spec}}{suffix}"


def _status_text(statuses: Mapping[str, int], diverged: Sequence[float] = ()) -> str:
    """How a variant's runs ended: "completed", else the count of each status; then its budgets
    whose cooldown branch diverged (`diverged`, one a run: the run's status is its trunk's)."""
    if set(statuses) == {"completed"}:
        text = "completed"
    else:
        text = ", ".join(f"{count} {status}" for status, count in statuses.items())
    if not diverged:
        return text
    where = ", ".join(f"{b:g}x" for b in sorted(set(diverged)))
    return f"{text}; {counted(len(diverged), 'budget')} diverged ({where})"


def _diverged_budgets(results: Results, variant: str) -> list[float]:
    """The budgets of `variant`'s runs whose cooldown branch diverged, one a run and budget
    (in a run that diverged itself, its status says so already)."""
    return [
        b["budget"]
        for r in results["runs"]
        if r["variant"] == variant and r["status"] != "diverged"
        for b in r.get("budgets") or ()
        if b["status"] == "diverged"
    ]


def _p_text(v: VariantRow) -> str:
    """The Welch p-value with its Holm adjustment when they differ, flagged when the adjusted one
    is not significant, or why there is none."""
    p = v["p_value"]
    if p is None:
        return _DASH if v["is_baseline"] else v["significance"]
    return _flagged(_holm_text(p, v.get("p_holm", p)), v["significant"])


def _holm_text(p: float, adjusted: float | None) -> str:
    """A p-value, and its Holm adjustment when that differs (None: not adjusted)."""
    return f"{p:.3g}" if adjusted is None or adjusted == p else f"{p:.3g}, Holm {adjusted:.3g}"


def _flagged(text: str, significant: bool | None) -> str:
    """`text`, marked when its verdict is not significant."""
    return text if significant else f"{text} (not significant)"


def _paired_text(v: VariantRow) -> str:
    """The mean per-seed difference from the baseline with its bootstrap interval and the paired
    t-test's p (Holm-adjusted when that differs), flagged when the adjusted p is not significant;
    a dash without two seeds shared with the baseline."""
    p, ci = v.get("paired_p"), v.get("paired_delta_ci")
    if p is None or ci is None:
        return _DASH
    low, high = ci
    text = f"{v['paired_delta']:+.4f} [{low:+.4f}, {high:+.4f}], "
    return _flagged(text + _holm_text(p, v["paired_p_holm"]), v["paired_significant"])


def _steps_text(v: VariantRow, has_target: bool) -> str:
    """Steps of the seed-mean curve to the baseline's loss with the two evaluations that bracket
    them ("480 [400-500]", for results that record it), and on how many seeds' own curves the
    loss is reached when not all."""
    if not has_target or v["n"] == 0:
        return _DASH
    text = "never" if v["steps_to_target"] is None else f"{v['steps_to_target']:.0f}"
    bracket = v.get("steps_to_target_bracket")
    if bracket:
        text += " [{}-{}]".format(*bracket)
    return (
        text if v["n"] == 1 or v["reached"] == v["n"] else f"{text} ({v['reached']}/{v['n']} seeds)"
    )


def _loss_text(mean: float | None, std: float | None, se: float | None = None) -> str:
    """Mean final val loss ± its standard deviation over seeds, and beside it the evaluation's
    standard error over its validation windows (for results that record it)."""
    text = _num(mean, ".4f")
    if std is not None:
        text += f" ± {std:.4f}"
    return text if se is None else f"{text} (SE {se:.4f})"


def _tuned_text(v: TuningColumns) -> str:
    """The tuned values (those at a grid edge flagged), or "tuning" while it goes on."""
    tuned = v.get("tuned")
    if not tuned:
        return "tuning" if v.get("tuning") else _DASH
    edge = set(v.get("tuned_at_edge") or ())
    return ", ".join(
        f"{k}={_value_text(x)}" + (" (grid edge)" if k in edge else "") for k, x in tuned.items()
    )


def _value_text(x: object) -> str:
    """A tuned value: floats to 4 significant digits."""
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def speedup_text(
    point: float | None, ci: list[float] | None, bracket: list[float | None] | None = None
) -> str:
    """A speedup with its 95% interval, flagged when the interval holds 1, and beside it the
    range its evaluations' spacing allows (steps, for results that record it)."""
    if point is None:
        return _DASH
    text = f"{point:.2f}x"
    if ci is not None:
        text += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        text += "" if ci[0] > 1 or ci[1] < 1 else " (not significant)"
    return text if not bracket else f"{text}, evals {_range_text(*bracket)}"


def _speedup_text(v: VariantRow, time: bool = False) -> str:
    """A variant's speedup over the baseline in steps, or in seconds with `time`
    (`speedup_text`); a dash for the baseline."""
    if v["is_baseline"]:
        return _DASH
    if time:
        return speedup_text(v.get("speedup_time"), v.get("speedup_time_ci"))
    return speedup_text(v.get("speedup"), v.get("speedup_ci"), v.get("speedup_bracket"))


def _range_text(low: float | None, high: float | None) -> str:
    """A range of speedups; None above: unbounded (the crossing lies before the first
    evaluation after step 0)."""
    return f"{low:.2f} or more" if high is None else f"{low:.2f}-{high:.2f}"


def _marked(text: str, unreliable: bool) -> str:
    """`text`, marked unreliable when it is a number measured on a busy machine."""
    return text + UNRELIABLE if unreliable and text != _DASH else text


def convergence_rows(results: Results) -> list[TextRow]:
    """Per variant, CONVERGENCE_COLUMNS -> formatted text (for markdown and the Rich view)."""
    has_target = results["target_loss"] is not None
    busy = busy_timing(results)
    return [
        dict(
            zip(
                CONVERGENCE_COLUMNS,
                (
                    v["variant"],
                    _tuned_text(v),
                    str(v["n"]),
                    _loss_text(
                        v["final_val_loss_mean"], v["final_val_loss_std"], v.get("val_loss_se")
                    ),
                    _DASH if v["is_baseline"] else _num(v["delta_vs_baseline"], "+.4f"),
                    _p_text(v),
                    _paired_text(v),
                    _steps_text(v, has_target),
                    _speedup_text(v),
                    _marked(_speedup_text(v, time=True), busy),
                    _status_text(v["statuses"], _diverged_budgets(results, v["variant"])),
                ),
                strict=True,
            )
        )
        for v in _variants(results)
    ]


TUNING_COLUMNS = ("Variant", "Knob", "Final val loss per value (* chosen)", "Margin")
BUDGET_COLUMNS = (
    "Variant",
    "Budget",
    "Tokens/param",
    "n",
    "Final val loss",
    "Paired Δ vs baseline [95% CI], p",
    "Seeds for power",
)
BUDGET_TITLE = "final val loss per budget (WSD cooldown branches, --budgets)"


def budget_table_rows(results: Results) -> list[TextRow]:
    """Per variant and budget (`results.budget_rows`), BUDGET_COLUMNS -> text: its mean final
    loss ± seed spread and the paired difference from the baseline (none without budgets).
    With the values tuned per budget, the variant says those its row was read at."""
    tuned = {
        (v["variant"], t["budget"]): f"{v['variant']} @ {_tuned_text(t)}"
        for v in _variants(results)
        for t in v.get("tuned_by_budget") or ()
    }
    return [
        dict(
            zip(
                BUDGET_COLUMNS,
                (
                    tuned.get((b["variant"], b["budget"]), b["variant"]),
                    f"{b['budget']:g}x",
                    _num(b["tokens_per_param"], ".3g"),
                    str(b["n"]),
                    _loss_text(b["final_val_loss_mean"], b["final_val_loss_std"]),
                    _DASH if b["is_baseline"] else _budget_delta_text(b),
                    _power_text(b.get("paired_seeds_for_power"), b["paired_n"]),
                ),
                strict=True,
            )
        )
        for b in _budget_rows(results)
    ]


def _power_text(needed: int | None, has: int) -> str:
    """'11 (has 3)': the seeds a paired t-test needs for 80% power, beside those it had."""
    return _DASH if needed is None else f"{needed} (has {has})"


BUDGET_POWER_NOTE = (
    "seeds for power: the seeds a paired t-test at 0.05 needs for 80% power at each budget's "
    "observed difference from the baseline and its seed spread"
)


def _budget_delta_text(b: BudgetRow) -> str:
    """The mean per-seed difference from the baseline at one budget, with its bootstrap
    interval and paired t-test p when two seeds or more are shared."""
    if b["paired_delta"] is None:
        return _DASH
    text = f"{b['paired_delta']:+.4f}"
    if b["paired_delta_ci"] is None:
        return text
    low, high = b["paired_delta_ci"]
    return f"{text} [{low:+.4f}, {high:+.4f}], p {_num(b['paired_p'], '.3g')}"


def _phase_text(phase: PhaseRecord) -> str:
    """A tuning phase's grid with each value's mean final val loss: '*' marks the chosen value,
    '…' a value still to run (or waiting for the phase before)."""
    diverged = phase.get("diverged") or []
    spreads = phase.get("spreads") or [None] * len(phase["grid"])
    parts = []
    for value, loss, sd in zip(phase["grid"], phase["losses"], spreads, strict=True):
        text = "diverged" if value in diverged else _candidate_text(loss, sd)
        star = "*" if phase["chosen"] is not None and value == phase["chosen"] else ""
        parts.append(f"{_value_text(value)}{star} {text}")
    return " · ".join(parts) + (" (grid edge)" if phase.get("at_edge") else "")


def _candidate_text(loss: float | None, sd: float | None) -> str:
    """A tuning candidate's mean final val loss over the tuning seeds, ± their standard deviation
    when there are several; '…' while it has no result."""
    if loss is None:
        return "…"
    return f"{loss:.4f}" if sd is None else f"{loss:.4f} ± {sd:.4f}"


def tuning_rows(results: Results) -> list[TextRow]:
    """Per variant and tuning phase, TUNING_COLUMNS -> text: the evidence behind "Tuned", and
    by how much the choice won (`_margin`); with values tuned per budget, each budget's phases
    ('lr at 0.5x'), whose grids and choices differ (the largest budget's alone are "Tuned")."""
    n = _tune_seed_count(results)
    return [
        dict(
            zip(
                TUNING_COLUMNS,
                (
                    v["variant"],
                    phase["knob"] + ("" if budget is None else f" at {budget:g}x"),
                    _phase_text(phase),
                    _margin_text(_margin(phase, n, sd)),
                ),
                strict=True,
            )
        )
        for v, budget, phase, sd in _phases(results)
    ]


def _tune_seed_count(results: Results) -> int:
    """How many tuning seeds each candidate averages (1 for files from before it was kept)."""
    protocol = results.get("protocol")
    return (len(protocol.get("tune_seeds") or ()) if protocol else 0) or 1


def _phases(
    results: Results,
) -> Iterator[tuple[VariantRow, float | None, PhaseRecord, float | None]]:
    """Each variant's tuning phases, with the budget they tuned for (None: tuned once) and the
    arm's sd of final loss over its comparison seeds at the values they chose."""
    comparison_sd = {
        (b["variant"], b["budget"]): b["final_val_loss_std"] for b in _budget_rows(results)
    }
    for v in _variants(results):
        by_budget = v.get("tuned_by_budget")
        if not by_budget:
            for phase in v.get("tuning") or ():
                yield v, None, phase, v.get("final_val_loss_std")
            continue
        for t in by_budget:
            for phase in t["tuning"]:
                yield v, t["budget"], phase, comparison_sd.get((v["variant"], t["budget"]))


def _margin(
    phase: PhaseRecord, n: int, comparison_sd: float | None
) -> tuple[float, float | None] | None:
    """How far a phase's chosen value beat the next best, and the standard error of a
    candidate's mean: seed sd / sqrt(n) over n tuning seeds, where the sd is the candidates'
    own spread over the tuning seeds (pooled) when n >= 2, else `comparison_sd`. None before
    a choice, or with fewer than two finite candidates."""
    diverged = phase.get("diverged") or []
    losses = {
        value: loss
        for value, loss in zip(phase["grid"], phase["losses"], strict=True)
        if loss is not None and value not in diverged
    }
    chosen = phase["chosen"]
    mine = losses.pop(chosen, None) if chosen is not None else None
    if mine is None or not losses:
        return None
    spreads = [s for s in phase.get("spreads") or () if s is not None]
    sd = math.sqrt(statistics.fmean(s * s for s in spreads)) if n > 1 and spreads else comparison_sd
    return min(losses.values()) - mine, None if sd is None else sd / math.sqrt(n)


def _margin_text(margin: tuple[float, float | None] | None) -> str:
    """'0.0031 (se 0.0090, close)': the margin, its se, and whether it falls short of it."""
    if margin is None:
        return _DASH
    won_by, se = margin
    if se is None:
        return f"{won_by:.4f}"
    return f"{won_by:.4f} (se {se:.4f}{', close' if won_by < se else ''})"


def tuning_note(results: Results) -> str | None:
    """What the tuning table's margins mean, and how many choices were close calls (a margin
    below its se, which another tuning seed could reverse); None without any se."""
    n = _tune_seed_count(results)
    margins = [m for _, _, phase, sd in _phases(results) if (m := _margin(phase, n, sd))]
    judged = [won_by < se for won_by, se in margins if se is not None]
    if not judged:
        return None
    se = (
        "one seed's spread (the arm's sd of final loss over its comparison seeds, at the value "
        "chosen)"
        if n == 1
        else f"the standard error of a candidate's mean over its {n} tuning seeds (their "
        f"pooled sd / sqrt({n}))"
    )
    remedy = (
        f"; a rerun with --tune-seeds {2 * n} averages {2 * n} seeds per candidate, training "
        "only the new ones"
        if any(judged)
        else ""
    )
    return (
        f"margin: how far the chosen value beat the next best; se: {se}; close: a margin "
        f"below its se, which another tuning seed could reverse ({sum(judged)} of "
        f"{len(judged)} here{remedy})"
    )


def _side_text(v: VariantRow) -> str:
    """The timing pass's median step ms [interquartile range]."""
    row = v.get("side_by_side")
    if not row:
        return _DASH
    return f"{row['step_ms_median']:.1f} [{row['step_ms_q1']:.1f}, {row['step_ms_q3']:.1f}]"


def _overhead_text(v: VariantRow, comparable: bool, busy: bool = False) -> str:
    """Overhead over the baseline: the timing pass's with its range (marked unreliable when it
    ran on a `busy` machine), else the runs' own when their timings compare."""
    if v["is_baseline"]:
        return _DASH
    row = v.get("side_by_side")
    if v.get("overhead_source") == "timing pass" and row and row["overhead_pct"] is not None:
        text = f"{row['overhead_pct']:+.1f}% [{row['overhead_q1']:+.1f}, {row['overhead_q3']:+.1f}]"
        return _marked(f"{text} (within noise)" if row["within_noise"] else text, busy)
    if v.get("overhead_pct") is not None:
        return _num(v["overhead_pct"], "+.1f", "%")
    return _DASH if comparable else "not comparable"


def _memory_text(v: VariantRow) -> str:
    """Peak memory in GiB, marked RSS when it is the process's resident set size."""
    if v["peak_mem_bytes"] is None:
        return _DASH
    source = {"rss": " RSS", "allocator": ""}.get(v.get("peak_mem_source") or "", "")
    return f"{v['peak_mem_bytes'] / 2**30:.2f} GiB{source}"


def timing_rows(results: Results) -> list[TextRow]:
    """Per variant, TIMING_COLUMNS -> formatted text (for markdown and the Rich view)."""
    comparable, busy = bool(results.get("timing_comparable")), busy_timing(results)
    return [
        dict(
            zip(
                TIMING_COLUMNS,
                (
                    v["variant"],
                    _num(v["step_ms_median"], ".1f"),
                    _num(v["fwd_bwd_ms_median"], ".1f"),
                    _num(v["opt_ms_median"], ".1f"),
                    _num(v["refresh_ms_median"], ".1f"),
                    _num(v["tokens_per_s"], ",.0f"),
                    _side_text(v),
                    _overhead_text(v, comparable, busy),
                    _memory_text(v),
                ),
                strict=True,
            )
        )
        for v in _variants(results)
    ]


def _markdown_table(columns: Sequence[str], rows: Iterable[Mapping[str, str]]) -> str:
    """A markdown table of `rows` (column -> text)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render(results: Results, fmt: str) -> str:
    """The tables as 'markdown' (convergence + step time), 'csv' (one raw-number row per variant)
    or 'json' (the whole results object)."""
    return _in_format(fmt, results, _markdown, _csv)


_Rendered = TypeVar("_Rendered")  # what a format renders: results, or a scale summary

SCALE_TITLE = "speedup by scale (baseline steps / steps to its final loss, 95% CI)"


def scale_rows(scale: ScaleSummary) -> tuple[list[str], list[TextRow]]:
    """The speedup-by-scale table (`scale.scale_summary`): a column per preset, named with its
    parameter count, and a row per variant."""
    presets, by_preset = scale["presets"], scale["rows"]
    params = {r["preset"]: r["params"] for r in by_preset if r["params"]}
    names = [f"{p} ({params[p] / 1e6:.1f}M)" if p in params else p for p in presets]
    by = {(r["preset"], r["variant"]): r for r in by_preset}
    rows = []
    for variant in dict.fromkeys(r["variant"] for r in by_preset):
        row = {"Variant": variant}
        for name, preset in zip(names, presets, strict=True):
            r = by.get((preset, variant))
            row[name] = (
                _DASH
                if r is None
                else "baseline"
                if r["is_baseline"]
                else speedup_text(r.get("speedup"), r.get("speedup_ci"))
            )
        rows.append(row)
    return ["Variant", *names], rows


def render_scaled(by_preset: dict[str, Results], fmt: str) -> str:
    """Several presets' results as 'markdown' (each preset's tables under its name, then the
    speedup by scale) or 'csv' (one table, a preset column first)."""
    from .scale import scale_summary

    if fmt == "csv":
        budgets = budget_columns(list(by_preset.values()))
        return "".join(
            _csv(results, preset, header=i == 0, budgets=budgets)
            for i, (preset, results) in enumerate(by_preset.items())
        )
    return "".join(
        f"# preset {preset}\n\n{_markdown(r)}\n" for preset, r in by_preset.items()
    ) + _scale_markdown(scale_summary(by_preset))


def render_scale(scale: ScaleSummary, fmt: str) -> str:
    """A scale summary alone (a scale root's scale.json) as 'markdown' (the speedup-by-scale
    section a report of several presets ends with), 'csv' (one raw-number row per preset and
    variant) or 'json' (the summary)."""
    return _in_format(fmt, scale, _scale_markdown, _scale_csv)


def _in_format(
    fmt: str,
    data: _Rendered,
    to_markdown: Callable[[_Rendered], str],
    to_csv: Callable[[_Rendered], str],
) -> str:
    """`data` as 'markdown', 'csv' (by those functions) or 'json' (itself)."""
    if fmt == "json":
        return dumps(data, indent=2)
    if fmt in ("markdown", "csv"):
        return to_markdown(data) if fmt == "markdown" else to_csv(data)
    raise ValueError(f"unknown format {fmt!r}; choose one of markdown, csv, json")


def _scale_markdown(scale: ScaleSummary) -> str:
    """The speedup-by-scale table as a markdown section."""
    columns, rows = scale_rows(scale)
    return f"# Speedup by scale\n\n{SCALE_TITLE}\n\n{_markdown_table(columns, rows)}\n"


def _scale_csv(scale: ScaleSummary) -> str:
    """One row of raw numbers per preset and variant (SCALE_CSV_COLUMNS; empty where a value is
    missing)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, SCALE_CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for r in scale["rows"]:
        ci: Sequence[float | None] = r["speedup_ci"] or [None, None]
        row = {
            **r,
            "speedup_ci_low": ci[0],
            "speedup_ci_high": ci[1],
            "tuned": _tuned_cell(r["tuned"]),
        }
        writer.writerow(_csv_cells(row, SCALE_CSV_COLUMNS))
    return out.getvalue()


def _tuned_cell(tuned: Mapping[str, object] | None) -> str:
    """Tuned values as one csv cell: 'knob=value' joined by ';'."""
    return ";".join(f"{k}={x}" for k, x in (tuned or {}).items())


def _csv_cells(row: Mapping[str, object], columns: Sequence[str]) -> dict[str, object]:
    """A csv row's cells in `columns`, empty where `row` has no value."""
    return {k: "" if row.get(k) is None else row[k] for k in columns}


def _csv(
    results: Results,
    preset: str | None = None,
    header: bool = True,
    budgets: list[float] | None = None,
) -> str:
    """One row of raw numbers per variant (CSV_COLUMNS, after a preset column when `preset` is
    given, then the speedups at `budgets`, default the results' own; empty where a value is
    missing)."""
    out = io.StringIO()
    columns = CSV_COLUMNS if preset is None else ("preset", *CSV_COLUMNS)
    columns = (
        *columns,
        *budget_csv_columns(budget_columns([results]) if budgets is None else budgets),
    )
    writer = csv.DictWriter(out, columns, lineterminator="\n")
    if header:
        writer.writeheader()
    for v in _variants(results):
        ci: Sequence[float | None] = v.get("speedup_ci") or [None, None]
        paired: Sequence[float | None] = v.get("paired_delta_ci") or [None, None]
        steps: Sequence[int | None] = v.get("steps_to_target_bracket") or [None, None]
        evals: Sequence[float | None] = v.get("speedup_bracket") or [None, None]
        row = {
            **v,
            "speedup_ci_low": ci[0],
            "speedup_ci_high": ci[1],
            "steps_to_target_low": steps[0],
            "steps_to_target_high": steps[1],
            "speedup_bracket_low": evals[0],
            "speedup_bracket_high": evals[1],
            "paired_delta_ci_low": paired[0],
            "paired_delta_ci_high": paired[1],
            "tuned": _tuned_cell(v.get("tuned")),
            "timing_busy": results.get("timing_busy"),
            **budget_csv_cells(v),
        }
        if preset is not None:
            row["preset"] = preset
        writer.writerow(_csv_cells(row, columns))
    return out.getvalue()


def _markdown(results: Results) -> str:
    """The convergence and step-time tables with their notes, as markdown sections."""
    target = results["target_loss"]
    note = (
        f"Baseline: {results['baseline']}, final val loss {target:.4f} (the target)."
        if target is not None
        else "No completed baseline run: no target, deltas or overheads."
    )
    for extra in (precision_note(results), regime_note(results), split_note(results)):
        if extra:
            note += f" {extra[0].upper()}{extra[1:]}."
    note += "".join(f"\n\n**Not established:** {n}." for n in protocol_notes(results))
    tuning = tuning_rows(results)
    budgets = budget_table_rows(results)
    return (
        f"## Convergence\n\n{note}\n\n"
        f"{_markdown_table(CONVERGENCE_COLUMNS, convergence_rows(results))}\n\n"
        + _sentence_paragraph(power_note(results))
        + (
            f"## Budgets\n\n{BUDGET_TITLE[0].upper()}{BUDGET_TITLE[1:]}.\n\n"
            f"{_markdown_table(BUDGET_COLUMNS, budgets)}\n\n"
            + _sentence_paragraph(BUDGET_POWER_NOTE)
            if budgets
            else ""
        )
        + (f"## Tuning\n\n{_markdown_table(TUNING_COLUMNS, tuning)}\n\n" if tuning else "")
        + _sentence_paragraph(tuning_note(results))
        + budget_speedup_markdown(results)
        + f"## Step time\n\n{_markdown_table(TIMING_COLUMNS, timing_rows(results))}\n"
        + "".join(f"\n{n}.\n" for n in timing_notes(results))
    )


BUDGET_SPEEDUP_TITLE = "speedup vs budget"
_INF = "∞"


def budget_columns(by_preset: Iterable[Results]) -> list[float]:
    """The budgets any variant of these results has a speedup row at, ascending."""
    return sorted(
        {
            row["budget"]
            for results in by_preset
            for v in _variants(results)
            for row in v.get("budget_speedups") or ()
        }
    )


def budget_speedup_text(row: BudgetSpeedup | None) -> str:
    """A speedup from budgets with its 95% interval (an unbounded end as ∞), flagged when the
    interval holds 1 and when the baseline data it stands for lies outside the budgets run."""
    if row is None or (row["speedup"] is None and not row["unbounded"]):
        return _DASH
    text = _INF if row["unbounded"] else f"{row['speedup']:.2f}x"
    ci = row["speedup_ci"]
    if ci is not None:
        low, high = (_INF if end is None else f"{end:.2f}" for end in ci)
        text += f" [{low}, {high}]"
        if not ((ci[0] is None or ci[0] > 1) or (ci[1] is not None and ci[1] < 1)):
            text += " (not significant)"
    return text + (" (extrapolated)" if row["extrapolated"] else "")


def budget_speedup_rows(results: Results) -> tuple[list[str], list[TextRow]]:
    """The speedup-vs-budget table: a column per budget (a multiple of 20 tokens per
    non-embedding parameter), a row per variant compared; no rows without budgets."""
    budgets = budget_columns([results])
    columns = ["Variant", *(f"{b:g}x" for b in budgets)]
    rows = []
    for v in _variants(results):
        if v["is_baseline"] or "budget_speedups" not in v:
            continue
        by_budget = {row["budget"]: row for row in v["budget_speedups"]}
        cells = (budget_speedup_text(by_budget.get(b)) for b in budgets)
        rows.append(dict(zip(columns, (v["variant"], *cells), strict=True)))
    return columns, rows


def budget_speedup_notes(results: Results) -> list[str]:
    """How the speedup-vs-budget table was read: the baseline's law, the seeds it left out, and
    what the interval, "(extrapolated)" and ∞ mean; or why there is no law."""
    fit = next((v["budget_fit"] for v in _variants(results) if v.get("budget_fit")), None)
    if fit is None:
        return ["no baseline with budgets: no law to read speedups from"]
    law = fit["fit"]
    if law is None:
        return [f"no speedup from budgets: {fit['note']}"]
    notes = [_law_text(results["baseline"], law, fit)]
    if fit["left_out"]:
        notes.append(
            f"baseline seeds left out of the fit (a budget did not complete): "
            f"{', '.join(map(str, fit['left_out']))}"
        )
    low, high = (f"{b:g}x" for b in (fit["budgets"][0], fit["budgets"][-1]))
    notes.append(
        "speedup at a budget D (a multiple of 20 tokens per non-embedding parameter) = the "
        "tokens the baseline needs by its law to reach the variant's seed-mean loss at D, over "
        "D's tokens (Wen et al. 2025); 95% interval: paired bootstrap over seeds, the law "
        f"refitted on each resample; (extrapolated): that data lies outside the baseline's "
        f"budgets ({low} to {high}), so the number rests on the law beyond its points; "
        f"{_INF}: the loss is at or below the law's floor c, which the baseline never reaches"
    )
    return notes


def _law_text(baseline: str | None, law: PowerLawFit, fit: BudgetFit) -> str:
    """The baseline's law, L(D) = a D^-b + c (`fit`'s), and how far b and c move from seed to
    seed."""
    text = (
        f"law of {baseline}'s seed-mean final loss over {counted(len(fit['seeds']), 'seed')} "
        f"against tokens D: L(D) = {law['a']:.4g} D^-{law['b']:.3g} + {law['c']:.4g} "
        f"(rms residual {law['rmse']:.2g})"
    )
    seeds = [s["fit"] for s in fit["per_seed"] if s["fit"]]
    if len(seeds) > 1:
        spans = (
            f"{k} {min(s[k] for s in seeds):.3g} to {max(s[k] for s in seeds):.3g}"
            for k in ("b", "c")
        )
        text += f"; per seed {', '.join(spans)}"
    if len(seeds) < len(fit["per_seed"]):
        text += f" ({len(fit['per_seed']) - len(seeds)} seeds without a fit of their own)"
    return text


def budget_speedup_markdown(results: Results) -> str:
    """The speedup-vs-budget section with its notes; empty without budgets."""
    columns, rows = budget_speedup_rows(results)
    if not rows:
        return ""
    notes = "".join(f"\n{n}.\n" for n in budget_speedup_notes(results))
    return f"## Speedup vs budget\n\n{_markdown_table(columns, rows)}\n{notes}\n"


def budget_csv_columns(budgets: list[float]) -> list[str]:
    """The csv's columns for speedups from budgets: per budget, the speedup, its interval and
    whether it is extrapolated."""
    return [
        f"speedup_at_{b:g}x{part}"
        for b in budgets
        for part in ("", "_ci_low", "_ci_high", "_extrapolated")
    ]


def budget_csv_cells(v: VariantRow) -> dict[str, float | str | bool | None]:
    """A variant's speedups from budgets under `budget_csv_columns` (an unbounded one "inf")."""
    cells: dict[str, float | str | bool | None] = {}
    for row in v.get("budget_speedups") or ():
        head = f"speedup_at_{row['budget']:g}x"
        if row["speedup"] is None and not row["unbounded"]:
            continue
        ci = row["speedup_ci"] or [None, None]
        cells[head] = "inf" if row["unbounded"] else row["speedup"]
        if row["speedup_ci"]:
            cells[f"{head}_ci_low"] = "inf" if ci[0] is None else ci[0]
            cells[f"{head}_ci_high"] = "inf" if ci[1] is None else ci[1]
        cells[f"{head}_extrapolated"] = row["extrapolated"]
    return cells
