"""Run configuration: the settings a run is given (`Overrides`, from flags and files) and the
settings it runs with (`TrainConfig`), resolved once and validated at the edge. Everything
downstream trusts the `TrainConfig`.

Settings resolve, later winning: the matrix optimizer's class recipe
(`optim.OPTIMIZER_CLASSES[name].recipe`, its published defaults) < its LM training recipe
(`presets.TRAINING_RECIPES`) < the model preset's lr, momentum and momentum rule for that optimizer (`Preset.lrs`, `Preset.momenta`,
`Preset.momentum_styles`) < the `--config`
file < flags.

`TrainConfig` declares each setting once (its order is that of config.toml, sweeps and run
names); `Overrides`'s lines are generated from it (`python scripts/typed_fields.py`). The engine's
knobs among them follow `mousse.optim.knobs.TABLE` (names, order, types and allowed choices, as
its Literal aliases); tests/train/test_config_knobs.py checks that they do.
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import types
import typing
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar, cast

import torch

from mousse.optim import knobs
from mousse.optim.family import Knobs
from mousse.optim.knobs import RUN_KNOBS
from mousse.optim.routing import ScalarOptimizer

from . import compat, tomlio
from .budget import gpt_non_embedding_params, steps_for_budget
from .data import Split
from .model import GPTConfig, gpt_param_count
from .presets import OPTIMIZER_NAMES, Preset, get_preset, optimizer_knobs
from .schedule import CooldownShape, Schedule, cooldown_length, warmup_length

Device = Literal["auto", "cpu", "cuda"]
GatherDtype = Literal["fp32", "bf16"]  # what owners send in the all-gather under torchrun
NsDtype = Literal["auto", "fp32", "bf16", "fp16"]
# The forward's arithmetic: auto = bf16 autocast where matmuls are native in bf16 (train.precision)
Precision = Literal["auto", "fp32", "bf16"]
RunPrecision = Literal["fp32", "bf16"]  # what auto resolves to on a device
# torch.compile of the model and the matrix optimizer: auto = where it pays (estimate.compile_pays)
CompileMode = Literal["auto", "on", "off"]
SCALAR_OPTIMIZERS: tuple[str, ...] = typing.get_args(ScalarOptimizer)
DEVICES: tuple[str, ...] = typing.get_args(Device)
GATHER_DTYPES: tuple[str, ...] = typing.get_args(GatherDtype)
PRECISIONS: tuple[str, ...] = typing.get_args(Precision)
COMPILE_MODES: tuple[str, ...] = typing.get_args(CompileMode)
SCHEDULES: tuple[str, ...] = typing.get_args(Schedule)
COOLDOWN_SHAPES: tuple[str, ...] = typing.get_args(CooldownShape)
# settings of a WSD run's cooldown: refused for a cosine run, which has none
WSD_ONLY = ("cooldown", "cooldown_shape")
SPLITS: tuple[str, ...] = typing.get_args(Split)
# Newton-Schulz's working precision: auto = the run's precision (bf16 under bf16 autocast).
NS_DTYPES: dict[NsDtype, torch.dtype | None] = {
    "auto": None,
    "fp32": torch.float32,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}
# One setting's value, as a flag or a file gives it once converted (`coerce`).
Setting = bool | int | float | str
# Dashboards a run's scalars also go to (`--log`, train.dashboards); metrics.jsonl always gets them.
LOGGERS = ("tensorboard", "wandb")
# Settings that choose where runs are shown, not what they compute: never an ablation's knob
# (sweeps, tuning), a run's name or part of a plan's hash, and free to change on resume.
VIEW_SETTINGS = ("log",)
# The engine's knobs a run sets (`knobs.RUN_KNOBS`, docs/family.md) are each a TrainConfig
# field; AdamW uses only ADAMW_KNOBS of them, the others stay None for AdamW runs.


class ConfigError(ValueError):
    """Bad user configuration; the message names the problem and the fix."""


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    """Everything one training run needs, resolved (`resolve`) and validated: run settings and the
    engine's knobs. Frozen: derive a changed copy with `dataclasses.replace` (and validate it).

    None is a value only where it means something:
    - model, model_config, val_data, target_loss, log: not used (the built-in GPT, no separate
      validation data, no target, metrics.jsonl only);
    - d_model, n_layers, n_heads, head_dim: None with `model` (the user's model has its own shape);
    - the engine's knobs other than lr and weight_decay: None for AdamW runs, which use only
      ADAMW_KNOBS; post_alpha also None for "= alpha".
    Fields without a default come from the preset or the optimizer's recipe; `resolve` sets them.
    """

    preset: str = "tiny"
    # the user's own model instead of the built-in GPT (docs/models.md): MODULE:FUNCTION,
    # path/to/file.py:FUNCTION or hf:ARCH, and its keyword arguments as "k=v,k=v"
    model: str | None = None
    model_config: str | None = None
    # the built-in GPT's shape (None with `model`)
    d_model: int | None
    n_layers: int | None
    n_heads: int | None
    head_dim: int | None
    seq_len: int
    # data; split: how the built-in corpus holds out validation (train.data): whole files across
    # it, or its tail (every run recorded before files, `compat.recorded`); other data ignore it
    data: str = "builtin"
    val_data: str | None = None
    split: Split = "files"
    # budget: steps, or budget (a multiple of 20 tokens per non-embedding parameter) when steps
    # are not given (`steps_for_budget`); given both, steps win and budget is recorded as given
    steps: int
    budget: float | None = None
    # budgets: WSD cooldown branches (train.branches), ascending, comma-separated; the run
    # trains the largest (its steps and budget), each smaller one a branch cooled down from it
    budgets: str | None = None
    batch_size: int
    micro_batch_size: int
    # optimizers: block matrices get `optimizer`, everything else `scalar_optimizer`
    optimizer: str = "mousse"
    lr: float  # peak lr of the block-matrix optimizer (its first knob)
    scalar_optimizer: ScalarOptimizer = "adamw"
    scalar_lr: float
    # the lr's shape (train.schedule): cosine, or wsd (its last `cooldown` fraction of the steps
    # decayed to min_lr_frac, linear or 1-sqrt); warmup: warmup_steps when set, else warmup_frac
    schedule: Schedule = "cosine"
    warmup_frac: float
    warmup_steps: int | None = None
    cooldown: float = 0.2
    cooldown_shape: CooldownShape = "linear"
    min_lr_frac: float = 0.0
    # the engine's other knobs, in mousse.optim.knobs.TABLE's order (help: `mousse train --help`)
    momentum: float | None
    momentum_style: knobs.MomentumStyle | None
    weight_decay: float
    weight_decay_style: knobs.WeightDecayStyle | None
    alpha: float | None
    post_alpha: float | None  # None: = alpha
    sides: knobs.Sides | None
    factor_norm: knobs.FactorNorm | None
    precond_freq: int | None
    refresh_schedule: knobs.RefreshSchedule | None
    refresh_delay: int | None
    refresh_device: knobs.RefreshDevice | None
    precond_beta: float | None
    stat_freq: int | None
    refresh_warmup: int | None
    precond_start: int | None
    eps: float | None
    eig_floor: knobs.EigFloor | None
    graft: knobs.Graft | None
    bias_correction: bool | None
    refresh: knobs.Refresh | None
    refresh_after_update: bool | None
    skip_first_step: bool | None
    orthogonalizer: knobs.Orthogonalizer | None
    ns: knobs.NsSchedule | None
    ns_steps: int | None
    beta2: float | None
    adam_eps: float | None
    lr_scale: knobs.LrScale | None
    average_rate: float | None
    fisher: knobs.Fisher | None
    # evaluation
    eval_every: int
    eval_tokens: int
    target_loss: float | None = None
    # runtime
    seed: int = 0
    device: Device = "auto"
    precision: Precision = "auto"
    compile: CompileMode = "auto"
    log_every: int = 10
    checkpoint_every: int  # the preset's cadence, else the run's steps (at the end only)
    keep_checkpoints: int = 2
    divergence_factor: float = 3.0
    gather_dtype: GatherDtype = "fp32"  # torchrun: dtype of the owners' all-gathered matrices
    ns_dtype: NsDtype = "auto"  # Newton-Schulz precision (NS_DTYPES)
    log: str | None = None  # dashboards, comma-separated LOGGERS (None: metrics.jsonl only)

    def to_dict(self) -> dict[str, Setting | None]:
        """Every setting by name, in field order (config.toml, run records)."""
        return dataclasses.asdict(self)

    def settings(self) -> Settings:
        """The settings that are set (not None), by name, in field order (`RunStarted`)."""
        return settings_of((k, v) for k, v in self.to_dict().items() if v is not None)


@dataclass(frozen=True, kw_only=True)
class Overrides:
    """The settings a run is given (flags over the `--config` file), each None when not given:
    `resolve` fills those in from TrainConfig's defaults, the preset and the optimizer's recipe.
    One field per TrainConfig field, in its order, of the same type or None: its lines are
    generated from TrainConfig's."""

    # generated from TrainConfig by `python scripts/typed_fields.py`; do not edit
    preset: str | None = None
    model: str | None = None
    model_config: str | None = None
    d_model: int | None = None
    n_layers: int | None = None
    n_heads: int | None = None
    head_dim: int | None = None
    seq_len: int | None = None
    data: str | None = None
    val_data: str | None = None
    split: Split | None = None
    steps: int | None = None
    budget: float | None = None
    budgets: str | None = None
    batch_size: int | None = None
    micro_batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    scalar_optimizer: ScalarOptimizer | None = None
    scalar_lr: float | None = None
    schedule: Schedule | None = None
    warmup_frac: float | None = None
    warmup_steps: int | None = None
    cooldown: float | None = None
    cooldown_shape: CooldownShape | None = None
    min_lr_frac: float | None = None
    momentum: float | None = None
    momentum_style: knobs.MomentumStyle | None = None
    weight_decay: float | None = None
    weight_decay_style: knobs.WeightDecayStyle | None = None
    alpha: float | None = None
    post_alpha: float | None = None
    sides: knobs.Sides | None = None
    factor_norm: knobs.FactorNorm | None = None
    precond_freq: int | None = None
    refresh_schedule: knobs.RefreshSchedule | None = None
    refresh_delay: int | None = None
    refresh_device: knobs.RefreshDevice | None = None
    precond_beta: float | None = None
    stat_freq: int | None = None
    refresh_warmup: int | None = None
    precond_start: int | None = None
    eps: float | None = None
    eig_floor: knobs.EigFloor | None = None
    graft: knobs.Graft | None = None
    bias_correction: bool | None = None
    refresh: knobs.Refresh | None = None
    refresh_after_update: bool | None = None
    skip_first_step: bool | None = None
    orthogonalizer: knobs.Orthogonalizer | None = None
    ns: knobs.NsSchedule | None = None
    ns_steps: int | None = None
    beta2: float | None = None
    adam_eps: float | None = None
    lr_scale: knobs.LrScale | None = None
    average_rate: float | None = None
    fisher: knobs.Fisher | None = None
    eval_every: int | None = None
    eval_tokens: int | None = None
    target_loss: float | None = None
    seed: int | None = None
    device: Device | None = None
    precision: Precision | None = None
    compile: CompileMode | None = None
    log_every: int | None = None
    checkpoint_every: int | None = None
    keep_checkpoints: int | None = None
    divergence_factor: float | None = None
    gather_dtype: GatherDtype | None = None
    ns_dtype: NsDtype | None = None
    log: str | None = None
    # /generated

    @classmethod
    def from_dict(cls, settings: Mapping[str, object]) -> Overrides:
        """Settings by name (flag strings or TOML values; old names upgraded, `compat`), each
        converted to its field's type; None values count as not given. A ConfigError names an
        unknown setting or a value of the wrong type."""
        given = compat.upgrade(dict(settings))
        return cls(**{k: coerce(k, v) for k, v in given.items() if v is not None})

    def to_dict(self) -> Settings:
        """The settings given (not None), by name, in field order."""
        return settings_of(
            (f.name, v) for f in fields(self) if (v := getattr(self, f.name)) is not None
        )

    def updated(self, later: Overrides) -> Overrides:
        """These settings with `later`'s given ones winning (a file's under the flags)."""
        return dataclasses.replace(self, **later.to_dict())


def overrides_lines() -> list[str]:
    """Overrides's lines: each TrainConfig field, as written there, or None, default None."""
    return [
        f"{name}: {hint if hint.endswith('| None') else hint + ' | None'} = None"
        for name, hint in TrainConfig.__annotations__.items()
    ]


class Settings(TypedDict, total=False):
    """Run settings by name, each as typed as `TrainConfig`'s field of that name, none required
    (None is never a value: a setting not given is absent): the settings given
    (`Overrides.to_dict`), and an ablation's base, sweeps and runs. Its lines are generated from
    TrainConfig's."""

    # generated from TrainConfig less None by `python scripts/typed_fields.py`; do not edit
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
    cooldown_shape: CooldownShape
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


SETTINGS_SOURCE = "TrainConfig less None"  # Settings's lines' marker, apart from Overrides's


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


def _base_type(hint: object) -> type:
    """The type a setting's values have: X for X | None, str for a Literal of strings."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return _base_type(args[0])
    if typing.get_origin(hint) is Literal:
        return type(args[0])
    assert isinstance(hint, type), hint
    return hint


# Each setting's value type (int, float, bool or str), by name, in field order.
FIELD_TYPES: dict[str, type] = {
    name: _base_type(hint) for name, hint in typing.get_type_hints(TrainConfig).items()
}
# TrainConfig's own defaults by name, None for the settings that `resolve` takes from the preset
# or the optimizer's recipe: what a run gets for a setting it is not given, before those.
# One field's default, typed, is the class's attribute (`TrainConfig.optimizer`: "mousse").
FIELD_DEFAULTS: dict[str, Setting | None] = {
    f.name: None if f.default is dataclasses.MISSING else f.default for f in fields(TrainConfig)
}


def closest(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the nearest valid name, or ''."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""


# Settings that hold several values as comma-separated text; a TOML list is read as that text.
LIST_SETTINGS = ("budgets",)


# Any: a TOML value (tomllib's typing) or flag string in, converted by int()/float(); out, the
# value of the field `key` names, for Overrides(**...), which checks each against its field
def coerce(key: str, value: Any) -> Any:
    """Convert a flag string or TOML value to the field's type; ConfigError names the key."""
    kind = _field_type(key)
    if value is None:
        return None
    if key in LIST_SETTINGS and isinstance(value, (list, tuple)):
        value = ",".join(map(str, value))
    try:
        return _convert(kind, value)
    except (TypeError, ValueError):
        raise ConfigError(
            f"bad value for '{key}': {value!r} is not {'on/off' if kind is bool else 'a ' + kind.__name__}"
        ) from None


def _field_type(key: str) -> type:
    """The type of setting `key`'s values (`FIELD_TYPES`); an unknown key is a ConfigError
    naming the closest setting, or the new name of a renamed one."""
    if key not in FIELD_TYPES:
        if key in compat.RENAMED:
            raise ConfigError(f"'{key}' is now {compat.RENAMED[key]}")
        raise ConfigError(f"unknown setting '{key}'{closest(key, FIELD_TYPES)}")
    return FIELD_TYPES[key]


def _convert(kind: type, value: Any) -> Setting:  # Any: as `coerce`
    """`value` (a flag string or TOML value, not None) as a `kind`: int, float, bool or str.
    TypeError or ValueError when it is not one, for `coerce` to name the key."""
    if kind is bool:
        return _to_bool(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value) if not isinstance(value, str) else int(value.strip())
    if kind is float:
        if isinstance(value, bool):
            raise ValueError
        return float(value)
    return str(value)


def _to_bool(value: object) -> bool:
    """An on/off setting's value: a bool as it is, or a flag string (1/true/on/yes, 0/false/off/
    no, any case); ValueError for anything else."""
    if isinstance(value, bool):
        return value
    if not isinstance(value, str):  # TOML's `bias_correction = 1` is not on/off
        raise ValueError
    text = value.strip().lower()
    if text in ("1", "true", "on", "yes"):
        return True
    if text in ("0", "false", "off", "no"):
        return False
    raise ValueError


def read_toml(path: str | Path) -> dict[str, Any]:  # Any: tomllib's typing (tomlio.loads)
    """Parse a TOML file; a missing or malformed file is a ConfigError naming it."""
    path = Path(path)
    try:
        return tomlio.load(path)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomlio.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def load_config_file(path: str | Path) -> dict[str, Setting | None]:
    """Settings from a run TOML (flat keys, or under a [train] table), type-checked."""
    raw = read_toml(path)
    if isinstance(raw.get("train"), dict):
        outside = [key for key in raw if key != "train"]
        if outside:  # would be silently ignored otherwise
            raise ConfigError(
                f"{path}: '{outside[0]}' is outside the [train] table; put every "
                "setting under [train], or use no table at all"
            )
        raw = raw["train"]
    return {key: coerce_toml(key, value) for key, value in compat.upgrade(raw).items()}


def coerce_toml(key: str, value: Any) -> Any:  # Any: as `coerce`
    """A TOML file's value of setting `key`, typed: TOML has numbers and booleans, so a string
    for a count, a number or a switch (`steps = "5"`) is a mistake, refused rather than read."""
    if isinstance(value, str) and _field_type(key) is not str:
        raise ConfigError(f"bad value for '{key}': {value!r} is a string; write it without quotes")
    return coerce(key, value)


GPT_SHAPE = ("d_model", "n_layers", "n_heads", "head_dim")  # the built-in GPT's, not a --model's
SET_BY_RUN = ("vocab_size", "seq_len")  # what a --model's function gets from the run


def parse_model_config(text: str | None) -> dict[str, Setting]:
    """--model-config "k=v,k=v" as keyword arguments, each value an int, float, bool (true /
    false) or else a string; a malformed pair is a ConfigError showing the form."""
    out: dict[str, Setting] = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        key, sep, raw = (s.strip() for s in pair.partition("="))
        if not (sep and key.isidentifier() and raw):
            raise ConfigError(
                f"bad --model-config {text!r}: {pair!r} is not key=value; write "
                "keyword arguments of the model's function, e.g. "
                "d_model=64,n_layers=2"
            )
        if key in out:
            raise ConfigError(f"bad --model-config {text!r}: '{key}' is given twice")
        if key in SET_BY_RUN:
            raise ConfigError(
                f"--model-config sets '{key}', which the run passes to the model "
                "(seq_len: --seq-len; vocab_size: the data's); drop it"
            )
        out[key] = _scalar(raw)
    return out


def _scalar(raw: str) -> Setting:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def format_model_config(kwargs: Mapping[str, object]) -> str | None:
    """The canonical --model-config text of `kwargs` (keys sorted, so equal settings compare
    equal as text in the recorded config); None for none."""
    text = ",".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(kwargs.items())
    )
    return text or None


