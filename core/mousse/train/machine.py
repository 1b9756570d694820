"""Where a run runs and what it records about it: the device, its memory peak, and the versions,
revision and machine that make a run reproducible."""

from __future__ import annotations

import contextlib
import os
import platform
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import torch

from mousse import __version__

from .config import DEVICES, ConfigError, TrainConfig, check_choice

# bf16 dense peak of common accelerators, for MFU (None where unknown).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "4090": 165e12}


def model_flops_utilization(
    device: torch.device, flops_per_s: float, world_size: int
) -> float | None:
    """Model FLOP/s over the GPUs' bf16 peak (None off CUDA, for an unknown GPU, or without a
    measured step time)."""
    if device.type != "cuda" or not flops_per_s:
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    return flops_per_s / (peak * world_size) if peak else None


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


def environment(cfg: TrainConfig, device: torch.device, argv: list[str] | None) -> dict[str, Any]:
    """What a reader needs to reproduce the run: versions, machine, revision, seed, argv."""
    env: dict[str, Any] = {
        "mousse": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "platform": platform.platform(),
        "device": str(device),
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


def default_run_dir(cfg: TrainConfig) -> Path:
    """runs/<preset, or --model's function>-<optimizer>-<time>."""
    name = cfg.model.rpartition(":")[2].strip() if cfg.model else cfg.preset
    return Path("runs") / f"{name}-{cfg.optimizer}-{datetime.now():%Y%m%d-%H%M%S}"
