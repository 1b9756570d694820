"""Routing on the built-in GPT (mousse.train.model): embedding and head to the scalar optimizer,
the combined optimizer trains, round-trips and follows a scheduler; an hf: GPT-2's Conv1D weights
route as the matrices they are. The routing rules on plain
torch models: tests/optim/test_routing.py."""

import copy

import pytest
import torch

from mousse import CombinedOptimizer, Mousse, Muon, build_optimizer
from mousse.optim.routing import routed_shapes
from mousse.train.model import GPT, GPTConfig


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=2, head_dim=16, seq_len=16))


@pytest.mark.parametrize("optimizer", ["mousse", "muon", "adamw"])
def test_gpt_routing_never_sends_embedding_or_head_to_matrix_optimizer(optimizer):
    model = tiny_gpt()
    opt, routes = build_optimizer(model, optimizer=optimizer, lr=0.02, scalar_lr=0.003)
    by_name = {r.name: r for r in routes}
    assert (
        by_name["embed.weight"].optimizer == "adamw" and by_name["embed.weight"].role == "embedding"
    )
    assert (
        by_name["lm_head.weight"].optimizer == "adamw" and by_name["lm_head.weight"].role == "head"
    )
    matrix = [r for r in routes if r.role == "matrix"]
    assert len(matrix) == 2 * 6 and all(r.optimizer == optimizer for r in matrix)
    assert set(by_name) == {n for n, _ in model.named_parameters()}
    matrix_params = {id(p) for g in opt.parts["matrix"].param_groups for p in g["params"]}
    assert (
        id(model.embed.weight) not in matrix_params
        and id(model.lm_head.weight) not in matrix_params
    )
    expected = {"mousse": Mousse, "muon": Muon, "adamw": torch.optim.AdamW}[optimizer]
    assert type(opt.parts["matrix"]) is expected


def test_lion_head_lr_is_scaled_by_fan_in():
    model = tiny_gpt()
    _, routes = build_optimizer(model, scalar_optimizer="lion", scalar_lr=0.06)
    by_name = {r.name: r for r in routes}
    assert by_name["lm_head.weight"].lr == pytest.approx(0.06 / 32**0.5)
    assert by_name["embed.weight"].lr == pytest.approx(0.06)


def test_bad_optimizer_names_raise():
    with pytest.raises(ValueError, match="optimizer"):
        build_optimizer(tiny_gpt(), optimizer="sgd")
    with pytest.raises(ValueError, match="scalar_optimizer"):
        build_optimizer(tiny_gpt(), scalar_optimizer="sgd")


def _train(model, opt, steps, sched=None):
    torch.manual_seed(1)
    x = torch.randint(0, 64, (4, 16))
    losses = []
    for _ in range(steps):
        _, loss = model(x, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched:
            sched.step()
        losses.append(loss.item())
    return losses


def test_combined_optimizer_trains_round_trips_and_follows_a_scheduler():
    model = tiny_gpt()
    opt, _ = build_optimizer(model, lr=0.02, scalar_lr=0.003, matrix_kwargs={"precond_freq": 3})
    assert isinstance(opt, CombinedOptimizer) and isinstance(opt, torch.optim.Optimizer)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    losses = _train(model, opt, 4, sched)
    assert losses[-1] < losses[0]
    assert opt.parts["matrix"].param_groups[0]["lr"] == pytest.approx(0.02 * 0.5**4)
    assert opt.parts["scalar"].param_groups[0]["lr"] == pytest.approx(0.003 * 0.5**4)

    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    ahead = _train(model, opt, 5)
    clone = tiny_gpt()
    clone.load_state_dict(saved_model)
    opt2, _ = build_optimizer(clone, lr=0.02, scalar_lr=0.003, matrix_kwargs={"precond_freq": 3})
    opt2.load_state_dict(saved_opt)
    assert _train(clone, opt2, 5) == ahead
    assert set(saved_opt) == {"state", "param_groups"}  # torch's standard form
    assert [g["rule"] for g in saved_opt["param_groups"]] == ["matrix", "scalar"]
    with pytest.raises(ValueError, match="parts"):  # earlier mousse's form, one part missing
        opt2.load_state_dict({"matrix": saved_opt})


def test_hf_gpt2_routes_its_conv1d_weights_as_the_matrices_they_are():
    """GPT-2's Conv1D layers store their weights (in, out): routed to the family optimizer in a
    group that says so, and shown so in the routing table."""
    pytest.importorskip("transformers")
    from mousse.train.config import resolve
    from mousse.train.usermodel import build_model
    from mousse_cli.train_view import routing_summary

    cfg = resolve({"model": "hf:gpt2", "model_config": "n_embd=32,n_layer=1,n_head=2"})
    model = build_model(cfg, 64)
    opt, routes = build_optimizer(model)
    matrix = {r.name: r for r in routes if r.role == "matrix"}
    assert sorted(n.split(".h.0.")[1] for n in matrix) == [
        "attn.c_attn.weight",
        "attn.c_proj.weight",
        "mlp.c_fc.weight",
        "mlp.c_proj.weight",
    ]
    assert all(r.transposed for r in matrix.values())
    c_fc = next(n for n in matrix if "c_fc" in n)
    assert matrix[c_fc].shape == (32, 128)  # stored (in, out)
    assert routed_shapes(model)[c_fc] == (128, 32)  # what ownership plans and benchmarks cost
    assert not any(r.transposed for r in routes if r.role != "matrix")
    groups = opt.parts["matrix"].param_groups
    assert [(g["transposed"], len(g["params"])) for g in groups] == [(True, 4)]
    assert "4 matrix stored (in, out) -> mousse" in routing_summary(routes)
