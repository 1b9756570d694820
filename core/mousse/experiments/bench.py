"""`mousse bench`: what Mousse costs next to Muon and AdamW, measured side by side in one process.

For a preset's block-matrix shapes (random parameters and gradients, no model): the optimizer
step, the factor refresh alone, Newton-Schulz throughput and optimizer state memory; on CUDA the
Triton kernels against torch per size (and the dispatch thresholds that follow); optionally
full training steps through the Trainer. Returns plain data; the CLI renders it.

Optimizer steps are timed over cycles of CYCLE consecutive steps (median over repeats, divided
by CYCLE): a refresh every 10 steps is then amortized exactly, one refresh per cycle. Repeats
are interleaved across optimizers, so load from other processes hits every row alike.
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict, cast

import torch

from mousse.optim import kernels
from mousse.optim import precondition as pc
from mousse.optim.family import KroneckerOptimizer
from mousse.optim.orthogonalize import orthogonalize
from mousse.optim.recipes import SOAP, TNT, Mousse, Muon, Shampoo, SpecGD, SPlus
from mousse.optim.refresher import run_refresh
from mousse.optim.routing import routed_shapes
from mousse.optim.step import Refresh, compute_refresh, refresh_due
from mousse.train.config import (
    DEVICES,
    PRECISIONS,
    ConfigError,
    Precision,
    RunPrecision,
    TrainConfig,
    check_choice,
    resolve,
)
from mousse.train.events import Event
from mousse.train.machine import device_name, label, pick_device
from mousse.train.precision import PRECISION_DTYPES, peak_flops, resolve_precision
from mousse.train.presets import get_preset
from mousse.train.usermodel import build_model

from .kernelbench import KernelBench, bench_kernels
from .stopwatch import median_ms, timed_ms

CYCLE = 10
LR = 0.02
WARMUP_STEPS = 2  # state allocation and the step-1 eigh refresh stay out of the timings
# name -> optimizer over a list of matrices and a Newton-Schulz dtype (the run's precision; None:
# the engine's default); every row uses its optimizer's own defaults otherwise
# A matrix optimizer over its parameters and a Newton-Schulz dtype, and one built, stepped by the
# bench: (its parameters, it, the steps taken so far).
MakeOptimizer = Callable[[list[torch.nn.Parameter], torch.dtype | None], torch.optim.Optimizer]
BenchRun = tuple[list[torch.nn.Parameter], torch.optim.Optimizer, list[int]]
Shapes = dict[tuple[int, ...], int]  # {(out, in): count}
ByShape = dict[tuple[int, ...], dict[str, float]]  # a measurement's values per matrix shape
BENCH_ROWS: dict[str, MakeOptimizer] = {
    "adamw": lambda ps, ns: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01),
    "torch_muon": lambda ps, ns: torch.optim.Muon(ps, lr=LR),
    "muon": lambda ps, ns: Muon(ps, ns_dtype=ns, lr=LR),
    "muon_bf16": lambda ps, ns: Muon(ps, lr=LR, ns_dtype=torch.bfloat16),  # torch.optim.Muon's
    "mousse_both_f1": lambda ps, ns: Mousse(ps, ns_dtype=ns, lr=LR, sides="both", precond_freq=1),
    "mousse_both_f10": lambda ps, ns: Mousse(ps, ns_dtype=ns, lr=LR, sides="both", precond_freq=10),
    "mousse_left_f1": lambda ps, ns: Mousse(ps, ns_dtype=ns, lr=LR, sides="left", precond_freq=1),
    "mousse_left_f10": lambda ps, ns: Mousse(ps, ns_dtype=ns, lr=LR, sides="left", precond_freq=10),
    "mousse_both_f10_qr": lambda ps, ns: Mousse(
        ps, ns_dtype=ns, lr=LR, sides="both", precond_freq=10, refresh="qr"
    ),
    "mousse_both_f10_root": lambda ps, ns: Mousse(
        ps, ns_dtype=ns, lr=LR, precond_freq=10, refresh="root"
    ),
    # the refresh off the step's critical path: spread over the steps, and a step late
    "mousse_both_f10_staggered": lambda ps, ns: Mousse(
        ps, ns_dtype=ns, lr=LR, precond_freq=10, refresh_schedule="staggered"
    ),
    "mousse_both_f10_staggered_delay1": lambda ps, ns: Mousse(
        ps, ns_dtype=ns, lr=LR, precond_freq=10, refresh_schedule="staggered", refresh_delay=1
    ),
    # the rest of the family, each refreshing every 10 steps (TNT on the empirical Fisher, so the
    # row times the optimizer alone; its sampled-label backward is a train-step cost)
    "shampoo_f10": lambda ps, ns: Shampoo(ps, ns_dtype=ns, lr=LR, precond_freq=10),
    "soap_f10": lambda ps, ns: SOAP(ps, ns_dtype=ns, lr=LR, precond_freq=10),
    "splus_f10": lambda ps, ns: SPlus(ps, ns_dtype=ns, lr=LR, precond_freq=10),
    "tnt_f10": lambda ps, ns: TNT(
        ps, ns_dtype=ns, lr=LR, precond_freq=10, refresh_warmup=0, fisher="empirical"
    ),
    "specgd": lambda ps, ns: SpecGD(ps, ns_dtype=ns, lr=LR),
}
# With compile=True: the same steps under torch.compile (`compiled=True`; compiled during warm-up)
COMPILED_ROWS: dict[str, MakeOptimizer] = {
    "muon_compiled": lambda ps, ns: Muon(ps, ns_dtype=ns, lr=LR, compiled=True),
    "mousse_both_f10_compiled": lambda ps, ns: Mousse(
        ps, ns_dtype=ns, lr=LR, sides="both", precond_freq=10, compiled=True
    ),
}
# The project's step-time targets: (row, reference row, limit on CPU, limit on CUDA) for row / reference.
# muon_bf16 is the like-for-like Muon row: torch.optim.Muon iterates in bf16 on every device.
TARGETS = {
    "mousse_f10_vs_muon": ("mousse_both_f10", "muon", 2.0, 1.5),
    "mousse_f10_offpath_vs_muon": ("mousse_both_f10_staggered_delay1", "muon", 2.0, 1.3),
    "muon_vs_torch_muon": ("muon", "torch_muon", 1.0, 1.0),
    "muon_bf16_vs_torch_muon": ("muon_bf16", "torch_muon", 1.0, 1.0),
}


def matrix_shapes(preset: str, model: Mapping[str, str] | None = None) -> Shapes:
    """{(out, in): count} of the block matrices (the ones Mousse / Muon train) of the preset's
    GPT, or with `model` ({"model": ..., "model_config": ...}, as `mousse train --model`) of
    that model at the preset's sequence length and vocabulary; weights stored (in, out) (GPT-2's
    Conv1D) as the (out, in) matrices the optimizer sees."""
    cfg = resolve({**(model or {}), "preset": preset})
    net = build_model(cfg, get_preset(preset).vocab_size, "meta")
    shapes: dict[tuple[int, ...], int] = {}
    for shape in routed_shapes(net).values():
        shapes[shape] = shapes.get(shape, 0) + 1
    return shapes


def _nbytes(opt: torch.optim.Optimizer) -> tuple[int, int]:
    """(state bytes, derived-cache bytes) of an optimizer, from its actual tensors. Mousse's
    per-parameter state entries are views that tile its stacked buffers, so their sizes add up."""
    state = sum(
        v.nbytes for st in opt.state.values() for v in st.values() if isinstance(v, torch.Tensor)
    )
    cached = opt.whitening_cache_bytes() if isinstance(opt, KroneckerOptimizer) else 0
    return state, cached


# Spikes: a staggered refresh's p99 step over its p50 (the project's target), on CPU and CUDA alike.
SPIKE_TARGET = ("mousse_both_f10_staggered", 1.2)


def bench_steps(
    shapes: Shapes,
    device: torch.device,
    repeats: int,
    compiled: bool = False,
    ns: torch.dtype | None = None,
) -> tuple[dict[str, float], dict[str, dict[str, float]], dict[str, tuple[int, int]], BenchRun]:
    """Per-step ms of every optimizer in BENCH_ROWS (and COMPILED_ROWS with `compiled`; amortized over
    CYCLE steps; Newton-Schulz in `ns`), the p50 and p99 of its single steps, state and cache bytes, and the
    Mousse-both optimizer whose factors the refresh timing reuses."""
    g = torch.Generator().manual_seed(0)
    master = [
        torch.randn(s, generator=g) / s[1] ** 0.5 for s, c in shapes.items() for _ in range(c)
    ]
    pool = [[torch.randn(p.shape, generator=g).to(device) for p in master] for _ in range(3)]
    runs: dict[str, BenchRun] = {}
    for name, make in {**BENCH_ROWS, **(COMPILED_ROWS if compiled else {})}.items():
        params = [torch.nn.Parameter(p.to(device, copy=True)) for p in master]
        runs[name] = (params, make(params, ns), [0])

    def one_step(
        params: list[torch.nn.Parameter], opt: torch.optim.Optimizer, counter: list[int]
    ) -> None:
        for p, grad in zip(params, pool[counter[0] % len(pool)], strict=True):
            p.grad = grad
        opt.step()
        counter[0] += 1

    for params, opt, counter in runs.values():
        for _ in range(WARMUP_STEPS):
            one_step(params, opt, counter)
    cycles: dict[str, list[float]] = {name: [] for name in runs}
    singles: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            ms = [timed_ms(functools.partial(one_step, *run), device) for _ in range(CYCLE)]
            cycles[name].append(sum(ms) / CYCLE)
            singles[name] += ms
    step_ms = {name: statistics.median(ts) for name, ts in cycles.items()}
    spread = {name: percentiles(ms) for name, ms in singles.items()}
    memory = {name: _nbytes(opt) for name, (_, opt, _) in runs.items()}
    return step_ms, spread, memory, runs["mousse_both_f10"]


def percentiles(ms: list[float]) -> dict[str, float]:
    """p50 and p99 (nearest rank) of step times."""
    ordered = sorted(ms)
    rank = max(0, math.ceil(0.99 * len(ordered)) - 1)
    return {"p50": statistics.median(ordered), "p99": ordered[rank]}


def bench_refresh(
    opt: torch.optim.Optimizer, params: list[torch.nn.Parameter], device: torch.device, repeats: int
) -> ByShape:
    """ms of one refresh of both factors of every matrix, per shape and method, from the factors
    and bases the optimizer has accumulated (the work of one refresh step, batched per shape);
    on CUDA also eigh on the host, copies included (`refresh_device="cpu"`)."""
    group = opt.param_groups[0]
    step = int(opt.state[params[0]]["step"])
    by_shape: dict[tuple[int, ...], list[dict[str, torch.Tensor]]] = {}
    for p in params:
        by_shape.setdefault(tuple(p.shape), []).append(opt.state[p])
    out: ByShape = {}
    for shape, states in by_shape.items():
        sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        for F, lam, Q, other in (("L", "lam_L", "Q_L", shape[1]), ("R", "lam_R", "Q_R", shape[0])):
            stack = {k: torch.stack([st[k] for st in states]) for k in (F, lam, Q)}
            factor = pc.normalized(
                stack[F],
                step,
                group["precond_beta"],
                group["bias_correction"],
                group["factor_norm"],
                other,
            )
            sides.append((factor, stack[lam], stack[Q]))
        methods = [(m, False) for m in pc.REFRESHES]
        if device.type == "cuda":
            methods.append(("eigh", True))
        out[shape] = {
            f"{method}_host" if host else method: median_ms(
                functools.partial(_refresh_sides, sides, group, method, host), device, repeats
            )
            for method, host in methods
        }
    return out


def _refresh_sides(
    sides: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    group: dict[str, Any],  # Any: a torch param group's values, each of its own type
    method: str,
    host: bool,
) -> list[Refresh]:
    """One refresh of every side's stacked factors by `method` (on the host with `host`): the
    work `bench_refresh` times, bound with functools.partial so that each timing refreshes its
    own shape's factors by its own method."""
    return [
        run_refresh(
            functools.partial(
                compute_refresh,
                method=method,
                eps=group["eps"],
                floor=group["eig_floor"],
                alpha=group["alpha"],
            ),
            side,
            host,
        )
        for side in sides
    ]


