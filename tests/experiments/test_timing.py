"""Step-time columns that compare like with like: the side-by-side timing pass, the labelling of
per-run timings by where they were taken, and peak memory on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.cli import FAST, invoke_cli

from mousse.experiments.results import apply_timing_pass, summarize
from mousse.experiments.table_rows import (
    convergence_rows,
    protocol_notes,
    render,
    timing_notes,
    timing_rows,
)
from mousse.experiments.timing import (
    MIN_ROUNDS,
    plan_rounds,
    read_timing_record,
    round_order,
    run_pass,
    summarize_rounds,
)
from mousse.train.machine import peak_memory


def record(variant, invocation, step_ms, host="a", base=False, parallel=1):
    return {
        "name": variant,
        "variant": variant,
        "knobs": {},
        "seed": 0,
        "is_baseline": base,
        "status": "completed",
        "final_val_loss": 1.0,
        "best_val_loss": 1.0,
        "steps": 10,
        "curve": [],
        "step_ms_median": step_ms,
        "fwd_bwd_ms_median": None,
        "opt_ms_median": None,
        "refresh_ms_median": None,
        "tokens_per_s": None,
        "peak_mem_bytes": 2**30,
        "peak_mem_source": "rss",
        "timing_context": {
            "host": host,
            "invocation": invocation,
            "device": "cpu",
            "parallel": parallel,
        },
    }


RECORDED = sorted((Path(__file__).resolve().parents[2] / "benchmarks").glob("**/*-timing.json"))


def test_the_repository_keeps_recorded_timing_passes():
    assert len(RECORDED) >= 2


@pytest.mark.parametrize("path", RECORDED, ids=lambda p: p.name)
def test_every_recorded_timing_pass_reads_into_the_typed_form(path):
    assert read_timing_record(path) == json.loads(path.read_text())  # as it is: nothing dropped


@pytest.mark.parametrize("text", ["[]", '{"rounds": 3}', "{", '{"variants": {"a": 1}}'])
def test_a_timing_file_that_is_not_a_pass_reads_as_none(tmp_path, text):
    (tmp_path / "timing.json").write_text(text)
    assert read_timing_record(tmp_path / "timing.json") is None
    assert read_timing_record(tmp_path / "absent.json") is None


def test_runs_of_one_invocation_compare():
    results = summarize([record("muon", "x", 100.0, base=True), record("mousse", "x", 110.0)])
    assert results["timing_comparable"]
    assert results["variants"][1]["overhead_pct"] == pytest.approx(10.0)
    assert timing_rows(apply_timing_pass(results, None))[1]["Overhead [IQR]"] == "+10.0%"


@pytest.mark.parametrize("other", [dict(invocation="y"), dict(host="b"), dict(parallel=2)])
def test_runs_from_different_invocations_hosts_or_shares_print_no_overhead(other):
    """The issue's own table: a busy-machine baseline and quiet-machine variants."""
    kwargs = {"invocation": "x", **other}
    results = summarize(
        [
            record("muon", "x", 491.4, base=True),
            record("alpha=0.0", kwargs.pop("invocation"), 161.8, **kwargs),
        ]
    )
    results = apply_timing_pass(results, None)
    assert not results["timing_comparable"]
    assert all(v["overhead_pct"] is None for v in results["variants"])
    rows = timing_rows(results)
    assert rows[1]["Overhead [IQR]"] == "not comparable" and "%" not in rows[1]["Overhead [IQR]"]
    assert any("2 different invocations or hosts" in n for n in timing_notes(results))


def test_runs_that_do_not_say_where_they_were_timed_do_not_compare():
    old = record("mousse", "x", 110.0)
    del old["timing_context"]
    results = summarize([record("muon", "x", 100.0, base=True), old])
    assert not results["timing_comparable"] and results["variants"][1]["overhead_pct"] is None


def test_runs_with_no_step_times_yet_say_so_not_where_they_were_timed():
    """Runs still pending (a tuning stage under way) have no step times: nothing to place."""
    pending = [
        {**record(v, "x", 100.0, base=v == "muon"), "status": "pending"} for v in ("muon", "mousse")
    ]
    notes = timing_notes(apply_timing_pass(summarize(pending), None))
    assert any(n.startswith("no finished run has step times yet") for n in notes)
    assert not any("unrecorded place" in n for n in notes)


