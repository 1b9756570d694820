"""The precision and compile paths under faults: kill -9 and SIGTERM of a `--compile on` run
and of an ablation at `--parallel 2` in bf16, and resuming with another arithmetic than the
run recorded (docs/reliability.md lists what each promises). The faults land at named points
(the MOUSSE_TEST_SIGNAL hook, or once a metrics line is written), not after a fixed sleep."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import pytest
from support.cli import (
    FAST,
    assert_one_line_error,
    invoke_cli,
    mousse_command,
    read_metrics,
    signal_once_logged,
    summary,
    train_losses,
    val_losses,
)

from mousse.train.checkpoint import list_checkpoints, verify_checksums

COMPILED = [*FAST, "--steps", "6", "--log-every", "1", "--checkpoint-every", "2"]
COMPILED += ["--eval-every", "3", "--compile", "on", "--precision", "fp32"]


def _signalled(args: list, point: str, sig: str, log: Path) -> subprocess.CompletedProcess:
    """`mousse ARGS` signalling itself with `sig` (SIGKILL: kill -9) at `point`, checked to have
    got there."""
    env = {**os.environ, "MOUSSE_TEST_SIGNAL": f"{sig}@{point}", "MOUSSE_TEST_SIGNAL_LOG": str(log)}
    log.unlink(missing_ok=True)
    proc = subprocess.run(
        [*mousse_command(), *map(str, args)], capture_output=True, text=True, env=env, timeout=600
    )
    assert log.exists() and log.read_text() == f"{point}\n", proc.stderr
    assert proc.returncode in (128 + signal.Signals[sig], -signal.Signals[sig]), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def _logged_once(run: Path) -> None:
    """Each step's training row and each evaluation is in metrics.jsonl once: nothing of a
    step trained again after a fault is counted twice."""
    for key in ("train_loss", "val_loss"):
        steps = [r["step"] for r in read_metrics(run) if key in r]
        assert steps == sorted(set(steps)), (key, steps)


@pytest.mark.parametrize(
    ("where", "setting", "named"),
    [
        ("flag", ["--precision", ""], "'precision': ''"),
        ("flag", ["--precision", "BF16"], "'precision': 'BF16'"),
        ("flag", ["--compile", "ON"], "'compile': 'ON'"),
        ("config", "compile = 1", "'compile': '1'"),
        ("config", "precision = true", "'precision': 'True'"),
        ("config", 'precision = ["bf16"]', "'precision'"),
        ("base", 'precision = "fp16"', "'precision': 'fp16'"),
        ("base", "compile = 1", "'compile': '1'"),
        ("sweep", 'precision = ["bf16", "x"]', "'precision': 'x'"),
        ("sweep", "compile = [1]", "'compile': '1'"),
        ("sweep", 'precision = "bf16"', "must be a list"),
        ("tune", "precision=bf16,x", "bad value 'x' to tune 'precision'"),
        ("tune", "compile=on,1", "bad value '1' to tune 'compile'"),
        ("tune", "ns_dtype=fp8", "bad value 'fp8' to tune 'ns_dtype'"),
    ],
)
def test_bad_precision_or_compile_values_are_one_line(cli, tmp_path, where, setting, named):
    """On the command line, in a config file, in a spec's [base] or [sweep], in a grid to tune
    (else found only when that tuning run starts): one line naming the setting, exit 2,
    nothing written. (`compile = true` and `false` are the settings of
    before auto, and read as on and off.)"""
    out = tmp_path / "out"
    if where == "tune":
        res = cli(
            "ablate",
            "--alpha",
            "0.0",
            "--steps",
            "2",
            "--tune",
            setting,
            "--dry-run",
            "--ablation-dir",
            out,
        )
    elif where == "flag":
        res = cli("train", *FAST, "--steps", "2", "--run-dir", out, *setting)
    elif where == "config":
        (tmp_path / "c.toml").write_text(setting + "\n")
        res = cli("train", *FAST, "--steps", "2", "--config", tmp_path / "c.toml", "--run-dir", out)
    else:
        table = {"base": f"[base]\nsteps = 2\n{setting}\n[sweep]\nalpha = [0.0]\n"}
        spec = table.get(where, f"[base]\nsteps = 2\n[sweep]\n{setting}\n")
        (tmp_path / "s.toml").write_text('mode = "one-at-a-time"\n' + spec)
        res = cli("ablate", tmp_path / "s.toml", "--ablation-dir", out, "--dry-run")
    assert_one_line_error(res, named)
    assert not out.exists()


@pytest.mark.slow  # torch.compile on the CPU, five times
def test_a_compiled_run_killed_or_stopped_anywhere_resumes_to_the_same_losses(
    builtin_data, tmp_path
):
    """kill -9 after the first step (no checkpoint yet), SIGTERM as the first checkpoint is
    written, kill -9 just after the next one: every checkpoint left verifies, each resume is
    compiled again, and the run ends on the losses of an uninterrupted compiled run. Then
    resuming it eager or in bf16 is one line naming the flag, and nothing of it changes."""
    whole = tmp_path / "whole"
    assert invoke_cli("train", *COMPILED, "--run-dir", whole).exit_code == 0
    run, log = tmp_path / "R", tmp_path / "signalled"
    again = ["train", *COMPILED, "--resume", "auto", "--run-dir", run]
    _signalled(["train", *COMPILED, "--run-dir", run], "StepLogged", "SIGKILL", log)
    assert not list_checkpoints(run / "checkpoints")  # killed before its first checkpoint
    stopped = _signalled(again, "CheckpointSaved", "SIGTERM", log)
    assert "SIGTERM: stopping after this step" in stopped.stderr, stopped.stderr
    assert summary(run)["status"] == "interrupted"
    _signalled(again, "CheckpointSaved", "SIGKILL", log)
    assert summary(run)["status"] == "interrupted"  # the kill left the last summary as it was
    for ckpt in list_checkpoints(run / "checkpoints"):
        verify_checksums(ckpt)
    final = invoke_cli("train", "--resume", run)
    assert final.exit_code == 0, final
    done = summary(run)
    assert done["status"] == "completed" and done["steps"] == 6 and done["compiled"] is True
    _logged_once(run)
    assert train_losses(run) == train_losses(whole)
    assert val_losses(run) == val_losses(whole)
    assert done["final_val_loss"] == summary(whole)["final_val_loss"]
    kept = lambda: {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p != lock}
    lock = run / ".lock"  # (it names its last holder)
    before = kept()
    for flag, refused in (
        (["--compile", "off"], "--compile off: this run trained compiled"),
        (["--precision", "bf16"], "--precision bf16: this run trained in fp32"),
    ):
        res = invoke_cli("train", "--resume", run, "--steps", "8", *flag)
        assert_one_line_error(res, refused)
    assert kept() == before


BF16_ABLATION = [*FAST, "--alpha", "0.0", "--steps", "8", "--log-every", "1"]
BF16_ABLATION += ["--checkpoint-every", "2", "--precision", "bf16", "--no-timing-pass"]


def _parallel_bf16_ablation(root: Path) -> subprocess.Popen:
    """`ablate --parallel 2` in bf16 of three runs, in a session of its own, in the background."""
    cmd = [*mousse_command(), "ablate", *BF16_ABLATION, "--parallel", "2"]
    return subprocess.Popen(
        [*cmd, "--ablation-dir", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _shown_as_results(root: Path) -> None:
    """`report` counts only completed runs in its results: a run cut short by a fault is
    never a variant's result."""
    res = invoke_cli("report", root, "--format", "json")
    assert res.exit_code == 0, res
    shown = res.json()
    completed = [r for r in shown["runs"] if r["status"] == "completed"]
    assert sum(v["n"] for v in shown["variants"]) == len(completed), shown["runs"]
    for run in completed:
        assert summary(root / "runs" / run["name"])["steps"] == 8