def ns_flops(m: int, n: int, steps: int = 5) -> int:
    """Newton-Schulz flops for one (m, n) matrix: per iteration X X^T, A A and B X on the short
    side s and long side l: 2 s^2 l + 2 s^3 + 2 s^2 l."""
    s, l = min(m, n), max(m, n)
    return steps * (4 * s * s * l + 2 * s**3)


def bench_ns(
    shapes: Shapes, device: torch.device, repeats: int, precision: RunPrecision
) -> ByShape:
    """Newton-Schulz ("you5", 5 iterations, at the run's precision) per shape, batched over the
    shape's matrices: ms, TFLOP/s and % of the matmul peak measured here at that precision."""
    dtype = PRECISION_DTYPES[precision]
    peak = peak_flops(device, precision)
    out: ByShape = {}
    for (m, n), count in shapes.items():
        X = torch.randn(count, m, n, device=device)
        ms = median_ms(functools.partial(orthogonalize, X, "you5", 5, dtype), device, repeats)
        tflops = count * ns_flops(m, n) / (ms / 1000) / 1e12
        out[(m, n)] = {
            "ns_ms": ms,
            "ns_tflops": tflops,
            "ns_pct_peak": 100 * tflops * 1e12 / peak,
        }
    return out


# --train's rows: name -> run settings over the preset's; Mousse as the preset gives it, and with
# its refresh off the step's critical path (staggered over the steps, used a step late)
TRAIN_VARIANTS: dict[str, dict[str, object]] = {
    "muon": {"optimizer": "muon"},
    "mousse": {"optimizer": "mousse"},
    "mousse_offpath": {
        "optimizer": "mousse",
        "refresh_schedule": "staggered",
        "refresh_delay": 1,
    },
}


