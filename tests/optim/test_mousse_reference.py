"""The engine against an independent dense fp64 reference written from the algorithm (docs/family.md).

The reference below uses none of the engine's helpers: it keeps one matrix at a time in plain
Python loops, forms the factor powers as full matrices `Q diag(lam^-alpha) Q^T` and applies them
as explicit products, `L^-a polar(L^-a M R^-a) R^-a` (equal to the engine's rotate / scale /
rotate-back form because polar(Q^T X P) = Q^T polar(X) P), with the exact polar factor by SVD.
The engine is run with ns="exact" on fp64 parameters, so every difference is rounding: the
tolerance (1e-9 relative to the distance travelled, over 25 steps; measured at most 4e-11) is far
below any real defect, e.g. a wrong exponent, side, eps floor, bias correction, graft, momentum
or lr scale (test_reference_is_sensitive: small changes of the knobs move the weights by > 1e-6).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from support.mousse_ref import F64, Problem, follow_reference, ref_neg_power, ref_polar

import mousse.optim.precondition
from mousse import Mousse, Muon

# ---- the reference ----------------------------------------------------------------------------

LR_RULES = {
    "spectral": lambda m, n: (m / n) ** 0.5,
    "muon": lambda m, n: max(1.0, m / n) ** 0.5,
    "rms": lambda m, n: 0.2 * max(m, n) ** 0.5,
    "none": lambda m, n: 1.0,
}


class RefMousse:
    """One matrix, one step at a time, fp64, straight from the spec."""

    def __init__(self, shape, cfg):
        m, n = shape
        self.cfg = cfg
        self.t = 0
        self.M = torch.zeros(m, n, dtype=F64)
        self.L = torch.zeros(m, m, dtype=F64)
        self.R = torch.zeros(n, n, dtype=F64)
        self.PL = torch.eye(m, dtype=F64)  # L^-alpha (identity when the side is off)
        self.PR = torch.eye(n, dtype=F64)

    def step(self, W: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        m, n = W.shape
        self.t += 1
        mu, b = c["momentum"], c["precond_beta"]
        self.M = mu * self.M + G
        M_in = G + mu * self.M if c["nesterov"] else self.M
        use_L = c["sides"] in ("both", "left")
        use_R = c["sides"] in ("both", "right")
        # statistics: sums of outer products of rows / columns
        if use_L:
            GGt = torch.zeros(m, m, dtype=F64)
            for j in range(n):
                GGt += torch.outer(G[:, j], G[:, j])
            self.L = b * self.L + (1 - b) * GGt
        if use_R:
            GtG = torch.zeros(n, n, dtype=F64)
            for i in range(m):
                GtG += torch.outer(G[i], G[i])
            self.R = b * self.R + (1 - b) * GtG
        if (self.t - 1) % c["precond_freq"] == 0:
            if use_L:
                self.PL = ref_neg_power(self.L, self.t, c)
            if use_R:
                self.PR = ref_neg_power(self.R, self.t, c)
        Y = ref_polar(self.PL @ M_in @ self.PR)
        U = self.PL @ Y @ self.PR
        if c["graft"] and (use_L or use_R):
            U = U * (torch.linalg.norm(Y) / torch.linalg.norm(U))
        lr = c["lr"]
        return W * (1 - lr * c["weight_decay"]) - lr * LR_RULES[c["lr_scale"]](m, n) * U


def knobs(cfg: dict) -> dict:
    """The engine's knob names for a reference config (booleans become the family's choices)."""
    out = {k: v for k, v in cfg.items() if k not in ("trace_norm", "graft", "nesterov", "ns")}
    if "trace_norm" in cfg:
        out["factor_norm"] = "trace" if cfg["trace_norm"] else "none"
    if "graft" in cfg:
        out["graft"] = "orthogonalizer" if cfg["graft"] else "none"
    if "nesterov" in cfg:
        out["momentum_style"] = "nesterov" if cfg["nesterov"] else "heavy_ball"
    if cfg.get("ns") == "exact":
        out["orthogonalizer"] = "exact"
    elif "ns" in cfg:
        out["ns"] = cfg["ns"]
    return out


BASE = dict(
    lr=0.02,
    momentum=0.95,
    nesterov=False,
    weight_decay=0.01,
    alpha=0.125,
    sides="both",
    trace_norm=True,
    precond_freq=10,
    precond_beta=0.95,
    eps=1e-5,
    graft=True,
    bias_correction=True,
    lr_scale="spectral",
)


SHAPES = {"square": (12, 12), "tall": (16, 8), "wide": (8, 16)}

CONFIGS = {
    "default": {},
    "left": dict(sides="left"),
    "right": dict(sides="right"),
    "trace_norm_off": dict(trace_norm=False),
    "graft_off": dict(graft=False),
    "bias_correction_off": dict(bias_correction=False),
    "trace_graft_off": dict(trace_norm=False, graft=False),  # bias correction fully visible
    "all_off": dict(trace_norm=False, bias_correction=False, graft=False),
    "T1": dict(precond_freq=1),
    "T3_nesterov": dict(precond_freq=3, nesterov=True),
    "alpha_quarter": dict(alpha=0.25),
    "lr_muon": dict(lr_scale="muon"),
    "lr_rms_wd": dict(lr_scale="rms", weight_decay=0.1, lr=0.005),
    "lr_none_left_T1": dict(lr_scale="none", sides="left", precond_freq=1, momentum=0.9),
}


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("config", list(CONFIGS))
def test_engine_matches_reference(config, shape):
    cfg = {**BASE, **CONFIGS[config]}
    steps = 25
    shapes = [SHAPES[shape], SHAPES[shape], (6, 10)]  # two batched together, one on its own
    prob = Problem(
        shapes, seed=3 * list(CONFIGS).index(config) + list(SHAPES).index(shape), steps=steps
    )
    params = [torch.nn.Parameter(W.clone()) for W in prob.W0]
    opt = Mousse(params, **knobs({**cfg, "ns": "exact"}))
    refs = [RefMousse(s, cfg) for s in shapes]
    follow_reference(opt, params, refs, prob, steps)
    # The running statistics are the spec's EMA of G G^T / G^T G, without any normalization.
    for i, p in enumerate(params):
        st = opt.state[p]
        for key, on in (
            ("L", cfg["sides"] in ("both", "left")),
            ("R", cfg["sides"] in ("both", "right")),
        ):
            if on:
                F_ref = getattr(refs[i], key)
                assert torch.linalg.norm(st[key] - F_ref) / torch.linalg.norm(F_ref) < 1e-9
            else:
                assert key not in st
        assert int(st["step"]) == steps


def test_reference_is_sensitive():
    """The comparison tolerance is meaningful: nearby settings move the weights by >> 1e-9."""
    shapes = [(12, 12)]
    steps = 15  # refreshes at steps 1 and 11
    prob = Problem(shapes, seed=3, steps=steps)

    def run(cfg):
        ref, W = RefMousse(shapes[0], cfg), prob.W0[0].clone()
        for t in range(steps):
            W = ref.step(W, prob.grad(0, W, t))
        return W

    base = run(BASE)
    travelled = torch.linalg.norm(base - prob.W0[0])
    for change in [
        dict(alpha=0.13),
        dict(eps=2e-5),
        dict(precond_beta=0.94),
        dict(momentum=0.94),
        dict(sides="left"),
        dict(graft=False),
        dict(trace_norm=False),
    ]:
        other = run({**BASE, **change})
        assert torch.linalg.norm(other - base) / travelled > 1e-6, change


# ---- alpha = 0 is Muon ------------------------------------------------------------------------


@pytest.mark.parametrize("sides", ["both", "left", "right"])
@pytest.mark.parametrize(
    "ns,nesterov,freq,lr_scale",
    [
        ("you5", False, 10, "spectral"),
        ("muon", True, 1, "muon"),
        ("polar_express", True, 3, "rms"),
        ("exact", False, 2, "none"),
    ],
)
def test_alpha_zero_is_muon(sides, ns, nesterov, freq, lr_scale):
    shapes = [(12, 12), (16, 8), (16, 8), (8, 16)]
    steps = 20
    prob = Problem(shapes, seed=11, steps=steps)
    pa = [torch.nn.Parameter(W.clone()) for W in prob.W0]
    pb = [torch.nn.Parameter(W.clone()) for W in prob.W0]
    common = dict(
        lr=0.02, momentum=0.9, nesterov=nesterov, weight_decay=0.05, ns=ns, lr_scale=lr_scale
    )
    mousse = Mousse(pa, alpha=0.0, sides=sides, precond_freq=freq, **knobs(common))
    muon = Muon(pb, **knobs(common))
    for t in range(steps):
        for i in range(len(shapes)):
            pa[i].grad = prob.grad(i, pa[i].detach(), t)
            pb[i].grad = prob.grad(i, pb[i].detach(), t)
        mousse.step()
        muon.step()
        for a, b, W0 in zip(pa, pb, prob.W0, strict=True):
            err = torch.linalg.norm(a.detach() - b.detach()) / torch.linalg.norm(b.detach() - W0)
            assert err < 1e-10, (t + 1, float(err))


def test_alpha_zero_is_muon_fp32():
    """Same identity in fp32 (NS in fp32): differences are fp32 rounding through the rotations."""
    g = torch.Generator().manual_seed(12)
    W0 = [torch.randn(32, 16, generator=g), torch.randn(24, 24, generator=g)]
    pa = [torch.nn.Parameter(W.clone()) for W in W0]
    pb = [torch.nn.Parameter(W.clone()) for W in W0]
    mousse = Mousse(
        pa,
        lr=0.01,
        alpha=0.0,
        momentum_style="nesterov",
        ns="muon",
        lr_scale="muon",
        weight_decay=0.1,
        precond_freq=3,
    )
    muon = Muon(pb, lr=0.01, nesterov=True, ns="muon", lr_scale="muon", weight_decay=0.1)
    for _ in range(15):
        grads = [torch.randn(W.shape, generator=g) for W in W0]
        for a, b, G in zip(pa, pb, grads, strict=True):
            a.grad, b.grad = G.clone(), G.clone()
        mousse.step()
        muon.step()
    for a, b, W in zip(pa, pb, W0, strict=True):
        err = torch.linalg.norm(a.detach() - b.detach()) / torch.linalg.norm(b.detach() - W)
        assert err < 1e-4, float(err)


# ---- the closed form (exact polar, alpha 1/4) -------------------------------------------------------------


def spd_power(F: torch.Tensor, p: float) -> torch.Tensor:
    """F^p for symmetric positive definite F, via SVD (for SPD, U = V and S = eigenvalues)."""
    U, S, _ = torch.linalg.svd(F)
    return U @ torch.diag(S**p) @ U.T


@pytest.mark.parametrize("shape,first_checked", [((12, 12), 1), ((16, 8), 3), ((8, 16), 3)])
def test_closed_form_direction(shape, first_checked):
    """exact polar, T = 1, trace norm off, alpha = 1/4, graft off:
    dW = -L^(-1/4) msign(L^(-1/4) M R^(-1/4)) R^(-1/4), with L, R the bias-corrected EMAs plus
    the eps shift (eigh of L + eps I, then floored by + eps again: L + 2 eps I)."""
    m, n = shape
    b, eps, mu, lr = 0.95, 1e-5, 0.95, 0.01
    steps = 12
    g = torch.Generator().manual_seed(21)
    p = torch.nn.Parameter(torch.randn(m, n, dtype=F64, generator=g))
    opt = Mousse(
        [p],
        lr=lr,
        momentum=mu,
        weight_decay=0.0,
        alpha=0.25,
        precond_freq=1,
        factor_norm="none",
        graft="none",
        orthogonalizer="exact",
        lr_scale="none",
        eps=eps,
        precond_beta=b,
    )
    M = torch.zeros(m, n, dtype=F64)
    L = torch.zeros(m, m, dtype=F64)
    R = torch.zeros(n, n, dtype=F64)
    for t in range(1, steps + 1):
        G = torch.randn(m, n, dtype=F64, generator=g)
        M = mu * M + G
        L = b * L + (1 - b) * G @ G.T
        R = b * R + (1 - b) * G.T @ G
        W_before = p.detach().clone()
        p.grad = G
        opt.step()
        if t < first_checked:  # rank-deficient factors at step 1 (docs/family.md)
            continue
        dW = (p.detach() - W_before) / lr
        Lq = spd_power(L / (1 - b**t) + 2 * eps * torch.eye(m, dtype=F64), -0.25)
        Rq = spd_power(R / (1 - b**t) + 2 * eps * torch.eye(n, dtype=F64), -0.25)
        expected = -Lq @ ref_polar(Lq @ M @ Rq) @ Rq
        torch.testing.assert_close(dW, expected, rtol=1e-9, atol=1e-10)
        # and the pure closed form, eps- and scale-free, has the same direction
        Lp, Rp = spd_power(L, -0.25), spd_power(R, -0.25)
        pure = -Lp @ ref_polar(Lp @ M @ Rp) @ Rp
        cos = (dW * pure).sum() / (torch.linalg.norm(dW) * torch.linalg.norm(pure))
        assert cos > 1 - 1e-6, float(cos)


# ---- our Muon vs torch.optim.Muon -------------------------------------------------------------


def _torch_muon_fp32_ns(grad, ns_coefficients, ns_steps, eps):
    """torch.optim.Muon's Newton-Schulz with its bf16 cast replaced by fp32 (same arithmetic)."""
    a, b, c = ns_coefficients
    X = grad.float()
    if grad.size(0) > grad.size(1):
        X = X.T
    X = X / X.norm().clamp(min=eps)
    for _ in range(ns_steps):
        A = X @ X.T
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    if grad.size(0) > grad.size(1):
        X = X.T
    return X


