"""Model presets: named model shapes with their training settings, CPU-sized to the paper's 800M.

Only the 160M recipe was released (docs/published.md); the larger presets keep its batch, lr and
tokens per parameter, and their scalar/AdamW learning rates are the project's own choice.

Each preset gives the block matrices' peak lr per optimizer (`Preset.lrs`); each optimizer of the
family also has an LM training recipe (`TRAINING_RECIPES`). A run's matrix-optimizer knobs
resolve, later winning: class recipe (`OPTIMIZER_CLASSES[name].recipe`, the method's published
defaults) < TRAINING_RECIPES[name] < the preset's lr, momentum and momentum rule for it
(`Preset.lrs`, `Preset.momenta`, `Preset.momentum_styles`) < config file < flags.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import cast

import torch

from mousse.optim.family import Knobs
from mousse.optim.knobs import RUN_KNOBS, KnobArgs
from mousse.optim.recipes import OPTIMIZER_CLASSES
from mousse.optim.routing import routed_shapes
from mousse.optim.step import flat_shape

from .budget import steps_for_budget
from .compat import RENAMED_PRESETS
from .model import GPT, GPTConfig

OPTIMIZER_NAMES = (*OPTIMIZER_CLASSES, "adamw")  # the block-matrix optimizers a run can use
ADAMW_KNOBS = ("lr", "weight_decay")  # the family knobs AdamW uses

# What `mousse train --optimizer NAME` changes from the method's published defaults to train the
# GPT of these presets. Every method gets Mousse's weight decay 0.01 (each in its own
# weight_decay_style); Shampoo, TNT and SpecGD publish 0. Muon is the released Mousse recipe's
# baseline: Mousse's code path with alpha 0, Nesterov momentum, the you5 schedule and the spectral
# lr rule sqrt(m/n), as `mousse train --optimizer muon` always ran it (the recorded results depend
# on it); torch.optim.Muon's own defaults (ns muon, lr_scale muon, wd 0.1) stay in `optim.Muon`.
TRAINING_RECIPES: dict[str, Knobs] = {
    "mousse": {},  # the class preset is the released recipe (docs/published.md)
    "muon": {"ns": "you5", "lr_scale": "spectral", "weight_decay": 0.01},
    "shampoo": {"weight_decay": 0.01},
    "soap": {"weight_decay": 0.01},
    "splus": {"weight_decay": 0.01},
    "tnt": {"weight_decay": 0.01},
    "specgd": {"weight_decay": 0.01},
    "adamw": {"weight_decay": 0.01},
}

# Peak matrix lr of the CPU presets. Mousse and Muon: the lr their own tuning chose on each
# preset at its momentum 0.8 and with Mousse on Nesterov momentum, the presets' settings (the paper
# set with lr, momentum and rule tuned, `ablations/paper-tuned-momentum.toml`: 5 values a factor 2
# apart; benchmarks/tuned/). On tiny both chose 0.12; on small Mousse chose 0.12 and Muon 0.06.
# (At the recipes' momentum 0.95 both had chosen 0.06 on each.) The others: the best final
# validation loss of an lr sweep on the tiny preset (benchmarks/lr-sweep/: `mousse ablate
# benchmarks/lr-sweep/<name>.toml`), checked to train stably on small.
_SWEPT_LRS = {"shampoo": 0.01, "soap": 0.01, "splus": 0.3, "tnt": 1e-4, "specgd": 0.1}
_TINY_LRS = {"mousse": 0.12, "muon": 0.12, **_SWEPT_LRS}
_SMALL_LRS = {"mousse": 0.12, "muon": 0.06, **_SWEPT_LRS}
_SMALL_LR_NOTE = (
    "mousse/muon lr: tuned on small at momentum 0.8 (benchmarks/tuned); shampoo, soap, splus, "
    "tnt, specgd: best of an lr sweep on tiny (benchmarks/lr-sweep), stable on small"
)
_TINY_LR_NOTE = (
    "mousse/muon lr and momentum: tuned on tiny (benchmarks/tuned); shampoo, soap, splus, tnt, "
    "specgd: best of an lr sweep on tiny (benchmarks/lr-sweep)"
)
# tiny: Mousse's and Muon's momentum from their own tuning (`ablations/momentum-rule.toml`: lr,
# then momentum over 0.8/0.9/0.95/0.98, then 3 seeds; benchmarks/tuned/). Muon chose 0.8, Mousse
# 0.711 with 0.8 within 0.008 on the tuning seed; tuned, both finished 0.15 below the recipes'
# 0.95 (seed noise 0.03). Both use 0.8, on equal footing; the released 0.95 is `--momentum 0.95`.
_TINY_MOMENTA = {"mousse": 0.8, "muon": 0.8}
# small: the same ablation on small (an H100, bf16 autocast; benchmarks/tuned/h100-momentum-rule-
# small): Mousse chose 0.8, Mousse with Nesterov 0.8, Muon 0.711 with 0.8 within 0.008 on the
# tuning seed; 0.95 was 0.03-0.04 worse than 0.8 for all three (seed noise 0.005). The paper set
# on small on a CPU (fp32) chose 0.8 for both as well. Both use 0.8.
_SMALL_MOMENTA = {"mousse": 0.8, "muon": 0.8}
# Both CPU presets: Mousse with Nesterov momentum, Muon's rule. Tuned (lr, momentum, 3 seeds),
# Nesterov was ahead of the released heavy-ball rule on both: on small by 0.017 on an H100
# (p 0.014) and by 0.0095 on a CPU (p 0.008), on every seed both times, and by 0.003 on tiny
# (p 0.73; benchmarks/tuned/); it also puts the two arms of "does
# whitening help?" on one rule. The paper presets keep the released rule; `--momentum-style
# heavy_ball` restores it here.
_CPU_MOMENTUM_STYLES = {"mousse": "nesterov"}
# medium (about 3M parameters, the third CPU scale): small's tuned lrs, momenta and rule. Its
# own decisive set (`ablations/decisive.toml`: lr tuned per variant at momentum 0.8, 3 seeds;
# benchmarks/tuned/) chose the same lrs, 0.12 for Mousse (Nesterov and heavy-ball) and 0.06 for
# Muon; momentum was not tuned on medium.
_MEDIUM_LR_NOTE = (
    "mousse/muon lr: tuned on medium (benchmarks/tuned), as on small; shampoo, soap, "
    "splus, tnt, specgd: best of an lr sweep on tiny (benchmarks/lr-sweep)"
)
# The GPU ladder above small, at 1x the compute-optimal budget (docs/scaling.md, "The scale
# ladder"): Mousse and Muon at 0.06, the released 160M recipe's lr and within a factor 2 of every
# lr tuned on small and medium (CPU and H100), so the tuning grid (0.015-0.24) holds all of them; momentum 0.8 and Mousse on Nesterov,
# what small's tuning chose on the CPU and on the H100 (the released 0.95 is `--momentum 0.95`).
_LADDER_LRS = {"mousse": 0.06, "muon": 0.06, **_SWEPT_LRS}
_LADDER_LR_NOTE = (
    "mousse/muon: the 160M recipe's 0.06, inside a factor 2 of small's tuned lrs (CPU and "
    "H100), not tuned here; shampoo, soap, splus, tnt, specgd: best of an lr sweep on tiny"
)
# The paper presets: Mousse and Muon at the released 160M recipe's 0.06; the others at their
# published defaults (class presets), SPlus at its README's 0.2 for transformers.
_PAPER_LRS = {
    **{name: cls.recipe["lr"] for name, cls in OPTIMIZER_CLASSES.items()},
    "mousse": 0.06,
    "muon": 0.06,
    "splus": 0.2,
}
_PAPER_LR_NOTE = (
    "mousse, muon: the released 160M recipe (0.06); adamw: the project's choice; "
    "splus: its README's 0.2 for transformers; shampoo, soap, tnt, specgd: their "
    "published defaults, not tuned for these models"
)


@dataclass(frozen=True, kw_only=True)
class Preset:
    """A model shape plus its recipe. Batches count sequences; an optimizer step accumulates
    batch_size // micro_batch_size forward/backward passes."""

    name: str
    description: str
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int = 128
    seq_len: int = 1024
    vocab_size: int = 50304
    steps: int
    batch_size: int
    micro_batch_size: int
    # peak lr of the block matrices, per optimizer of the family (a missing one: its class lr)
    lrs: dict[str, float] = field(hash=False)
    lr_note: str  # what the lrs were tuned for
    scalar_lr: float  # AdamW lr for embedding, head and scalars alongside the family optimizers
    adamw_lr: float  # lr when AdamW trains everything
    warmup_frac: float = 0.1  # linear warmup, then cosine to 0
    eval_every: int
    eval_tokens: int
    # steps between checkpoints (and one at the end); None: at the end only, for runs of minutes.
    # Long runs get a cadence so that a crash or a kill -9 loses minutes, not the run.
    checkpoint_every: int | None = None
    # momentum, and momentum rule, per optimizer where the preset's own tuning moved it off
    # the recipe's
    momenta: dict[str, float] = field(default_factory=dict, hash=False)
    momentum_styles: dict[str, str] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        if self.batch_size % self.micro_batch_size:
            raise ValueError(
                f"preset {self.name}: batch_size {self.batch_size} is not a multiple "
                f"of micro_batch_size {self.micro_batch_size}"
            )

    def matrix_lr(self, optimizer: str) -> float | None:
        """Peak lr of the block matrices under `optimizer` (None: the optimizer's own default)."""
        return self.adamw_lr if optimizer == "adamw" else self.lrs.get(optimizer)

    def matrix_knobs(self, optimizer: str) -> Knobs:
        """The knobs this preset sets for `optimizer`'s block matrices: its lr, and its momentum
        and momentum rule where the preset's own tuning moved them off the recipe's."""
        knobs = {
            "lr": self.matrix_lr(optimizer),
            "momentum": self.momenta.get(optimizer),
            "momentum_style": self.momentum_styles.get(optimizer),
        }
        return {k: v for k, v in knobs.items() if v is not None}

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        return GPTConfig(
            vocab_size=vocab_size or self.vocab_size,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            head_dim=self.head_dim,
            seq_len=self.seq_len,
        )


