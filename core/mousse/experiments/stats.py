"""The statistics behind an ablation's comparison (pure functions, no I/O): steps to a target
loss and the two evaluations that bracket it, seed-mean curves and the speedup they give over a
baseline (with the range its evaluations' spacing allows), its bootstrap interval over seeds,
Welch's t-test of final losses (with the incomplete beta function its p-value needs, so no
scipy), the paired t-test and bootstrap interval of per-seed differences, and the power law of
final loss against training data that speedups from budgets read (`fit_power_law`)."""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple, TypedDict

from mousse.train.summary import CurvePoint  # a run's curve, as its summary.json has it

SIGNIFICANCE_LEVEL = 0.05
BOOTSTRAP_SAMPLES = 2000


class MeanPoint(TypedDict):
    """One evaluation step of a seed-mean curve (`mean_curve`)."""

    step: int
    val_loss: float
    seconds: float | None  # None when a curve lacks them


Curve = Sequence[CurvePoint] | Sequence[MeanPoint]  # a run's curve or a seed-mean one
Curves = Sequence[Sequence[CurvePoint]]  # runs' val loss curves (one per seed)
CurveKey = Literal["step", "seconds"]  # what a speedup counts: steps or training seconds


class TTest(TypedDict):
    """A t-test's statistic, degrees of freedom and two-sided p (all None without one)."""

    t: float | None
    df: float | None
    p: float | None


class _Evaluation(NamedTuple):
    """A curve point with a finite loss, as `_crossing` reads it."""

    step: int
    loss: float
    seconds: float | None


def _crossing(curve: Curve, target: float | None) -> tuple[_Evaluation | None, _Evaluation] | None:
    """(the last evaluation above `target` just before it, or None, and the first evaluation at
    or below it) on a val loss curve; None if it never gets there."""
    if target is None:
        return None
    previous = None
    for point in curve:
        loss = point.get("val_loss")
        if loss is None or not math.isfinite(loss):
            previous = None
            continue
        here = _Evaluation(point["step"], loss, point.get("seconds"))
        if loss <= target:
            return previous, here
        previous = here
    return None


def steps_to_target(curve: Curve, target: float | None) -> tuple[float | None, float | None]:
    """(step, seconds) at which the val loss curve first reaches `target`, linearly interpolated
    between the last evaluation above it and the first at or below it; (None, None) if never."""
    crossing = _crossing(curve, target)
    if crossing is None or target is None:
        return None, None
    previous, point = crossing
    if previous is None or previous.loss == point.loss:
        return point.step, point.seconds
    frac = (previous.loss - target) / (previous.loss - point.loss)
    step = previous.step + frac * (point.step - previous.step)
    t0, t1 = previous.seconds, point.seconds
    return step, None if t0 is None or t1 is None else t0 + frac * (t1 - t0)


def target_bracket(curve: Curve, target: float | None) -> list[int] | None:
    """[the step of the last evaluation above `target`, that of the first at or below it]: where
    the curve crosses it as far as its evaluations say (`steps_to_target` interpolates inside);
    0 below when no evaluation before it says otherwise. None if it never gets there."""
    crossing = _crossing(curve, target)
    if crossing is None:
        return None
    previous, point = crossing
    return [previous.step if previous else 0, point.step]


def losses_by_step(curve: Sequence[CurvePoint]) -> dict[int, tuple[float, float | None]]:
    """step -> (val loss, seconds) of a curve's evaluations that have a loss (the last one at
    a step when several are)."""
    return {
        p["step"]: (loss, p.get("seconds"))
        for p in curve
        if (loss := p.get("val_loss")) is not None
    }