def test_the_timing_pass_overrides_with_its_own_ratios():
    results = summarize([record("muon", "x", 491.4, base=True), record("mousse", "y", 161.8)])
    passed = _pass({"muon": [100, 101, 99, 100], "mousse": [103, 104, 102, 103]})
    results = apply_timing_pass(results, passed)
    row = timing_rows(results)[1]
    assert (
        row["Overhead [IQR]"].startswith("+3.0% [") and "within noise" not in row["Overhead [IQR]"]
    )
    assert row["Side by side ms [IQR]"].startswith("103.0 [")
    assert row["Peak memory"] == "1.00 GiB RSS"
    assert any(n.startswith("side by side: one process on h") for n in timing_notes(results))


def _pass(variants: dict) -> dict:
    """A timing pass record over `variants` (name -> each round's ms), baseline muon."""
    return {
        "host": "h",
        "device": "cpu",
        "threads": 2,
        "rounds": 4,
        "steps_per_round": 10,
        "when": "now",
        "baseline": "muon",
        "variants": summarize_rounds(variants, "muon"),
    }


def test_time_speedups_come_from_seconds_that_compare():
    """Mousse reaches muon's final loss 1.0 at step 10 of 20 (2x in steps) but after 4 s of
    muon's 2 s: 0.5x in time when the runs' seconds compare; from other invocations, none; with
    a timing pass, the step speedup over its side-by-side step-time ratio, in both cases."""
    base = {**record("muon", "x", 100.0, base=True), "steps": 20}
    base["curve"] = [
        {"step": 10, "val_loss": 2.0, "seconds": 1.0},
        {"step": 20, "val_loss": 1.0, "seconds": 2.0},
    ]

    def mousse(invocation):
        run = {**record("mousse", invocation, 400.0), "steps": 20}
        run["curve"] = [
            {"step": 10, "val_loss": 1.0, "seconds": 4.0},
            {"step": 20, "val_loss": 0.9, "seconds": 8.0},
        ]
        return run

    same = summarize([base, mousse("x")])["variants"][1]
    assert same["speedup"] == 2.0 and same["speedup_time"] == 0.5
    other = summarize([base, mousse("y")])
    assert other["variants"][1]["speedup"] == 2.0
    assert other["variants"][1]["speedup_time"] is None
    passed = apply_timing_pass(other, _pass({"muon": [100] * 4, "mousse": [125] * 4}))
    timed = _pass({"muon": [100] * 4, "mousse": [125] * 4})
    for results in (other, summarize([base, mousse("x")])):
        passed = apply_timing_pass(results, timed)
        assert passed["variants"][1]["speedup_time"] == pytest.approx(2.0 / 1.25)
    assert any("time speedups are the step speedups" in n for n in timing_notes(passed))


def _speedup_results():
    """muon and mousse from one invocation: mousse reaches muon's final loss in half the steps."""
    base = {**record("muon", "x", 100.0, base=True), "steps": 20}
    base["curve"] = [{"step": 10, "val_loss": 2.0}, {"step": 20, "val_loss": 1.0}]
    run = {**record("mousse", "x", 110.0), "steps": 20}
    run["curve"] = [{"step": 10, "val_loss": 1.0}, {"step": 20, "val_loss": 0.9}]
    return summarize([base, run])


def test_a_timing_pass_on_a_busy_machine_says_so_and_marks_time_unreliable():
    """The issue's ablation: others used 68% of the CPU while the pass ran."""
    rounds = {"muon": [70, 100, 276, 90], "mousse": [80, 120, 250, 100]}
    busy = apply_timing_pass(_speedup_results(), {**_pass(rounds), "busy": 0.68})
    assert busy["timing_busy"] == 0.68 and busy["timing_reliable"] is False
    timing, convergence = timing_rows(busy)[1], convergence_rows(busy)[1]
    assert timing["Overhead [IQR]"].endswith("(unreliable)")
    assert convergence["Time speedup (95% CI)"].endswith("(unreliable)")
    assert not convergence["Speedup (95% CI)"].endswith("(unreliable)")  # steps: not timed
    for notes in (timing_notes(busy), protocol_notes(busy)):
        assert any("other processes used 68% of the CPU" in n for n in notes), notes
    assert "68% of the CPU" in render(busy, "markdown")
    assert render(busy, "csv").splitlines()[1].count("0.68") == 1
    for record_ in ({**_pass(rounds), "busy": 0.1}, _pass(rounds)):  # quiet; not measured (old)
        quiet = apply_timing_pass(_speedup_results(), record_)
        assert quiet["timing_reliable"] is (None if "busy" not in record_ else True)
        assert "unreliable" not in render(quiet, "markdown")


