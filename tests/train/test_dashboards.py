"""`--log tensorboard,wandb`: each run's scalars and config in the dashboards, matching
metrics.jsonl; an ablation's runs under one log dir (written by the parent under --parallel); a
failing dashboard only warns; a missing package is one line, exit 2; --log changes no run's
identity (plan hash, run names, resume)."""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest
from support.cli import FAST, assert_one_line_error, read_metrics, summary

from mousse.train import tomlio

pytest.importorskip("tensorboard")

TRAIN = ["train", *FAST, "--steps", "6", "--eval-every", "3", "--log-every", "2"]


def scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """tag -> {step: value} of a TensorBoard log dir, as TensorBoard itself reads it."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    return {tag: {e.step: e.value for e in acc.Scalars(tag)} for tag in acc.Tags()["scalars"]}


def hparams(logdir: Path) -> dict:
    """The hyperparameters of the run's hparams entry."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    acc = EventAccumulator(str(logdir))
    acc.Reload()
    start = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    data = HParamsPluginData.FromString(start).session_start_info.hparams
    return {k: getattr(v, v.WhichOneof("kind")) for k, v in data.items()}


def test_train_scalars_and_hparams_match_metrics(cli, tmp_path):
    run_dir = tmp_path / "run"
    res = cli(*TRAIN, "--log", "tensorboard", "--run-dir", run_dir)
    assert res.exit_code == 0, res
    tb = scalars(run_dir / "tb")
    steps = [r for r in read_metrics(run_dir) if "train_loss" in r]
    evals = [r for r in read_metrics(run_dir) if "val_loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6] and [r["step"] for r in evals] == [0, 3, 5, 6]
    for tag, key in (
        ("train/loss", "train_loss"),
        ("train/lr", "lr"),
        ("time/step_ms", "step_ms"),
        ("time/fwd_bwd_ms", "fwd_bwd_ms"),
        ("time/opt_ms", "opt_ms"),
        ("time/tokens_per_s", "tokens_per_s"),
    ):
        assert tb[tag] == pytest.approx({r["step"]: r[key] for r in steps}, rel=1e-6), tag
    assert tb["val/loss"] == pytest.approx({r["step"]: r["val_loss"] for r in evals}, rel=1e-6)
    assert "time/fisher_ms" not in tb  # only TNT's sampled Fisher has that part
    for key in ("update_rms", "lam_min", "lam_max", "cond_max", "eigh_failures"):  # telemetry
        assert tb[f"optim/{key}"] == pytest.approx(
            {r["step"]: r["telemetry"][key] for r in steps}, rel=1e-6
        ), key
    last = steps[-1]["telemetry"]
    assert 0 < last["lam_min"] <= last["lam_max"] and last["cond_max"] >= 1
    assert last["eigh_failures"] == 0 and last["update_rms"] > 0
    final = summary(run_dir)
    assert tb["hparams/final_val_loss"] == pytest.approx({6: final["final_val_loss"]}, rel=1e-6)
    assert tb["time/step_ms_median"] == pytest.approx({6: final["step_ms_median"]}, rel=1e-6)
    config = tomlio.load(run_dir / "config.toml")
    hp = hparams(run_dir / "tb")
    assert config["log"] == "tensorboard" and "log" not in hp  # where it is shown is no hparam
    assert hp["optimizer"] == config["optimizer"] == "mousse"
    assert hp["d_model"] == 64 and hp["alpha"] == config["alpha"]


def test_ablation_runs_share_one_log_dir_written_by_the_parent(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # one torch thread per worker
    adir = tmp_path / "ab"
    args = [
        "ablate",
        "--alpha",
        "0.0",
        *FAST,
        "--steps",
        "4",
        "--eval-every",
        "2",
        "--no-timing-pass",
    ]
    res = cli(*args, "--log", "tensorboard", "--parallel", "2", "--ablation-dir", adir)
    assert res.exit_code == 0, res
    names = {p.name for p in (adir / "runs").iterdir()}
    assert names == {"muon", "mousse", "alpha=0.0"}
    assert {p.name for p in (adir / "tb").iterdir()} == names  # TensorBoard overlays them
    for name in names:
        tb = scalars(adir / "tb" / name)
        metrics = {
            r["step"]: r["train_loss"]
            for r in read_metrics(adir / "runs" / name)
            if "train_loss" in r
        }
        assert tb["train/loss"] == pytest.approx(metrics, rel=1e-6), name
        assert hparams(adir / "tb" / name)["optimizer"] == ("muon" if name == "muon" else "mousse")
    assert not any((adir / "runs" / name / "tb").exists() for name in names)
    # --log is no part of the plan: the same dir is the same ablation without it (all done)
    again = cli(*args, "--ablation-dir", adir)
    assert again.exit_code == 0, again
    assert tomlio.load(adir / "ablation.toml")["base"].get("log") is None


@pytest.mark.parametrize("command", ["train", "ablate"])
def test_each_cooldown_branch_logs_apart_from_its_trunk(cli, tmp_path, command):
    """`--budgets 0.0002,0.0004,0.0008` (5, 9 and 17 steps; forks at 4 and 7): the trunk's
    TensorBoard dir holds its own steps only, and each branch's dir the steps after its fork,
    as each one's metrics.jsonl has them (`train`: in each run dir; `ablate`: tb/<run>/<b>)."""
    budgets = ["--budgets", "0.0002,0.0004,0.0008", "--eval-every", "3", "--log", "tensorboard"]
    if command == "train":
        trunk = tmp_path / "run"
        res = cli("train", *FAST, *budgets, "--run-dir", trunk)
        tb = lambda branch: trunk / branch / "tb"
    else:
        root = tmp_path / "ab"
        args = ["--optimizer", "mousse", "--no-baseline", "--no-timing-pass"]
        res = cli("ablate", *FAST, *budgets, *args, "--ablation-dir", root)
        trunk = root / "runs" / "mousse"
        tb = lambda branch: root / "tb" / "mousse" / branch.removeprefix("branches/")
    assert res.exit_code == 0, res
    for branch, fork in ((".", 0), ("branches/budget-0.0002", 4), ("branches/budget-0.0004", 7)):
        losses = {
            r["step"]: r["train_loss"]
            for r in read_metrics(trunk / branch)
            if "train_loss" in r and r["step"] > fork
        }
        assert scalars(tb(branch))["train/loss"] == pytest.approx(losses, rel=1e-6), branch


def test_log_changes_no_plan_hash_and_is_no_sweep(cli, tmp_path):
    def planned_dir(*extra) -> str:
        res = cli("ablate", "--alpha", "0.0", *FAST, "--steps", "4", "--dry-run", *extra)
        assert res.exit_code == 0, res
        return re.search(r"in (\S+)", res.stderr).group(1)

    assert planned_dir() == planned_dir("--log", "tensorboard")
    spec = tmp_path / "spec.toml"
    spec.write_text('[sweep]\nlog = ["tensorboard", "wandb"]\n')
    assert_one_line_error(cli("ablate", spec, "--dry-run"), "'log'", "[base]")
    assert_one_line_error(
        cli("ablate", "--alpha", "0.0", "--tune", "log=tensorboard,wandb", "--dry-run"),
        "cannot tune 'log'",
    )


def test_log_in_a_spec_base_and_bad_values(cli, tmp_path):
    from mousse.train.config import resolve

    assert resolve({"log": " wandb, tensorboard,wandb"}).log == "wandb,tensorboard"
    assert resolve({"log": "none"}).log is None  # turns off a config file's dashboards
    spec = tmp_path / "spec.toml"
    spec.write_text('[base]\nlog = "tensorbord"\n[sweep]\nalpha = [0.0]\n')
    assert_one_line_error(
        cli("ablate", spec, "--dry-run"), "'log'", "tensorboard, wandb, tensorboard,wandb or none"
    )
    assert_one_line_error(cli(*TRAIN, "--log", "tensorboard,mlflow"), "'log'", "wandb")


def test_resume_with_another_log_is_allowed(cli, tmp_path):
    run_dir = tmp_path / "run"
    first = cli(*TRAIN, "--steps", "4", "--run-dir", run_dir)
    assert first.exit_code == 0, first
    res = cli(*TRAIN, "--resume", run_dir, "--log", "tensorboard")
    assert res.exit_code == 0, res
    assert sorted(scalars(run_dir / "tb")["train/loss"]) == [6]  # logged from the resume on


def test_wandb_offline_run_holds_the_history(cli, tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-files"))
    monkeypatch.delenv("WANDB_PROJECT", raising=False)
    res = cli(*TRAIN, "--log", "tensorboard,wandb", "--run-dir", tmp_path / "run", "--json")
    assert res.exit_code == 0, res
    assert res.json()["status"] == "completed"  # stdout stays the summary alone
    # W&B's service process writes the run's file after `finish` returns; what a process exit
    # does (teardown: the service flushes and stops) makes it complete before it is read.
    wandb.teardown()
    runs = list((tmp_path / "wandb-files" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    history = b"".join(p.read_bytes() for p in runs[0].glob("run-*.wandb"))
    for key in (
        b"train/loss",
        b"val/loss",
        b"time/step_ms",
        b"hparams/final_val_loss",
        b"mousse",
    ):  # the scalars, the hparam metric, the project
        assert key in history, key
    assert (tmp_path / "run" / "tb").is_dir()


def test_failing_dashboard_only_warns(cli, tmp_path, monkeypatch):
    from mousse.train.dashboards import TensorBoardRun

    def broken(self, scalars, step):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(TensorBoardRun, "log", broken)
    run_dir = tmp_path / "run"
    res = cli(*TRAIN, "--log", "tensorboard", "--run-dir", run_dir)
    assert res.exit_code == 0, res
    warnings = [line for line in res.stderr_lines() if "--log tensorboard failed" in line]
    assert len(warnings) == 1 and "No space left" in warnings[0], res  # once, not per step
    assert summary(run_dir)["status"] == "completed"
    assert [r["step"] for r in read_metrics(run_dir) if "train_loss" in r] == [2, 4, 6]


@pytest.mark.parametrize(
    "command, package",
    [
        (TRAIN, "tensorboard"),
        (["ablate", "--alpha", "0.0", *FAST, "--steps", "4", "--dry-run"], "wandb"),
    ],
)
def test_missing_package_is_one_line(cli, tmp_path, monkeypatch, command, package):
    monkeypatch.setitem(sys.modules, package, None)  # import PACKAGE -> ImportError
    res = cli(
        *command,
        "--log",
        package,
        "--run-dir" if command is TRAIN else "--ablation-dir",
        tmp_path / "out",
    )
    assert_one_line_error(res, f"pip install 'mousse[{package}]'")
    assert not (tmp_path / "out").exists()
