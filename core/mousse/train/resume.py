"""What a resumed run takes from its checkpoint: the config it was written with (a change to the
model or to what the optimizer state fixes is refused) and the trainer's metadata."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypedDict

from mousse.optim.knobs import RUN_KNOBS

from . import compat, tomlio
from .checkpoint import Loaded, latest_valid_checkpoint, read_checkpoint
from .config import (
    FIELD_DEFAULTS,
    ConfigError,
    RunPrecision,
    Setting,
    TrainConfig,
    coerce,
    format_model_config,
    number_text,
    parse_budgets,
    parse_model_config,
    resolve,
)
from .fileio import shaped
from .optstate import CheckpointError
from .summary import CurvePoint, TrainerState

# Settings the optimizer's saved state brings back on resume: a new value would be recorded but
# not used, so changing one on resume is refused. (lr, scalar_lr and the schedule do apply.)
FIXED_ON_RESUME = tuple(k for k in (*RUN_KNOBS, "ns_dtype", "scalar_optimizer") if k not in ("lr",))
MODEL_SETTINGS = ("model", "model_config")  # the weights in a checkpoint are this model's
# Settings the losses depend on (the batches drawn, the validation set): a run resumed with
# another value would log losses that do not compare with those before.
SAME_LOSSES = ("seed", "eval_tokens", "split")
# Settings the lr schedule follows: a resumed run goes on at the lr of the uninterrupted run only
# under the same ones. Checkpoints from before they existed ran with their defaults (cosine).
SAME_SCHEDULE = ("schedule", "cooldown", "cooldown_shape", "warmup_steps")


class _Arithmetic(TypedDict, total=False):
    """How a run computed (checkpoints from before the record lack it)."""

    precision: RunPrecision
    compiled: bool


class RunMeta(TrainerState, _Arithmetic):
    """What the trainer stores of a run in each checkpoint (`Trainer.save_state`), each value
    as JSON text: its config (TOML text), data, curve and arithmetic, and its totals."""

    config: str
    data_hash: str  # `Dataset.content_hash`
    curve: list[CurvePoint]


class CheckpointMeta(RunMeta):
    """A checkpoint's `RunMeta` as read back (`trainer_meta`), with the step it was taken at
    (which the checkpoint writer records)."""

    step: int


def config_from_checkpoint(
    path: Path, overrides: Mapping[str, object], warn: Callable[[str], None] | None = None
) -> tuple[TrainConfig, Path]:
    """The config a checkpoint was written with, updated by explicitly given settings; the newest
    checkpoint that passes its checksums (`warn` hears of each damaged one skipped). A change to
    the model or to a setting the optimizer state restores is a ConfigError naming it."""
    ckpt = latest_valid_checkpoint(path, warn)
    saved = resolve(saved_config(trainer_meta(read_checkpoint(ckpt))))
    for key in MODEL_SETTINGS:  # first: another model's shape flags would confuse the error
        given = coerce(key, overrides.get(key, getattr(saved, key)))
        if key == "model_config":
            given = format_model_config(parse_model_config(given))
        if given != getattr(saved, key):
            was = getattr(saved, key)
            was = (
                f"{key} {was!r}"
                if was is not None
                else "the built-in GPT"
                if key == "model"
                else f"no {key}"
            )
            raise ConfigError(
                f"--{key.replace('_', '-')} {overrides[key]}: the checkpoint's "
                f"weights were made with {was}; drop the flag, or start a "
                "new run to train another model"
            )
    _check_same_budgets(overrides, saved)
    cfg = resolve({**_without_steps_for(overrides, saved), **overrides})
    for key in SAME_SCHEDULE:  # (a run with budgets whose trunk finished restores nothing)
        _check_same_schedule(key, getattr(saved, key), cfg)
    for key in FIXED_ON_RESUME:
        if getattr(cfg, key) != getattr(saved, key):
            raise ConfigError(
                f"--{key.replace('_', '-')} {getattr(cfg, key)}: the checkpoint's "
                f"optimizer state was made with {key}={getattr(saved, key)} and "
                "resuming keeps it; drop the flag, or start a new run to change it"
            )
    return cfg, ckpt


def _without_steps_for(
    overrides: Mapping[str, object], saved: TrainConfig
) -> dict[str, Setting | None]:
    """The saved settings, less their steps when `overrides` give a budget and no steps: the
    budget then sets the steps to train to (a saved steps would win over it); a run with
    budgets, less the steps and budget they set."""
    settings = saved.to_dict()
    if saved.budgets is not None:
        return {k: v for k, v in settings.items() if k not in ("steps", "budget")}
    if overrides.get("budget") is not None and overrides.get("steps") is None:
        return {k: v for k, v in settings.items() if k != "steps"}
    return settings


def _check_same_budgets(overrides: Mapping[str, object], saved: TrainConfig) -> None:
    """ConfigError naming --budgets when it is given other than the run recorded it: its trunk
    and branches were planned for those budgets."""
    given = coerce("budgets", overrides.get("budgets"))
    if given is None or ",".join(map(number_text, parse_budgets(given))) == saved.budgets:
        return
    keep = f"pass --budgets {saved.budgets}" if saved.budgets else "drop --budgets"
    was = f"budgets={saved.budgets}" if saved.budgets else "no --budgets"
    raise ConfigError(
        f"--budgets {given}: the run was trained with {was}, and its branches were planned for "
        f"them; {keep}, or start a new run"
    )


def saved_config(meta: CheckpointMeta) -> dict[str, Any]:  # Any: tomllib's (tomlio.loads)
    """The settings a checkpoint's decoded `trainer_meta` recorded, with the values of the
    settings it predates (`compat.recorded`: a checkpoint from before `split` held out the tail),
    less the cooldown of a cosine run (recorded, even one given before `validate` refused it,
    and never used): it resumes as it trained."""
    settings = compat.recorded(tomlio.loads(meta["config"]))
    if settings.get("schedule") == "cosine":
        settings.pop("cooldown", None)
    return settings


def trainer_meta(loaded: Loaded) -> CheckpointMeta:
    """The trainer's metadata of a loaded checkpoint, decoded (values are stored as JSON text);
    missing, undecodable or misshapen metadata is a CheckpointError."""
    try:
        meta = {k: json.loads(v) for k, v in loaded["trainer_meta"].items() if k != "format"}
        for key in ("config", "step", "data_hash", "curve"):
            meta[key]  # a KeyError here is the error reported below
        if not shaped(meta, CheckpointMeta):
            raise ValueError("a value of another type than the trainer writes")
        return meta
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"checkpoint metadata is missing or damaged ({exc!r}); resume from "
            "an earlier checkpoint"
        ) from None


def saved_state(meta: CheckpointMeta) -> TrainerState:
    """The run's totals and outcome as the checkpoint (its decoded `trainer_meta`) holds them."""
    return {
        "train_seconds": meta["train_seconds"],
        "eval_seconds": meta["eval_seconds"],
        "checkpoint_seconds": meta["checkpoint_seconds"],
        "best_val_loss": meta["best_val_loss"],
        "final_val_loss": meta["final_val_loss"],
        "first_loss": meta["first_loss"],
        "target_step": meta["target_step"],
        "target_seconds": meta["target_seconds"],
    }


