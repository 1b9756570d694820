"""Who computes which block matrix under torch.distributed: the cost model of a matrix, the
ownership plan (`plan_ownership`, the one place that decides) and the layout that packs the
matrices by owner into one flat buffer (`OwnerLayout`). Pure planning: no process group, no
collectives; `rank.Dist` uses it, `scripts/scaling.py` tabulates it.

`plan_ownership` gives each block matrix to one rank, balancing the cost of its refresh
(~ m^3 + n^3) and Newton-Schulz / whitening flops and keeping same-shape matrices in contiguous
chunks, so the owner's optimizer still batches them. Shapes are global shapes, so the same plan
serves parameters sharded by FSDP (docs/scaling.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor

from mousse.train.config import TrainConfig

EIGH_FLOPS = 9.0  # flops of a symmetric eigendecomposition with vectors, per k^3


@dataclass(frozen=True)
class MatrixCost:
    """Flops of one (m, n) matrix in the matrix optimizer: `refresh` (eigendecompositions of its
    factors, every precond_freq steps) and `step` (statistics, whitening and orthogonalization,
    every step)."""

    refresh: float
    step: float
    precond_freq: int = 1

    @property
    def amortized(self) -> float:
        return self.step + self.refresh / self.precond_freq


def matrix_cost(
    shape: tuple[int, ...],
    sides: str = "both",
    precond_freq: int = 10,
    ns_steps: int = 5,
    orthogonalizer: str = "newton_schulz",
) -> MatrixCost:
    """Cost model of one matrix: refresh ~ 9 (m^3 + n^3) for the preconditioned sides (eigh with
    vectors); per step the factor statistics (2 m^2 n, 2 m n^2), whitening and unwhitening (twice
    that) and Newton-Schulz, ns_steps x (4 a^2 b + 2 a^3) with a <= b the matrix's sides. A
    convolution weight (out, in, k...) costs as the (out, in x k...) matrix it is optimized as."""
    m, n = shape[0], math.prod(shape[1:])
    a, b = min(m, n), max(m, n)
    left, right = sides in ("both", "left"), sides in ("both", "right")
    refresh = EIGH_FLOPS * (m**3 * left + n**3 * right)
    stats = 2 * m * m * n * left + 2 * m * n * n * right
    ortho = {
        "newton_schulz": ns_steps * (4 * a * a * b + 2 * a**3),
        "exact": 4 * a * a * b + 22 * a**3,
    }.get(orthogonalizer, 2 * m * n)  # svd; elementwise
    return MatrixCost(float(refresh), float(3 * stats + ortho), max(1, precond_freq))


def cost_model(cfg: TrainConfig) -> Callable[[tuple[int, ...]], float]:
    """Amortized per-step flops of a matrix under a run's matrix optimizer."""
    if cfg.optimizer == "adamw":
        return lambda shape: float(math.prod(shape))
    sides = getattr(cfg, "sides", None) or "none"
    ortho = getattr(cfg, "orthogonalizer", None) or "newton_schulz"
    freq = getattr(cfg, "precond_freq", None) or 1
    steps = getattr(cfg, "ns_steps", None) or 5
    return lambda shape: matrix_cost(shape, sides, freq, steps, ortho).amortized


def plan_ownership(
    shapes: Mapping[str, tuple[int, ...]],
    world_size: int,
    cost: Callable[[tuple[int, ...]], float] | None = None,
) -> dict[str, int]:
    """The owner rank of every matrix, {name: rank}; the one place that decides.

    Balanced by cost: matrices are dealt heaviest shape first to the least-loaded rank (LPT, at
    most 4/3 of the best possible maximum load). Then, per shape, the matrices a rank got are
    renumbered into one contiguous chunk (rank 0 the first chunk, ...), which keeps every rank's
    load and lets its optimizer batch same-shape matrices as one stack. Deterministic: a pure
    function of the names in order, their shapes, the world size and the cost. Shapes are global
    shapes, so the same plan serves parameters sharded by FSDP (docs/scaling.md)."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    cost = cost or (lambda shape: matrix_cost(shape).amortized)
    buckets: dict[tuple[int, ...], list[str]] = {}
    for name, shape in shapes.items():
        buckets.setdefault(tuple(shape), []).append(name)
    weight = {shape: float(cost(shape)) for shape in buckets}
    load = [0.0] * world_size
    counts = {shape: [0] * world_size for shape in buckets}
    order = sorted(enumerate(buckets), key=lambda item: (-weight[item[1]], item[0]))
    for _, shape in order:
        for _ in buckets[shape]:
            rank = min(range(world_size), key=lambda r: (load[r], r))
            load[rank] += weight[shape]
            counts[shape][rank] += 1
    owners: dict[str, int] = {}
    for shape, names in buckets.items():
        start = 0
        for rank, count in enumerate(counts[shape]):
            for name in names[start : start + count]:
                owners[name] = rank
            start += count
    return {name: owners[name] for name in shapes}


def plan_loads(
    shapes: Mapping[str, tuple[int, ...]],
    owners: Mapping[str, int],
    world_size: int,
    cost: Callable[[tuple[int, ...]], float],
) -> list[float]:
    """Each rank's summed cost under a plan."""
    load = [0.0] * world_size
    for name, shape in shapes.items():
        load[owners[name]] += cost(tuple(shape))
    return load


class OwnerLayout:
    """The block matrices packed by owner into one flat buffer of world_size equal slots: rank r's
    slot holds r's matrices in plan order, then zero padding. Every rank builds the same layout, so
    a reduce-scatter over the buffer hands each owner the summed gradients of its matrices, and an
    all-gather of the slots hands every rank every owner's matrices."""

    def __init__(
        self,
        names: list[str],
        numels: Mapping[str, int],
        owners: Mapping[str, int],
        world_size: int,
    ):
        self.world_size = world_size
        self.members = [[n for n in names if owners[n] == r] for r in range(world_size)]
        self.numels = dict(numels)
        self.width = max(1, max(sum(self.numels[n] for n in ms) for ms in self.members))

    def slots(self, rank: int) -> Iterator[tuple[str, int, int]]:
        """(name, offset within the slot, numel) of rank's matrices."""
        offset = 0
        for name in self.members[rank]:
            yield name, offset, self.numels[name]
            offset += self.numels[name]

    def pack(self, slot: Tensor, rank: int, values: Mapping[str, Tensor | None]) -> None:
        """Write rank's matrices (None: zeros) into its slot, a tensor of `width` elements."""
        for name, offset, numel in self.slots(rank):
            value = values.get(name)
            if value is None:
                slot[offset : offset + numel].zero_()
            else:
                slot[offset : offset + numel].copy_(value.reshape(-1))
        used = sum(self.numels[n] for n in self.members[rank])
        slot[used:].zero_()


__all__ = [
    "EIGH_FLOPS",
    "MatrixCost",
    "OwnerLayout",
    "cost_model",
    "matrix_cost",
    "plan_loads",
    "plan_ownership",
]
