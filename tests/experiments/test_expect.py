"""`mousse report DIR --expect ...`: a CI gate over recorded results (no training)."""

from __future__ import annotations

import json

import pytest
from support.cli import FAST, assert_one_line_error, invoke_cli
from support.results import results_file

from mousse.experiments.expect import check, parse
from mousse.train.config import ConfigError


def results(
    mousse_losses=(1.40, 1.41, 1.39),
    muon_losses=(1.50, 1.52, 1.49),
    speedup=1.2,
    ci=(1.1, 1.3),
    overhead=4.0,
):
    runs = [
        {"variant": v, "seed": seed, "status": "completed", "final_val_loss": x}
        for v, xs in (("mousse", mousse_losses), ("muon", muon_losses))
        for seed, x in enumerate(xs)
    ]
    mean = lambda xs: sum(xs) / len(xs)
    return {
        "runs": runs,
        "variants": [
            {
                "variant": "muon",
                "final_val_loss_mean": mean(muon_losses),
                "speedup": None,
                "speedup_ci": None,
                "overhead_pct": None,
            },
            {
                "variant": "mousse",
                "final_val_loss_mean": mean(mousse_losses),
                "speedup": speedup,
                "speedup_ci": list(ci),
                "paired_delta_ci": [-0.12, -0.08],
                "overhead_pct": overhead,
            },
        ],
    }


@pytest.mark.parametrize(
    "expr, ok",
    [
        ("mousse < muon", True),
        ("muon < mousse", False),
        ("mousse < muon significant", True),
        ("loss(mousse) <= 1.4", True),
        ("speedup(mousse) >= 1.05", True),
        ("speedup(mousse) >= 1.25", False),
        ("speedup_low(mousse) > 1", True),
        ("paired_high(mousse) < 0", True),
        ("paired_low(mousse) > -0.1", False),
        ("mousse < muon paired significant", True),
        ("mousse < muon paired  significant", True),
        ("overhead(mousse) <= 3", False),
        ("overhead(mousse) < 10", True),
    ],
)
def test_expectations_hold_or_fail(expr, ok):
    holds, reason = check(expr, results())
    assert holds is ok and expr in reason


def test_the_reason_shows_the_measured_values_not_the_constants():
    assert check("speedup(mousse) >= 1.05", results())[1].endswith("holds: speedup(mousse) = 1.2")
    assert check("mousse < muon", results())[1].endswith("holds: mousse = 1.4, muon = 1.503")


def test_paired_significance_pairs_seeds_where_welch_sees_only_spread():
    """Seeds 0.1 apart, mousse 0.01-0.015 below muon on each: Welch's p is large, the paired
    test's small; a seed only one side ran is not a pair."""
    spread = results(mousse_losses=(1.49, 1.585, 1.69, 1.0), muon_losses=(1.50, 1.60, 1.70))
    assert not check("mousse < muon significant", spread)[0]
    holds, reason = check("mousse < muon paired significant", spread)
    assert holds and "p = 0.0" in reason
    noisy = results(mousse_losses=(1.49, 1.62, 1.69), muon_losses=(1.50, 1.60, 1.70))
    assert not check("mousse < muon paired significant", noisy)[0]
    one = results(mousse_losses=(1.40,), muon_losses=(1.50, 1.6))
    assert "fewer than 2 seeds" in check("mousse < muon paired significant", one)[1]


def test_significance_needs_seeds_and_a_real_gap():
    close = results(mousse_losses=(1.47, 1.53, 1.49))
    holds, reason = check("mousse < muon significant", close)
    assert not holds and "p = " in reason
    one = results(mousse_losses=(1.40,), muon_losses=(1.50,))
    assert "fewer than 2 seeds" in check("mousse < muon significant", one)[1]


