"""A plain Mixtral decoder (sparse mixture of experts) without a KV cache.

Attention is Llama's (RMSNorm, RoPE, GQA). The MLP is a top-k mixture of SwiGLU experts, computed
by gathering each token's chosen experts' weights (``w1[expert_indices]``, as gpt-fast does) and
contracting with batched matmuls (``torch.matmul``: the IR has matmul, not einsum). Every shape is
static given ``[B, S]``, so the model exports without data-dependent shapes; the price is that the
gathered weights are ``[T, K, I, D]``, which suits decoding (few tokens) and is what a compiler's
MoE pass should replace for prefill.

Shape comments: B = batch, S = sequence, T = B*S tokens, D = model dim, E = experts, K = experts
per token (top_k), I = expert intermediate dim, V = vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from membound.models.llama import Attention, RMSNorm, check_attention_shape, rope_cos_sin


@dataclass(frozen=True)
class MixtralConfig:
    """Shape of a Mixtral model. ``head_dim`` is ``dim // n_heads``."""

    vocab_size: int = 32000
    dim: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int = 8
    intermediate_size: int = 14336
    n_experts: int = 8
    top_k: int = 2
    norm_eps: float = 1e-5
    rope_theta: float = 1e6
    tie_embeddings: bool = False

    def __post_init__(self) -> None:
        check_attention_shape("MixtralConfig", self.dim, self.n_heads, self.n_kv_heads)
        if not 1 <= self.top_k <= self.n_experts:
            raise ValueError(f"MixtralConfig: top_k={self.top_k} must be in [1, n_experts={self.n_experts}]")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


class MoEFeedForward(nn.Module):
    """Route each token to its ``top_k`` experts and sum their SwiGLU outputs, weighted by the router.

    Router: softmax over all experts (in float32), keep the top k, renormalise them to sum to 1.
    Expert e computes ``w2[e] @ (silu(w1[e] @ x) * (w3[e] @ x))``.
    """

    def __init__(self, dim: int, intermediate_size: int, n_experts: int, top_k: int) -> None:
        super().__init__()
        self.top_k = top_k
        self.gate = nn.Linear(dim, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, intermediate_size, dim))  # [E, I, D] gate
        self.w3 = nn.Parameter(torch.empty(n_experts, intermediate_size, dim))  # [E, I, D] up
        self.w2 = nn.Parameter(torch.empty(n_experts, dim, intermediate_size))  # [E, D, I] down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, D = x.shape
        x = x.reshape(B * S, D)  # [T, D]
        probs = self.gate(x).float().softmax(dim=-1)  # [T, E]
        weights, expert_indices = probs.topk(self.top_k, dim=-1)  # [T, K], [T, K]
        weights = (weights / weights.sum(dim=-1, keepdim=True)).to(x.dtype)  # [T, K]
        w1 = self.w1[expert_indices]  # [T, K, I, D]
        w3 = self.w3[expert_indices]  # [T, K, I, D]
        w2 = self.w2[expert_indices]  # [T, K, D, I]
        # Batched matrix-vector products, one per (token, chosen expert); einsum in the comments.
        x_col = x[:, None, :, None]  # [T, 1, D, 1]
        gate = F.silu((w1 @ x_col).squeeze(-1))  # td,tkid->tki: [T, K, I]
        up = (w3 @ x_col).squeeze(-1)  # td,tkid->tki: [T, K, I]
        expert_out = (w2 @ (gate * up).unsqueeze(-1)).squeeze(-1)  # tki,tkdi->tkd: [T, K, D]
        out = (weights.unsqueeze(1) @ expert_out).squeeze(1)  # tk,tkd->td: [T, D]
        return out.reshape(B, S, D)


class MixtralBlock(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + moe(norm(x))``."""

    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = Attention(config.dim, config.n_heads, config.n_kv_heads)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.block_sparse_moe = MoEFeedForward(config.dim, config.intermediate_size, config.n_experts, config.top_k)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin)  # [B, S, D]
        return x + self.block_sparse_moe(self.ffn_norm(x))  # [B, S, D]


class Mixtral(nn.Module):
    """``forward(input_ids [B, S]) -> logits [B, S, V]``."""

    def __init__(self, config: MixtralConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(MixtralBlock(config) for _ in range(config.n_layers))
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
