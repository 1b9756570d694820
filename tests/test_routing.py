"""Routing by role, the combined optimizer, Lion, and the README's optimizer example."""

import copy
import re
from pathlib import Path

import pytest
import torch

from mousse import CombinedOptimizer, Lion, Mousse, Muon, build_optimizer
from mousse.optim.routing import infer_roles
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


def test_inferred_roles_for_a_plain_model():
    model = torch.nn.Sequential(
        torch.nn.Embedding(50, 8),
        torch.nn.Linear(8, 16),
        torch.nn.LayerNorm(16),
        torch.nn.Linear(16, 50),
    )
    roles = infer_roles(model)
    assert roles == {
        "0.weight": "embedding",
        "1.weight": "matrix",
        "1.bias": "scalar",
        "2.weight": "scalar",
        "2.bias": "scalar",
        "3.weight": "head",
        "3.bias": "scalar",
    }


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
    with pytest.raises(ValueError, match="parts"):
        opt2.load_state_dict({"matrix": saved_opt["matrix"]})


def test_lion_matches_its_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = Lion([w], lr=0.1, betas=(0.9, 0.99), weight_decay=0.1)
    ref_w, m = w.detach().clone(), torch.zeros(5, 3)
    for _ in range(4):
        g = torch.randn(5, 3)
        w.grad = g.clone()
        opt.step()
        update = torch.sign(0.9 * m + 0.1 * g)
        ref_w = ref_w * (1 - 0.1 * 0.1) - 0.1 * update
        m = 0.99 * m + 0.01 * g
        torch.testing.assert_close(w.detach(), ref_w)
    with pytest.raises(ValueError, match="betas"):
        Lion([w], betas=(0.9, 1.0))


def test_readme_optimizer_examples_run_as_written(capsys):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = re.search(r"## Use the optimizer in your own loop(.*?)\n## ", readme, re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for code in blocks:  # one session: later examples use earlier names
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "head      -> adamw" in out and "matrix    -> mousse" in out
    assert re.search(r"loss \d+\.\d{3}", out)
