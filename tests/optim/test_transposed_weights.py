"""Weights stored (in, out), as transformers' GPT-2 `Conv1D` stores them: every family member
optimizes each as the (out, in) matrix it is, so a transposed twin of an nn.Linear weight gets the
Linear's update, transposed; routing finds them (Conv1D by class, or a module's
`fan_in_fan_out = True`) and shows it. An hf: GPT-2 end to end: tests/train/test_gpt_routing.py."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mousse import TNT, Mousse, build_optimizer
from mousse.optim.recipes import OPTIMIZER_CLASSES
from mousse.optim.routing import infer_transposed

OUT, IN = 12, 5  # non-square, so the lr scale and each side's width tell the orientations apart
STEPS = 12  # past a refresh every 10
CASES = {
    **{name: {} for name in OPTIMIZER_CLASSES},
    "mousse-left": {"sides": "left"},
    "mousse-right": {"sides": "right"},
    "mousse-staggered": {"refresh_schedule": "staggered", "sides": "left"},  # phases by width
}


def knobs(name: str) -> dict:
    extra = {"fisher": "empirical"} if name == "tnt" else {}  # no sampled labels here
    return {"lr": 0.01, "precond_freq": 10, **extra, **CASES[name]}


def twins(seed: int = 0) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Two (out, in) weights of one shape and one of another, and their (in, out) twins."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(OUT, IN), (OUT, IN), (IN, OUT)]
    Ws = [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]
    return [nn.Parameter(W.clone()) for W in Ws], [nn.Parameter(W.T.clone()) for W in Ws]


def step_both(plain, stored, opts, g: torch.Generator) -> None:
    for p, q in zip(plain, stored, strict=True):
        G = torch.randn(p.shape, generator=g, dtype=torch.float64)
        p.grad, q.grad = G.clone(), G.T.clone()
    for opt in opts:
        opt.step()


@pytest.mark.parametrize("name", list(CASES))
def test_a_transposed_weight_gets_its_linear_twins_update(name):
    cls = OPTIMIZER_CLASSES[name.split("-")[0]]
    plain, stored = twins()
    opt_plain = cls(plain, **knobs(name))
    opt_stored = cls(stored, transposed=True, **knobs(name))
    g = torch.Generator().manual_seed(1)
    for t in range(STEPS):
        step_both(plain, stored, [opt_plain, opt_stored], g)
        for p, q in zip(plain, stored, strict=True):
            assert torch.equal(p.detach(), q.detach().T), (name, t + 1)
    assert not torch.equal(plain[0].detach(), twins()[0][0].detach())
    for key in ("Q_L", "Q_R"):  # the output side is the stored weight's columns
        if key in opt_plain.state[plain[0]]:
            assert opt_stored.state[stored[0]][key].shape == opt_plain.state[plain[0]][key].shape
    with opt_plain.averaged_weights(), opt_stored.averaged_weights():  # SPlus: the average
        assert torch.equal(plain[0].detach(), stored[0].detach().T)


def test_tnts_sampled_label_gradients_are_turned_too():
    plain, stored = twins()
    opts = [TNT(plain, lr=0.01), TNT(stored, lr=0.01, transposed=True)]
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        for opt, params in zip(opts, (plain, stored), strict=True):
            assert len(opt.fisher_params()) == len(params)  # every step: stat_freq 1
        sampled = [torch.randn(p.shape, generator=g, dtype=torch.float64) for p in plain]
        opts[0].set_fisher_grads(dict(zip(plain, sampled, strict=True)))
        opts[1].set_fisher_grads({q: s.T for q, s in zip(stored, sampled, strict=True)})
        step_both(plain, stored, opts, g)
        for p, q in zip(plain, stored, strict=True):
            assert torch.equal(p.detach(), q.detach().T)


@pytest.mark.parametrize("name", list(OPTIMIZER_CLASSES))
def test_a_transposed_convolution_weight_steps_as_its_convolution_twin(name):
    """Stored (in, out, k) (nn.ConvTranspose's layout), marked transposed: optimized as the
    (out, in x k) flattening of its (out, in, k) twin."""
    g = torch.Generator().manual_seed(0)
    W = torch.randn(OUT, IN, 3, generator=g, dtype=torch.float64)
    conv, stored = nn.Parameter(W.clone()), nn.Parameter(W.transpose(0, 1).clone())
    cls = OPTIMIZER_CLASSES[name]
    opts = [cls([conv], **knobs(name)), cls([stored], transposed=True, **knobs(name))]
    for _ in range(STEPS):
        G = torch.randn(W.shape, generator=g, dtype=torch.float64)
        conv.grad, stored.grad = G.clone(), G.transpose(0, 1).clone()
        for opt in opts:
            opt.step()
        assert torch.equal(conv.detach(), stored.detach().transpose(0, 1))
    assert stored.shape == (IN, OUT, 3) and not torch.equal(conv.detach(), W)


@pytest.mark.parametrize("name", ["mousse", "muon", "mousse-left"])
def test_without_the_mark_a_stored_transpose_steps_otherwise(name):
    """The test above can fail: read as stored, the (in, out) weight gets another update (the
    lr scale sqrt(out/in) inverted, the one-sided preconditioner on the other side)."""
    cls = OPTIMIZER_CLASSES[name.split("-")[0]]
    plain, stored = twins()
    opts = [cls(plain, **knobs(name)), cls(stored, **knobs(name))]
    step_both(plain, stored, opts, torch.Generator().manual_seed(1))
    assert not torch.allclose(plain[0].detach(), stored[0].detach().T)


def test_transposed_is_per_group_and_checked():
    plain, stored = twins()
    opt = Mousse([{"params": plain}, {"params": stored, "transposed": True}], lr=0.01)
    assert [g["transposed"] for g in opt.param_groups] == [False, True]
    with pytest.raises(ValueError, match="transposed='yes'"):
        Mousse([{"params": plain, "transposed": "yes"}])


def test_a_state_saved_for_the_other_orientation_is_refused():
    """A state saved before orientations were known (no 'transposed' in its groups) loads where
    the weights are (out, in); for weights stored (in, out) its buffers are the transposed
    matrices', so continuing it would be wrong: refused, naming the fix."""
    _, stored = twins()
    opt = Mousse(stored, lr=0.01)
    for p in stored:
        p.grad = torch.ones_like(p)
    opt.step()
    old = opt.state_dict()
    for group in old["param_groups"]:
        del group["transposed"]
    Mousse([nn.Parameter(p.detach().clone()) for p in stored], lr=0.01).load_state_dict(old)
    with pytest.raises(ValueError, match="start the run afresh"):
        Mousse(stored, lr=0.01, transposed=True).load_state_dict(old)


# ---- routing ------------------------------------------------------------------------------------


class Marked(nn.Module):
    """A user's layer storing its weight (in, out), marked as PEFT marks such layers."""

    fan_in_fan_out = True

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(n_in, n_out, dtype=torch.float64))

    def forward(self, x):
        return x @ self.weight


