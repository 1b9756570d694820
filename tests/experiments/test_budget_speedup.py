"""Speedup from budgets (Wen et al. 2025): the power law of the baseline's final loss against
data, fitted to synthetic curves with known parameters, and the speedups read from it."""

from __future__ import annotations

import csv
import io
import json
import math
import random

import pytest
from support.cli import assert_one_line_error, invoke_cli
from support.results import declared_keys, record, results_file

from mousse.experiments.expect import check
from mousse.experiments.results import summarize
from mousse.experiments.stats import PowerLaw, fit_power_law, quantile
from mousse.experiments.table_rows import (
    budget_speedup_notes,
    budget_speedup_rows,
    render,
    render_scaled,
)
from mousse.train.fileio import dumps

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


MULTIPLES = (0.25, 0.5, 1, 2)
OFFSETS = (-0.05, 0.0, 0.06)  # each seed's shift of both arms' losses: what a paired test removes


def budget_record(
    variant, seed, loss_at, *, baseline=False, multiples=MULTIPLES, failed=(), own=0.0
):
    """A run record of `variant` whose final loss at each budget is loss_at(tokens) plus its
    seed's offset and `own` (this arm's alone); the budgets in `failed` diverged."""
    row = record(f"{variant}-s{seed}", [3.0, 2.0], variant=variant, seed=seed, baseline=baseline)
    row["budgets"] = [
        {
            "budget": m,
            "tokens": int(20 * 1e5 * m),
            "tokens_per_param": 20 * m,
            "steps": int(100 * m),
            "status": "diverged" if m in failed else "completed",
            "final_val_loss": None if m in failed else loss_at(20 * 1e5 * m) + OFFSETS[seed] + own,
        }
        for m in multiples
    ]
    return row


def base_law(d):
    return 300.0 * d**-0.4 + 1.5


NOISE = (0.004, -0.003, 0.0)  # a variant's own noise per seed, that pairing does not remove


def ablation(*variants, seeds=3, noise=NOISE, **kwargs):
    """The baseline `muon` on base_law and each (name, loss_at) variant, over `seeds` seeds,
    the variants with their own `noise` per seed."""
    arms = [("muon", base_law, True, (0.0,) * 3), *((n, f, False, noise) for n, f in variants)]
    return [
        budget_record(name, s, f, baseline=is_base, own=own[s], **kwargs)
        for name, f, is_base, own in arms
        for s in range(seeds)
    ]


def speedups(results, variant):
    v = next(v for v in results["variants"] if v["variant"] == variant)
    return v["budget_speedups"]


def test_a_variant_that_needs_less_data_is_that_much_faster_at_every_budget():
    """A variant on the baseline's law at 1.3 times the data is 1.3x at every budget. The seeds
    shift both arms alike by up to 0.06: the paired bootstrap resamples a seed's two arms
    together, so its interval has no width. The largest budget is read beyond the baseline's
    (2.6x against 2x): extrapolated."""
    results = summarize(ablation(("mousse", lambda d: base_law(1.3 * d)), noise=(0.0,) * 3))
    rows = speedups(results, "mousse")
    assert [r["budget"] for r in rows] == list(MULTIPLES)
    for row in rows:
        assert row["speedup"] == pytest.approx(1.3, rel=1e-6) and row["n"] == 3
        assert row["speedup_ci"] == pytest.approx([1.3, 1.3], rel=1e-6)
        assert row["baseline_tokens"] == pytest.approx(1.3 * row["tokens"], rel=1e-6)
    assert [r["extrapolated"] for r in rows] == [False, False, False, True]
    fit = next(v for v in results["variants"] if v["is_baseline"])["budget_fit"]
    assert fit["seeds"] == [0, 1, 2] and fit["note"] is None
    assert (fit["fit"]["a"], fit["fit"]["b"]) == pytest.approx((300.0, 0.4), rel=1e-6)
    assert [s["fit"]["c"] for s in fit["per_seed"]] == pytest.approx([1.45, 1.5, 1.56])


def test_a_copy_of_the_baseline_is_1x_read_inside_its_budgets():
    """The copy's own noise averages to 0.0003: about 1x, inside the budgets (no rounding
    pushes the largest budget out), with an interval around it that the noise widens."""
    for row in speedups(summarize(ablation(("copy", base_law), noise=(0.0,) * 3)), "copy"):
        assert row["speedup"] == pytest.approx(1.0, rel=1e-9) and not row["extrapolated"]
    for row in speedups(summarize(ablation(("copy", base_law))), "copy"):
        assert row["speedup"] == pytest.approx(1.0, abs=0.02)
        assert row["speedup_ci"][0] < 1.0 < row["speedup_ci"][1]