def mean_curve(curves: Curves) -> list[MeanPoint]:
    """The seed-mean val loss curve: at every evaluation step all the curves share, their mean
    val loss and mean seconds (None when a curve lacks them). A non-finite loss makes that
    point's mean non-finite."""
    by_step = [losses_by_step(c) for c in curves]
    if not by_step:
        return []
    shared = sorted(set.intersection(*(set(points) for points in by_step)))
    out: list[MeanPoint] = []
    for step in shared:
        points = [points[step] for points in by_step]
        seconds = [s for _, s in points if s is not None]
        out.append(
            {
                "step": step,
                "val_loss": sum(loss for loss, _ in points) / len(points),
                "seconds": None if len(seconds) < len(points) else sum(seconds) / len(seconds),
            }
        )
    return out


def speedup(baseline_curves: Curves, curves: Curves, key: CurveKey = "step") -> float | None:
    """The paper's headline over seeds, on seed-mean curves, in steps (or seconds with
    key="seconds"): the baseline's budget over the variant's steps to the baseline's final loss;
    when the variant never gets there, the baseline's steps to the variant's final loss over the
    variant's budget (below 1). A copy of the baseline gives 1. None without curves on either
    side."""
    reading = _speedup_reading(baseline_curves, curves, key)
    if reading is None:
        return None
    base, variant, base_budget, budget, target = reading
    index = 0 if key == "step" else 1
    reached = steps_to_target(variant, target)[index]
    if reached is not None:
        return base_budget / reached if reached > 0 else None
    if not math.isfinite(variant[-1]["val_loss"]):
        return 0.0
    behind = steps_to_target(base, variant[-1]["val_loss"])[index]
    return None if behind is None else behind / budget


def _speedup_reading(
    baseline_curves: Curves, curves: Curves, key: CurveKey
) -> tuple[list[MeanPoint], list[MeanPoint], float, float, float] | None:
    """What a speedup reads (`speedup`): the baseline's and the variant's seed-mean curves, their
    budgets in `key` (steps or seconds) and the target (the baseline's final loss); None when a
    side has no curve, no budget or no finite target."""
    base, variant = mean_curve(baseline_curves), mean_curve(curves)
    if not base or not variant:
        return None
    base_budget, budget = base[-1].get(key), variant[-1].get(key)
    target = base[-1]["val_loss"]
    if not base_budget or not budget or not math.isfinite(target):
        return None
    return base, variant, base_budget, budget, target


def speedup_bracket(baseline_curves: Curves, curves: Curves) -> list[float | None] | None:
    """The range of step speedups the evaluations' spacing allows (`speedup` reads a point
    inside it by interpolation): the baseline's budget over each end of the variant's
    `target_bracket` (None above when the bracket starts at step 0: unbounded), or for a variant
    that never gets there the baseline's bracket to the variant's final loss over the variant's
    budget. None where `speedup` has no value from a crossing."""
    reading = _speedup_reading(baseline_curves, curves, "step")
    if reading is None:
        return None
    base, variant, base_budget, budget, target = reading
    bracket = target_bracket(variant, target)
    if bracket is not None:
        low, high = bracket
        return [base_budget / high, base_budget / low if low else None] if high else None
    final = variant[-1]["val_loss"]
    behind = target_bracket(base, final) if math.isfinite(final) else None
    return None if behind is None else [behind[0] / budget, behind[1] / budget]


def bootstrap_ci(
    baseline_curves: Curves,
    curves: Curves,
    key: CurveKey = "step",
    n_boot: int = BOOTSTRAP_SAMPLES,
    seed: int = 0,
    level: float = 0.95,
) -> list[float] | None:
    """Expanded percentile bootstrap interval of `speedup` over seeds: baseline runs and variant
    runs resampled with replacement (a fixed seed: the same interval every time), its percentiles
    widened for the smaller side's seed count (`expanded_level`); None with fewer than two runs
    on either side."""
    if len(baseline_curves) < 2 or len(curves) < 2:
        return None
    rng = random.Random(seed)
    resampled = (
        speedup(
            [rng.choice(baseline_curves) for _ in baseline_curves],
            [rng.choice(curves) for _ in curves],
            key,
        )
        for _ in range(n_boot)
    )
    values = sorted(v for v in resampled if v is not None)
    if not values:
        return None
    tail = (1 - expanded_level(level, min(len(baseline_curves), len(curves)))) / 2
    return [quantile(values, tail), quantile(values, 1 - tail)]