def _check_model(
    model: str | None, model_config: str | None, given: Mapping[str, object]
) -> str | None:
    """Settings that do not go with --model (or need it); the canonical model_config. The model
    itself is checked where it is built (`usermodel.build_model`)."""
    if model is None:
        _require(
            model_config is None,
            "--model-config gives keyword arguments to --model; "
            "pass --model too (the built-in GPT's shape: --d-model, --n-layers)",
        )
        return None
    head, sep, tail = model.rpartition(":")
    _require(
        bool(sep and head.strip() and tail.strip()),
        f"bad value for 'model': {model!r}; use MODULE:FUNCTION, "
        "path/to/file.py:FUNCTION or hf:ARCH (e.g. examples/llama.py:llama, hf:llama)",
    )
    for key in GPT_SHAPE:
        _require(
            given.get(key) is None,
            f"--{key.replace('_', '-')} shapes the built-in GPT, "
            "not --model; give your model's sizes in --model-config",
        )
    return format_model_config(parse_model_config(model_config))


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_log(value: str | None) -> tuple[str, ...]:
    """The dashboards of a `log` setting: 'tensorboard', 'wandb', 'tensorboard,wandb', or 'none'
    / empty for none; a ConfigError naming the allowed values otherwise."""
    names = [name.strip() for name in (value or "").split(",") if name.strip()]
    if names == ["none"]:
        return ()
    _require(
        all(name in LOGGERS for name in names),
        f"bad value for 'log': {value!r}; choose tensorboard, wandb, tensorboard,wandb or none",
    )
    return tuple(dict.fromkeys(names))


