"""summary.json: what a finished (or stopped) run reports: its outcome, its losses, the step-time
split and where that time was taken. Its shape is `RunSummary`, written by the trainer (a run
with budgets adds `budgets`, `branches`), and read back only through `read_summary`."""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Protocol, TypedDict

import torch

from mousse.optim.routing import Route

from .budget import Regime, non_embedding_count, regime
from .config import RunPrecision, TrainConfig
from .data import Dataset
from .fileio import read_json, shaped
from .machine import label, peak_memory
from .precision import peak_flops
from .steptimer import MEASURED_KEYS, StepTiming
from .usermodel import flops_per_token
from .world import World


class _Evaluated(TypedDict):
    step: int
    val_loss: float | None  # None: not finite (strict JSON writes NaN and inf as null)


class CurvePoint(_Evaluated, total=False):
    """One evaluation on a run's val loss curve (summary.json's and a run record's "curve");
    runs recorded before the trainer counted seconds and the standard error lack them."""

    seconds: float | None
    val_loss_se: float | None


class TrainerState(TypedDict):
    """A run's totals and outcome so far (`Trainer.state`), stored key by key in each of its
    checkpoints (`resume.CheckpointMeta`): a resume goes on from them, the summary reports them."""

    train_seconds: float
    eval_seconds: float
    checkpoint_seconds: float
    best_val_loss: float  # inf until an evaluation is finite
    final_val_loss: float | None  # None: not evaluated yet
    first_loss: float | None  # the first train loss, which divergence is measured against
    target_step: int | None  # None: target_loss not reached (or not set)
    target_seconds: float | None


class TimingContext(TypedDict, total=False):
    """Where a run's timings were taken: the ablation's invocation and --parallel share (none
    for a lone run), then the host, device and threads the trainer adds."""

    invocation: str
    parallel: int
    host: str
    device: str
    threads: int


class BudgetResult(TypedDict):
    """One budget's result in the summary of a run with budgets (`branches.budget_results`)."""

    budget: float
    steps: int
    tokens: int
    tokens_per_param: float
    status: str
    final_val_loss: float | None  # None unless that budget completed
    best_val_loss: float | None
    run_dir: str  # relative to the run's: "." for the trunk, else its branch's


class Throughput(TypedDict, total=False):
    """How close to the hardware a run was (`throughput`); summaries from before lack it."""

    precision: str  # `machine.label`
    compiled: bool
    model_flops_per_s: float | None
    peak_flops: float | None
    mfu: float | None


class _Outcome(TypedDict):
    status: str  # "completed" | "diverged" | "interrupted" | "failed"


class RunSummary(_Outcome, StepTiming, Throughput, total=False):
    """A run's summary.json (`run_summary`; `runner.failed_run` for a run that could not go on).
    Not total: summaries from before a key existed lack it, and a run that failed before it
    began training has only its outcome, losses and timings (all None)."""

    run_dir: str
    message: str | None  # why it diverged or failed, or what is left to train
    steps: int
    planned_steps: int
    final_val_loss: float | None
    val_loss_se: float | None
    split: str  # where validation came from (`Dataset.split`)
    best_val_loss: float | None
    target_loss: float | None
    target_step: int | None
    target_seconds: float | None
    train_seconds: float
    eval_seconds: float
    checkpoint_seconds: float
    n_params: int
    regime: Regime
    resumed_from: int | None
    curve: list[CurvePoint]
    world_size: int
    timing_context: TimingContext
    peak_mem_bytes: int | None
    peak_mem_source: str | None  # "allocator" or "rss"
    budgets: list[BudgetResult]  # a run with budgets only, ascending, the trunk's last


def read_summary(run_dir: Path) -> RunSummary | None:
    """The run's summary.json, or None while it has none or it is unreadable: not JSON, not
    UTF-8, not an object with a status, or a key of another type than `RunSummary` says."""
    try:
        summary = read_json(run_dir / "summary.json")
    except (OSError, ValueError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return summary if shaped(summary, RunSummary) else None


class Run(Protocol):
    """What a summary reads of a run (a `Trainer`)."""

    cfg: TrainConfig
    state: TrainerState
    run_dir: Path
    step: int
    resumed_from: int | None
    curve: list[CurvePoint]
    device: torch.device
    precision: RunPrecision
    compiled: bool
    dist: World
    timing_context: TimingContext
    data: Dataset
    routes: list[Route]


def run_summary(
    trainer: Run,
    status: str,
    message: str | None,
    timing: StepTiming,
    n_params: int,
) -> RunSummary:
    """The summary of `trainer`'s run (a `Trainer`), with `timing` from `StepTimer.summary`."""
    cfg, state = trainer.cfg, trainer.state
    best = state["best_val_loss"]
    peak, source = peak_memory(trainer.device)
    # ignore: extra_checks asks whether throughput's ** may hold "budgets"; it cannot (its type
    # declares no such key), and `branches.with_budgets` adds it to a run with budgets
    return {
        "run_dir": str(trainer.run_dir),
        "status": status,
        "message": message,
        "steps": trainer.step,
        "planned_steps": cfg.steps,
        "final_val_loss": state["final_val_loss"],
        "val_loss_se": trainer.curve[-1].get("val_loss_se") if trainer.curve else None,
        "split": trainer.data.split,
        "best_val_loss": best if math.isfinite(best) else None,
        "target_loss": cfg.target_loss,
        "target_step": state["target_step"],
        "target_seconds": state["target_seconds"],
        **timing,
        "train_seconds": state["train_seconds"],
        "eval_seconds": state["eval_seconds"],
        "checkpoint_seconds": state["checkpoint_seconds"],
        "n_params": n_params,
        "regime": run_regime(trainer),
        "resumed_from": trainer.resumed_from,
        "curve": trainer.curve,
        **throughput(trainer, timing["tokens_per_s"], n_params),  # type: ignore[typeddict-item]
        "world_size": trainer.dist.world_size,
        "timing_context": {
            **trainer.timing_context,
            "host": platform.node(),
            "device": str(trainer.device),
            "threads": torch.get_num_threads(),
        },
        "peak_mem_bytes": peak,
        "peak_mem_source": source,
    }


def earlier_timing(timing: StepTiming, earlier: RunSummary) -> StepTiming:
    """`timing` with each step timing the `earlier` summary has taken from it instead: a resume
    that trained nothing keeps the timings of the session that trained the run's steps."""
    kept: StepTiming = {}
    for key in MEASURED_KEYS:
        if key in timing:
            kept[key] = earlier[key] if key in earlier else timing[key]
    return kept


def run_regime(trainer: Run) -> Regime:
    """The regime of the run as planned (`budget.regime`): the tokens of its steps per
    non-embedding parameter of its model and epochs over its train data."""
    cfg = trainer.cfg
    sizes = ((r.role, math.prod(r.shape)) for r in trainer.routes)
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    return regime(tokens, non_embedding_count(sizes), len(trainer.data.train))


def throughput(trainer: Run, tokens_per_s: float | None, n_params: int) -> Throughput:
    """How close to the hardware the run was: its precision, whether it compiled, model FLOP/s (`flops_per_token` a
    token) and MFU, their share of the matmul peak measured here at that precision (per GPU
    under torchrun). None without a measured step time."""
    peak = peak_flops(trainer.device, trainer.precision)
    flops = flops_per_token(trainer.cfg, n_params) * tokens_per_s if tokens_per_s else None
    return {
        "precision": label(trainer.precision),
        "compiled": trainer.compiled,
        "model_flops_per_s": flops,
        "peak_flops": peak,
        "mfu": flops / (peak * trainer.dist.world_size) if flops else None,
    }
