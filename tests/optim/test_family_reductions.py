"""Muon and the family's reductions: knob settings under which the engine is a known rule.

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import pytest
import torch
from support.family_ref import F64, Problem, assert_on_track, inverse_root, params_of

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
        for a, b, W0 in zip(pa, pb, prob.W0, strict=True):
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