def check_choice(key: str, value: object, allowed: Collection[str]) -> None:
    hint = (
        " (the SVD polar factor is now orthogonalizer = exact)"
        if (key, value) == ("ns", "exact")
        else ""
    )
    _require(
        value in allowed,
        f"bad value for '{key}': {value!r}; choose one of {', '.join(allowed)}{hint}",
    )


def preset_named(name: str) -> Preset:
    """The preset called `name`; a ConfigError naming the valid ones otherwise."""
    try:
        return get_preset(name)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def resolve(overrides: Overrides | Mapping[str, object]) -> TrainConfig:
    """Build a validated config with every preset- and optimizer-derived field filled in.

    `overrides` holds file settings updated by flags (flags win): an `Overrides`, or the same by
    name (`Overrides.from_dict`: None is not given). Unset fields take TrainConfig's defaults;
    unset model and budget fields come from the preset (with the user's `model`, the GPT's shape
    fields stay None); unset knobs of the matrix optimizer from, later winning, its class preset,
    its LM training recipe and the preset's lr for it (`optimizer_knobs`). AdamW runs keep only
    lr and weight_decay of those knobs; the rest stay None.
    """
    if not isinstance(overrides, Overrides):
        overrides = Overrides.from_dict(overrides)
    given = overrides.to_dict()
    preset = preset_named(_or(overrides.preset, TrainConfig.preset))
    optimizer = _or(overrides.optimizer, TrainConfig.optimizer)
    check_choice("optimizer", optimizer, OPTIMIZER_NAMES)
    # the draft: the settings given, filled in as they resolve (None: not set yet)
    draft = dataclasses.replace(
        overrides, model_config=_check_model(overrides.model, overrides.model_config, given)
    )
    draft = _fill_steps(_from_preset(draft, preset), given)
    chosen = resolved_knobs(optimizer, preset, given)
    adamw = optimizer == "adamw"
    draft = dataclasses.replace(
        draft,
        **{name: chosen.get(name) for name in RUN_KNOBS},
        scalar_lr=_or(draft.scalar_lr, preset.adamw_lr if adamw else preset.scalar_lr),
        checkpoint_every=_or(draft.checkpoint_every, preset.checkpoint_every or draft.steps),
        log=",".join(parse_log(draft.log)) or None,  # one spelling of each choice
    )
    cfg = _config_of(draft)
    validate(cfg)
    return cfg