@pytest.mark.slow  # three bf16 runs, twice, with two workers
def test_a_parallel_bf16_ablation_killed_or_stopped_resumes_to_the_same_losses(tmp_path):
    """kill -9 and SIGTERM to the process group of `ablate --parallel 2 --precision bf16` once
    its runs log: `report` never counts a cut run, every checkpoint verifies, the rerun ends
    each run on the losses of an uninterrupted ablation with no step logged twice, and a rerun
    in fp32 is another plan, refused naming the flag that continues it."""
    whole = tmp_path / "whole"  # also two workers: a worker's threads match the rerun's
    _, err = (done := _parallel_bf16_ablation(whole)).communicate(timeout=600)
    assert done.returncode == 0, err
    root = tmp_path / "A"
    for sig in (signal.SIGKILL, signal.SIGTERM):
        signal_once_logged(_parallel_bf16_ablation(root), root, sig)
        _shown_as_results(root)
        for ckpt in (root / "runs").glob("*/checkpoints/step-*"):
            verify_checksums(ckpt)
    refused = invoke_cli(
        "ablate",
        *BF16_ABLATION[:-3],
        "--precision",
        "fp32",
        "--no-timing-pass",
        "--ablation-dir",
        root,
    )
    assert_one_line_error(refused, "different ablation plan", "pass --precision bf16")
    _, err = (final := _parallel_bf16_ablation(root)).communicate(timeout=600)
    assert final.returncode == 0, err
    _shown_as_results(root)
    for run in (whole / "runs").iterdir():
        again = root / "runs" / run.name
        assert (
            summary(again)["status"] == "completed"
            and summary(again)["precision"] == (summary(run)["precision"])
        )
        _logged_once(again)
        assert train_losses(again) == train_losses(run)
        assert summary(again)["final_val_loss"] == summary(run)["final_val_loss"]
