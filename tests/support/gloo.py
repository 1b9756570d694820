"""Gloo ranks in spawned processes, for the multi-rank tests on CPU (tests/distributed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

GLOO_TIMEOUT_S = 60.0


def _gloo_rank(rank: int, worker, store: str, nprocs: int, timeout: float, args: tuple) -> None:
    """One spawned rank: join the group, run `worker(rank, *args)`, leave the group the product's
    way (a barrier with a timeout, then destroy), so no rank tears down while a peer still
    exchanges data with it."""
    from datetime import timedelta

    import torch.distributed as dist

    from mousse.distributed.process import leave_process_group

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