def test_against_another_variant_the_speedup_inverts():
    records = ablation(("mousse", lambda d: base_law(1.3 * d)), noise=(0.0,) * 3)
    results = summarize(records, "mousse")
    assert [r["speedup"] for r in speedups(results, "muon")] == pytest.approx([1 / 1.3] * 4)


def non_finite(obj):
    if isinstance(obj, float):
        return not math.isfinite(obj)
    if isinstance(obj, dict):
        return any(non_finite(x) for x in obj.values())
    if isinstance(obj, list):
        return any(non_finite(x) for x in obj)
    return False


def test_a_loss_below_the_baseline_floor_is_an_unbounded_speedup_never_inf_or_nan():
    """Below the floor c = 1.5 the baseline never gets there: unbounded, said so, and the
    results stay strict JSON numbers (None where unbounded, never inf or NaN)."""
    results = summarize(ablation(("deep", lambda d: base_law(d) - 0.8 * d / 4e6)))
    rows = speedups(results, "deep")
    assert rows[-1]["unbounded"] and rows[-1]["speedup"] is None
    assert rows[-1]["extrapolated"] and rows[-1]["baseline_tokens"] is None
    assert rows[-1]["speedup_ci"][1] is None  # the interval's top is unbounded too
    assert not rows[0]["unbounded"] and rows[0]["speedup"] > 1
    assert not non_finite(results)
    assert json.loads(dumps(results)) == json.loads(json.dumps(results))


def test_fewer_than_four_budgets_give_a_note_and_no_speedups():
    results = summarize(ablation(("mousse", base_law), multiples=(0.5, 1, 2)))
    fit = results["variants"][0]["budget_fit"]
    assert fit["fit"] is None and "needs at least 4" in fit["note"]
    assert all(
        r["speedup"] is None and r["speedup_ci"] is None for r in speedups(results, "mousse")
    )
    assert "no speedup from budgets: " in render(results, "markdown")


def test_a_baseline_without_budgets_gives_a_note_not_a_crash():
    """Variants ran with --budgets, the baseline's runs without: no law, said so."""
    records = ablation(("mousse", base_law))
    for r in records[:3]:
        del r["budgets"]
    results = summarize(records)
    assert results["variants"][0]["budget_fit"]["note"].startswith("the baseline completed 0")
    notes = budget_speedup_notes(results)
    assert len(notes) == 1 and notes[0].startswith("no speedup from budgets: ")
    assert "| mousse | — | — | — | — |" in render(results, "markdown")


def test_a_baseline_seed_without_every_budget_is_left_out_of_the_fit():
    records = ablation(("mousse", lambda d: base_law(1.3 * d)))
    records[2] = budget_record("muon", 2, base_law, baseline=True, failed=(0.5,))
    results = summarize(records)
    fit = results["variants"][0]["budget_fit"]
    assert fit["seeds"] == [0, 1] and fit["left_out"] == [2]
    assert all(r["n"] == 2 for r in speedups(results, "mousse"))
    assert "baseline seeds left out of the fit (a budget did not complete): 2" in render(
        results, "markdown"
    )


def test_one_seed_gives_a_speedup_without_an_interval():
    rows = speedups(summarize(ablation(("mousse", base_law), seeds=1, noise=(0.0,))), "mousse")
    assert rows[0]["speedup"] == pytest.approx(1.0) and rows[0]["speedup_ci"] is None


def test_results_without_budgets_carry_no_budget_keys():
    results = summarize([record("muon", [2.0, 1.5], baseline=True), record("mousse", [2.0, 1.4])])
    assert not any(k.startswith("budget") for v in results["variants"] for k in v)
    assert "Speedup vs budget" not in render(results, "markdown")
    assert "speedup_at" not in render(results, "csv")


def test_the_typed_budget_rows_declare_exactly_the_keys_results_hold():
    """BudgetRow, BudgetFit, SeedFit and BudgetSpeedup declare the keys of what summarize
    writes with budgets, and VariantRow every key of its variant rows."""
    from mousse.experiments.budget_speedup import BudgetFit, BudgetSpeedup, SeedFit
    from mousse.experiments.results import BudgetRow, VariantRow

    results = summarize(ablation(("mousse", lambda d: base_law(1.3 * d))))
    assert all(set(b) == declared_keys(BudgetRow) for b in results["budgets"])
    base, mousse = results["variants"]
    assert set(base["budget_fit"]) == declared_keys(BudgetFit)
    assert all(set(s) == declared_keys(SeedFit) for s in base["budget_fit"]["per_seed"])
    assert all(set(row) == declared_keys(BudgetSpeedup) for row in mousse["budget_speedups"])
    assert set(base) | set(mousse) <= declared_keys(VariantRow)