def check_same_run(ckpt: Path, meta: CheckpointMeta, cfg: TrainConfig, data_hash: str) -> None:
    """CheckpointError unless the checkpoint (its decoded `trainer_meta`) was made by this
    model, with these optimizers, on this data."""
    saved_cfg = saved_config(meta)
    for key in (
        "preset",
        *MODEL_SETTINGS,
        "d_model",
        "n_layers",
        "n_heads",
        "head_dim",
        "seq_len",
        "optimizer",
        "scalar_optimizer",
    ):
        if coerce(key, saved_cfg.get(key)) != getattr(cfg, key):
            raise CheckpointError(
                f"checkpoint {ckpt} was made with {key}={saved_cfg.get(key)!r}"
                f", this run has {getattr(cfg, key)!r}: resume with the "
                "same setting"
            )
    for key in SAME_LOSSES:  # (checkpoints from before a setting existed do not name it)
        if key in saved_cfg and coerce(key, saved_cfg[key]) != getattr(cfg, key):
            raise CheckpointError(
                f"--{key.replace('_', '-')} {getattr(cfg, key)}: the run was trained with "
                f"{key}={saved_cfg[key]!r} and its losses compare only under it; drop the "
                "flag, or start a new run to change it"
            )
    for key in SAME_SCHEDULE:
        _check_same_schedule(key, coerce(key, saved_cfg.get(key, FIELD_DEFAULTS[key])), cfg)
    if meta["step"] > cfg.steps:
        raise CheckpointError(
            f"--steps {cfg.steps}: checkpoint {ckpt} is at step {meta['step']}, past that end; "
            f"pass --steps {meta['step']} or more, or resume from an earlier checkpoint"
        )
    if meta.get("data_hash") != data_hash:
        raise CheckpointError(
            f"checkpoint {ckpt} was trained on other data; resume with the same --data"
        )


def _check_same_schedule(key: str, saved: object, cfg: TrainConfig) -> None:
    """CheckpointError naming the flag to pass when the schedule setting `key` (the run's was
    `saved`) changed on resume: the lr after it would not be the uninterrupted run's."""
    if saved == getattr(cfg, key):
        return
    flag = f"--{key.replace('_', '-')}"
    keep = f"pass {flag} {saved}" if saved is not None else f"drop {flag}"
    raise CheckpointError(
        f"{flag} {getattr(cfg, key)}: the run was trained with {key}={saved}, and its lr after "
        f"resuming follows the uninterrupted run's only under it; {keep}, or start a new run"
    )