_T = TypeVar("_T")


def _or(value: _T | None, default: _T) -> _T:
    """A setting's value, or `default` when it is not set (None)."""
    return default if value is None else value


def _filled(value: _T | None) -> _T:
    """A setting `resolve` has filled in by now (from the preset, which holds every one it
    takes), typed as set."""
    assert value is not None, "resolve fills this setting in from the preset"
    return value


def _from_preset(draft: Overrides, preset: Preset) -> Overrides:
    """`draft` with the settings not given that its model preset holds (`Preset`'s of the same
    names): the built-in GPT's shape (not with --model, whose shape is its own), the sequence
    length, the batch and micro-batch (at most the batch), the warmup, the evaluation, and the
    steps unless a budget sets them (`_fill_steps`)."""
    gpt = draft.model is None
    batch_size = _or(draft.batch_size, preset.batch_size)
    return dataclasses.replace(
        draft,
        d_model=_or(draft.d_model, preset.d_model if gpt else None),
        n_layers=_or(draft.n_layers, preset.n_layers if gpt else None),
        n_heads=_or(draft.n_heads, preset.n_heads if gpt else None),
        head_dim=_or(draft.head_dim, preset.head_dim if gpt else None),
        seq_len=_or(draft.seq_len, preset.seq_len),
        steps=_or(draft.steps, preset.steps if draft.budget is None else None),
        batch_size=batch_size,
        micro_batch_size=min(_or(draft.micro_batch_size, preset.micro_batch_size), batch_size),
        warmup_frac=_or(draft.warmup_frac, preset.warmup_frac),
        eval_every=_or(draft.eval_every, preset.eval_every),
        eval_tokens=_or(draft.eval_tokens, preset.eval_tokens),
    )


