"""`mousse ablate`, `mousse report` and `mousse presets` through the CLI: plan, results,
resumability (shards, reruns, interruption), divergence marking and exit codes, parallel workers,
report formats, the family's knobs per optimizer, the presets' per-optimizer lrs."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from support.cli import (
    FAST,
    CliResult,
    assert_one_line_error,
    invoke_cli,
    mousse_command,
    summary,
    train_losses,
)
from support.results import results_file

from mousse.train import tomlio
from mousse.train.events import StepLogged

SWEEP = ["--alpha", "0.0,0.25", "--steps", "8", "--eval-every", "4", *FAST]
RUNS = ["muon", "mousse", "alpha=0.0", "alpha=0.25"]  # baseline first, then the centre
RUN_KEYS = (
    "name",
    "knobs",
    "seed",
    "status",
    "final_val_loss",
    "best_val_loss",
    "steps_to_target",
    "step_ms_median",
)


def fingerprint(run_dir: Path) -> dict:
    """mtime and size of every file of a run: unchanged means nothing was recomputed."""
    return {
        str(p.relative_to(run_dir)): (p.stat().st_mtime_ns, p.stat().st_size)
        for p in sorted(run_dir.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ablation(builtin_data, tmp_path_factory):
    """The 4-run alpha sweep, done as shard 1/2 first, then the whole command (which must only
    run the other shard's runs)."""
    adir = tmp_path_factory.mktemp("ablate") / "alpha"
    shard = invoke_cli("ablate", *SWEEP, "--ablation-dir", adir, "--shard", "1/2", "--json")
    assert shard.exit_code == 0, shard
    shard_prints = {name: fingerprint(adir / "runs" / name) for name in ("muon", "alpha=0.0")}
    full = invoke_cli("ablate", *SWEEP, "--ablation-dir", adir, "--json")
    assert full.exit_code == 0, full
    return {"dir": adir, "shard": shard, "shard_prints": shard_prints, "full": full}


# ---- the main command ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ablate_json_results(ablation):
    res = ablation["full"]
    out = res.json()  # stdout holds only the JSON object
    assert Path(out["ablation_dir"]) == ablation["dir"]
    assert out["baseline"] == "muon"
    assert [r["name"] for r in out["runs"]] == RUNS
    by_name = {r["name"]: r for r in out["runs"]}
    for r in out["runs"]:
        for key in RUN_KEYS:
            assert key in r, (r["name"], key)
        assert r["status"] == "completed" and r["seed"] == 0 and r["steps"] == 8
        assert r["best_val_loss"] <= r["final_val_loss"] and r["step_ms_median"] > 0
    assert by_name["muon"]["knobs"] == {"optimizer": "muon"}
    assert by_name["mousse"]["knobs"] == {}
    assert by_name["alpha=0.0"]["knobs"] == {"alpha": 0.0}
    assert by_name["alpha=0.25"]["knobs"] == {"alpha": 0.25}
    # the target is the baseline's final loss, which the baseline reaches by its last step
    assert out["target_loss"] == by_name["muon"]["final_val_loss"]
    assert by_name["muon"]["steps_to_target"] is not None
    for r in out["runs"]:
        reached = r["best_val_loss"] <= out["target_loss"]
        assert (r["steps_to_target"] is not None) == reached, r

    # files: results.json (same object), ablation.toml (the resolved plan), one run dir per run
    adir = ablation["dir"]
    assert json.loads((adir / "results.json").read_text()) == out
    plan = tomlio.load(adir / "ablation.toml")
    assert [r["name"] for r in plan["runs"]] == RUNS
    assert plan["sweeps"] == {"alpha": [0.0, 0.25]} and plan["base"]["steps"] == 8
    for name in RUNS:
        s = summary(adir / "runs" / name)
        assert s["status"] == "completed"
        assert s["final_val_loss"] == by_name[name]["final_val_loss"]
    cfg = tomlio.load(adir / "runs" / "alpha=0.25" / "config.toml")
    assert cfg["alpha"] == 0.25 and cfg["steps"] == 8 and cfg["d_model"] == 64
    assert tomlio.load(adir / "runs" / "muon" / "config.toml")["optimizer"] == "muon"


@pytest.mark.slow
def test_plan_printed_first_then_plain_lines(ablation):
    err = ablation["full"].stderr
    assert "\x1b[" not in err  # not a terminal: no colour, no live view
    lines = err.splitlines()
    assert "4 runs" in lines[0]
    first_event = next(i for i, line in enumerate(lines) if line.startswith("[mousse] started"))
    for name in RUNS:
        assert any(line.split()[:1] == [name] for line in lines[1:first_event]), name
    assert "[muon] already completed" in err  # from the shard
    assert "[alpha=0.25] completed after 8 steps" in err
    assert "convergence" in err and "step time" in err  # the final tables, once
    assert "completed" in err and "complet…" not in err  # not a terminal: cells are not cut


@pytest.mark.slow
def test_shard_runs_part_then_rerun_completes_the_rest(ablation):
    shard = ablation["shard"].json()
    status = {r["name"]: r["status"] for r in shard["runs"]}
    assert status == {
        "muon": "completed",
        "mousse": "pending",
        "alpha=0.0": "completed",
        "alpha=0.25": "pending",
    }
    assert "shard 1/2: 2 runs" in ablation["shard"].stderr
    # the full command left the shard's finished runs alone
    for name, prints in ablation["shard_prints"].items():
        assert fingerprint(ablation["dir"] / "runs" / name) == prints, name
    assert "[muon] started" not in ablation["full"].stderr
    assert "[alpha=0.0] started" not in ablation["full"].stderr


@pytest.mark.slow
def test_rerun_recomputes_nothing(ablation):
    adir = ablation["dir"]
    before = {name: fingerprint(adir / "runs" / name) for name in RUNS}
    res = invoke_cli("ablate", *SWEEP, "--ablation-dir", adir, "--json")
    assert res.exit_code == 0, res
    assert {name: fingerprint(adir / "runs" / name) for name in RUNS} == before
    assert res.stderr.count("already completed") == 4 and "started" not in res.stderr
    assert res.json()["runs"] == ablation["full"].json()["runs"]


@pytest.mark.slow
def test_other_plan_in_same_dir_is_refused(ablation):
    before = (ablation["dir"] / "ablation.toml").read_text()
    res = invoke_cli(
        "ablate", "--alpha", "0.5", "--steps", "8", *FAST, "--ablation-dir", ablation["dir"]
    )
    assert res.exit_code == 2, res
    # the plan is listed first; the refusal is one error line after it
    lines = res.stderr_lines()
    assert lines[-1].startswith("error:") and "different ablation plan" in lines[-1], res
    assert not any(line.startswith("error:") for line in lines[:-1])
    assert "Traceback" not in res.stderr
    assert (ablation["dir"] / "ablation.toml").read_text() == before
    assert not (ablation["dir"] / "runs" / "alpha=0.5").exists()


def test_dry_run_runs_nothing(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("ablate", *SWEEP, "--dry-run")
    assert res.exit_code == 0, res
    assert res.stdout == ""
    for name in RUNS:
        assert name in res.stderr
    assert "optimizer=muon  (baseline)" in res.stderr
    assert not (tmp_path / "runs").exists()  # not even the ablation dir
    # the default ablation dir is stable: derived from the plan, named after the knob
    again = cli("ablate", *SWEEP, "--dry-run")
    plan = lambda r: [line for line in r.stderr_lines() if not line.startswith("estimate:")]
    assert plan(again) == plan(res) and "runs/ablate-alpha-" in res.stderr
    assert "estimate: about" in res.stderr  # measured: differs between the two calls


def test_more_seeds_continue_the_default_dir(cli, tmp_path, monkeypatch):
    """`--seeds 3` after `--seeds 1`, neither naming --ablation-dir: the default dir is named
    after the plan's hash, which counts the seeds, yet the rerun continues the dir the first
    made (its plan adds seeds to it) and trains seeds 1 and 2 only, reading seed 0 from the
    runs the single seed named without '-s0'. Another plan gets a dir of its own."""
    monkeypatch.chdir(tmp_path)
    args = ("ablate", "--alpha", "0.0", "--steps", "4", "--eval-every", "4", *FAST)
    assert cli(*args).exit_code == 0
    (made,) = (tmp_path / "runs").iterdir()
    planned = cli(*args, "--seeds", "3", "--dry-run")
    assert planned.exit_code == 0 and f"runs/{made.name}" in planned.stderr, planned.stderr
    more = cli(*args, "--seeds", "3", "--json")
    assert more.exit_code == 0, more.stderr
    assert list((tmp_path / "runs").iterdir()) == [made]
    assert more.stderr.count("already completed") == 3 and more.stderr.count("started") == 6
    variants = ("muon", "mousse", "alpha=0.0")
    runs = {d.name for d in (made / "runs").iterdir()}
    assert runs == {*variants, *(f"{v}-s{s}" for v in variants for s in (1, 2))}
    rows = more.json()["runs"]
    assert {r["name"] for r in rows} == {f"{v}-s{s}" for v in variants for s in range(3)}
    assert all(r["status"] == "completed" for r in rows)
    again = cli(*args, "--seeds", "3")
    assert again.exit_code == 0 and again.stderr.count("already completed") == 9
    other = cli(*args, "--lr", "0.01", "--dry-run")
    assert other.exit_code == 0 and f"runs/{made.name}" not in other.stderr


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--schedule", "cosine,wsd"], '[sweep] schedule = ["cosine", "wsd"]'),
        (["--schedule", "wsd", "--cooldown-shape", "linear,1-sqrt"], "cooldown_shape = ["),
    ],
)
def test_a_run_setting_given_a_list_says_where_its_sweep_goes(cli, tmp_path, flags, needle):
    """Only the optimizer and its knobs sweep by flag: a list given to another setting, with
    nothing else to sweep, was meant as a sweep, and the error says to put it in a spec file."""
    res = cli("ablate", *flags, "--ablation-dir", tmp_path / "a", "--dry-run")
    assert_one_line_error(res, flags[-2], "takes one value", needle)