def test_the_timing_pass_measures_how_busy_the_cpu_was(monkeypatch, tmp_path):
    from mousse.experiments import timing

    class Runner:
        device = "cpu"

        def __call__(self, n):
            return 1.0

    monkeypatch.setattr(timing, "trainer_runner", lambda settings, root: Runner())
    monkeypatch.setattr(timing, "others_busy", lambda since: 0.68)
    record_ = timing.timing_pass({"muon": {}, "mousse": {}}, "muon", budget_s=0.0)
    assert record_["busy"] == 0.68 and record_["device"] == "cpu"


def test_notes_count_in_the_singular_when_there_is_one():
    results = summarize([record("muon", "x", 100.0, base=True), record("mousse", "x", 110.0)])
    one = {
        **_pass({"muon": [100], "mousse": [110]}),
        "threads": 1,
        "rounds": 1,
        "steps_per_round": 1,
    }
    note = timing_notes(apply_timing_pass(results, one))[0]
    assert "1 thread)" in note and "1 interleaved round of 1 step," in note, note
    assert (
        "2 threads), 4 interleaved rounds of 10 steps"
        in timing_notes(apply_timing_pass(results, _pass({"muon": [100], "mousse": [110]})))[0]
    )


def test_an_overhead_inside_the_noise_is_marked():
    rows = summarize_rounds({"b": [100, 100, 100, 100], "v": [90, 105, 99, 110]}, "b")
    assert rows["v"]["within_noise"] and rows["b"]["overhead_pct"] is None
    assert rows["v"]["overhead_pct"] == pytest.approx(2.0)  # median of -10, +5, -1, +10


def test_interleaving_order_rotates():
    assert round_order(["a", "b", "c"], 4) == [
        ["a", "b", "c"],
        ["b", "c", "a"],
        ["c", "a", "b"],
        ["a", "b", "c"],
    ]


def test_rounds_fit_the_budget():
    assert plan_rounds({"a": 100.0, "b": 100.0}, budget_s=20.0, steps_per_round=10) == 10
    assert plan_rounds({"a": 100.0}, budget_s=0.1, steps_per_round=10) == MIN_ROUNDS
    assert plan_rounds({"a": 1.0}, budget_s=1e6, steps_per_round=10) == 30


def test_pass_stays_within_its_budget_and_interleaves():
    """Fake runners on a fake clock: each step costs its variant's ms."""
    now = [0.0]
    calls = []

    def runner(name, ms):
        def run(n):
            calls.append((name, n))
            now[0] += n * ms / 1000
            return ms

        return run

    out = run_pass(
        {"base": runner("base", 50.0), "var": runner("var", 60.0)},
        "base",
        budget_s=12.0,
        steps_per_round=10,
        clock=lambda: now[0],
    )
    assert out["seconds"] <= 12.0 and out["rounds"] == 10
    timed = [c for c in calls if c[1] == 10]
    assert timed[:4] == [("base", 10), ("var", 10), ("var", 10), ("base", 10)]
    assert out["variants"]["var"]["overhead_pct"] == pytest.approx(20.0)


def test_peak_memory_is_measured_on_cpu():
    import torch

    value, source = peak_memory(torch.device("cpu"))
    assert source == "rss" and value > 10 * 2**20


@pytest.mark.slow
def test_ablate_runs_the_timing_pass_and_report_retimes(tmp_path):
    out = invoke_cli(
        "ablate",
        "--alpha",
        "0.0",
        "--steps",
        "3",
        *FAST,
        "--ablation-dir",
        tmp_path / "a",
        "--timing-budget",
        "3",
    )
    assert out.exit_code == 0, out.stderr
    timing = json.loads((tmp_path / "a" / "timing.json").read_text())
    assert set(timing["variants"]) == {"muon", "mousse", "alpha=0.0"}
    assert timing["order"][1] == ["mousse", "alpha=0.0", "muon"]
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert results["timing_pass"]["rounds"] == timing["rounds"]
    assert all(v["peak_mem_source"] == "rss" for v in results["variants"])
    again = invoke_cli("report", tmp_path / "a", "--retime", "--timing-budget", "3")
    assert again.exit_code == 0 and "timing pass:" in again.stderr
    skipped = invoke_cli(
        "ablate",
        "--alpha",
        "0.0",
        "--steps",
        "3",
        *FAST,
        "--ablation-dir",
        tmp_path / "a",
        "--no-timing-pass",
    )
    assert skipped.exit_code == 0 and "timing pass:" not in skipped.stderr
