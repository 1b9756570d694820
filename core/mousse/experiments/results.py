"""Ablation results: statistics and tables from run records (pure functions, no I/O).

A run record is the runner's dict for one run: name, variant, knobs, seed, is_baseline, status
("completed" | "diverged" | "failed" | "pending" | "running"), final_val_loss, best_val_loss, steps,
step_ms_median, fwd_bwd_ms_median, opt_ms_median, refresh_ms_median, tokens_per_s, peak_mem_bytes
(None on CPU) and curve, a list of {"step", "val_loss", "seconds"} eval points.

The headline metric is the paper's: steps to reach the baseline's final val loss (averaged over its
seeds), and the reduction in % of the baseline's steps. Loss statistics use completed runs only;
diverged and failed runs are listed but never averaged. Step times average every run that reported
them (a diverged run's step time is still a real measurement).
"""

from __future__ import annotations

import csv
import io
import math
import random
import statistics
from collections import Counter

from mousse.train.fileio import dumps

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_SAMPLES = 2000
TIMING_KEYS = (
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "tokens_per_s",
)
CONVERGENCE_COLUMNS = (
    "Variant",
    "Tuned",
    "n",
    "Final val loss",
    "Δ vs baseline",
    "p",
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
    "delta_vs_baseline",
    "p_value",
    "significant",
    "steps_to_target",
    "reached",
    "step_reduction_pct",
    "speedup",
    "speedup_ci_low",
    "speedup_ci_high",
    "speedup_time",
    *TIMING_KEYS,
    "overhead_pct",
    "peak_mem_bytes",
)


# ---- statistics -------------------------------------------------------------------------------


def steps_to_target(curve: list, target: float | None) -> tuple:
    """(step, seconds) at which the val loss curve first reaches `target`, linearly interpolated
    between the last evaluation above it and the first at or below it; (None, None) if never."""
    if target is None:
        return None, None
    previous = None
    for point in curve:
        loss = point.get("val_loss")
        if loss is None or not math.isfinite(loss):
            previous = None
            continue
        if loss <= target:
            if previous is None or previous["val_loss"] == loss:
                return point["step"], point.get("seconds")
            frac = (previous["val_loss"] - target) / (previous["val_loss"] - loss)
            step = previous["step"] + frac * (point["step"] - previous["step"])
            t0, t1 = previous.get("seconds"), point.get("seconds")
            return step, None if t0 is None or t1 is None else t0 + frac * (t1 - t0)
        previous = point
    return None, None


def speedup(
    baseline_finals: list[float],
    baseline_budget: float | None,
    curves: list[list],
    key: str = "step",
) -> float | None:
    """The paper's headline: the baseline's budget (steps, or seconds with key="seconds") over
    the variant's mean steps to the baseline's mean final loss; 0 when a variant run never gets
    there, None without a baseline."""
    if not baseline_finals or not baseline_budget or not curves:
        return None
    target = statistics.fmean(baseline_finals)
    index = 0 if key == "step" else 1
    reached = [steps_to_target(c, target)[index] for c in curves]
    if any(r is None for r in reached):
        return 0.0
    mean = statistics.fmean(reached)
    return baseline_budget / mean if mean > 0 else None


def bootstrap_ci(
    baseline_finals: list[float],
    baseline_budget: float | None,
    curves: list[list],
    key: str = "step",
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Percentile bootstrap interval of `speedup` over seeds: baseline runs and variant runs
    resampled with replacement (a fixed seed: the same interval every time); None with fewer than
    two runs on either side."""
    if len(baseline_finals) < 2 or len(curves) < 2 or not baseline_budget:
        return None
    rng = random.Random(seed)
    values = sorted(
        speedup(
            [rng.choice(baseline_finals) for _ in baseline_finals],
            baseline_budget,
            [rng.choice(curves) for _ in curves],
            key,
        )
        or 0.0
        for _ in range(n_boot)
    )
    low, high = (1 - level) / 2, 1 - (1 - level) / 2
    return [_quantile(values, low), _quantile(values, high)]


def _quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 1000):
        for numerator in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = (
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1.0) / (a + b + 2.0):  # the fraction converges fast here; else use the symmetry
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value of Student's t with df degrees of freedom: I_{df/(df+t^2)}(df/2, 1/2)."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch_t_test(a: list, b: list) -> dict:
    """Two-sided Welch t-test of mean(a) vs mean(b); t, df and p are None when a group has n < 2."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return {"t": None, "df": None, "p": None}
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:  # both groups constant: either identical or infinitely far apart
        return {
            "t": 0.0 if diff == 0 else math.copysign(math.inf, diff),
            "df": float(na + nb - 2),
            "p": 1.0 if diff == 0 else 0.0,
        }
    t = diff / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))
    return {"t": t, "df": df, "p": t_two_sided_p(t, df)}


