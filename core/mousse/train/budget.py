"""Training budgets in the units the literature compares optimizers in: tokens per non-embedding
parameter, as a multiple of the compute-optimal 20 (Hoffmann et al. 2022), and epochs over the
train data (repeating data beyond about 4 epochs stops paying, Muennighoff et al. 2023).

`--budget X` trains X * 20 tokens per non-embedding parameter; every run's summary.json and every
ablation's results say the regime they ran in (`regime`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TypedDict

import torch

from .model import GPT, GPTConfig

TOKENS_PER_PARAM = 20  # the compute-optimal tokens per parameter (Chinchilla): a budget of 1
NOT_COUNTED = ("embedding", "head")  # roles a parameter count for the budget leaves out
MAX_EPOCHS = 4  # repeated data pays about as well as new up to here (Muennighoff et al. 2023)


def non_embedding_count(sizes: Iterable[tuple[str, int]]) -> int:
    """The parameters of a model given as (role, count) pairs, less its embeddings and its head:
    the N of tokens per parameter (the head of these untied models is an output embedding)."""
    return sum(count for role, count in sizes if role not in NOT_COUNTED)


def gpt_non_embedding_params(cfg: GPTConfig) -> int:
    """The built-in GPT's non-embedding parameters at shape `cfg`, counted on the meta device
    (no memory, no init)."""
    with torch.device("meta"):
        model = GPT(cfg)
    roles = model.param_roles()
    return non_embedding_count((roles[n], p.numel()) for n, p in model.named_parameters())


def steps_for_budget(budget: float, non_embedding: int, tokens_per_step: int) -> int:
    """The steps that train `budget` x 20 tokens per non-embedding parameter, rounded up to the
    first step that reaches it (a float error below 1e-9 of a step adds none)."""
    steps = budget * TOKENS_PER_PARAM * non_embedding / tokens_per_step
    return math.ceil(round(steps, 9))


class Regime(TypedDict):
    """The regime a run trains in (`regime`), as its summary and its ablation's results say."""

    tokens: int
    non_embedding_params: int
    tokens_per_param: float | None
    budget: float | None
    epochs: float | None


def regime(tokens: int, non_embedding: int, train_tokens: int | None) -> Regime:
    """The regime of a run of `tokens` tokens: tokens per non-embedding parameter, that as a
    multiple of 20 (`budget`), and epochs over the `train_tokens` of its data (None: unknown)."""
    per_param = tokens / non_embedding if non_embedding else None
    return {
        "tokens": tokens,
        "non_embedding_params": non_embedding,
        "tokens_per_param": per_param,
        "budget": None if per_param is None else per_param / TOKENS_PER_PARAM,
        "epochs": tokens / train_tokens if train_tokens else None,
    }


def regime_warnings(
    budget: float | None, epochs: float | None, remedy: str = "pass --budget 1"
) -> list[str]:
    """What a comparison in this regime does not establish: below the compute-optimal budget
    (and the `remedy` for it: runs with `--budgets` take no `--budget`), or beyond MAX_EPOCHS
    over its data."""
    notes = []
    if budget is not None and budget < 1:
        notes.append(
            f"{budget:.2g}x the compute-optimal 20 tokens per non-embedding parameter: "
            "optimizer rankings and speedups move with the data-to-model ratio (Wen et al. "
            f"2025), so a gap here may not hold at 1x ({remedy})"
        )
    if epochs is not None and epochs > MAX_EPOCHS:
        notes.append(
            f"{epochs:.3g} epochs over the train data: beyond {MAX_EPOCHS}, repeated data is "
            "worth less than new data (Muennighoff et al. 2023), so losses partly measure "
            "memorization (use more data, or a smaller budget)"
        )
    return notes