def test_the_tables_show_speedup_against_budget_with_its_marks():
    results = summarize(
        ablation(
            ("mousse", lambda d: base_law(1.3 * d)),
            ("copy", base_law),
            ("deep", lambda d: base_law(d) - 0.8 * d / 4e6),
        )
    )
    columns, rows = budget_speedup_rows(results)
    assert columns == ["Variant", "0.25x", "0.5x", "1x", "2x"]
    by_variant = {r["Variant"]: r for r in rows}
    assert set(by_variant) == {"mousse", "copy", "deep"}  # the baseline has no row
    assert by_variant["mousse"]["1x"].startswith("1.30x [")
    assert by_variant["mousse"]["2x"].endswith("(extrapolated)")
    assert "(not significant)" in by_variant["copy"]["1x"]
    assert by_variant["deep"]["2x"].startswith("∞ [") and "∞]" in by_variant["deep"]["2x"]
    markdown = render(results, "markdown")
    assert "## Speedup vs budget" in markdown and "L(D) = 300 D^-0.4 + " in markdown
    assert markdown.index("## Speedup vs budget") < markdown.index("## Step time")
    table = list(csv.DictReader(io.StringIO(render(results, "csv"))))
    mousse = next(r for r in table if r["variant"] == "mousse")
    assert float(mousse["speedup_at_1x"]) == pytest.approx(1.3, abs=0.01)
    assert mousse["speedup_at_2x_extrapolated"] == "True"
    deep = next(r for r in table if r["variant"] == "deep")
    assert deep["speedup_at_2x"] == "inf" and deep["speedup_at_2x_ci_high"] == "inf"
    assert next(r for r in table if r["variant"] == "muon")["speedup_at_1x"] == ""


@pytest.fixture(scope="module")
def budget_results(tmp_path_factory):
    """results.json of mousse (1.3x in data) and deep (below the floor at 2x) against muon."""
    results = summarize(
        ablation(
            ("mousse", lambda d: base_law(1.3 * d)),
            ("deep", lambda d: base_law(d) - 0.8 * d / 4e6),
        )
    )
    path = tmp_path_factory.mktemp("budgets") / "results.json"
    path.write_text(dumps(results))
    return path


@pytest.mark.parametrize(
    ("fmt", "shown"),
    [
        ("table", "speedup vs budget"),
        ("markdown", "## Speedup vs budget"),
        ("csv", "speedup_at_0.25x"),
        ("json", '"budget_speedups"'),
    ],
)
def test_report_shows_speedup_against_budget_in_every_format(budget_results, fmt, shown):
    res = invoke_cli("report", budget_results, "--format", fmt)
    assert res.exit_code == 0 and shown in res.stdout, res


@pytest.mark.parametrize(
    ("expr", "ok"),
    [
        ("speedup_at(mousse, 1) >= 1.25", True),
        ("speedup_at(mousse, 1) >= 1.35", False),
        ("speedup_at_low(mousse, 0.5) > 1", True),
        ("speedup_at(deep, 2) > 1000", True),  # unbounded: beyond any number
        ("speedup_at(deep, 2.0) > speedup_at(mousse,2)", True),
    ],
)
def test_expectations_on_speedups_from_budgets(budget_results, expr, ok):
    holds, reason = check(expr, json.loads(budget_results.read_text()))
    assert holds is ok and expr in reason


@pytest.mark.parametrize(
    ("expr", "words"),
    [
        ("speedup_at(mousse, 4) > 1", "has speedups at 0.25, 0.5, 1, 2, not at 4"),
        ("speedup_at(muon, 1) > 1", "no speedups from budgets"),
        ("speedup_at(mousse) > 1", "takes a variant and a budget"),
        ("speedup_at(mousse, -1) > 1", "takes a variant and a budget"),
        ("speedup_at_low(mousse, x) > 1", "takes a variant and a budget"),
        ("speedup_at(mousse, 1) > 1 significant", "compares two variants"),
    ],
)
def test_a_malformed_budget_expectation_is_exit_2_before_any_output(budget_results, expr, words):
    res = invoke_cli("report", budget_results, "--expect", expr)
    assert_one_line_error(res, words)
    assert res.stdout == ""


def test_a_budget_expectation_without_a_law_cannot_be_decided(tmp_path):
    """Three budgets give no law: the gate fails (exit 5), saying a value is missing."""
    path = tmp_path / "results.json"
    path.write_text(dumps(summarize(ablation(("mousse", base_law), multiples=(0.5, 1, 2)))))
    res = invoke_cli("report", path, "--expect", "speedup_at(mousse, 1) > 1")
    assert res.exit_code == 5 and "cannot be decided" in res.stderr, res


