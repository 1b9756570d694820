"""Routing by role on plain torch models, Lion, and the README's optimizer example. Routing the
built-in GPT and the combined optimizer training it: tests/train/test_gpt_routing.py."""

import re
from pathlib import Path

import pytest
import torch

from mousse import Lion
from mousse.optim.routing import infer_roles


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
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    section = re.search(r"## Use the optimizer in your own loop(.*?)\n## ", readme, re.S).group(1)
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) >= 2
    namespace: dict = {}
    for code in blocks:  # one session: later examples use earlier names
        exec(compile(code, "README.md", "exec"), namespace)
    out = capsys.readouterr().out
    assert "head      -> adamw" in out and "matrix    -> mousse" in out
    assert re.search(r"loss \d+\.\d{3}", out)
