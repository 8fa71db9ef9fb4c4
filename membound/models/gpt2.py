"""A plain GPT-2 decoder without a KV cache.

Learned position embeddings, LayerNorm, tanh-approximated GELU, a fused qkv projection with bias, and
attention written out by hand (``q @ k^T * scale``, causal mask, softmax, ``@ v``) the way GPT-2 and
many research models do it: the compiler's ``fuse-attention`` pass is expected to recognise it.
The LM head is tied to the token embedding.

Written for ``torch.export``: positions and the causal mask are built from ``S = input_ids.shape[1]``
inside ``forward``, so both batch and sequence stay symbolic. Shape comments: B = batch, S = sequence,
D = model dim, H = heads, Dh = head dim, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class GPT2Config:
    """Shape of a GPT-2 model. ``n_positions`` bounds the sequence length; the MLP is ``4 * dim`` wide."""

    vocab_size: int = 50257
    n_positions: int = 1024
    dim: int = 768
    n_layers: int = 12
    n_heads: int = 12
    norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        if self.dim % self.n_heads != 0:
            raise ValueError(f"GPT2Config: dim={self.dim} is not divisible by n_heads={self.n_heads}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class GPT2Attention(nn.Module):
    """Causal self-attention, computed explicitly (no SDPA) from one fused qkv projection."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.c_attn = nn.Linear(dim, 3 * dim)
        self.c_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=-1)  # 3 x [B, S, D]
        q = q.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        k = k.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        v = v.view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(self.head_dim))  # [B, H, S, S]
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()  # [S, S], True = may attend
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = scores.softmax(dim=-1)  # [B, H, S, S]
        out = probs @ v  # [B, H, S, Dh]
        out = out.transpose(1, 2).reshape(B, S, D)  # [B, S, D]
        return self.c_proj(out)


class GPT2MLP(nn.Module):
    """``c_proj(gelu_tanh(c_fc(x)))`` with a ``4 * dim`` hidden layer."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, 4 * dim)
        self.c_proj = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))  # [B, S, 4D] -> [B, S, D]


class GPT2Block(nn.Module):
    """Pre-norm residual block: ``x + attn(ln_1(x))`` then ``x + mlp(ln_2(x))``."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.attn = GPT2Attention(config.dim, config.n_heads)
        self.ln_2 = nn.LayerNorm(config.dim, eps=config.norm_eps)
        self.mlp = GPT2MLP(config.dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))  # [B, S, D]
        return x + self.mlp(self.ln_2(x))  # [B, S, D]


class GPT2(nn.Module):
    """``forward(input_ids [B, S]) -> logits [B, S, V]`` with S at most ``n_positions``."""

    def __init__(self, config: GPT2Config) -> None:
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.dim)
        self.wpe = nn.Embedding(config.n_positions, config.dim)
        self.h = nn.ModuleList(GPT2Block(config) for _ in range(config.n_layers))
        self.ln_f = nn.LayerNorm(config.dim, eps=config.norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        S = input_ids.shape[1]
        positions = torch.arange(S, device=input_ids.device)  # [S]
        x = self.wte(input_ids) + self.wpe(positions)  # [B, S, D]
        for block in self.h:
            x = block(x)
        x = self.ln_f(x)
        return F.linear(x, self.wte.weight)  # [B, S, V], head tied to the embedding