def test_dry_run_whole_family(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = cli("ablate", "--optimizer", "shampoo,soap,splus,tnt,specgd,adamw", "--dry-run")
    assert res.exit_code == 0, res
    lines = [line for line in res.stderr_lines() if not line.startswith("estimate:")]
    assert "8 runs" in lines[0] and "runs/ablate-optimizer-" in lines[0]
    assert [line.split()[0] for line in lines[1:]] == [
        "muon",
        "mousse",
        "shampoo",
        "soap",
        "splus",
        "tnt",
        "specgd",
        "adamw",
    ]
    assert "optimizer=tnt" in lines[6]


def test_dry_run_drops_knobs_an_optimizer_does_not_use(cli, tmp_path, monkeypatch):
    """alpha means nothing without preconditioning (Muon, SpecGD) and nothing to AdamW; the
    orthogonalizer changes every family member but not AdamW."""
    monkeypatch.chdir(tmp_path)
    res = cli(
        "ablate",
        "--optimizer",
        "mousse,muon,specgd,adamw",
        "--alpha",
        "0.0",
        "--orthogonalizer",
        "newton_schulz,sign",
        "--grid",
        "--dry-run",
    )
    assert res.exit_code == 0, res
    runs = {
        line.split()[0]: line for line in res.stderr_lines()[1:] if not line.startswith("estimate:")
    }
    assert list(runs) == [
        "muon",
        "alpha=0.0",
        "alpha=0.0+orthogonalizer=sign",
        "muon+orthogonalizer=sign",
        "specgd+orthogonalizer=newton_schulz",
        "specgd+orthogonalizer=sign",
        "adamw",
    ]
    assert runs["muon"].endswith("(baseline)")


def test_max_runs_guard(cli, tmp_path):
    res = cli("ablate", *SWEEP, "--max-runs", "3", "--ablation-dir", tmp_path / "a")
    assert_one_line_error(res, "4 runs", "--max-runs 3")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--alpha", "0.0,x"], ["alpha", "x"]),
        (["--sides", "both,top"], ["sides", "top"]),
        (["--optimizer", "mousse,sgd"], ["optimizer", "sgd", "specgd"]),
        (["--graft", "on,off"], ["graft", "'on'", "orthogonalizer, adam, none"]),
        (["--factor-norm", "trace,off"], ["factor_norm", "'off'", "trace, same_trace, none"]),
        (["--orthogonalizer", "svd"], ["orthogonalizer", "svd", "newton_schulz"]),
        (["--post-alpha", "0.0,x"], ["post_alpha", "x"]),
        (["--alpha", "0.0", "--beta2", "1.5"], ["beta2", "1.5", "[0, 1)"]),
        (["--alpha", "0.0", "--shard", "3/2"], ["--shard"]),
        (["--alpha", "0.0", "--seeds", "0,-1"], ["seeds"]),
        (["--alpha", "0.0", "--parallel", "0"], ["--parallel"]),
        ([], ["nothing to sweep"]),
    ],
    ids=[
        "alpha-x",
        "sides-top",
        "optimizer-sgd",
        "graft-on",
        "factor-norm-off",
        "orthogonalizer-svd",
        "post-alpha-x",
        "beta2",
        "shard",
        "seeds",
        "parallel",
        "no-sweep",
    ],
)
def test_ablate_bad_input(cli, tmp_path, args, needles):
    res = cli("ablate", *args, "--ablation-dir", tmp_path / "a")
    assert_one_line_error(res, *needles)
    assert not (tmp_path / "a").exists()


