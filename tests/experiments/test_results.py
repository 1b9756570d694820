"""Ablation statistics and tables on synthetic run records with known answers."""

import csv
import io
import json
import math
import statistics

import pytest
from support.results import curve, declared_keys, record

from mousse.experiments.results import summarize
from mousse.experiments.stats import (
    holm,
    paired_bootstrap_ci,
    paired_differences,
    paired_t_test,
    speedup,
    speedup_bracket,
    steps_to_target,
    t_two_sided_p,
    target_bracket,
    welch_t_test,
)
from mousse.experiments.table_rows import (
    CONVERGENCE_COLUMNS,
    TIMING_COLUMNS,
    convergence_rows,
    render,
    render_scaled,
    timing_rows,
)

MUON = [3.0, 2.5, 2.1, 1.8, 1.6, 1.5]  # reaches 1.5 at step 600 (its last)
MOUSSE = [2.9, 2.4, 2.0, 1.7, 1.5, 1.45]  # crosses 1.5 at step 500


def test_steps_to_target():
    c = curve(MOUSSE)
    assert steps_to_target(c, 1.5) == (500, 5.0)
    assert steps_to_target(c, 3.0) == (100, 1.0)
    assert steps_to_target(c, 1.0) == (None, None)
    assert steps_to_target(c, None) == (None, None)
    assert steps_to_target([{"step": 10, "val_loss": math.nan, "seconds": 1.0}], 5.0) == (
        None,
        None,
    )


def test_the_bracket_is_the_two_evaluations_around_the_crossing():
    """The interpolated step lies inside its bracket; with no evaluation above the target
    before the first below it, the bracket starts at 0, and a speedup from it is unbounded."""
    c = curve(MOUSSE)
    assert target_bracket(c, 1.6) == [400, 500] and 400 < steps_to_target(c, 1.6)[0] < 500
    assert target_bracket(c, 3.0) == [0, 100]  # its first evaluation is already there
    assert target_bracket(c, 1.0) is None and target_bracket(c, None) is None
    start = [{"step": 0, "val_loss": 5.0, "seconds": 0.0}]
    fast = start + curve([1.4, 1.3], every=300)  # at 1.4 by its first evaluation after 0
    muon = [start + curve(MUON)]
    assert speedup_bracket(muon, [fast]) == [600 / 300, None]
    assert 600 / 300 < speedup(muon, [fast]) and speedup_bracket(muon, muon) == [1.0, 1.2]


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        (2.0, 10, 0.07339),  # scipy.stats.t.sf(2, 10) * 2
        (1.0, 3, 0.3910),
        (2.228, 10, 0.05),  # two-sided 5% critical values from the standard t table
        (12.706, 1, 0.05),
        (2.776, 4, 0.05),
        (3.169, 10, 0.01),
        (2.042, 30, 0.05),
        (0.0, 7, 1.0),
    ],
)
def test_t_distribution_table_values(t, df, p):
    assert t_two_sided_p(t, df) == pytest.approx(p, abs=2e-4)


@pytest.mark.parametrize("t", [0.3, 1.7, 25.0])
def test_t_distribution_closed_forms(t):
    assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-12)
    assert t_two_sided_p(t, 2) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-12)
    assert t_two_sided_p(t, 2.5) == pytest.approx(t_two_sided_p(-t, 2.5), rel=1e-15)


def test_welch_t_test_known_values():
    # by hand: means 2 and 4, variances 1 and 1, n 3 and 3 -> t = -2/sqrt(2/3), df = 4
    res = welch_t_test([1.0, 2.0, 3.0], [3.0, 4.0, 5.0])
    assert res["t"] == pytest.approx(-2.449490, abs=1e-6) and res["df"] == pytest.approx(4.0)
    assert res["p"] == pytest.approx(0.070484, abs=1e-6)
    # unequal variances: the Welch-Satterthwaite df is fractional
    res = welch_t_test([1.0, 2.0, 3.0, 4.0], [2.0, 6.0, 10.0])
    va, vb = (5 / 3) / 4, 16 / 3
    assert res["df"] == pytest.approx((va + vb) ** 2 / (va**2 / 3 + vb**2 / 2))
    assert welch_t_test([1.0], [1.0, 2.0]) == {"t": None, "df": None, "p": None}
    assert welch_t_test([1.0, 1.0], [1.0, 1.0])["p"] == 1.0