class TrainRow(TypedDict):
    """One variant's training steps (`bench_train`): what every recorded row has."""

    step_ms_median: float
    step_ms_mean: float
    fwd_bwd_ms_median: float
    opt_ms_mean: float


class TrainStats(TrainRow, total=False):
    """One variant's training steps in full (`_timed_run`): outputs from before a key existed
    lack it."""

    step_ms_p50: float
    step_ms_p99: float
    refresh_step_ms_median: float | None  # None: no step with a refresh due (Muon)
    plain_step_ms_median: float | None
    peak_memory_bytes: int | None  # None off CUDA
    tokens_per_s: float | None  # the run's summary's
    model_flops_per_s: float | None
    peak_flops: float | None
    mfu: float | None


class TrainOverheads(TypedDict):
    """Mousse's train-step overhead over Muon in % (`train_overheads`)."""

    overhead_pct_median: float
    overhead_pct_mean: float


class TrainBench(TrainOverheads, total=False):
    """`bench_train`: `mousse bench --train`'s "train" (TRAIN_VARIANTS' rows and the overheads
    of the off-path Mousse); outputs from before a key existed lack it."""

    steps: int
    compiled: bool
    muon: TrainStats
    mousse: TrainStats
    mousse_offpath: TrainStats
    overhead_pct_median_offpath: float
    overhead_pct_mean_offpath: float


