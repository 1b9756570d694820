"""Orthogonalization: approximate polar factor msign(X) = U V^T by Newton-Schulz, or exact by SVD.

Every function takes a batch of matrices shaped (B, m, n) and treats each independently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import Tensor

from .kernels import gram, poly


@dataclass(frozen=True)
class NSMethod:
    """A quintic Newton-Schulz schedule: one (a, b, c) per iteration, and its input normalization.

    The input is divided by `||X||_F * norm_scale + eps`, or by `max(||X||_F, eps)` when
    `clamp` (torch.optim.Muon's form). Iterations past the end of `coefficients` repeat the last
    triple.
    """

    coefficients: tuple[tuple[float, float, float], ...]
    eps: float
    norm_scale: float = 1.0
    clamp: bool = False

    def schedule(self, steps: int) -> list[tuple[float, float, float]]:
        return [self.coefficients[min(i, len(self.coefficients) - 1)] for i in range(steps)]


NS_METHODS: dict[str, NSMethod] = {
    # Keller Jordan's Muon: one triple repeated; what torch.optim.Muon uses.
    "muon": NSMethod(((3.4445, -4.7750, 2.0315),), eps=1e-7, clamp=True),
    # "you5", the schedule the released Mousse recipe uses (via Dion).
    "you5": NSMethod(
        (
            (4.0848, -6.8946, 2.9270),
            (3.9505, -6.3029, 2.6377),
            (3.7418, -5.5913, 2.3037),
            (2.8769, -3.1427, 1.2046),
            (2.8366, -3.0525, 1.2012),
        ),
        eps=1e-8,
    ),
    # Polar Express (Amsel et al. 2025) as used by modded-nanogpt.
    "polar_express": NSMethod(
        (
            (8.1566, -22.4833, 15.8788),
            (4.0429, -2.8089, 0.5000),
            (3.8917, -2.7725, 0.5061),
            (3.2858, -2.3681, 0.4645),
            (2.3465, -1.7098, 0.4232),
        ),
        eps=1e-6,
        norm_scale=1.02,
    ),
}
NS_SCHEDULES = tuple(NS_METHODS)
# The schedules' names as a type (tests/optim/test_knobs.py checks it against NS_METHODS).
NsSchedule = Literal["muon", "you5", "polar_express"]
# What the family applies to the whitened momentum (docs/family.md): msign by Newton-Schulz or
# exactly, elementwise sign (SPlus), or nothing (Shampoo, TNT).
OrthogonalizeMethod = Literal["newton_schulz", "exact", "sign", "identity"]
ORTHOGONALIZERS: tuple[str, ...] = get_args(OrthogonalizeMethod)


def power_of_two_scale(X: Tensor) -> Tensor:
    """Per-matrix power of two near max|X|, shape (B, 1, 1): dividing by it is exact and keeps
    squares of the entries from overflowing."""
    amax = torch.linalg.vector_norm(X, ord=float("inf"), dim=(-2, -1), keepdim=True)
    return torch.ldexp(torch.ones_like(amax), torch.frexp(amax).exponent)


def frobenius_norm(X: Tensor) -> Tensor:
    """Per-matrix Frobenius norm, shape (B, 1, 1), without overflow for huge entries."""
    scale = power_of_two_scale(X)
    norm: Tensor = torch.linalg.vector_norm(X / scale, dim=(-2, -1), keepdim=True)
    return norm * scale


def normalize(X: Tensor, method: NSMethod) -> Tensor:
    """X divided by its per-matrix norm as the schedule prescribes, computed without overflow."""
    scale = power_of_two_scale(X)
    Xs = X / scale
    norm: Tensor = torch.linalg.vector_norm(Xs, dim=(-2, -1), keepdim=True)
    if method.clamp:
        return Xs / torch.maximum(norm, method.eps / scale)
    return Xs / (norm * method.norm_scale + method.eps / scale)


def newton_schulz(X: Tensor, method: NSMethod, steps: int, dtype: torch.dtype) -> Tensor:
    """Approximate msign(X) for each matrix in the batch; iterates in `dtype`, returns X's dtype."""
    out_dtype = X.dtype
    transposed = X.size(-2) > X.size(-1)
    if transposed:  # iterate on the short side so the Gram matrix is the small one
        X = X.mT
    # Normalize before casting down: a narrow dtype (fp16) cannot hold large entries, nor eps.
    X = normalize(X.to(torch.promote_types(X.dtype, dtype)), method).to(dtype)
    for a, b, c in method.schedule(steps):
        A = gram(X)  # X X^T; torch, or a one-triangle Triton kernel on large CUDA batches
        B = poly(A, b, c)  # b A + c A A, likewise
        X = torch.baddbmm(X, B, X, beta=a)
    if transposed:
        X = X.mT
    return X.to(out_dtype)


def polar_exact(X: Tensor) -> Tensor:
    """Exact polar factor U V^T by SVD; directions with (numerically) zero singular value map to 0."""
    X = X / power_of_two_scale(X)  # exact; keeps singular values of huge entries from overflowing
    U: Tensor
    S: Tensor
    Vh: Tensor
    U, S, Vh = torch.linalg.svd(X, full_matrices=False)
    tol = S.amax(dim=-1, keepdim=True) * max(X.shape[-2:]) * torch.finfo(X.dtype).eps
    keep = (S > tol).to(X.dtype)
    return (U * keep.unsqueeze(-2)) @ Vh


def orthogonalize(X: Tensor, method: str, steps: int, dtype: torch.dtype) -> Tensor:
    """Each matrix of the (B, m, n) batch mapped by `method`: an NS schedule name (approximate
    msign in `dtype`), "exact" (polar factor by SVD), "sign" (elementwise) or "identity"."""
    if method == "exact":
        return polar_exact(X.to(torch.promote_types(dtype, torch.float32))).to(X.dtype)
    if method == "sign":
        return torch.sign(X)
    if method == "identity":
        return X
    return newton_schulz(X, NS_METHODS[method], steps, dtype)
