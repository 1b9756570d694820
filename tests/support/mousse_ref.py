"""Pieces of the Mousse reference (tests/optim/test_mousse_reference.py) that other optim tests
reuse: the exact polar factor, the dense whitening power, and a deterministic noisy quadratic."""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def ref_polar(X: torch.Tensor) -> torch.Tensor:
    U, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return U @ Vh


def ref_neg_power(F: torch.Tensor, step: int, cfg: dict) -> torch.Tensor:
    """(normalized F)^(-alpha) as a dense matrix, as in docs/family.md (the whitening step)."""
    k = F.shape[0]
    Fh = F.clone()
    if cfg["bias_correction"]:
        Fh = Fh * (1.0 / (1.0 - cfg["precond_beta"] ** step))
    if cfg["trace_norm"]:
        Fh = Fh * (k / float(torch.trace(Fh)))
    lam, Q = torch.linalg.eigh(Fh + cfg["eps"] * torch.eye(k, dtype=F64))
    lam = lam + max(0.0, -float(lam.min())) + cfg["eps"]
    return Q @ torch.diag(lam ** (-cfg["alpha"])) @ Q.T


class Problem:
    """A noisy quadratic per matrix: G = (W - W*) H + noise_t, all fp64 and deterministic."""

    def __init__(self, shapes, seed=0, steps=25, noise=0.3):
        g = torch.Generator().manual_seed(seed)
        self.W0 = [torch.randn(m, n, dtype=F64, generator=g) / math.sqrt(n) for m, n in shapes]
        self.Wstar = [torch.randn(m, n, dtype=F64, generator=g) / math.sqrt(n) for m, n in shapes]
        self.H = []
        for _, n in shapes:
            A = torch.randn(n, n, dtype=F64, generator=g)
            self.H.append(A @ A.T / n + 0.1 * torch.eye(n, dtype=F64))
        self.noise = [
            [noise * torch.randn(m, n, dtype=F64, generator=g) for m, n in shapes]
            for _ in range(steps)
        ]

    def grad(self, i, W, t):
        return (W - self.Wstar[i]) @ self.H[i] + self.noise[t][i]


def follow_reference(opt, params, refs, prob: Problem, steps: int, tol: float = 1e-9) -> None:
    """Step the engine `opt` over `params` and one reference per matrix (each with a
    `step(W, G) -> W`) on the same problem; after every step each matrix must sit within `tol`
    of its reference, relative to the distance the reference travelled."""
    W_ref = [W.clone() for W in prob.W0]
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = prob.grad(i, p.detach(), t)
        G_ref = [prob.grad(i, W_ref[i], t) for i in range(len(params))]
        opt.step()
        W_ref = [r.step(W, G) for r, W, G in zip(refs, W_ref, G_ref, strict=True)]
        for i, p in enumerate(params):
            travelled = torch.linalg.norm(W_ref[i] - prob.W0[i])
            err = torch.linalg.norm(p.detach() - W_ref[i]) / travelled
            assert err < tol, (t + 1, i, float(err))