def test_summarize_headline_step_reduction_and_overhead():
    results = summarize(
        [record("muon", MUON, baseline=True, step_ms=10.0), record("mousse", MOUSSE, step_ms=10.3)],
        "muon",
    )
    assert results["baseline"] == "muon"
    assert results["target_loss"] == 1.5 and results["baseline_steps"] == 600
    runs = {r["name"]: r for r in results["runs"]}
    assert runs["mousse"]["steps_to_target"] == 500 and runs["mousse"]["seconds_to_target"] == 5.0
    assert runs["mousse"]["step_reduction_pct"] == pytest.approx(100 / 6, abs=1e-9)  # 16.7%
    assert runs["mousse"]["overhead_pct"] == pytest.approx(3.0)
    assert runs["muon"]["steps_to_target"] == 600 and runs["muon"]["step_reduction_pct"] == 0.0
    for run in results["runs"]:
        assert {
            "name",
            "knobs",
            "seed",
            "status",
            "final_val_loss",
            "best_val_loss",
            "steps_to_target",
            "step_ms_median",
        } <= set(run)
    variants = {v["variant"]: v for v in results["variants"]}
    assert variants["mousse"]["delta_vs_baseline"] == pytest.approx(-0.05)
    assert variants["mousse"]["significance"] == "n<2" and variants["mousse"]["p_value"] is None
    assert variants["muon"]["significance"] == "baseline"
    row = {r["Variant"]: r for r in convergence_rows(results)}["mousse"]
    # it reaches 1.5 at its evaluation at 500, after 1.7 at 400: the speedup is 600 / 500, and
    # as far as the evaluations say anything from 600 / 500 to 600 / 400
    assert runs["mousse"]["steps_to_target_bracket"] == [400, 500]
    assert variants["mousse"]["speedup_bracket"] == [1.2, 1.5]
    assert row["Speedup (95% CI)"] == "1.20x, evals 1.20-1.50"
    assert row["Steps to baseline loss"] == "500 [400-500]"
    assert variants["mousse"]["step_reduction_pct"] == pytest.approx(100 / 6)
    assert row["Δ vs baseline"] == "-0.0500" and row["Welch p"] == "n<2"
    assert {r["Variant"]: r for r in timing_rows(results)}["mousse"]["Overhead [IQR]"] == "+3.0%"


def test_a_single_seed_that_misses_the_target_reads_never_and_below_one():
    behind = [3.0, 2.6, 2.2, 1.9, 1.7, 1.6]  # ends at 1.6; muon passes 1.6 at step 500
    results = summarize([record("muon", MUON, baseline=True), record("mousse", behind)])
    row = {r["Variant"]: r for r in convergence_rows(results)}["mousse"]
    assert row["Steps to baseline loss"] == "never"
    # 500 / 600; muon passes 1.6 between its evaluations at 400 and 500
    assert row["Speedup (95% CI)"] == "0.83x, evals 0.67-0.83"


def test_summarize_seeds_target_is_seed_averaged_and_significance():
    muon = [
        record(f"muon-s{s}", [*MUON[:-1], 1.5 + d], variant="muon", seed=s, baseline=True)
        for s, d in enumerate((0.01, -0.01, 0.0))
    ]
    good = [
        record(f"mousse-s{s}", [*MOUSSE[:-1], 1.4 + d], variant="mousse", seed=s)
        for s, d in enumerate((0.01, -0.01, 0.0))
    ]
    same = [
        record(f"alpha=0.0-s{s}", [*MUON[:-1], 1.5 + d], variant="alpha=0.0", seed=s)
        for s, d in enumerate((0.02, -0.01, 0.0))
    ]
    results = summarize(muon + good + same)  # baseline found by is_baseline
    assert results["baseline"] == "muon" and results["target_loss"] == pytest.approx(1.5)
    variants = {v["variant"]: v for v in results["variants"]}
    assert variants["mousse"]["n"] == 3
    assert variants["mousse"]["final_val_loss_mean"] == pytest.approx(1.40)
    assert variants["mousse"]["final_val_loss_std"] == pytest.approx(0.01)
    assert variants["mousse"]["significant"] and variants["mousse"]["significance"] == "significant"
    assert variants["mousse"]["p_value"] == pytest.approx(2.552e-4, rel=1e-3)  # t = 12.25, df = 4
    assert variants["alpha=0.0"]["significant"] is False
    assert variants["alpha=0.0"]["significance"] == "not significant"
    rows = {r["Variant"]: r for r in convergence_rows(results)}
    assert rows["alpha=0.0"]["Welch p"].endswith("(not significant)")
    assert rows["mousse"]["Final val loss"] == "1.4000 ± 0.0100"
    # the seed with a final loss above the averaged target never reaches it, nor does the
    # seed-mean curve (final 1.5033): the speedup is below 1 instead of "not reached"
    assert variants["alpha=0.0"]["reached"] == 2
    assert rows["alpha=0.0"]["Steps to baseline loss"] == "never (2/3 seeds)"
    assert 0 < variants["alpha=0.0"]["speedup"] < 1


