"""The run settings as CLI flags, declared once and shared by `train` and `ablate`."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

from mousse.optim.family import CHOICES, KNOBS
from mousse.train.config import OPTIMIZERS


def _one_of(knob: str) -> str:
    return " | ".join(CHOICES[knob])


SIDES_HELP = (
    "both | left | right | none. left = L = E[G G^T], the OUTPUT side of an (out, in) "
    "weight (m x m); right = R = E[G^T G], the INPUT side (n x n)."
)


def _switch(name: str, text: str) -> tuple:
    flag = name.replace("_", "-")
    return (
        Optional[bool],
        typer.Option(None, f"--{flag}/--no-{flag}", help=text, show_default=False),
    )


# name -> (annotation, typer.Option). Defaults are None: unset flags fall through to file/preset,
# and the matrix optimizer's knobs to its recipe (docs/family.md, `mousse presets`).
TRAIN_FLAGS: dict[str, tuple] = {
    "preset": (
        Optional[str],
        typer.Option(
            None,
            help="Model + recipe preset: tiny, small, 160m, 250m, 500m, 800m (see `mousse presets`).",
        ),
    ),
    "data": (
        Optional[str],
        typer.Option(
            None,
            help="'builtin' (stdlib source bytes), a text file/folder, or .bin token shards (file, folder or glob).",
        ),
    ),
    "val_data": (
        Optional[str],
        typer.Option(
            None, help="Validation shards or text, when not picked by name ('val') from --data."
        ),
    ),
    "steps": (Optional[int], typer.Option(None, help="Optimizer steps.")),
    "batch_size": (Optional[int], typer.Option(None, help="Sequences per optimizer step.")),
    "micro_batch_size": (
        Optional[int],
        typer.Option(
            None, help="Sequences per forward pass (gradient accumulation makes up the rest)."
        ),
    ),
    "seq_len": (Optional[int], typer.Option(None, help="Sequence length.")),
    "d_model": (Optional[int], typer.Option(None, help="Model width (overrides the preset).")),
    "n_layers": (
        Optional[int],
        typer.Option(None, help="Number of blocks (overrides the preset)."),
    ),
    "model": (
        Optional[str],
        typer.Option(
            None,
            help="Your own model instead of the built-in GPT: MODULE:FUNCTION or path/to/file.py:FUNCTION (called with vocab_size and seq_len, returns an nn.Module mapping token ids (B, T) to logits (B, T, V)), or hf:ARCH for a Hugging Face architecture with random weights (needs `pip install mousse\\[hf]`).",
        ),
    ),
    "model_config": (
        Optional[str],
        typer.Option(
            None, help="Keyword arguments for --model, e.g. hidden_size=256,num_hidden_layers=4."
        ),
    ),
    "optimizer": (
        Optional[str],
        typer.Option(
            None,
            help=f"Block-matrix optimizer: {' | '.join(OPTIMIZERS)} (mousse). Each family member is a preset of one engine's knobs (docs/family.md); every knob below overrides it.",
        ),
    ),
    "lr": (
        Optional[float],
        typer.Option(
            None,
            help="Peak lr of the block-matrix optimizer (the preset's for that optimizer by default; see `mousse presets`).",
        ),
    ),
    "scalar_optimizer": (
        Optional[str],
        typer.Option(None, help="Optimizer for embedding, head, gains: adamw | lion."),
    ),
    "scalar_lr": (Optional[float], typer.Option(None, help="Peak lr of the scalar optimizer.")),
    "warmup_frac": (
        Optional[float],
        typer.Option(None, help="Fraction of steps of linear warmup before the cosine decay."),
    ),
    # the engine's knobs; unset = the chosen optimizer's recipe
    "momentum": (
        Optional[float],
        typer.Option(None, help="Momentum mu in [0, 1) (Mousse/Muon 0.95)."),
    ),
    "momentum_style": (
        Optional[str],
        typer.Option(
            None,
            help=f"{_one_of('momentum_style')}: heavy_ball M = mu M + G; nesterov uses G + mu M; ema M = mu M + (1-mu) G, bias-corrected (Mousse heavy_ball, Muon nesterov).",
        ),
    ),
    "weight_decay": (
        Optional[float],
        typer.Option(None, help="Weight decay of the block matrices (0.01 in every recipe)."),
    ),
    "weight_decay_style": (
        Optional[str],
        typer.Option(
            None,
            help=f"{_one_of('weight_decay_style')}: decoupled W(1 - lr wd) with the update; after: W -= lr wd W after it (SOAP); after_scaled: W *= 1 - lr s wd (SPlus).",
        ),
    ),
    "alpha": (
        Optional[float],
        typer.Option(
            None,
            help="Whitening exponent: P = Q diag(lam^-alpha) before the orthogonalizer (Mousse 0.125; 0.25 untempered; 0 = Muon).",
        ),
    ),
    "post_alpha": (
        Optional[float],
        typer.Option(
            None, help="Exponent of the whitening after the orthogonalizer (default: = alpha)."
        ),
    ),
    "sides": (Optional[str], typer.Option(None, help="Preconditioned sides: " + SIDES_HELP)),
    "factor_norm": (
        Optional[str],
        typer.Option(
            None,
            help=f"Factor normalization before eigh: {_one_of('factor_norm')} (trace: mean eigenvalue 1, Mousse; same_trace: TNT).",
        ),
    ),
    "precond_freq": (
        Optional[int],
        typer.Option(None, help="Eigen refresh every T steps (Mousse 10)."),
    ),
    "refresh_schedule": (
        Optional[str],
        typer.Option(
            None,
            help=f"Refresh steps: {_one_of('refresh_schedule')} (offset: 1, T+1, 2T+1, ..., Mousse; multiples: 1, T, 2T, ..., SPlus's authors).",
        ),
    ),
    "precond_beta": (
        Optional[float],
        typer.Option(None, help="EMA rate of the factor statistics (Mousse 0.95)."),
    ),
    "stat_freq": (
        Optional[int],
        typer.Option(None, help="Update the factor statistics every N steps (1)."),
    ),
    "refresh_warmup": (
        Optional[int],
        typer.Option(
            None,
            help="Refresh at every statistics update during the first N steps (TNT: precond_freq; else 0).",
        ),
    ),
    "precond_start": (
        Optional[int],
        typer.Option(
            None, help="No whitening before this step (Shampoo: precond_freq + 1; else 1)."
        ),
    ),
    "eps": (Optional[float], typer.Option(None, help="Eigenvalue damping (Mousse 1e-5).")),
    "eig_floor": (
        Optional[str],
        typer.Option(
            None,
            help=f"Eigenvalue floor: {_one_of('eig_floor')} (shift: Mousse; clamp: max(lam, eps)).",
        ),
    ),
    "graft": (
        Optional[str],
        typer.Option(
            None,
            help=f"Grafting: {_one_of('graft')} (orthogonalizer: to the norm of the orthogonalized whitened momentum, Mousse; adam: Adam's norm, Shampoo).",
        ),
    ),
    "bias_correction": _switch("bias_correction", "Bias-correct the factor EMA before refresh."),
    "refresh": (
        Optional[str],
        typer.Option(
            None,
            help=f"Factor refresh: {_one_of('refresh')} (eigh exact; qr one power iteration + QR from the previous basis, SOAP; cheaper, approximate).",
        ),
    ),
    "refresh_after_update": _switch(
        "refresh_after_update",
        "Update statistics and refresh after the weight update (SOAP, SPlus).",
    ),
    "skip_first_step": _switch(
        "skip_first_step", "Step 1 only builds the statistics, no update (SOAP)."
    ),
    "orthogonalizer": (
        Optional[str],
        typer.Option(
            None,
            help=f"{_one_of('orthogonalizer')} applied to the whitened momentum (Mousse/Muon newton_schulz, SpecGD exact, SPlus sign, Shampoo/TNT identity, SOAP adam).",
        ),
    ),
    "ns": (Optional[str], typer.Option(None, help=f"Newton-Schulz schedule: {_one_of('ns')}.")),
    "ns_steps": (Optional[int], typer.Option(None, help="Newton-Schulz iterations (5).")),
    "ns_dtype": (
        Optional[str],
        typer.Option(
            None,
            help="Newton-Schulz precision: auto (fp32 on CPU, bf16 on CUDA) | fp32 | bf16 | fp16. bf16 is faster on CPUs with native bf16 (avx512_bf16, AMX).",
        ),
    ),
    "beta2": (
        Optional[float],
        typer.Option(
            None,
            help="Second-moment EMA rate of orthogonalizer/graft adam (SOAP 0.95, Shampoo 0.999).",
        ),
    ),
    "adam_eps": (
        Optional[float],
        typer.Option(None, help="Epsilon of orthogonalizer/graft adam (1e-8)."),
    ),
    "lr_scale": (
        Optional[str],
        typer.Option(
            None,
            help="Per-matrix lr rule: spectral sqrt(m/n) | muon sqrt(max(1,m/n)) | rms 0.2 sqrt(max(m,n)) | mean_dim 2/(m+n) | none.",
        ),
    ),
    "average_rate": (
        Optional[float],
        typer.Option(
            None, help="Iterate-average rate, evaluated on the average (SPlus 0.999; 0 = off)."
        ),
    ),
    "fisher": (
        Optional[str],
        typer.Option(
            None,
            help=f"Factor statistics from {_one_of('fisher')} gradients (sampled: labels drawn from the model, TNT).",
        ),
    ),
    "eval_every": (Optional[int], typer.Option(None, help="Evaluate every N steps.")),
    "eval_tokens": (Optional[int], typer.Option(None, help="Validation tokens per evaluation.")),
    "target_loss": (
        Optional[float],
        typer.Option(None, help="Record the first step and time at which val loss <= this."),
    ),
    "seed": (Optional[int], typer.Option(None, help="Seed of init and data order (0).")),
    "device": (Optional[str], typer.Option(None, help="auto | cpu | cuda.")),
    "compile": _switch("compile", "torch.compile the model and the matrix optimizer's update."),
    "log_every": (Optional[int], typer.Option(None, help="Log a line every N steps.")),
    "checkpoint_every": (
        Optional[int],
        typer.Option(None, help="Checkpoint every N steps (and at the end)."),
    ),
    "keep_checkpoints": (Optional[int], typer.Option(None, help="Checkpoints kept per run (2).")),
    "gather_dtype": (
        Optional[str],
        typer.Option(
            None,
            help="Under torchrun: fp32 (exact) | bf16 (updates sent in bf16, half the all-gather).",
        ),
    ),
    "log": (
        Optional[str],
        typer.Option(
            None,
            help="Dashboards besides metrics.jsonl: tensorboard | wandb | tensorboard,wandb | none (the run dir's tb/, or an ablation's tb/<run>; needs `pip install 'mousse\\[tensorboard]'` or `'mousse\\[wandb]'`, docs/dashboards.md).",
        ),
    ),
}


# The mission's own words for a knob: trace normalization on / off is factor_norm trace / none.
TRACE_NORM = {True: "trace", False: "none", "on": "trace", "off": "none"}
TRAIN_FLAGS["trace_norm"] = _switch(
    "trace_norm",
    "Trace-normalize the factors before eigh (the same as --factor-norm trace / none).",
)


def _alias_trace_norm(overrides: dict) -> dict:
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


def with_flags(flags: dict[str, tuple]):
    """Add `flags` as keyword options to a Typer command; they arrive together as `overrides`
    (only the ones the user set, aliases resolved)."""

    def decorate(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.name != "overrides"]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
            for name, (ann, opt) in flags.items()
        ]

        @functools.wraps(func)
        def wrapper(**kwargs):
            overrides = {name: kwargs.pop(name) for name in flags}
            overrides = _alias_trace_norm({k: v for k, v in overrides.items() if v is not None})
            return func(overrides=overrides, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + extra)
        return wrapper

    return decorate


# Knobs `mousse ablate` sweeps: comma-separated values; every listed value becomes a run. (A spec
# file's [sweep] can list any setting; the other knobs are flags that set every run.)
SWEEP_HELP = {
    "optimizer": f"Optimizers to compare, e.g. {','.join(OPTIMIZERS)}.",
    "momentum_style": f"Momentum styles, e.g. {','.join(CHOICES['momentum_style'])}.",
    "weight_decay_style": f"Weight decay styles, e.g. {','.join(CHOICES['weight_decay_style'])}.",
    "alpha": "Whitening exponents, e.g. 0.0,0.125,0.25 (0 = Muon on Mousse's code path).",
    "post_alpha": "Exponents after the orthogonalizer, e.g. 0.0,0.125 (default: = alpha).",
    "sides": "Preconditioned sides, e.g. both,left,right. " + SIDES_HELP,
    "factor_norm": f"Factor normalizations, e.g. {','.join(CHOICES['factor_norm'])}.",
    "precond_freq": "Refresh frequencies, e.g. 1,10,100.",
    "refresh_schedule": f"Refresh steps: {','.join(CHOICES['refresh_schedule'])}.",
    "precond_beta": "Factor EMA rates, e.g. 0.9,0.95,0.99.",
    "stat_freq": "Statistics update frequencies, e.g. 1,10.",
    "eig_floor": f"Eigenvalue floors: {','.join(CHOICES['eig_floor'])}.",
    "graft": f"Grafting: {','.join(CHOICES['graft'])}.",
    "bias_correction": "Factor bias correction: on,off.",
    "refresh": f"Factor refresh methods: {','.join(CHOICES['refresh'])}.",
    "refresh_after_update": "Statistics and refresh after the update: on,off.",
    "skip_first_step": "No update on step 1: on,off.",
    "orthogonalizer": f"Orthogonalizers, e.g. {','.join(CHOICES['orthogonalizer'])}.",
    "ns": f"Newton-Schulz schedules: {','.join(CHOICES['ns'])}.",
    "ns_steps": "Newton-Schulz iterations, e.g. 3,5.",
    "lr_scale": f"LR rules: {','.join(CHOICES['lr_scale'])}.",
    "average_rate": "Iterate-average rates, e.g. 0.0,0.999.",
    "fisher": f"Factor gradients: {','.join(CHOICES['fisher'])}.",
}
SWEEP_HELP["trace_norm"] = "Trace normalization: on,off (the same as --factor-norm trace,none)."
SWEEP_FLAGS = {
    name: (Optional[str], typer.Option(None, f"--{name.replace('_', '-')}", help=text))
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
        "seq_len",
        "d_model",
        "n_layers",
        "device",
        "compile",
    ),
    "Budget and schedule": (
        "steps",
        "batch_size",
        "micro_batch_size",
        "warmup_frac",
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
        *(k for k in TRAIN_FLAGS if k in CHOICES or k in KNOBS),
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
