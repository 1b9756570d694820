"""The validation pass: mean loss over the validation tokens, on the optimizer's iterate average
where it keeps one, with ranks taking turns and summing in batch order (the same number on any
world size)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer

from .config import RunPrecision, TrainConfig
from .data import Dataset, check_tokens, val_batches
from .precision import autocast
from .world import World

# The model's forward with targets, (idx, targets) -> (logits, loss): the model itself, or it
# under torch.compile.
Forward = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def validation_loss(
    forward: Forward,
    model: torch.nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    precision: RunPrecision,
    dist: World,
    opt: CombinedOptimizer,
) -> float:
    """Mean validation loss of `model` (run through `forward`, which may be compiled), under
    the run's `precision`, on the world's device."""
    device = dist.device
    model.eval()
    losses = []  # per batch; ranks take turns, then the sums are made in batch order
    with dist.averaged_weights(opt):
        for i, (x, y) in enumerate(
            val_batches(data.val, cfg.eval_tokens, cfg.micro_batch_size, cfg.seq_len)
        ):
            check_tokens(y, data.vocab_size, data.val)
            if not dist.eval_share(i):
                losses.append(torch.zeros((), device=device))
                continue
            with autocast(device, precision):
                _, loss = forward(x.to(device), y.to(device))
            losses.append(loss)
    total, count = dist.sum_in_order(losses), len(losses)
    model.train()
    return (total / max(count, 1)).item()
