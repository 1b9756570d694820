"""Optimizer behaviour: robustness, eigh failure handling, checkpointing, schedulers, param
groups, batching, missing gradients, argument validation and telemetry."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import mousse.optim.precondition
from mousse import Mousse, Muon

SIDE_KEYS = {"both": ("L", "R"), "left": ("L",), "right": ("R",)}


def make_params(shapes, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]


def make_grads(shapes, steps, dtype=torch.float32, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(s, generator=g).to(dtype) for s in shapes] for _ in range(steps)]


def run(opt, params, grads):
    for step_grads in grads:
        for p, G in zip(params, step_grads, strict=True):
            p.grad = None if G is None else G.clone()
        opt.step()


def all_state_finite(opt) -> bool:
    for st in opt.state.values():
        for v in st.values():
            if (
                isinstance(v, torch.Tensor)
                and v.is_floating_point()
                and not torch.isfinite(v).all()
            ):
                return False
    return True


# ---- robustness -------------------------------------------------------------------------------


def _grad(kind, shape, scale, g):
    if kind == "zero":
        return torch.zeros(shape)
    if kind == "rank1":
        u = torch.randn(shape[0], 1, generator=g)
        v = torch.randn(1, shape[1], generator=g)
        return (u @ v) * scale
    return torch.randn(shape, generator=g) * scale


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1.0, 1e10, 1e20])
@pytest.mark.parametrize("kind", ["full", "rank1"])
@pytest.mark.parametrize("sides", ["both", "left", "right"])
def test_extreme_gradients_stay_finite_and_bounded(scale, kind, sides):
    shapes = [(12, 6), (12, 6), (7, 7)]
    params = make_params(shapes)
    lr, wd = 0.05, 0.01
    opt = Mousse(params, lr=lr, weight_decay=wd, sides=sides, precond_freq=3)
    g = torch.Generator().manual_seed(2)
    for _ in range(8):  # refreshes at steps 1, 4, 7
        before = [p.detach().clone() for p in params]
        for p in params:
            p.grad = _grad(kind, p.shape, scale, g)
        opt.step()
        assert all(torch.isfinite(p).all() for p in params)
        assert all_state_finite(opt)
        for p, W in zip(params, before, strict=True):
            # graft: ||U||_F = ||NS(X)||_F <= 1.21 sqrt(min(m, n)) whatever the gradient scale
            m, n = p.shape
            U = (W * (1 - lr * wd) - p.detach()) / (lr * math.sqrt(m / n))
            assert torch.linalg.norm(U) <= 1.21 * math.sqrt(min(m, n)), float(torch.linalg.norm(U))
    for row in opt.telemetry():
        assert all(torch.isfinite(v.float()).all() for v in row.values())
    if scale == 1e20:  # G G^T overflows fp32: statistics updates are skipped and counted
        for p in params:
            for side in SIDE_KEYS[sides]:
                assert int(opt.state[p][f"stat_skips_{side}"]) == 8
    else:
        for p in params:
            for side in SIDE_KEYS[sides]:
                assert int(opt.state[p][f"stat_skips_{side}"]) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_zero_gradient_only_decays(dtype):
    params = make_params([(8, 4), (4, 8)], dtype=dtype)
    W0 = [p.detach().clone() for p in params]
    lr, wd = 0.1, 0.5
    opt = Mousse(params, lr=lr, weight_decay=wd, precond_freq=2)
    run(opt, params, [[torch.zeros_like(p) for p in params] for _ in range(3)])
    for p, W in zip(params, W0, strict=True):
        expected = W
        for _ in range(3):
            expected = expected * (1 - lr * wd)
        torch.testing.assert_close(p.detach(), expected)
        assert all_state_finite(opt)


def test_unwhitening_runs_in_newton_schulz_precision():
    """With bf16 Newton-Schulz the whitening stays in fp32 (bf16 input whitening is far less
    accurate) and the unwhitening runs in bf16 with P' cached in bf16: one step equals that
    explicit computation, and stays within bf16 error of the fp32 path."""
    from mousse.optim.orthogonalize import frobenius_norm, orthogonalize

    g = torch.Generator().manual_seed(7)
    W0, G = torch.randn(12, 8, generator=g) / 4, torch.randn(12, 8, generator=g)
    out = {}
    for ns_dtype in (torch.bfloat16, None):
        p = torch.nn.Parameter(W0.clone())
        opt = Mousse([p], lr=0.1, weight_decay=0.0, ns_dtype=ns_dtype)
        p.grad = G.clone()
        opt.step()
        out[ns_dtype] = (p.detach().clone(), opt)
    opt = out[torch.bfloat16][1]
    bucket = opt._buckets[0][0]
    left, right = bucket.state.sides["L"], bucket.state.sides["R"]
    P_L, P_R, Pp_L, Pp_R = left.P, right.P, left.P_post, right.P_post
    assert P_L.dtype == P_R.dtype == torch.float32 and Pp_L.dtype == Pp_R.dtype == torch.bfloat16
    assert torch.equal(Pp_L, P_L.to(torch.bfloat16)) and torch.equal(Pp_R, P_R.to(torch.bfloat16))
    Y = orthogonalize(P_L.mT @ G[None] @ P_R, "you5", 5, torch.bfloat16)
    U = (Pp_L @ Y.to(torch.bfloat16) @ Pp_R.mT).float()
    U = U * frobenius_norm(Y) / frobenius_norm(U)
    torch.testing.assert_close(out[torch.bfloat16][0], W0 - 0.1 * math.sqrt(12 / 8) * U[0])
    fp32 = out[None][0]
    assert float((out[torch.bfloat16][0] - fp32).norm() / (fp32 - W0).norm()) < 3e-2


@pytest.mark.parametrize("ns", ["you5", "muon", "polar_express"])
def test_fp16_newton_schulz_with_zero_and_large_gradients(ns):
    """ns_dtype=fp16 is accepted, so zero momentum (eps underflows in fp16) and entries beyond
    65504 must not turn into NaN."""
    params = make_params([(8, 6), (8, 6)])
    opt = Mousse(params, ns=ns, ns_dtype=torch.float16, precond_freq=2)
    g = torch.Generator().manual_seed(5)
    for scale in [0.0, 1.0, 1e6, 1e20, 0.0]:
        W = [p.detach().clone() for p in params]
        params[0].grad = torch.randn(8, 6, generator=g) * scale
        params[1].grad = torch.zeros(8, 6)
        opt.step()
        assert all(torch.isfinite(p).all() for p in params) and all_state_finite(opt), scale
        if scale > 0:
            assert not torch.allclose(params[0], W[0] * (1 - 0.06 * 0.01))


def test_gradient_scale_sweep_in_one_run():
    """1e20 then 1e-20 then normal gradients in the same run: the state recovers."""
    params = make_params([(10, 6)])
    opt = Mousse(params, precond_freq=2)
    g = torch.Generator().manual_seed(3)
    for scale in [1.0, 1e20, 1e20, 1e-20, 1e-20, 1e10, 1.0, 1.0, 1.0]:
        params[0].grad = torch.randn(10, 6, generator=g) * scale
        opt.step()
        assert torch.isfinite(params[0]).all() and all_state_finite(opt)
    row = opt.telemetry()[0]
    assert float(row["cond_L"]) >= 1 and float(row["lam_L_min"]) > 0


def test_mixed_scales_in_one_bucket_are_isolated():
    """A matrix with 1e20 gradients does not disturb a normal one batched with it."""
    grads = make_grads([(9, 5)], 7)
    alone = make_params([(9, 5)])
    opt_a = Mousse(alone, precond_freq=3)
    run(opt_a, alone, grads)
    pair = make_params([(9, 5), (9, 5)])
    with torch.no_grad():
        pair[0].copy_(make_params([(9, 5)])[0])
    opt_b = Mousse(pair, precond_freq=3)
    g = torch.Generator().manual_seed(4)
    run(opt_b, pair, [[G[0], torch.randn(9, 5, generator=g) * 1e20] for G in grads])
    torch.testing.assert_close(pair[0].detach(), alone[0].detach(), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(pair[1]).all()


# ---- eigh failures ----------------------------------------------------------------------------


def _tracking_eigh(fail):
    real = torch.linalg.eigh
    calls = []

    def eigh(A, *args, **kwargs):
        calls.append((A.dtype, A.shape[0]))
        if fail(A, len(calls)):
            raise torch.linalg.LinAlgError("injected failure")
        return real(A, *args, **kwargs)

    return eigh, calls


def test_eigh_fp32_failure_retries_in_fp64(monkeypatch):
    # Square shapes: the factors are full rank from step 1, so fp32 and fp64 eigenpairs agree to
    # fp32 accuracy. (With rank-deficient factors the eps-level eigenvalues differ by ~1% between
    # fp32 and fp64, the rounding sensitivity of rank-deficient factors, and weights by ~5e-4.)
    shapes = [(6, 6), (6, 6), (5, 5)]
    grads = make_grads(shapes, 7)
    ref_params = make_params(shapes)
    ref = Mousse(ref_params, precond_freq=3)
    run(ref, ref_params, grads)

    eigh, calls = _tracking_eigh(lambda A, i: A.dtype == torch.float32)
    monkeypatch.setattr(mousse.optim.precondition, "eigh", eigh)
    params = make_params(shapes)
    opt = Mousse(params, precond_freq=3)
    run(opt, params, grads)
    # the whole bucket is retried in fp64 (not only the matrix-by-matrix last resort)
    assert (torch.float32, 2) in calls and (torch.float64, 2) in calls
    for p, q in zip(params, ref_params, strict=True):
        st = opt.state[p]
        assert int(st["eigh_failures_L"]) == 0 and int(st["eigh_failures_R"]) == 0
        assert st["lam_L"].dtype == torch.float32 and st["Q_L"].dtype == torch.float32
        # fp64 eigenpairs instead of fp32 ones: the weights agree to fp32-eigh accuracy
        torch.testing.assert_close(p.detach(), q.detach(), rtol=1e-4, atol=1e-4)


def test_eigh_nonfinite_fp32_result_retries_in_fp64(monkeypatch):
    real = torch.linalg.eigh

    def eigh(A, *args, **kwargs):
        lam, Q = real(A, *args, **kwargs)
        if A.dtype == torch.float32:
            lam = lam * float("nan")
        return lam, Q

    monkeypatch.setattr(mousse.optim.precondition, "eigh", eigh)
    params = make_params([(8, 6)])
    opt = Mousse(params, precond_freq=2)
    run(opt, params, make_grads([(8, 6)], 5))
    st = opt.state[params[0]]
    assert int(st["eigh_failures_L"]) == 0 and torch.isfinite(st["lam_L"]).all()
    assert torch.isfinite(params[0]).all()


def test_eigh_always_failing_keeps_previous_basis(monkeypatch):
    shapes = [(10, 6), (10, 6), (5, 5)]
    T = 3
    grads = make_grads(shapes, 11)
    params = make_params(shapes)
    opt = Mousse(params, precond_freq=T)
    run(opt, params, grads[:5])  # refreshes at 1 and 4 succeed
    kept = {
        p: {k: opt.state[p][k].clone() for k in ("lam_L", "Q_L", "lam_R", "Q_R")} for p in params
    }
    eigh, calls = _tracking_eigh(lambda A, i: True)
    monkeypatch.setattr(mousse.optim.precondition, "eigh", eigh)
    run(opt, params, grads[5:])  # steps 6..11: refreshes at 7 and 10 fail
    assert calls, "the refresh must have been attempted"
    for p in params:
        st = opt.state[p]
        for k, v in kept[p].items():
            assert torch.equal(st[k], v), k
        assert int(st["eigh_failures_L"]) == 2 and int(st["eigh_failures_R"]) == 2
        assert torch.isfinite(p).all() and all_state_finite(opt)
    # Failing from the very first refresh: the initial identity basis is kept (= Muon whitening).
    fresh = make_params([(6, 4)])
    opt2 = Mousse(fresh, precond_freq=2)
    run(opt2, fresh, make_grads([(6, 4)], 3))
    st = opt2.state[fresh[0]]
    assert torch.equal(st["Q_L"], torch.eye(6)) and torch.equal(st["lam_L"], torch.ones(6))
    assert int(st["eigh_failures_L"]) == 2 and torch.isfinite(fresh[0]).all()


def test_eigh_failing_for_one_matrix_of_a_batch(monkeypatch):
    """Batched calls fail; matrix-by-matrix calls fail only for the second matrix of the bucket:
    that one keeps its basis and counts a failure, the other is refreshed normally."""
    shapes = [(8, 5), (8, 5)]
    grads = make_grads(shapes, 4)
    ref_params = make_params(shapes)
    ref = Mousse(ref_params, precond_freq=2)
    run(ref, ref_params, grads[:1])

    singles = []

    def fail(A, i):
        if A.shape[0] > 1:
            return True
        singles.append(1)
        return len(singles) % 2 == 0  # every second single-matrix call: matrix index 1

    eigh, _ = _tracking_eigh(fail)
    monkeypatch.setattr(mousse.optim.precondition, "eigh", eigh)
    params = make_params(shapes)
    opt = Mousse(params, precond_freq=2)
    run(opt, params, grads[:1])
    s0, s1 = opt.state[params[0]], opt.state[params[1]]
    for side in ("L", "R"):
        assert int(s0[f"eigh_failures_{side}"]) == 0 and int(s1[f"eigh_failures_{side}"]) == 1
        torch.testing.assert_close(
            s0[f"lam_{side}"], ref.state[ref_params[0]][f"lam_{side}"], rtol=1e-5, atol=1e-6
        )
        assert torch.equal(s1[f"lam_{side}"], torch.ones_like(s1[f"lam_{side}"]))
    assert all(torch.isfinite(p).all() for p in params)


# ---- checkpointing ----------------------------------------------------------------------------


def _flatten(state_dict):
    """A flat {name: tensor} dict (as safetensors stores) plus the non-tensor remainder."""
    flat, meta = {}, {"param_groups": copy.deepcopy(state_dict["param_groups"]), "state": {}}
    for pid, st in state_dict["state"].items():
        meta["state"][pid] = []
        for k, v in st.items():
            flat[f"state.{pid}.{k}"] = v.detach().clone().contiguous()
            meta["state"][pid].append(k)
    return flat, meta


def _unflatten(flat, meta):
    return {
        "param_groups": copy.deepcopy(meta["param_groups"]),
        "state": {
            pid: {k: flat[f"state.{pid}.{k}"] for k in keys} for pid, keys in meta["state"].items()
        },
    }


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("via", ["deepcopy", "flat"])
def test_state_dict_round_trip_is_bit_identical(k, via, tmp_path):
    shapes = [(8, 6), (8, 6), (5, 7), (6, 6)]
    T = 4  # refreshes at 1, 5, 9, 13: continuing 2k steps crosses at least one
    grads = make_grads(shapes, 3 * k)
    params = make_params(shapes)
    opt = Mousse(
        [{"params": params[:3]}, {"params": params[3:], "alpha": 0.25, "sides": "left"}],
        precond_freq=T,
    )
    run(opt, params, grads[:k])
    saved = copy.deepcopy(opt.state_dict())
    saved_params = [p.detach().clone() for p in params]
    run(opt, params, grads[k:])

    if via == "flat":
        flat, meta = _flatten(saved)
        from safetensors.torch import load_file, save_file

        save_file(flat, str(tmp_path / "opt.safetensors"))
        saved = _unflatten(load_file(str(tmp_path / "opt.safetensors")), meta)

    params2 = [torch.nn.Parameter(W.clone()) for W in saved_params]
    opt2 = Mousse(
        [{"params": params2[:3]}, {"params": params2[3:], "alpha": 0.25, "sides": "left"}],
        precond_freq=T,
    )
    opt2.load_state_dict(saved)
    run(opt2, params2, grads[k:])
    for p, q in zip(params, params2, strict=True):
        assert torch.equal(p, q)
        for key, v in opt.state[p].items():
            assert torch.equal(v, opt2.state[q][key]), key
            assert v.dtype == opt2.state[q][key].dtype


@pytest.mark.parametrize("cls", [Mousse, Muon])
def test_ema_momentum_is_heavy_ball_for_an_orthogonalized_update(cls):
    """ema's buffer is heavy-ball's times a scalar of the step; orthogonalizing the update removes
    it, so the two rules train identically (up to Newton-Schulz's epsilon). Tuning the rule skips
    ema for that reason (ablations/paper-tuned-momentum.toml)."""
    finals = []
    for style in ("heavy_ball", "ema", "nesterov"):
        torch.manual_seed(0)
        p = torch.nn.Parameter(torch.randn(32, 48, dtype=torch.float64))
        opt = cls([p], lr=0.02, momentum=0.8, momentum_style=style)
        gen = torch.Generator().manual_seed(1)
        for _ in range(12):
            p.grad = torch.randn(32, 48, generator=gen, dtype=torch.float64)
            opt.step()
        finals.append(p.detach().clone())
    torch.testing.assert_close(finals[0], finals[1], rtol=0, atol=1e-10)
    assert (finals[0] - finals[2]).abs().max() > 1e-3  # the rule is not ignored


def test_state_dict_keeps_fp32_factors_for_bf16_params():
    shapes = [(8, 6)]
    grads = make_grads(shapes, 6, dtype=torch.bfloat16)
    params = make_params(shapes, dtype=torch.bfloat16)
    opt = Mousse(params, precond_freq=2)
    run(opt, params, grads[:3])
    saved = copy.deepcopy(opt.state_dict())
    W = params[0].detach().clone()
    run(opt, params, grads[3:])
    p2 = [torch.nn.Parameter(W)]
    opt2 = Mousse(p2, precond_freq=2)
    opt2.load_state_dict(saved)
    for key in ("L", "R", "Q_L", "lam_L", "momentum_buffer"):
        assert opt2.state[p2[0]][key].dtype == torch.float32, key
    run(opt2, p2, grads[3:])
    assert torch.equal(params[0], p2[0])


def test_muon_state_dict_round_trip():
    shapes = [(8, 6), (6, 8)]
    grads = make_grads(shapes, 6)
    params = make_params(shapes)
    opt = Muon(params, lr=0.02)
    run(opt, params, grads[:2])
    saved = copy.deepcopy(opt.state_dict())
    W = [p.detach().clone() for p in params]
    run(opt, params, grads[2:])
    p2 = [torch.nn.Parameter(w) for w in W]
    opt2 = Muon(p2, lr=0.02)
    opt2.load_state_dict(saved)
    run(opt2, p2, grads[2:])
    assert all(torch.equal(a, b) for a, b in zip(params, p2, strict=True))


# ---- schedulers and param groups --------------------------------------------------------------


@pytest.mark.parametrize("sched", ["lambda", "cosine"])
def test_lr_scheduler_drives_group_lr(sched):
    shapes = [(8, 6), (6, 6)]
    steps = 8
    grads = make_grads(shapes, steps)
    pa, pb = make_params(shapes), make_params(shapes)
    opt_a = Mousse(pa, lr=0.05, precond_freq=3)
    opt_b = Mousse(pb, lr=0.05, precond_freq=3)
    if sched == "lambda":
        scheduler = torch.optim.lr_scheduler.LambdaLR(opt_a, lambda s: 0.7**s)
        lrs = [0.05 * 0.7**s for s in range(steps)]
    else:
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt_a, T_max=steps)
        lrs = [0.05 * (1 + math.cos(math.pi * s / steps)) / 2 for s in range(steps)]
    for s in range(steps):
        assert opt_a.param_groups[0]["lr"] == pytest.approx(lrs[s], rel=1e-12, abs=1e-15)
        opt_b.param_groups[0]["lr"] = opt_a.param_groups[0]["lr"]
        for p, q, G in zip(pa, pb, grads[s], strict=True):
            p.grad, q.grad = G.clone(), G.clone()
        before = pa[0].detach().clone()
        opt_a.step()
        opt_b.step()
        scheduler.step()
        assert all(torch.equal(p, q) for p, q in zip(pa, pb, strict=True))
        # the step size follows the lr: ||dW + decay|| / lr is ~constant (graft, lr_scale)
        lr = lrs[s]
        U = (before * (1 - lr * 0.01) - pa[0].detach()) / lr
        assert 0.5 < float(torch.linalg.norm(U)) / math.sqrt(6 * 8 / 6) < 3.0


def test_scheduler_sees_optimizer_steps():
    """The step is the hooked torch.optim step: schedulers do not warn about call order."""
    import warnings

    params = make_params([(6, 4)])
    opt = Mousse(params, lr=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for G in make_grads([(6, 4)], 3):
            params[0].grad = G[0]
            opt.step()
            sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 / 4)


def test_lr_zero_no_weight_decay_leaves_weights():
    params = make_params([(6, 4)])
    W = params[0].detach().clone()
    opt = Mousse(params, lr=0.0)
    run(opt, params, make_grads([(6, 4)], 3))
    assert torch.equal(params[0], W)


def test_per_group_knobs_match_separate_optimizers():
    shapes = [(8, 6), (8, 6)]
    steps = 7
    grads = make_grads(shapes, steps)
    knobs = [
        dict(alpha=0.25, sides="left", lr=0.03),
        dict(alpha=0.0625, sides="right", precond_freq=2, momentum_style="nesterov"),
    ]
    params = make_params(shapes)
    opt = Mousse(
        [{"params": [params[0]], **knobs[0]}, {"params": [params[1]], **knobs[1]}], precond_freq=3
    )
    run(opt, params, grads)
    assert set(SIDE_KEYS["left"]) <= set(opt.state[params[0]]) and "R" not in opt.state[params[0]]
    assert "R" in opt.state[params[1]] and "L" not in opt.state[params[1]]
    for i in range(2):
        single = make_params(shapes)[i : i + 1]
        o = Mousse(single, **{"precond_freq": 3, **knobs[i]})
        run(o, single, [[G[i]] for G in grads])
        assert torch.equal(single[0], params[i]), i
    # and the groups really differ: the same gradients under the other group's knobs move
    # the weights elsewhere
    other = make_params(shapes)[:1]
    o = Mousse(other, **{"precond_freq": 3, **knobs[1]})
    run(o, other, [[G[0]] for G in grads])
    assert not torch.allclose(other[0], params[0], atol=1e-4)


def test_add_param_group_validates_and_works():
    params = make_params([(6, 4), (5, 5)])
    opt = Mousse([params[0]])
    with pytest.raises(ValueError, match="alpha"):
        opt.add_param_group({"params": [params[1]], "alpha": -0.5})
    assert len(opt.param_groups) == 1  # the rejected group is not left behind
    opt.add_param_group({"params": [params[1]], "sides": "right"})
    run(opt, params, make_grads([(6, 4), (5, 5)], 2))
    assert "R" in opt.state[params[1]] and "L" not in opt.state[params[1]]
    assert all(torch.isfinite(p).all() for p in params)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batching_matches_one_optimizer_per_matrix(dtype):
    shapes = [(10, 6)] * 4 + [(6, 10)] * 2 + [(7, 7)]
    steps = 9
    grads = make_grads(shapes, steps, dtype=dtype)
    params = make_params(shapes, dtype=dtype)
    opt = Mousse(params, precond_freq=4)
    run(opt, params, grads)
    singles = make_params(shapes, dtype=dtype)
    for i, p in enumerate(singles):
        o = Mousse([p], precond_freq=4)
        run(o, [p], [[G[i]] for G in grads])
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    for p, q in zip(params, singles, strict=True):
        torch.testing.assert_close(p.detach(), q.detach(), rtol=tol, atol=tol)


def test_param_without_grad_is_untouched():
    shapes = [(8, 5), (8, 5), (8, 5), (8, 5), (4, 4)]
    steps = 12
    grads = make_grads(shapes, steps)
    # step index -> params without gradient. Afterwards the bucket's step counts lag by
    # (0, 1, 3, 2): matrices 0 and 2 are then due for a refresh together at different steps
    # (different bias corrections, which matter with trace normalization and graft off).
    skip_step = {1: [1, 2], 2: [2, 3], 3: [4], 4: [2, 3]}
    for t, idx in skip_step.items():
        for i in idx:
            grads[t][i] = None
    knobs = dict(precond_freq=3, weight_decay=0.1, factor_norm="none", graft="none")
    params = make_params(shapes)
    opt = Mousse(params, **knobs)
    for t in range(steps):
        before = [p.detach().clone() for p in params]
        st_before = [
            {k: v.clone() for k, v in opt.state[p].items()} if opt.state.get(p) else {}
            for p in params
        ]
        run(opt, params, [grads[t]])
        for i, p in enumerate(params):
            if grads[t][i] is None:
                assert torch.equal(p, before[i]), (t, i)
                for k, v in st_before[i].items():
                    assert torch.equal(opt.state[p][k], v), (t, i, k)
            else:
                assert not torch.equal(p, before[i]), (t, i)
    # every matrix behaves as if optimized alone on its own gradients (its own step count, so its
    # own refresh schedule)
    for i in range(len(shapes)):
        alone = make_params(shapes)[i : i + 1]
        o = Mousse(alone, **knobs)
        run(o, alone, [[G[i]] for G in grads if G[i] is not None])
        torch.testing.assert_close(alone[0].detach(), params[i].detach(), rtol=1e-6, atol=1e-6)
        n_grads = sum(G[i] is not None for G in grads)
        assert int(opt.state[params[i]]["step"]) == n_grads


def test_all_grads_none_is_a_no_op_and_closure_is_called():
    params = make_params([(6, 4), (6, 4)])
    opt = Mousse(params, weight_decay=0.1)
    W = [p.detach().clone() for p in params]
    opt.step()  # no gradients at all
    assert all(torch.equal(p, w) for p, w in zip(params, W, strict=True))
    assert all(not opt.state.get(p) or int(opt.state[p]["step"]) == 0 for p in params)

    def closure():
        opt.zero_grad()
        loss = sum((p**2).sum() for p in params)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and torch.isfinite(loss)
    assert all(not torch.equal(p, w) for p, w in zip(params, W, strict=True))


def test_defaults_are_the_released_recipe():
    """The released recipe (docs/published.md): mu 0.95 heavy ball, b 0.95, T 10, eps 1e-5, alpha 0.125, wd 0.01, both
    sides, trace norm, graft, bias correction, you5, lr scale sqrt(m/n); Muon = torch's."""
    d = Mousse([torch.nn.Parameter(torch.randn(3, 2))]).defaults
    expected = dict(
        momentum=0.95,
        momentum_style="heavy_ball",
        weight_decay=0.01,
        alpha=0.125,
        sides="both",
        factor_norm="trace",
        precond_freq=10,
        precond_beta=0.95,
        eps=1e-5,
        graft="orthogonalizer",
        bias_correction=True,
        orthogonalizer="newton_schulz",
        ns="you5",
        ns_steps=5,
        lr_scale="spectral",
    )
    assert {k: d[k] for k in expected} == expected
    m = Muon([torch.nn.Parameter(torch.randn(3, 2))]).defaults
    t = torch.optim.Muon([torch.nn.Parameter(torch.randn(3, 2))]).defaults
    assert (m["lr"], m["weight_decay"], m["momentum"], m["ns_steps"]) == (
        t["lr"],
        t["weight_decay"],
        t["momentum"],
        t["ns_steps"],
    )
    assert (m["momentum_style"] == "nesterov") == t["nesterov"]
    assert m["ns"] == "muon" and m["lr_scale"] == "muon" and m["alpha"] == 0.0


# ---- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(alpha=-1.0), "alpha"),
        (dict(alpha=float("nan")), "alpha"),
        (dict(alpha=float("inf")), "alpha"),
        (dict(sides="top"), "sides"),
        (dict(ns="foo"), "ns"),
        (dict(precond_freq=0), "precond_freq"),
        (dict(precond_freq=2.5), "precond_freq"),
        (dict(eps=0.0), "eps"),
        (dict(momentum=1.0), "momentum"),
        (dict(precond_beta=-0.1), "precond_beta"),
        (dict(precond_beta=1.0), "precond_beta"),
        (dict(lr_scale="x"), "lr_scale"),
        (dict(lr=-0.1), "lr"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(ns_steps=0), "ns_steps"),
        (dict(graft="yes"), "graft"),
    ],
)
def test_invalid_arguments_raise_naming_them(kwargs, name):
    p = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match=rf"\b{name}\b"):
        Mousse([p], **kwargs)


