"""The rows of `mousse presets` (its --json and the source of its tables): each preset's shape,
recipe, default budget, memory and, when measured, its time here."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mousse.train.budget import Regime

if TYPE_CHECKING:
    import torch

    from mousse.train.estimate import Estimate
    from mousse.train.presets import Preset


class PresetRegime(Regime):
    """A preset's default budget and its tokens per step (`preset_regime`)."""

    tokens_per_step: int


class PresetRow(PresetRegime):
    """One preset (`preset_row`): a row of `mousse presets --json` and of its tables. The time
    keys are None unless --measure measured it."""

    name: str
    params: str  # in millions, e.g. "13.2M"
    d_model: int
    n_layers: int
    n_heads: int
    seq_len: int
    batch_size: int
    steps: int
    lrs: dict[str, float | None]  # optimizer -> the block matrices' peak lr (None: no recipe)
    momenta: dict[str, float]  # optimizer -> the momentum its tuning moved it to
    momentum_styles: dict[str, str]
    lr_note: str
    scalar_lr: float
    memory: str  # in GiB, e.g. "1.2G"
    step_time: str | None  # `estimate.duration`
    run_time: str | None
    step_seconds: float | None
    estimate: str | None  # `Estimate.method`
    busy: float | None
    device: str
    description: str


def preset_row(
    p: Preset, cost: Estimate | None, where: torch.device, builtin_tokens: int | None
) -> PresetRow:
    """One preset as the JSON row (and the table's source): shape, recipe, regime, memory, and
    the time here when `cost` measured it (None: not measured, its time keys None)."""
    from mousse.train.estimate import duration
    from mousse.train.presets import OPTIMIZER_NAMES, memory_estimate_bytes, param_count

    return {
        "name": p.name,
        "params": f"{param_count(p) / 1e6:.1f}M",
        "d_model": p.d_model,
        "n_layers": p.n_layers,
        "n_heads": p.n_heads,
        "seq_len": p.seq_len,
        "batch_size": p.batch_size,
        "steps": p.steps,
        **preset_regime(p, builtin_tokens),
        "lrs": {o: p.matrix_lr(o) for o in OPTIMIZER_NAMES},
        "momenta": dict(p.momenta),
        "momentum_styles": dict(p.momentum_styles),
        "lr_note": p.lr_note,
        "scalar_lr": p.scalar_lr,
        "memory": f"{memory_estimate_bytes(p) / 2**30:.1f}G",
        "step_time": duration(cost.step_seconds) if cost else None,
        "run_time": duration(cost.run_seconds) if cost else None,
        "step_seconds": cost.step_seconds if cost else None,
        "estimate": cost.method if cost else None,
        "busy": cost.busy if cost else None,
        "device": str(where),
        "description": p.description,
    }


def builtin_train_tokens() -> int | None:
    """The builtin corpus's train tokens (built into the cache on first use: seconds), or None
    where it cannot be built (no standard-library sources): the listing goes on without epochs."""
    from mousse.train.data import DataError, load_dataset

    try:
        return len(load_dataset("builtin").train)
    except DataError:
        return None


def preset_regime(p: Preset, builtin_tokens: int | None) -> PresetRegime:
    """The preset's default budget (`mousse.train.budget.regime`: non-embedding parameters,
    tokens, per parameter and as a multiple of 20) and tokens per step; epochs over the builtin
    corpus (`builtin_tokens` train tokens) for the byte-level presets, None for those sized for
    GPT-2 token shards, whose corpus is the --data they are given."""
    from mousse.train.budget import gpt_non_embedding_params, regime
    from mousse.train.data import BYTE_VOCAB

    corpus = builtin_tokens if p.vocab_size == BYTE_VOCAB else None
    counted = gpt_non_embedding_params(p.model_config())
    return {
        "tokens_per_step": p.tokens_per_step,
        **regime(p.steps * p.tokens_per_step, counted, corpus),
    }