def test_holm_adjustment_by_hand():
    # ranked 0.01, 0.03, 0.04 of 3: 3 x 0.01, then max(0.03, 2 x 0.03), then max(0.06, 1 x 0.04)
    assert holm([0.01, 0.04, 0.03, None]) == pytest.approx([0.03, 0.06, 0.06, None])
    assert holm([0.5, 0.9]) == [1.0, 1.0] and holm([None]) == [None]


def test_significance_is_holm_adjusted_over_the_variants():
    """Three comparisons with Muon: p 0.00026 survives Holm's correction (x3), p 0.032 does not
    (x2 = 0.063), and the table shows both numbers."""

    def seeds(variant, finals, baseline=False):
        return [
            record(f"{variant}-s{s}", [*MUON[:-1], f], variant=variant, seed=s, baseline=baseline)
            for s, f in enumerate(finals)
        ]

    results = summarize(
        seeds("muon", (1.50, 1.51, 1.49), baseline=True)
        + seeds("mousse", (1.40, 1.41, 1.39))
        + seeds("left", (1.47, 1.48, 1.475))
        + seeds("right", (1.50, 1.52, 1.49))
    )
    v = {x["variant"]: x for x in results["variants"]}
    assert v["left"]["p_value"] < 0.05 and v["left"]["p_holm"] == pytest.approx(
        2 * v["left"]["p_value"]
    )
    assert v["mousse"]["significant"] and not v["left"]["significant"]
    assert v["left"]["significance"] == "not significant" and v["muon"]["p_holm"] is None
    rows = {r["Variant"]: r for r in convergence_rows(results)}
    assert rows["left"]["Welch p"] == "0.0316, Holm 0.0631 (not significant)"


def test_paired_t_test_and_bootstrap_by_hand():
    diffs = paired_differences({0: 1.20, 1: 1.30, 2: 1.25, 7: 9.0}, {0: 1.23, 1: 1.324, 2: 1.275})
    assert diffs == pytest.approx([-0.03, -0.024, -0.025])  # seed 7 has no pair
    res = paired_t_test(diffs)
    mean, sd = -0.079 / 3, math.sqrt(sum((d + 0.079 / 3) ** 2 for d in diffs) / 2)
    assert res["t"] == pytest.approx(mean / (sd / math.sqrt(3))) and res["df"] == 2.0
    # Student's t with 2 df in closed form: p = 1 - |t| / sqrt(2 + t^2)
    assert res["p"] == pytest.approx(1 - abs(res["t"]) / math.sqrt(2 + res["t"] ** 2), rel=1e-9)
    assert paired_t_test([0.01]) == {"t": None, "df": None, "p": None}
    assert paired_t_test([0.0, 0.0])["p"] == 1.0 and paired_t_test([0.1, 0.1])["p"] == 0.0
    # with 3 pairs the expanded interval is the range of the resampled means: min to max pair
    assert paired_bootstrap_ci(diffs) == pytest.approx([-0.03, -0.024])
    low, high = paired_bootstrap_ci([0.1, -0.2, 0.05, 0.3, -0.1, 0.0, 0.15, 0.2])
    assert -0.2 < low < statistics.fmean([0.1, -0.2, 0.05, 0.3, -0.1, 0.0, 0.15, 0.2]) < high < 0.3
    assert paired_bootstrap_ci([0.1]) is None