def _config_of(draft: Overrides) -> TrainConfig:
    """The TrainConfig of a draft `resolve` has filled in: the settings it sets, None for each
    one it leaves unset whose default is None (TrainConfig requires some of them: the GPT's
    shape with --model, the knobs an AdamW run does not use), TrainConfig's defaults for the
    others."""
    settings = draft.to_dict()
    unset = [k for k, default in FIELD_DEFAULTS.items() if default is None and k not in settings]
    return TrainConfig(**settings, **dict.fromkeys(unset, None))


def _fill_steps(draft: Overrides, given: Mapping[str, object]) -> Overrides:
    """`draft` with the steps of a run given budgets (`_apply_budgets`), or a budget and no
    steps (`_from_preset` leaves them to it)."""
    if draft.budgets is not None:
        draft = _apply_budgets(draft, parse_budgets(draft.budgets), given)
    if draft.steps is None:
        draft = dataclasses.replace(draft, steps=_budget_steps(draft, _filled(draft.budget)))
    return draft


def resolved_knobs(optimizer: str, preset: Preset, given: Mapping[str, object]) -> Knobs:
    """The matrix optimizer's knobs a run gets, later winning: its class recipe < its LM
    training recipe < the model `preset`'s for it (`Preset.matrix_knobs`) < the knobs among
    `given` (the settings given, a file's under the flags; None: not given). The one statement
    of that order, for `resolve` and the ablation planner alike."""
    chosen = {k: v for k, v in given.items() if k in RUN_KNOBS and v is not None}
    return optimizer_knobs(optimizer, {**preset.matrix_knobs(optimizer), **chosen})