def expanded_level(level: float, n: int) -> float:
    """The coverage at which to read a bootstrap of `n` samples so that it is as wide as a t
    interval at `level` (Hesterberg's expanded percentile interval: the normal quantile
    sqrt(n / (n - 1)) t_{n-1}). A plain percentile bootstrap of 3 seeds is about half as wide as
    the t-test's interval, and would call gaps significant that the t-test does not."""
    z = math.sqrt(n / (n - 1)) * t_quantile(1 - (1 - level) / 2, n - 1)
    return 1 - math.erfc(z / math.sqrt(2))


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default) of sorted values; inf where an infinite
    value takes part."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    low, high = sorted_values[lo], sorted_values[min(lo + 1, len(sorted_values) - 1)]
    return low if pos == lo or low == high else low + (pos - lo) * (high - low)


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


def t_quantile(q: float, df: float) -> float:
    """The q-quantile (q > 0.5) of Student's t with df degrees of freedom, by bisection on the
    two-sided p-value."""
    low, high = 0.0, 1.0
    while t_two_sided_p(high, df) > 2 * (1 - q):
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if t_two_sided_p(mid, df) > 2 * (1 - q) else (low, mid)
    return (low + high) / 2


def holm(p_values: list[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None: not in the family): reading
    each adjusted p against the level bounds the chance that any of the family's tests calls a
    difference significant that is not there, which with 9 variants at 0.05 is otherwise 37%."""
    ranked = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, (p, i) in enumerate(ranked):
        running = max(running, min(1.0, (len(ranked) - k) * p))
        adjusted[i] = running
    return adjusted


def _welch(a: Sequence[float], b: Sequence[float]) -> tuple[float, float, float] | None:
    """(mean(a) - mean(b), its standard error, Welch-Satterthwaite df); None when a group has
    n < 2. Both groups constant: the standard error is 0 and df is na + nb - 2."""
    na, nb = len(a), len(b)
    if na < 2 or nb < 2:
        return None
    va, vb = statistics.variance(a) / na, statistics.variance(b) / nb
    diff = statistics.fmean(a) - statistics.fmean(b)
    if va + vb == 0:
        return diff, 0.0, float(na + nb - 2)
    return diff, math.sqrt(va + vb), (va + vb) ** 2 / (va**2 / (na - 1) + vb**2 / (nb - 1))


def welch_t_test(a: Sequence[float], b: Sequence[float]) -> TTest:
    """Two-sided Welch t-test of mean(a) vs mean(b); t, df and p are None when a group has n < 2."""
    welch = _welch(a, b)
    if welch is None:
        return {"t": None, "df": None, "p": None}
    diff, se, df = welch
    if se == 0:  # both groups constant: either identical or infinitely far apart
        return {
            "t": 0.0 if diff == 0 else math.copysign(math.inf, diff),
            "df": df,
            "p": 1.0 if diff == 0 else 0.0,
        }
    t = diff / se
    return {"t": t, "df": df, "p": t_two_sided_p(t, df)}


def welch_interval(
    a: Sequence[float], b: Sequence[float], level: float = 0.95
) -> list[float] | None:
    """The interval of mean(a) - mean(b) that Welch's test inverts: 0 lies outside it exactly
    when the test's (unadjusted) p is below 1 - level. None when a group has n < 2."""
    welch = _welch(a, b)
    if welch is None:
        return None
    diff, se, df = welch
    half = se * t_quantile(1 - (1 - level) / 2, df) if se else 0.0
    return [diff - half, diff + half]


def paired_differences(a: Mapping[int, float], b: Mapping[int, float]) -> list[float]:
    """a[seed] - b[seed] for every seed both sides have (seed -> final loss), in seed order: in an
    ablation every seed runs the same initialisation and data order in every arm."""
    return [a[seed] - b[seed] for seed in sorted(a.keys() & b.keys())]


def paired_t_test(diffs: Sequence[float]) -> TTest:
    """Two-sided paired t-test: the mean of the per-seed differences against 0 (df = n - 1); t,
    df and p are None with fewer than two pairs."""
    n = len(diffs)
    if n < 2:
        return {"t": None, "df": None, "p": None}
    mean, sd = statistics.fmean(diffs), statistics.stdev(diffs)
    if sd == 0:  # every pair differs by the same amount: no spread to weigh it against
        return {
            "t": 0.0 if mean == 0 else math.copysign(math.inf, mean),
            "df": float(n - 1),
            "p": 1.0 if mean == 0 else 0.0,
        }
    t = mean / (sd / math.sqrt(n))
    return {"t": t, "df": float(n - 1), "p": t_two_sided_p(t, n - 1)}


POWER = 0.8  # the chance a test should have of finding a difference that is there


def seeds_for_power(
    mean_diff: float,
    sd_diff: float,
    level: float = SIGNIFICANCE_LEVEL,
    power: float = POWER,
    t_correction: bool = True,
) -> int | None:
    """The seeds a two-sided paired t-test at `level` needs to find a true mean per-seed
    difference `mean_diff`, whose differences spread by `sd_diff`, with probability `power`:
    n = ((z_{1-level/2} + z_{power}) * sd_diff / mean_diff)^2, rounded up (the normal
    approximation); with `t_correction`, the smallest n from there up at which the formula holds
    with t quantiles of n - 1 degrees of freedom for the z ones. At least 2; None for no
    difference (no n suffices)."""
    if mean_diff == 0 or not math.isfinite(mean_diff) or not math.isfinite(sd_diff):
        return None
    ratio = (sd_diff / mean_diff) ** 2
    normal = statistics.NormalDist()
    z = normal.inv_cdf(1 - level / 2) + normal.inv_cdf(power)
    n = max(2, math.ceil(round(z * z * ratio, 9)))

    def t_sum(n: int) -> float:
        return t_quantile(1 - level / 2, n - 1) + t_quantile(power, n - 1)

    while t_correction and t_sum(n) ** 2 * ratio > n:
        n += 1
    return n


def paired_bootstrap_ci(
    diffs: list[float], n_boot: int = BOOTSTRAP_SAMPLES, seed: int = 0, level: float = 0.95
) -> list[float] | None:
    """Expanded percentile bootstrap interval of the mean per-seed difference, the pairs
    resampled whole (a fixed seed: the same interval every time); None with fewer than two."""
    if len(diffs) < 2:
        return None
    rng = random.Random(seed)
    values = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(n_boot))
    tail = (1 - expanded_level(level, len(diffs))) / 2
    return [quantile(values, tail), quantile(values, 1 - tail)]