def _run_vs_torch(nesterov, ours_rule, torch_rule, ns_dtype, steps=30, ours_nesterov=None):
    g = torch.Generator().manual_seed(31)
    shapes = [(48, 24), (24, 48), (32, 32)]
    W0 = [torch.randn(s, generator=g) / math.sqrt(s[1]) for s in shapes]
    Wstar = [torch.randn(s, generator=g) / math.sqrt(s[1]) for s in shapes]
    noise = [[1.0 * torch.randn(s, generator=g) for s in shapes] for _ in range(steps)]
    pa = [torch.nn.Parameter(W.clone()) for W in W0]
    pb = [torch.nn.Parameter(W.clone()) for W in W0]
    kw = dict(lr=0.02, weight_decay=0.1, momentum=0.95, nesterov=nesterov)
    ours = Muon(
        pa,
        lr_scale=ours_rule,
        ns_dtype=ns_dtype,
        **{**kw, "nesterov": nesterov if ours_nesterov is None else ours_nesterov},
    )
    ref = torch.optim.Muon(pb, adjust_lr_fn=torch_rule, **kw)
    for t in range(steps):
        for i in range(len(shapes)):
            pa[i].grad = pa[i].detach() - Wstar[i] + noise[t][i]
            pb[i].grad = pb[i].detach() - Wstar[i] + noise[t][i]
        ours.step()
        ref.step()
    return [
        float(torch.linalg.norm(a.detach() - b.detach()) / torch.linalg.norm(b.detach() - W))
        for a, b, W in zip(pa, pb, W0, strict=True)
    ]


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("ours_rule,torch_rule", [("muon", "original"), ("rms", "match_rms_adamw")])
def test_muon_matches_torch_optim_muon_bf16(nesterov, ours_rule, torch_rule):
    """torch runs NS in bf16, so ours does too. Its momentum is an EMA (lerp) where ours is heavy
    ball: the two differ by the factor (1 - mu), which NS normalizes away, but it makes the two
    bf16 roundings of the NS input differ, and bf16 NS then disagrees at ~1e-2 per step.
    Over 30 steps that random walk stays near 0.5% of the distance travelled (measured
    0.39-0.49%), tolerance 1.5%; a wrong lr rule or Nesterov flag is off by 8-35%
    (test_torch_comparison_is_sensitive)."""
    errs = _run_vs_torch(nesterov, ours_rule, torch_rule, torch.bfloat16)
    assert max(errs) < 0.015, errs


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("ours_rule,torch_rule", [("muon", "original"), ("rms", "match_rms_adamw")])
def test_muon_matches_torch_optim_muon_fp32(nesterov, ours_rule, torch_rule, monkeypatch):
    """With torch's NS cast to fp32 instead of bf16 (ours ns_dtype=fp32), agreement is fp32
    rounding (measured ~3e-7 of the distance travelled)."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _torch_muon_fp32_ns)
    errs = _run_vs_torch(nesterov, ours_rule, torch_rule, torch.float32)
    assert max(errs) < 1e-5, errs


def test_torch_comparison_is_sensitive(monkeypatch):
    """Guard for the two tests above: a mismatched rule or Nesterov flag is far outside them."""
    import torch.optim._muon as torch_muon

    monkeypatch.setattr(torch_muon, "_zeropower_via_newtonschulz", _torch_muon_fp32_ns)
    # shapes (48, 24), (24, 48), (32, 32): the rules differ on the tall or the square matrix
    assert _run_vs_torch(True, "rms", "original", torch.float32)[2] > 0.05
    assert _run_vs_torch(True, "none", "original", torch.float32)[0] > 0.05
    assert _run_vs_torch(True, "spectral", "original", torch.float32)[1] > 0.05
    assert min(_run_vs_torch(True, "muon", "original", torch.float32, ours_nesterov=False)) > 0.05


# ---- refresh schedule and statistics ----------------------------------------------------------


@pytest.mark.parametrize("freq", [1, 4, 10])
def test_refresh_steps_and_statistics(freq, monkeypatch):
    calls = []
    current_step = [0]
    real_eigh = torch.linalg.eigh

    def counting_eigh(A, *args, **kwargs):
        calls.append((current_step[0], tuple(A.shape)))
        return real_eigh(A, *args, **kwargs)

    monkeypatch.setattr(mousse.optim.precondition, "eigh", counting_eigh)
    g = torch.Generator().manual_seed(41)
    shapes = [(12, 6), (12, 6), (5, 9)]  # a bucket of two, one single
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    b = 0.9
    opt = Mousse(params, lr=0.01, precond_freq=freq, precond_beta=b)
    L = [torch.zeros(s[0], s[0], dtype=F64) for s in shapes]
    R = [torch.zeros(s[1], s[1], dtype=F64) for s in shapes]
    steps = 23
    prev = None
    for t in range(1, steps + 1):
        current_step[0] = t
        for i, p in enumerate(params):
            G = torch.randn(p.shape, generator=g)
            p.grad = G
            G = G.double()
            L[i] = b * L[i] + (1 - b) * G @ G.T
            R[i] = b * R[i] + (1 - b) * G.T @ G
        opt.step()
        due = (t - 1) % freq == 0
        this_step = sorted(shape for s, shape in calls if s == t)
        if due:  # one batched eigh per (bucket, side)
            assert this_step == sorted([(2, 12, 12), (2, 6, 6), (1, 5, 5), (1, 9, 9)]), (
                t,
                this_step,
            )
        else:
            assert this_step == [], (t, this_step)
        cached = [(opt.state[p]["lam_L"].clone(), opt.state[p]["Q_R"].clone()) for p in params]
        if prev is not None:
            for (lam, Q), (lam0, Q0) in zip(cached, prev, strict=True):
                if due:
                    assert not torch.equal(lam, lam0) and not torch.equal(Q, Q0)
                else:  # the cached basis is reused between refreshes
                    assert torch.equal(lam, lam0) and torch.equal(Q, Q0)
        prev = cached
        # the statistics accumulate every step
        for i, p in enumerate(params):
            st = opt.state[p]
            assert st["L"].dtype == torch.float32
            torch.testing.assert_close(st["L"].double(), L[i], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(st["R"].double(), R[i], rtol=1e-5, atol=1e-6)
            assert int(st["step"]) == t
    refreshes = len({s for s, _ in calls})
    assert refreshes == len(range(1, steps + 1, freq))


def test_refresh_uses_normalized_factors():
    """At a refresh, the cached eigenvalues are those of the bias-corrected, trace-normalized
    factor plus 2 eps (eigh of F + eps I, floored by + eps): mean eigenvalue 1 + 2 eps."""
    g = torch.Generator().manual_seed(42)
    p = torch.nn.Parameter(torch.randn(10, 7, dtype=F64, generator=g))
    opt = Mousse([p], precond_freq=5, eps=1e-5)
    for t in range(1, 7):
        p.grad = torch.randn(p.shape, dtype=F64, generator=g) * 10.0**t
        opt.step()
    st = opt.state[p]
    for key, k in (("L", 10), ("R", 7)):
        F = st[key] / (1 - 0.95**6)
        F = F * (k / torch.trace(F))
        expected = torch.linalg.eigvalsh(F) + 2e-5
        torch.testing.assert_close(st["lam_" + key], expected, rtol=1e-10, atol=1e-12)
        assert abs(float(st["lam_" + key].mean()) - (1 + 2e-5)) < 1e-10


def test_copy_of_optimizer_state_is_not_aliased():
    """deepcopy of the state dict is a snapshot: later steps do not change it."""
    p = torch.nn.Parameter(torch.randn(6, 4, dtype=F64))
    opt = Mousse([p])
    p.grad = torch.randn(6, 4, dtype=F64)
    opt.step()
    snap = copy.deepcopy(opt.state_dict())
    before = snap["state"][0]["L"].clone()
    p.grad = torch.randn(6, 4, dtype=F64)
    opt.step()
    assert torch.equal(snap["state"][0]["L"], before)
