"""Where a run runs and what it records about it: the device, its memory peak, and the versions,
revision and machine that make a run reproducible."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import TypedDict

import torch

from mousse import __version__

from .config import DEVICES, ConfigError, RunPrecision, TrainConfig, check_choice


def cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) clock ticks of all CPUs since boot, from /proc/stat (None where there is
    none)."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]  # user .. steal (guest is in user)
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks) - idle, sum(ticks)


def others_share(
    before: tuple[int, int], after: tuple[int, int], own_seconds: float, hz: int
) -> float | None:
    """Share of all CPUs' time between two `cpu_jiffies` readings that other processes used:
    the busy time less this process's own CPU seconds."""
    busy, total = (after[0] - before[0]) / hz, (after[1] - before[1]) / hz
    if total <= 0:
        return None
    return min(1.0, max(0.0, (busy - own_seconds) / total))


def cpu_reading() -> tuple[tuple[int, int] | None, float]:
    """All CPUs' (busy, total) ticks now (`cpu_jiffies`) and this process's CPU seconds: the
    start of an `others_busy` measurement."""
    return cpu_jiffies(), time.process_time()


def others_busy(since: tuple[tuple[int, int] | None, float]) -> float | None:
    """The share of all CPUs' time since `since` (a `cpu_reading`) that other processes used
    (None where /proc/stat is missing)."""
    (before, own), (after, now) = since, cpu_reading()
    if before is None or after is None:
        return None
    return others_share(before, after, now - own, os.sysconf("SC_CLK_TCK"))


def pick_device(name: str) -> torch.device:
    """The torch device a run's `device` setting names ('auto': CUDA when there is one)."""
    check_choice("device", name, DEVICES)
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but CUDA is not available; use --device cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's memory peak: CUDA's allocator peak, or on Linux the process's peak resident
    set (VmHWM, reset by writing 5 to /proc/self/clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def peak_memory(device: torch.device) -> tuple[int | None, str | None]:
    """(bytes, source) of the peak since `reset_peak_memory`: 'allocator' on CUDA (tensors
    only), 'rss' on Linux CPUs (the whole process: tensors, Python, libraries), None elsewhere."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "allocator"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "rss"
    except (OSError, ValueError, IndexError):
        pass
    return None, None


def device_name(device: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (else what platform reports)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        model = [
            line
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ]
    except OSError:
        model = []
    return (
        model[0].split(":", 1)[1].strip() if model else platform.processor() or platform.machine()
    )


def git_revision() -> str | None:
    """The source tree's git commit (with '-dirty' when modified), if it is a checkout."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return rev.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


class _Versions(TypedDict):
    mousse: str
    python: str
    torch: str
    platform: str
    device: str
    cpu_threads: int
    git_revision: str | None  # None: not run from a git checkout
    seed: int
    argv: list[str]
    started: str  # local time, ISO 8601 to the second


class Environment(_Versions, total=False):
    """What a run records of where it ran (`environment`; env.json, `rundir.RunEnv`): the keys
    below only where they apply (a GPU, CUDA_VISIBLE_DEVICES set), precision since it was
    recorded."""

    precision: str  # `label`
    cuda_visible_devices: str
    gpu: str
    cuda: str | None  # torch's CUDA version


def environment(
    cfg: TrainConfig, device: torch.device, precision: RunPrecision, argv: list[str] | None
) -> Environment:
    """What a reader needs to reproduce the run: versions, machine, precision, revision, seed,
    argv."""
    env: Environment = {
        "mousse": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
        "precision": label(precision),
        "cpu_threads": torch.get_num_threads(),
        "git_revision": git_revision(),
        "seed": cfg.seed,
        "argv": argv if argv is not None else sys.argv,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    if "CUDA_VISIBLE_DEVICES" in os.environ:  # which GPU `cuda` is (--parallel places runs)
        env["cuda_visible_devices"] = os.environ["CUDA_VISIBLE_DEVICES"]
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
        env["cuda"] = torch.version.cuda
    return env


def label(precision: RunPrecision) -> str:
    """How tables, summaries and env.json name a precision."""
    return "bf16 autocast" if precision == "bf16" else "fp32"


# Other processes' share of the CPU below which a measurement taken here is kept for the machine.
QUIET = 0.1


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<preset, or --model's function>-<optimizer>-<time>."""
    name = cfg.model.rpartition(":")[2].strip() if cfg.model else cfg.preset
    return Path("runs") / f"{name}-{cfg.optimizer}-{datetime.now():%Y%m%d-%H%M%S}"