def test_paired_comparison_sees_a_per_seed_gap_welch_misses():
    """Seeds spread 0.1 apart, the variant 0.01-0.015 below the baseline on each: Welch's test
    sees nothing (the spread swamps the gap), the paired test sees it on every seed; a seed the
    baseline lacks is left out of the pairs, and Holm adjusts the paired p over the variants."""

    def seeds(variant, finals, baseline=False):
        return [
            record(f"{variant}-s{s}", [*MUON[:-1], f], variant=variant, seed=s, baseline=baseline)
            for s, f in finals.items()
        ]

    results = summarize(
        seeds("muon", {0: 1.50, 1: 1.60, 2: 1.70}, baseline=True)
        + seeds("mousse", {0: 1.49, 1: 1.585, 2: 1.69, 3: 1.0})
        + seeds("left", {0: 1.52, 1: 1.58, 2: 1.71})
    )
    v = {x["variant"]: x for x in results["variants"]}
    assert v["mousse"]["p_value"] > 0.3 and not v["mousse"]["significant"]
    assert v["mousse"]["paired_n"] == 3 and v["mousse"]["paired_delta"] == pytest.approx(-0.035 / 3)
    assert v["mousse"]["paired_p"] == pytest.approx(paired_t_test([-0.01, -0.015, -0.01])["p"])
    assert v["mousse"]["paired_p_holm"] == pytest.approx(2 * v["mousse"]["paired_p"])
    assert v["mousse"]["paired_significant"] and not v["left"]["paired_significant"]
    assert v["mousse"]["paired_delta_ci"] == pytest.approx([-0.015, -0.01])
    assert v["muon"]["paired_p"] is None and v["muon"]["paired_significant"] is None
    rows = {r["Variant"]: r for r in convergence_rows(results)}
    p, holm_p = v["mousse"]["paired_p"], v["mousse"]["paired_p_holm"]
    assert rows["mousse"]["Paired Δ [95% CI], p"] == (
        f"-0.0117 [-0.0150, -0.0100], {p:.3g}, Holm {holm_p:.3g}"
    )
    assert rows["left"]["Paired Δ [95% CI], p"].endswith("(not significant)")
    assert rows["muon"]["Paired Δ [95% CI], p"] == "—"


def test_diverged_runs_listed_but_not_averaged():
    records = [
        record("muon-s0", MUON, variant="muon", baseline=True),
        record("mousse-s0", MOUSSE, variant="mousse"),
        record(
            "mousse-s1", [2.9, math.nan], variant="mousse", seed=1, status="diverged", step_ms=12.0
        ),
        record("lr=1.0-s0", [math.inf], variant="lr=1.0", status="diverged"),
    ]
    results = summarize(records, "muon")
    runs = {r["name"]: r for r in results["runs"]}
    assert runs["mousse-s1"]["status"] == "diverged" and runs["mousse-s1"]["final_val_loss"] is None
    variants = {v["variant"]: v for v in results["variants"]}
    assert variants["mousse"]["n"] == 1 and variants["mousse"]["n_runs"] == 2
    assert variants["mousse"]["final_val_loss_mean"] == pytest.approx(1.45)
    assert variants["mousse"]["statuses"] == {"completed": 1, "diverged": 1}
    assert variants["mousse"]["step_ms_median"] == pytest.approx(11.0)  # timings of every run
    assert variants["lr=1.0"]["final_val_loss_mean"] is None and variants["lr=1.0"]["n"] == 0
    rows = {r["Variant"]: r for r in convergence_rows(results)}
    assert rows["mousse"]["Status"] == "1 completed, 1 diverged"
    assert rows["lr=1.0"]["Final val loss"] == "—" and rows["lr=1.0"]["Status"] == "1 diverged"
    json.loads(render(results, "json"), parse_constant=pytest.fail)  # strict JSON: no NaN/Infinity


def test_no_baseline_and_pending_baseline():
    results = summarize([record("mousse", MOUSSE), record("alpha=0.0", MUON)])
    assert results["baseline"] is None and results["target_loss"] is None
    assert all(r["steps_to_target"] is None and r["overhead_pct"] is None for r in results["runs"])
    assert "No completed baseline" in render(results, "markdown")
    waiting = {
        **record("muon", [], status="pending", baseline=True),
        **dict.fromkeys(
            [
                "step_ms_median",
                "fwd_bwd_ms_median",
                "opt_ms_median",
                "refresh_ms_median",
                "tokens_per_s",
            ]
        ),
    }
    pending = summarize([waiting, record("mousse", MOUSSE)], "muon")
    assert pending["baseline"] == "muon" and pending["target_loss"] is None
    rows = {r["Variant"]: r for r in convergence_rows(pending)}
    assert rows["mousse"]["Steps to baseline loss"] == "—" and rows["muon"]["Status"] == "1 pending"
    assert {r["Variant"]: r for r in timing_rows(pending)}["muon"]["Step ms (runs)"] == "—"
    with pytest.raises(ValueError, match="adamw"):
        summarize([record("mousse", MOUSSE)], "adamw")


