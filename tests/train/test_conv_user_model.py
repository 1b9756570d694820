"""A user model's convolutions (mousse.train.usermodel) are routed without asking: the first,
the patch or token embedding, to the scalar optimizer, the rest to the matrix optimizer. The
optimizers on conv weights: tests/optim/test_conv_weights.py."""

from __future__ import annotations

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
