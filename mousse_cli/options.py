"""The run settings as CLI flags, declared once and shared by `train` and `ablate`."""

from __future__ import annotations

import functools
import inspect
from typing import Optional

import typer

SIDES_HELP = ("both | left | right. left = L = E[G G^T], the OUTPUT side of an (out, in) weight "
              "(m x m); right = R = E[G^T G], the INPUT side (n x n).")

# name -> (annotation, typer.Option). Defaults are None: unset flags fall through to file/preset.
TRAIN_FLAGS: dict[str, tuple] = {
    "preset": (Optional[str], typer.Option(None, help="Model + recipe preset: tiny, small, 160m, 250m, 500m, 800m (see `mousse presets`).")),
    "data": (Optional[str], typer.Option(None, help="'builtin' (stdlib source bytes), a text file/folder, or .bin token shards (file, folder or glob).")),
    "val_data": (Optional[str], typer.Option(None, help="Validation shards or text, when not picked by name ('val') from --data.")),
    "steps": (Optional[int], typer.Option(None, help="Optimizer steps.")),
    "batch_size": (Optional[int], typer.Option(None, help="Sequences per optimizer step.")),
    "micro_batch_size": (Optional[int], typer.Option(None, help="Sequences per forward pass (gradient accumulation makes up the rest).")),
    "seq_len": (Optional[int], typer.Option(None, help="Sequence length.")),
    "d_model": (Optional[int], typer.Option(None, help="Model width (overrides the preset).")),
    "n_layers": (Optional[int], typer.Option(None, help="Number of blocks (overrides the preset).")),
    "optimizer": (Optional[str], typer.Option(None, help="Block-matrix optimizer: mousse | muon | adamw.")),
    "lr": (Optional[float], typer.Option(None, help="Peak lr of the block-matrix optimizer (preset's by default).")),
    "scalar_optimizer": (Optional[str], typer.Option(None, help="Optimizer for embedding, head, gains: adamw | lion.")),
    "scalar_lr": (Optional[float], typer.Option(None, help="Peak lr of the scalar optimizer.")),
    "warmup_frac": (Optional[float], typer.Option(None, help="Fraction of steps of linear warmup before the cosine decay.")),
    "momentum": (Optional[float], typer.Option(None, help="Momentum of Mousse/Muon (0.95).")),
    "nesterov": (Optional[bool], typer.Option(None, "--nesterov/--no-nesterov", help="Nesterov momentum (default: on for Muon, off for Mousse).", show_default=False)),
    "weight_decay": (Optional[float], typer.Option(None, help="Decoupled weight decay of the block matrices (0.01).")),
    "alpha": (Optional[float], typer.Option(None, help="Mousse tempering exponent (0.125; 0.25 is the untempered theory; 0 = Muon).")),
    "sides": (Optional[str], typer.Option(None, help="Mousse preconditioned sides: " + SIDES_HELP)),
    "trace_norm": (Optional[bool], typer.Option(None, "--trace-norm/--no-trace-norm", help="Trace-normalize the factors (mean eigenvalue 1).", show_default=False)),
    "precond_freq": (Optional[int], typer.Option(None, help="Eigen refresh every T steps (10).")),
    "precond_beta": (Optional[float], typer.Option(None, help="EMA rate of the factor statistics (0.95).")),
    "eps": (Optional[float], typer.Option(None, help="Eigenvalue damping and floor (1e-5).")),
    "graft": (Optional[bool], typer.Option(None, "--graft/--no-graft", help="Graft the update to the norm of NS(whitened momentum).", show_default=False)),
    "bias_correction": (Optional[bool], typer.Option(None, "--bias-correction/--no-bias-correction", help="Bias-correct the factor EMA before refresh.", show_default=False)),
    "refresh": (Optional[str], typer.Option(None, help="Factor refresh: eigh (exact) | qr (one power iteration + QR from the previous basis, as SOAP; cheaper, approximate).")),
    "ns": (Optional[str], typer.Option(None, help="Orthogonalizer: you5 | muon | polar_express | exact.")),
    "ns_steps": (Optional[int], typer.Option(None, help="Newton-Schulz iterations (5).")),
    "lr_scale": (Optional[str], typer.Option(None, help="Per-matrix lr rule: spectral sqrt(m/n) | muon sqrt(max(1,m/n)) | rms 0.2 sqrt(max(m,n)) | none.")),
    "eval_every": (Optional[int], typer.Option(None, help="Evaluate every N steps.")),
    "eval_tokens": (Optional[int], typer.Option(None, help="Validation tokens per evaluation.")),
    "target_loss": (Optional[float], typer.Option(None, help="Record the first step and time at which val loss <= this.")),
    "seed": (Optional[int], typer.Option(None, help="Seed of init and data order (0).")),
    "device": (Optional[str], typer.Option(None, help="auto | cpu | cuda.")),
    "compile": (Optional[bool], typer.Option(None, "--compile/--no-compile", help="torch.compile the model.", show_default=False)),
    "log_every": (Optional[int], typer.Option(None, help="Log a line every N steps.")),
    "checkpoint_every": (Optional[int], typer.Option(None, help="Checkpoint every N steps (and at the end).")),
    "keep_checkpoints": (Optional[int], typer.Option(None, help="Checkpoints kept per run (2).")),
}


def with_flags(flags: dict[str, tuple]):
    """Add `flags` as keyword options to a Typer command; they arrive together as `overrides`
    (only the ones the user set)."""

    def decorate(func):
        sig = inspect.signature(func)
        own = [p for p in sig.parameters.values() if p.name != "overrides"]
        extra = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann)
                 for name, (ann, opt) in flags.items()]

        @functools.wraps(func)
        def wrapper(**kwargs):
            overrides = {name: kwargs.pop(name) for name in flags}
            return func(overrides={k: v for k, v in overrides.items() if v is not None}, **kwargs)

        wrapper.__signature__ = sig.replace(parameters=own + extra)
        return wrapper

    return decorate


# Knobs `mousse ablate` sweeps: comma-separated values; every listed value becomes a run.
SWEEP_HELP = {
    "optimizer": "Optimizers to compare: mousse,muon,adamw.",
    "alpha": "Tempering exponents, e.g. 0.0,0.125,0.25 (0 = Muon on Mousse's code path).",
    "sides": "Preconditioned sides, e.g. both,left,right. " + SIDES_HELP,
    "trace_norm": "Trace normalization: on,off.",
    "precond_freq": "Refresh frequencies, e.g. 1,10,100.",
    "precond_beta": "Factor EMA rates, e.g. 0.9,0.95,0.99.",
    "graft": "Grafting: on,off.",
    "bias_correction": "Factor bias correction: on,off.",
    "refresh": "Factor refresh methods: eigh,qr.",
    "ns": "Orthogonalizers: you5,muon,polar_express,exact.",
    "ns_steps": "Newton-Schulz iterations, e.g. 3,5.",
    "lr_scale": "LR rules: spectral,muon,rms,none.",
}
SWEEP_FLAGS = {
    name: (Optional[str], typer.Option(None, f"--{name.replace('_', '-')}", help=text))
    for name, text in SWEEP_HELP.items()
}
BASE_FLAGS = {k: v for k, v in TRAIN_FLAGS.items() if k not in SWEEP_FLAGS}