def _results():
    return summarize(
        [
            record("muon", MUON, baseline=True),
            record("mousse", MOUSSE, step_ms=10.3, knobs={}),
            record("sides=left", [*MOUSSE[:-1], 1.47], knobs={"sides": "left"}),
        ],
        "muon",
    )


def test_render_markdown_has_both_tables():
    text = render(_results(), "markdown")
    assert "## Convergence" in text and "## Step time" in text
    assert "| " + " | ".join(CONVERGENCE_COLUMNS) + " |" in text
    assert "| " + " | ".join(TIMING_COLUMNS) + " |" in text
    assert "1.20x" in text


def test_render_csv_parses():
    rows = list(csv.DictReader(io.StringIO(render(_results(), "csv"))))
    assert [r["variant"] for r in rows] == ["muon", "mousse", "sides=left"]
    assert float(rows[1]["step_reduction_pct"]) == pytest.approx(100 / 6)
    assert rows[0]["p_value"] == "" and float(rows[2]["final_val_loss_mean"]) == pytest.approx(1.47)


def test_render_json_loads_and_unknown_format():
    results = _results()
    assert json.loads(render(results, "json")) == results
    with pytest.raises(ValueError, match="markdown"):
        render(results, "xml")


def test_rich_tables_fold_long_cells_and_never_cut_them():
    """The recorded paper set at 160 columns: every cell's text is all there (folded, not cut to
    '…'), so precond_freq=1 and precond_freq=100 stay apart and the tuned rule shows."""
    from pathlib import Path

    from rich.console import Console

    from mousse_cli.rich_tables import results_tables

    recorded = Path(__file__).resolve().parents[2] / "benchmarks" / "tuned"
    results = json.loads((recorded / "cpu-2core-paper-tuned-momentum-tiny.json").read_text())
    console = Console(width=160, record=True, file=io.StringIO())
    console.print(results_tables(results))
    text = console.export_text()
    assert "…" not in text and "precond_freq=" in text


def test_recorded_tables_are_their_recorded_results_rendered():
    """Every recorded ablation's markdown tables are what its recorded results render to today,
    read as `mousse report FILE` reads them: a change to the tables, results regenerated
    without their tables, or a reading that changes a recorded number fails here."""
    from pathlib import Path

    from mousse.experiments.results import recorded

    folder = Path(__file__).resolve().parents[2] / "benchmarks" / "tuned"
    pairs = [(j, j.with_suffix(".md")) for j in sorted(folder.glob("*.json"))]
    pairs = [(j, md) for j, md in pairs if md.is_file()]
    assert len(pairs) >= 4
    for results, tables in pairs:
        data = json.loads(results.read_text())
        shown = (
            render_scaled(  # joined scales (combine_scales.py)
                {p: recorded(r) for p, r in data["presets"].items()}, "markdown"
            )
            if "presets" in data
            else render(recorded(data), "markdown")
        )
        assert shown == tables.read_text(), tables


def test_reading_a_recorded_file_adds_keys_and_changes_none():
    """What `recorded` fills in for a file written before a key existed is new keys only: the
    paired comparison a file records (Holm over its own ablation's variants, some of which a
    joined file leaves out) stands as recorded."""
    from pathlib import Path

    from mousse.experiments.results import recorded

    folder = Path(__file__).resolve().parents[2] / "benchmarks"
    checked = 0
    for path in sorted(folder.glob("**/*.json")):
        data = json.loads(path.read_text())
        for results in data["presets"].values() if "scale" in data else [data]:
            if not isinstance(results, dict) or not {"variants", "runs"} <= results.keys():
                continue
            read = recorded(results)
            for before, after in zip(results["variants"], read["variants"], strict=True):
                assert {k: after[k] for k in before} == before, (path, before["variant"])
                checked += 1
    assert checked >= 20


