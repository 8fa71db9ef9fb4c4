"""A plain Llama decoder (Llama 2/3 family) without a KV cache.

RMSNorm, rotary position embeddings (rotate-half form), grouped-query attention through
``F.scaled_dot_product_attention`` and a SwiGLU MLP. Every forward sees the whole sequence: caching
is the compiler's job (the ``insert-kv-cache`` pass), not the model's.

The code is written for ``torch.export``: shapes only flow from ``input_ids.shape``, positions come
from ``torch.arange(S)`` inside ``forward`` (so S stays symbolic), and nothing branches on tensor
values. Shape comments use B = batch, S = sequence, D = model dim, H / KV = query / key-value heads,
Dh = head dim, I = MLP intermediate dim, V = vocabulary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class LlamaConfig:
    """Shape of a Llama model. ``head_dim`` is ``dim // n_heads``."""

    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    intermediate_size: int = 14336
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        check_attention_shape(type(self).__name__, self.dim, self.n_heads, self.n_kv_heads)

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def check_attention_shape(config_name: str, dim: int, n_heads: int, n_kv_heads: int) -> None:
    """Raise ValueError when the head counts cannot split ``dim`` (shared by Llama and Mixtral)."""
    if dim % n_heads != 0:
        raise ValueError(f"{config_name}: dim={dim} is not divisible by n_heads={n_heads}")
    if n_heads % n_kv_heads != 0:
        raise ValueError(f"{config_name}: n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
    if (dim // n_heads) % 2 != 0:
        raise ValueError(f"{config_name}: head_dim={dim // n_heads} must be even for rotary embeddings")


class RMSNorm(nn.Module):
    """Root-mean-square norm, computed in float32 and cast back before the weight (as Llama does)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


def rope_cos_sin(
    seq_len: int, head_dim: int, theta: float, device: torch.device, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[S, Dh]`` for positions ``0..S-1``, computed in float32.

    ``inv_freq[i] = theta ** (-2i / Dh)``, written as ``exp(-2i * ln(theta) / Dh)`` so the graph
    holds only arange/mul/exp. Each frequency appears twice (``cat([f, f])``) to match rotate-half.
    """
    inv_freq = torch.exp(
        torch.arange(0, head_dim, 2, device=device, dtype=torch.float32) * (-math.log(theta) / head_dim)
    )  # [Dh/2]
    positions = torch.arange(seq_len, device=device, dtype=torch.float32)  # [S]
    freqs = positions[:, None] * inv_freq[None, :]  # [S, Dh/2]
    angles = torch.cat([freqs, freqs], dim=-1)  # [S, Dh]
    return angles.cos().to(dtype), angles.sin().to(dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[x1, x2] -> [-x2, x1]`` over the last dim."""
    half = x.shape[-1] // 2
    x1 = x[..., :half]
    x2 = x[..., half:]
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, H, S, Dh]`` by the angles in ``cos/sin [S, Dh]``."""
    return x * cos + rotate_half(x) * sin


class Attention(nn.Module):
    """Grouped-query causal self-attention with rotary embeddings; separate q/k/v projections."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        k = self.wk(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, S, Dh]
        v = self.wv(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, S, Dh]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        # Each group of H / KV query heads shares one key/value head.
        out = F.scaled_dot_product_attention(
            q, k, v, is_causal=True, enable_gqa=self.n_heads != self.n_kv_heads
        )  # [B, H, S, Dh]
        out = out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)  # [B, S, H*Dh]
        return self.wo(out)  # [B, S, D]


class SwiGLU(nn.Module):
    """``w2(silu(w1 x) * w3 x)``: w1 is the gate, w3 the up projection, w2 the down projection."""

    def __init__(self, dim: int, intermediate_size: int) -> None:
        super().__init__()
        self.w1 = nn.Linear(dim, intermediate_size, bias=False)
        self.w3 = nn.Linear(dim, intermediate_size, bias=False)
        self.w2 = nn.Linear(intermediate_size, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))  # [B, S, I] -> [B, S, D]


class LlamaBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config.dim, config.n_heads, config.n_kv_heads)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)  # [B, S, D]
        return x + self.feed_forward(self.ffn_norm(x))  # [B, S, D]


class Llama(nn.Module):
    """``forward(input_ids [B, S]) -> logits [B, S, V]``; the LM head may share the embedding."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(LlamaBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        S = input_ids.shape[1]
        x = self.tok_embeddings(input_ids)  # [B, S, D]
        cos, sin = rope_cos_sin(S, self.config.head_dim, self.config.rope_theta, x.device, x.dtype)  # [S, Dh]
        for layer in self.layers:
            x = layer(x, cos, sin)
        x = self.norm(x)
        head = self.tok_embeddings.weight if self.output is None else self.output.weight  # [V, D]
        return F.linear(x, head)  # [B, S, V]
