"""The family's named optimizers against independent dense fp64 references of their ORIGINAL rules.

Each reference below is written from the rules in docs/family.md (the papers' and their released
code's rules), not from the engine's step (docs/family.md): one matrix at a time, full matrices
instead of cached `Q diag(lam^-a)` factors, the papers' own bookkeeping (SOAP's moments stored IN
the eigenbasis and rotated / permuted at basis changes, SPlus's basis recomputed after the update,
TNT's explicit inverses, SpecGD's polar factor through `G (G^T G)^+1/2`). Parameters are fp64, so
the engine's state is fp64 and every difference is rounding: the tolerance (1e-9 of the distance
travelled) is far below any real defect, which the sensitivity checks show moves the weights by
> 1e-4 of it.

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

import copy
import math

import pytest
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
        for a, b, w in zip(Wa, Wb, W0)
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


# ---- Shampoo (Distributed Shampoo with Adam grafting) -----------------------------------------


class RefShampoo:
    def __init__(
        self, shape, lr, b1, b2, eps, freq, start, graft_beta2, graft_eps, wd, sides, graft=True
    ):
        m, n = shape
        self.__dict__.update(
            lr=lr,
            b1=b1,
            b2=b2,
            eps=eps,
            freq=freq,
            start=start,
            gb2=graft_beta2,
            geps=graft_eps,
            wd=wd,
            graft=graft,
        )
        self.use_L, self.use_R = uses(sides)
        self.p = 0.25 if sides == "both" else 0.5  # one-sided: exponent -1/2 on the single side
        self.t = 0
        self.L, self.R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
        self.L_inv, self.R_inv = eye(m), eye(n)  # roots start at I
        self.Mb = torch.zeros(m, n, dtype=F64)
        self.V = torch.zeros(m, n, dtype=F64)

    def step(self, W, G):
        self.t += 1
        t = self.t
        if self.use_L:
            self.L = self.b2 * self.L + (1 - self.b2) * sum_outer_cols(G)
        if self.use_R:
            self.R = self.b2 * self.R + (1 - self.b2) * sum_outer_rows(G)
        if (t - 1) % self.freq == 0:
            bc = 1 - self.b2**t
            if self.use_L:
                self.L_inv = inverse_root(self.L / bc, self.eps, self.p)
            if self.use_R:
                self.R_inv = inverse_root(self.R / bc, self.eps, self.p)
        self.Mb = self.b1 * self.Mb + (1 - self.b1) * G
        Mhat = self.Mb / (1 - self.b1**t)
        self.V = self.gb2 * self.V + (1 - self.gb2) * G * G
        adam = Mhat / (torch.sqrt(self.V / (1 - self.gb2**t)) + self.geps)
        if t < self.start:
            P = adam if self.graft else Mhat
        else:
            P = self.L_inv @ Mhat @ self.R_inv
            if self.graft:
                P = P * (torch.linalg.norm(adam) / torch.linalg.norm(P))
        return W * (1 - self.lr * self.wd) - self.lr * P


SHAMPOO = dict(
    lr=0.02,
    momentum=0.9,
    precond_beta=0.95,
    eps=1e-12,
    beta2=0.99,
    adam_eps=1e-8,
    weight_decay=0.05,
)


def ref_shampoo(shape, sides, freq, start, graft=True, **kw):
    c = {**SHAMPOO, **kw}
    return RefShampoo(
        shape,
        c["lr"],
        c["momentum"],
        c["precond_beta"],
        c["eps"],
        freq,
        start,
        c["beta2"],
        c["adam_eps"],
        c["weight_decay"],
        sides,
        graft=graft,
    )


SIDED = [  # (shape, sides)
    ((6, 4), "both"),
    ((4, 6), "both"),
    ((5, 5), "both"),
    ((6, 4), "left"),
    ((4, 6), "right"),
]


def grouped(params, sides_list, **extra):
    return [{"params": [p], "sides": s, **extra} for p, s in zip(params, sides_list)]


class PerSides:
    """One optimizer per `sides` value (the constructor's knob, so derived preset defaults such
    as Shampoo's one-sided exponent follow it), stepped together."""

    def __init__(self, cls, params, sides_list, **kw):
        by: dict[str, list] = {}
        for p, s in zip(params, sides_list):
            by.setdefault(s, []).append(p)
        self.opts = [cls(ps, sides=s, **kw) for s, ps in by.items()]

    def step(self):
        for opt in self.opts:
            opt.step()


@pytest.mark.parametrize("explicit_start", [True, False])
def test_shampoo_matches_dense_shampoo(explicit_start):
    """Adam-grafted Shampoo, refresh every 3 steps, preconditioning from step 4 (before it the
    Adam direction alone; the preset's default precond_start is precond_freq + 1), two- and
    one-sided (one-sided: the preset's exponent 1/4 pre and post, i.e. -1/2 on the single side)."""
    from mousse import Shampoo

    steps, freq, start = 10, 3, 4
    prob = Problem([s for s, _ in SIDED], seed=1, steps=steps)
    params = params_of(prob)
    kw = dict(precond_start=start) if explicit_start else {}
    opt = PerSides(Shampoo, params, [s for _, s in SIDED], precond_freq=freq, **kw, **SHAMPOO)
    refs = [ref_shampoo(shape, sides, freq, start) for shape, sides in SIDED]
    run_vs_refs(opt, params, refs, prob, steps)


def test_shampoo_one_sided_param_group_uses_the_inverse_square_root():
    """Knobs can be set per param group (docs/family.md); a one-sided Shampoo group is still
    Shampoo's one-sided rule (exponent -1/2 on the single side), as with the constructor knob."""
    from mousse import Shampoo

    steps, freq, start = 6, 3, 4
    prob = Problem([s for s, _ in SIDED], seed=1, steps=steps)
    params = params_of(prob)
    opt = Shampoo(
        grouped(params, [s for _, s in SIDED]), precond_freq=freq, precond_start=start, **SHAMPOO
    )
    refs = [ref_shampoo(shape, sides, freq, start) for shape, sides in SIDED]
    run_vs_refs(opt, params, refs, prob, steps)


@pytest.mark.parametrize("freq,start", [(1, 1), (2, 3)])
def test_shampoo_without_graft_matches_dense_shampoo(freq, start):
    """graft="none": L^-1/4 Mb R^-1/4 itself (before precond_start: the momentum alone). eps 1e-6:
    with freq = start = 1, step 1 applies the root of the rank-deficient G1 G1^T of a non-square
    matrix, whose null-space eigenvalues are eps; rounding in that null space is amplified by
    eps^-1/2 one-sided (1e6 at the preset's 1e-12: two dense references then differ by 1e-8 of
    the distance travelled; 1e3 here: 1e-11)."""
    from mousse import Shampoo

    steps = 8
    prob = Problem([s for s, _ in SIDED], seed=2 + freq, steps=steps)
    params = params_of(prob)
    opt = PerSides(
        Shampoo,
        params,
        [s for _, s in SIDED],
        precond_freq=freq,
        precond_start=start,
        graft="none",
        **{**SHAMPOO, "lr": 0.002, "eps": 1e-6},
    )
    refs = [
        ref_shampoo(shape, sides, freq, start, graft=False, lr=0.002, eps=1e-6)
        for shape, sides in SIDED
    ]
    run_vs_refs(opt, params, refs, prob, steps)


def test_shampoo_reference_is_sensitive():
    steps, freq, start = 10, 3, 4
    prob = Problem([s for s, _ in SIDED], seed=1, steps=steps)

    def run(start=start, **kw):
        return run_refs(
            [ref_shampoo(shape, sides, freq, start, **kw) for shape, sides in SIDED], prob, steps
        )

    assert_sensitive(
        run,
        [
            dict(momentum=0.85),
            dict(precond_beta=0.9),
            dict(beta2=0.95),
            dict(start=2),
            dict(graft=False, lr=0.002),
        ],
        prob.W0,
    )


# ---- SOAP ---------------------------------------------------------------------------------------


class RefSOAP:
    """SOAP as its released code keeps it: the first call only builds GG and the (descending)
    eigenbases; Adam moments m, v live IN the eigenbasis; after each update the factors are
    updated and, every `freq` Adam steps, each basis is refreshed by sorting its columns by the
    Rayleigh quotients diag(Q^T GG Q) (v permuted along with them), one power iteration GG Q and
    an orthonormalization; m is rotated into the new basis exactly (back to the original space
    with the old basis, into the new one with the new)."""

    def __init__(self, shape, lr, b1, b2, shampoo_beta, eps, wd, freq, sides, rotate_m=True):
        m, n = shape
        self.__dict__.update(
            lr=lr, b1=b1, b2=b2, sb=shampoo_beta, eps=eps, wd=wd, freq=freq, rotate_m=rotate_m
        )
        self.use_L, self.use_R = uses(sides)
        self.GG_L, self.GG_R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
        self.Q_L, self.Q_R = None, None
        self.k = 0  # Adam steps
        self.m = torch.zeros(m, n, dtype=F64)
        self.v = torch.zeros(m, n, dtype=F64)

    def _update_factors(self, G):
        if self.use_L:
            self.GG_L = self.sb * self.GG_L + (1 - self.sb) * G @ G.T
        if self.use_R:
            self.GG_R = self.sb * self.GG_R + (1 - self.sb) * G.T @ G

    def step(self, W, G):
        m, n = G.shape
        if self.Q_L is None:  # first call: factors and bases only; W unchanged
            self._update_factors(G)
            self.Q_L = eigvecs_descending(self.GG_L) if self.use_L else eye(m)
            self.Q_R = eigvecs_descending(self.GG_R) if self.use_R else eye(n)
            return W
        self.k += 1
        Gt = self.Q_L.T @ G @ self.Q_R
        self.m = self.b1 * self.m + (1 - self.b1) * Gt
        self.v = self.b2 * self.v + (1 - self.b2) * Gt * Gt
        step_size = self.lr * math.sqrt(1 - self.b2**self.k) / (1 - self.b1**self.k)
        W = W - step_size * (self.Q_L @ (self.m / (self.v.sqrt() + self.eps)) @ self.Q_R.T)
        W = W - self.lr * self.wd * W  # decay AFTER the update, on the updated weights
        self._update_factors(G)
        if self.k % self.freq == 0:
            m_orig = self.Q_L @ self.m @ self.Q_R.T
            if self.use_L:
                order = torch.argsort(
                    torch.diag(self.Q_L.T @ self.GG_L @ self.Q_L), descending=True
                )
                self.v = self.v[order, :]
                self.Q_L = gram_schmidt(self.GG_L @ self.Q_L[:, order])
            if self.use_R:
                order = torch.argsort(
                    torch.diag(self.Q_R.T @ self.GG_R @ self.Q_R), descending=True
                )
                self.v = self.v[:, order]
                self.Q_R = gram_schmidt(self.GG_R @ self.Q_R[:, order])
            if self.rotate_m:
                self.m = self.Q_L.T @ m_orig @ self.Q_R
        return W


SOAP_KW = dict(
    lr=0.01, momentum=0.95, beta2=0.95, precond_beta=0.9, adam_eps=1e-8, weight_decay=0.05
)
# Two-sided on square matrices, one-sided on the short side of non-square ones (see the header).
SOAP_SIDED = [
    ((5, 5), "both"),
    ((5, 5), "both"),
    ((6, 4), "right"),
    ((4, 6), "left"),
    ((5, 5), "left"),
]


def ref_soap(shape, sides, freq, **kw):
    c = {**SOAP_KW, **kw}
    return RefSOAP(
        shape,
        c["lr"],
        c["momentum"],
        c["beta2"],
        c["precond_beta"],
        c["adam_eps"],
        c["weight_decay"],
        freq,
        sides,
        rotate_m=c.get("rotate_m", True),
    )


def run_sided(cls, sided, make_ref, kw, freq, seed, steps):
    """The engine preset `cls` over matrices with per-group sides vs one reference per matrix."""
    prob = Problem([s for s, _ in sided], seed=seed, steps=steps)
    params = params_of(prob)
    opt = cls(grouped(params, [s for _, s in sided]), precond_freq=freq, eps=1e-30, **kw)
    refs = [make_ref(shape, sides, freq) for shape, sides in sided]
    run_vs_refs(opt, params, refs, prob, steps)


@pytest.mark.parametrize("freq", [2, 3])
def test_soap_matches_dense_soap(freq):
    """Adam in the eigenbasis, QR refreshes every `freq` Adam steps, decay after the update."""
    from mousse import SOAP

    run_sided(SOAP, SOAP_SIDED, ref_soap, SOAP_KW, freq, seed=10 + freq, steps=11)


def test_soap_first_call_only_builds_the_basis():
    from mousse import SOAP

    prob = Problem([(5, 5), (6, 4)], seed=20, steps=2)
    params = params_of(prob)
    opt = SOAP(
        [{"params": [params[0]]}, {"params": [params[1]], "sides": "right"}],
        precond_freq=2,
        **SOAP_KW,
    )
    for i, p in enumerate(params):
        p.grad = prob.grad(i, p.detach(), 0)
    opt.step()
    for p, W0 in zip(params, prob.W0):
        assert torch.equal(p.detach(), W0)  # no update, no decay
    # ... but the factors and the bases are built (the eigenbasis of step 1's G G^T), and no
    # moment is updated
    G = prob.grad(0, prob.W0[0], 0)
    st = opt.state[params[0]]
    Q = st["Q_L"]
    D = Q.T @ (G @ G.T) @ Q
    assert torch.linalg.norm(D - torch.diag(torch.diagonal(D))) < 1e-10 * torch.linalg.norm(D)
    assert not torch.allclose(Q.abs(), eye(5))
    assert not bool(st["momentum_buffer"].any())
    for i, p in enumerate(params):
        p.grad = prob.grad(i, p.detach(), 1)
    opt.step()
    for p, W0 in zip(params, prob.W0):
        assert not torch.equal(p.detach(), W0)


def test_soap_first_moment_is_rotated_exactly_at_a_basis_change():
    """Across QR refreshes (after every Adam step: precond_freq 1) the engine follows the
    reference that rotates m into each new basis, not one that keeps m's eigenbasis coordinates;
    the second moment is only permuted in both."""
    from mousse import SOAP

    steps, freq = 5, 1
    shapes = [(5, 5), (6, 4)]
    sides = ["both", "right"]
    prob = Problem(shapes, seed=21, steps=steps)
    params = params_of(prob)
    opt = SOAP(grouped(params, sides), precond_freq=freq, eps=1e-30, **SOAP_KW)
    refs = [ref_soap(s, sd, freq) for s, sd in zip(shapes, sides)]
    W_ref = run_vs_refs(opt, params, refs, prob, steps)
    unrotated = run_refs(
        [ref_soap(s, sd, freq, rotate_m=False) for s, sd in zip(shapes, sides)], prob, steps
    )
    assert far_apart(unrotated, W_ref, prob.W0)


def test_soap_reference_is_sensitive():
    steps, freq = 11, 2
    prob = Problem([s for s, _ in SOAP_SIDED], seed=12, steps=steps)

    def run(freq=freq, **kw):
        return run_refs(
            [ref_soap(shape, sides, freq, **kw) for shape, sides in SOAP_SIDED], prob, steps
        )

    assert_sensitive(
        run, [dict(freq=3), dict(precond_beta=0.85), dict(beta2=0.9), dict(momentum=0.9)], prob.W0
    )


# ---- SPlus --------------------------------------------------------------------------------------


class RefSPlus:
    """SPlus: EMA momentum in the original space, U = Q_L sign(Q_L^T M Q_R) Q_R^T with the bases
    of the previous refresh, which happens on step 1 and on every multiple of `freq` (the
    authors' torch and JAX code: `step == 1 or step % freq == 0`) AFTER forming U (so a step
    never sees a basis built from its own gradient); W -= lr 2/(m+n) U; iterate average; then
    decay scaled the same way. `fresh=True` is the wrong variant that refreshes before U."""

    def __init__(self, shape, lr, b1, b2, rate, wd, freq, sides, fresh=False):
        m, n = shape
        self.__dict__.update(lr=lr, b1=b1, b2=b2, rate=rate, wd=wd, freq=freq, fresh=fresh)
        self.use_L, self.use_R = uses(sides)
        self.t = 0
        self.M = torch.zeros(m, n, dtype=F64)
        self.L, self.R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
        self.Q_L, self.Q_R = eye(m), eye(n)
        self.ema = torch.zeros(m, n, dtype=F64)

    def _refresh(self):
        if self.use_L:
            self.Q_L = eigvecs_descending(self.L)
        if self.use_R:
            self.Q_R = eigvecs_descending(self.R)

    def step(self, W, G):
        m, n = G.shape
        self.t += 1
        self.M = self.b1 * self.M + (1 - self.b1) * G
        if self.use_L:
            self.L = self.b2 * self.L + (1 - self.b2) * G @ G.T
        if self.use_R:
            self.R = self.b2 * self.R + (1 - self.b2) * G.T @ G
        due = self.t == 1 or self.t % self.freq == 0
        if due and self.fresh:
            self._refresh()
        U = self.Q_L @ torch.sign(self.Q_L.T @ self.M @ self.Q_R) @ self.Q_R.T
        if due and not self.fresh:
            self._refresh()
        s = 2.0 / (m + n)
        W = W - self.lr * s * U
        self.ema = self.ema + (1 - self.rate) * (W - self.ema)
        return W * (1 - self.lr * s * self.wd)

    def averaged(self):
        return self.ema / (1 - self.rate**self.t)


SPLUS_KW = dict(lr=0.05, momentum=0.9, precond_beta=0.99, weight_decay=0.1, average_rate=0.9)
SPLUS_SIDED = [
    ((5, 5), "both"),
    ((5, 5), "both"),
    ((6, 4), "right"),
    ((4, 6), "left"),
    ((5, 5), "right"),
]


def ref_splus(shape, sides, freq, **kw):
    c = {**SPLUS_KW, **kw}
    return RefSPlus(
        shape,
        c["lr"],
        c["momentum"],
        c["precond_beta"],
        c["average_rate"],
        c["weight_decay"],
        freq,
        sides,
        fresh=c.get("fresh", False),
    )


@pytest.mark.parametrize("freq", [1, 3, 4])
def test_splus_matches_dense_splus(freq):
    from mousse import SPlus

    run_sided(SPlus, SPLUS_SIDED, ref_splus, SPLUS_KW, freq, seed=30 + freq, steps=9)


def test_refresh_schedules_offset_and_multiples():
    """'offset' (the engine's default) refreshes on 1, F+1, 2F+1; 'multiples' (SPlus) on 1, F,
    2F; refresh_warmup adds every statistics step up to it, under either."""
    from mousse.optim.knobs import DEFAULTS
    from mousse.optim.step import group_refresh_due

    def due(**knobs):
        k = {**DEFAULTS, **knobs}
        return [t for t in range(1, 13) if group_refresh_due(k, t)]

    assert due(precond_freq=4) == [1, 5, 9]
    assert due(precond_freq=4, refresh_schedule="multiples") == [1, 4, 8, 12]
    assert due(precond_freq=1, refresh_schedule="multiples") == list(range(1, 13))
    assert due(precond_freq=4, refresh_schedule="multiples", refresh_warmup=3) == [
        1,
        2,
        3,
        4,
        8,
        12,
    ]


def test_splus_with_a_stale_basis_uses_the_basis_computed_after_the_previous_update():
    """Refresh every step: step t's sign is taken in the eigenbasis of the factors through G_{t-1}
    (engine = stale reference), not of those through G_t (far from the fresh-basis variant)."""
    from mousse import SPlus

    steps, freq = 6, 1
    shapes, sides = [(5, 5), (6, 4)], ["both", "right"]
    prob = Problem(shapes, seed=33, steps=steps)
    params = params_of(prob)
    opt = SPlus(grouped(params, sides), precond_freq=freq, eps=1e-30, **SPLUS_KW)
    W_ref = run_vs_refs(
        opt, params, [ref_splus(s, sd, freq) for s, sd in zip(shapes, sides)], prob, steps
    )
    fresh = run_refs(
        [ref_splus(s, sd, freq, fresh=True) for s, sd in zip(shapes, sides)], prob, steps
    )
    assert far_apart(fresh, W_ref, prob.W0)


def test_splus_two_sided_non_square_steps_with_a_full_rank_basis():
    """Two-sided on 6 x 4 and 4 x 6 with gradients that do not depend on W and no decay: each
    step's increment is -lr 2/(m+n) U_t, a function of the gradients alone. The refresh after
    step 1 sees a rank-4 6 x 6 factor (null-space eigenvectors arbitrary: steps 2 and 3 are
    ill-posed); the refreshes after steps 3, 5, 7 see full-rank factors, so steps 4-8 compare."""
    from mousse import SPlus

    steps, freq = 8, 2
    shapes = [(6, 4), (4, 6)]
    g = torch.Generator().manual_seed(34)
    grads = [[torch.randn(s, dtype=F64, generator=g) for s in shapes] for _ in range(steps)]
    W0 = [torch.randn(s, dtype=F64, generator=g) for s in shapes]
    params = [torch.nn.Parameter(W.clone()) for W in W0]
    kw = {**SPLUS_KW, "weight_decay": 0.0}
    opt = SPlus(params, precond_freq=freq, eps=1e-30, sides="both", **kw)
    refs = [ref_splus(s, "both", freq, **kw) for s in shapes]
    checked = 0
    for t in range(steps):
        before = [p.detach().clone() for p in params]
        for p, G in zip(params, grads[t]):
            p.grad = G.clone()
        opt.step()
        for i, (p, ref) in enumerate(zip(params, refs)):
            d_ref = ref.step(before[i], grads[t][i]) - before[i]
            if t + 1 >= 4:
                d = p.detach() - before[i]
                err = torch.linalg.norm(d - d_ref) / torch.linalg.norm(d_ref)
                assert float(err) <= 1e-9, (t + 1, i, float(err))
                checked += 1
    assert checked == 2 * (steps - 3)


def test_splus_averaged_weights_are_the_bias_corrected_iterate_average():
    from mousse import SPlus

    steps, freq = 5, 2
    shapes, sides = [(5, 5), (6, 4)], ["both", "right"]
    prob = Problem(shapes, seed=35, steps=steps)
    params = params_of(prob)
    opt = SPlus(grouped(params, sides), precond_freq=freq, eps=1e-30, **SPLUS_KW)
    refs = [ref_splus(s, sd, freq) for s, sd in zip(shapes, sides)]
    run_vs_refs(opt, params, refs, prob, steps)
    raw = [p.detach().clone() for p in params]
    with opt.averaged_weights():
        for p, ref in zip(params, refs):
            avg = ref.averaged()
            assert not torch.allclose(avg, p.detach().new_zeros(avg.shape))
            err = torch.linalg.norm(p.detach() - avg) / torch.linalg.norm(avg)
            assert err < 1e-10, float(err)
            # not the raw weights, and not the uncorrected average
            assert torch.linalg.norm(p.detach() - ref.ema) > 1e-3 * torch.linalg.norm(avg)
    for p, W in zip(params, raw):
        assert torch.equal(p.detach(), W)  # bitwise restored
    # training continues from the raw weights: one more step still matches the reference
    for i, p in enumerate(params):
        p.grad = prob.grad(i, p.detach(), steps - 1)
    opt.step()
    for i, (p, ref) in enumerate(zip(params, refs)):
        W_next = ref.step(raw[i], prob.grad(i, raw[i], steps - 1))
        assert_on_track(p, W_next, prob.W0[i], 1e-9, i)


def test_splus_averaged_weights_restores_after_an_exception():
    from mousse import SPlus

    prob = Problem([(5, 5)], seed=36, steps=3)
    params = params_of(prob)
    opt = SPlus(params, precond_freq=2, **SPLUS_KW)
    for t in range(3):
        params[0].grad = prob.grad(0, params[0].detach(), t)
        opt.step()
    raw = params[0].detach().clone()
    with pytest.raises(KeyError):
        with opt.averaged_weights():
            assert not torch.equal(params[0].detach(), raw)
            raise KeyError("evaluation failed")
    assert torch.equal(params[0].detach(), raw)


def test_splus_reference_is_sensitive():
    steps, freq = 9, 3
    prob = Problem([s for s, _ in SPLUS_SIDED], seed=33, steps=steps)

    def run(freq=freq, **kw):
        return run_refs(
            [ref_splus(shape, sides, freq, **kw) for shape, sides in SPLUS_SIDED], prob, steps
        )

    assert_sensitive(
        run,
        [dict(freq=2), dict(precond_beta=0.9), dict(fresh=True), dict(weight_decay=0.5)],
        prob.W0,
    )


# ---- TNT ----------------------------------------------------------------------------------------


class RefTNT:
    """TNT: statistics of the sampled-label gradient every T1 steps (EMA 0.9), bias-corrected by
    1 - 0.9^k (the engine's warm-start stand-in), same-trace normalized with tr(H_L); inverses
    (Lh + eps I)^-1 by torch.linalg.inv every T1 steps during the first T2 steps, then every T2;
    heavy-ball momentum of the ordinary gradient."""

    def __init__(self, shape, lr, mu, eps, T1, T2, wd, beta=0.9):
        m, n = shape
        self.__dict__.update(lr=lr, mu=mu, eps=eps, T1=T1, T2=T2, wd=wd, beta=beta)
        self.t, self.k = 0, 0
        self.HL, self.HR = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
        self.PL, self.PR = eye(m), eye(n)
        self.M = torch.zeros(m, n, dtype=F64)

    def step(self, W, G, Gs):
        m, n = G.shape
        self.t += 1
        t = self.t
        stat = (t - 1) % self.T1 == 0
        if stat:
            self.k += 1
            self.HL = self.beta * self.HL + (1 - self.beta) * sum_outer_cols(Gs)
            self.HR = self.beta * self.HR + (1 - self.beta) * sum_outer_rows(Gs)
        if (t - 1) % self.T2 == 0 or (t <= self.T2 and stat):
            bc = 1 - self.beta**self.k
            HL, HR = self.HL / bc, self.HR / bc
            c = math.sqrt(float(torch.trace(HL)) / (m * n))
            Lh, Rh = HL / (c * n), HR / (c * m)
            self.PL = torch.linalg.inv(Lh + self.eps * eye(m))
            self.PR = torch.linalg.inv(Rh + self.eps * eye(n))
        self.M = self.mu * self.M + G
        return W * (1 - self.lr * self.wd) - self.lr * self.PL @ self.M @ self.PR


TNT_KW = dict(lr=0.003, momentum=0.9, eps=0.05, weight_decay=0.02)
TNT_SHAPES = [(6, 4), (4, 6), (5, 5), (5, 5)]


def ref_tnt(shape, T1, T2, **kw):
    c = {**TNT_KW, **kw}
    return RefTNT(
        shape,
        c["lr"],
        c["momentum"],
        c["eps"],
        T1,
        T2,
        c["weight_decay"],
        beta=c.get("precond_beta", 0.9),
    )


@pytest.mark.parametrize("T1,T2", [(1, 3), (2, 4)])
def test_tnt_matches_dense_tnt(T1, T2):
    from mousse import TNT

    steps = 10
    prob = Problem(TNT_SHAPES, seed=40 + T1, steps=steps)
    params = params_of(prob)
    opt = TNT(params, stat_freq=T1, precond_freq=T2, refresh_warmup=T2, precond_beta=0.9, **TNT_KW)
    refs = [ref_tnt(s, T1, T2) for s in TNT_SHAPES]
    W_ref = [W.clone() for W in prob.W0]
    for t in range(steps):
        stat_step = t % T1 == 0
        listed = list(opt.fisher_params())
        for p in params:
            assert any(q is p for q in listed) == stat_step, (t + 1, stat_step)
        feed(opt, params, prob, t, stat_step)
        opt.step()
        for i, ref in enumerate(refs):
            W_ref[i] = ref.step(
                W_ref[i], prob.grad(i, W_ref[i], t), prob.sampled_grad(i, W_ref[i], t)
            )
            assert_on_track(params[i], W_ref[i], prob.W0[i], 1e-9, (t + 1, i))


def test_tnt_sampled_fisher_without_fisher_grads_is_a_clear_error():
    from mousse import TNT

    p = torch.nn.Parameter(torch.randn(5, 4, dtype=F64))
    opt = TNT([p], fisher="sampled", **TNT_KW)
    p.grad = torch.randn(5, 4, dtype=F64)
    with pytest.raises((RuntimeError, ValueError), match="(?i)fisher"):
        opt.step()


def test_tnt_reference_is_sensitive():
    steps, T1, T2 = 10, 1, 3
    prob = Problem(TNT_SHAPES, seed=41, steps=steps)

    def run(T1=T1, T2=T2, **kw):
        return run_refs([ref_tnt(s, T1, T2, **kw) for s in TNT_SHAPES], prob, steps, fisher=True)

    base = assert_sensitive(
        run, [dict(T2=4), dict(eps=0.06), dict(momentum=0.85), dict(precond_beta=0.8)], prob.W0
    )
    # the sampled gradient matters: the empirical Fisher (Gs = G) is another trajectory
    empirical = [
        RefTNT(s, TNT_KW["lr"], 0.9, TNT_KW["eps"], T1, T2, TNT_KW["weight_decay"])
        for s in TNT_SHAPES
    ]
    W = [W.clone() for W in prob.W0]
    for t in range(steps):
        for i, ref in enumerate(empirical):
            G = prob.grad(i, W[i], t)
            W[i] = ref.step(W[i], G, G)
    assert far_apart(W, base, prob.W0)


# ---- SpecGD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_specgd_is_the_polar_factor_of_the_raw_gradient(shape):
    """W <- W - lr U V^T of the raw gradient; on rank-2 gradients the zero singular directions
    are dropped (the update has rank 2, all its non-zero singular values lr)."""
    from mousse import SpecGD

    m, n = shape
    g = torch.Generator().manual_seed(50 + m)
    W0 = torch.randn(m, n, dtype=F64, generator=g)
    p = torch.nn.Parameter(W0.clone())
    lr = 0.1
    opt = SpecGD([p], lr=lr, momentum=0.0, weight_decay=0.0)
    W = W0.clone()
    for t in range(6):
        rank = 2 if t % 2 == 0 else min(m, n)
        G = torch.randn(m, rank, dtype=F64, generator=g) @ torch.randn(
            rank, n, dtype=F64, generator=g
        )
        p.grad = G.clone()
        before = p.detach().clone()
        opt.step()
        W = W - lr * polar_pinv(G)
        assert_on_track(p, W, W0, 1e-9, t + 1)
        S = torch.linalg.svdvals(before - p.detach())
        torch.testing.assert_close(S[:rank], torch.full((rank,), lr, dtype=F64))
        assert all(float(x) < 1e-12 for x in S[rank:])


# ---- Muon and the family's reductions -----------------------------------------------------------


@pytest.mark.parametrize(
    "sides,freq,style,ns",
    [
        ("both", 2, "nesterov", "muon"),
        ("left", 1, "heavy_ball", "you5"),
        ("right", 3, "ema", "polar_express"),
    ],
)
def test_alpha_zero_newton_schulz_is_muon(sides, freq, style, ns):
    """alpha = 0: X = Q_L^T M Q_R, and NS commutes with the rotations, so U = NS(M)."""
    from mousse import KroneckerOptimizer, Muon

    steps = 7
    shapes = [(6, 4), (4, 6), (5, 5), (5, 5)]
    prob = Problem(shapes, seed=60 + freq, steps=steps)
    pa, pb = params_of(prob), params_of(prob)
    common = dict(
        lr=0.02,
        momentum=0.9,
        momentum_style=style,
        weight_decay=0.05,
        ns=ns,
        ns_steps=5,
        ns_dtype=F64,
        lr_scale="muon",
    )
    kron = KroneckerOptimizer(
        pa,
        alpha=0.0,
        post_alpha=0.0,
        sides=sides,
        precond_freq=freq,
        orthogonalizer="newton_schulz",
        graft="orthogonalizer",
        factor_norm="trace",
        eps=1e-5,
        eig_floor="shift",
        **common,
    )
    muon = Muon(pb, **common)
    for t in range(steps):
        for i in range(len(shapes)):
            pa[i].grad = prob.grad(i, pa[i].detach(), t)
            pb[i].grad = prob.grad(i, pb[i].detach(), t)
        kron.step()
        muon.step()
        for a, b, W0 in zip(pa, pb, prob.W0):
            assert_on_track(a, b.detach(), W0, 1e-10, t + 1)


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_identity_orthogonalizer_at_one_eighth_is_the_shampoo_closed_form(shape):
    """identity, alpha = post_alpha = 1/8, no trace norm, no graft, refresh every step, no
    momentum: dW = -lr (L + eps I)^-1/4 G (R + eps I)^-1/4 with L, R the bias-corrected EMAs."""
    from mousse import KroneckerOptimizer

    m, n = shape
    b, eps, lr = 0.9, 1e-10, 0.01
    g = torch.Generator().manual_seed(70 + m)
    p = torch.nn.Parameter(torch.randn(m, n, dtype=F64, generator=g))
    opt = KroneckerOptimizer(
        [p],
        lr=lr,
        momentum=0.0,
        momentum_style="heavy_ball",
        weight_decay=0.0,
        alpha=0.125,
        post_alpha=0.125,
        sides="both",
        orthogonalizer="identity",
        factor_norm="none",
        graft="none",
        eps=eps,
        eig_floor="clamp",
        precond_freq=1,
        precond_beta=b,
        bias_correction=True,
        lr_scale="none",
    )
    L, R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
    for t in range(1, 6):
        G = torch.randn(m, n, dtype=F64, generator=g)
        L = b * L + (1 - b) * G @ G.T
        R = b * R + (1 - b) * G.T @ G
        before = p.detach().clone()
        p.grad = G
        opt.step()
        bc = 1 - b**t
        expected = -lr * inverse_root(L / bc, eps, 0.25) @ G @ inverse_root(R / bc, eps, 0.25)
        dW = p.detach() - before
        err = torch.linalg.norm(dW - expected) / torch.linalg.norm(expected)
        assert float(err) <= 1e-9, (t, float(err))


def test_sign_orthogonalizer_without_whitening_is_signsgd_of_the_momentum():
    from mousse import KroneckerOptimizer

    shapes = [(6, 4), (5, 5)]
    steps, lr, mu, wd = 5, 0.01, 0.9, 0.1
    prob = Problem(shapes, seed=80, steps=steps)
    params = params_of(prob)
    opt = KroneckerOptimizer(
        params,
        lr=lr,
        momentum=mu,
        momentum_style="heavy_ball",
        weight_decay=wd,
        weight_decay_style="decoupled",
        alpha=0.0,
        sides="none",
        orthogonalizer="sign",
        graft="none",
        lr_scale="none",
    )
    M = [torch.zeros(s, dtype=F64) for s in shapes]
    W = [W.clone() for W in prob.W0]
    for t in range(steps):
        for i, p in enumerate(params):
            p.grad = prob.grad(i, p.detach(), t)
        opt.step()
        for i in range(len(shapes)):
            M[i] = mu * M[i] + prob.grad(i, W[i], t)
            W[i] = W[i] * (1 - lr * wd) - lr * torch.sign(M[i])
            assert_on_track(params[i], W[i], prob.W0[i], 1e-12, (t + 1, i))


# ---- state_dict round trip ----------------------------------------------------------------------

ROUND_TRIP = {
    "Mousse": dict(precond_freq=2),
    "Muon": dict(),
    "Shampoo": dict(precond_freq=2, precond_start=3),
    "SOAP": dict(precond_freq=2),
    "SPlus": dict(precond_freq=2, average_rate=0.9),
    "TNT": dict(precond_freq=3, refresh_warmup=3),
    "SpecGD": dict(momentum=0.5),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP))
