"""The run settings as CLI flags, declared once and shared by `train` and `ablate`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Collection
from typing import Any, cast

import typer

from mousse.optim.knobs import TABLE, Knob
from mousse.train.config import Overrides
from mousse.train.presets import OPTIMIZER_NAMES, PRESETS

# A flag: (its annotation, which Typer reads its type from, and its typer.Option). Any: Typer
# types an Option as Any, so that it can stand as the default of a parameter of any type.
Flag = tuple[object, Any]
# The flags a user set, by name, aliases resolved (`with_flags`). Any: each value is of its own
# flag's type, which Typer parsed from the annotation.
FlagValues = dict[str, Any]
# A command that takes its run settings' flags as `overrides` (`with_flags`).
Command = Callable[..., None]


def _on_off_flag(name: str, text: str) -> Flag:
    flag = name.replace("_", "-")
    return (
        bool | None,
        typer.Option(None, f"--{flag}/--no-{flag}", help=text, show_default=False),
    )


def _knob_flag(knob: Knob) -> Flag:
    """A `train` flag from the knob table (mousse.optim.knobs)."""
    if knob.kind is bool:
        return _on_off_flag(knob.name, knob.text)
    # a number's Mousse value (a choice's help names Mousse's choice itself)
    plain = knob.choices or knob.default is None
    note = _KNOB_NOTES.get(knob.name, "" if plain else f" (Mousse: {knob.default:g})")
    return (knob.kind | None, typer.Option(None, help=knob.text + note))


_PRESET_NOTE = " Unset: the preset's for the chosen optimizer where it sets one (`mousse presets`)"
_KNOB_NOTES = {
    "lr": " The preset's for the chosen optimizer by default (`mousse presets`).",
    "momentum": _PRESET_NOTE + ", else the recipe's (Mousse: 0.95).",
    "momentum_style": _PRESET_NOTE + ", else the recipe's.",
}
KNOB_FLAGS = {k.name: _knob_flag(k) for k in TABLE if k.run_setting}

# name -> (annotation, typer.Option). Defaults are None: unset flags fall through to file/preset,
# and the matrix optimizer's knobs to its recipe (docs/family.md, `mousse presets`).
TRAIN_FLAGS: dict[str, Flag] = {
    "preset": (
        str | None,
        typer.Option(
            None,
            help=f"Model + recipe preset: {', '.join(PRESETS)} (see `mousse presets`).",
        ),
    ),
    "data": (
        str | None,
        typer.Option(
            None,
            help="'builtin' (stdlib source bytes), a text file/folder, or .bin token shards (file, folder or glob).",
        ),
    ),
    "val_data": (
        str | None,
        typer.Option(
            None, help="Validation shards or text, when not picked by name ('val') from --data."
        ),
    ),
    "split": (
        str | None,
        typer.Option(
            None,
            help="The builtin corpus's validation: files (whole files held out across it, evaluated on a fixed sample of windows) | tail (its last 512 KB, as runs before files). Other data keep their own val files or tail.",
        ),
    ),
    "steps": (int | None, typer.Option(None, help="Optimizer steps (wins over --budget).")),
    "budget": (
        float | None,
        typer.Option(
            None,
            help="Train X x 20 tokens per non-embedding parameter (1 = compute-optimal): the steps follow from the tokens per step (batch x seq), rounded up. The built-in GPT only; `mousse presets` shows each preset's default.",
        ),
    ),
    "budgets": (
        str | None,
        typer.Option(
            None,
            help="Several budgets in one run, e.g. 0.25,0.5,1,2 (as --budget): a WSD run trains the largest, and each smaller budget cools down a branch from its stable phase (run dir branches/budget-B), the same losses as that budget's own `--schedule wsd --budget B` run (docs/cli.md, Budgets).",
        ),
    ),
    "batch_size": (int | None, typer.Option(None, help="Sequences per optimizer step.")),
    "micro_batch_size": (
        int | None,
        typer.Option(
            None, help="Sequences per forward pass (gradient accumulation makes up the rest)."
        ),
    ),
    "seq_len": (int | None, typer.Option(None, help="Sequence length.")),
    "d_model": (int | None, typer.Option(None, help="Model width (overrides the preset).")),
    "n_layers": (
        int | None,
        typer.Option(None, help="Number of blocks (overrides the preset)."),
    ),
    "model": (
        str | None,
        typer.Option(
            None,
            help="Your own model instead of the built-in GPT: MODULE:FUNCTION or path/to/file.py:FUNCTION (called with vocab_size and seq_len, returns an nn.Module mapping token ids (B, T) to logits (B, T, V)), or hf:ARCH for a Hugging Face architecture with random weights (needs `pip install mousse\\[hf]`).",
        ),
    ),
    "model_config": (
        str | None,
        typer.Option(
            None, help="Keyword arguments for --model, e.g. hidden_size=256,num_hidden_layers=4."
        ),
    ),
    "optimizer": (
        str | None,
        typer.Option(
            None,
            help=f"Block-matrix optimizer: {' | '.join(OPTIMIZER_NAMES)} (mousse). Each family member is a preset of one engine's knobs (docs/family.md); every knob below overrides it.",
        ),
    ),
    "scalar_optimizer": (
        str | None,
        typer.Option(None, help="Optimizer for embedding, head, gains: adamw | lion."),
    ),
    "scalar_lr": (float | None, typer.Option(None, help="Peak lr of the scalar optimizer.")),
    "schedule": (
        str | None,
        typer.Option(
            None,
            help="lr schedule after the warmup: cosine (every preset's) down to the end | wsd (warmup-stable-decay: the peak lr, then a decay over the last --cooldown of the steps, --cooldown-shape linear or 1-sqrt).",
        ),
    ),
    "warmup_frac": (
        float | None,
        typer.Option(
            None, help="Fraction of the steps of linear warmup (when --warmup-steps is not given)."
        ),
    ),
    "warmup_steps": (
        int | None,
        typer.Option(
            None, help="Steps of linear warmup, whatever the budget; wins over --warmup-frac."
        ),
    ),
    "cooldown": (
        float | None,
        typer.Option(
            None,
            help="--schedule wsd only (refused with cosine): the last fraction of the steps, decayed to --min-lr-frac's share of the peak (0) at the last step (0.2).",
        ),
    ),
    "cooldown_shape": (
        str | None,
        typer.Option(
            None,
            help="--schedule wsd only: the cooldown's decay, linear (default) | 1-sqrt (1 - sqrt of its progress: falls fast, then lingers near the floor; Hägele et al. 2024).",
        ),
    ),
    "min_lr_frac": (
        float | None,
        typer.Option(None, help="The lr at the last step, as a fraction of the peak (0)."),
    ),
    **KNOB_FLAGS,  # the engine's knobs; unset = the chosen optimizer's recipe
    "ns_dtype": (
        str | None,
        typer.Option(
            None,
            help="Newton-Schulz precision: auto (the run's --precision) | fp32 | bf16 | fp16.",
        ),
    ),
    "eval_every": (
        int | None,
        typer.Option(
            None,
            help="Evaluate every N steps, every N/4 over the last quarter (or a longer wsd cooldown), and at step 0 and the end (docs/cli.md).",
        ),
    ),
    "eval_tokens": (int | None, typer.Option(None, help="Validation tokens per evaluation.")),
    "target_loss": (
        float | None,
        typer.Option(None, help="Record the first step and time at which val loss <= this."),
    ),
    "seed": (int | None, typer.Option(None, help="Seed of init and data order (0).")),
    "device": (str | None, typer.Option(None, help="auto | cpu | cuda.")),
    "precision": (
        str | None,
        typer.Option(
            None,
            help="Forward and backward arithmetic: auto (bf16 autocast where matmuls are native in bf16: CUDA, CPUs with AVX-512 BF16 or AMX; fp32 elsewhere) | bf16 | fp32. The loss, the optimizer's statistics and its whitening stay fp32; Newton-Schulz follows it (--ns-dtype).",
        ),
    ),
    "compile": (
        str | None,
        typer.Option(
            None,
            help="torch.compile the model and the matrix optimizer's update: auto (when the run's estimated length is at least 10x the compile time measured here; docs/cli.md) | on | off.",
        ),
    ),
    "log_every": (int | None, typer.Option(None, help="Log a line every N steps.")),
    "checkpoint_every": (
        int | None,
        typer.Option(
            None,
            help="Checkpoint every N steps, and at the end (default: the preset's: at the end only for tiny and small, every 100 steps for medium, 1.4m and 2.2m, 500 for the paper presets).",
        ),
    ),
    "keep_checkpoints": (int | None, typer.Option(None, help="Checkpoints kept per run (2).")),
    "gather_dtype": (
        str | None,
        typer.Option(
            None,
            help="Under torchrun: fp32 (exact) | bf16 (updates sent in bf16, half the all-gather).",
        ),
    ),
    "log": (
        str | None,
        typer.Option(
            None,
            help="Dashboards besides metrics.jsonl: tensorboard | wandb | tensorboard,wandb | none (the run dir's tb/, or an ablation's tb/<run>; needs `pip install 'mousse\\[tensorboard]'` or `'mousse\\[wandb]'`, docs/dashboards.md).",
        ),
    ),
}


# Trace normalization, as the paper names it: on / off is factor_norm trace / none.
TRACE_NORM = {True: "trace", False: "none", "on": "trace", "off": "none"}
TRAIN_FLAGS["trace_norm"] = _on_off_flag(
    "trace_norm",
    "Trace-normalize the factors before eigh (the same as --factor-norm trace / none).",
)


def _alias_trace_norm(overrides: FlagValues) -> FlagValues:
    """--trace-norm (a switch in train, 'on,off' in ablate) -> factor_norm."""
    value = overrides.pop("trace_norm", None)
    if value is None:
        return overrides
    if "factor_norm" in overrides:
        raise typer.BadParameter(
            "give --trace-norm or --factor-norm, not both", param_hint="--trace-norm"
        )
    words = [value] if isinstance(value, bool) else [w.strip() for w in value.split(",")]
    if any(w not in TRACE_NORM for w in words):
        raise typer.BadParameter(f"{value!r}: use on, off or on,off", param_hint="--trace-norm")
    mapped = [TRACE_NORM[w] for w in words]
    return {**overrides, "factor_norm": mapped[0] if isinstance(value, bool) else ",".join(mapped)}


def with_flags(
    flags: dict[str, Flag], sweep_flags: Collection[str] = ()
) -> Callable[[Command], Command]:
    """Add `flags` as keyword options to a Typer command. The run settings the user set arrive
    typed, as `overrides` (an `Overrides`, aliases resolved); those named in `sweep_flags` as
    `sweeps` (name -> comma-separated values, in `flags`' order)."""

    def decorate(func: Command) -> Command:
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.name not in ("overrides", "sweeps")]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
            for name, (ann, opt) in flags.items()
        ]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> None:  # Any: each flag's own type
            given = {name: kwargs.pop(name) for name in flags}
            given = _alias_trace_norm({k: v for k, v in given.items() if v is not None})
            settings = Overrides.from_dict({k: v for k, v in given.items() if k not in sweep_flags})
            if sweep_flags:
                kwargs["sweeps"] = {k: v for k, v in given.items() if k in sweep_flags}
            return func(overrides=settings, **kwargs)

        # what Typer reads the options from; functools' wrapper type does not declare it
        cast(Any, wrapper).__signature__ = sig.replace(parameters=own + extra)
        return wrapper

    return decorate


