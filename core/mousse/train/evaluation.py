"""The validation pass: mean loss over the validation windows and its standard error, on the
optimizer's iterate average where it keeps one, with ranks taking turns and summing in batch
order (the same numbers on any world size); and when a run evaluates (`eval_due`)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mousse.optim.routing import CombinedOptimizer

from .config import RunPrecision, TrainConfig
from .data import Dataset, check_tokens, val_batches
from .precision import autocast
from .schedule import cooldown_length
from .world import World

# The last part of a run is evaluated DENSE_DIVISOR times as often as eval_every: its last
# DENSE_FRACTION of the steps, or under wsd its cooldown when that is longer.
DENSE_FRACTION = 0.25
DENSE_DIVISOR = 4

# The model's forward with targets, (idx, targets) -> (logits, loss): the model itself, or it
# under torch.compile.
Forward = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def eval_due(step: int, cfg: TrainConfig) -> bool:
    """Whether a run evaluates once optimizer step `step` is done (0: before the first step):
    at 0 and at its last step, every eval_every steps, and over its dense part (`dense_start`)
    every eval_every / DENSE_DIVISOR steps (at least every step). A pure function of the
    config, so a resumed run evaluates where the uninterrupted one does."""
    if step in (0, cfg.steps) or step % cfg.eval_every == 0:
        return True
    return step > dense_start(cfg) and step % max(1, cfg.eval_every // DENSE_DIVISOR) == 0


def dense_start(cfg: TrainConfig) -> int:
    """The step after which a run is evaluated densely: before its last DENSE_FRACTION of the
    steps, or under wsd its cooldown when that is longer."""
    dense = math.ceil(DENSE_FRACTION * cfg.steps)
    if cfg.schedule == "wsd":
        dense = max(dense, cooldown_length(cfg.steps, cfg.cooldown))
    return cfg.steps - dense


@dataclass(frozen=True)
class Validation:
    """An evaluation: the mean loss over the validation windows (each a row of a batch) and the
    standard error of that mean over the windows, what a different sample of windows of the
    same text would move it by (None with a single window)."""

    loss: float
    se: float | None


def standard_error(mean: float, sum_squares: float, n: int) -> float | None:
    """The standard error of a mean of `n` values from their mean and their sum of squares:
    sqrt(sample variance / n), the variance (sum_squares - n mean^2) / (n - 1) floored at 0
    (rounding); None for fewer than two values or a non-finite mean."""
    if n < 2 or not math.isfinite(mean):
        return None
    variance = max(0.0, (sum_squares - n * mean * mean) / (n - 1))
    return math.sqrt(variance / n)


def validation_loss(
    forward: Forward,
    model: torch.nn.Module,
    data: Dataset,
    cfg: TrainConfig,
    precision: RunPrecision,
    dist: World,
    opt: CombinedOptimizer,
) -> Validation:
    """The validation loss of `model` (run through `forward`, which may be compiled) and its
    standard error over the windows, under the run's `precision`, on the world's device."""
    device = dist.device
    model.eval()
    # per batch: the loss and its windows' sum of squares (ranks take turns, then sums in order)
    losses: list[Tensor] = []
    squares: list[Tensor] = []
    windows = 0
    with dist.averaged_weights(opt):
        for i, (x, y) in enumerate(
            val_batches(data, cfg.eval_tokens, cfg.micro_batch_size, cfg.seq_len)
        ):
            check_tokens(y, data.vocab_size, data.val)
            windows += len(y)
            if not dist.eval_share(i):
                losses.append(torch.zeros((), device=device))
                squares.append(torch.zeros((), device=device))
                continue
            with autocast(device, precision):
                logits, loss = forward(x.to(device), y.to(device))
            losses.append(loss)
            squares.append(window_losses(logits, y.to(device)).square().sum())
    count = len(losses)
    mean = (dist.sum_in_order(losses) / max(count, 1)).item()
    model.train()
    return Validation(mean, standard_error(mean, dist.sum_in_order(squares).item(), windows))


def window_losses(logits: Tensor, targets: Tensor) -> Tensor:
    """Each window's (row's) mean cross-entropy, as the model's loss computes it over all."""
    flat = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
    return flat.view(targets.shape).mean(dim=1)
