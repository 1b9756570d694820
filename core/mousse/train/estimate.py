"""What a run will cost before it costs it: seconds per step and for the run, and memory against
what the device has.

Time comes from a measured probe of the real model and optimizer on this device (one micro
batch forward and backward, then an optimizer step with its refresh and one without) when that
probe is short; otherwise from the step's FLOPs at this device's measured matmul peak (a
fraction `EFFICIENCY` of it, what training reaches of a plain matmul, at the run's precision), so that a 160M-parameter
preset on a laptop CPU is priced in seconds instead of after an hour-long first step.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import torch

from mousse.optim.knobs import RUN_KNOBS
from mousse.optim.routing import CombinedOptimizer, build_optimizer, routed_shapes
from mousse.optim.step import flat_shape

from .config import RunPrecision, TrainConfig, matrix_kwargs, trained_steps
from .machine import cpu_reading, others_busy
from .model import GPT, GPTConfig, gpt_param_count
from .precision import (
    autocast,
    machine_key,
    peak_flops,
    recalled,
    remember,
    resolve_precision,
    sync,
)
from .presets import get_preset, memory_estimate_bytes, weights_and_state_bytes
from .usermodel import UserModel, build_model, flops_per_token, model_failure

PROBE_LIMIT_S = 5.0  # a probe that would take longer than this is replaced by the FLOP estimate
EFFICIENCY = 0.5  # training throughput as a fraction of the measured matmul rate (FLOP estimate)
MADE_FOR_CPU = ("tiny", "small", "medium")  # the presets sized for a CPU; the others for GPUs
BUSY_NOTE = 0.3  # share of the CPU other processes used while measuring, above which it is said
COMPILE_FILE = "compile-seconds.json"  # in the cache dir: compile times measured here
COMPILE_PAYS = 10  # --compile auto compiles a run at least this many compile times long, eager
DEFAULT_COMPILE_S = 60.0  # the compile time assumed before one is measured here for the model
_BUSY_CACHE: dict[str, float | None] = {}


@dataclass(frozen=True)
class Estimate:
    """A run's predicted cost on a device."""

    step_seconds: float
    steps: int
    method: str  # "probe" (measured) or "flops" (FLOPs at the measured matmul rate)
    memory_bytes: int
    available_bytes: int | None
    device: str
    busy: float | None = None  # share of the CPU others used while it was measured (CPU only)

    @property
    def run_seconds(self) -> float:
        return self.step_seconds * self.steps

    @property
    def fits(self) -> bool:
        return self.available_bytes is None or self.memory_bytes <= self.available_bytes


def optimizer_flops(cfg: TrainConfig, shapes: list[tuple[int, int]]) -> float:
    """Rough FLOPs of one optimizer step of the family, refresh amortized: Newton-Schulz
    (about ns_steps x (4 m^2 n + 2 m^3) with m the short side) plus an eigh of each
    preconditioned side (about 10 n^3) every precond_freq steps."""
    if cfg.optimizer == "adamw":
        return sum(10.0 * m * n for m, n in shapes)
    total = 0.0
    for m, n in shapes:
        short, long_ = min(m, n), max(m, n)
        total += (cfg.ns_steps or 5) * (4 * short * short * long_ + 2 * short**3)
        sides = {"both": (m, n), "left": (m,), "right": (n,)}.get(cfg.sides or "none", ())
        total += sum(10.0 * s**3 for s in sides) / max(1, cfg.precond_freq or 1)
    return total


def busy_share(device: torch.device) -> float | None:
    """The share of this CPU other processes used while this one ran matmuls on all its threads
    for 0.2 s (measured once per process; None: not known, or not a CPU)."""
    key = str(device)
    if key not in _BUSY_CACHE and device.type == "cpu":
        a = torch.randn(1024, 1024)
        a @ a  # warm-up
        since, start = cpu_reading(), time.perf_counter()
        while time.perf_counter() - start < 0.2:
            a @ a
        _BUSY_CACHE[key] = others_busy(since)
    return _BUSY_CACHE.get(key)


