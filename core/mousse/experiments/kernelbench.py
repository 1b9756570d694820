"""Triton kernels against the torch ops they replace, per matrix size: which is faster where, and
whether the current dispatch thresholds (`kernels.MIN_DIM`) agree with the measurements."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

import torch
from torch import Tensor

from mousse.optim import kernels

from .stopwatch import median_ms

KERNEL_SIZES = (1024, 2048, 3072, 4096, 8192)
POLY_BC = (-4.7750, 2.0315)  # Muon's b, c


class KernelRow(TypedDict):
    """One kernel against its torch op at one size (`bench_kernels`' "rows")."""

    op: str  # a kernel of `kernels.MIN_DIM`: "gram" or "poly"
    size: int  # m, of the m x m input
    kernel_ms: float
    torch_ms: float
    speedup: float  # torch_ms / kernel_ms
    dispatched: bool  # whether the current dispatch sends this size to the kernel


class KernelBench(TypedDict):
    """The kernel timings (`bench_kernels`): `mousse bench`'s "kernels" on CUDA."""

    dtype: str
    rows: list[KernelRow]
    measured_min_dim: dict[str, int | None]  # op -> `measured_min_dim`
    min_dim: dict[str, int]  # op -> the current dispatch threshold
    dispatched_where_slower: list[str]  # "op size" of each


def bench_kernels(
    device: torch.device,
    repeats: int,
    sizes: tuple[int, ...] = KERNEL_SIZES,
    dtype: torch.dtype = torch.bfloat16,
) -> KernelBench:
    """Each Triton kernel against the torch op it replaces, per size m (one m x m input), in
    `dtype` (Newton-Schulz's on CUDA): ms, speedup, and whether the current dispatch sends that
    size to the kernel; the measured thresholds (`measured_min_dim`) and any size dispatched to a
    kernel that is slower there. Runs where triton runs: CUDA (or CPU under TRITON_INTERPRET=1)."""
    b, c = POLY_BC
    rows: list[KernelRow] = []
    for m in sizes:
        X = (torch.randn(1, m, m, device=device) / m**0.5).to(dtype)
        A = kernels.sym_gram(X)  # exactly symmetric, as the polynomial kernel requires
        for op, (inp, kernel, reference) in _kernel_ops(X, A, b, c).items():
            kernel_ms = median_ms(kernel, device, repeats)
            torch_ms = median_ms(reference, device, repeats)
            rows.append(
                {
                    "op": op,
                    "size": m,
                    "kernel_ms": kernel_ms,
                    "torch_ms": torch_ms,
                    "speedup": torch_ms / kernel_ms,
                    "dispatched": kernels.use_triton(inp, op),
                }
            )
    return {
        "dtype": str(dtype).removeprefix("torch."),
        "rows": rows,
        "measured_min_dim": {
            op: measured_min_dim([r for r in rows if r["op"] == op]) for op in kernels.MIN_DIM
        },
        "min_dim": {op: kernels.min_dim(op) for op in kernels.MIN_DIM},
        "dispatched_where_slower": [
            f"{r['op']} {r['size']}" for r in rows if r["dispatched"] and r["speedup"] < 1
        ],
    }


def _kernel_ops(
    X: Tensor, A: Tensor, b: float, c: float
) -> dict[str, tuple[Tensor, Callable[[], Tensor], Callable[[], Tensor]]]:
    """Per op: (its input, the Triton kernel's call, the torch op's call) on one size's inputs.
    Built in a function so that each size's calls hold that size's tensors."""
    return {
        "gram": (X, lambda: kernels.sym_gram(X), lambda: X @ X.mT),
        "poly": (
            A,
            lambda: kernels.sym_poly(A, b, c),
            lambda: torch.baddbmm(A, A, A, beta=b, alpha=c),
        ),
    }


def measured_min_dim(rows: list[KernelRow]) -> int | None:
    """The smallest measured size from which the kernel is faster at every larger measured size
    (None: not faster at the largest)."""
    best = None
    for row in sorted(rows, key=lambda r: r["size"], reverse=True):
        if row["speedup"] < 1:
            break
        best = row["size"]
    return best
