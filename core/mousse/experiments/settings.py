"""Run settings by name, typed: what an ablation's base, sweeps and runs hold, and what it saves
in ablation.toml. A dict, not `config.Overrides`, because the order the settings were given in is
kept (in ablation.toml and the run records) and they merge by name (`ablation.run_settings`); its
fields are `TrainConfig`'s, generated from it (`python scripts/typed_fields.py`), each with its
value's type (None is never one: a setting not given is absent)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypedDict, cast

from mousse.optim import knobs
from mousse.optim.routing import ScalarOptimizer
from mousse.train.config import CompileMode, Device, GatherDtype, NsDtype, Precision, TrainConfig
from mousse.train.data import Split
from mousse.train.schedule import Schedule

# One setting's value, as `config.coerce` types it.
Value = bool | int | float | str
# setting -> the values an ablation sweeps it over (`inputs.typed_sweeps`), in TrainConfig order
Sweeps = dict[str, list[Value]]


class Settings(TypedDict, total=False):
    """Run settings by name, each as typed as `TrainConfig`'s field of that name."""

    # generated from TrainConfig by `python scripts/typed_fields.py`; do not edit
    preset: str
    model: str
    model_config: str
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    seq_len: int
    data: str
    val_data: str
    split: Split
    steps: int
    budget: float
    budgets: str
    batch_size: int
    micro_batch_size: int
    optimizer: str
    lr: float
    scalar_optimizer: ScalarOptimizer
    scalar_lr: float
    schedule: Schedule
    warmup_frac: float
    warmup_steps: int
    cooldown: float
    min_lr_frac: float
    momentum: float
    momentum_style: knobs.MomentumStyle
    weight_decay: float
    weight_decay_style: knobs.WeightDecayStyle
    alpha: float
    post_alpha: float
    sides: knobs.Sides
    factor_norm: knobs.FactorNorm
    precond_freq: int
    refresh_schedule: knobs.RefreshSchedule
    refresh_delay: int
    refresh_device: knobs.RefreshDevice
    precond_beta: float
    stat_freq: int
    refresh_warmup: int
    precond_start: int
    eps: float
    eig_floor: knobs.EigFloor
    graft: knobs.Graft
    bias_correction: bool
    refresh: knobs.Refresh
    refresh_after_update: bool
    skip_first_step: bool
    orthogonalizer: knobs.Orthogonalizer
    ns: knobs.NsSchedule
    ns_steps: int
    beta2: float
    adam_eps: float
    lr_scale: knobs.LrScale
    average_rate: float
    fisher: knobs.Fisher
    eval_every: int
    eval_tokens: int
    target_loss: float
    seed: int
    device: Device
    precision: Precision
    compile: CompileMode
    log_every: int
    checkpoint_every: int
    keep_checkpoints: int
    divergence_factor: float
    gather_dtype: GatherDtype
    ns_dtype: NsDtype
    log: str
    # /generated


def settings_lines() -> list[str]:
    """Settings's lines: each TrainConfig field, typed as there without None."""
    return [
        f"{name}: {hint.removesuffix(' | None')}"
        for name, hint in TrainConfig.__annotations__.items()
    ]


def settings_of(pairs: Iterable[tuple[str, object]]) -> Settings:
    """Settings from (name, value) pairs already checked (`inputs.typed_settings`, a plan's own
    settings, a tuned knob's values): a TypedDict has no typed way to take a name known only
    when the code runs, so the one unchecked step from pairs to Settings is here."""
    return cast(Settings, dict(pairs))
