"""The stacked state of a bucket (mousse.optim.step.BucketState): its view of the saved state
(`from_saved`) and the copy of some of its matrices a partial step works on (`rows`), each of
which names every field of the state; these tests fail when a field is added and one of them
forgets it. Whole partial steps: tests/optim/test_optim_behaviour.py."""

from __future__ import annotations

from dataclasses import fields

import torch

from mousse.optim.step import BucketState, SideState

N = 4  # matrices in the bucket


def side(optional: bool) -> SideState:
    """One side's state: each tensor distinct, the optional ones set or None."""
    required = {"factor", "lam", "Q", "eigh_failures", "stat_skips"}
    return SideState(
        **{
            f.name: torch.randn(N, 3) if f.name in required or optional else None
            for f in fields(SideState)
        }
    )


def bucket(optional: bool) -> BucketState:
    own = {
        f.name: torch.randn(N, 2)
        if f.name in ("momentum_buffer", "update_rms") or optional
        else None
        for f in fields(BucketState)
        if f.name != "sides"
    }
    return BucketState(**own, sides={"L": side(optional), "R": side(optional)})


def test_rows_takes_those_rows_of_every_tensor_and_keeps_none_none():
    idx = torch.tensor([3, 1])
    for optional in (True, False):
        state = bucket(optional)
        sub = state.rows(idx)
        assert list(sub.sides) == list(state.sides)
        pairs = [(state, sub)] + [(state.sides[s], sub.sides[s]) for s in state.sides]
        for whole, part in pairs:
            for f in fields(whole):
                if f.name == "sides":
                    continue
                value, taken = getattr(whole, f.name), getattr(part, f.name)
                assert (taken is None) == (value is None), f.name
                if value is not None:
                    assert torch.equal(taken, value[idx]), f.name
        # tensors() pairs them in one order, which put_rows writes back by
        for value, taken in zip(state.tensors(), sub.tensors(), strict=True):
            assert torch.equal(taken, value[idx])


def test_put_rows_writes_back_every_tensor():
    state, idx = bucket(True), torch.tensor([0, 2])
    sub = state.rows(idx)
    for t in sub.tensors():
        t.fill_(7.0)
    state.put_rows(idx, sub)
    for t in state.tensors():
        assert bool((t[idx] == 7.0).all()) and not bool((t[torch.tensor([1, 3])] == 7.0).any())


def test_from_saved_reads_every_saved_tensor_under_its_name():
    pending_names = {**BucketState.PENDING, **BucketState.PENDING_ORDER}
    names = {**BucketState.SAVED, **BucketState.COUNTERS, **pending_names}
    for pending in (True, False):
        saved = {"momentum_buffer": torch.zeros(N), "update_rms": torch.ones(N)}
        for s in ("L", "R"):
            for attr, name in names.items():
                if pending or attr not in pending_names:
                    saved[name.format(s)] = torch.randn(N)
        state = BucketState.from_saved(saved)
        assert state.momentum_buffer is saved["momentum_buffer"]
        assert state.update_rms is saved["update_rms"]
        assert (state.V, state.graft_v, state.average) == (None, None, None)
        for s in ("L", "R"):
            got = state.sides[s]
            for attr, name in names.items():
                assert getattr(got, attr) is saved.get(name.format(s)), (s, attr)
            # the whitening is never saved: recomputed from lam and Q
            assert (got.P, got.P_post) == (None, None)
            assert {f.name for f in fields(got)} == {*names, "P", "P_post"}