def test_bad_spec_file_message_keeps_brackets(cli, tmp_path):
    spec = tmp_path / "spec.toml"
    spec.write_text("base = 3\n[sweep]\nalpha = [0.0]\n")
    res = cli("ablate", spec, "--ablation-dir", tmp_path / "a")
    assert_one_line_error(res, "spec.toml", "'base' must be a table ([base])")


# ---- interruption, divergence, parallel -------------------------------------------------------------


@pytest.mark.slow
def test_interrupted_ablation_resumes(cli, tmp_path, monkeypatch):
    """Ctrl-C in the middle of the first run: exit 130 with that run checkpointed; rerunning the
    command resumes it from its checkpoint and runs the rest."""
    import mousse_cli.ablate_run as ablate_run
    from mousse.experiments.runner import RunUpdate

    class InterruptingView(ablate_run.AblationView):
        def __call__(self, update):
            super().__call__(update)
            if (
                isinstance(update, RunUpdate)
                and isinstance(update.event, StepLogged)
                and update.run == "mousse"
                and update.event.step == 3
            ):
                os.kill(os.getpid(), signal.SIGINT)

    adir = tmp_path / "abl"
    args = [
        "ablate",
        "--alpha",
        "0.0",
        "--no-baseline",
        "--steps",
        "8",
        "--eval-every",
        "4",
        "--log-every",
        "1",
        *FAST,
        "--ablation-dir",
        adir,
        "--json",
    ]
    monkeypatch.setattr(ablate_run, "AblationView", InterruptingView)
    res = cli(*args)
    assert res.exit_code == 130, res
    first = summary(adir / "runs" / "mousse")
    assert first["status"] == "interrupted" and 3 <= first["steps"] < 8
    assert (adir / "runs" / "mousse" / "checkpoints" / f"step-{first['steps']}").is_dir()
    assert not (adir / "runs" / "alpha=0.0").exists()
    status = {r["name"]: r["status"] for r in res.json()["runs"]}
    assert status == {"mousse": "interrupted", "alpha=0.0": "pending"}

    monkeypatch.undo()
    res = cli(*args)
    assert res.exit_code == 0, res
    assert f"[mousse] started (resumed at step {first['steps']})" in res.stderr
    done = summary(adir / "runs" / "mousse")
    assert done["status"] == "completed" and done["resumed_from"] == first["steps"]
    assert sorted(train_losses(adir / "runs" / "mousse")) == list(range(1, 9))
    assert {r["name"]: r["status"] for r in res.json()["runs"]} == {
        "mousse": "completed",
        "alpha=0.0": "completed",
    }


