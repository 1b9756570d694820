"""What a user gets out: results on stdout and the chatter on stderr (through the console script,
the two streams captured apart), no traceback when the reader of stdout leaves, and figures that
draw what the tables say (seed bands, the forest plot's intervals and marks, time only from the
timing pass, one colour per variant)."""

from __future__ import annotations

import json
import subprocess

import pytest
from support.cli import FAST, mousse_command
from support.results import record

from mousse.experiments.results import summarize, with_delta_intervals
from mousse.experiments.stats import SIGNIFICANCE_LEVEL

SWEEP = ["--alpha", "0.0", "--steps", "4", "--eval-every", "2", "--seeds", "2", *FAST]
TABLE_TITLES = ("convergence", "step time")


@pytest.fixture(scope="module")
def ablated(builtin_data, tmp_path_factory):
    """A 3-variant, 2-seed ablation run through the console script: (its dir, its CliResult)."""
    from support.cli import CliResult

    adir = tmp_path_factory.mktemp("streams") / "alpha"
    proc = subprocess.run(
        [*mousse_command(), "ablate", *SWEEP, "--ablation-dir", str(adir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    res = CliResult(proc.returncode, proc.stdout, proc.stderr)
    assert res.exit_code == 0, res
    return adir, res


def test_ablate_results_on_stdout_progress_on_stderr(ablated):
    _, res = ablated
    for title in TABLE_TITLES:
        assert title in res.stdout and title not in res.stderr, res
    assert "[mousse-s1] started" in res.stderr and "started" not in res.stdout
    assert "runs" in res.stderr.splitlines()[0]  # the plan comes first, on stderr


@pytest.mark.parametrize("fmt", ["table", "markdown", "csv", "json"])
def test_report_every_format_on_stdout(mousse_proc, ablated, fmt):
    adir, _ = ablated
    res = mousse_proc("report", adir, "--format", fmt)
    assert res.exit_code == 0 and res.stderr == "", res
    if fmt == "json":
        assert res.json() == json.loads((adir / "results.json").read_text())
    else:
        assert "alpha=0.0" in res.stdout


def test_train_summary_on_stdout_unless_json(mousse_proc, tmp_path):
    args = ("train", *FAST, "--steps", "2", "--eval-every", "2")
    run_dir = tmp_path / "[red]a[/red]:llama:"  # markup and an emoji code: printed as named
    res = mousse_proc(*args, "--run-dir", run_dir)
    assert res.exit_code == 0, res
    assert res.stdout.startswith("completed after 2 steps"), res
    assert f"results in {run_dir}" in res.stdout and f"run dir: {run_dir}" in res.stderr, res
    assert "step 2/2" in res.stderr and "completed after" not in res.stderr
    as_json = mousse_proc(*args, "--run-dir", tmp_path / "b", "--json")
    assert as_json.json()["status"] == "completed"  # stdout: the JSON alone
    assert "completed after 2 steps" in as_json.stderr


def test_a_one_step_run_says_step(tmp_path, builtin_data):
    from support.cli import invoke_cli

    res = invoke_cli("train", *FAST, "--steps", "1", "--run-dir", tmp_path / "r")
    assert res.exit_code == 0 and res.stdout.startswith("completed after 1 step:"), res


def test_presets_table_on_stdout(mousse_proc):
    res = mousse_proc("presets")
    assert res.exit_code == 0 and "tiny" in res.stdout and "tiny" not in res.stderr, res


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_reader_that_leaves_is_no_traceback(ablated, fmt):
    """`mousse report DIR | head -0`: stdout closed before the first write (Rich's tables and
    plain echo alike), so the write fails every time, not only past the pipe's buffer."""
    adir, _ = ablated
    proc = subprocess.Popen(
        [*mousse_command(), "report", str(adir), "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    proc.stdout.close()
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 1, stderr  # as Rich and click exit on a closed pipe
    assert stderr == "", stderr


def test_report_of_a_results_file_and_head(ablated, tmp_path):
    adir, _ = ablated
    out = subprocess.run(
        f"{' '.join(mousse_command())} report {adir / 'results.json'} --format markdown | head -1",
        shell=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.stdout == "## Convergence\n" and "Traceback" not in out.stderr, out.stderr


# ---- figures ---------------------------------------------------------------------------------


def _seeded(name, finals, *, baseline=False, step_ms=10.0):
    """Three seeds of a variant whose curves end at `finals`."""
    return [
        record(
            f"{name}-s{s}",
            [2.0, 1.8, final],
            variant=name,
            seed=s,
            baseline=baseline,
            step_ms=step_ms,
        )
        for s, final in enumerate(finals)
    ]


RECORDS = (
    _seeded("muon", [1.50, 1.52, 1.51], baseline=True)
    + _seeded("mousse", [1.40, 1.41, 1.39], step_ms=12.0)
    + _seeded("alpha=0.0", [1.49, 1.53, 1.50])
)


def test_delta_interval_is_the_one_the_t_test_inverts():
    results = summarize(RECORDS)
    for v in results["variants"]:
        if v["is_baseline"]:
            assert v["delta_ci"] is None
            continue
        low, high = v["delta_ci"]
        assert low < v["delta_vs_baseline"] < high
        assert (low > 0 or high < 0) == (v["p_value"] < SIGNIFICANCE_LEVEL), v
    # a results file written before delta_ci: filled in the same
    older = {**results, "variants": [{**v, "delta_ci": None} for v in results["variants"]]}
    assert with_delta_intervals(older)["variants"] == results["variants"]


def test_seed_bands_and_forest_rows():
    from mousse_cli.plot import forest_rows, seed_bands

    bands = seed_bands(RECORDS)
    assert bands["mousse"][-1] == pytest.approx((300, 1.40, 1.39, 1.41))
    assert bands["muon"][0] == pytest.approx((100, 2.0, 2.0, 2.0))
    rows = forest_rows(summarize(RECORDS))
    assert [v["variant"] for v in rows] == ["mousse", "alpha=0.0"]  # lowest first, no baseline


def test_colours_are_one_per_variant_and_the_same_everywhere():
    pytest.importorskip("matplotlib")
    from mousse_cli.plot import BASELINE_COLOR, variant_colors

    colors = variant_colors(["muon", "mousse", "alpha=0.0"], "muon")
    assert colors["muon"] == BASELINE_COLOR and colors["mousse"] != colors["alpha=0.0"]
    # the scale figure lists each variant once per preset: the same colours
    assert variant_colors(["muon", "mousse", "alpha=0.0"] * 2, "muon") == colors


def test_time_axis_only_from_the_timing_pass(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mousse.experiments.results import apply_timing_pass
    from mousse_cli import plot

    results = summarize(RECORDS)
    assert plot.seconds_per_step(results) == {}  # the runs' own seconds never give the time axis
    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    plot.plot_curves(results, RECORDS, tmp_path / "x.png")
    timed = drawn[-1].axes[3]
    assert not timed.axison and plot.NO_TIMING in [t.get_text() for t in timed.texts]

    rows = {"muon": 10.0, "mousse": 13.0, "alpha=0.0": 12.0}
    timing = {
        "baseline": "muon",
        "rounds": 5,
        "variants": {
            name: {"step_ms_median": ms, "overhead_pct": 100 * (ms / 10 - 1)}
            for name, ms in rows.items()
        },
    }
    passed = apply_timing_pass(results, timing)
    assert plot.seconds_per_step(passed) == {n: ms / 1000 for n, ms in rows.items()}
    plot.plot_curves(passed, RECORDS, tmp_path / "x.png")
    timed = drawn[-1].axes[3]
    ends = {line.get_label(): line.get_xdata()[-1] for line in timed.get_lines()}
    assert ends["mousse"] == pytest.approx(300 * 0.013)  # steps x side-by-side step time
    assert ends["muon (baseline)"] == pytest.approx(300 * 0.010)


def test_curves_that_coincide_stay_visible(tmp_path, monkeypatch):
    """Muon and alpha 0 (the same update) draw the same curve: the baseline is dashed and drawn
    on top, the other has markers, both legend entries and a note under the figure say so."""
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    records = (
        _seeded("muon", [1.50, 1.52, 1.51], baseline=True)
        + _seeded("mousse", [1.40, 1.41, 1.39])
        + _seeded("alpha=0.0", [1.50, 1.52, 1.51])
    )
    bands = plot.seed_bands(records)
    assert plot.overlapping(bands) == {"muon": ["alpha=0.0"], "alpha=0.0": ["muon"]}
    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    plot.plot_curves(summarize(records), records, tmp_path / "x.png")
    full = drawn[-1].axes[0]
    lines = full.get_lines()
    base, alpha0 = lines[-1], next(x for x in lines if x.get_label().startswith("alpha=0.0"))
    assert base.get_label() == "muon (baseline) (same curve as alpha=0.0)"
    assert base.get_linestyle() == "--" and base.get_zorder() > alpha0.get_zorder()
    assert alpha0.get_label() == "alpha=0.0 (same curve as muon)"
    markers = {x.get_label().split()[0]: x.get_marker() for x in lines[:-1]}
    assert len(set(markers.values())) == 2 and "None" not in markers.values()
    assert "alpha=0.0 and muon" in drawn[-1].get_supxlabel()
    assert "(3 seeds)" in full.get_title()
    plot.plot_curves(summarize(RECORDS), RECORDS, tmp_path / "x.png")  # nothing coincides
    assert not drawn[-1].get_supxlabel() and plot.overlapping(plot.seed_bands(RECORDS)) == {}


def test_a_tuning_curve_the_baseline_shares_stays_visible(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    phase = {"knob": "lr", "grid": [0.01, 0.02], "losses": [1.5, 1.4], "chosen": 0.02}
    results = {
        "baseline": "muon",
        "variants": [
            {"variant": v, "is_baseline": v == "muon", "tuning": [phase]}
            for v in ("muon", "alpha=0.0")
        ],
    }
    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    plot.plot_tuning(results, tmp_path / "t.png")
    lines = {x.get_label(): x for x in drawn[-1].axes[0].get_lines() if x.get_label()[0] != "_"}
    base, alpha0 = lines["muon (baseline)"], lines["alpha=0.0"]
    assert base.get_linestyle() == "--" and base.get_zorder() > alpha0.get_zorder()


def test_one_seed_is_one_seed_in_the_title(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    one = [r for r in RECORDS if r["seed"] == 0]
    plot.plot_curves(summarize(one), one, tmp_path / "x.png")
    assert drawn[-1].axes[0].get_title().endswith("(1 seed)")


def test_forest_marks_significance_as_the_tables_do(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    from mousse_cli import plot

    drawn = []
    monkeypatch.setattr(plot, "_save", lambda fig, out, plt: drawn.append(fig))
    results = summarize(RECORDS)
    plot.plot_curves(results, [], tmp_path / "x.png")  # a results file: the forest plot alone
    (forest,) = drawn[-1].axes
    by_variant = {v["variant"]: v for v in results["variants"]}
    labels = [t.get_text() for t in forest.get_yticklabels()]
    assert labels == ["alpha=0.0", "mousse"]  # drawn bottom up: the lowest delta on top
    markers = [line for line in forest.get_lines() if line.get_marker() == "o"]
    for label, marker in zip(labels, markers, strict=True):
        filled = marker.get_markerfacecolor() != "white"
        assert filled == bool(by_variant[label]["significant"]), label
    assert [by_variant[n]["significant"] for n in labels] == [False, True]


# ---- narrow terminals ------------------------------------------------------------------------


def _report_on_a_terminal(tmp_path, columns: int) -> str:
    """`mousse report results.json` as a terminal `columns` wide shows it (Rich's TTY_COMPATIBLE
    stands in for the terminal), without its style codes."""
    import os
    import re

    from mousse.train.fileio import dumps

    path = tmp_path / "results.json"
    path.write_text(dumps(summarize(RECORDS)))
    env = {**os.environ, "COLUMNS": str(columns), "TTY_COMPATIBLE": "1", "NO_COLOR": "1"}
    env.pop("FORCE_COLOR", None)
    proc = subprocess.run(
        [*mousse_command(), "report", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    return re.sub(r"\x1b\[[0-9;]*m", "", proc.stdout)  # bold and italics


def test_a_narrow_terminal_gets_readable_lines_not_empty_boxes(tmp_path):
    """COLUMNS=20 squeezed every column of the results tables to nothing (empty boxes): too
    narrow for a table, each row is printed as 'header: value' lines instead."""
    narrow = _report_on_a_terminal(tmp_path, 20)
    assert "┃" not in narrow and "│" not in narrow, narrow
    for text in ("Variant: mousse", "Variant: alpha=0.0", "Final val loss:", "Tokens/s:"):
        assert text in narrow, narrow
    assert all(len(line) <= 20 for line in narrow.splitlines()), narrow
    wide = _report_on_a_terminal(tmp_path, 200)  # wide enough: the tables, as before
    assert "┃ Variant" in wide and "Variant: mousse" not in wide, wide


def test_a_run_that_diverged_before_this_invocation_shows_without_a_difference():
    """A run finished before this invocation is shown from its summary, where a diverged run's
    last evaluation is null (strict JSON): its row has no difference from the baseline, and the
    tables still render."""
    from mousse.experiments.sweep import RunSkipped
    from mousse_cli.ablation_view import AblationView

    def finished(status: str, loss: float | None) -> dict:
        timings = dict.fromkeys(("step_ms_median", "fwd_bwd_ms_median", "opt_ms_median"))
        return {
            "status": status,
            "steps": 4,
            "final_val_loss": loss,
            "best_val_loss": 2.0,
            "curve": [{"step": 0, "val_loss": 2.0}, {"step": 4, "val_loss": loss}],
            **timings,
            "tokens_per_s": None,
            "peak_mem_bytes": None,
        }

    view = AblationView([], "muon", live=False)
    for name in ("muon", "mousse"):
        view._add(name)
    view(RunSkipped("muon", finished("completed", 1.5)))
    view(RunSkipped("mousse", finished("diverged", None)))
    assert view._delta(view.rows["mousse"]) is None
    view.render()
