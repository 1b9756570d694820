"""The warm-started QR refresh (`refresh="qr"`) and the cached whitening matrices."""

from __future__ import annotations

import pytest
import torch

import mousse.optim.precondition as pc
from mousse import Mousse

F64 = torch.float64


def spd(k: int, seed: int = 0, spread: float = 2.0) -> tuple[torch.Tensor, torch.Tensor]:
    """A (1, k, k) SPD matrix with eigenvalues spread**-i (mean about 1/k of the top) and its
    random eigenbasis."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(k, k, generator=g, dtype=F64))
    lam = spread ** -torch.arange(k, dtype=F64)
    return ((Q * lam) @ Q.T)[None], lam


def test_qr_refreshes_converge_to_the_eigh_pair():
    k, eps = 12, 1e-5
    F, _ = spd(k)
    lam_ref, Q_ref = pc.refresh(
        F, torch.ones(1, k, dtype=F64), torch.eye(k, dtype=F64)[None], eps, F64
    )[:2]
    # warm start from the eigenbasis of another matrix (as after a real refresh), in eigh's order
    _, Q = torch.linalg.eigh(spd(k, seed=1)[0])
    lam = torch.ones(1, k, dtype=F64)
    for _ in range(80):
        lam, Q, failed, _ = pc.refresh(F, lam, Q, eps, F64, method="qr")
        assert not failed.any()
    overlap = (Q[0].T @ Q_ref[0]).abs()  # a permutation matrix when the bases agree up to signs
    match = overlap.argmax(dim=1)
    assert sorted(match.tolist()) == list(range(k))
    torch.testing.assert_close(overlap, torch.eye(k, dtype=F64)[match], atol=1e-8, rtol=0)
    torch.testing.assert_close(lam[0], lam_ref[0, match], atol=1e-10, rtol=1e-8)
    assert torch.all(lam[0, :-1] >= lam[0, 1:])  # descending, the order the warm start keeps
    torch.testing.assert_close(Q.mT @ Q, torch.eye(k, dtype=F64)[None], atol=1e-12, rtol=0)


def test_qr_keeps_the_eps_floor_of_eigh():
    """A rank-deficient factor: eigenvalue estimates are floored exactly like eigh's (>= eps)."""
    g = torch.Generator().manual_seed(0)
    G = torch.randn(1, 8, 3, generator=g, dtype=F64)
    F, eps = G @ G.mT, 1e-5
    lam, Q = pc.refresh(F, torch.ones(1, 8, dtype=F64), torch.eye(8, dtype=F64)[None], eps, F64)[:2]
    for _ in range(5):
        lam, Q = pc.refresh(F, lam, Q, eps, F64, method="qr")[:2]
    assert lam.min() >= eps
    torch.testing.assert_close(
        lam.sort().values,
        torch.linalg.eigvalsh(F + eps * torch.eye(8, dtype=F64)) + eps,
        atol=1e-9,
        rtol=1e-9,
    )


def test_non_finite_qr_falls_back_to_eigh(monkeypatch):
    F, _ = spd(6)
    prev = torch.ones(1, 6, dtype=F64), torch.eye(6, dtype=F64)[None]
    expected = pc.refresh(F, *prev, 1e-5, F64)
    monkeypatch.setattr(
        pc, "_qr_floored", lambda F, Q, eps, floor: (F[..., 0] * torch.nan, Q, None)
    )
    lam, Q, failed, _ = pc.refresh(F, *prev, 1e-5, F64, method="qr")
    assert torch.equal(lam, expected[0]) and torch.equal(Q, expected[1]) and not failed.any()


def make(shapes, seed=0, lr=0.02, **kw):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    return params, Mousse(params, lr=lr, **kw)


def grads(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


SHAPES = [(12, 8), (12, 8), (6, 10)]


def test_step_one_is_eigh_and_later_refreshes_are_qr(monkeypatch):
    calls = []
    monkeypatch.setattr(pc, "eigh", lambda A: calls.append(A.shape) or torch.linalg.eigh(A))
    p_qr, opt_qr = make(SHAPES, precond_freq=1, refresh="qr")
    p_eigh, opt_eigh = make(SHAPES, precond_freq=1)
    for opt, params in ((opt_qr, p_qr), (opt_eigh, p_eigh)):
        grads(params, 1)
        opt.step()
    for a, b in zip(p_qr, p_eigh, strict=True):  # identical first step: both refreshed by eigh
        assert torch.equal(a, b)
    for a, b in zip(p_qr, p_eigh, strict=True):
        assert all(torch.equal(v, opt_eigh.state[b][k]) for k, v in opt_qr.state[a].items())
    calls.clear()
    for step in (2, 3):
        grads(p_qr, step)
        opt_qr.step()
    assert calls == []  # no eigh after step 1
    assert not all(torch.equal(a, b) for a, b in zip(p_qr, p_eigh, strict=True))


def quadratic(seed=0):
    """Least squares ||W A - B||^2 for two weight shapes, with an ill-conditioned A."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(10, 64, generator=g) * torch.logspace(0, -1.5, 10)[:, None]
    return A, [torch.randn(s[0], 10, generator=g) @ A for s in SHAPES]


def loss_of(params, A, targets):
    return sum(((p @ A - t) ** 2).mean() for p, t in zip(params, targets, strict=True))


def train(opt, params, A, targets, steps):
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_of(params, A, targets)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return float(loss_of(params, A, targets))


def test_qr_trains_stays_finite_and_round_trips_bit_exact():
    A, targets = quadratic()
    knobs = dict(lr=0.3, precond_freq=3, refresh="qr", weight_decay=0)
    params, opt = make([(s[0], 10) for s in SHAPES], **knobs)
    with torch.no_grad():
        start = float(loss_of(params, A, targets))
    mid = train(opt, params, A, targets, 40)
    assert mid < 0.5 * start
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = Mousse(twin, **knobs)
    opt2.load_state_dict(opt.state_dict())
    end, end2 = train(opt, params, A, targets, 10), train(opt2, twin, A, targets, 10)
    assert end == end2 and end < mid
    for p, q in zip(params, twin, strict=True):
        assert torch.equal(p, q) and torch.isfinite(p).all()
        assert opt.state[p].keys() == opt2.state[q].keys()
        assert all(torch.equal(v, opt2.state[q][k]) for k, v in opt.state[p].items())
        assert not any(k.startswith("P_") for k in opt.state[p])  # cached P is never saved


def test_cached_whitening_follows_alpha_changes():
    """Changing alpha mid-run recomputes the cached P: same result as a rebuilt optimizer."""
    p1, opt1 = make(SHAPES, precond_freq=4)
    p2, opt2 = make(SHAPES, precond_freq=4)
    for step in range(1, 7):
        for params, opt in ((p1, opt1), (p2, opt2)):
            grads(params, step)
            opt.step()
    opt1.param_groups[0]["alpha"] = 0.25
    opt3 = Mousse(p2, lr=0.02, precond_freq=4)
    opt3.load_state_dict(opt2.state_dict())
    opt3.param_groups[0]["alpha"] = 0.25
    for step in (7, 8):  # no refresh due: only the cache carries the new alpha
        for params, opt in ((p1, opt1), (p2, opt3)):
            grads(params, step)
            opt.step()
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


def test_invalid_refresh_is_rejected():
    with pytest.raises(ValueError, match="refresh='svd'"):
        Mousse([torch.nn.Parameter(torch.zeros(3, 3))], refresh="svd")