@pytest.mark.parametrize(
    "expr, words",
    [
        ("mousse is better", "bad --expect"),
        ("speeed(mousse) > 1", "unknown function"),
        ("adam < muon", "not a variant"),
        ("speedup(mousse) > 1 paired significant", "compares two variants"),
        ("speedup(mousse) >= nan", "must be finite"),
        ("mousse < -inf", "must be finite"),
    ],
)
def test_bad_expectations_are_config_errors(expr, words):
    with pytest.raises(ConfigError, match=words):
        check(expr, results())


def test_missing_values_fail_the_gate():
    holds, reason = check("speedup(mousse) > 1", results(speedup=None))
    assert not holds and "missing" in reason
    assert parse("a <= b significant")[3] == "significant"
    assert parse("a <= b paired significant")[3] == "paired significant"
    assert parse("a <= b")[3] is None


@pytest.mark.slow
def test_report_gate_exit_codes(tmp_path):
    root = tmp_path / "a"
    args = [
        "ablate",
        "--alpha",
        "0.0",
        "--no-baseline",
        "--steps",
        "2",
        *FAST,
        "--ablation-dir",
        root,
        "--no-timing-pass",
    ]
    assert invoke_cli(*args).exit_code == 0
    loss = {
        v["variant"]: v["final_val_loss_mean"]
        for v in json.loads((root / "results.json").read_text())["variants"]
    }
    better = min(loss, key=loss.get)
    worse = max(loss, key=loss.get)
    ok = invoke_cli("report", root, "--expect", f"{better} < {worse}")
    assert ok.exit_code == 0 and "holds" in ok.stderr
    bad = invoke_cli("report", root, "--expect", f"{worse} < {better}")
    assert bad.exit_code == 5 and "FAILED" in bad.stderr and "convergence" in bad.stdout
    assert_one_line_error(invoke_cli("report", root, "--expect", "nonsense"), "bad --expect")
    # malformed: refused before the timing pass runs or a plot is written
    plot, before = tmp_path / "f.png", (root / "results.json").read_bytes()
    res = invoke_cli("report", root, "--retime", "--plot", plot, "--expect", "adam < 1")
    assert_one_line_error(res, "not a variant")
    assert not plot.exists() and not (root / "timing.json").exists()
    assert (root / "results.json").read_bytes() == before


@pytest.mark.parametrize(
    "expr, words",
    [
        ("mousse < 1 significant", "compares two variants"),
        ("mousse < 5 significant", "compares two variants"),
        ("speedup(mousse) >= speedup(muon) significant", "compares two variants"),
        ("adam < muon", "not a variant"),
        ("loss(adam) < 5", "not a variant"),
    ],
)
def test_a_malformed_expectation_is_exit_2_before_any_output_whatever_the_numbers(
    tmp_path, expr, words
):
    """Whether the comparison would hold or fail, a malformed expectation is bad input (exit 2),
    refused before the tables are printed."""
    res = invoke_cli("report", results_file(tmp_path / "results.json"), "--expect", expr)
    assert_one_line_error(res, words)
    assert res.stdout == ""


@pytest.mark.parametrize("expr, words", [("mousse <<< 1", "not a variant"), ("x", "bad --expect")])
def test_a_malformed_expectation_is_refused_before_the_plot_is_written(tmp_path, expr, words):
    """--plot with a malformed --expect: exit 2 and no figure, not a figure and then the error."""
    pytest.importorskip("matplotlib")
    plot = tmp_path / "f.png"
    res = invoke_cli("report", results_file(tmp_path / "r.json"), "--plot", plot, "--expect", expr)
    assert_one_line_error(res, words)
    assert not plot.exists() and res.stdout == ""


def test_an_expectation_that_ends_in_a_function_parses():
    """A term ending in ')' on the right, as in comparing two variants' speedups, is no typo."""
    assert check("1 < speedup(mousse)", results()) == (
        True,
        "'1 < speedup(mousse)' holds: speedup(mousse) = 1.2",
    )
    assert parse("loss(mousse) < loss(muon) paired significant")[3] == "paired significant"
