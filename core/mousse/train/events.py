"""What a training run reports as it goes. The trainer emits these; views and file writers
consume them (config -> engine -> events -> views/files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .fileio import JsonObject
from .summary import RunSummary


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    config: JsonObject
    info: JsonObject  # n_params, device, data description, routing, resumed_from


@dataclass(frozen=True)
class StepLogged:
    step: int
    steps: int
    train_loss: float
    lr: float
    step_ms: float
    fwd_bwd_ms: float
    opt_ms: float
    tokens_per_s: float
    train_seconds: float
    eta_seconds: float
    fisher_ms: float = 0.0  # part of fwd_bwd_ms: TNT's sampled-label backward
    # the matrix optimizer's read-outs over its matrices (`optim_hooks.optimizer_telemetry`); {} for AdamW
    telemetry: dict[str, float] = field(default_factory=dict)

    def record(self) -> JsonObject:
        return {k: v for k, v in self.__dict__.items() if k != "steps"}


@dataclass(frozen=True)
class MicroBatchDone:
    """Progress inside a long optimizer step (only emitted once a step runs for seconds)."""

    step: int
    done: int
    total: int
    seconds: float  # since the step started

    @property
    def eta_seconds(self) -> float:
        return self.seconds / self.done * (self.total - self.done)


@dataclass(frozen=True)
class EvalDone:
    step: int
    val_loss: float
    best_val_loss: float
    train_seconds: float
    eval_seconds: float


@dataclass(frozen=True)
class CheckpointSaved:
    step: int
    path: Path
    seconds: float


@dataclass(frozen=True)
class Notice:
    """Something the user should know that does not stop the run (e.g. a damaged checkpoint
    skipped for the one before it)."""

    text: str


@dataclass(frozen=True)
class RunFinished:
    summary: RunSummary


Event = RunStarted | StepLogged | MicroBatchDone | EvalDone | CheckpointSaved | Notice | RunFinished
