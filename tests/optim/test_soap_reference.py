"""SOAP against its dense fp64 reference (moments stored in the eigenbasis).

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import math

import pytest
import torch
from support.family_ref import (
    F64,
    Problem,
    assert_sensitive,
    eigvecs_descending,
    eye,
    far_apart,
    gram_schmidt,
    grouped,
    params_of,
    run_refs,
    run_sided,
    run_vs_refs,
    uses,
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
    for p, W0 in zip(params, prob.W0, strict=True):
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
    for p, W0 in zip(params, prob.W0, strict=True):
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
    refs = [ref_soap(s, sd, freq) for s, sd in zip(shapes, sides, strict=True)]
    W_ref = run_vs_refs(opt, params, refs, prob, steps)
    unrotated = run_refs(
        [ref_soap(s, sd, freq, rotate_m=False) for s, sd in zip(shapes, sides, strict=True)],
        prob,
        steps,
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
