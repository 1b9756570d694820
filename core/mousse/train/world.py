"""The trainer's view of the job it is part of. `World` is a single process: every hook is the
plain single-process action. `mousse.distributed.rank.Dist` overrides the hooks with collectives for one
rank of a torchrun job; the trainer calls the same hooks at the same points either way, so one
process and N ranks run one training loop."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import torch
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer

from .checkpoint import Loaded, SaveCheckpoint, save_checkpoint
from .config import TrainConfig
from .optstate import load_optimizer_state, optimizer_state_by_name, unflatten_optimizer

T = TypeVar("T")


class World:
    """A world of one process."""

    rank, world_size, is_main, active = 0, 1, True, False

    def __init__(self, device: torch.device | None = None):
        self.device = device or torch.device("cpu")
        self.save_checkpoint: SaveCheckpoint = save_checkpoint  # how this world writes one

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rank={self.rank}, world_size={self.world_size}, device={self.device})"

    def from_rank0(self, obj: T) -> T:
        """Rank 0's value of a picklable object."""
        return obj

    def agreed_stop(self, local: threading.Event) -> threading.Event:
        """The stop flag every rank sees set on the same step."""
        return local

    def prepare(self, model: torch.nn.Module, cfg: TrainConfig) -> set[str] | None:
        """The parameter names this process's matrix optimizer gets (None: all of them)."""
        return None

    def batch_rows(
        self, batch_size: int, micro_batch_size: int
    ) -> tuple[list[tuple[int, slice]], int]:
        """This process's micro batches as (index among the global batch's micro batches, row
        slice of the global batch), and the global batch's number of micro batches."""
        return (
            [
                (i // micro_batch_size, slice(i, i + micro_batch_size))
                for i in range(0, batch_size, micro_batch_size)
            ],
            batch_size // micro_batch_size,
        )

    def reduce_gradients(self, loss: Tensor, step: int) -> Tensor:
        """The step's gradients summed over the job; returns the global mean loss."""
        return loss

    def optimizer_step(self, opt: CombinedOptimizer) -> None:
        opt.step()

    def fisher_params(self, opt: CombinedOptimizer) -> list[Tensor]:
        """The parameters whose sampled-label gradients the coming step needs (TNT)."""
        return opt.fisher_params() if hasattr(opt, "fisher_params") else []

    def set_fisher_grads(self, opt: CombinedOptimizer, grads: dict[Tensor, Tensor]) -> None:
        opt.set_fisher_grads(grads)

    @contextlib.contextmanager
    def averaged_weights(self, opt: CombinedOptimizer) -> Iterator[None]:
        """The optimizer's iterate average swapped in for evaluation (SPlus), if it keeps one."""
        swap = getattr(opt, "averaged_weights", None)
        with swap() if swap is not None else contextlib.nullcontext():
            yield

    def eval_share(self, index: int) -> bool:
        """Whether validation batch `index` is this process's to compute."""
        return True

    def sum_in_order(self, losses: list[Tensor]) -> Tensor:
        """The sum of per-batch losses, added in batch order."""
        total = torch.zeros((), device=self.device)
        for value in losses:
            total += value.float()
        return total

    def load_optimizer(self, opt: CombinedOptimizer, ckpt: Path, loaded: Loaded) -> None:
        """Restore `opt` from a checkpoint written by any world size."""
        if "optimizer" in loaded:
            state = unflatten_optimizer(opt, loaded["optimizer"], loaded["optimizer_meta"])
        else:
            state = optimizer_state_by_name(opt, Path(ckpt))
        load_optimizer_state(opt, state, Path(ckpt))