class PowerLawFit(TypedDict):
    """A `PowerLaw` as results.json records it."""

    a: float
    b: float
    c: float
    rmse: float


MIN_FIT_POINTS = 4  # a power law with a floor has 3 parameters: 4 points leave one to check it
_EXPONENTS = tuple(10 ** (-2 + 3 * i / 199) for i in range(200))  # b from 0.01 to 10, log-spaced
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True)
class PowerLaw:
    """L(D) = a * D^(-b) + c: final loss against training data D (tokens), with a > 0, b > 0
    and the floor 0 <= c below every fitted loss; rmse is the root mean squared residual."""

    a: float
    b: float
    c: float
    rmse: float

    def data_for(self, loss: float) -> float:
        """The data the law needs to reach `loss`, L^-1(loss) = (a / (loss - c))^(1/b); inf
        when `loss` is at or below the floor c (more data never gets there)."""
        if loss <= self.c:
            return math.inf
        log_data = (math.log(self.a) - math.log(loss - self.c)) / self.b
        return math.exp(log_data) if log_data < 700 else math.inf

    def to_dict(self) -> PowerLawFit:
        return {"a": self.a, "b": self.b, "c": self.c, "rmse": self.rmse}


def fit_power_law(data: Sequence[float], losses: Sequence[float]) -> PowerLaw | None:
    """The least-squares fit of L(D) = a * D^(-b) + c to final losses at MIN_FIT_POINTS or more
    distinct data sizes D; None with fewer, with a number that is not finite or a D that is not
    positive, or when the loss does not fall with D (its least-squares slope against log D is not
    negative: a law that falls would fit it only by a degenerate, flat curve).

    Given b the law is linear in (a, c), so the squared error in loss space is minimised over b
    alone (variable projection): on a log grid of b from 0.01 to 10, then by golden section
    between the best point's neighbours, with (a, c) in closed form at each b, c held to
    [0, min loss) (a loss floor is never negative, and one above a loss could not be reached)."""
    points = list(zip(data, losses, strict=True))
    if len({d for d, _ in points}) < MIN_FIT_POINTS or not all(
        math.isfinite(d) and d > 0 and math.isfinite(y) for d, y in points
    ):
        return None
    ref = math.exp(statistics.fmean(math.log(d) for d, _ in points))  # D in units of ref
    logs, ys = [math.log(d / ref) for d, _ in points], [y for _, y in points]
    mean = statistics.fmean(ys)
    if math.fsum(t * (y - mean) for t, y in zip(logs, ys, strict=True)) >= 0:  # the slope
        return None
    grid = [(b, *_projected(b, logs, ys)) for b in _EXPONENTS]
    best = min(range(len(grid)), key=lambda i: grid[i][1])
    low, high = _EXPONENTS[max(best - 1, 0)], _EXPONENTS[min(best + 1, len(_EXPONENTS) - 1)]
    for _ in range(60):  # the bracket shrinks by 0.618 a step: to 1e-12 of its width
        m1, m2 = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
        if _projected(m1, logs, ys)[0] <= _projected(m2, logs, ys)[0]:
            high = m2
        else:
            low = m1
    refined = ((low + high) / 2, *_projected((low + high) / 2, logs, ys))
    b, sse, a_ref, c = min(grid[best], refined, key=lambda fit: fit[1])
    if a_ref <= 0:
        return None
    return PowerLaw(a=a_ref * ref**b, b=b, c=c, rmse=math.sqrt(sse / len(ys)))


