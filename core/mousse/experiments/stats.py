"""The statistics behind an ablation's comparison (pure functions, no I/O): steps to a target
loss and the speedup they give over a baseline, its bootstrap interval over seeds, and Welch's
t-test of final losses (with the incomplete beta function its p-value needs, so no scipy)."""

from __future__ import annotations

import math
import random
import statistics

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_SAMPLES = 2000


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
    return [quantile(values, low), quantile(values, high)]


def quantile(sorted_values: list[float], q: float) -> float:
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
