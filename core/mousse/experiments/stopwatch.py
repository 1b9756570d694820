"""Wall-clock milliseconds of work on a device, the current CUDA stream synchronized before and
after so that the time is the device's, not the launch's. Work on other streams (a delayed
refresh in the background) is not waited for: the time is the critical path's."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for the work queued on the device's current stream (CUDA); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.current_stream(device).synchronize()


def timed_ms(fn: Callable[[], object], device: torch.device) -> float:
    """ms one call of `fn` takes on `device`."""
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    return (time.perf_counter() - t0) * 1000


def median_ms(fn: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median ms of `repeats` calls of `fn`, after one untimed call."""
    fn()  # warm-up
    return statistics.median(timed_ms(fn, device) for _ in range(repeats))
