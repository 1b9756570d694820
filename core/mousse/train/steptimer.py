"""A training step's wall time split into forward+backward and optimizer parts, without host syncs
in the hot path."""

from __future__ import annotations

import statistics
import time

import torch


class StepTimer:
    """Per-step wall time split into fwd+bwd (with its extra part, TNT's sampled-label
    backward, marked by begin/end_extra) and optimizer, without syncing in the hot path:
    CPU uses perf_counter; CUDA records events and reads them at `flush()` (log time)."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.fisher_ms: list[float] = []
        self._extra: list = []
        self.last_fisher_ms = 0.0
        self.fwd_bwd_ms: list[float] = []
        self.total_ms: list[float] = []
        self.opt_ms_plain: list[float] = []
        self.opt_ms_refresh: list[float] = []
        self._open: list[tuple] = []
        self.last_total_ms = self.last_fwd_bwd_ms = self.last_opt_ms = 0.0

    def _now(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
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
        self._open.append((*self._marks, refresh, self._extra))

    def flush(self) -> float:
        """Resolve pending steps; returns their total seconds."""
        total = 0.0
        if self.cuda and self._open:
            self._open[-1][2].synchronize()
        for t0, t1, t2, refresh, extra in self._open:
            if self.cuda:
                fb, op = t0.elapsed_time(t1), t1.elapsed_time(t2)
                fisher = sum(a.elapsed_time(b) for a, b in zip(extra[::2], extra[1::2]))
            else:
                fb, op = (t1 - t0) * 1000, (t2 - t1) * 1000
                fisher = sum((b - a) * 1000 for a, b in zip(extra[::2], extra[1::2]))
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

    def summary(self, precond_freq: int | None, tokens_per_step: int) -> dict:
        """Medians of the split, the extra cost of a refresh step (optimizer time on refresh
        steps minus the plain steps'; None until there are two of each, as it would be noise)
        and throughput."""
        step_ms = _median(self.total_ms)
        opt_plain, opt_refresh = _median(self.opt_ms_plain), _median(self.opt_ms_refresh)
        enough = len(self.opt_ms_refresh) >= 2 and len(self.opt_ms_plain) >= 2
        refresh_ms = max(0.0, opt_refresh - opt_plain) if enough else None
        return {
            "step_ms_median": step_ms,
            "fwd_bwd_ms_median": _median(self.fwd_bwd_ms),
            "opt_ms_median": opt_plain if opt_plain is not None else opt_refresh,
            "refresh_ms_median": refresh_ms,
            "fisher_ms_median": _median(self.fisher_ms),
            "refresh_ms_amortized": refresh_ms / precond_freq if refresh_ms is not None else None,
            "tokens_per_s": tokens_per_step / (step_ms / 1000) if step_ms else None,
        }


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None
