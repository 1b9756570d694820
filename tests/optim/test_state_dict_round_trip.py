"""Every named optimizer's state_dict round trip is bitwise.

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import copy

import pytest
import torch
from support.family_ref import F64, Problem, params_of

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
        for a, b in zip(pa, pb, strict=True):
            assert torch.equal(a.detach(), b.detach()), (name, t + 1)
        assert not any(torch.equal(a.detach(), W0) for a, W0 in zip(pa, prob.W0, strict=True))
    if name == "SPlus":
        with opt.averaged_weights(), fresh.averaged_weights():
            for a, b in zip(pa, pb, strict=True):
                assert torch.equal(a.detach(), b.detach())
