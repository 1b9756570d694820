"""Run configuration: one typed dataclass, resolved once and validated at the edge. Everything
downstream trusts it.

Settings resolve, later winning: the matrix optimizer's class preset (`optim.OPTIMIZERS[name]
.preset`, its published defaults) < its LM training recipe (`presets.TRAINING_RECIPES`) < the model
preset's lr, momentum and momentum rule for that optimizer (`Preset.lrs`, `Preset.momenta`,
`Preset.momentum_styles`) < the `--config`
file < flags.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path

import torch

from mousse.optim import knobs as table

from . import compat, tomlio
from .presets import OPTIMIZERS, Preset, get_preset, optimizer_knobs

SCALAR_OPTIMIZERS = ("adamw", "lion")
DEVICES = ("auto", "cpu", "cuda")
GATHER_DTYPES = ("fp32", "bf16")  # what owners send in the all-gather under torchrun
# Newton-Schulz's working precision: auto = fp32 on CPU, bf16 on CUDA (the engine's default).
NS_DTYPES = {"auto": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dashboards a run's scalars also go to (`--log`, train.dashboards); metrics.jsonl always gets them.
LOGGERS = ("tensorboard", "wandb")
# Settings that choose where runs are shown, not what they compute: never an ablation's knob
# (sweeps, tuning), a run's name or part of a plan's hash, and free to change on resume.
VIEW_SETTINGS = ("log",)
# The engine's knobs (mousse.optim.knobs, docs/family.md), each a TrainConfig field. AdamW uses
# only ADAMW_KNOBS of them; the others stay None for AdamW runs.
FAMILY_KNOBS: tuple[str, ...] = table.KNOBS
# Knobs of the Kronecker preconditioner (statistics, refresh, whitening exponents, grafting to
# the whitened update): they do nothing when no side is preconditioned (sides = "none": Muon,
# SpecGD), steps 1, 4 and 5 of docs/family.md.
PRECONDITIONER_KNOBS = tuple(k for k in table.PRECONDITIONER_KNOBS if k in FAMILY_KNOBS)


class ConfigError(ValueError):
    """Bad user configuration; the message names the problem and the fix."""


@dataclass
class RunSettings:
    """A run's settings besides the engine's knobs (`TrainConfig` adds those). `None` means "the
    preset's value" (see `resolve`)."""

    preset: str = "tiny"
    # the user's own model instead of the built-in GPT (docs/models.md): MODULE:FUNCTION,
    # path/to/file.py:FUNCTION or hf:ARCH, and its keyword arguments as "k=v,k=v"
    model: str | None = None
    model_config: str | None = None
    # the built-in GPT's shape (preset's unless overridden; None with `model`)
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
    scalar_optimizer: str = "adamw"
    scalar_lr: float | None = None
    warmup_frac: float | None = None
    min_lr_frac: float = 0.0
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
    gather_dtype: str = "fp32"  # torchrun: dtype of the owners' all-gathered matrices / updates
    ns_dtype: str = "auto"  # Newton-Schulz precision (NS_DTYPES)
    log: str | None = None  # dashboards, comma-separated LOGGERS (None: metrics.jsonl only)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _with_knobs() -> list[tuple[str, object, dataclasses.Field]]:
    """RunSettings' fields with one field per engine knob (None: the optimizer's recipe): lr
    after `optimizer`, the others after `min_lr_frac`, the order sweeps and run names follow."""
    knob = {
        k.name: (k.name, k.kind | None, dataclasses.field(default=None))
        for k in table.TABLE
        if k.run_setting
    }
    out: list[tuple[str, object, dataclasses.Field]] = []
    for f in fields(RunSettings):
        out.append((f.name, f.type, dataclasses.field(default=f.default)))
        if f.name == "optimizer":
            out.append(knob.pop("lr"))
        if f.name == "min_lr_frac":
            out += knob.values()
    return out


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig",
    _with_knobs(),
    namespace={
        "__module__": __name__,
        "__doc__": "Everything one training run needs: RunSettings and the engine's knobs. None "
        'means "the preset\'s value", or for a knob "the chosen optimizer\'s recipe" (`resolve`).',
        "to_dict": RunSettings.to_dict,
    },
)


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
        if key in compat.RENAMED:
            raise ConfigError(f"'{key}' is now {compat.RENAMED[key]}")
        raise ConfigError(f"unknown setting '{key}'{closest(key, FIELD_TYPES)}")
    kind = FIELD_TYPES[key]
    if value is None:
        return None
    try:
        if kind is bool:
            if isinstance(value, bool):
                return value
            if not isinstance(value, str):  # TOML's `compile = 1` is not on/off
                raise ValueError
            text = value.strip().lower()
            if text in ("1", "true", "on", "yes"):
                return True
            if text in ("0", "false", "off", "no"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
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
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text; save it as UTF-8") from None


def load_config_file(path: str | Path) -> dict:
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
    return {key: coerce(key, value) for key, value in compat.upgrade(raw).items()}


GPT_SHAPE = ("d_model", "n_layers", "n_heads", "head_dim")  # the built-in GPT's, not a --model's
SET_BY_RUN = ("vocab_size", "seq_len")  # what a --model's function gets from the run


def parse_model_config(text: str | None) -> dict:
    """--model-config "k=v,k=v" as keyword arguments, each value an int, float, bool (true /
    false) or else a string; a malformed pair is a ConfigError showing the form."""
    out = {}
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


def _scalar(raw: str):
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


def format_model_config(kwargs: dict) -> str | None:
    """The canonical --model-config text of `kwargs` (keys sorted, so equal settings compare
    equal as text in the recorded config); None for none."""
    text = ",".join(
        f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in sorted(kwargs.items())
    )
    return text or None


def _check_model(cfg: TrainConfig, given: dict) -> None:
    """Settings that do not go with --model (or need it); the model itself is checked where
    it is built (`usermodel.build_model`)."""
    if cfg.model is None:
        _require(
            cfg.model_config is None,
            "--model-config gives keyword arguments to --model; "
            "pass --model too (the built-in GPT's shape: --d-model, --n-layers)",
        )
        return
    head, sep, tail = cfg.model.rpartition(":")
    _require(
        bool(sep and head.strip() and tail.strip()),
        f"bad value for 'model': {cfg.model!r}; use MODULE:FUNCTION, "
        "path/to/file.py:FUNCTION or hf:ARCH (e.g. examples/llama.py:llama, hf:llama)",
    )
    for key in GPT_SHAPE:
        _require(
            given.get(key) is None,
            f"--{key.replace('_', '-')} shapes the built-in GPT, "
            "not --model; give your model's sizes in --model-config",
        )
    cfg.model_config = format_model_config(parse_model_config(cfg.model_config))


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


def check_choice(key: str, value, allowed) -> None:
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


def resolve(overrides: dict) -> TrainConfig:
    """Build a validated config with every preset- and optimizer-derived field filled in.

    `overrides` holds file settings updated by flags (flags win). Unset model and budget fields
    come from the preset (with the user's `model`, the GPT's shape fields stay None); unset
    knobs of the matrix optimizer from, later winning, its class preset, its LM training recipe
    and the preset's lr for it (`optimizer_knobs`). AdamW runs keep only lr and weight_decay of
    those knobs; the rest stay None.
    """
    values = {k: coerce(k, v) for k, v in compat.upgrade(overrides).items() if v is not None}
    cfg = TrainConfig(**values)
    preset = preset_named(cfg.preset)
    check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _check_model(cfg, values)
    for name in (
        "d_model",
        "n_layers",
        "n_heads",
        "head_dim",
        "seq_len",
        "steps",
        "batch_size",
        "micro_batch_size",
        "warmup_frac",
        "eval_every",
        "eval_tokens",
    ):
        if cfg.model is not None and name in GPT_SHAPE:
            continue
        if getattr(cfg, name) is None:
            setattr(cfg, name, getattr(preset, name))
    for name, value in preset.matrix_knobs(cfg.optimizer).items():
        if getattr(cfg, name) is None:
            setattr(cfg, name, value)
    knobs = optimizer_knobs(cfg.optimizer, {k: getattr(cfg, k) for k in FAMILY_KNOBS})
    for name in FAMILY_KNOBS:
        setattr(cfg, name, knobs.get(name))
    if cfg.scalar_lr is None:
        cfg.scalar_lr = preset.adamw_lr if cfg.optimizer == "adamw" else preset.scalar_lr
    if cfg.checkpoint_every is None:
        cfg.checkpoint_every = cfg.steps
    cfg.micro_batch_size = min(cfg.micro_batch_size, cfg.batch_size)
    cfg.log = ",".join(parse_log(cfg.log)) or None  # one spelling of each choice
    validate(cfg)
    return cfg


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
# number -> (test, what is allowed), for run settings that may be fractional
_RANGES = {
    "scalar_lr": (lambda v: math.isfinite(v) and v >= 0, "must be a finite number >= 0"),
    "seed": (lambda v: 0 <= v < 2**63, "must be in [0, 2^63)"),
    **dict.fromkeys(("warmup_frac", "min_lr_frac"), (lambda v: 0 <= v <= 1, "must be in [0, 1]")),
    "divergence_factor": (lambda v: v > 1, "must be > 1"),
    "target_loss": (math.isfinite, "must be a finite number"),
    "steps": (lambda v: v <= MAX_STEPS, f"must be at most {MAX_STEPS:,}"),
}


def _out_of_range(key: str, value) -> str | None:
    """What the setting allows when `value` (typed, not None) is outside it, else None."""
    if key in table.BY_NAME and key in FAMILY_KNOBS:
        allowed = table.BY_NAME[key].check(value)
        return None if allowed is None else f"must be {allowed}"
    if key in _AT_LEAST_1 and value < 1:
        return "must be >= 1"
    ok = _RANGES.get(key)
    return None if ok is None or ok[0](value) else ok[1]


def in_range(key: str, value) -> bool:
    """Whether a typed value is inside the setting's allowed range (settings without one: True)."""
    return value is None or _out_of_range(key, value) is None


def validate(cfg: TrainConfig) -> None:
    """One ConfigError for the first inconsistent setting, naming it, its value and what is
    allowed. Knobs left None (AdamW's unused ones, post_alpha = alpha) are not checked."""
    check_choice("optimizer", cfg.optimizer, OPTIMIZERS)
    check_choice("scalar_optimizer", cfg.scalar_optimizer, SCALAR_OPTIMIZERS)
    check_choice("device", cfg.device, DEVICES)
    check_choice("gather_dtype", cfg.gather_dtype, GATHER_DTYPES)
    check_choice("ns_dtype", cfg.ns_dtype, NS_DTYPES)
    for key in (*FAMILY_KNOBS, *_AT_LEAST_1, *_RANGES):
        value = getattr(cfg, key)
        if value is None:
            continue
        if key in table.CHOICES:
            check_choice(key, value, table.CHOICES[key])
        problem = _out_of_range(key, value)
        _require(problem is None, f"bad value for '{key}': {value}; {problem}")
    _require(
        cfg.batch_size % cfg.micro_batch_size == 0,
        f"batch_size {cfg.batch_size} is not a multiple of micro_batch_size "
        f"{cfg.micro_batch_size}; pick sizes that divide",
    )
    if cfg.optimizer != "adamw":
        try:
            table.check_together({k: getattr(cfg, k) for k in FAMILY_KNOBS})
        except ValueError as e:
            raise ConfigError(str(e)) from None
