"""An ablation over budgets (`--budgets`): each run record carries its budgets, and the results a
per-budget block (mean ± seed spread, paired difference from the baseline), on synthetic records
with known answers; a budget not completed is never a result."""

import statistics

import pytest
from support.results import record

from mousse.experiments.records import record as run_record
from mousse.experiments.results import recorded, summarize
from mousse.experiments.stats import paired_bootstrap_ci, paired_t_test, seeds_for_power
from mousse.experiments.table_rows import BUDGET_COLUMNS, budget_table_rows, render

FINALS = {  # variant -> seed -> (loss at 0.5, loss at 1)
    "muon": {0: (3.0, 2.5), 1: (3.1, 2.6), 2: (3.2, 2.7)},
    "mousse": {0: (2.9, 2.45), 1: (2.95, 2.5), 2: (3.0, None)},  # seed 2's 1x was cut
}


def budgets(losses, steps=(50, 100)):
    return [
        {
            "budget": b,
            "tokens": s * 128,
            "tokens_per_param": 20 * b,
            "steps": s,
            "status": "completed" if loss is not None else "interrupted",
            "final_val_loss": loss,
        }
        for b, s, loss in zip((0.5, 1.0), steps, losses, strict=True)
    ]


def records():
    out = []
    for variant, seeds in FINALS.items():
        for seed, losses in seeds.items():
            r = record(f"{variant}-s{seed}", [4.0, losses[-1] or 3.0], variant=variant, seed=seed)
            r.update(is_baseline=variant == "muon", budgets=budgets(losses))
            out.append(r)
    return out


def test_each_budget_is_compared_over_the_seeds_that_completed_it():
    rows = {(b["variant"], b["budget"]): b for b in summarize(records(), "muon")["budgets"]}
    assert list(rows) == [("muon", 0.5), ("muon", 1.0), ("mousse", 0.5), ("mousse", 1.0)]
    half, full = rows[("mousse", 0.5)], rows[("mousse", 1.0)]
    assert half["n"] == 3 and full["n"] == 2  # the cut budget is no result
    assert half["final_val_loss_mean"] == pytest.approx(statistics.fmean([2.9, 2.95, 3.0]))
    assert full["final_val_loss_std"] == pytest.approx(statistics.stdev([2.45, 2.5]))
    diffs = [2.9 - 3.0, 2.95 - 3.1, 3.0 - 3.2]
    assert half["paired_delta"] == pytest.approx(statistics.fmean(diffs))
    assert half["paired_p"] == pytest.approx(paired_t_test(diffs)["p"])
    assert half["paired_delta_ci"] == pytest.approx(paired_bootstrap_ci(diffs))
    assert full["paired_n"] == 2 and rows[("muon", 1.0)]["paired_delta"] is None
    assert half["tokens_per_param"] == 10.0


def test_the_tables_show_a_block_per_budget_only_when_there_are_budgets():
    results = summarize(records(), "muon")
    rows = budget_table_rows(results)
    assert [r["Budget"] for r in rows] == ["0.5x", "1x", "0.5x", "1x"]
    delta = "Paired Δ vs baseline [95% CI], p"
    assert delta in BUDGET_COLUMNS and rows[0][delta] == "—"  # the baseline
    assert rows[2]["Final val loss"].startswith("2.9500 ± ")
    assert rows[2][delta].startswith("-0.1500 [")
    assert "## Budgets" in render(results, "markdown")
    plain = [record("muon", [2.0, 1.5], baseline=True), record("mousse", [2.0, 1.4])]
    assert summarize(plain)["budgets"] == []
    assert "## Budgets" not in render(summarize(plain), "markdown")


def test_each_budget_says_the_seeds_a_paired_test_needs_for_power():
    """Per budget, the seeds for 80% power at that budget's own paired differences; a results
    file from before the key existed gets it from its run rows, and nothing else changes."""
    results = summarize(records(), "muon")
    rows = {(b["variant"], b["budget"]): b for b in results["budgets"]}
    # 0.5x: differences -0.1, -0.15, -0.2: mean -0.15, sd 0.05, (sd / mean)^2 = 1/9; with t
    # quantiles n = 3 (df 2: 4.303 + 1.061)^2 / 9 = 3.20 > 3, n = 4 (df 3: 3.182 + 0.978)^2 / 9
    # = 1.92 <= 4
    assert rows[("mousse", 0.5)]["paired_seeds_for_power"] == 4
    one_x = [2.45 - 2.5, 2.5 - 2.6]  # seed 2's 1x was cut: two pairs
    assert rows[("mousse", 1.0)]["paired_seeds_for_power"] == seeds_for_power(
        statistics.fmean(one_x), statistics.stdev(one_x)
    )
    assert rows[("muon", 0.5)]["paired_seeds_for_power"] is None  # the baseline
    table = {(r["Variant"], r["Budget"]): r["Seeds for power"] for r in budget_table_rows(results)}
    assert table[("mousse", "0.5x")] == "4 (has 3)" and table[("muon", "0.5x")] == "—"
    assert "Seeds for power: the seeds a paired t-test" in render(results, "markdown")
    older = {**results, "budgets": [dict(b) for b in results["budgets"]]}
    for b in older["budgets"]:
        del b["paired_seeds_for_power"]
    assert recorded(older)["budgets"] == results["budgets"]


def test_a_run_record_carries_its_budgets_without_their_run_dirs():
    from mousse.experiments.ablation import RunSpec

    entries = [
        {**b, "best_val_loss": b["final_val_loss"], "run_dir": "x"} for b in budgets((3.0, 2.5))
    ]
    entries[1]["status"] = "interrupted"  # a budget still training: its loss is no result
    summary = {"status": "interrupted", "final_val_loss": 2.5, "budgets": entries}
    row = run_record(RunSpec("m", "m", {}, 0), summary)
    assert [set(b) for b in row["budgets"]] == [
        {"budget", "tokens", "tokens_per_param", "steps", "status", "final_val_loss"}
    ] * 2
    assert [b["final_val_loss"] for b in row["budgets"]] == [3.0, None]
    assert "budgets" not in run_record(RunSpec("m", "m", {}, 0), {"status": "completed"})


def test_below_1x_a_budgets_ablation_is_told_to_reach_1x_by_its_budgets():
    """`--budget 1`, the remedy of a plain run, is refused beside `--budgets`."""
    from mousse.experiments.table_rows import protocol_notes

    low = {"tokens_per_param": 10.0, "budget": 0.5, "epochs": 0.1}
    rows = [{**r, "regime": low} for r in records()]
    notes = [n for n in protocol_notes(summarize(rows, "muon")) if "compute-optimal" in n]
    assert len(notes) == 1 and "pass --budgets up to 1 or more" in notes[0]
    plain = [{**{k: v for k, v in r.items() if k != "budgets"}, "regime": low} for r in records()]
    notes = [n for n in protocol_notes(summarize(plain, "muon")) if "compute-optimal" in n]
    assert len(notes) == 1 and "pass --budget 1)" in notes[0]
