"""Convolution weights, as Keller Jordan's Muon treats them: every family member optimizes a
(out, in, k...) weight as its (out, in x k...) matrix, and routing sends convolutions other than
the first (the patch embedding) to the matrix optimizer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mousse import build_optimizer
from mousse.optim.recipes import OPTIMIZER_CLASSES
from mousse.optim.routing import infer_roles

CONV = (8, 3, 3, 3)  # out, in, kh, kw: the matrix is 8 x 27


def knobs(name: str) -> dict:
    extra = {"fisher": "empirical"} if name == "tnt" else {}  # no sampled labels here
    return {"lr": 0.01, **extra}


@pytest.mark.parametrize("name", list(OPTIMIZER_CLASSES))
def test_a_conv_weight_steps_as_its_flattened_matrix(name):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(CONV, generator=g, dtype=torch.float64)
    conv = nn.Parameter(W.clone())
    flat = nn.Parameter(W.reshape(8, -1).clone())
    opt_conv = OPTIMIZER_CLASSES[name]([conv], **knobs(name))
    opt_flat = OPTIMIZER_CLASSES[name]([flat], **knobs(name))
    for _ in range(12):  # past a refresh every 10
        G = torch.randn(CONV, generator=g, dtype=torch.float64)
        conv.grad, flat.grad = G.clone(), G.reshape(8, -1).clone()
        opt_conv.step()
        opt_flat.step()
        assert torch.equal(conv.detach().reshape(8, -1), flat.detach())
    assert conv.shape == CONV and not torch.equal(conv.detach(), W)
    if name != "muon" and name != "specgd":
        assert opt_conv.state[conv]["Q_R"].shape == (27, 27)  # the input side is in x kh x kw
    with opt_conv.averaged_weights():  # SPlus evaluates the average: same shape as the weight
        assert conv.shape == CONV


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3)  # reads the image: a patch embedding
        self.block = nn.Conv2d(8, 8, 3)
        self.norm = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.norm(self.block(self.stem(x)))
        return self.head(x.mean(dim=(-2, -1)))


def test_routing_sends_convolutions_but_the_first_to_the_matrix_optimizer():
    model = Net()
    assert infer_roles(model) == {
        "stem.weight": "embedding",
        "stem.bias": "scalar",
        "block.weight": "matrix",
        "block.bias": "scalar",
        "norm.weight": "scalar",
        "norm.bias": "scalar",
        "head.weight": "head",
        "head.bias": "scalar",
    }
    opt, routes = build_optimizer(model, "mousse", lr=0.02)
    assert [r.name for r in routes if r.optimizer == "mousse"] == ["block.weight"]
    loss = model(torch.randn(2, 3, 8, 8)).square().mean()
    loss.backward()
    opt.step()
    assert torch.isfinite(model.block.weight).all()


def test_a_vector_is_still_refused():
    with pytest.raises(ValueError, match="convolution weights"):
        OPTIMIZER_CLASSES["mousse"]([nn.Parameter(torch.zeros(4))])
