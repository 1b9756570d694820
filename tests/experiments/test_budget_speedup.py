"""Speedup from budgets (Wen et al. 2025): the power law of the baseline's final loss against
data, fitted to synthetic curves with known parameters, and the speedups read from it."""

from __future__ import annotations

import math
import random

import pytest

from mousse.experiments.stats import PowerLaw, fit_power_law

TOKENS = [20 * 1e5 * m for m in (0.25, 0.5, 1, 2)]  # 4 budgets of a 100k-parameter model


def law(a: float, b: float, c: float, data: list[float] = TOKENS) -> list[float]:
    return [a * d ** (-b) + c for d in data]


@pytest.mark.parametrize(
    ("a", "b", "c"),
    [(300.0, 0.4, 1.5), (5e3, 0.7, 2.0), (20.0, 0.2, 0.0), (1e6, 1.0, 3.2), (40.0, 0.25, 1.0)],
)
def test_the_fit_recovers_a_known_law(a, b, c):
    fit = fit_power_law(TOKENS, law(a, b, c))
    assert fit is not None
    assert (fit.a, fit.b, fit.c) == pytest.approx((a, b, c), rel=1e-6, abs=1e-9)
    assert fit.rmse < 1e-9


def test_the_fit_recovers_a_law_over_more_budgets_in_any_order():
    data = [20 * 1e5 * m for m in (2, 0.125, 1, 0.25, 4, 0.5)]
    fit = fit_power_law(data, law(300.0, 0.4, 1.5, data))
    assert fit is not None and (fit.a, fit.b, fit.c) == pytest.approx((300.0, 0.4, 1.5), rel=1e-6)


def test_a_noisy_fit_keeps_its_constraints_and_stays_near_the_law():
    rng = random.Random(0)
    for _ in range(20):
        losses = [y + rng.gauss(0, 0.01) for y in law(300.0, 0.4, 1.5)]
        fit = fit_power_law(TOKENS, losses)
        assert fit is not None
        assert fit.a > 0 and fit.b > 0 and 0 <= fit.c < min(losses)
        predicted = [fit.a * d ** (-fit.b) + fit.c for d in TOKENS]
        assert max(abs(p - y) for p, y in zip(predicted, losses, strict=True)) < 0.03


@pytest.mark.parametrize(
    ("data", "losses"),
    [
        (TOKENS[:3], law(300.0, 0.4, 1.5)[:3]),  # three budgets: no fit
        ([*TOKENS[:3], TOKENS[2]], [2.0, 1.9, 1.8, 1.8]),  # three distinct sizes
        (TOKENS, [2.0, 1.9, math.nan, 1.7]),
        (TOKENS, [2.0, 1.9, math.inf, 1.7]),
        ([0.0, *TOKENS[1:]], [2.0, 1.9, 1.8, 1.7]),
        (TOKENS, [1.0, 1.1, 1.2, 1.3]),  # the loss grows with data
        (TOKENS, [1.5, 1.5, 1.5, 1.5]),  # or stays flat
    ],
)
def test_no_fit_where_there_is_nothing_to_fit(data, losses):
    assert fit_power_law(data, losses) is None


def test_the_inverse_gives_the_data_back_and_infinity_at_or_below_the_floor():
    fit = PowerLaw(a=300.0, b=0.4, c=1.5, rmse=0.0)
    for d, y in zip(TOKENS, law(300.0, 0.4, 1.5), strict=True):
        assert fit.data_for(y) == pytest.approx(d, rel=1e-12)
    assert fit.data_for(1.5) == math.inf and fit.data_for(1.2) == math.inf
    flat = PowerLaw(a=1.0, b=0.01, c=1.5, rmse=0.0)  # e^2070 tokens: beyond any float
    assert flat.data_for(1.5 + 1e-9) == math.inf
