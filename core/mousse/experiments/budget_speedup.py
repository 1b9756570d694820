"""Speedup from budgets, the way Wen et al. 2025 measure it (pure functions, no I/O).

With `--budgets`, every run yields a final val loss per budget (its run row's "budgets": budget,
tokens, tokens_per_param, steps, status, final_val_loss, ascending). The baseline's final loss
is fitted against training tokens D, L(D) = a * D^(-b) + c (`stats.fit_power_law`, at least 4
budgets), and a variant's speedup at budget D is the data the baseline would need to reach the
variant's loss there, L^-1(loss), over D: 1.3x means the baseline needs 30% more data for the
same loss.

The point is read from the fit to the baseline's seed-mean losses, at the variant's seed-mean
loss, over the seeds both ran to that budget. Its 95% interval is a paired bootstrap over those
seeds: each resample of seeds (a seed takes its baseline and its variant losses along) is
refitted and inverted afresh, and the resampled speedups are read at expanded percentiles
(`stats.expanded_level`), as the tables' other intervals are. Each seed's own fit is recorded
beside (the baseline's `budget_fit`), to show how far the law moves from seed to seed.

A loss at or below the fit's floor c is one the baseline never reaches: the speedup is unbounded
(`unbounded`, its number None), as is an interval's end when resamples get there. A speedup
whose baseline data lies outside the budgets the baseline ran is `extrapolated`: it rests on the
law beyond its points.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from typing import TypedDict

from .stats import (
    BOOTSTRAP_SAMPLES,
    MIN_FIT_POINTS,
    PowerLaw,
    PowerLawFit,
    expanded_level,
    fit_power_law,
    quantile,
)


class _BudgetResult(TypedDict):
    budget: float
    tokens: int
    tokens_per_param: float
    steps: int
    status: str
    final_val_loss: float | None  # None unless that budget completed


class BudgetEntry(_BudgetResult, total=False):
    """One budget of a run record (`records.budget_record`), as its run row carries it."""

    run: str  # the run it was read from, when not the row's own (`records.read_budget_from`)


class SeedFit(TypedDict):
    """One baseline seed's own law (None where its losses give none)."""

    seed: int
    fit: PowerLawFit | None


class BudgetFit(TypedDict):
    """The baseline's law (`baseline_fit`): the baseline variant row's "budget_fit"."""

    budgets: list[float]
    tokens: list[int]
    seeds: list[int]  # the seeds that completed every budget: the fit's
    left_out: list[int]
    fit: PowerLawFit | None
    per_seed: list[SeedFit]
    note: str | None  # why there is no fit, when there is none


class BudgetSpeedup(TypedDict):
    """A variant's speedup at one budget (`speedup_row`): one of its row's "budget_speedups"."""

    budget: float
    tokens: int
    n: int
    loss: float | None
    baseline_tokens: float | None
    speedup: float | None
    unbounded: bool
    speedup_ci: list[float | None] | None  # an end None where it is unbounded
    extrapolated: bool | None


Seeds = tuple[int, ...]  # a (sorted) resample of seeds, repeats counted
FitOf = Callable[[Seeds], PowerLaw | None]  # a resample of seeds -> the baseline's fit
# seed -> {budget: (tokens, final val loss)} of one variant (`results.losses_by_budget`)
BudgetLosses = dict[int, dict[float, tuple[int, float]]]


def speedups(
    losses: Mapping[str, BudgetLosses], baseline: str | None
) -> tuple[BudgetFit, dict[str, list[BudgetSpeedup]]]:
    """From each variant's losses by seed and budget: the baseline's law (`baseline_fit`) and,
    for every other variant, one speedup row per budget it ran (`speedup_row`)."""
    base = losses.get(baseline, {}) if baseline else {}
    fit = baseline_fit(base)
    fit_of = _fit_cache(base, fit)
    rows: dict[str, list[BudgetSpeedup]] = {}
    for variant, by_seed in losses.items():
        if variant != baseline:
            budgets = sorted({b for by_budget in by_seed.values() for b in by_budget})
            rows[variant] = [speedup_row(b, by_seed, fit, fit_of) for b in budgets]
    return fit, rows


def baseline_fit(base: BudgetLosses) -> BudgetFit:
    """The baseline's law: its budgets and their tokens, the seeds that completed every budget,
    the fit to their seed-mean losses, each seed's own fit, and a note saying why there is no
    fit when there is none."""
    budgets = sorted({b for by_budget in base.values() for b in by_budget})
    seeds = [s for s in sorted(base) if len(base[s]) == len(budgets)]
    tokens = [base[seeds[0]][b][0] for b in budgets] if seeds else []
    per_seed: list[SeedFit] = [
        {"seed": s, "fit": _as_dict(fit_power_law(tokens, [base[s][b][1] for b in budgets]))}
        for s in seeds
    ]
    fit = _mean_fit(base, seeds, budgets, tokens) if seeds else None
    return {
        "budgets": budgets,
        "tokens": tokens,
        "seeds": seeds,
        "left_out": [s for s in sorted(base) if s not in seeds],
        "fit": _as_dict(fit),
        "per_seed": per_seed,
        "note": None if fit else _no_fit_note(budgets, seeds),
    }


