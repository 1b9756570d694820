"""The refresh off the step's critical path on a real NVIDIA GPU: no host sync in a step without
a refresh, a delayed refresh on its own stream equal to one computed at once, the host refresh
and the matmul root next to eigh. Skipped without CUDA; `scripts/gpu_check.sh` runs it."""

from __future__ import annotations

import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)

from mousse import Mousse

CUDA = torch.device("cuda")
SHAPES = [(256, 64), (256, 64), (64, 256), (128, 128)]


def make(**kw):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g).to(CUDA)) for s in SHAPES]
    return params, Mousse(params, **{"lr": 0.02, "precond_freq": 5, **kw})


def run(params, opt, steps, start=1):
    for t in range(start, start + steps):
        g = torch.Generator().manual_seed(1000 + t)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g).to(CUDA)
        opt.step()


@pytest.mark.parametrize("knobs", [{}, {"refresh_delay": 2}, {"refresh": "qr"}])
def test_steps_without_a_refresh_never_sync(knobs):
    """Steps 2-5 neither refresh nor use a delayed refresh (refreshes at 1, 6, ...)."""
    params, opt = make(**knobs)
    run(params, opt, 1)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        run(params, opt, 4, start=2)
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_background_refresh_on_its_stream_equals_at_once():
    p1, opt1 = make(refresh_delay=3, refresh_schedule="staggered")
    p2, opt2 = make(refresh_delay=3, refresh_schedule="staggered")
    run(p1, opt1, 1)
    run(p2, opt2, 1)
    for b in opt2._buckets[0]:
        b.refreshes.background = False
    run(p1, opt1, 20, start=2)
    run(p2, opt2, 20, start=2)
    assert all(torch.equal(a, b) for a, b in zip(p1, p2, strict=True))


@pytest.mark.parametrize("knobs", [{"refresh_device": "cpu"}, {"refresh": "root"}])
def test_host_and_root_refreshes_train_like_eigh(knobs):
    p1, opt1 = make(ns_dtype=torch.float32)
    p2, opt2 = make(ns_dtype=torch.float32, **knobs)
    run(p1, opt1, 12)
    run(p2, opt2, 12)
    for a, b in zip(p1, p2, strict=True):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=0)
