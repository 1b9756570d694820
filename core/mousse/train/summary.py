"""summary.json: what a finished (or stopped) run reports: its outcome, its losses, the step-time
split and where that time was taken."""

from __future__ import annotations

import math
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import torch

from mousse.optim.routing import Route

from .budget import non_embedding_count, regime
from .config import RunPrecision, TrainConfig
from .data import Dataset
from .fileio import JsonObject
from .machine import label, peak_memory
from .precision import peak_flops
from .usermodel import flops_per_token
from .world import World


class Run(Protocol):
    """What a summary reads of a run (a `Trainer`)."""

    cfg: TrainConfig
    state: JsonObject
    run_dir: Path
    step: int
    resumed_from: int | None
    curve: list[JsonObject]
    device: torch.device
    precision: RunPrecision
    compiled: bool
    dist: World
    timing_context: JsonObject
    data: Dataset
    routes: list[Route]


def run_summary(
    trainer: Run,
    status: str,
    message: str | None,
    timing: Mapping[str, float | None],
    n_params: int,
) -> JsonObject:
    """The summary of `trainer`'s run (a `Trainer`), with `timing` from `StepTimer.summary`."""
    cfg, state = trainer.cfg, trainer.state
    best = state["best_val_loss"]
    summary: JsonObject = {
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
        **throughput(trainer, timing["tokens_per_s"], n_params),
        "world_size": trainer.dist.world_size,
        "timing_context": {
            **trainer.timing_context,
            "host": platform.node(),
            "device": str(trainer.device),
            "threads": torch.get_num_threads(),
        },
    }
    summary["peak_mem_bytes"], summary["peak_mem_source"] = peak_memory(trainer.device)
    return summary


def run_regime(trainer: Run) -> JsonObject:
    """The regime of the run as planned (`budget.regime`): the tokens of its steps per
    non-embedding parameter of its model and epochs over its train data."""
    cfg = trainer.cfg
    sizes = ((r.role, math.prod(r.shape)) for r in trainer.routes)
    tokens = cfg.steps * cfg.batch_size * cfg.seq_len
    return regime(tokens, non_embedding_count(sizes), len(trainer.data.train))


def throughput(trainer: Run, tokens_per_s: float | None, n_params: int) -> JsonObject:
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