def bench_train(
    preset: str,
    device: str,
    steps: int,
    compiled: bool = False,
    model: Mapping[str, str] | None = None,
    precision: Precision = "auto",
) -> TrainBench:
    """Full training steps (Trainer, builtin data, temp run dir) for each of TRAIN_VARIANTS:
    step ms over `steps` steps after a first, untimed one (which compiles, with `compiled`:
    model and optimizer, as `mousse train --compile`); p50 and p99; steps on which a refresh is
    due (its schedule's phase 0) and the others apart; peak device memory on CUDA. With steps a
    multiple of precond_freq (10) the mean holds refreshes in their true proportion. Each row
    also has the run's tokens/s, model FLOP/s and MFU (its summary's)."""
    rows: dict[str, TrainStats] = {}
    for name, settings in TRAIN_VARIANTS.items():
        cfg = resolve(
            {
                **(model or {}),
                **settings,
                "preset": preset,
                "steps": steps + 1,
                "device": device,
                "log_every": 1,
                "eval_every": steps + 1,
                "eval_tokens": 1,
                "compile": "on" if compiled else "off",
                "precision": precision,
            }
        )
        rows[name] = _timed_run(cfg)
    muon, mousse, offpath = rows["muon"], rows["mousse"], rows["mousse_offpath"]
    overheads, offpath_overheads = train_overheads(muon, mousse), train_overheads(muon, offpath)
    return {
        "steps": steps,
        "compiled": compiled,
        "muon": muon,
        "mousse": mousse,
        "mousse_offpath": offpath,
        **overheads,
        "overhead_pct_median_offpath": offpath_overheads["overhead_pct_median"],
        "overhead_pct_mean_offpath": offpath_overheads["overhead_pct_mean"],
    }