def _budget_steps(draft: Overrides, budget: float) -> int:
    """The steps of a run given a `budget` and no steps: `steps_for_budget` at its shape and
    tokens per step. A ConfigError for a budget out of range, one that rounds to no step or to
    more than MAX_STEPS, and for --model (whose parameters are counted only once it is built)."""
    problem = _out_of_range("budget", budget)
    _require(problem is None, f"bad value for 'budget': {budget}; {problem}")
    return _steps_of(*_counted(draft, "budget"), (budget,), "budget")[0]


def _counted(settings: Overrides | TrainConfig, key: str) -> tuple[GPTConfig, int]:
    """The built-in GPT's shape at the run's sequence length, and its batch size: what the
    budgets of setting `key` (budget, budgets) count. A ConfigError for --model, whose
    parameters are counted only once it is built."""
    _require(
        settings.model is None,
        f"--{key} counts the built-in GPT's parameters; with --model, give --steps instead"
        + (" (one budget a run)" if key == "budgets" else ""),
    )
    for name in (*GPT_SHAPE, "seq_len", "batch_size"):  # counted before `validate` runs
        _check_range(name, getattr(settings, name))
    shape = GPTConfig(
        d_model=_filled(settings.d_model),
        n_layers=_filled(settings.n_layers),
        n_heads=_filled(settings.n_heads),
        head_dim=_filled(settings.head_dim),
        seq_len=_filled(settings.seq_len),
    )
    return shape, _filled(settings.batch_size)


def _steps_of(shape: GPTConfig, batch_size: int, budgets: Iterable[float], key: str) -> list[int]:
    """The steps each of `budgets` makes for the built-in GPT of `shape` (`_counted`) at
    `batch_size` sequences a step; a ConfigError naming setting `key` for one that rounds to no
    step or to more than MAX_STEPS."""
    non_embedding = gpt_non_embedding_params(shape)
    per_step = shape.seq_len * batch_size  # tokens a step trains on
    out = []
    for budget in budgets:
        steps = steps_for_budget(budget, non_embedding, per_step)
        _require(
            1 <= steps <= MAX_STEPS,
            f"bad value for '{key}': {number_text(budget)} is {steps:,} steps of this run; a "
            f"budget must make 1 to {MAX_STEPS:,} steps (e.g. --{key} 1)"
            + (", or give --steps" if key == "budget" else ""),
        )
        out.append(steps)
    return out


def number_text(value: float) -> str:
    """A float as short as it reads back exactly: 0.25, 1, 0.002, 1e-05."""
    short = f"{value:g}"
    return short if float(short) == value else repr(value)


def budgets_text(budgets: Iterable[float]) -> str:
    """Budgets in the one spelling a config and a plan record: "0.25,0.5,1,2"."""
    return ",".join(map(number_text, budgets))


def parse_budgets(text: str) -> tuple[float, ...]:
    """A `budgets` setting ("0.25,0.5,1,2") as its budgets, ascending; a ConfigError naming a
    value that is not a number, not a finite number > 0, or given twice."""
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            where = "" if part == text else f" in {text!r}"
            raise ConfigError(
                f"bad value for 'budgets': {part.strip()!r}{where} is not a number; give "
                "budgets (multiples of 20 tokens per non-embedding parameter) separated by "
                "commas, e.g. --budgets 0.25,0.5,1,2"
            ) from None
        problem = _out_of_range("budget", value)
        _require(problem is None, f"bad value for 'budgets': {part.strip()}; each {problem}")
        _require(value not in values, f"bad value for 'budgets': {part.strip()} is given twice")
        values.append(value)
    return tuple(sorted(values))


def budget_steps(cfg: TrainConfig) -> list[tuple[float, int]]:
    """Each budget of a run with `budgets` and the steps it makes, ascending (none without)."""
    if cfg.budgets is None:
        return []
    budgets = parse_budgets(cfg.budgets)
    return list(zip(budgets, _steps_of(*_counted(cfg, "budgets"), budgets, "budgets"), strict=True))


def trained_steps(cfg: TrainConfig) -> int:
    """The optimizer steps a run trains: its steps, and with budgets each smaller budget's
    cooldown branch (`branches`: it starts from the trunk's state, so only its cooldown is new)."""
    return cfg.steps + sum(cooldown_length(s, cfg.cooldown) for _, s in budget_steps(cfg)[:-1])


