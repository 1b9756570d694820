"""Refreshes off the step's critical path: delayed (`refresh_delay`), staggered
(`refresh_schedule="staggered"`), on the host (`refresh_device`), and without an
eigendecomposition (`refresh="root"`)."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from support.mousse_ref import Problem, follow_reference, ref_neg_power, ref_polar

import mousse.optim.precondition as pc
import mousse.optim.step as step_mod
from mousse import Mousse
from mousse.optim.refresher import refresh_on_host, stagger_phases

F64 = torch.float64


# ---- an independent reference: Mousse whose refreshes are used late, each matrix at its phase --


class RefDelayed:
    """One matrix, fp64, from the definition: a refresh due at step s (1 + phase + jF, or step 1)
    is computed from the statistics after step s's update and used from step s + delay on (the
    first at once); heavy-ball momentum (or Nesterov's G + mu M, the CPU presets' rule), both
    sides, exact polar factor, grafting, decoupled weight decay, spectral lr scale."""

    def __init__(self, shape, cfg, phase=0):
        m, n = shape
        self.cfg, self.phase, self.t = cfg, phase, 0
        self.M = torch.zeros(m, n, dtype=F64)
        self.L, self.R = torch.zeros(m, m, dtype=F64), torch.zeros(n, n, dtype=F64)
        self.PL, self.PR = torch.eye(m, dtype=F64), torch.eye(n, dtype=F64)
        self.queue = []  # (step used from, PL, PR)

    def step(self, W, G):
        c = self.cfg
        self.t += 1
        for item in [q for q in self.queue if q[0] == self.t]:
            _, self.PL, self.PR = item
            self.queue.remove(item)
        b = c["precond_beta"]
        self.M = c["momentum"] * self.M + G
        self.L = b * self.L + (1 - b) * G @ G.T
        self.R = b * self.R + (1 - b) * G.T @ G
        F = c["precond_freq"]
        if self.t == 1 or ((self.t - 1 - self.phase) % F == 0 and self.t > 1):
            new = ref_neg_power(self.L, self.t, c), ref_neg_power(self.R, self.t, c)
            if self.t == 1 or c["delay"] == 0:
                self.PL, self.PR = new
            else:
                self.queue.append((self.t + c["delay"], *new))
        A = G + c["momentum"] * self.M if c.get("nesterov") else self.M
        Y = ref_polar(self.PL @ A @ self.PR)
        U = self.PL @ Y @ self.PR
        U = U * (torch.linalg.norm(Y) / torch.linalg.norm(U))
        m, n = W.shape
        lr = c["lr"]
        return W * (1 - lr * c["weight_decay"]) - lr * math.sqrt(m / n) * U


CFG = dict(
    lr=0.02,
    momentum=0.95,
    weight_decay=0.01,
    alpha=0.125,
    precond_beta=0.95,
    eps=1e-5,
    precond_freq=4,
    bias_correction=True,
    trace_norm=True,
)


def engine(params, cfg, **kw):
    return Mousse(
        params,
        lr=cfg["lr"],
        momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"],
        alpha=cfg["alpha"],
        precond_beta=cfg["precond_beta"],
        eps=cfg["eps"],
        precond_freq=cfg["precond_freq"],
        orthogonalizer="exact",
        **kw,
    )


SHAPES = [(12, 8), (12, 8), (12, 8), (6, 10)]


@pytest.mark.parametrize("style", ["heavy_ball", "nesterov"])
@pytest.mark.parametrize(
    ("delay", "schedule"), [(1, "offset"), (3, "offset"), (0, "staggered"), (2, "staggered")]
)
def test_delayed_and_staggered_refreshes_match_the_reference(delay, schedule, style):
    cfg = {**CFG, "delay": delay, "nesterov": style == "nesterov"}
    steps = 17
    prob = Problem(SHAPES, seed=7 + delay, steps=steps)
    params = [torch.nn.Parameter(W.clone()) for W in prob.W0]
    opt = engine(params, cfg, refresh_delay=delay, refresh_schedule=schedule, momentum_style=style)
    phases = [0] * len(SHAPES)
    if schedule == "staggered":
        opt._ensure_buckets()
        phases = [ph for b in opt._buckets[0] for ph in b.refreshes.phases]
        # the bucket of three 12x8 matrices and the 6x10 one: spread over the four phases
        assert sorted(phases) == [0, 1, 2, 3]
    refs = [
        RefDelayed(s, cfg, ph) for s, ph in zip(SHAPES, phases, strict=True)
    ]  # buckets keep this order
    follow_reference(opt, params, refs, prob, steps)


def test_the_reference_sees_a_delay():
    """A delayed run differs from the undelayed one (the comparison above can fail)."""
    prob = Problem(SHAPES, seed=1, steps=8)
    runs = []
    for delay in (0, 2):
        params = [torch.nn.Parameter(W.clone()) for W in prob.W0]
        opt = engine(params, CFG, refresh_delay=delay)
        for t in range(8):
            for i, p in enumerate(params):
                p.grad = prob.grad(i, p.detach(), t)
            opt.step()
        runs.append([p.detach() for p in params])
    assert max(float((a - b).abs().max()) for a, b in zip(*runs, strict=True)) > 1e-6


def make(seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in SHAPES]
    return params, Mousse(params, **{"lr": 0.02, "precond_freq": 5, **kw})


def feed(params, step):
    g = torch.Generator().manual_seed(1000 + step)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)


def run(params, opt, steps, start=1):
    for t in range(start, start + steps):
        feed(params, t)
        opt.step()


def test_delay_zero_and_staggered_period_one_are_todays_refresh():
    base_p, base = make()
    runs = [make(refresh_delay=0), make(precond_freq=1, refresh_schedule="staggered")]
    ref1_p, ref1 = make(precond_freq=1)
    run(base_p, base, 12)
    run(ref1_p, ref1, 12)
    for (p, opt), ref in zip(runs, (base_p, ref1_p), strict=True):
        run(p, opt, 12)
        assert all(torch.equal(a, b) for a, b in zip(p, ref, strict=True))
    assert "refresh_pending" not in base.state[base_p[0]]  # no pending buffers without a delay


def test_background_refresh_equals_computing_it_at_once(monkeypatch):
    """The worker thread (on CPU only when switched on) changes when the work is done, never
    the result."""
    monkeypatch.setattr("mousse.optim.family.BACKGROUND_ON_CPU", True)
    p1, opt1 = make(refresh_delay=3)
    p2, opt2 = make(refresh_delay=3)
    run(p1, opt1, 1)
    run(p2, opt2, 1)
    for b in opt2._buckets[0]:
        b.refreshes.background = False
    run(p1, opt1, 15, start=2)
    run(p2, opt2, 15, start=2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))
    assert opt1._worker._pool is not None and opt2._worker._pool is None  # the thread ran


@pytest.mark.parametrize("background", [False, True])  # in flight when saved, with the thread
@pytest.mark.parametrize("stop", [6, 7, 8, 9])  # refresh at 6, used from 9
def test_resume_between_a_refresh_and_its_use_is_bit_exact(stop, background, monkeypatch):
    monkeypatch.setattr("mousse.optim.family.BACKGROUND_ON_CPU", background)
    knobs = dict(refresh_delay=3, refresh_schedule="staggered")
    p1, opt1 = make(**knobs)
    run(p1, opt1, 14)
    p2, opt2 = make(**knobs)
    run(p2, opt2, stop)
    saved = opt2.state_dict()
    assert any(k.startswith("pending_Q_") for k in saved["state"][0])
    twin = [torch.nn.Parameter(p.detach().clone()) for p in p2]
    opt3 = Mousse(twin, lr=0.02, precond_freq=5, **knobs)
    opt3.load_state_dict(saved)
    run(twin, opt3, 14 - stop, start=stop + 1)
    assert all(torch.equal(a, b) for a, b in zip(p1, twin, strict=True))


def test_a_delay_set_on_resume_adds_its_buffers():
    p1, opt1 = make()
    run(p1, opt1, 7)
    twin = [torch.nn.Parameter(p.detach().clone()) for p in p1]
    opt2 = Mousse(twin, lr=0.02, precond_freq=5)
    opt2.load_state_dict(opt1.state_dict())
    opt2.param_groups[0]["refresh_delay"] = 2  # a knob changed on resume (loading restores it)
    run(twin, opt2, 8, start=8)
    assert "pending_Q_L" in opt2.state[twin[0]]
    assert all(torch.isfinite(p).all() for p in twin)


def test_staggered_refreshes_each_matrix_every_period_and_spreads_the_work(monkeypatch):
    """Ten same-shape matrices, refresh every 5: after step 1 (all of them), two a step, each
    every 5 steps."""
    now, calls = [0], []
    real = step_mod.refresh_input

    def spy(g, side, count, other_dim, rows):
        calls.append((now[0], None if rows is None else tuple(rows.tolist())))
        return real(g, side, count, other_dim, rows)

    monkeypatch.setattr("mousse.optim.family.refresh_input", spy)
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(8, 8, generator=g)) for _ in range(10)]
    opt = Mousse(params, lr=0.02, precond_freq=5, refresh_schedule="staggered")
    for t in range(1, 22):
        now[0] = t
        feed(params, t)
        opt.step()
    by_step = {}
    for t, rows in calls[::2]:  # two sides a refresh, the same rows
        by_step.setdefault(t, []).append(rows)
    assert by_step.pop(1) == [None]
    assert sorted(by_step) == list(range(2, 22)) and all(len(v) == 1 for v in by_step.values())
    assert all(len(v[0]) == 2 for v in by_step.values())
    when = {}
    for t, (rows,) in by_step.items():
        for i in rows:
            when.setdefault(i, []).append(t)
    assert sorted(when) == list(range(10))
    assert all({b - a for a, b in itertools.pairwise(ts)} == {5} for ts in when.values())


def test_stagger_phases_balance_the_work():
    costs = [512**3] * 4 + [128**3] * 16
    phases = stagger_phases(costs, 10)
    loads = [sum(c for c, p in zip(costs, phases, strict=True) if p == ph) for ph in range(10)]
    assert max(loads) == 512**3 and sorted(phases[:4]) == [0, 1, 2, 3]
    assert stagger_phases(costs, 10) == phases  # deterministic


def test_refresh_device_choice():
    cuda, cpu = torch.device("cuda", 0), torch.device("cpu")
    assert not refresh_on_host(cpu, 128, "cpu")  # already there
    assert refresh_on_host(cuda, 4096, "cpu") and not refresh_on_host(cuda, 128, "same")
    assert refresh_on_host(cuda, 512, "auto") and not refresh_on_host(cuda, 3072, "auto")


# ---- the matmul-only root ------------------------------------------------------------------------


def spd_stack(k, batch=3, seed=0, decay=-4.0):
    """Trace-normalized statistics of low effective rank (condition numbers up to 1e4)."""
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(batch, k, 2 * k, generator=g, dtype=F64) * torch.logspace(0, decay, 2 * k)
    F = G @ G.mT
    return F * (k / F.diagonal(dim1=-2, dim2=-1).sum(-1))[:, None, None]


def eigh_power(F, eps, alpha):
    lam, Q = pc.refresh(
        F,
        torch.ones(F.shape[:-1], dtype=F.dtype),
        torch.eye(F.size(-1), dtype=F.dtype).expand_as(F),
        eps,
        F.dtype,
    )[:2]
    return pc.inverse_root_basis(lam, Q, alpha, F.dtype) @ Q.mT if alpha else None, lam, Q


def fp_refresh(F, eps, alpha, dtype, method):
    k = F.size(-1)
    prev = torch.ones(F.shape[:-1], dtype=dtype), torch.eye(k, dtype=dtype).expand_as(F)
    return pc.refresh(F.to(dtype), *prev, eps, dtype, method, "shift", alpha)


@pytest.mark.parametrize("alpha", [0.125, 0.25, 0.5])
def test_root_matches_the_eigh_power(alpha):
    """(F + eps I)^-alpha, eps-floored like eigh's: within 1e-9 of the fp64 eigh power in fp64
    (measured about 1e-14), and in fp32 no further from it than fp32 eigh is (measured 4e-5 to
    5e-4 against eigh's 2e-4 to 2e-3, relative Frobenius error, condition numbers near 1e4)."""
    F, eps = spd_stack(24), 1e-5
    P_ref, _, _ = eigh_power(F, eps, alpha)

    def error(P):
        return float(((P.double() - P_ref).norm(dim=(-2, -1)) / P_ref.norm(dim=(-2, -1))).max())

    lam, P, failed, _ = fp_refresh(F, eps, alpha, F64, "root")
    assert not failed.any() and torch.equal(lam, torch.ones_like(lam))
    assert error(P) < 1e-9
    # the pair (1, P) whitens as an eigen-pair does: Q diag(lam^-alpha) is P itself
    assert torch.equal(pc.inverse_root_basis(lam, P, alpha, F64), P)
    P32 = fp_refresh(F, eps, alpha, torch.float32, "root")[1]
    lam_e, Q_e = fp_refresh(F, eps, alpha, torch.float32, "eigh")[:2]
    P32_eigh = pc.inverse_root_basis(lam_e, Q_e, alpha, torch.float32) @ Q_e.mT
    assert error(P32) <= error(P32_eigh)


def test_root_falls_back_to_eigh_when_it_does_not_converge(monkeypatch):
    F, eps = spd_stack(16), 1e-5
    k = F.size(-1)
    prev = torch.ones(3, k, dtype=F64), torch.eye(k, dtype=F64).expand(3, k, k)
    exact = pc.refresh(F, *prev, eps, F64)
    monkeypatch.setattr(pc, "ROOT_MAX_ITERS", 1)
    monkeypatch.setattr(pc.inverse_root_newton, "__defaults__", (1,))
    lam, Q, failed, _ = pc.refresh(F, *prev, eps, F64, "root", "shift", 0.125)
    assert not failed.any()
    assert torch.equal(lam, exact[0]) and torch.equal(Q, exact[1])


def test_root_trains_like_eigh():
    """Mousse with refresh='root' follows the eigh run to rounding (fp64, 20 steps)."""
    prob = Problem(SHAPES, seed=2, steps=20)
    out = []
    for refresh in ("eigh", "root"):
        params = [torch.nn.Parameter(W.clone()) for W in prob.W0]
        opt = engine(params, CFG, refresh=refresh)
        for t in range(20):
            for i, p in enumerate(params):
                p.grad = prob.grad(i, p.detach(), t)
            opt.step()
        out.append([p.detach() for p in params])
    for a, b in zip(*out, strict=True):
        assert float((a - b).abs().max()) < 1e-8


def test_alpha_zero_root_is_muon():
    """alpha = 0: the root is the identity, so the update is Muon's (Mousse's knobs otherwise),
    to fp32 rounding (step 1's eigh refresh rotates the basis, which Newton-Schulz ignores)."""
    p1, opt1 = make(alpha=0.0, refresh="root")
    p2, opt2 = make(sides="none")
    run(p1, opt1, 12)
    run(p2, opt2, 12)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=0)
    assert torch.equal(opt1.state[p1[0]]["Q_L"], torch.eye(12))  # the root refreshes since


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (dict(refresh="root", alpha=0.3), "1/p"),
        (dict(refresh="root", post_alpha=0.0), "post_alpha"),
        (dict(refresh="root", orthogonalizer="sign"), "orthogonalizer='sign'"),
        (dict(refresh_delay=10), "refresh_delay=10"),
        (dict(refresh_schedule="every"), "refresh_schedule"),
        (dict(refresh_device="gpu"), "refresh_device"),
    ],
)
def test_invalid_refresh_settings_are_rejected(knobs, message):
    with pytest.raises(ValueError, match=message):
        Mousse([torch.nn.Parameter(torch.zeros(3, 3))], **knobs)
