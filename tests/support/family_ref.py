"""Shared pieces of the family's reference tests (tests/optim/test_*_reference.py): a
deterministic fp64 problem, the runners that step an engine preset beside its dense references,
and dense building blocks written from the spec.

The tests compare the family's named optimizers against independent dense fp64 references of
their ORIGINAL rules.

Each reference (one per test file) is written from the rules in docs/family.md (the papers' and
their released code's rules), not from the engine's step (docs/family.md): one matrix at a time,
full matrices instead of cached `Q diag(lam^-a)` factors, the papers' own bookkeeping (SOAP's
moments stored IN the eigenbasis and rotated / permuted at basis changes, SPlus's basis recomputed
after the update, TNT's explicit inverses, SpecGD's polar factor through `G (G^T G)^+1/2`).
Parameters are fp64, so the engine's state is fp64 and every difference is rounding: the tolerance
(1e-9 of the distance travelled) is far below any real defect, which the sensitivity checks show
moves the weights by > 1e-4 of it.

Well-posedness. SOAP's Adam and SPlus's sign act elementwise IN an eigenbasis, so they are defined
only where that basis is unique: a factor with a repeated eigenvalue (e.g. the zero eigenvalue of
G G^T for a tall 6 x 4 G, whose null space is 2-dimensional) has no unique eigenvectors and any
rotation inside the null space is an equally valid eigh output that changes the update. The first
refresh of both happens on step 1's factor G1 G1^T / G1^T G1, which is rank min(m, n). So they are
compared two-sided on square matrices (both factors full rank from step 1, distinct eigenvalues
for random data) and one-sided on the SHORT side of non-square ones (n x n G^T G of a tall G is full
rank). SOAP's QR refresh carries the initial null-space basis forward forever (one power iteration
from it), so two-sided non-square SOAP has no well-defined trajectory at all; for SPlus, whose eigh
refresh forgets the old basis, a two-sided non-square test compares the increments of the steps
whose basis came from a full-rank factor (W-independent gradients, no decay). Shampoo's and TNT's
inverse roots are matrices, unique for any factor; Shampoo's are first used at precond_start, on
factors of several steps (full rank).
"""

from __future__ import annotations

import math

import torch

F64 = torch.float64


def eye(k: int) -> torch.Tensor:
    return torch.eye(k, dtype=F64)


# ---- a deterministic problem ------------------------------------------------------------------


class Problem:
    """A noisy quadratic per matrix: G = (W - W*) H + noise_t (fp64). `sampled` is a second,
    independent noise for TNT's sampled-label gradient Gs = (W - W*) H + noise'_t."""

    def __init__(self, shapes, seed, steps, noise=0.5):
        g = torch.Generator().manual_seed(seed)
        self.shapes = shapes
        self.W0 = [torch.randn(m, n, dtype=F64, generator=g) / math.sqrt(n) for m, n in shapes]
        self.Wstar = [torch.randn(m, n, dtype=F64, generator=g) / math.sqrt(n) for m, n in shapes]
        self.H = []
        for _, n in shapes:
            A = torch.randn(n, n, dtype=F64, generator=g)
            self.H.append(A @ A.T / n + 0.1 * eye(n))
        self.noise = [
            [noise * torch.randn(m, n, dtype=F64, generator=g) for m, n in shapes]
            for _ in range(steps)
        ]
        self.noise_s = [
            [noise * torch.randn(m, n, dtype=F64, generator=g) for m, n in shapes]
            for _ in range(steps)
        ]

    def grad(self, i, W, t):
        return (W - self.Wstar[i]) @ self.H[i] + self.noise[t][i]

    def sampled_grad(self, i, W, t):
        return (W - self.Wstar[i]) @ self.H[i] + self.noise_s[t][i]


def params_of(prob):
    return [torch.nn.Parameter(W.clone()) for W in prob.W0]


def assert_on_track(p, W_ref, W0, tol, where):
    """||W - W_ref|| <= tol * (distance the reference travelled); exact when it did not move."""
    W = p.detach()
    diff = float(torch.linalg.norm(W - W_ref))
    scale = float(torch.linalg.norm(W_ref - W0))
    assert diff <= tol * scale, (where, diff, scale)


def feed(opt, params, prob, t, fisher):
    """Step t's gradients into the engine's parameters, and its sampled-label ones when `fisher`."""
    for i, p in enumerate(params):
        p.grad = prob.grad(i, p.detach(), t)
    if fisher:
        opt.set_fisher_grads({p: prob.sampled_grad(i, p.detach(), t) for i, p in enumerate(params)})