def _timed_run(cfg: TrainConfig) -> TrainStats:
    """Train `cfg` in a temporary run dir; its step-time statistics and peak memory."""
    from mousse.train.events import StepLogged
    from mousse.train.trainer import Trainer

    cuda = cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    events: list[Event] = []
    with tempfile.TemporaryDirectory() as tmp:
        summary = Trainer(cfg, Path(tmp) / "run", on_event=events.append).run(argv=[])
    timed = [e for e in events if isinstance(e, StepLogged) and e.step > 1]
    # the engine's knobs are None for AdamW runs only, never one of TRAIN_VARIANTS
    assert cfg.precond_freq is not None and cfg.stat_freq is not None
    assert cfg.refresh_warmup is not None and cfg.refresh_schedule is not None
    due = [
        cfg.optimizer != "muon"
        and refresh_due(
            e.step,
            precond_freq=cfg.precond_freq,
            stat_freq=cfg.stat_freq,
            refresh_warmup=cfg.refresh_warmup,
            refresh_schedule="offset"
            if cfg.refresh_schedule == "staggered"
            else cfg.refresh_schedule,
        )
        for e in timed
    ]
    refresh = [e.step_ms for e, d in zip(timed, due, strict=True) if d]
    plain = [e.step_ms for e, d in zip(timed, due, strict=True) if not d]
    spread = percentiles([e.step_ms for e in timed])
    return {
        "step_ms_median": statistics.median(e.step_ms for e in timed),
        "step_ms_mean": statistics.fmean(e.step_ms for e in timed),
        "step_ms_p50": spread["p50"],
        "step_ms_p99": spread["p99"],
        "refresh_step_ms_median": statistics.median(refresh) if refresh else None,
        "plain_step_ms_median": statistics.median(plain) if plain else None,
        "fwd_bwd_ms_median": statistics.median(e.fwd_bwd_ms for e in timed),
        "opt_ms_mean": statistics.fmean(e.opt_ms for e in timed),
        "peak_memory_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "tokens_per_s": summary["tokens_per_s"],
        "model_flops_per_s": summary["model_flops_per_s"],
        "peak_flops": summary["peak_flops"],
        "mfu": summary["mfu"],
    }


def train_overheads(muon: TrainRow, mousse: TrainRow) -> TrainOverheads:
    """Mousse's train-step overhead over Muon in %, on the median step and on the mean step
    (refreshes included)."""
    return {
        "overhead_pct_median": 100 * (mousse["step_ms_median"] / muon["step_ms_median"] - 1),
        "overhead_pct_mean": 100 * (mousse["step_ms_mean"] / muon["step_ms_mean"] - 1),
    }


class BenchHead(TypedDict):
    """What every `mousse bench` output starts with: what was measured, where."""

    preset: str
    device: str
    device_name: str
    cpu_count: int | None  # None: not known (`os.cpu_count`)
    threads: int
    torch: str
    repeats: int


class ShapeRow(TypedDict, total=False):
    """One matrix shape's row (`_shape_rows`): its count, Newton-Schulz throughput, and one
    refresh_<method>_ms per refresh method measured (eigh_host on CUDA only; root since it
    was added)."""

    shape: list[int]
    count: int
    ns_ms: float
    ns_tflops: float
    ns_pct_peak: float | None  # None: no known peak on the device
    refresh_eigh_ms: float
    refresh_qr_ms: float
    refresh_root_ms: float
    refresh_eigh_host_ms: float


class Target(TypedDict):
    """One step-time target (`_targets`): a time ratio, its limit and whether it is met."""

    ratio: float
    limit: float
    met: bool


class BenchResult(BenchHead, total=False):
    """`run_bench`: what `mousse bench --json` prints (with `lean`, the head and "train"
    only); outputs from before a key existed lack it."""

    compiled: bool
    lean: bool
    precision: str  # `machine.label`
    cycle_steps: int
    step_ms: dict[str, float]  # bench row -> ms per step
    step_spread: dict[str, dict[str, float]]  # bench row -> `percentiles` of its single steps
    vs_muon: dict[str, float]
    state_bytes: dict[str, int]
    cache_bytes: dict[str, int]
    refresh_ms: dict[str, float]  # refresh method -> ms over every shape
    shapes: list[ShapeRow]
    targets: dict[str, Target]
    kernels: KernelBench | None  # None: off CUDA, or without triton
    train: TrainBench | None  # None: without --train


