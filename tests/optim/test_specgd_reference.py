"""SpecGD against the polar factor of the raw gradient.

The references and what makes them well posed: tests/support/family_ref.py."""

from __future__ import annotations

import pytest
import torch
from support.family_ref import F64, assert_on_track, polar_pinv

# ---- SpecGD -------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(6, 4), (4, 6), (5, 5)])
def test_specgd_is_the_polar_factor_of_the_raw_gradient(shape):
    """W <- W - lr U V^T of the raw gradient; on rank-2 gradients the zero singular directions
    are dropped (the update has rank 2, all its non-zero singular values lr)."""
    from mousse import SpecGD

    m, n = shape
    g = torch.Generator().manual_seed(50 + m)
    W0 = torch.randn(m, n, dtype=F64, generator=g)
    p = torch.nn.Parameter(W0.clone())
    lr = 0.1
    opt = SpecGD([p], lr=lr, momentum=0.0, weight_decay=0.0)
    W = W0.clone()
    for t in range(6):
        rank = 2 if t % 2 == 0 else min(m, n)
        G = torch.randn(m, rank, dtype=F64, generator=g) @ torch.randn(
            rank, n, dtype=F64, generator=g
        )
        p.grad = G.clone()
        before = p.detach().clone()
        opt.step()
        W = W - lr * polar_pinv(G)
        assert_on_track(p, W, W0, 1e-9, t + 1)
        S = torch.linalg.svdvals(before - p.detach())
        torch.testing.assert_close(S[:rank], torch.full((rank,), lr, dtype=F64))
        assert all(float(x) < 1e-12 for x in S[rank:])
