"""Driving `mousse` from a test: the settings of a fast run, an in-process invocation
(`invoke_cli`, what the `cli` fixture hands out), the installed executable (`mousse_command`),
what a run wrote (`read_metrics`, `train_losses`, `val_losses`, `summary`), a checkpoint file
damaged in place (`flip_tensor_bytes`) and the one-line error check (`assert_one_line_error`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

# A tiny-preset run shrunk further so that a dozen steps take well under a second.
FAST = [
    "--d-model",
    "64",
    "--seq-len",
    "64",
    "--batch-size",
    "2",
    "--micro-batch-size",
    "2",
    "--eval-tokens",
    "4096",
]
FAST_SETTINGS = {
    "d_model": 64,
    "seq_len": 64,
    "batch_size": 2,
    "micro_batch_size": 2,
    "eval_tokens": 4096,
}


class CliResult:
    """What a `mousse` invocation produced."""

    def __init__(self, exit_code: int, stdout: str, stderr: str, exception=None):
        self.exit_code, self.stdout, self.stderr, self.exception = (
            exit_code,
            stdout,
            stderr,
            exception,
        )

    def json(self):
        return json.loads(self.stdout)

    def stderr_lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def __repr__(self) -> str:
        return (
            f"exit {self.exit_code}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n"
            f"{self.stderr[-3000:]}\n--- exception ---\n{self.exception!r}"
        )


def invoke_cli(*args) -> CliResult:
    """Run `mousse ARGS...` in-process (CliRunner); only a clean exit (SystemExit) is allowed,
    never an escaped exception."""
    from typer.testing import CliRunner

    from mousse_cli.app import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    exc = result.exception
    assert exc is None or isinstance(exc, SystemExit), (
        f"mousse {' '.join(map(str, args))} raised {exc!r}\n{result.stderr}"
    )
    return CliResult(result.exit_code, result.stdout, result.stderr, exc)


def mousse_command() -> list[str]:
    exe = Path(sys.executable).parent / "mousse"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mousse_cli"]


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


def val_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r}


def summary(run_dir) -> dict:
    """The run's summary.json, read as mousse reads it: of `RunSummary`'s shape, or a failure."""
    from mousse.train.summary import read_summary

    found = read_summary(Path(run_dir))
    assert found is not None, f"{run_dir}/summary.json is missing or not of RunSummary's shape"
    return found


def flip_tensor_bytes(path) -> None:
    """Flip bytes deep inside a checkpoint file's tensor data (the header stays valid: it still
    loads, on other numbers)."""
    data = bytearray(Path(path).read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    Path(path).write_bytes(bytes(data))


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Exit 2, a single 'error: ...' line on stderr naming each needle, no traceback."""
    assert result.exit_code == 2, result
    lines = result.stderr_lines()
    assert len(lines) == 1, result
    assert lines[0].startswith("error:"), result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result
    for needle in needles:
        assert needle in lines[0], result


def signal_once_logged(proc: subprocess.Popen, root: Path, sig: signal.Signals) -> str:
    """Signal the process group of an ablation running in `root` (`proc`, started in a session
    of its own; its workers included) once a run has logged a step more than it had, or the
    ablation ended first; its stderr, which holds no traceback."""
    logged = lambda: sum(
        m.read_text().count('"train_loss"') for m in (root / "runs").glob("*/metrics.jsonl")
    )
    before, deadline = logged() if (root / "runs").is_dir() else 0, time.monotonic() + 300
    while proc.poll() is None and (not (root / "runs").is_dir() or logged() <= before):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    _, err = proc.communicate(timeout=300)
    assert "Traceback" not in err, err
    return err
