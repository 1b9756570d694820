"""A training step's wall time split into forward+backward and optimizer parts, without host syncs
in the hot path."""

from __future__ import annotations

import statistics
import time
from typing import Literal, TypedDict, get_args

import torch

# A point in time of a step: a recorded CUDA event on GPU (read at `flush`), perf_counter seconds
# on CPU.
Mark = torch.cuda.Event | float


class StepTiming(TypedDict, total=False):
    """The step-time split of a run's session (`StepTimer.summary`), in its summary; summaries
    from before a key existed lack it, as do those of runs that failed before training."""

    step_ms_median: float | None
    fwd_bwd_ms_median: float | None
    opt_ms_median: float | None
    refresh_ms_median: float | None
    fisher_ms_median: float | None
    refresh_ms_amortized: float | None
    tokens_per_s: float | None
    compile_seconds: float  # compiled runs only: the first step's extra time


# The keys of every session's StepTiming (all but compile_seconds), in the order it has them.
MeasuredKey = Literal[
    "step_ms_median",
    "fwd_bwd_ms_median",
    "opt_ms_median",
    "refresh_ms_median",
    "fisher_ms_median",
    "refresh_ms_amortized",
    "tokens_per_s",
]
MEASURED_KEYS: tuple[MeasuredKey, ...] = get_args(MeasuredKey)


class StepTimer:
    """Per-step wall time split into fwd+bwd (with its extra part, TNT's sampled-label
    backward, marked by begin/end_extra) and optimizer, without syncing in the hot path:
    CPU uses perf_counter; CUDA records events and reads them at `flush()` (log time)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.fisher_ms: list[float] = []
        self._extra: list[Mark] = []
        self.last_fisher_ms = 0.0
        self.fwd_bwd_ms: list[float] = []
        self.total_ms: list[float] = []
        self.opt_ms_plain: list[float] = []
        self.opt_ms_refresh: list[float] = []
        # per step not yet read: (start, fwd+bwd done, optimizer done, refresh, extra marks)
        self._open: list[tuple[Mark, Mark, Mark, bool, list[Mark]]] = []
        self.last_total_ms = self.last_fwd_bwd_ms = self.last_opt_ms = 0.0

    def _now(self) -> Mark:
        if self.cuda:
            # torch leaves torch.cuda.Event.__new__ unannotated
            event = torch.cuda.Event(enable_timing=True)  # type: ignore[no-untyped-call]
            event.record()
            return event
        return time.perf_counter()

    def start(self) -> None:
        self._marks = [self._now()]
        self._extra = []

    def begin_extra(self) -> None:
        self._extra.append(self._now())

    def end_extra(self) -> None:
        self._extra.append(self._now())

    def mark(self) -> None:
        self._marks.append(self._now())

    def stop(self, refresh: bool) -> None:
        self._marks.append(self._now())
        start, mark, end = self._marks
        self._open.append((start, mark, end, refresh, self._extra))

    def flush(self) -> float:
        """Resolve pending steps; returns their total seconds."""
        total = 0.0
        if self.cuda and self._open:
            last = self._open[-1][2]
            assert isinstance(last, torch.cuda.Event)
            last.synchronize()
        for t0, t1, t2, refresh, extra in self._open:
            fb, op = _elapsed_ms(t0, t1), _elapsed_ms(t1, t2)
            # begin_extra/end_extra come in pairs
            fisher = sum(_elapsed_ms(a, b) for a, b in zip(extra[::2], extra[1::2], strict=True))
            if extra:
                self.fisher_ms.append(fisher)
            self.last_fisher_ms = fisher
            self.fwd_bwd_ms.append(fb)
            self.total_ms.append(fb + op)
            (self.opt_ms_refresh if refresh else self.opt_ms_plain).append(op)
            self.last_total_ms, self.last_fwd_bwd_ms, self.last_opt_ms = fb + op, fb, op
            total += (fb + op) / 1000
        self._open.clear()
        return total

    def summary(self, precond_freq: int | None, tokens_per_step: int) -> StepTiming:
        """Medians of the split, the extra cost of a refresh step (optimizer time on refresh
        steps minus the plain steps'; None until there are two of each, as it would be noise)
        and throughput."""
        step_ms = _median(self.total_ms)
        opt_plain, opt_refresh = _median(self.opt_ms_plain), _median(self.opt_ms_refresh)
        enough = len(self.opt_ms_refresh) >= 2 and len(self.opt_ms_plain) >= 2
        refresh_ms = (
            max(0.0, opt_refresh - opt_plain)
            if enough and opt_refresh is not None and opt_plain is not None  # enough: not None
            else None
        )
        return {
            "step_ms_median": step_ms,
            "fwd_bwd_ms_median": _median(self.fwd_bwd_ms),
            "opt_ms_median": opt_plain if opt_plain is not None else opt_refresh,
            "refresh_ms_median": refresh_ms,
            "fisher_ms_median": _median(self.fisher_ms),
            "refresh_ms_amortized": (
                # refresh steps (refresh_ms) only happen where the optimizer has a precond_freq
                refresh_ms / precond_freq
                if refresh_ms is not None and precond_freq is not None
                else None
            ),
            "tokens_per_s": tokens_per_step / (step_ms / 1000) if step_ms else None,
        }


def _elapsed_ms(start: Mark, end: Mark) -> float:
    """Milliseconds from `start` to `end`: two CUDA events' elapsed time, or two perf_counter
    readings' difference."""
    if isinstance(start, torch.cuda.Event) and isinstance(end, torch.cuda.Event):
        ms: float = start.elapsed_time(end)
        return ms
    assert isinstance(start, float) and isinstance(end, float)
    return (end - start) * 1000


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None
