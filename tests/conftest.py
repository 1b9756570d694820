"""Fixtures every folder of the suite shares (pytest's root conftest).

The suite mirrors the package's layers: tests/optim (the optimizer library, on its own: it
imports nothing above mousse.optim), tests/train, tests/distributed, tests/experiments, tests/cli and
tests/gpu (checks that need an NVIDIA GPU, scripts/gpu_check.sh); tests/test_layers.py checks the
layering itself. Helpers tests import by name live in tests/support (on the path through
pyproject's `pythonpath`); each folder's conftest.py holds the fixtures only it uses.

The builtin corpus cache goes to a session tmp dir (MOUSSE_CACHE), never to ~. Tests that train
call `mousse` in-process through Typer's CliRunner (`cli`) or, where the real process matters,
through a subprocess (`mousse_proc`). Torch runs on one thread: pytest-xdist runs a worker per
core (pyproject's addopts), and two threads per process would oversubscribe the cores and make
every step several times slower.
Triton, wherever a test reaches it, runs its interpreter (there is no GPU): set here, before any
module imports it (torch._dynamo does, at import), unless TRITON_INTERPRET=0 asks for the GPU.
"""

from __future__ import annotations

import json
import os
import subprocess

os.environ.setdefault("TRITON_INTERPRET", "1")  # scripts/gpu_check.sh sets 0: the real GPU

import pytest
import torch
from support.cli import CliResult, invoke_cli, mousse_command


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


@pytest.fixture(scope="session")
def presets_rows(builtin_data) -> list[dict]:
    """`mousse presets --json`'s rows (the listing: nothing measured), once per session."""
    res = invoke_cli("presets", "--json")
    assert res.exit_code == 0, res
    return json.loads(res.stdout)


@pytest.fixture
def cli(builtin_data):
    return invoke_cli


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