class Twins(nn.Module):
    def __init__(self, layer: nn.Module, n_in: int = IN, n_out: int = OUT):
        super().__init__()
        self.embed = nn.Embedding(16, n_in, dtype=torch.float64)
        self.up = layer
        self.head = nn.Linear(n_out, 16, dtype=torch.float64)

    def forward(self, x):
        return self.head(torch.relu(self.up(self.embed(x))))


def hf_conv1d(n_in: int, n_out: int) -> nn.Module:
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    return Conv1D(n_out, n_in).double()


def linear_twin(stored: nn.Module) -> nn.Module:
    """An nn.Linear computing what a Conv1D-style layer computes."""
    n_in, n_out = stored.weight.shape
    linear = nn.Linear(n_in, n_out, bias=hasattr(stored, "bias"), dtype=torch.float64)
    with torch.no_grad():
        linear.weight.copy_(stored.weight.T)
        if hasattr(stored, "bias"):
            linear.bias.copy_(stored.bias)
    return linear


@pytest.mark.parametrize("kind", ["conv1d", "marked"])
@pytest.mark.parametrize("optimizer, kwargs", [("mousse", {}), ("mousse", {"sides": "left"})])
def test_routing_orients_conv1d_and_marked_layers(kind, optimizer, kwargs):
    layer = hf_conv1d(IN, OUT) if kind == "conv1d" else Marked(IN, OUT)
    stored = Twins(layer)
    torch.manual_seed(0)
    stored.up.weight.data.normal_()
    plain = Twins(linear_twin(stored.up))
    plain.load_state_dict({**stored.state_dict(), "up.weight": stored.up.weight.detach().T})
    assert infer_transposed(stored) == {"up.weight"} and not infer_transposed(plain)
    opts, routes = zip(
        *(
            build_optimizer(m, optimizer, lr=0.02, matrix_kwargs={"precond_freq": 3, **kwargs})
            for m in (plain, stored)
        ),
        strict=True,
    )
    by_name = {r.name: r for r in routes[1]}
    assert by_name["up.weight"].transposed and by_name["up.weight"].role == "matrix"
    assert not any(r.transposed for r in routes[0])
    x = torch.randint(0, 16, (32,))
    for _ in range(5):
        for model, opt in zip((plain, stored), opts, strict=True):
            loss = nn.functional.cross_entropy(model(x), x)
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.testing.assert_close(plain.up.weight.detach(), stored.up.weight.detach().T)


def test_transposed_argument_names_the_weights():
    model = Twins(Marked(IN, OUT))
    _, routes = build_optimizer(model, transposed=set())  # overrides what is inferred
    assert not any(r.transposed for r in routes)
    with pytest.raises(ValueError, match=r"transposed names \['embed.weight'\]"):
        build_optimizer(model, transposed={"embed.weight"})