def _no_fit_note(budgets: Sequence[float], seeds: Sequence[int]) -> str:
    """Why the baseline's losses give no law."""
    if len(budgets) < MIN_FIT_POINTS:
        shown = ", ".join(f"{b:g}x" for b in budgets) or "none"
        return (
            f"the baseline completed {len(budgets)} budgets ({shown}); the fit needs at least "
            f"{MIN_FIT_POINTS} (e.g. --budgets 0.25,0.5,1,2)"
        )
    if not seeds:
        return "no baseline seed completed every budget"
    return "the baseline's loss does not fall with its budget"


def _mean_fit(
    base: BudgetLosses, seeds: Sequence[int], budgets: Sequence[float], tokens: Sequence[int]
) -> PowerLaw | None:
    """The law fitted to the baseline's mean loss over `seeds` (repeats count) at each budget."""
    means = [statistics.fmean(base[s][b][1] for s in seeds) for b in budgets]
    return fit_power_law(tokens, means)


def _fit_cache(base: BudgetLosses, fit: BudgetFit) -> FitOf:
    """The baseline's fit per resample of seeds, each computed once: a bootstrap of n seeds has
    only C(2n - 1, n) distinct resamples (10 for 3 seeds), shared by every variant and budget."""
    cache: dict[Seeds, PowerLaw | None] = {}

    def fit_of(seeds: Seeds) -> PowerLaw | None:
        if seeds not in cache:
            cache[seeds] = _mean_fit(base, seeds, fit["budgets"], fit["tokens"])
        return cache[seeds]

    return fit_of


def _as_dict(fit: PowerLaw | None) -> PowerLawFit | None:
    return None if fit is None else fit.to_dict()


def speedup_row(
    budget: float, losses: BudgetLosses, fit: BudgetFit, fit_of: FitOf
) -> BudgetSpeedup:
    """A variant's speedup at one budget: over the seeds it shares with the baseline's fit, its
    mean loss, the baseline data that loss needs, the speedup (None and `unbounded` at or below
    the floor; None without a fit or a shared seed), its paired bootstrap interval (an end None
    where it is unbounded; None below two seeds) and whether the inverse left the budgets
    the baseline ran."""
    seeds = tuple(s for s in fit["seeds"] if budget in losses.get(s, {}))
    entry_seed = next(s for s in sorted(losses) if budget in losses[s])
    tokens = losses[entry_seed][budget][0]
    row: BudgetSpeedup = {
        "budget": budget,
        "tokens": tokens,
        "n": len(seeds),
        "loss": statistics.fmean(losses[s][budget][1] for s in seeds) if seeds else None,
        "baseline_tokens": None,
        "speedup": None,
        "unbounded": False,
        "speedup_ci": None,
        "extrapolated": None,
    }
    law = fit_of(seeds) if seeds and fit["fit"] else None
    if law is None:
        return row
    value = _speedup(law, seeds, losses, budget, tokens)
    needed = value * tokens
    return {
        **row,
        "baseline_tokens": needed if math.isfinite(needed) else None,
        "speedup": value if math.isfinite(value) else None,
        "unbounded": not math.isfinite(value),
        "speedup_ci": _interval(seeds, losses, budget, tokens, fit_of),
        "extrapolated": _outside(needed, fit["tokens"]),
    }


def _outside(needed: float, tokens: Sequence[int]) -> bool:
    """Whether the baseline data `needed` lies outside the budgets it ran (beyond rounding)."""
    return not min(tokens) * (1 - 1e-9) <= needed <= max(tokens) * (1 + 1e-9)


def _speedup(
    law: PowerLaw, seeds: Seeds, losses: BudgetLosses, budget: float, tokens: int
) -> float:
    """L^-1(the variant's mean loss over `seeds`) / tokens; inf at or below the floor."""
    return law.data_for(statistics.fmean(losses[s][budget][1] for s in seeds)) / tokens


def _interval(
    seeds: Seeds,
    losses: BudgetLosses,
    budget: float,
    tokens: int,
    fit_of: FitOf,
    level: float = 0.95,
) -> list[float | None] | None:
    """The paired bootstrap interval of the speedup: seeds resampled with replacement (a fixed
    seed: the same interval every time), the law refitted on each resample; None below two
    seeds or when no resample fits."""
    if len(seeds) < 2:
        return None
    rng = random.Random(0)
    values: list[float] = []
    for _ in range(BOOTSTRAP_SAMPLES):
        sample = tuple(sorted(rng.choices(seeds, k=len(seeds))))
        law = fit_of(sample)
        if law is not None:
            values.append(_speedup(law, sample, losses, budget, tokens))
    if not values:
        return None
    values.sort()
    tail = (1 - expanded_level(level, len(seeds))) / 2
    return [_end(values, tail), _end(values, 1 - tail)]


def _end(values: list[float], q: float) -> float | None:
    """The q-quantile of sorted values; None where it is unbounded."""
    end = quantile(values, q)
    return end if math.isfinite(end) else None