def _paper(
    name: str,
    d_model: int,
    n_layers: int,
    steps: int,
    micro: int,
    scalar_lr: float,
    adamw_lr: float,
    note: str,
) -> Preset:
    return Preset(
        name=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // 128,
        steps=steps,
        batch_size=2048,
        micro_batch_size=micro,
        lrs=dict(_PAPER_LRS),
        lr_note=_PAPER_LR_NOTE,
        scalar_lr=scalar_lr,
        adamw_lr=adamw_lr,
        eval_every=125,
        eval_tokens=10_485_760,
        checkpoint_every=500,  # every 4 evaluations: tens of minutes of one H100 at 160m
        description=f"paper {name}: d{d_model} x {n_layers} layers, 2048 x 1024 tokens/step, "
        f"{steps:,} steps ({note})",
    )


def _cpu(
    name: str,
    *,
    d_model: int,
    n_layers: int,
    steps: int,
    batch_size: int,
    lrs: dict[str, float],
    lr_note: str,
    momenta: dict[str, float],
    eval_every: int,
    eval_tokens: int,
    description: str,
    checkpoint_every: int | None = None,
) -> Preset:
    """A CPU preset: byte-level (the builtin corpus), 32-wide heads, sequences of 128 tokens,
    one micro batch per step, Mousse on Nesterov momentum, scalar and AdamW lr 0.01."""
    return Preset(
        name=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // 32,
        head_dim=32,
        seq_len=128,
        vocab_size=256,
        steps=steps,
        batch_size=batch_size,
        micro_batch_size=batch_size,
        lrs=dict(lrs),
        lr_note=lr_note,
        momenta=dict(momenta),
        momentum_styles=dict(_CPU_MOMENTUM_STYLES),
        scalar_lr=0.01,
        adamw_lr=0.01,
        eval_every=eval_every,
        eval_tokens=eval_tokens,
        checkpoint_every=checkpoint_every,
        description=description,
    )


