"""What a training run reports as it goes. The trainer emits these; views and file writers
consume them (config -> engine -> events -> views/files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

from mousse.optim.routing import Route

from .config import Settings
from .summary import RunSummary


class _Stepped(TypedDict):
    step: int


class MetricsRecord(_Stepped, total=False):
    """One line of a run's metrics.jsonl: a logged step (`StepLogged.record`), an evaluation
    (`Trainer._eval_and_record`: step, val_loss, val_loss_se, train_seconds) or a trunk's
    evaluation for its branches (`branches.side_eval`: branch_val_loss in place of val_loss).
    Not total: each kind has its own keys, and records from before a key existed lack it; a
    None is a value that was not finite (strict JSON writes NaN and inf as null)."""

    train_loss: float | None
    lr: float
    step_ms: float
    fwd_bwd_ms: float
    opt_ms: float
    tokens_per_s: float
    train_seconds: float
    eta_seconds: float
    fisher_ms: float
    telemetry: dict[str, float | None]
    val_loss: float | None
    val_loss_se: float | None
    branch_val_loss: float | None  # `branches.SIDE_EVAL`


class RunInfo(TypedDict):
    """What a starting run is made of (`Trainer._announce`)."""

    n_params: int
    device: str
    data: str  # `Dataset.describe`
    vocab_size: int
    routing: list[Route]
    resumed_from: int | None
    world_size: int


@dataclass(frozen=True)
class RunStarted:
    run_dir: Path
    config: Settings  # the resolved config's settings (`TrainConfig.settings`)
    info: RunInfo


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

    def record(self) -> MetricsRecord:
        """The step's metrics.jsonl line (all but the run's planned steps)."""
        return {
            "step": self.step,
            "train_loss": self.train_loss,
            "lr": self.lr,
            "step_ms": self.step_ms,
            "fwd_bwd_ms": self.fwd_bwd_ms,
            "opt_ms": self.opt_ms,
            "tokens_per_s": self.tokens_per_s,
            "train_seconds": self.train_seconds,
            "eta_seconds": self.eta_seconds,
            "fisher_ms": self.fisher_ms,
            "telemetry": dict(self.telemetry),
        }


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
