"""Shampoo (Distributed Shampoo with Adam grafting) against its dense fp64 reference.

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import pytest
import torch
from support.family_ref import (
    F64,
    Problem,
    assert_sensitive,
    eye,
    grouped,
    inverse_root,
    params_of,
    run_refs,
    run_vs_refs,
    sum_outer_cols,
    sum_outer_rows,
    uses,
)

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


class PerSides:
    """One optimizer per `sides` value (the constructor's knob, so derived preset defaults such
    as Shampoo's one-sided exponent follow it), stepped together."""

    def __init__(self, cls, params, sides_list, **kw):
        by: dict[str, list] = {}
        for p, s in zip(params, sides_list, strict=True):
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