# Knobs `mousse ablate` sweeps: comma-separated values; every listed value becomes a run. (A spec
# file's [sweep] can list any setting; the other knobs are flags that set every run.)
SWEEP_HELP = {
    "optimizer": f"Optimizers to compare, e.g. {','.join(OPTIMIZER_NAMES)}.",
    **{k.name: f"Values, e.g. {k.sweep}. {k.text}" for k in TABLE if k.sweep},
}
SWEEP_HELP["trace_norm"] = "Trace normalization: on,off (the same as --factor-norm trace,none)."
SWEEP_FLAGS = {
    name: (str | None, typer.Option(None, f"--{name.replace('_', '-')}", help=text))
    for name, text in SWEEP_HELP.items()
}
BASE_FLAGS = {k: v for k, v in TRAIN_FLAGS.items() if k not in SWEEP_FLAGS}

# Help panels, so that some 60 options read as a few groups. A flag not named here is a run or
# output setting.
PANELS = {
    "Model and data": (
        "preset",
        "model",
        "model_config",
        "data",
        "val_data",
        "split",
        "seq_len",
        "d_model",
        "n_layers",
        "device",
        "precision",
        "compile",
    ),
    "Budget and schedule": (
        "steps",
        "budget",
        "budgets",
        "batch_size",
        "micro_batch_size",
        "schedule",
        "warmup_frac",
        "warmup_steps",
        "cooldown",
        "cooldown_shape",
        "min_lr_frac",
        "lr",
        "scalar_optimizer",
        "scalar_lr",
        "seed",
        "eval_every",
        "eval_tokens",
        "target_loss",
    ),
    "Optimizer knobs (unset: the optimizer's recipe, docs/family.md)": (
        "optimizer",
        *KNOB_FLAGS,
        "ns_dtype",
        "trace_norm",
    ),
}
RUN_PANEL = "Run and output"
PLAN_PANEL = "Plan: variants, seeds, tuning"
SWEEP_PANEL = "Sweeps (comma-separated values: each one becomes a variant)"


def _panel(name: str) -> str:
    return next((panel for panel, names in PANELS.items() if name in names), RUN_PANEL)


for _name, (_, _option) in TRAIN_FLAGS.items():
    _option.rich_help_panel = _panel(_name)
for _option in (option for _, option in SWEEP_FLAGS.values()):
    _option.rich_help_panel = SWEEP_PANEL