def test_a_quantile_next_to_an_unbounded_value_is_still_the_finite_one():
    """Unbounded speedups sort last: a quantile that lands exactly on a finite value is that
    value (not 0 * inf = nan), one that interpolates into an infinite one is inf."""
    assert quantile([1.0, 2.0, math.inf], 0.5) == 2.0
    assert quantile([1.0, 2.0, math.inf], 0.75) == math.inf
    assert quantile([math.inf, math.inf], 0.3) == math.inf


def test_the_budget_figure_draws_what_the_table_says(budget_results, tmp_path, monkeypatch):
    """One line per variant against budget on a log axis; filled where the interval excludes 1,
    a diamond where extrapolated, a triangle marked ∞ at the top where unbounded."""
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    results = summarize(
        ablation(
            ("mousse", lambda d: base_law(1.3 * d)),
            ("copy", base_law),
            ("deep", lambda d: base_law(d) - 0.8 * d / 4e6),
        )
    )
    assert plot.has_budget_speedups(results)
    plot.plot_budget_speedup(results, tmp_path / "b.png")
    (ax,) = drawn[-1].axes
    assert ax.get_xscale() == "log"
    labels = [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]
    assert labels == ["mousse", "copy", "deep", "muon (baseline)"]
    colors = plot.variant_colors(["muon", "mousse", "copy", "deep"], "muon")
    points = {}  # (variant, budget) -> (speedup drawn, marker, filled)
    for line in ax.get_lines():
        if line.get_marker() in ("o", "D", "^"):
            variant = next(v for v, c in colors.items() if c == line.get_color())
            budget = min(MULTIPLES, key=lambda m: abs(math.log(m / line.get_xdata()[0])))
            filled = line.get_markerfacecolor() != "white"
            points[variant, budget] = (line.get_ydata()[0], line.get_marker(), filled)
    assert points["mousse", 1][0] == pytest.approx(1.3, abs=0.01)
    assert [points["mousse", m][1:] for m in MULTIPLES] == [("o", True)] * 3 + [("D", True)]
    assert not any(points["copy", m][2] for m in MULTIPLES)  # every interval holds 1
    top, marker, _ = points["deep", 2]
    assert marker == "^" and top >= max(y for y, _, _ in points.values())
    assert [t.get_text() for t in ax.texts] == ["∞"]
    assert "L(D) = 300 D^-0.4" in drawn[-1].get_supxlabel()


def test_an_interval_end_above_the_budget_figure_is_a_triangle_with_its_value(
    budget_results, tmp_path, monkeypatch
):
    """A bounded speedup whose interval reaches ∞ (or past the axis) ends in a triangle at the
    top marked with that end, not in a cap that reads as the interval's end."""
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    results = summarize(ablation(("mousse", lambda d: base_law(1.3 * d))))
    (mousse,) = [v for v in results["variants"] if v["variant"] == "mousse"]
    mousse["budget_speedups"][0]["speedup_ci"] = [1.2, None]
    mousse["budget_speedups"][1]["speedup_ci"] = [1.2, 50.0]
    plot.plot_budget_speedup(results, tmp_path / "b.png")
    (ax,) = drawn[-1].axes
    assert [t.get_text() for t in ax.texts] == ["∞", "50x"]
    top = max(line.get_ydata()[0] for line in ax.get_lines() if line.get_marker() == "^")
    assert [t.xy[1] for t in ax.texts] == [top, top]


def test_report_plot_draws_the_budget_figure_beside_the_curves(budget_results, tmp_path):
    pytest.importorskip("matplotlib")
    res = invoke_cli("report", budget_results, "--plot", tmp_path / "f.png")
    assert res.exit_code == 0 and "speedup vs budget: " in res.stderr, res
    assert (tmp_path / "f-budgets.png").stat().st_size > 0
    res = invoke_cli("report", results_file(tmp_path / "plain.json"), "--plot", tmp_path / "g.png")
    assert res.exit_code == 0 and not (tmp_path / "g-budgets.png").exists(), res


def test_several_presets_share_one_csv_header_with_every_budget():
    """A preset without budgets beside one with them: one header, its budget cells empty."""
    with_budgets = summarize(ablation(("mousse", lambda d: base_law(1.3 * d)), noise=(0.0,) * 3))
    without = summarize([record("muon", [2.0, 1.5], baseline=True), record("mousse", [2.0, 1.4])])
    table = list(
        csv.DictReader(io.StringIO(render_scaled({"small": with_budgets, "tiny": without}, "csv")))
    )
    mousse = {r["preset"]: r for r in table if r["variant"] == "mousse"}
    assert float(mousse["small"]["speedup_at_1x"]) == pytest.approx(1.3)
    assert mousse["tiny"]["speedup_at_1x"] == ""