def test_the_typed_rows_declare_every_key_results_hold():
    """Results, RunRow and VariantRow declare every key of the results object, a run row and a
    variant row that summarize writes or any recorded results file holds (tuned, timed, joined
    across scales), and ScaleRow exactly a scale row's: a key added to a row without its type
    fails here."""
    from pathlib import Path

    from mousse.experiments.results import Results, RunRow, VariantRow
    from mousse.experiments.scale import ScaleRow

    recorded = Path(__file__).resolve().parents[2] / "benchmarks"
    files = [json.loads(p.read_text()) for p in sorted(recorded.glob("**/*.json"))]
    scaled = [f for f in files if isinstance(f, dict) and isinstance(f.get("presets"), dict)]
    results = [f for f in files if isinstance(f, dict) and isinstance(f.get("variants"), list)]
    results += [r for f in scaled for r in f["presets"].values()]
    results.append(summarize([record("muon", MUON, baseline=True), record("mousse", MOUSSE)]))
    assert len(results) >= 10 and scaled
    for r in results:
        assert set(r) <= declared_keys(Results), set(r) - declared_keys(Results)
        for run in r["runs"]:
            assert set(run) <= declared_keys(RunRow), set(run) - declared_keys(RunRow)
        for v in r["variants"]:
            assert set(v) <= declared_keys(VariantRow), set(v) - declared_keys(VariantRow)
    for row in (row for f in scaled for row in f["scale"]["rows"]):
        assert set(row) == declared_keys(ScaleRow)


def test_tables_say_the_arithmetic_the_runs_trained_in():
    def runs(*precisions):
        rows = [record("muon", MUON, baseline=True), record("mousse", MOUSSE)]
        return [{**r, "precision": p} for r, p in zip(rows, precisions, strict=True)]

    same = summarize(runs("bf16 autocast", "bf16 autocast"))
    assert same["precisions"] == ["bf16 autocast"]
    assert "Arithmetic: bf16 autocast, every run." in render(same, "markdown")
    mixed = summarize(runs("bf16 autocast", "fp32"))
    assert "Runs differ in arithmetic (bf16 autocast, fp32)" in render(mixed, "markdown")
    old = summarize([record("muon", MUON, baseline=True), record("mousse", MOUSSE)])
    assert old["precisions"] == [] and "rithmetic" not in render(old, "markdown")
    grown = summarize(runs("bf16 autocast", None))  # an old ablation given new runs
    assert "differ in arithmetic (bf16 autocast, not recorded)" in render(grown, "markdown")


def test_tables_show_the_split_and_the_evaluation_se_beside_the_seed_spread():
    """Each variant's SE is its completed runs' mean, shown beside ± the seed spread; the note
    says where validation came from. Results from before either was recorded show neither."""

    def run(variant, seed, loss, se, baseline=False):
        row = record(f"{variant}-s{seed}", [*MUON[:-1], loss], variant=variant, seed=seed)
        return {**row, "is_baseline": baseline, "split": "files", "val_loss_se": se}

    results = summarize(
        [
            run("muon", 0, 1.50, 0.004, baseline=True),
            run("muon", 1, 1.52, 0.006, baseline=True),
            run("mousse", 0, 1.46, 0.005),
            run("mousse", 1, 1.48, 0.007),
        ]
    )
    mousse = {v["variant"]: v for v in results["variants"]}["mousse"]
    assert results["splits"] == ["files"] and mousse["val_loss_se"] == pytest.approx(0.006)
    assert {r["name"]: r["val_loss_se"] for r in results["runs"]}["mousse-s1"] == 0.007
    text = render(results, "markdown")
    assert "1.4700 ± 0.0141 (SE 0.0060)" in text
    assert "Validation on whole files held out across the builtin corpus" in text
    assert float(next(csv.DictReader(io.StringIO(render(results, "csv"))))["val_loss_se"]) == 0.005
    old = summarize([record("muon", MUON, baseline=True), record("mousse", MOUSSE)])
    assert old["splits"] == [] and "SE" not in render(old, "markdown")
    assert "alidation on" not in render(old, "markdown")


def _recorded_results() -> list[tuple[str, object]]:
    """Every results object benchmarks/ records: results files, and each preset's of a joined
    scale (not timing passes, bench outputs or scale summaries alone)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "benchmarks"
    out: list[tuple[str, object]] = []
    for path in sorted(root.glob("**/*.json")):
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or path.name.endswith("-timing.json"):
            continue
        if "scale" in data and "presets" in data:
            out += [(f"{path.name}:{p}", r) for p, r in data["presets"].items()]
        elif "variants" in data:
            out.append((path.name, data))
    return out


def test_the_repository_keeps_recorded_results():
    assert len(_recorded_results()) >= 10


@pytest.mark.parametrize("name, results", _recorded_results(), ids=lambda x: str(x)[:60])
def test_every_recorded_results_object_has_the_typed_form(name, results):
    """Protocol, knobs, tuned values and the timing pass included."""
    from mousse.experiments.results import Results
    from mousse.train.fileio import shaped

    assert shaped(results, Results), name
