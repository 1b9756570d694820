"""Run configuration: one typed dataclass, resolved once (preset < TOML file < flags) and validated
at the edge. Everything downstream trusts it."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

from . import tomlio

OPTIMIZERS = ("mousse", "muon", "adamw")
SCALAR_OPTIMIZERS = ("adamw", "lion")
DEVICES = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """Bad user configuration; the message names the problem and the fix."""


@dataclass
class TrainConfig:
    """Everything one training run needs. `None` means "the preset's value" (see `resolve`)."""

    preset: str = "tiny"
    # model shape (preset's unless overridden)
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    head_dim: int | None = None
    seq_len: int | None = None
    # data
    data: str = "builtin"
    val_data: str | None = None
    # budget
    steps: int | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    # optimizers: block matrices get `optimizer`, everything else `scalar_optimizer`
    optimizer: str = "mousse"
    lr: float | None = None
    scalar_optimizer: str = "adamw"
    scalar_lr: float | None = None
    warmup_frac: float | None = None
    min_lr_frac: float = 0.0
    momentum: float = 0.95
    nesterov: bool | None = None
    weight_decay: float = 0.01
    # Mousse knobs (spec section 2)
    alpha: float = 0.125
    sides: str = "both"
    trace_norm: bool = True
    precond_freq: int = 10
    precond_beta: float = 0.95
    eps: float = 1e-5
    graft: bool = True
    bias_correction: bool = True
    refresh: str = "eigh"
    ns: str = "you5"
    ns_steps: int = 5
    lr_scale: str = "spectral"
    # evaluation
    eval_every: int | None = None
    eval_tokens: int | None = None
    target_loss: float | None = None
    # runtime
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    log_every: int = 10
    checkpoint_every: int | None = None
    keep_checkpoints: int = 2
    divergence_factor: float = 3.0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES: dict[str, type] = {}
for _f in fields(TrainConfig):
    _t = typing.get_type_hints(TrainConfig)[_f.name]
    _args = [a for a in typing.get_args(_t) if a is not type(None)]
    FIELD_TYPES[_f.name] = _args[0] if isinstance(_t, types.UnionType) else _t


def closest(name: str, choices) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


def coerce(key: str, value):
    """Convert a flag string or TOML value to the field's type; ConfigError names the key."""
    if key not in FIELD_TYPES:
        raise ConfigError(f"unknown setting '{key}'{closest(key, FIELD_TYPES)}")
    kind = FIELD_TYPES[key]
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "on", "yes"):
                return True
            if text in ("0", "false", "off", "no"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value) if not isinstance(value, str) else int(value.strip())
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        return str(value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"bad value for '{key}': {value!r} is not {'on/off' if kind is bool else 'a ' + kind.__name__}"
        ) from None


def read_toml(path: str | Path) -> dict:
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return tomlio.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomlio.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None


def load_config_file(path: str | Path) -> dict:
    """Settings from a run TOML (flat keys, or under a [train] table), type-checked."""
    raw = read_toml(path)
    if isinstance(raw.get("train"), dict):
        outside = [key for key in raw if key != "train"]
        if outside:  # would be silently ignored otherwise
            raise ConfigError(f"{path}: '{outside[0]}' is outside the [train] table; put every "
                              "setting under [train], or use no table at all")
        raw = raw["train"]
    return {key: coerce(key, value) for key, value in raw.items()}


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _choice(key: str, value, allowed) -> None:
    _require(value in allowed, f"bad value for '{key}': {value!r}; choose one of {', '.join(allowed)}")


def resolve(overrides: dict) -> TrainConfig:
    """Build a validated config with every preset-derived field filled in.

    `overrides` holds file settings updated by flags (flags win); unset fields come from the preset.
    """
    from .presets import get_preset

    values = {k: coerce(k, v) for k, v in overrides.items() if v is not None}
    cfg = TrainConfig(**values)
    try:
        preset = get_preset(cfg.preset)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    for name in ("d_model", "n_layers", "n_heads", "head_dim", "seq_len", "steps", "batch_size",
                 "micro_batch_size", "warmup_frac", "eval_every", "eval_tokens"):
        if getattr(cfg, name) is None:
            setattr(cfg, name, getattr(preset, name))
    if cfg.lr is None:
        cfg.lr = preset.adamw_lr if cfg.optimizer == "adamw" else preset.lr
    if cfg.scalar_lr is None:
        cfg.scalar_lr = preset.adamw_lr if cfg.optimizer == "adamw" else preset.scalar_lr
    if cfg.nesterov is None:
        cfg.nesterov = cfg.optimizer == "muon"
    if cfg.checkpoint_every is None:
        cfg.checkpoint_every = cfg.steps
    cfg.micro_batch_size = min(cfg.micro_batch_size, cfg.batch_size)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """One ConfigError for the first inconsistent setting, naming it and what is allowed."""
    from .optim import LR_SCALES as lr_scales, SIDES as sides  # the engine's own choices
    from .orthogonalize import ORTHOGONALIZERS as orthogonalizers
    from .precondition import REFRESHES as refreshes

    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("scalar_optimizer", cfg.scalar_optimizer, SCALAR_OPTIMIZERS)
    _choice("sides", cfg.sides, sides)
    _choice("refresh", cfg.refresh, refreshes)
    _choice("ns", cfg.ns, orthogonalizers)
    _choice("lr_scale", cfg.lr_scale, lr_scales)
    _choice("device", cfg.device, DEVICES)
    for key in ("d_model", "n_layers", "n_heads", "head_dim", "seq_len", "steps", "batch_size",
                "micro_batch_size", "precond_freq", "ns_steps", "eval_every", "eval_tokens",
                "log_every", "checkpoint_every", "keep_checkpoints"):
        _require(getattr(cfg, key) >= 1, f"bad value for '{key}': {getattr(cfg, key)}; must be >= 1")
    _require(cfg.batch_size % cfg.micro_batch_size == 0,
             f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
             f"{cfg.micro_batch_size}; pick sizes that divide")
    for key in ("lr", "scalar_lr", "weight_decay", "alpha"):
        value = getattr(cfg, key)
        _require(math.isfinite(value) and value >= 0, f"bad value for '{key}': {value}; must be >= 0")
    for key in ("momentum", "precond_beta"):
        value = getattr(cfg, key)
        _require(0 <= value < 1, f"bad value for '{key}': {value}; must be in [0, 1)")
    for key in ("warmup_frac", "min_lr_frac"):
        value = getattr(cfg, key)
        _require(0 <= value <= 1, f"bad value for '{key}': {value}; must be in [0, 1]")
    _require(cfg.eps > 0 and math.isfinite(cfg.eps), f"bad value for 'eps': {cfg.eps}; must be > 0")
    _require(cfg.divergence_factor > 1, "bad value for 'divergence_factor': must be > 1")