# ---- the results object -----------------------------------------------------------------------


def _finite(x):
    """x as a float when it is a finite number, else None (results must be strict JSON)."""
    return float(x) if isinstance(x, (int, float)) and math.isfinite(x) else None


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.fmean(values) if values else None


def _pct_change(value, reference) -> float | None:
    return None if value is None or not reference else (value - reference) / reference * 100.0


def _reduction(steps, baseline_steps) -> float | None:
    return (
        None
        if steps is None or not baseline_steps
        else (baseline_steps - steps) / baseline_steps * 100.0
    )


def _variant(
    name: str,
    group: list,
    is_base: bool,
    base_losses: list,
    baseline_steps,
    base_step_ms,
    curves: list[list],
    base_seconds,
) -> dict:
    """One variant's summary over its seeds (loss statistics from completed runs only)."""
    done = [r for r in group if r["status"] == "completed"]
    losses = [r["final_val_loss"] for r in done if r["final_val_loss"] is not None]
    mean = _mean(losses)
    target = _mean(base_losses)
    reached = [r["steps_to_target"] for r in done if r["steps_to_target"] is not None]
    steps = _mean(reached)
    test = {"t": None, "df": None, "p": None} if is_base else welch_t_test(losses, base_losses)
    p = test["p"]
    if is_base:
        significance = "baseline"
    elif p is None:
        significance = "n<2" if base_losses else "no baseline loss"
    else:
        significance = "significant" if p < SIGNIFICANCE_LEVEL else "not significant"
    peak = [r["peak_mem_bytes"] for r in group if r["peak_mem_bytes"] is not None]
    return {
        "variant": name,
        "knobs": group[0]["knobs"],
        "is_baseline": is_base,
        "n": len(losses),
        "n_runs": len(group),
        "statuses": dict(Counter(r["status"] for r in group)),
        "final_val_loss_mean": mean,
        "final_val_loss_std": statistics.stdev(losses) if len(losses) >= 2 else None,
        "best_val_loss_mean": _mean(r["best_val_loss"] for r in done),
        "delta_vs_baseline": None if mean is None or target is None else mean - target,
        "t": _finite(test["t"]),
        "df": test["df"],
        "p_value": p,
        "significant": None if p is None else p < SIGNIFICANCE_LEVEL,
        "significance": significance,
        "steps_to_target": steps,
        "reached": len(reached),
        "seconds_to_target": _mean(r["seconds_to_target"] for r in done),
        "step_reduction_pct": _reduction(steps, baseline_steps),
        **{k: _mean(r[k] for r in group) for k in TIMING_KEYS},
        "overhead_pct": _pct_change(_mean(r["step_ms_median"] for r in group), base_step_ms),
        "peak_mem_bytes": max(peak) if peak else None,
        "peak_mem_source": next(
            (r.get("peak_mem_source") for r in group if r.get("peak_mem_source")), None
        ),
        "n_seeds": len(losses),
        "n_params": max((r["n_params"] for r in group if r.get("n_params")), default=None),
        **_speedups(is_base, base_losses, baseline_steps, base_seconds, curves),
    }


def _speedups(
    is_base: bool, base_losses: list, baseline_steps, base_seconds, curves: list[list]
) -> dict:
    """Speedup over the baseline in steps and in training seconds, each with its bootstrap
    interval (None for the baseline itself and without a target)."""
    out = {}
    for suffix, key, budget in (("", "step", baseline_steps), ("_time", "seconds", base_seconds)):
        point = None if is_base else speedup(base_losses, budget, curves, key)
        ci = None if is_base or point is None else bootstrap_ci(base_losses, budget, curves, key)
        out[f"speedup{suffix}"], out[f"speedup{suffix}_ci"] = point, ci
    return out


