"""A user model's convolutions (mousse.train.usermodel) are routed without asking: the first,
the patch or token embedding, to the scalar optimizer, the rest to the matrix optimizer, and
priced as the matrices they are; so are layers storing their weights (in, out). The optimizers
on conv weights: tests/optim/test_conv_weights.py."""

from __future__ import annotations

import torch
from torch import nn


class ConvLM(nn.Module):
    """A language model with a causal token-mixing convolution in its block."""

    def __init__(self, vocab_size=256, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)
        self.stem = nn.Conv1d(d, d, 1)
        self.mix = nn.Conv1d(d, d, 3, padding=2)
        self.lm_head = nn.Linear(d, vocab_size)

    def forward(self, idx):
        x = self.stem(self.embed(idx).mT)
        return self.lm_head(self.mix(x)[..., : idx.shape[1]].mT)


def test_a_user_model_with_convolutions_is_routed_without_asking():
    from mousse.train.usermodel import _roles

    roles = _roles("test:ConvLM", ConvLM(), 256)
    assert roles["mix.weight"] == "matrix" and roles["stem.weight"] == "embedding"


def conv_lm(vocab_size: int, seq_len: int) -> ConvLM:
    """ConvLM as a --model function."""
    return ConvLM(vocab_size)


def test_a_user_model_with_convolutions_is_priced_as_its_flattened_matrices():
    """What a run will cost counts a convolution as the (out, in x k) matrix the optimizer steps
    (a 3-D weight once stopped the estimate, so `mousse train` never started)."""
    from mousse.optim.knobs import RUN_KNOBS
    from mousse.train.config import resolve
    from mousse.train.estimate import estimate
    from mousse.train.presets import matrix_state_floats, weights_and_state_bytes
    from mousse.train.usermodel import build_model

    cfg = resolve({"model": f"{__file__}:conv_lm", "sides": "left", "seq_len": 16, "steps": 1})
    model = build_model(cfg, 256, "meta")
    knobs = {k: getattr(cfg, k) for k in RUN_KNOBS}
    params = dict(model.named_parameters())
    others = sum(2 * p.numel() for n, p in params.items() if n != "net.mix.weight")
    state = others + matrix_state_floats(knobs, 16, 16 * 3)  # one side, of width out = 16
    n = sum(p.numel() for p in params.values())
    assert weights_and_state_bytes(model, knobs) == 4 * (2 * n + state)
    assert estimate(cfg, 256, torch.device("cpu")).step_seconds > 0


class InOutLM(nn.Module):
    """A language model whose block layer stores its weight (in, out), marked as PEFT marks
    such layers (transformers' Conv1D needs no mark)."""

    def __init__(self, vocab_size=256, d=16):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d)
        self.up = nn.Module()
        self.up.fan_in_fan_out = True
        self.up.weight = nn.Parameter(torch.randn(d, 4 * d) / 4)
        self.lm_head = nn.Linear(4 * d, vocab_size)

    def forward(self, idx):
        return self.lm_head(self.embed(idx) @ self.up.weight)


def test_a_user_models_in_out_layers_are_routed_without_asking():
    """Their module tells what their 2-D weights are: block matrices, stored (in, out)."""
    from mousse.optim.routing import infer_transposed
    from mousse.train.usermodel import _roles

    model = InOutLM()
    assert _roles("test:InOutLM", model, 256)["up.weight"] == "matrix"
    assert infer_transposed(model) == {"up.weight"}