def _apply_budgets(
    draft: Overrides, budgets: tuple[float, ...], given: Mapping[str, object]
) -> Overrides:
    """`draft` as a run of several `budgets` (`parse_budgets`): WSD (unless --schedule says
    otherwise, which `validate` refuses), the largest budget's steps and budget, and its warmup
    in steps: as given, else warmup_frac of the smallest budget's steps, recorded so that every
    branch has the warmup its own run would. A ConfigError for --model, and for --steps or
    --budget that differ from the largest budget's (a resolved config read back gives the same)."""
    steps = _steps_of(*_counted(draft, "budgets"), budgets, "budgets")
    for key, want in (("steps", steps[-1]), ("budget", budgets[-1])):
        _require(
            given.get(key) in (None, want),
            f"--{key} {given.get(key)}: --budgets sets the run's {key} (its largest budget's, "
            f"{want}); drop --{key}",
        )
    return dataclasses.replace(
        draft,
        budgets=budgets_text(budgets),
        schedule=_or(draft.schedule, "wsd"),
        steps=steps[-1],
        budget=budgets[-1],
        warmup_steps=_or(
            draft.warmup_steps, warmup_length(steps[0], _filled(draft.warmup_frac), None)
        ),
    )


def refuse_with_budgets(given: Mapping[str, object]) -> None:
    """A ConfigError for settings given with `budgets` that it sets itself (--steps, --budget):
    what a user gives, before `resolve` (which accepts those a resolved config records)."""
    if given.get("budgets") is None:
        return
    for key in ("steps", "budget"):
        _require(
            given.get(key) is None,
            f"--{key} with --budgets: the run trains the largest budget and a branch for each "
            f"smaller one, which sets its {key}; drop --{key}",
        )