def run_vs_refs(opt, params, refs, prob, steps, tol=1e-9, fisher=False):
    """Engine and references side by side, each on its own weights; compared after every step."""
    W_ref = [W.clone() for W in prob.W0]
    for t in range(steps):
        feed(opt, params, prob, t, fisher)
        opt.step()
        for i, ref in enumerate(refs):
            G = prob.grad(i, W_ref[i], t)
            W_ref[i] = (
                ref.step(W_ref[i], G, prob.sampled_grad(i, W_ref[i], t))
                if fisher
                else ref.step(W_ref[i], G)
            )
        for i, p in enumerate(params):
            assert_on_track(p, W_ref[i], prob.W0[i], tol, (t + 1, i, prob.shapes[i]))
    return W_ref


def run_refs(refs, prob, steps, fisher=False):
    W = [W.clone() for W in prob.W0]
    for t in range(steps):
        for i, ref in enumerate(refs):
            G = prob.grad(i, W[i], t)
            W[i] = ref.step(W[i], G, prob.sampled_grad(i, W[i], t)) if fisher else ref.step(W[i], G)
    return W


def far_apart(Wa, Wb, W0, rel=1e-4):
    """Two reference trajectories differ by far more than the comparison tolerance."""
    return all(
        float(torch.linalg.norm(a - b)) > rel * float(torch.linalg.norm(b - w))
        for a, b, w in zip(Wa, Wb, W0, strict=True)
    )


def assert_sensitive(run, changes, W0):
    """Each change of a reference's settings (keyword arguments of `run`) moves its trajectory
    far from the unchanged one, so the comparisons with the engine can tell them apart."""
    base = run()
    for change in changes:
        assert far_apart(run(**change), base, W0), change
    return base


# ---- dense building blocks, written from the spec ---------------------------------------------


def inverse_root(F: torch.Tensor, eps: float, p: float) -> torch.Tensor:
    """(F + eps I)^-p as a full matrix, eigenvalues floored at eps (Shampoo's clamp)."""
    lam, Q = torch.linalg.eigh(F + eps * eye(F.shape[0]))
    lam = torch.clamp(lam, min=eps)
    return Q @ torch.diag(lam ** (-p)) @ Q.T


def eigvecs_descending(F: torch.Tensor) -> torch.Tensor:
    """Eigenvectors of a symmetric PSD matrix by SVD (U = V for PSD), descending eigenvalues."""
    U, _, _ = torch.linalg.svd(F)
    return U


def gram_schmidt(A: torch.Tensor) -> torch.Tensor:
    """Orthonormal Q with the span of A's first j columns = span of Q's first j (MGS, twice).
    Column signs may differ from LAPACK's QR; SOAP's and SPlus's updates do not depend on them."""
    Q = A.clone()
    for j in range(Q.shape[1]):
        for _ in range(2):
            for i in range(j):
                Q[:, j] -= (Q[:, i] @ Q[:, j]) * Q[:, i]
        Q[:, j] /= torch.linalg.norm(Q[:, j])
    return Q


def polar_pinv(G: torch.Tensor, rel_tol: float = 1e-12) -> torch.Tensor:
    """U V^T of G's SVD over its non-zero singular values, as G (G^T G)^{+1/2} (on the smaller
    Gram matrix): eigen-pairs of G^T G, eigenvalues below rel_tol * max dropped (their singular
    values are zero)."""
    if G.shape[0] < G.shape[1]:
        return polar_pinv(G.T, rel_tol).T
    lam, V = torch.linalg.eigh(G.T @ G)
    keep = lam > rel_tol * lam.max()
    Vk, sk = V[:, keep], lam[keep].sqrt()
    return G @ Vk @ torch.diag(1.0 / sk) @ Vk.T


def sum_outer_rows(G: torch.Tensor) -> torch.Tensor:
    """G^T G as a sum of outer products of rows (right factor statistic)."""
    S = torch.zeros(G.shape[1], G.shape[1], dtype=F64)
    for row in G:
        S += torch.outer(row, row)
    return S


def sum_outer_cols(G: torch.Tensor) -> torch.Tensor:
    """G G^T as a sum of outer products of columns (left factor statistic)."""
    return sum_outer_rows(G.T)


def uses(sides: str) -> tuple[bool, bool]:
    return sides in ("both", "left"), sides in ("both", "right")


# ---- runners over matrices with per-group sides -----------------------------------------------


def grouped(params, sides_list, **extra):
    return [{"params": [p], "sides": s, **extra} for p, s in zip(params, sides_list, strict=True)]


def run_sided(cls, sided, make_ref, kw, freq, seed, steps):
    """The engine preset `cls` over matrices with per-group sides vs one reference per matrix."""
    prob = Problem([s for s, _ in sided], seed=seed, steps=steps)
    params = params_of(prob)
    opt = cls(grouped(params, [s for _, s in sided]), precond_freq=freq, eps=1e-30, **kw)
    refs = [make_ref(shape, sides, freq) for shape, sides in sided]
    run_vs_refs(opt, params, refs, prob, steps)
