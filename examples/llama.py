"""A small Llama-style language model, to train with your own model in mousse:

    mousse train --model examples/llama.py:llama --model-config d_model=128,n_layers=2
    mousse ablate --optimizer muon,mousse --model examples/llama.py:llama

Pre-norm blocks with RMSNorm (learned gains), causal attention with rotary position embeddings,
a SwiGLU MLP, no biases, and an untied output head. mousse routes the parameters by module (no
`param_roles()` needed): the Linear weights of the blocks to the matrix optimizer (Mousse,
Muon, ...), the embedding, the head (the Linear with vocab_size outputs) and the norm gains to
the scalar optimizer (AdamW or Lion). See docs/models.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return F.rms_norm(x, (x.size(-1),), self.weight, self.eps)


def rotate(x: Tensor, base: float = 10000.0) -> Tensor:
    """Rotary position embedding of x (B, H, T, D): pairs of channels turned by position."""
    T, D = x.shape[-2:]
    freq = base ** -(torch.arange(0, D, 2, device=x.device, dtype=torch.float32) / D)
    angle = torch.outer(torch.arange(T, device=x.device, dtype=torch.float32), freq)
    cos, sin = angle.cos(), angle.sin()
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.wq, self.wk, self.wv, self.wo = (
            nn.Linear(d_model, d_model, bias=False) for _ in range(4)
        )

    def forward(self, x: Tensor) -> Tensor:
        B, T, C = x.shape
        q, k, v = (
            w(x).view(B, T, self.n_heads, -1).transpose(1, 2) for w in (self.wq, self.wk, self.wv)
        )
        y = F.scaled_dot_product_attention(rotate(q), rotate(k), v, is_causal=True)
        return self.wo(y.transpose(1, 2).reshape(B, T, C))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int):
        super().__init__()
        hidden = 32 * -(-8 * d_model // 3 // 32)  # about 8/3 d_model, a multiple of 32
        self.gate = nn.Linear(d_model, hidden, bias=False)
        self.up = nn.Linear(d_model, hidden, bias=False)
        self.down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(d_model), Attention(d_model, n_heads)
        self.mlp_norm, self.mlp = RMSNorm(d_model), SwiGLU(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = RMSNorm(d_model)
        self.output = nn.Linear(d_model, vocab_size, bias=False)
        for p in self.parameters():  # Llama's init: N(0, 0.02) weights, unit norm gains
            if p.ndim == 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: Tensor) -> Tensor:
        """Token ids (B, T) -> logits (B, T, vocab_size)."""
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.output(self.norm(x))


def llama(
    vocab_size: int, seq_len: int, d_model: int = 128, n_layers: int = 2, n_heads: int = 4
) -> Llama:
    """The function `--model examples/llama.py:llama` names: mousse passes the data's vocab_size
    and the run's seq_len (unused: rotary embeddings work at any length), and --model-config
    the rest."""
    if d_model % n_heads or (d_model // n_heads) % 2:
        raise ValueError(f"d_model {d_model} must split into {n_heads} heads of even size")
    return Llama(vocab_size, d_model, n_layers, n_heads)
