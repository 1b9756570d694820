"""TNT against its dense fp64 reference (explicit inverses of the Fisher factors).

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import math

import pytest
import torch
from support.family_ref import (
    F64,
    Problem,
    assert_on_track,
    assert_sensitive,
    eye,
    far_apart,
    feed,
    params_of,
    run_refs,
    sum_outer_cols,
    sum_outer_rows,
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
    with pytest.raises((RuntimeError, ValueError), match=r"(?i)fisher"):
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