@pytest.mark.slow
def test_diverged_run_is_marked_and_exit_3(cli, tmp_path):
    spec = tmp_path / "blowup.toml"
    spec.write_text(
        'name = "blowup"\nbaseline = false\n\n[base]\nsteps = 500\neval_every = 3\n'
        "\n[sweep]\nlr = [1e6]\nalpha = [0.0]\n"
    )
    adir = tmp_path / "abl"
    res = cli("ablate", spec, "--steps", "6", *FAST, "--ablation-dir", adir, "--json")
    assert res.exit_code == 3, res
    out = res.json()
    assert [r["name"] for r in out["runs"]] == ["mousse", "lr=1000000.0", "alpha=0.0"]
    status = {r["name"]: r["status"] for r in out["runs"]}
    # the diverged run is in the middle and the sweep went on after it
    assert status == {"mousse": "completed", "lr=1000000.0": "diverged", "alpha=0.0": "completed"}
    by_name = {r["name"]: r for r in out["runs"]}
    assert by_name["alpha=0.0"]["steps"] == 6  # the CLI's --steps beat the spec's 500
    assert summary(adir / "runs" / "lr=1000000.0")["status"] == "diverged"
    assert "[lr=1000000.0] diverged" in res.stderr
    saved = json.loads((adir / "results.json").read_text())
    variants = {v["variant"]: v for v in saved["variants"]}
    assert variants["lr=1000000.0"]["statuses"] == {"diverged": 1}
    assert variants["lr=1000000.0"]["final_val_loss_mean"] is None  # never averaged

    # a diverged run counts as finished: a rerun does not retry it, and still exits 3
    prints = fingerprint(adir / "runs" / "lr=1000000.0")
    again = cli("ablate", spec, "--steps", "6", *FAST, "--ablation-dir", adir)
    assert again.exit_code == 3, again
    assert fingerprint(adir / "runs" / "lr=1000000.0") == prints


