"""Refreshes off the step's critical path: where a refresh runs (`refresh_device`), a background
worker for delayed refreshes (`refresh_delay`), and the phases of staggered ones.

A delayed refresh is computed from tensors taken at its step (`step.refresh_input`), so its
result never depends on when the worker gets to it; the step that uses it waits only when it is
not ready yet. On a GPU the worker thread issues its work on a CUDA stream of its own, ordered
after the step that took its inputs; the host syncs of the refresh (finiteness checks, eigh
fallbacks) then block the worker, not the training loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .step import Refresh

# refresh_device="auto" sends CUDA factors up to this width to the host: cuSOLVER's batched
# eigh runs one matrix at a time (Jacobi syevj for fp32 widths 32-512) before torch 2.12, and the
# H100 loan measured 110 ms a refresh for `tiny`'s 128- and 512-wide factors. Provisional until
# `mousse bench` measures the crossover per width on a GPU (scripts/gpu_check.sh).
AUTO_HOST_MAX_WIDTH = 512


def refresh_on_host(device: torch.device, width: int, where: str) -> bool:
    """Whether a refresh of `width`-wide factors on `device` runs on the host (`refresh_device`)."""
    if device.type == "cpu" or where == "same":
        return False
    return where == "cpu" or width <= AUTO_HOST_MAX_WIDTH


def run_refresh(
    compute: Callable[..., Refresh], inputs: Sequence[Tensor], on_host: bool
) -> Refresh:
    """`compute(*inputs)`, on the host when `on_host` (inputs copied there, the result back)."""
    if not on_host:
        return compute(*inputs)
    device = inputs[0].device
    r = compute(*(t.to("cpu") for t in inputs))
    order = None if r.order is None else r.order.to(device)
    return Refresh(r.lam.to(device), r.Q.to(device), r.failed.to(device), order)


@dataclass
class InFlight:
    """A delayed refresh being computed: which side and rows of its bucket, the step from which
    it is used, and its result to come (with the CUDA event that orders its use after it)."""

    side: str
    rows: Tensor
    use_at: int
    future: Future[tuple[Refresh, torch.cuda.Event | None]]


@dataclass
class Worker:
    """One background thread for delayed refreshes (started on first use), with a CUDA stream
    of its own per device."""

    streams: dict[torch.device, torch.cuda.Stream] = field(default_factory=dict)
    _pool: ThreadPoolExecutor | None = None

    def submit(
        self,
        side: str,
        rows: Tensor,
        use_at: int,
        compute: Callable[..., Refresh],
        inputs: Sequence[Tensor],
        on_host: bool,
    ) -> InFlight:
        """Start `run_refresh(compute, inputs, on_host)`; `inputs` are new tensors that are
        ready once the current stream gets to this point."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="mousse-refresh")
        device = inputs[0].device
        if device.type == "cuda":
            if device not in self.streams:
                self.streams[device] = torch.cuda.Stream(device)  # type: ignore[no-untyped-call]
            stream = self.streams[device]
            for t in inputs:  # freed by this thread while the stream may still read them
                t.record_stream(stream)
            ready = torch.cuda.Event()  # type: ignore[no-untyped-call]
            ready.record(torch.cuda.current_stream(device))
            job = self._pool.submit(
                _on_stream, lambda: run_refresh(compute, inputs, on_host), stream, ready, device
            )
        else:
            job = self._pool.submit(lambda: (run_refresh(compute, inputs, on_host), None))
        return InFlight(side, rows, use_at, job)

    def result(self, job: InFlight) -> Refresh:
        """The refresh of `job`, waiting for it if needed; on CUDA the current stream is ordered
        after it and its tensors are marked as used there."""
        r, done = job.future.result()
        if done is not None:
            current = torch.cuda.current_stream(r.lam.device)
            current.wait_event(done)
            for t in (r.lam, r.Q, r.failed, r.order):
                if t is not None:
                    t.record_stream(current)
        return r

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _on_stream(
    work: Callable[[], Refresh],
    stream: torch.cuda.Stream,
    ready: torch.cuda.Event,
    device: torch.device,
) -> tuple[Refresh, torch.cuda.Event | None]:
    """Run `work` on `stream` after the event `ready`; the event that marks its end."""
    with torch.cuda.device(device), torch.cuda.stream(stream):
        stream.wait_event(ready)
        r = work()
        done = torch.cuda.Event()  # type: ignore[no-untyped-call]
        done.record(stream)
    return r, done


def stagger_phases(costs: Sequence[int], period: int) -> list[int]:
    """A phase in [0, period) for each matrix, so that the refresh work of each phase is about
    1/period of the whole: the costliest matrices first, each to the least-loaded phase (ties to
    the lowest). Deterministic in the order and costs of the matrices."""
    loads = [0] * period
    phases = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: -costs[i]):
        phase = min(range(period), key=lambda p: (loads[p], p))
        phases[i] = phase
        loads[phase] += costs[i]
    return phases