# Run settings that are counts; the engine's knobs carry their own ranges (mousse.optim.knobs).
_AT_LEAST_1 = (
    "d_model",
    "n_layers",
    "n_heads",
    "head_dim",
    "seq_len",
    "steps",
    "batch_size",
    "micro_batch_size",
    "eval_every",
    "eval_tokens",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
)
MAX_STEPS = 10**9  # beyond any run a machine finishes; 1e20 is a typo, not a plan
MAX_PARAMS = 10**15  # the built-in GPT's blocks: petabytes of weights, beyond any machine
# number -> (test, what is allowed), for run settings that may be fractional
_RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "scalar_lr": (lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0"),
    "seed": (lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"),
    **dict.fromkeys(
        ("warmup_frac", "min_lr_frac", "cooldown"), (lambda v: 0 <= v <= 1, "must be in [0, 1]")
    ),
    "warmup_steps": (lambda v: v >= 0, "must be >= 0"),
    "divergence_factor": (lambda v: v > 1, "must be > 1"),
    "target_loss": (math.isfinite, "must be a finite number"),
    "budget": (lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0"),
    "steps": (lambda v: v <= MAX_STEPS, f"must be at most {MAX_STEPS:,}"),
}


def _out_of_range(key: str, value: object) -> str | None:
    """What the setting allows when `value` (typed, not None) is outside it, else None. Run
    settings that are not numbers have no range (their choices are checked by `check_choice`)."""
    if key in knobs.BY_NAME and key in RUN_KNOBS:
        allowed = knobs.BY_NAME[key].check(value)
        return None if allowed is None else f"must be {allowed}"
    if not isinstance(value, (int, float)):
        return None
    if key in _AT_LEAST_1 and value < 1:
        return "must be >= 1"
    ok = _RANGES.get(key)
    return None if ok is None or ok[0](value) else ok[1]


def _check_range(key: str, value: object) -> None:
    """A ConfigError naming the setting, its value and what it allows, when out of range."""
    problem = _out_of_range(key, value)
    _require(problem is None, f"bad value for '{key}': {value}; {problem}")


def in_range(key: str, value: object) -> bool:
    """Whether a typed value is inside the setting's allowed range (settings without one: True)."""
    return value is None or _out_of_range(key, value) is None


def validate(cfg: TrainConfig) -> None:
    """One ConfigError for the first inconsistent setting, naming it, its value and what is
    allowed. Knobs left None (AdamW's unused ones, post_alpha = alpha) are not checked."""
    check_choice("optimizer", cfg.optimizer, OPTIMIZER_NAMES)
    check_choice("scalar_optimizer", cfg.scalar_optimizer, SCALAR_OPTIMIZERS)
    check_choice("device", cfg.device, DEVICES)
    check_choice("precision", cfg.precision, PRECISIONS)
    check_choice("compile", cfg.compile, COMPILE_MODES)
    check_choice("schedule", cfg.schedule, SCHEDULES)
    check_choice("cooldown_shape", cfg.cooldown_shape, COOLDOWN_SHAPES)
    check_choice("split", cfg.split, SPLITS)
    check_choice("gather_dtype", cfg.gather_dtype, GATHER_DTYPES)
    check_choice("ns_dtype", cfg.ns_dtype, NS_DTYPES)
    for key in (*RUN_KNOBS, *_AT_LEAST_1, *_RANGES):
        value = getattr(cfg, key)
        if value is None:
            continue
        if key in knobs.KNOB_CHOICES:
            check_choice(key, value, knobs.KNOB_CHOICES[key])
        _check_range(key, value)
    if cfg.model is None:
        params = gpt_param_count(GPTConfig(**{k: getattr(cfg, k) for k in GPT_SHAPE}, vocab_size=0))
        _require(
            params <= MAX_PARAMS,
            f"--d-model {cfg.d_model} --n-layers {cfg.n_layers} makes a GPT of {params:.1e} "
            f"parameters, more than any machine holds (at most {MAX_PARAMS:.0e}); pick a smaller shape",
        )
    _require(
        bool(cfg.data.strip()),
        "bad value for 'data': empty; pass builtin, a text file or folder, or .bin token "
        "shards (a file, folder or glob)",
    )
    _require(
        cfg.val_data is None or bool(cfg.val_data.strip()),
        "bad value for 'val_data': empty; pass a text file or folder or .bin token shards, "
        "or leave it out (validation from the data)",
    )
    _check_budgets(cfg)
    for key in WSD_ONLY:
        flag, value = "--" + key.replace("_", "-"), getattr(cfg, key)
        _require(
            cfg.schedule == "wsd" or value == getattr(TrainConfig, key),
            f"{flag} {value} with --schedule {cfg.schedule}: {flag} applies to --schedule wsd "
            f"(a cosine run has no cooldown); add --schedule wsd or drop {flag}",
        )
    _check_schedule(cfg)
    _require(
        cfg.batch_size % cfg.micro_batch_size == 0,
        f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
        f"{cfg.micro_batch_size}; pick sizes that divide",
    )
    if cfg.optimizer != "adamw":
        try:
            knobs.check_together({k: getattr(cfg, k) for k in RUN_KNOBS})
        except ValueError as e:
            raise ConfigError(str(e)) from None


def _check_budgets(cfg: TrainConfig) -> None:
    """A run with `budgets` can cool down each budget's branch from its own stable phase,
    exactly as that budget's own WSD run: a WSD run, budgets of distinct steps, and each
    budget's stable phase after the warmup and not after the run's own (`branches`)."""
    if cfg.budgets is None:
        return
    _require(
        cfg.schedule == "wsd",
        f"--schedule {cfg.schedule} with --budgets: the branches cool down from a WSD run's "
        "stable phase, which a cosine run has not; pass --schedule wsd (or drop --schedule)",
    )
    plan = budget_steps(cfg)
    for (small, steps), (large, more) in itertools.pairwise(plan):
        _require(
            steps != more,
            f"bad value for 'budgets': {number_text(small)} and {number_text(large)} both make "
            f"{steps:,} steps of this run; give budgets further apart",
        )
    warmup = warmup_length(cfg.steps, cfg.warmup_frac, cfg.warmup_steps)
    last = cfg.steps - cooldown_length(cfg.steps, cfg.cooldown)
    for budget, steps in plan:
        stable = steps - cooldown_length(steps, cfg.cooldown)
        _require(
            stable >= max(warmup, 1),
            f"a warmup of {warmup} steps leaves budget {number_text(budget)} no stable phase to "
            f"branch from (its cooldown starts after step {stable} of {steps}); shorten "
            "--warmup-steps or --cooldown, or raise the smallest of --budgets",
        )
        _require(
            stable <= last,
            f"--cooldown {cfg.cooldown}: budget {number_text(budget)}'s cooldown would start "
            f"after the largest budget's (step {stable} > {last}); pass another --cooldown",
        )


def _check_schedule(cfg: TrainConfig) -> None:
    """The warmup fits in the run, and under WSD the cooldown after it."""
    warmup = warmup_length(cfg.steps, cfg.warmup_frac, cfg.warmup_steps)
    cooldown = cooldown_length(cfg.steps, cfg.cooldown) if cfg.schedule == "wsd" else 0
    phases, flags = (
        (
            f"a warmup of {warmup} steps and a cooldown of {cooldown} are",
            "--warmup-steps or --cooldown",
        )
        if cooldown
        else (f"a warmup of {warmup} steps is", "--warmup-steps")
    )
    _require(
        warmup + cooldown <= cfg.steps,
        f"{phases} longer than the run's {cfg.steps} steps; shorten {flags}, or train more steps",
    )


def matrix_kwargs(cfg: TrainConfig, precision: RunPrecision) -> knobs.KnobArgs:
    """The family optimizer's knobs for the block matrices, typed: every resolved one (lr and
    weight_decay go to build_optimizer on their own) and the Newton-Schulz dtype (auto: the
    run's `precision`). AdamW: none."""
    if cfg.optimizer == "adamw":
        return {}
    given = {
        k: getattr(cfg, k)
        for k in RUN_KNOBS
        if k not in ("lr", "weight_decay") and getattr(cfg, k) is not None
    }
    ns = NS_DTYPES[cfg.ns_dtype] or (torch.bfloat16 if precision == "bf16" else torch.float32)
    # RUN_KNOBS are KnobArgs's keys and TrainConfig's fields have their types (or None, left
    # out): tests/train/test_config_knobs.py checks both, which mypy cannot see through getattr
    return cast(knobs.KnobArgs, {**given, "ns_dtype": ns})