def summarize(records: list, baseline_name: str | None = None) -> dict:
    """The results object: {"baseline", "target_loss", "baseline_steps", "runs", "variants"}.

    `baseline_name` is the baseline's run or variant name (default: the runs flagged is_baseline);
    `baseline` in the result is its variant name (= run name with one seed), or None without one.
    Target = mean final val loss of the baseline's completed runs; baseline_steps = their mean
    step count (the baseline reaches its own final loss at the end of its budget).
    """
    base_variant = next(
        (
            r["variant"]
            for r in records
            if baseline_name in (r["name"], r["variant"])
            or (baseline_name is None and r.get("is_baseline"))
        ),
        None,
    )
    if baseline_name is not None and base_variant is None:
        raise ValueError(f"baseline {baseline_name!r} is not among the run records")
    base_done = [r for r in records if r["variant"] == base_variant and r["status"] == "completed"]
    base_losses = [
        x for x in (_finite(r.get("final_val_loss")) for r in base_done) if x is not None
    ]
    target = _mean(base_losses)
    baseline_steps = _mean(r.get("steps") for r in base_done) if target is not None else None
    contexts = timing_contexts(records)
    comparable = len(contexts) == 1 and None not in contexts
    base_step_ms = (
        _mean(_finite(r.get("step_ms_median")) for r in records if r["variant"] == base_variant)
        if comparable
        else None
    )

    runs = []
    for r in records:
        steps, seconds = steps_to_target(r.get("curve") or [], target)
        step_ms = _finite(r.get("step_ms_median"))
        runs.append(
            {
                "name": r["name"],
                "variant": r["variant"],
                "knobs": dict(r.get("knobs") or {}),
                "seed": r.get("seed"),
                "is_baseline": r["variant"] == base_variant,
                "status": r["status"],
                "final_val_loss": _finite(r.get("final_val_loss")),
                "best_val_loss": _finite(r.get("best_val_loss")),
                "steps": r.get("steps"),
                "steps_to_target": steps,
                "seconds_to_target": seconds,
                "step_reduction_pct": _reduction(steps, baseline_steps),
                **{k: _finite(r.get(k)) for k in TIMING_KEYS},
                "peak_mem_bytes": r.get("peak_mem_bytes"),
                "n_params": r.get("n_params"),
                "peak_mem_source": r.get("peak_mem_source"),
                "timing_context": r.get("timing_context"),
                "overhead_pct": _pct_change(step_ms, base_step_ms),
            }
        )

    curves: dict[str, list[list]] = {}
    for r in records:
        if r["status"] == "completed" and _finite(r.get("final_val_loss")) is not None:
            curves.setdefault(r["variant"], []).append(r.get("curve") or [])
    base_seconds = _mean(c[-1].get("seconds") for c in curves.get(base_variant, []) if c)
    variants = [
        _variant(
            name,
            [r for r in runs if r["variant"] == name],
            name == base_variant,
            base_losses,
            baseline_steps,
            base_step_ms,
            curves.get(name, []),
            base_seconds,
        )
        for name in dict.fromkeys(r["variant"] for r in runs)
    ]
    return {
        "baseline": base_variant,
        "target_loss": target,
        "baseline_steps": baseline_steps,
        "runs": runs,
        "variants": variants,
        "timing_comparable": comparable,
        "timing_contexts": len(contexts),
    }


def _context_key(context) -> tuple | None:
    """Where a run's timings were taken: (host, invocation, device, --parallel share)."""
    if not context or not context.get("invocation"):
        return None
    return (
        context.get("host"),
        context["invocation"],
        context.get("device"),
        context.get("parallel", 1),
    )


def timing_contexts(records: list) -> set:
    """The distinct places the runs' timings were taken (None: a run that does not say)."""
    return {
        _context_key(r.get("timing_context"))
        for r in records
        if r.get("status") not in ("pending", None) and r.get("step_ms_median") is not None
    }


