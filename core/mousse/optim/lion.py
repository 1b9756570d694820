"""Lion (Chen et al. 2023): sign of an interpolated momentum, the released Mousse recipe's optimizer
for embeddings and the output head."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, overload

import torch
from torch.optim import Optimizer

from .family import closure_loss

if TYPE_CHECKING:
    from torch.optim.optimizer import ParamsT


class Lion(Optimizer):
    """`u = sign(b1 m + (1 - b1) g)`, `w <- w (1 - lr wd) - lr u`, then `m <- b2 m + (1 - b2) g`."""

    def __init__(
        self,
        params: ParamsT,
        lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.95),
        weight_decay: float = 0.0,
    ) -> None:
        if not lr >= 0:
            raise ValueError(f"invalid lr={lr!r}: expected a number >= 0")
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise ValueError(f"invalid betas={betas!r}: expected two numbers in [0, 1)")
        if not weight_decay >= 0:
            raise ValueError(f"invalid weight_decay={weight_decay!r}: expected a number >= 0")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], float]) -> float: ...

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        loss = closure_loss(closure)
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            for p in params:
                if not self.state[p]:
                    self.state[p]["exp_avg"] = torch.zeros_like(p)
            moms = [self.state[p]["exp_avg"] for p in params]
            b1, b2 = group["betas"]
            updates = torch._foreach_lerp(moms, grads, 1 - b1)
            torch._foreach_sign_(updates)
            if group["weight_decay"]:
                torch._foreach_mul_(params, 1 - group["lr"] * group["weight_decay"])
            torch._foreach_add_(params, updates, alpha=-group["lr"])
            torch._foreach_lerp_(moms, grads, 1 - b2)
        return loss
