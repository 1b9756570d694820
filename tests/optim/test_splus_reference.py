"""SPlus against its dense fp64 reference (basis recomputed after the update).

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import pytest
import torch
from support.family_ref import (
    F64,
    Problem,
    assert_on_track,
    assert_sensitive,
    eigvecs_descending,
    eye,
    far_apart,
    grouped,
    params_of,
    run_refs,
    run_sided,
    run_vs_refs,
    uses,
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
    from mousse.optim.knobs import KNOB_DEFAULTS
    from mousse.optim.step import RefreshKnobs

    def due(**knobs):
        k = {**KNOB_DEFAULTS, **knobs}
        return [t for t in range(1, 13) if RefreshKnobs.of(k).due(t)]

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
        opt,
        params,
        [ref_splus(s, sd, freq) for s, sd in zip(shapes, sides, strict=True)],
        prob,
        steps,
    )
    fresh = run_refs(
        [ref_splus(s, sd, freq, fresh=True) for s, sd in zip(shapes, sides, strict=True)],
        prob,
        steps,
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
        for p, G in zip(params, grads[t], strict=True):
            p.grad = G.clone()
        opt.step()
        for i, (p, ref) in enumerate(zip(params, refs, strict=True)):
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
    refs = [ref_splus(s, sd, freq) for s, sd in zip(shapes, sides, strict=True)]
    run_vs_refs(opt, params, refs, prob, steps)
    raw = [p.detach().clone() for p in params]
    with opt.averaged_weights():
        for p, ref in zip(params, refs, strict=True):
            avg = ref.averaged()
            assert not torch.allclose(avg, p.detach().new_zeros(avg.shape))
            err = torch.linalg.norm(p.detach() - avg) / torch.linalg.norm(avg)
            assert err < 1e-10, float(err)
            # not the raw weights, and not the uncorrected average
            assert torch.linalg.norm(p.detach() - ref.ema) > 1e-3 * torch.linalg.norm(avg)
    for p, W in zip(params, raw, strict=True):
        assert torch.equal(p.detach(), W)  # bitwise restored
    # training continues from the raw weights: one more step still matches the reference
    for i, p in enumerate(params):
        p.grad = prob.grad(i, p.detach(), steps - 1)
    opt.step()
    for i, (p, ref) in enumerate(zip(params, refs, strict=True)):
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
    with pytest.raises(KeyError), opt.averaged_weights():
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