@pytest.mark.slow
def test_parallel_workers_match_sequential(cli, ablation, tmp_path, monkeypatch):
    # one torch thread per worker (as in this process) whatever the machine, so that losses
    # can be compared bit for bit
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    adir = tmp_path / "par"
    res = cli(
        "ablate",
        "--alpha",
        "0.0",
        "--no-baseline",
        "--steps",
        "8",
        "--eval-every",
        "4",
        *FAST,
        "--parallel",
        "2",
        "--ablation-dir",
        adir,
        "--json",
    )
    assert res.exit_code == 0, res
    out = res.json()
    assert {r["name"]: r["status"] for r in out["runs"]} == {
        "mousse": "completed",
        "alpha=0.0": "completed",
    }
    # events came back from the worker processes
    for name in ("mousse", "alpha=0.0"):
        assert f"[{name}] started" in res.stderr and f"[{name}] step 8 val_loss" in res.stderr
    # the same runs as in the sequential sweep (same settings, knobs and seed): same losses
    sequential = {r["name"]: r for r in ablation["full"].json()["runs"]}
    for r in out["runs"]:
        assert r["final_val_loss"] == sequential[r["name"]]["final_val_loss"], r["name"]
        assert train_losses(adir / "runs" / r["name"]) == train_losses(
            ablation["dir"] / "runs" / r["name"]
        )


# ---- report ----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_report_markdown(cli, ablation):
    res = cli("report", ablation["dir"], "--format", "markdown")
    assert res.exit_code == 0, res
    md = res.stdout
    assert "## Convergence" in md and "## Step time" in md
    assert "| Variant | Tuned | n | Final val loss |" in md
    for name in RUNS:
        assert f"| {name} |" in md
    final = {r["name"]: r["final_val_loss"] for r in ablation["full"].json()["runs"]}
    assert f"{final['alpha=0.25']:.4f}" in md


@pytest.mark.slow
def test_report_csv_and_json(cli, ablation):
    res = cli("report", ablation["dir"], "--format", "csv")
    assert res.exit_code == 0, res
    rows = list(csv.DictReader(io.StringIO(res.stdout)))
    assert [r["variant"] for r in rows] == RUNS
    final = {r["name"]: r["final_val_loss"] for r in ablation["full"].json()["runs"]}
    for row in rows:
        assert float(row["final_val_loss_mean"]) == pytest.approx(final[row["variant"]])
    assert rows[0]["is_baseline"] == "True"

    res = cli("report", ablation["dir"], "--format", "json")
    assert res.exit_code == 0, res
    assert json.loads(res.stdout) == json.loads((ablation["dir"] / "results.json").read_text())


@pytest.mark.slow
def test_report_table(cli, ablation):
    res = cli("report", ablation["dir"])
    assert res.exit_code == 0, res
    assert "convergence" in res.stderr + res.stdout and "step time" in res.stderr + res.stdout
    assert "Traceback" not in res.stderr