LADDER_BATCH = 128  # sequences of 256 bytes a step on every rung: only the size changes


def _ladder(name: str, d_model: int, n_layers: int, head_dim: int) -> Preset:
    """A GPU ladder preset: byte-level (the builtin corpus: no download), batches of 128 x 256
    tokens, trained to 1x the compute-optimal budget (20 tokens per non-embedding parameter)
    and sized so that the decisive set (`ablations/decisive.toml`, `--budgets` up to 1) takes
    minutes on one H100 and at most 4 epochs of the builtin corpus (docs/scaling.md, "The scale
    ladder")."""
    # the GPT's non-embedding parameters, 4 d^2 of attention and 8 d^2 of MLP a block (counted
    # here, not on a meta model, so that importing the presets builds none; a test checks it
    # against `budget.gpt_non_embedding_params`)
    steps = steps_for_budget(1.0, 12 * d_model * d_model * n_layers, LADDER_BATCH * 256)
    return Preset(
        name=name,
        d_model=d_model,
        n_layers=n_layers,
        n_heads=d_model // head_dim,
        head_dim=head_dim,
        seq_len=256,
        vocab_size=256,
        steps=steps,
        batch_size=LADDER_BATCH,
        micro_batch_size=LADDER_BATCH,
        lrs=dict(_LADDER_LRS),
        lr_note=_LADDER_LR_NOTE,
        momenta=dict(_SMALL_MOMENTA),
        momentum_styles=dict(_CPU_MOMENTUM_STYLES),
        scalar_lr=0.01,
        adamw_lr=0.003,
        eval_every=100,
        eval_tokens=262_144,
        checkpoint_every=100,  # on a CPU (hours) as on a GPU (a minute)
        description=f"GPU ladder: byte-level d{d_model} x {n_layers} layers, {steps} steps of "
        f"{LADDER_BATCH} x 256 tokens (1x: 20 tokens per non-embedding parameter), minutes on "
        "one GPU",
    )


