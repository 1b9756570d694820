"""Named model shapes and training recipes: the paper's 160M-800M family and two CPU presets.

Only the 160M recipe was released (spec section 5); the larger presets keep its batch, lr and
tokens per parameter, and their scalar/AdamW learning rates are the project's own choice.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch

from .model import GPT, GPTConfig


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
    lr: float  # matrix lr for Mousse / Muon
    scalar_lr: float  # AdamW lr for embedding, head and scalars alongside Mousse / Muon
    adamw_lr: float  # lr when AdamW trains everything
    warmup_frac: float = 0.1  # linear warmup, then cosine to 0
    eval_every: int
    eval_tokens: int

    def __post_init__(self):
        if self.batch_size % self.micro_batch_size:
            raise ValueError(f"preset {self.name}: batch_size {self.batch_size} is not a multiple "
                             f"of micro_batch_size {self.micro_batch_size}")

    @property
    def grad_accum(self) -> int:
        return self.batch_size // self.micro_batch_size

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_len

    def model_config(self, vocab_size: int | None = None) -> GPTConfig:
        return GPTConfig(vocab_size=vocab_size or self.vocab_size, d_model=self.d_model,
                         n_layers=self.n_layers, n_heads=self.n_heads, head_dim=self.head_dim,
                         seq_len=self.seq_len)


def _paper(name: str, d_model: int, n_layers: int, steps: int, micro: int, scalar_lr: float,
           adamw_lr: float, note: str) -> Preset:
    return Preset(name=name, d_model=d_model, n_layers=n_layers, n_heads=d_model // 128,
                  steps=steps, batch_size=2048, micro_batch_size=micro, lr=0.06,
                  scalar_lr=scalar_lr, adamw_lr=adamw_lr, eval_every=125, eval_tokens=10_485_760,
                  description=f"paper {name}: d{d_model} x {n_layers} layers, 2048 x 1024 tokens/step, "
                              f"{steps:,} steps ({note})")


PRESETS: dict[str, Preset] = {p.name: p for p in (
    Preset(name="tiny", d_model=128, n_layers=2, n_heads=4, head_dim=32, seq_len=128,
           vocab_size=256, steps=300, batch_size=16, micro_batch_size=16, lr=0.03,
           scalar_lr=0.01, adamw_lr=0.01, eval_every=25, eval_tokens=32_768,
           description="CPU smoke run: byte-level d128 x 2 layers, 300 steps, about 35 s on 2 cores"),
    Preset(name="small", d_model=128, n_layers=4, n_heads=4, head_dim=32, seq_len=128,
           vocab_size=256, steps=600, batch_size=32, micro_batch_size=32, lr=0.03,
           scalar_lr=0.01, adamw_lr=0.01, eval_every=100, eval_tokens=131_072,
           description="CPU reference (spec section 7): byte-level d128 x 4 layers, 600 steps, "
                       "a few minutes on 2 cores"),
    _paper("160m", 768, 12, 10_000, 32, 0.006, 0.003, "the released recipe"),
    _paper("250m", 768, 24, 15_000, 32, 0.006, 0.002, "steps scaled with params from 160m's 10,000"),
    _paper("500m", 1536, 12, 30_000, 16, 0.004, 0.0015, "steps scaled with params from 160m's 10,000"),
    _paper("800m", 1536, 24, 50_000, 16, 0.004, 0.001, "steps scaled with params from 160m's 10,000"),
)}


def get_preset(name: str) -> Preset:
    """The preset called `name`; ValueError naming the valid ones (and the closest) otherwise."""
    if name in PRESETS:
        return PRESETS[name]
    close = difflib.get_close_matches(name, PRESETS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ValueError(f"unknown preset {name!r}{hint}; valid presets: {', '.join(PRESETS)}")


def _meta_model(preset: Preset, vocab_size: int | None = None) -> GPT:
    with torch.device("meta"):
        return GPT(preset.model_config(vocab_size))


def param_count(preset: Preset, vocab_size: int | None = None) -> int:
    """Exact parameter count, from the model built on the meta device (no memory, no init)."""
    return _meta_model(preset, vocab_size).num_params()


def memory_estimate_bytes(preset: Preset, optimizer: str = "mousse", vocab_size: int | None = None,
                          act_bytes: int = 4) -> int:
    """Rough training memory of one replica, in bytes:

        4 * P (fp32 weights) + 4 * P (fp32 grads)
        + optimizer state, fp32: every matrix (m, n) holds
            mousse: momentum m*n + L, Q_L, P_L (3 m*m) + R, Q_R, P_R (3 n*n) + eigenvalues (m + n)
                    (P = Q diag(lam^-alpha) is the cached whitening matrix, not checkpointed)
            muon:   momentum m*n
            adamw:  2 m*n (two moments)
          and embedding/head/scalars 2 moments each (AdamW) whatever the optimizer
        + act_bytes * micro_batch_size * seq_len * (20 * d_model * n_layers + 3 * vocab)
          (saved activations: about 20 d per token per block, and logits, their fp32 copy and
          gradient; act_bytes=2 under bf16 autocast; attention scores are not stored by SDPA).
    """
    per_matrix = {"mousse": lambda m, n: m * n + 3 * m * m + 3 * n * n + m + n,
                  "muon": lambda m, n: m * n, "adamw": lambda m, n: 2 * m * n}
    if optimizer not in per_matrix:
        raise ValueError(f"unknown optimizer {optimizer!r}; expected one of {', '.join(per_matrix)}")
    model = _meta_model(preset, vocab_size)
    params, roles = dict(model.named_parameters()), model.param_roles()
    state = sum(per_matrix[optimizer](*params[k].shape) if r == "matrix" else 2 * params[k].numel()
                for k, r in roles.items())
    vocab = model.cfg.vocab_size
    acts = preset.micro_batch_size * preset.seq_len * (20 * preset.d_model * preset.n_layers + 3 * vocab)
    return 4 * (2 * model.num_params() + state) + act_bytes * acts