@pytest.mark.slow
def test_report_plot_png(cli, ablation, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "plots" / "curves.png"
    res = cli("report", ablation["dir"], "--format", "csv", "--plot", out)
    assert res.exit_code == 0, res
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_plot_without_matplotlib(cli, ablation, tmp_path, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    res = cli("report", ablation["dir"], "--plot", tmp_path / "x.png")
    assert_one_line_error(res, "matplotlib")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("plot, needle", [("x.txt", "cannot write .txt"), ("", "file name")])
def test_a_plot_matplotlib_cannot_write_is_one_line_before_any_output(tmp_path, plot, needle):
    pytest.importorskip("matplotlib")
    res = invoke_cli("report", results_file(tmp_path / "results.json"), "--plot", plot)
    assert_one_line_error(res, needle)
    assert res.stdout == ""


@pytest.mark.slow
def test_report_against_another_variant(cli, ablation):
    """--against mousse: every variant compared with Mousse, its differences the baseline's
    turned around."""
    base = cli("report", ablation["dir"], "--format", "json").json()
    res = cli("report", ablation["dir"], "--format", "json", "--against", "mousse")
    assert res.exit_code == 0, res
    mousse = res.json()
    assert base["baseline"] == "muon" and mousse["baseline"] == "mousse"
    delta = {v["variant"]: v["delta_vs_baseline"] for v in mousse["variants"]}
    mean = {v["variant"]: v["final_val_loss_mean"] for v in base["variants"]}
    assert delta["mousse"] == 0.0
    assert delta["muon"] == pytest.approx(mean["muon"] - mean["mousse"])
    # the timing pass re-based on Mousse: Muon's overhead from the same rounds, opposite in sign
    timed = {v["variant"]: v for v in base["variants"]}
    rebased = {v["variant"]: v for v in mousse["variants"]}
    assert rebased["muon"]["overhead_source"] == "timing pass"
    assert rebased["mousse"]["overhead_pct"] is None
    assert (rebased["muon"]["overhead_pct"] > 0) == (timed["mousse"]["overhead_pct"] < 0)
    assert_one_line_error(cli("report", ablation["dir"], "--against", "adam"), "--against")


@pytest.mark.slow
def test_report_errors(cli, tmp_path, ablation):
    (tmp_path / "plain").mkdir()
    assert_one_line_error(cli("report", tmp_path / "plain"), "not an ablation dir")
    assert_one_line_error(cli("report", ablation["dir"], "--format", "yaml"), "yaml")


# ---- presets -------------------------------------------------------------------------------------


def test_presets_json_rows_have_the_typed_form(presets_rows):
    from mousse.train.fileio import shaped
    from mousse_cli.preset_rows import PresetRow

    assert presets_rows and all(shaped(r, PresetRow) for r in presets_rows)
    assert not shaped({**presets_rows[0], "lrs": {"mousse": "0.1"}}, PresetRow)


def test_presets_list_lr_per_optimizer(cli, presets_rows):
    from mousse.train.config import OPTIMIZER_NAMES
    from mousse.train.presets import PRESETS

    rows = {r["name"]: r for r in presets_rows}
    assert list(rows) == list(PRESETS)
    for name, row in rows.items():
        assert list(row["lrs"]) == list(OPTIMIZER_NAMES)
        assert row["lrs"]["adamw"] == PRESETS[name].adamw_lr and row["lr_note"]
    assert rows["tiny"]["lrs"]["mousse"] == rows["tiny"]["lrs"]["muon"] == 0.12  # tuned
    assert (rows["small"]["lrs"]["mousse"], rows["small"]["lrs"]["muon"]) == (0.12, 0.06)  # tuned
    assert "tuned on small" in rows["small"]["lr_note"]
    assert rows["160m"]["lrs"]["mousse"] == rows["160m"]["lrs"]["muon"] == 0.06
    assert "lr sweep on tiny" in rows["small"]["lr_note"]
    # tiny's own tuning moved Mousse's and Muon's momentum (benchmarks/tuned); the rest: recipes
    assert rows["tiny"]["momenta"] == rows["small"]["momenta"] == {"mousse": 0.8, "muon": 0.8}
    assert (
        rows["tiny"]["momentum_styles"]
        == rows["small"]["momentum_styles"]
        == {"mousse": "nesterov"}
    )
    assert not rows["160m"]["momentum_styles"]
    # medium and the GPU ladder start from small's tuned momentum and rule (not tuned there);
    # medium's decisive set tuned its lrs and chose small's
    tuned_here = ("tiny", "small", "medium", "1.4m", "2.2m")
    for name in tuned_here[2:]:
        assert rows[name]["momenta"] == rows["small"]["momenta"], name
        assert rows[name]["momentum_styles"] == {"mousse": "nesterov"}, name
    assert rows["medium"]["lrs"] == rows["small"]["lrs"]
    assert "tuned on medium" in rows["medium"]["lr_note"]
    assert rows["1.4m"]["lrs"]["mousse"] == rows["2.2m"]["lrs"]["muon"] == 0.06
    assert all(not rows[name]["momenta"] for name in rows if name not in tuned_here)

    res = cli("presets")
    assert res.exit_code == 0, res
    text = res.stdout + res.stderr
    header = next(line for line in text.splitlines() if line.split()[:2] == ["preset", "mousse"])
    assert header.split() == ["preset", *OPTIMIZER_NAMES]
    tiny = next(
        line
        for line in text.splitlines()
        if line.split()[:1] == ["tiny"] and line.split()[1] == "0.12"
    )
    assert tiny.split()[1:] == [f"{lr:g}" for lr in rows["tiny"]["lrs"].values()]
    assert "benchmarks/lr-sweep" in text and "released 160M recipe" in text


# ---- help a person can read ----------------------------------------------------------------------


def _run_mousse(*args) -> CliResult:
    """`mousse ARGS` as a user runs it (the console script: its one-line usage errors included)."""
    proc = subprocess.run([*mousse_command(), *args], capture_output=True, text=True, timeout=120)
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.mark.parametrize(
    "args,needles",
    [
        (
            ["train", "--stpes", "3"],
            ["no such option --stpes", "did you mean --steps?", "mousse train --help"],
        ),
        (["ablate", "--alpah", "0.0"], ["no such option --alpah", "did you mean --alpha?"]),
        (["trian"], ["no such command 'trian'", "train"]),
        (["train", "--steps", "abc"], ["--steps", "integer"]),
        (["ablate", "--trace-norm", "on,of", "--dry-run"], ["--trace-norm", "on,off"]),
        (["ablate", "--trace-norm", "on", "--factor-norm", "none"], ["not both"]),
        (["train", "--nesterov"], ["--nesterov is now --momentum-style nesterov"]),
        (["ablate", "--no-graft"], ["--no-graft is now --graft none", "mousse ablate --help"]),
        (["train", "--no-compile"], ["--no-compile is now --compile off"]),
    ],
    ids=[
        "unknown-option",
        "unknown-sweep",
        "unknown-command",
        "bad-int",
        "bad-alias",
        "alias-twice",
        "renamed-flag",
        "renamed-negative-flag",
        "compile-before-auto",
    ],
)
def test_usage_errors_are_one_line_with_the_closest_option(args, needles):
    assert_one_line_error(_run_mousse(*args), *needles)


def test_top_level_help_gives_each_command_one_line():
    out = subprocess.run(
        [*mousse_command(), "--help"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "120"},
    ).stdout
    rows = {line.split()[1]: line for line in out.splitlines() if line.startswith("│ ")}
    for name in ("train", "presets", "ablate", "bench", "report"):
        assert rows[name].rstrip(" │").endswith("."), rows[name]  # the whole sentence, one row


def test_help_is_grouped_into_panels():
    train = _run_mousse("train", "--help")
    ablate = _run_mousse("ablate", "--help")
    assert train.exit_code == ablate.exit_code == 0
    for panel in ("Model and data", "Budget and schedule", "Optimizer knobs", "Run and output"):
        assert panel in train.stdout and panel in ablate.stdout
    assert "Sweeps" in ablate.stdout and "--trace-norm" in ablate.stdout
    assert "--no-trace-norm" in train.stdout and "mousse[hf]" in train.stdout  # [ kept literally


def test_help_shows_on_off_flags_without_a_type():
    """`--json`, `--compile/--no-compile` and `--help` take no value: no `<bool>` after them."""
    for args in (["--help"], ["train", "--help"], ["ablate", "--help"], ["presets", "--help"]):
        res = invoke_cli(*args)
        assert res.exit_code == 0, res
        assert "--help" in res.stdout and "<bool>" not in res.stdout, res.stdout
    assert "<int>" in invoke_cli("train", "--help").stdout  # options with a value keep theirs


def test_trace_norm_is_factor_norm_on_or_off(tmp_path):
    for flag, value in (("--trace-norm", "trace"), ("--no-trace-norm", "none")):
        run = tmp_path / value
        res = invoke_cli("train", *FAST, "--steps", "1", flag, "--run-dir", run)
        assert res.exit_code == 0, res
        assert tomlio.loads((run / "config.toml").read_text())["factor_norm"] == value
    dry = invoke_cli(
        "ablate", "--trace-norm", "on,off", "--dry-run", "--ablation-dir", tmp_path / "a"
    )
    assert dry.exit_code == 0 and "factor_norm=none" in dry.stderr


def test_live_step_time_is_the_median_of_the_logged_steps():
    """Two logged steps (a short run) show their mean, not the slower one."""
    from mousse_cli.ablation_view import AblationView

    assert AblationView._median([300.0, 3900.0]) == 2100.0
    assert AblationView._median([3.0, 1.0, 2.0]) == 2.0
    assert AblationView._median([]) is None


# ---- damaged files under `report` (issue 31) -----------------------------------------------------


def _planned_ablation(root: Path) -> Path:
    """An ablation dir with its plan recorded and no run trained yet."""
    from mousse.experiments.ablation import plan_ablation

    root.mkdir()
    plan = plan_ablation({"alpha": [0.0]}, {"steps": 2})
    (root / "ablation.toml").write_text(tomlio.dumps(plan.to_dict()))
    return root


@pytest.mark.parametrize(
    "content,needle",
    [
        (b"\xff\xfe\x00binary", "utf-8"),
        (
            b'mode = "one-at-a-time"\nseeds = [0]\nbaseline = true\nsweeps = {}\nruns = [1]\n',
            "a run is int",
        ),
        (
            b'mode = "one-at-a-time"\nseeds = [0]\nbaseline = true\nsweeps = {}\n'
            b'[[runs]]\nname = 5\nvariant = "x"\nseed = 0\n',
            "run name 5 is not a str",
        ),
    ],
    ids=["binary", "a-run-not-a-table", "a-name-not-a-string"],
)
def test_report_on_a_damaged_ablation_toml_is_one_line(tmp_path, content, needle):
    root = _planned_ablation(tmp_path / "A")
    (root / "ablation.toml").write_bytes(content)
    assert_one_line_error(invoke_cli("report", root), "ablation.toml is damaged", needle)


@pytest.mark.parametrize("content", [b"\xff\xfe binary", b"[1, 2]", b'{"steps": 3}'])
def test_report_counts_a_damaged_summary_as_no_result(tmp_path, content):
    root = _planned_ablation(tmp_path / "A")
    (root / "runs" / "mousse").mkdir(parents=True)
    (root / "runs" / "mousse" / "summary.json").write_bytes(content)
    res = invoke_cli("report", root, "--format", "json")
    assert res.exit_code == 0, res
    (row,) = [r for r in res.json()["runs"] if r["name"] == "mousse"]
    assert row["status"] == "pending"


def test_report_in_a_narrow_output_encoding_writes_stand_ins(mousse_proc, tmp_path, monkeypatch):
    root = _planned_ablation(tmp_path / "A")
    monkeypatch.setenv("PYTHONIOENCODING", "latin-1")
    res = mousse_proc("report", root, "--format", "markdown")
    assert res.exit_code == 0 and "Traceback" not in res.stderr, res
    assert "| ? vs baseline |" in res.stdout


def test_markup_in_a_dir_or_variant_name_is_printed_as_named(tmp_path):
    """A preset's dir named `[red]x` in a scale root, and a variant named `[bold]v[/bold]` in
    its ablation.toml: printed as they are named (title, tables, the scale table), never taken
    for Rich markup."""
    root = tmp_path / "scale"
    root.mkdir()
    adir = _planned_ablation(root / "[red]x")
    toml = (adir / "ablation.toml").read_text()
    (adir / "ablation.toml").write_text(
        toml.replace('variant = "alpha=0.0"', 'variant = "[bold]v[/bold]"')
    )
    res = invoke_cli("report", root)
    assert res.exit_code == 0, res
    assert "preset [red]x" in res.stdout and "┃   [red]x ┃" in res.stdout, res
    assert res.stdout.count("│ [bold]v[/bold] │") == 3, res  # convergence, step time, scale


def test_a_rerun_may_change_when_runs_checkpoint_and_log(tmp_path):
    """--checkpoint-every, --keep-checkpoints and --log-every on a rerun resume the same ablation
    (the dir records the new values); a run resumed with another cadence goes on."""
    adir, sweep = tmp_path / "a", ["--alpha", "0.0", "--steps", "2", "--no-baseline", *FAST]
    first = invoke_cli("ablate", *sweep, "--ablation-dir", adir)
    assert first.exit_code == 0
    # each finished run's line says how far the ablation is (read from its dir)
    ends = [line for line in first.stderr_lines() if "completed after" in line]
    assert [line.rsplit("; ", 1)[1] for line in ends] == ["1 of 2 runs done", "2 of 2 runs done"]
    again = invoke_cli(
        "ablate", *sweep, "--checkpoint-every", "1", "--log-every", "1", "--ablation-dir", adir
    )
    assert again.exit_code == 0, again.stderr
    assert again.stderr.count("already completed") == 2
    assert tomlio.load(adir / "ablation.toml")["base"]["checkpoint_every"] == 1
    run = tmp_path / "r"
    first = ["--steps", "4", "--checkpoint-every", "2", *FAST, "--run-dir", run]
    assert invoke_cli("train", *first).exit_code == 0
    more = invoke_cli("train", "--resume", run, "--steps", "6", "--checkpoint-every", "1")
    assert more.exit_code == 0, more.stderr
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-5", "step-6"]