def _probe(cfg: TrainConfig, vocab_size: int, device: torch.device) -> float:
    """Seconds of one optimizer step, measured after a warm-up: a micro batch's forward and
    backward (the fastest of three, times the micro batches per step), a fresh optimizer's first
    step (with its refresh) and the fastest of two more (without), the refresh amortized over
    precond_freq."""
    torch.manual_seed(0)
    precision = resolve_precision(cfg.precision, device)
    model = build_model(cfg, vocab_size, device)
    x = torch.randint(0, vocab_size, (cfg.micro_batch_size, cfg.seq_len), device=device)

    def optimizer() -> CombinedOptimizer:
        return build_optimizer(
            model,
            optimizer=cfg.optimizer,
            lr=cfg.lr or 0.0,
            scalar_optimizer=cfg.scalar_optimizer,
            scalar_lr=cfg.scalar_lr,
            weight_decay=cfg.weight_decay,
            matrix_kwargs=matrix_kwargs(cfg, precision),
        )[0]

    try:
        times = _probe_steps(model, x, optimizer, device, precision)
    except Exception as exc:  # the user's model may fail at the real batch shape
        error = model_failure(cfg, exc, f"its forward and backward on a {tuple(x.shape)} batch")
        if error is None:
            raise
        raise error from None
    fwd_bwd = min(t for t, _ in times[1:])  # the first pays one-time costs
    first_opt, plain_opt = times[0][1], min(t for _, t in times[1:])
    refresh = max(0.0, first_opt - plain_opt) / max(1, cfg.precond_freq or 1)
    return fwd_bwd * (cfg.batch_size // cfg.micro_batch_size) + plain_opt + refresh


def _probe_steps(
    model: GPT | UserModel,
    x: torch.Tensor,
    optimizer: Callable[[], CombinedOptimizer],
    device: torch.device,
    precision: RunPrecision,
) -> list[tuple[float, float]]:
    """(forward+backward, optimizer) seconds of three steps of the second of two fresh
    optimizers: its first step refreshes, the others do not."""
    times: list[tuple[float, float]] = []
    for opt in (optimizer(), optimizer()):  # the first pays one-time costs (library loading)
        for _ in range(3):
            sync(device)
            start = time.perf_counter()
            with autocast(device, precision):
                _, loss = model(x, x)
            loss.backward()
            sync(device)
            mid = time.perf_counter()
            if getattr(opt, "fisher_params", None) and opt.fisher_params():  # TNT: labels' grads
                # p.grad: set by the backward above (None only where the forward left p unused)
                opt.set_fisher_grads({p: cast(torch.Tensor, p.grad) for p in opt.fisher_params()})
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync(device)
            times.append((mid - start, time.perf_counter() - mid))
    return times[3:]


def _flop_estimate(cfg: TrainConfig, vocab_size: int, device: torch.device) -> tuple[float, float]:
    """(seconds per step, seconds of one micro batch's forward and backward) from FLOPs."""
    model = build_model(cfg, vocab_size, "meta")
    n_params = sum(p.numel() for p in model.parameters())
    shapes = [flat_shape(s) for s in routed_shapes(model).values()]
    rate = EFFICIENCY * peak_flops(device, resolve_precision(cfg.precision, device))
    micro = flops_per_token(cfg, n_params) * cfg.micro_batch_size * cfg.seq_len / rate
    step = micro * (cfg.batch_size // cfg.micro_batch_size) + optimizer_flops(cfg, shapes) / rate
    return step, micro


def compile_key(cfg: TrainConfig, device: torch.device, precision: RunPrecision) -> str:
    """What a compile time is kept under: the machine (`machine_key`), the model's shape and the
    matrix optimizer."""
    model = cfg.model or f"gpt d{cfg.d_model} l{cfg.n_layers} h{cfg.n_heads} s{cfg.seq_len}"
    return f"{machine_key(device, precision)}|{model} {cfg.model_config or ''}|{cfg.optimizer}"


def compile_pays(
    cfg: TrainConfig, vocab_size: int, device: torch.device, precision: RunPrecision
) -> bool:
    """--compile auto's rule: compile when the run's eager length, from its FLOPs at the matmul
    peak measured here, is at least COMPILE_PAYS times the compile time measured here for this
    model and optimizer (`record_compile_seconds`; DEFAULT_COMPILE_S before there is one)."""
    step_seconds, _ = _flop_estimate(cfg, vocab_size, device)
    measured = recalled(COMPILE_FILE, compile_key(cfg, device, precision))
    return step_seconds * cfg.steps >= COMPILE_PAYS * (measured or DEFAULT_COMPILE_S)


def record_compile_seconds(
    cfg: TrainConfig, device: torch.device, precision: RunPrecision, seconds: float
) -> None:
    """Keep a compiled run's measured compile time for `compile_pays`."""
    remember(COMPILE_FILE, compile_key(cfg, device, precision), seconds)


def memory_bytes(cfg: TrainConfig, vocab_size: int, micro_batch_size: int | None = None) -> int:
    """`presets.memory_estimate_bytes` for this run's shapes and optimizer; for a --model, the
    same sum over its own parameters (`model_memory_bytes`)."""
    micro, act_bytes = micro_batch_size or cfg.micro_batch_size, 2 if cfg.device == "cuda" else 4
    if cfg.model is not None:
        return model_memory_bytes(cfg, vocab_size, micro, act_bytes)
    # `resolve` sets the GPT's shape whenever there is no --model
    assert cfg.d_model is not None and cfg.n_layers is not None
    assert cfg.n_heads is not None and cfg.head_dim is not None
    preset = dataclasses.replace(
        get_preset(cfg.preset),
        d_model=cfg.d_model,
        n_layers=cfg.n_layers,
        n_heads=cfg.n_heads,
        head_dim=cfg.head_dim,
        seq_len=cfg.seq_len,
        batch_size=cfg.batch_size,
        micro_batch_size=micro,
    )
    return memory_estimate_bytes(preset, cfg.optimizer, vocab_size, act_bytes=act_bytes)


def weights_floor_bytes(cfg: TrainConfig, vocab_size: int) -> int:
    """Less memory than the run needs, known at once: the built-in GPT's fp32 weights and
    gradients, from its shape (a --model: 0, its size is known once it is built). Checked first,
    so that a shape far too big is refused before `memory_bytes` builds it on the meta device
    (minutes for 100,000 layers)."""
    if cfg.model is not None:
        return 0
    shape = {k: getattr(cfg, k) for k in ("d_model", "n_layers", "n_heads", "head_dim")}
    return 8 * gpt_param_count(GPTConfig(vocab_size=vocab_size, **shape))


def model_memory_bytes(
    cfg: TrainConfig, vocab_size: int, micro_batch_size: int, act_bytes: int
) -> int:
    """Rough training memory of a --model, from its parameters (built on the meta device):
    fp32 weights and grads, the optimizer state of each block matrix (`matrix_state_floats`
    under this run's knobs) and two moments of every other tensor, and saved activations of
    about m + n per token for each (m, n) block matrix (its input and output) plus 3 vocab
    (logits, their fp32 copy, their gradient)."""
    model = build_model(cfg, vocab_size, "meta")
    knobs = None if cfg.optimizer == "adamw" else {k: getattr(cfg, k) for k in RUN_KNOBS}
    matrices = [flat_shape(s) for s in routed_shapes(model).values()]
    acts = micro_batch_size * cfg.seq_len * (sum(m + n for m, n in matrices) + 3 * vocab_size)
    return weights_and_state_bytes(model, knobs) + act_bytes * acts


def available_bytes(device: torch.device) -> int | None:
    """Free memory: the GPU's, or the machine's MemAvailable on Linux (None when unknown)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def fitting_micro_batch(cfg: TrainConfig, vocab_size: int, available: int) -> int | None:
    """The largest micro batch dividing the batch whose estimate fits `available`."""
    for micro in sorted(
        (d for d in range(1, cfg.batch_size + 1) if cfg.batch_size % d == 0), reverse=True
    ):
        if memory_bytes(cfg, vocab_size, micro) <= available:
            return micro
    return None


def estimate(
    cfg: TrainConfig, vocab_size: int, device: torch.device, steps: int | None = None
) -> Estimate:
    """The run's cost on `device`: measured when the probe is short, else from FLOPs."""
    flop_step, flop_micro = _flop_estimate(cfg, vocab_size, device)
    mem, avail = memory_bytes(cfg, vocab_size), available_bytes(device)
    if flop_micro <= PROBE_LIMIT_S and (avail is None or mem <= avail):
        step, method = _probe(cfg, vocab_size, device), "probe"
    else:
        step, method = flop_step, "flops"
    steps = trained_steps(cfg) if steps is None else steps
    return Estimate(step, steps, method, mem, avail, str(device), busy_share(device))


def duration(seconds: float) -> str:
    """'40 ms', '12 s', '3.1 min', '3.1 h', '2.5 days', '3.5 years'."""
    if not math.isfinite(seconds):
        return "forever"
    for limit, unit, scale in (
        (1, "ms", 1e-3),
        (120, "s", 1),
        (7200, "min", 60),
        (172800, "h", 3600),
        (86400 * 730, "days", 86400),
    ):
        if seconds < limit:
            value = seconds / scale
            return f"{value:.0f} {unit}" if unit in ("ms", "s") else f"{value:.1f} {unit}"
    return f"{seconds / (86400 * 365):.1f} years"


def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds', '1,200 steps': a count with its noun, plural unless it is one."""
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def describe(est: Estimate) -> str:
    """'about 3.1 h per step, 3.5 years for 10,000 steps on this cpu (from FLOPs)'."""
    return (
        f"about {duration(est.step_seconds)} per step, {duration(est.run_seconds)} for "
        f"{counted(est.steps, 'step')} on this "
        f"{est.device.split(':')[0].upper()} ({source(est)})"
    )


def source(est: Estimate, short: bool = False) -> str:
    """Where the estimate comes from, and a caution when other processes kept the CPU busy
    while it was measured (it then overstates what the run takes alone)."""
    how = "measured probe" if est.method == "probe" else "from FLOPs"
    if est.method != "probe" and not short:
        how += " at this device's matmul rate"
    return how + busy_note(est.busy)


def busy_note(busy: float | None) -> str:
    """'; other processes used 62% of the CPU meanwhile: ...' above BUSY_NOTE, else ''."""
    if busy is None or busy <= BUSY_NOTE:
        return ""
    return f"; other processes used {busy:.0%} of the CPU meanwhile: alone it is faster"


def warning(cfg: TrainConfig, est: Estimate, device: torch.device) -> str | None:
    """A one-line hint when a GPU preset is about to run on a CPU for more than an hour."""
    if device.type == "cpu" and cfg.preset not in MADE_FOR_CPU and est.run_seconds > 3600:
        return (
            f"preset {cfg.preset} is sized for GPUs; on this CPU it needs "
            f"{duration(est.run_seconds)}: use --preset small (minutes here) or a GPU"
        )
    return None