@pytest.mark.parametrize("shape", [(5,), ()])  # 3-D and up: convolutions (test_conv_weights)
def test_non_matrix_params_rejected(shape):
    with pytest.raises(ValueError, match="params"):
        Mousse([torch.nn.Parameter(torch.randn(shape))])
    with pytest.raises(ValueError, match="params"):
        Muon([torch.nn.Parameter(torch.randn(shape))])


def test_muon_invalid_arguments():
    p = torch.nn.Parameter(torch.randn(4, 3))
    with pytest.raises(ValueError, match="ns"):
        Muon([p], ns="foo")
    with pytest.raises(ValueError, match="momentum"):
        Muon([p], momentum=1.5)


# ---- telemetry --------------------------------------------------------------------------------


@pytest.mark.parametrize("sides", ["both", "left", "right"])
def test_telemetry(sides):
    shapes = [(8, 6), (8, 6), (5, 7)]
    params = make_params(shapes)
    lr = 0.05
    opt = Mousse(params, lr=lr, weight_decay=0.0, sides=sides, precond_freq=2)
    assert opt.telemetry() == []
    grads = make_grads(shapes, 4)
    run(opt, params, grads[:3])
    before = [p.detach().clone() for p in params]
    run(opt, params, grads[3:])
    rows = opt.telemetry()
    assert len(rows) == len(params)
    keys = {"update_rms"}
    for s in SIDE_KEYS[sides]:
        keys |= {
            f"lam_{s}_min",
            f"lam_{s}_max",
            f"cond_{s}",
            f"eigh_failures_{s}",
            f"stat_skips_{s}",
        }
    for row, p, W in zip(rows, params, before, strict=True):
        assert set(row) == keys
        assert all(isinstance(v, torch.Tensor) and v.numel() == 1 for v in row.values())
        assert all(torch.isfinite(v.float()) for v in row.values())
        m, n = p.shape
        # update_rms is the RMS of the update before the learning rate
        rms = torch.linalg.norm(W - p.detach()) / (lr * math.sqrt(m / n) * math.sqrt(m * n))
        assert float(row["update_rms"]) == pytest.approx(float(rms), rel=1e-4)
        for s in SIDE_KEYS[sides]:
            lo, hi = float(row[f"lam_{s}_min"]), float(row[f"lam_{s}_max"])
            assert 1e-5 <= lo <= hi
            assert float(row[f"cond_{s}"]) == pytest.approx(hi / lo, rel=1e-6)
            lam = opt.state[p][f"lam_{s}"]
            assert lo == float(lam.min()) and hi == float(lam.max())
            assert int(row[f"eigh_failures_{s}"]) == 0 and int(row[f"stat_skips_{s}"]) == 0


def test_muon_telemetry_has_only_update_rms():
    params = make_params([(6, 4)])
    opt = Muon(params, lr=0.02, weight_decay=0.0)
    run(opt, params, make_grads([(6, 4)], 2))
    (row,) = opt.telemetry()
    assert set(row) == {"update_rms"} and 0 < float(row["update_rms"]) < 2
