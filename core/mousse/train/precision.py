"""The arithmetic a run computes in and how fast this machine does it: `--precision` resolved
against the hardware (bf16 autocast where matmuls are native in bf16, fp32 elsewhere), and the
matmul peak that model FLOP utilization (MFU) is measured against, probed once per machine."""

from __future__ import annotations

import contextlib
import json
import math
import platform
import time
from pathlib import Path

import torch

from .config import CompileMode, ConfigError, Precision, RunPrecision
from .data import cache_dir
from .fileio import atomic_write_text, read_json
from .machine import QUIET, cpu_reading, device_name, others_busy

PROBE_SIZE = {"cpu": 1024, "cuda": 8192}  # square matmuls the peak probe times
PROBE_SECONDS = 0.25  # per probe: short, and the best of its bursts
PRECISION_DTYPES: dict[RunPrecision, torch.dtype] = {"bf16": torch.bfloat16, "fp32": torch.float32}


def native_bf16(device: torch.device) -> bool:
    """Whether `device` does bf16 matmuls natively: a CUDA GPU that supports bf16, or a CPU with
    AVX-512 BF16 or AMX (detected, not assumed: elsewhere bf16 is emulated and slower)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    cpu = torch.cpu
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in probes)


def resolve_precision(setting: Precision, device: torch.device) -> RunPrecision:
    """What `--precision` means on `device`: auto is bf16 where native (`native_bf16`), else
    fp32; bf16 and fp32 are taken as given."""
    if setting == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    return setting


def legacy_precision(device: torch.device) -> RunPrecision:
    """The precision of runs recorded before `--precision` existed: bf16 autocast on CUDA only."""
    return "bf16" if device.type == "cuda" else "fp32"


def resumed_precision(
    setting: Precision, device: torch.device, recorded: RunPrecision | None
) -> RunPrecision:
    """A resumed run keeps the precision it trained in (`recorded`, or for runs from before the
    setting, `legacy_precision`); asking for another one is a ConfigError."""
    ran = recorded or legacy_precision(device)
    if setting != "auto" and setting != ran:
        raise ConfigError(
            f"--precision {setting}: this run trained in {ran} and resuming keeps it; "
            "drop the flag, or start a new run to change it"
        )
    return ran


def resumed_compile(setting: CompileMode, recorded: bool | None, saved: CompileMode) -> bool:
    """Whether a resumed run compiles: as it trained (`recorded`; for checkpoints from before
    the record, as the setting `saved` in the checkpoint's config says, auto meaning off, and
    never as the flag given now). Compiled and eager steps round differently, so asking for
    the other one is a ConfigError."""
    ran = recorded if recorded is not None else saved == "on"
    if setting != "auto" and (setting == "on") != ran:
        raise ConfigError(
            f"--compile {setting}: this run trained {'compiled' if ran else 'eager'} and resuming "
            "keeps it, for exact losses; drop the flag, or start a new run to change it"
        )
    return ran


def autocast(
    device: torch.device, precision: RunPrecision
) -> contextlib.AbstractContextManager[None]:
    """The forward's context: bf16 autocast for 'bf16' (losses are computed in fp32 all the
    same, `GPT.forward`), nothing for 'fp32'."""
    return torch.autocast(device.type, torch.bfloat16, enabled=precision == "bf16")


# ---- the machine's matmul peak ------------------------------------------------------------------

_PEAKS: dict[str, float] = {}  # this process's, by cache key
PEAK_FILE = "peak-flops.json"


def machine_key(device: torch.device, precision: RunPrecision) -> str:
    """What a measurement here is kept under: host, processor, thread count, torch version and
    precision."""
    threads = torch.get_num_threads() if device.type == "cpu" else 1
    return "|".join(
        (platform.node(), device_name(device), str(threads), torch.__version__, precision)
    )


def measure_peak(device: torch.device, precision: RunPrecision) -> tuple[float, bool]:
    """(FLOP/s, quiet) of a square matmul at `precision` here: the best of short bursts over
    PROBE_SECONDS (the best, so that a moment of load elsewhere does not lower it). `quiet`
    says whether other processes left the CPU alone meanwhile (`machine.QUIET`): a probe that
    shared the cores with other work is not kept."""
    n = PROBE_SIZE.get(device.type, 1024)
    a, b = (torch.randn(n, n, device=device, dtype=PRECISION_DTYPES[precision]) for _ in range(2))
    a @ b  # warm-up: library loading, kernel choice
    best, since, start = 0.0, cpu_reading(), time.perf_counter()
    while time.perf_counter() < start + PROBE_SECONDS:
        sync(device)
        burst = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - burst))
    busy = others_busy(since)
    return best, device.type != "cpu" or (busy is not None and busy < QUIET)


def peak_flops(device: torch.device, precision: RunPrecision) -> float:
    """This machine's matmul peak at `precision` (`measure_peak`), measured once per machine and
    kept (`remember`) when measured quietly, else measured again by the next process."""
    key = machine_key(device, precision)
    if key in _PEAKS:
        return _PEAKS[key]
    value = recalled(PEAK_FILE, key)
    if value is None:
        value, quiet = measure_peak(device, precision)
        if quiet:
            remember(PEAK_FILE, key, value)
    _PEAKS[key] = value
    return value


# ---- measurements kept per machine ---------------------------------------------------------------


def recalled(name: str, key: str) -> float | None:
    """The positive number kept under `key` in the cache dir's JSON file `name`
    (`data.cache_dir`), or None (none kept, an unreadable file, or a value no measurement
    gives, such as 0, NaN or `true`: measured again)."""
    value = _read_cache(cache_dir() / name).get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) and value > 0 else None


def remember(name: str, key: str, value: float) -> None:
    """Keep `value` under `key` in the cache file `name`, atomically (a read-only home only
    costs a measurement per process)."""
    path = cache_dir() / name
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({**_read_cache(path), key: value}, indent=1, sort_keys=True)
        atomic_write_text(path, text + "\n")


def _read_cache(path: Path) -> dict[str, object]:
    """The JSON object in the regular file `path`, else {} (none, damaged, or a FIFO or device
    in its place, which `read_json` never blocks on)."""
    try:
        data = read_json(path)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def sync(device: torch.device) -> None:
    """Wait for `device`'s queued work (a no-op on the CPU), so that a timer reads it whole."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