def run_bench(
    preset: str = "small",
    repeats: int = 5,
    device: str = "auto",
    train: bool = False,
    steps: int = 30,
    compiled: bool = False,
    model: Mapping[str, str] | None = None,
    lean: bool = False,
    precision: Precision = "auto",
) -> BenchResult:
    """Every measurement for `preset` (or for `model`, {"model": ..., "model_config": ...}, at
    the preset's sizes) on `device` at `precision` (Newton-Schulz in it, as in a run); see the
    module docstring. `lean`: the training steps only
    (what a short GPU loan can afford at 160m). Bad input is a ConfigError naming it."""
    shapes = _checked_shapes(preset, repeats, device, steps, model)
    check_choice("precision", precision, PRECISIONS)
    dev = pick_device(device)
    ran = resolve_precision(precision, dev)
    head: BenchResult = {
        "preset": preset,
        "device": str(dev),
        "device_name": device_name(dev),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "repeats": repeats,
        "compiled": compiled,
        "lean": lean,
        "precision": label(ran),
    }
    train_rows = functools.partial(bench_train, preset, device, steps, compiled, model, precision)
    if lean:
        return {**head, "train": train_rows()}
    step_ms, spread, memory, (params, mousse, _) = bench_steps(
        shapes, dev, repeats, compiled, PRECISION_DTYPES[ran]
    )
    refresh = bench_refresh(mousse, params, dev, repeats)
    ns = bench_ns(shapes, dev, repeats, ran)
    kernel = (
        bench_kernels(dev, repeats) if dev.type == "cuda" and kernels.triton_available() else None
    )
    methods = next(iter(refresh.values()))
    return {
        **head,
        "cycle_steps": CYCLE,
        "step_ms": step_ms,
        "step_spread": spread,
        "vs_muon": {name: ms / step_ms["muon"] for name, ms in step_ms.items()},
        "state_bytes": {name: m[0] for name, m in memory.items()},
        "cache_bytes": {name: m[1] for name, m in memory.items()},
        "refresh_ms": {method: sum(r[method] for r in refresh.values()) for method in methods},
        "shapes": _shape_rows(shapes, ns, refresh),
        "targets": _targets(step_ms, spread, kernel, dev.type == "cuda"),
        "kernels": kernel,
        "train": train_rows() if train else None,
    }


MAX_REPEATS = 10_000  # of --repeats and --steps: a median over more is no better (1e20: a typo)


def _checked_shapes(
    preset: str, repeats: int, device: str, steps: int, model: Mapping[str, str] | None
) -> Shapes:
    """The matrix shapes to bench, once every input is checked (a ConfigError naming the bad
    one), before anything is timed."""
    for name, value in (("repeats", repeats), ("steps", steps)):
        if not 1 <= value <= MAX_REPEATS:
            raise ConfigError(f"bad value for '{name}': {value}; must be in [1, {MAX_REPEATS:,}]")
    if device not in DEVICES:
        raise ConfigError(f"bad value for 'device': {device!r}; choose one of {', '.join(DEVICES)}")
    try:
        return matrix_shapes(preset, model)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _shape_rows(shapes: Shapes, ns: ByShape, refresh: ByShape) -> list[ShapeRow]:
    """Per matrix shape: its count, Newton-Schulz throughput and refresh ms per method."""
    return [
        cast(  # cast: the keys of `bench_ns` and of `bench_refresh`'s methods, which ShapeRow lists
            ShapeRow,
            {
                "shape": list(s),
                "count": c,
                **ns[s],
                **{f"refresh_{k}_ms": v for k, v in refresh[s].items()},
            },
        )
        for s, c in shapes.items()
    ]


def _targets(
    step_ms: dict[str, float],
    spread: dict[str, dict[str, float]],
    kernel: KernelBench | None,
    cuda: bool,
) -> dict[str, Target]:
    """The step-time targets (TARGETS; a staggered refresh's p99 step at most SPIKE_TARGET times
    its p50; with kernel timings the Gram kernel at least 1.3x faster than torch at 4096^2
    bf16), each as a time ratio, its limit and whether it is met."""
    targets: dict[str, Target] = {}
    for key, (row, ref, cpu_limit, cuda_limit) in TARGETS.items():
        limit = cuda_limit if cuda else cpu_limit
        ratio = step_ms[row] / step_ms[ref]
        targets[key] = {"ratio": ratio, "limit": limit, "met": ratio <= limit}
    row, limit = SPIKE_TARGET
    ratio = spread[row]["p99"] / spread[row]["p50"]
    targets["mousse_f10_staggered_p99_vs_p50"] = {
        "ratio": ratio,
        "limit": limit,
        "met": ratio <= limit,
    }
    if kernel:
        gram = next(r for r in kernel["rows"] if (r["op"], r["size"]) == ("gram", 4096))
        limit = round(1 / 1.3, 3)
        targets["gram_4096_vs_torch"] = {
            "ratio": 1 / gram["speedup"],
            "limit": limit,
            "met": 1 / gram["speedup"] <= limit,
        }
    return targets
