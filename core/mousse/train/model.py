"""The paper's GPT (modded-nanoGPT style) on one page.

Pre-norm blocks with gain-free RMSNorm, causal attention with QK-RMSNorm and rotary position
embeddings, a ReLU^2 MLP of width 4*d_model, no biases anywhere, and an untied output head.
With no gains or biases every trainable tensor is either a block matrix (what Mousse/Muon train),
the embedding, or the head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class GPTConfig:
    """Model shape; the defaults are the paper's 160M model."""

    vocab_size: int = 50304
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 6
    head_dim: int = 128
    seq_len: int = 1024


def norm(x: Tensor) -> Tensor:
    """RMSNorm over the last dim, without a learnable gain."""
    return F.rms_norm(x, (x.size(-1),))


def rotary(
    seq_len: int, head_dim: int, device: torch.device, base: float = 10000.0
) -> tuple[Tensor, Tensor]:
    """cos/sin tables of shape (seq_len, head_dim/2), fp32, built on the fly (cheap, no buffers
    to keep in sync when a model is built on the meta device or moved)."""
    inv_freq = base ** -(
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) / head_dim
    )
    angles = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles.cos(), angles.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate the two halves of the head dim of x (B, H, T, D) by position-dependent angles."""
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1).type_as(x)


def causal_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Causal scaled dot-product attention over (B, H, T, D). On a CPU it runs in fp32 even under
    bf16 autocast: there the fused bf16 kernel takes about twice the fp32 one's time at this
    model's head sizes (benchmarks/README.md), and fp32 is the more exact of the two."""
    if q.device.type != "cpu" or q.dtype == torch.float32:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    with torch.autocast("cpu", enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), is_causal=True)
    return y.type_as(q)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_heads, self.head_dim = cfg.n_heads, cfg.head_dim
        inner = cfg.n_heads * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, inner, bias=False)
        self.k = nn.Linear(cfg.d_model, inner, bias=False)
        self.v = nn.Linear(cfg.d_model, inner, bias=False)
        self.o = nn.Linear(inner, cfg.d_model, bias=False)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        B, T, _ = x.shape
        q, k, v = (
            lin(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
            for lin in (self.q, self.k, self.v)
        )
        q, k = apply_rotary(norm(q), cos, sin), apply_rotary(norm(k), cos, sin)
        y = causal_attention(q, k, v)
        out: Tensor = self.o(y.transpose(1, 2).reshape(B, T, -1))
        return out


class MLP(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, 4 * cfg.d_model, bias=False)
        self.proj = nn.Linear(4 * cfg.d_model, cfg.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.proj(F.relu(self.fc(x)).square())
        return out


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.attn = CausalSelfAttention(cfg)
        self.mlp = MLP(cfg)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(norm(x), cos, sin)
        out: Tensor = x + self.mlp(norm(x))
        return out


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        if cfg.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {cfg.head_dim}")
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Embedding std 1; Linear std 1/sqrt(fan_in) * min(1, sqrt(fan_out/fan_in)), the
        spectral-norm-aware init that keeps every layer's output RMS near its input RMS."""
        nn.init.normal_(self.embed.weight, std=1.0)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                fan_out, fan_in = m.weight.shape
                nn.init.normal_(
                    m.weight, std=min(1.0, math.sqrt(fan_out / fan_in)) / math.sqrt(fan_in)
                )

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """idx (B, T) token ids -> logits (B, T, vocab); with targets also the mean
        cross-entropy, computed in fp32 whatever the autocast dtype."""
        T = idx.size(1)
        if T > self.cfg.seq_len:
            raise ValueError(f"sequence length {T} exceeds the model's seq_len {self.cfg.seq_len}")
        cos, sin = rotary(T, self.cfg.head_dim, idx.device)
        x = norm(self.embed(idx))
        for block in self.blocks:
            x = block(x, cos, sin)
        logits: Tensor = self.lm_head(norm(x))
        if targets is None:
            return logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
        return logits, loss

    def param_roles(self) -> dict[str, str]:
        """{name: role}: "matrix" for 2-D block weights (Mousse/Muon), "embedding", "head", and
        "scalar" for anything else (none in this model; kept so optimizers route new params)."""

        def role(name: str, p: Tensor) -> str:
            if name == "embed.weight":
                return "embedding"
            if name == "lm_head.weight":
                return "head"
            return "matrix" if name.startswith("blocks.") and p.ndim == 2 else "scalar"

        return {name: role(name, p) for name, p in self.named_parameters()}

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def gpt_param_count(cfg: GPTConfig) -> int:
    """GPT(cfg).num_params() without building the model (a shape too big to build, even on the
    meta device, is refused by its count): per block q, k, v and o (4 d x inner) and the MLP's
    two (8 d^2), plus the embedding and the head (2 vocab x d)."""
    d, inner = cfg.d_model, cfg.n_heads * cfg.head_dim
    return cfg.n_layers * (4 * d * inner + 8 * d * d) + 2 * cfg.vocab_size * d