def test_state_dict_round_trip_is_bitwise(name):
    """k steps, save, load into a fresh optimizer on a copy of the weights, more steps on both:
    the weights (and SPlus's averaged weights) stay bitwise equal."""
    import mousse

    cls = getattr(mousse, name)
    shapes = [(5, 5), (5, 5), (6, 4), (4, 6)]
    before, after = 3, 4
    prob = Problem(shapes, seed=90, steps=before + after)
    pa = params_of(prob)
    kw = dict(ROUND_TRIP[name], lr=0.01)
    if name in ("Mousse", "Muon"):
        kw["ns_dtype"] = F64
    opt = cls(pa, **kw)
    fisher = name == "TNT"

    def step(opt, params, t):
        for i, p in enumerate(params):
            p.grad = prob.grad(i, p.detach(), t)
        if fisher and list(opt.fisher_params()):
            opt.set_fisher_grads(
                {p: prob.sampled_grad(i, p.detach(), t) for i, p in enumerate(params)}
            )
        opt.step()

    for t in range(before):
        step(opt, pa, t)
    saved = copy.deepcopy(opt.state_dict())
    pb = [torch.nn.Parameter(p.detach().clone()) for p in pa]
    fresh = cls(pb, **kw)
    fresh.load_state_dict(saved)
    for t in range(before, before + after):
        step(opt, pa, t)
        step(fresh, pb, t)
        for a, b in zip(pa, pb):
            assert torch.equal(a.detach(), b.detach()), (name, t + 1)
        assert not any(torch.equal(a.detach(), W0) for a, W0 in zip(pa, prob.W0))
    if name == "SPlus":
        with opt.averaged_weights(), fresh.averaged_weights():
            for a, b in zip(pa, pb):
                assert torch.equal(a.detach(), b.detach())
