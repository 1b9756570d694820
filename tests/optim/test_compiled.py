"""The optimizer step under torch.compile (`compiled=True`): captured whole (fullgraph: no host
syncs, no graph breaks), the same steps as eager, and no recompiles as the LR schedule and the
step count move. Most checks use the "eager" backend (dynamo's capture without code generation,
fast); one runs inductor, the real thing, on one small bucket."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
import torch._dynamo.testing
from torch._dynamo.utils import counters

from mousse import Mousse, build_optimizer
from mousse.optim import family
from mousse.optim.recipes import OPTIMIZER_CLASSES

SHAPES = [(16, 16), (16, 16), (32, 16), (16, 32)]  # three buckets, one of two matrices


@pytest.fixture
def capture(monkeypatch):
    """Compile with a frame counter as the backend, whole graphs only."""
    torch._dynamo.reset()
    counter = torch._dynamo.testing.CompileCounter()
    monkeypatch.setattr(family, "COMPILE_OPTIONS", {"backend": counter, "fullgraph": True})
    yield counter
    torch._dynamo.reset()


def run(cls, compiled: bool, steps: int, **knobs):
    """`steps` steps with a decaying LR; returns (params, optimizer)."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) / 4) for s in SHAPES]
    opt = cls(params, lr=0.01, compiled=compiled, precond_freq=3, **knobs)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1 / (1 + s))
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
        sched.step()
    return params, opt


KNOBS = {"tnt": {"fisher": "empirical"}}  # the sampled Fisher needs the trainer's hook


@pytest.mark.slow
@pytest.mark.parametrize("name", list(OPTIMIZER_CLASSES))
def test_compiled_step_is_captured_whole_and_matches_eager(capture, name):
    cls, knobs = OPTIMIZER_CLASSES[name], KNOBS.get(name, {})
    eager, _ = run(cls, False, 12, **knobs)
    params, opt = run(cls, True, 12, **knobs)
    for p, q in zip(params, eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    frames = capture.frame_count
    assert 0 < frames <= 16
    # 12 more steps, with new LRs, step counts and refreshes: nothing compiles again
    g = torch.Generator().manual_seed(1)
    for step in range(12):
        for group in opt.param_groups:
            group["lr"] = 0.01 / (13 + step)
        for p in params:
            p.grad = torch.randn(p.shape, generator=g)
        opt.step()
    assert capture.frame_count == frames


@pytest.mark.slow
def test_compiled_state_dict_round_trips_with_eager(capture):
    """A compiled optimizer's state, loaded into an eager one, continues the run: it is the same
    state (and the same steps) as an eager run throughout."""
    g = torch.Generator().manual_seed(3)
    start = [torch.randn(s, generator=g) / 4 for s in SHAPES]
    grads = [[torch.randn(s, generator=g) for s in SHAPES] for _ in range(8)]

    def steps(opt, params, first, last):
        for step in range(first, last):
            opt.param_groups[0]["lr"] = 0.01 / (1 + step)
            for p, grad in zip(params, grads[step], strict=True):
                p.grad = grad
            opt.step()

    ref = [torch.nn.Parameter(w.clone()) for w in start]
    steps(Mousse(ref, lr=0.01, precond_freq=3), ref, 0, 8)
    params = [torch.nn.Parameter(w.clone()) for w in start]
    opt = Mousse(params, lr=0.01, precond_freq=3, compiled=True)
    steps(opt, params, 0, 5)
    eager = Mousse(params, lr=0.01, precond_freq=3)
    eager.load_state_dict(opt.state_dict())
    steps(eager, params, 5, 8)
    for p, q in zip(params, ref, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_step_of_weights_stored_in_out_matches_eager(capture):
    """Weights stored (in, out) (`transposed`): captured whole too, and the same steps as their
    (out, in) twins in eager mode, transposed."""
    g = torch.Generator().manual_seed(5)
    start = [torch.randn(s, generator=g) / 4 for s in SHAPES]
    twins = [torch.nn.Parameter(w.clone()) for w in start]
    stored = [torch.nn.Parameter(w.T.clone()) for w in start]
    opts = [
        Mousse(twins, lr=0.01, precond_freq=3, sides="left"),
        Mousse(stored, lr=0.01, precond_freq=3, sides="left", transposed=True, compiled=True),
    ]
    for _ in range(6):
        for p, q in zip(twins, stored, strict=True):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.T.clone()
        for opt in opts:
            opt.step()
    for p, q in zip(twins, stored, strict=True):
        torch.testing.assert_close(p, q.T, rtol=1e-5, atol=1e-6)
    assert capture.frame_count > 0


def test_build_optimizer_passes_compiled_through():
    model = torch.nn.Sequential(
        torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8), torch.nn.Linear(8, 10)
    )
    opt, _ = build_optimizer(model, optimizer="muon", compiled=True)
    assert opt.parts["matrix"].compiled
    opt, _ = build_optimizer(model, optimizer="mousse")
    assert not opt.parts["matrix"].compiled


@pytest.mark.slow
def test_inductor_compiled_mousse_matches_eager():
    """The default backend (inductor: generated C++ on CPU) on one bucket, both sides whitened:
    the same steps as eager, and one graph each for the statistics and the update although the
    lr changes every step (inductor specializes numbers that reach kernels as scalars)."""
    torch._dynamo.reset()
    counters.clear()
    g = torch.Generator().manual_seed(4)
    start = [torch.randn(24, 16, generator=g) / 4 for _ in range(2)]
    grads = [[torch.randn(24, 16, generator=g) for _ in start] for _ in range(6)]
    out = []
    for compiled in (False, True):
        params = [torch.nn.Parameter(w.clone()) for w in start]
        opt = Mousse(params, lr=0.02, precond_freq=3, compiled=compiled)
        for step, gs in enumerate(grads):
            opt.param_groups[0]["lr"] = 0.02 / (1 + step)
            for p, grad in zip(params, gs, strict=True):
                p.grad = grad
            opt.step()
        out.append(params)
    for p, q in zip(*out, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
