"""Shared fixtures for the CLI / training tests.

The builtin corpus cache goes to a session tmp dir (MOUSSE_CACHE), never to ~. Tests that train
call `mousse` in-process through Typer's CliRunner (`cli`) or, where the real process matters,
through a subprocess (`mousse_proc`). Torch runs on one thread: on a shared 2-core box, two
threads per process oversubscribe the cores and make every step several times slower.
Triton, wherever a test reaches it, runs its interpreter (there is no GPU): set here, before any
module imports it (torch._dynamo does, at import), unless TRITON_INTERPRET=0 asks for the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")  # scripts/gpu_check.sh sets 0: the real GPU

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(scope="session", autouse=True)
def _mousse_cache(tmp_path_factory):
    """Point the builtin-corpus cache at a session tmp dir (inherited by subprocesses and spawned
    workers), keep torch (and child processes) on one thread and timing passes short."""
    saved = {
        k: os.environ.get(k) for k in ("MOUSSE_CACHE", "OMP_NUM_THREADS", "MOUSSE_TIMING_BUDGET")
    }
    threads = torch.get_num_threads()
    os.environ["MOUSSE_CACHE"] = str(tmp_path_factory.mktemp("mousse-cache"))
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MOUSSE_TIMING_BUDGET"] = "1"  # ablations' timing passes: seconds, not minutes
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def builtin_data():
    """Build the builtin corpus once per session (a few seconds the first time)."""
    from mousse.train.data import load_dataset

    return load_dataset("builtin")


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


@pytest.fixture
def cli(builtin_data):
    return invoke_cli


def mousse_command() -> list[str]:
    exe = Path(sys.executable).parent / "mousse"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "mousse_cli"]


@pytest.fixture
def mousse_proc(builtin_data):
    """Run the installed `mousse` executable in a subprocess with pipes (not a terminal)."""

    def run(*args, cwd=None, timeout=120) -> CliResult:
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
        }
        proc = subprocess.run(
            [*mousse_command(), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=cwd,
            env=env,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr)

    return run


def read_metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def train_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in read_metrics(run_dir) if "train_loss" in r}


def val_losses(run_dir) -> dict[int, float]:
    return {r["step"]: r["val_loss"] for r in read_metrics(run_dir) if "val_loss" in r}


def summary(run_dir) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def assert_one_line_error(result: CliResult, *needles: str) -> None:
    """Exit 2, a single 'error: ...' line on stderr naming each needle, no traceback."""
    assert result.exit_code == 2, result
    lines = result.stderr_lines()
    assert len(lines) == 1, result
    assert lines[0].startswith("error:"), result
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, result
    for needle in needles:
        assert needle in lines[0], result


# ---- gloo ranks in spawned processes ---------------------------------------------------------

GLOO_TIMEOUT_S = 60.0


def _gloo_rank(rank: int, worker, store: str, nprocs: int, timeout: float, args: tuple) -> None:
    """One spawned rank: join the group, run `worker(rank, *args)`, leave the group the product's
    way (a barrier with a timeout, then destroy), so no rank tears down while a peer still
    exchanges data with it."""
    from datetime import timedelta

    import torch.distributed as dist

    from mousse.dist.process import leave_process_group

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=nprocs,
        timeout=timedelta(seconds=timeout),
    )
    worker(rank, *args)
    leave_process_group(timeout)


def run_gloo_ranks(worker, nprocs: int, tmp_path: Path, *args, timeout: float = GLOO_TIMEOUT_S):
    """Run `worker(rank, *args)` (a module-level function) on `nprocs` spawned gloo ranks; a rank
    that fails fails the test with its error, and ranks still running after `timeout` seconds
    are stopped and fail it with a clear message instead of hanging the suite."""
    import time

    import torch.multiprocessing as mp

    store = tmp_path / f"gloo-store-{time.monotonic_ns()}"
    ctx = mp.start_processes(
        _gloo_rank,
        args=(worker, str(store), nprocs, timeout, args),
        nprocs=nprocs,
        join=False,
        start_method="spawn",
    )
    deadline = time.monotonic() + timeout + 30
    while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
        if time.monotonic() >= deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(
                f"{nprocs} gloo ranks of {worker.__name__} still running after "
                f"{timeout + 30:.0f} s: a collective hangs"
            )