def _projected(b: float, logs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """(squared error, a, c) of the best y = a * x + c with x = exp(-b * log D) under a >= 0 and
    0 <= c < min(y): the unconstrained least squares when it obeys them, else the best on the
    edges c = 0, c just below min(y) and a = 0 (a convex problem: its optimum is on one)."""
    xs = [math.exp(-b * t) for t in logs]
    n, sx, sy = len(xs), math.fsum(xs), math.fsum(ys)
    sxx, sxy = math.fsum(x * x for x in xs), math.fsum(x * y for x, y in zip(xs, ys, strict=True))
    floor = min(ys)
    top = floor - 1e-9 * max(max(ys) - floor, abs(floor), 1e-12)  # c stays below every loss
    det = n * sxx - sx * sx
    a = (n * sxy - sx * sy) / det if det > 0 else 0.0
    c = (sy - a * sx) / n
    if a > 0 and 0 <= c <= top:
        candidates = [(a, c)]
    else:
        on_c = [(max(0.0, (sxy - edge * sx) / sxx), edge) for edge in (0.0, max(top, 0.0))]
        candidates = [*on_c, (0.0, min(max(sy / n, 0.0), max(top, 0.0)))]
    return min(
        (math.fsum((a * x + c - y) ** 2 for x, y in zip(xs, ys, strict=True)), a, c)
        for a, c in candidates
    )
