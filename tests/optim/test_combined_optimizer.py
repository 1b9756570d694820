"""What `build_optimizer` returns is one standard torch optimizer: torch's state_dict form,
torch.distributed.checkpoint's get/set and save/load continuing bit for bit, GradScaler, SWALR
and added param groups; the `{'matrix': ..., 'scalar': ...}` form of earlier mousse still loads.
Under torchrun: tests/distributed/test_distributed.py."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
from torch import nn

from mousse import Mousse, build_optimizer

LR, SCALAR_LR = 0.02, 0.003
KNOBS = {"precond_freq": 2, "ns_dtype": torch.float64}


def model_and_optimizer(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Embedding(16, 8), nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 12), nn.Linear(12, 16)
    ).double()
    return model, optimizer_for(model)


def optimizer_for(model, state_dict=None):
    opt, _ = build_optimizer(model, lr=LR, scalar_lr=SCALAR_LR, matrix_kwargs=KNOBS)
    if state_dict is not None:
        opt.load_state_dict(state_dict)
    return opt


def train(model, opts, steps: int, seed: int = 1) -> None:
    """`steps` steps of the optimizer, or of a list of optimizers stepped one after the other."""
    opts = opts if isinstance(opts, list) else [opts]
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 16, (24,), generator=g)
        for opt in opts:
            opt.zero_grad()
        nn.functional.cross_entropy(model(x), x).backward()
        for opt in opts:
            opt.step()


def weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def assert_continues_alike(a, opt_a, b, opt_b, steps: int = 3) -> None:
    """Both continue on the same batches to bitwise the same weights, which moved."""
    before = weights(a)
    train(a, opt_a, steps, seed=7)
    train(b, opt_b, steps, seed=7)
    for x, y in zip(weights(a), weights(b), strict=True):
        assert torch.equal(x, y)
    assert not all(torch.equal(x, w0) for x, w0 in zip(weights(a), before, strict=True))


def test_state_dict_is_torchs_standard_form_over_every_group():
    model, opt = model_and_optimizer()
    train(model, opt, 2)
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert [g["rule"] for g in sd["param_groups"]] == ["matrix", "scalar"]
    params = [p for g in opt.param_groups for p in g["params"]]
    assert sorted(sd["state"]) == list(range(len(params))) == list(range(7))
    assert set(opt.state) == set(params)  # the union of both rules' state
    assert "Q_L" in opt.state[model[1].weight] and "exp_avg" in opt.state[model[0].weight]


def test_the_earlier_combined_form_still_loads_and_continues_bit_for_bit():
    """`{'matrix': ..., 'scalar': ...}` as earlier mousse saved it (what an HF Trainer's
    optimizer.pt of then holds): each part the state of its own optimizer, here built apart."""
    model, _ = model_and_optimizer()
    matrices = [model[1].weight, model[3].weight]
    matrix = Mousse(matrices, lr=LR, **KNOBS)
    others = [p for p in model.parameters() if all(p is not m for m in matrices)]
    scalar = torch.optim.AdamW(others, lr=SCALAR_LR, betas=(0.9, 0.95), weight_decay=0.0)
    train(model, [matrix, scalar], 3)  # as the combined optimizer of then stepped its parts
    earlier = copy.deepcopy({"matrix": matrix.state_dict(), "scalar": scalar.state_dict()})
    clone, opt = model_and_optimizer(seed=5)
    clone.load_state_dict(model.state_dict())
    opt.load_state_dict(earlier)
    assert_continues_alike(model, [matrix, scalar], clone, opt)
    with pytest.raises(ValueError, match=r"holds parts \['matrix'\], expected"):
        opt.load_state_dict({"matrix": earlier["matrix"]})


@pytest.fixture
def world_of_one(tmp_path):
    """A gloo process group of this process alone, as torchrun with one rank makes."""
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    yield
    dist.destroy_process_group()


def test_distributed_checkpoint_get_set_and_save_load_continue_bit_for_bit(world_of_one, tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    model, opt = model_and_optimizer()
    train(model, opt, 3)
    osd = get_optimizer_state_dict(model, opt)
    assert "1.weight" in osd["state"] and "Q_L" in osd["state"]["1.weight"]
    dcp.save({"optim": osd}, checkpoint_id=tmp_path / "dcp")

    for via in ("get/set", "save/load"):
        fresh, opt2 = model_and_optimizer(seed=3)
        fresh.load_state_dict(model.state_dict())
        if via == "get/set":
            loaded = copy.deepcopy(osd)
        else:
            loaded = {"optim": get_optimizer_state_dict(fresh, opt2)}  # the shapes to load into
            dcp.load(loaded, checkpoint_id=tmp_path / "dcp")
            loaded = loaded["optim"]
        set_optimizer_state_dict(fresh, opt2, loaded)
        reference = copy.deepcopy(model)  # the trained run, continued through its own state
        ref_opt = optimizer_for(reference, copy.deepcopy(opt.state_dict()))
        assert_continues_alike(reference, ref_opt, fresh, opt2)


def test_grad_scaler_and_swalr_drive_every_group():
    """GradScaler unscales every group's gradients (a power-of-two scale: exactly) before the
    step; SWALR sets every group's lr, matrix and scalar alike."""
    a, opt_a = model_and_optimizer()
    b, opt_b = model_and_optimizer()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    x = torch.randint(0, 16, (24,))
    for model, opt in ((a, opt_a), (b, opt_b)):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), x)
        if opt is opt_a:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
    for x_, y_ in zip(weights(a), weights(b), strict=True):
        assert torch.equal(x_, y_)
    swa = torch.optim.swa_utils.SWALR(opt_a, swa_lr=1e-3, anneal_epochs=1)
    opt_a.zero_grad()
    opt_a.step()  # no gradients: nothing moves; the scheduler's step follows an optimizer's
    swa.step()
    assert [g["lr"] for g in opt_a.param_groups] == [1e-3, 1e-3]
    assert opt_a.parts["matrix"].param_groups[0]["lr"] == 1e-3  # what the matrix step reads


def test_added_param_groups_go_to_the_optimizer_their_rule_names():
    _, opt = model_and_optimizer()
    extra = nn.Parameter(torch.ones(3, dtype=torch.float64))
    opt.add_param_group({"params": [extra], "rule": "scalar", "lr": 0.5})
    assert opt.param_groups[-1]["params"] == [extra] and opt.param_groups[-1]["betas"]
    assert any(g["params"] == [extra] for g in opt.parts["scalar"].param_groups)
    extra.grad = torch.ones(3, dtype=torch.float64)
    opt.step()
    assert not torch.equal(extra.detach(), torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="rule=None"):
        opt.add_param_group({"params": [nn.Parameter(torch.ones(2))]})
    with pytest.raises(ValueError, match="more than one parameter group"):
        opt.add_param_group({"params": [extra], "rule": "scalar"})
    assert sum(g["params"] == [extra] for g in opt.parts["scalar"].param_groups) == 1
