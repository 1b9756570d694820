"""`mousse report FILE` on the files the project records: results (results.json), what `mousse
ablate --json` prints (several presets joined), and a scale summary alone (a scale root's
scale.json: the speedup of every variant at every preset, without the per-preset results).
Recorded results keep their meaning: each still reports (docs/reliability.md)."""

from __future__ import annotations

import csv
import io
import json
from fnmatch import fnmatch
from pathlib import Path

import pytest
from support.cli import assert_one_line_error, invoke_cli

from mousse.experiments.scale import combine
from mousse.train.fileio import write_json

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
TUNED = BENCHMARKS / "tuned"
SUMMARY = TUNED / "cpu-2core-scale-tuned-scale.json"  # the two presets' results are beside it
SCALE_SECTION = "# Speedup by scale"
SCALE_TITLE_START = "speedup by scale"
# Written by other tools, not for `report`: an ablation's timing pass (timing.json), the run
# records of an ablation in progress, `mousse bench --json`, benchmarks/train_speed.py and the GPU
# kernel timings.
NOT_REPORTS = (
    "*-timing.json",
    "tuned/*-runs/*",
    "cpu-1thread-small*.json",
    "cpu-2core-small*.json",
    "cpu-2core-tiny-train.json",
    "cpu-2core-train-speed-*.json",
    "gpu/*.json",
)


@pytest.fixture(scope="module")
def joined(tmp_path_factory) -> Path:
    """The summary's two presets' recorded results joined as `mousse ablate --preset small,tiny
    --json` prints them: a report of these ends with the table the summary alone gives."""
    out = tmp_path_factory.mktemp("joined") / "joined.json"
    by_preset = {
        p: json.loads((TUNED / f"cpu-2core-scale-tuned-{p}.json").read_text())
        for p in ("small", "tiny")
    }
    write_json(out, combine(by_preset))
    return out


def _summary() -> dict:
    return json.loads(SUMMARY.read_text())


def test_a_scale_summary_is_the_table_a_joined_report_ends_with(joined):
    alone, whole = invoke_cli("report", SUMMARY), invoke_cli("report", joined)
    assert alone.exit_code == 0 and whole.exit_code == 0, (alone, whole)
    assert SCALE_TITLE_START in alone.stdout and "convergence" not in alone.stdout, alone
    assert whole.stdout.endswith(alone.stdout), alone
    assert "1.11x" in alone.stdout and "alpha=0.0" in alone.stdout  # mousse at small, a variant


def test_a_scale_summary_in_markdown_is_a_joined_reports_speedup_by_scale(joined):
    alone = invoke_cli("report", SUMMARY, "--format", "markdown")
    whole = invoke_cli("report", joined, "--format", "markdown")
    assert alone.exit_code == 0 and whole.exit_code == 0, (alone, whole)
    assert alone.stdout.startswith(SCALE_SECTION), alone
    assert alone.stdout == whole.stdout[whole.stdout.index(SCALE_SECTION) :]


def test_a_scale_summary_in_json_is_itself():
    res = invoke_cli("report", SUMMARY, "--format", "json")
    assert res.exit_code == 0 and res.json() == _summary(), res


def test_a_scale_summary_in_csv_is_a_row_of_raw_numbers_per_preset_and_variant():
    res = invoke_cli("report", SUMMARY, "--format", "csv")
    assert res.exit_code == 0, res
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    recorded = _summary()["rows"]
    assert [(r["preset"], r["variant"]) for r in rows] == [
        (r["preset"], r["variant"]) for r in recorded
    ]

    def number(cell: str) -> float | None:
        return None if cell == "" else float(cell)

    for row, r in zip(rows, recorded, strict=True):
        assert int(row["params"]) == r["params"] and row["is_baseline"] == str(r["is_baseline"])
        for key in ("final_val_loss_mean", "final_val_loss_std", "p_value", "speedup"):
            assert number(row[key]) == r[key], key
        low, high = r["speedup_ci"] or [None, None]
        assert (number(row["speedup_ci_low"]), number(row["speedup_ci_high"])) == (low, high)
        assert row["tuned"] == f"lr={r['tuned']['lr']}" and int(row["n_seeds"]) == r["n_seeds"]


def test_a_scale_summary_plots_its_speedup_against_parameters(tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "scale.png"
    res = invoke_cli("report", SUMMARY, "--plot", plot)
    assert res.exit_code == 0, res
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert "speedup vs scale:" in res.stderr and plot.name in res.stderr
    assert SCALE_TITLE_START in res.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scale.png"]  # no per-preset figures


@pytest.mark.parametrize(
    "option",
    [["--retime"], ["--expect", "mousse < muon"], ["--against", "mousse"]],
    ids=["retime", "expect", "against"],
)
def test_options_that_need_each_variants_results_are_refused_on_a_scale_summary(tmp_path, option):
    plot = tmp_path / "p.png"
    res = invoke_cli("report", SUMMARY, *option, "--plot", plot)
    assert_one_line_error(res, option[0], "scale summary", "ablation dir")
    assert res.stdout == "" and not plot.exists()


def test_a_scale_summary_of_another_shape_is_no_results_file(tmp_path):
    """The shape is checked before anything is shown: a row of another type is damage, the
    same file intact reports."""
    intact, damaged = _summary(), _summary()
    damaged["rows"][1]["speedup"] = "fast"
    for name, summary in (("intact.json", intact), ("damaged.json", damaged)):
        (tmp_path / name).write_text(json.dumps(summary))
    assert invoke_cli("report", tmp_path / "intact.json").exit_code == 0
    assert_one_line_error(invoke_cli("report", tmp_path / "damaged.json"), "not a results file")


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_every_recorded_file_for_report_reports(fmt):
    """Every JSON file under benchmarks/ bar those of other tools, in every format: results,
    joined scales and scale summaries, each kind present."""
    files = [
        p
        for p in sorted(BENCHMARKS.glob("**/*.json"))
        if not any(fnmatch(p.relative_to(BENCHMARKS).as_posix(), n) for n in NOT_REPORTS)
    ]
    kinds = {"results": 0, "joined": 0, "summary": 0}
    for path in files:
        res = invoke_cli("report", path, "--format", fmt)
        assert res.exit_code == 0 and res.stdout.strip(), (path, res)
        if fmt == "json":
            assert isinstance(res.json(), dict), path
        data = json.loads(path.read_text())
        kinds["joined" if "scale" in data else "summary" if "rows" in data else "results"] += 1
    assert min(kinds.values()) >= 1, kinds


@pytest.mark.parametrize(
    "text",
    [
        '{"variants": [], "runs": []}',  # no baseline
        '{"baseline": null, "variants": [{"variant": "x"}], "runs": []}',  # a row cut short
        '{"baseline": null, "variants": "x", "runs": []}',  # rows of another type
        '{"presets": {"tiny": {"variants": []}}, "scale": {"presets": [], "rows": []}}',
        "[1, 2]",
        "not json",
    ],
)
def test_a_results_file_of_another_shape_is_one_line(tmp_path, text):
    (tmp_path / "r.json").write_text(text)
    assert_one_line_error(invoke_cli("report", tmp_path / "r.json"), "not a results file")