def apply_timing_pass(results: dict, record: dict | None) -> dict:
    """The side-by-side timings of the timing pass (`experiments.timing`) into each variant: its
    step time with quartiles and its overhead over the baseline measured in the same pass."""
    results = {**results, "timing_pass": record}
    passed = (record or {}).get("variants", {})
    for v in results["variants"]:
        row = passed.get(v["variant"])
        v["side_by_side"] = row
        if (
            row is not None
            and results["baseline"]
            and record.get("baseline") == results["baseline"]
        ):
            v["overhead_pct"] = row["overhead_pct"]
            v["overhead_source"] = "timing pass"
        elif results.get("timing_comparable") and v["overhead_pct"] is not None:
            v["overhead_source"] = "runs"
        else:
            v["overhead_pct"], v["overhead_source"] = None, None
    return results


def timing_notes(results: dict) -> list[str]:
    """Where the step-time table's numbers come from, and when they do not compare."""
    notes = []
    record = results.get("timing_pass")
    if record:
        notes.append(
            f"side by side: one process on {record['host']} ({record['device']}, "
            f"{record['threads']} threads), {record['rounds']} interleaved rounds of "
            f"{record['steps_per_round']} steps, {record['when']}; overheads are "
            "per-round ratios to the baseline, median [interquartile range]"
        )
    if not results.get("timing_comparable"):
        n = results.get("timing_contexts", 0)
        notes.append(
            "the runs' own step times were taken in "
            + (f"{n} different invocations or hosts" if n > 1 else "an unrecorded place")
            + ": they do not compare, and no overhead is computed from them"
            + ("" if record else " (run `mousse report DIR --retime` for a side-by-side pass)")
        )
    return notes


def protocol_notes(results: dict) -> list[str]:
    """What a comparison does not establish, in plain words: untuned lrs, a single seed."""
    protocol = results.get("protocol") or {}
    notes = []
    if not protocol.get("tuned"):
        notes.append(
            "untuned: every variant ran at its preset lr, so a gap may only mean one lr "
            "suits one variant better (add --tune lr)"
        )
    n = [v["n_seeds"] for v in results["variants"] if v.get("n_seeds")]
    if n and min(n) < 2:
        notes.append(
            "single seed: no interval or significance test, so no gap here is "
            "established (add --seeds 3)"
        )
    return notes


# ---- tables -----------------------------------------------------------------------------------

_DASH = "—"


def _num(value, spec: str, suffix: str = "") -> str:
    return _DASH if value is None else f"{value:{spec}}{suffix}"


def _status_text(statuses: dict) -> str:
    if set(statuses) == {"completed"}:
        return "completed"
    return ", ".join(f"{count} {status}" for status, count in statuses.items())


def _p_text(v: dict) -> str:
    if v["p_value"] is None:
        return _DASH if v["is_baseline"] else v["significance"]
    text = f"{v['p_value']:.3g}"
    return text if v["significant"] else f"{text} (not significant)"


def _steps_text(v: dict, has_target: bool) -> str:
    if not has_target or v["n"] == 0:
        return _DASH
    if v["steps_to_target"] is None:
        return "never"
    text = f"{v['steps_to_target']:.0f}"
    return text if v["reached"] == v["n"] else f"{text} ({v['reached']}/{v['n']} reached)"


def _loss_text(v: dict) -> str:
    text = _num(v["final_val_loss_mean"], ".4f")
    return text if v["final_val_loss_std"] is None else f"{text} ± {v['final_val_loss_std']:.4f}"


def _tuned_text(v: dict) -> str:
    tuned = v.get("tuned")
    if not tuned:
        return "tuning" if v.get("tuning") else _DASH
    edge = set(v.get("tuned_at_edge") or ())
    return ", ".join(
        f"{k}={_value_text(x)}" + (" (grid edge)" if k in edge else "") for k, x in tuned.items()
    )