MEDIUM_STEPS = 500  # about 10 minutes a run on 2 cores (benchmarks/tuned/README.md, "medium")

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        _cpu(
            "tiny",
            d_model=128,
            n_layers=2,
            steps=300,
            batch_size=16,
            lrs=_TINY_LRS,
            lr_note=_TINY_LR_NOTE,
            momenta=_TINY_MOMENTA,
            eval_every=25,
            eval_tokens=32_768,
            description="CPU smoke run: byte-level d128 x 2 layers, 300 steps, about 35 s on 2 cores",
        ),
        _cpu(
            "small",
            d_model=128,
            n_layers=4,
            steps=600,
            batch_size=32,
            lrs=_SMALL_LRS,
            lr_note=_SMALL_LR_NOTE,
            momenta=_SMALL_MOMENTA,
            eval_every=100,
            eval_tokens=131_072,
            description="CPU reference (docs/published.md): byte-level d128 x 4 layers, 600 steps, "
            "a few minutes on 2 cores",
        ),
        _cpu(
            "medium",
            d_model=256,
            n_layers=4,
            steps=MEDIUM_STEPS,
            batch_size=32,
            lrs=_SMALL_LRS,
            lr_note=_MEDIUM_LR_NOTE,
            momenta=_SMALL_MOMENTA,
            eval_every=100,
            eval_tokens=131_072,
            checkpoint_every=100,  # a kill loses at most a fifth of a run of 10-15 minutes
            description=f"third CPU scale: byte-level d256 x 4 layers, {MEDIUM_STEPS} steps, "
            "about 10 minutes on 2 cores",
        ),
        _ladder("1.4m", 192, 3, 64),
        _ladder("2.2m", 240, 3, 48),
        _paper("160m", 768, 12, 10_000, 32, 0.006, 0.003, "the released recipe"),
        _paper(
            "250m", 768, 24, 15_000, 32, 0.006, 0.002, "steps scaled with params from 160m's 10,000"
        ),
        _paper(
            "500m",
            1536,
            12,
            30_000,
            16,
            0.004,
            0.0015,
            "steps scaled with params from 160m's 10,000",
        ),
        _paper(
            "800m",
            1536,
            24,
            50_000,
            16,
            0.004,
            0.001,
            "steps scaled with params from 160m's 10,000",
        ),
    )
}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the valid ones (and the closest) otherwise."""
    if name in PRESETS:
        return PRESETS[name]
    if name in RENAMED_PRESETS:
        raise ValueError(f"preset {name!r} is gone: {RENAMED_PRESETS[name]}")
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown preset {name!r}{hint}; valid presets: {', '.join(PRESETS)}")


def meta_model(preset: Preset, vocab_size: int | None = None) -> GPT:
    with torch.device("meta"):
        return GPT(preset.model_config(vocab_size))


def param_count(preset: Preset, vocab_size: int | None = None) -> int:
    """Exact parameter count, from the model built on the meta device (no memory, no init)."""
    return meta_model(preset, vocab_size).num_params()


def matrix_state_floats(knobs: Knobs | None, m: int, n: int) -> int:
    """Optimizer state of one (m, n) block matrix, in floats, under the family knobs `knobs`
    (None: AdamW, two moments). The engine keeps: momentum m*n; per preconditioned side of size k
    the factor, eigenbasis and cached whitening matrix P = Q diag(lam^-alpha) (3 k*k, P not
    checkpointed), a second P' when post_alpha differs from alpha (k*k), and eigenvalues k; plus
    m*n each for SOAP's V (orthogonalizer adam), Shampoo's graft_v (graft adam) and SPlus's
    iterate average (average_rate > 0)."""
    if knobs is None:
        return 2 * m * n
    sides = {"both": (m, n), "left": (m,), "right": (n,), "none": ()}[knobs["sides"]]
    post = knobs["post_alpha"] is not None and knobs["post_alpha"] != knobs["alpha"]
    floats = m * n + sum((4 if post else 3) * k * k + k for k in sides)
    extra: tuple[bool, bool, bool] = (
        knobs["orthogonalizer"] == "adam",
        knobs["graft"] == "adam",
        knobs["average_rate"] > 0,
    )
    return floats + sum(extra) * m * n


def memory_estimate_bytes(
    preset: Preset, optimizer: str = "mousse", vocab_size: int | None = None, act_bytes: int = 4
) -> int:
    """Rough training memory of one replica, in bytes:

    4 * P (fp32 weights) + 4 * P (fp32 grads)
    + optimizer state, fp32: every block matrix (m, n) holds `matrix_state_floats` under the
      optimizer's resolved LM recipe, e.g.
        mousse: momentum m*n + L, Q_L, P_L (3 m*m) + R, Q_R, P_R (3 n*n) + eigenvalues (m + n)
        muon:   momentum m*n
        soap:   as mousse + V (m*n); shampoo: + graft_v (m*n); splus: + average (m*n)
        adamw:  2 m*n (two moments)
      and embedding/head/scalars 2 moments each (AdamW) whatever the optimizer
    + act_bytes * micro_batch_size * seq_len * (20 * d_model * n_layers + 3 * vocab)
      (saved activations: about 20 d per token per block, and logits, their fp32 copy and
      gradient; act_bytes=2 under bf16 autocast; attention scores are not stored by SDPA).
    """
    if optimizer not in OPTIMIZER_NAMES:
        raise ValueError(
            f"unknown optimizer {optimizer!r}; expected one of {', '.join(OPTIMIZER_NAMES)}"
        )
    knobs = None if optimizer == "adamw" else optimizer_knobs(optimizer)
    model = meta_model(preset, vocab_size)
    vocab = model.cfg.vocab_size
    acts = (
        preset.micro_batch_size
        * preset.seq_len
        * (20 * preset.d_model * preset.n_layers + 3 * vocab)
    )
    return weights_and_state_bytes(model, knobs) + act_bytes * acts


def weights_and_state_bytes(model: torch.nn.Module, knobs: Knobs | None) -> int:
    """fp32 weights and grads of `model` (on the meta device or not) plus the optimizer state:
    `matrix_state_floats` under `knobs` for each block matrix (as the optimizer sees it: a
    convolution flattened, a weight stored (in, out) turned) and two moments of every other
    tensor."""
    params, matrices = dict(model.named_parameters()), routed_shapes(model)
    state = sum(
        matrix_state_floats(knobs, *flat_shape(matrices[k])) if k in matrices else 2 * p.numel()
        for k, p in params.items()
    )
    return 4 * (2 * sum(p.numel() for p in params.values()) + state)


def optimizer_knobs(optimizer: str, given: Mapping[str, object] | None = None) -> Knobs:
    """The matrix optimizer's knobs for an LM run: its class recipe < its training recipe
    (`presets.TRAINING_RECIPES`) < `given` (None values count as unset). Defaults that follow
    other knobs (Shampoo's precond_start = precond_freq + 1, TNT's refresh_warmup) follow the
    final values. AdamW: only ADAMW_KNOBS (lr None when neither the recipe nor `given` sets it)."""
    knobs = {
        **TRAINING_RECIPES.get(optimizer, {}),
        **{k: v for k, v in (given or {}).items() if v is not None},
    }
    if optimizer == "adamw":
        return {k: knobs.get(k) for k in ADAMW_KNOBS}
    # `given` holds settings typed by config.coerce, whose knobs have KnobArgs's types
    # (tests/train/test_config_knobs.py checks), which mypy cannot see through a Mapping
    full = OPTIMIZER_CLASSES[optimizer].resolve_knobs(**cast(KnobArgs, knobs))
    return {k: full[k] for k in RUN_KNOBS}
