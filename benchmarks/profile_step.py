"""Where a Mousse step's time goes: each part of the step timed alone on a preset's shapes.

    .venv/bin/python benchmarks/profile_step.py [preset] [repeats]

Parts (per optimizer step, all buckets; median of `repeats` after a warm-up): the Newton-Schulz
Muon also pays, factor statistics (G G^T, G^T G), whitening + unwhitening (four matmuls), the
norms and graft, P = Q diag(lam^-alpha) (what every step computed before it was cached at
refresh), and one refresh (eigh or qr, with the factor normalization) divided by 10 for refresh
every 10 steps; then whole steps of Muon and of Mousse between refreshes. Matmul GFLOP per step
are counted alongside, so time can be read against work.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

import mousse.optim.precondition as pc
from mousse.experiments.bench import matrix_shapes, ns_flops
from mousse.optim.orthogonalize import frobenius_norm, orthogonalize
from mousse.optim.recipes import Mousse, Muon
from mousse.optim.step import graft


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def stats(G, F, eig, P):  # in place on the bench's factors: timing only
    for side in ("L", "R"):
        pc.accumulate(F[side], G, 0.95, "left" if side == "L" else "right")


def whitening(G, F, eig, P):
    pc.unwhiten(pc.whiten(G, P["L"], P["R"]), P["L"], P["R"])


def norms(G, F, eig, P):
    graft(G, frobenius_norm(G), frobenius_norm(G))


def inverse_roots(G, F, eig, P):
    for lam, Q in eig.values():
        pc.inverse_root_basis(lam, Q, 0.125, torch.float32)


def refresh(method):
    def run(G, F, eig, P):
        for side, other in (("L", G.size(-1)), ("R", G.size(-2))):
            factor = pc.normalized(F[side], 11, 0.95, True, "trace", other)
            pc.refresh(factor, *eig[side], 1e-5, torch.float32, method)

    return run


def make_buckets(shapes, g):
    """Per shape: a stacked gradient, its two factors, their eigendecompositions and bases."""
    buckets = []
    for (m, n), c in shapes.items():
        G = torch.randn(c, m, n, generator=g)
        F = {side: (G @ G.mT if side == "L" else G.mT @ G) / 10 for side in ("L", "R")}
        eig = {side: torch.linalg.eigh(F[side]) for side in F}
        P = {
            side: pc.inverse_root_basis(lam, Q, 0.125, torch.float32)
            for side, (lam, Q) in eig.items()
        }
        buckets.append((G, F, eig, P))
    return buckets


def main(preset="small", repeats=20):
    shapes = matrix_shapes(preset)
    g = torch.Generator().manual_seed(0)
    buckets = make_buckets(shapes, g)

    def each(fn):
        return lambda: [fn(*b) for b in buckets]

    flops = {
        "newton_schulz": sum(c * ns_flops(m, n) for (m, n), c in shapes.items()),
        "factor_stats": sum(c * 2 * m * n * (m + n) for (m, n), c in shapes.items()),
        "whiten_unwhiten": sum(c * 4 * m * n * (m + n) for (m, n), c in shapes.items()),
    }
    parts = {
        "newton_schulz": each(lambda G, *_: orthogonalize(G, "you5", 5, torch.float32)),
        "factor_stats": each(stats),
        "whiten_unwhiten": each(whitening),
        "norms_graft": each(norms),
        "P_per_step_(now_cached)": each(inverse_roots),
        "refresh_eigh/10": each(refresh("eigh")),
        "refresh_qr/10": each(refresh("qr")),
    }
    params = [
        torch.nn.Parameter(torch.randn(s, generator=g)) for s, c in shapes.items() for _ in range(c)
    ]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    steps = {
        "muon_step": Muon(params, lr=0.02),
        "mousse_step_no_refresh": Mousse(params, lr=0.02, precond_freq=10**9),
    }
    for opt in steps.values():
        opt.step()
    print(f"{preset}: {dict(shapes)}, {torch.get_num_threads()} threads, median of {repeats}")
    for name, fn in {**parts, **{k: opt.step for k, opt in steps.items()}}.items():
        ms = median_ms(fn, repeats) / (10 if name.endswith("/10") else 1)
        gflop = flops.get(name)
        rate = f"  {gflop / 1e9:.2f} GFLOP, {gflop / ms / 1e6:.0f} GFLOP/s" if gflop else ""
        print(f"  {name:<24} {ms:8.2f} ms{rate}")


if __name__ == "__main__":
    main(*(f(a) for f, a in zip((str, int), sys.argv[1:], strict=False)))  # arguments optional