def _value_text(x) -> str:
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def _speedup_text(v: dict, suffix: str = "") -> str:
    point, ci = v.get(f"speedup{suffix}"), v.get(f"speedup{suffix}_ci")
    if v["is_baseline"] or point is None:
        return _DASH
    if point == 0:
        return "not reached"
    if ci is None:
        return f"{point:.2f}x"
    text = f"{point:.2f}x [{ci[0]:.2f}, {ci[1]:.2f}]"
    return text if ci[0] > 1 or ci[1] < 1 else f"{text} (not significant)"


def convergence_rows(results: dict) -> list[dict]:
    """Per variant, CONVERGENCE_COLUMNS -> formatted text (for markdown and the Rich view)."""
    has_target = results["target_loss"] is not None
    return [
        dict(
            zip(
                CONVERGENCE_COLUMNS,
                (
                    v["variant"],
                    _tuned_text(v),
                    str(v["n"]),
                    _loss_text(v),
                    _DASH if v["is_baseline"] else _num(v["delta_vs_baseline"], "+.4f"),
                    _p_text(v),
                    _steps_text(v, has_target),
                    _speedup_text(v),
                    _speedup_text(v, "_time"),
                    _status_text(v["statuses"]),
                ),
            )
        )
        for v in results["variants"]
    ]


def _side_text(v: dict) -> str:
    row = v.get("side_by_side")
    if not row:
        return _DASH
    return f"{row['step_ms_median']:.1f} [{row['step_ms_q1']:.1f}, {row['step_ms_q3']:.1f}]"


def _overhead_text(v: dict, comparable: bool) -> str:
    if v["is_baseline"]:
        return _DASH
    row = v.get("side_by_side")
    if v.get("overhead_source") == "timing pass" and row and row["overhead_pct"] is not None:
        text = f"{row['overhead_pct']:+.1f}% [{row['overhead_q1']:+.1f}, {row['overhead_q3']:+.1f}]"
        return f"{text} (within noise)" if row["within_noise"] else text
    if v.get("overhead_pct") is not None:
        return _num(v["overhead_pct"], "+.1f", "%")
    return _DASH if comparable else "not comparable"


def _memory_text(v: dict) -> str:
    if v["peak_mem_bytes"] is None:
        return _DASH
    source = {"rss": " RSS", "allocator": ""}.get(v.get("peak_mem_source") or "", "")
    return f"{v['peak_mem_bytes'] / 2**30:.2f} GiB{source}"


def timing_rows(results: dict) -> list[dict]:
    """Per variant, TIMING_COLUMNS -> formatted text (for markdown and the Rich view)."""
    comparable = bool(results.get("timing_comparable"))
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
                    _overhead_text(v, comparable),
                    _memory_text(v),
                ),
            )
        )
        for v in results["variants"]
    ]


def _markdown_table(columns, rows) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render(results: dict, fmt: str) -> str:
    """The tables as 'markdown' (convergence + step time), 'csv' (one raw-number row per variant)
    or 'json' (the whole results object)."""
    if fmt == "json":
        return dumps(results, indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for v in results["variants"]:
            ci = v.get("speedup_ci") or [None, None]
            row = {
                **v,
                "speedup_ci_low": ci[0],
                "speedup_ci_high": ci[1],
                "tuned": ";".join(f"{k}={x}" for k, x in (v.get("tuned") or {}).items()),
            }
            writer.writerow({k: "" if row.get(k) is None else row[k] for k in CSV_COLUMNS})
        return out.getvalue()
    if fmt == "markdown":
        target = results["target_loss"]
        note = (
            f"Baseline: {results['baseline']}, final val loss {target:.4f} (the target)."
            if target is not None
            else "No completed baseline run: no target, deltas or overheads."
        )
        note += "".join(f"\n\n**Not established:** {n}." for n in protocol_notes(results))
        return (
            f"## Convergence\n\n{note}\n\n"
            f"{_markdown_table(CONVERGENCE_COLUMNS, convergence_rows(results))}\n\n"
            f"## Step time\n\n{_markdown_table(TIMING_COLUMNS, timing_rows(results))}\n"
            + "".join(f"\n{n}.\n" for n in timing_notes(results))
        )
    raise ValueError(f"unknown format {fmt!r}; choose one of markdown, csv, json")
