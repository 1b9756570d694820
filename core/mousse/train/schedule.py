"""The lr schedule: the factor of the peak lr at each optimizer step, one small pure function per
shape (steps count from 1; step `steps` is the last).

- `cosine` (every preset's default): linear warmup, then a cosine from the peak down to
  min_lr_frac at the last step.
- `wsd` (warmup-stable-decay; Hägele et al. 2024, arXiv 2405.18392): linear warmup, the peak lr,
  then over the last `cooldown` fraction of the steps a decay to min_lr_frac (0 unless set) at
  the last step: linear, or `1-sqrt` (1 - sqrt of the cooldown's progress, which Hägele et al.
  found to end lower: it falls fast at first, then lingers near the floor). A run whose stable
  phase is stopped early and cooled down gives a fully decayed loss at each budget, which is
  what compares across optimizers.

Warmup, under either, is `warmup_steps` when that is set (a count, whatever the budget), else the
`warmup_frac` of the steps (the presets' 0.1, and every config from before warmup_steps existed).
"""

from __future__ import annotations

import math
from typing import Literal

Schedule = Literal["cosine", "wsd"]
CooldownShape = Literal["linear", "1-sqrt"]  # a wsd cooldown's decay


def warmup_length(steps: int, warmup_frac: float, warmup_steps: int | None) -> int:
    """The steps of linear warmup: `warmup_steps` when set, else `warmup_frac` of the steps
    (rounded, at least 1 when the fraction is above 0)."""
    if warmup_steps is not None:
        return warmup_steps
    return max(1, round(warmup_frac * steps)) if warmup_frac > 0 else 0


def cooldown_length(steps: int, cooldown: float) -> int:
    """The steps of a WSD run's linear decay: the last `cooldown` fraction of its steps
    (rounded, at least 1 when the fraction is above 0)."""
    return max(1, round(cooldown * steps)) if cooldown > 0 else 0


def cosine(step: int, steps: int, warmup: int, min_lr_frac: float) -> float:
    """Linear warmup over `warmup` steps, then a cosine down to `min_lr_frac` at `steps`."""
    if 0 < warmup and step <= warmup:
        return step / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def wsd(
    step: int,
    steps: int,
    warmup: int,
    cooldown: int,
    min_lr_frac: float,
    shape: CooldownShape = "linear",
) -> float:
    """Linear warmup over `warmup` steps, the peak until step `steps - cooldown`, then a decay of
    that `shape` reaching `min_lr_frac` at `steps`."""
    if 0 < warmup and step <= warmup:
        return step / warmup
    if step <= steps - cooldown:
        return 1.0
    left = (steps - step) / cooldown  # the linear decay's share of the peak
    if shape == "1-sqrt":
        left = 1 - math.sqrt(1 - left)
    return min_lr_frac + (1 - min_lr_frac) * left
