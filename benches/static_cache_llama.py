"""A Llama with a static KV cache, written the gpt-fast way: the strongest widely used decode baseline.

    model = StaticCacheLlama.from_builtin(build_model("llama-1b", torch.bfloat16, "cuda"))
    model.setup_caches(batch=8, max_len=384)
    logits = model(ids, torch.arange(128, device="cuda"))          # prefill: idx [B, S], input_pos [S]
    logits = model(next_tok[:, None], torch.tensor([128], device="cuda"))  # one decode step

Every shape is static once the caches are set up (the cache holds ``max_len`` positions; attention
reads all of them under a causal mask indexed by ``input_pos``), so ``torch.compile(mode=
"reduce-overhead", fullgraph=True)`` can capture the one-token step into one CUDA graph. K/V caches are
module buffers updated in place with ``index_copy_``.

The math is membound's built-in Llama (``membound.models.llama``), whose RMSNorm, SwiGLU, rope tables
and rotate-half are reused as is; only attention differs (it reads the cache). ``from_builtin`` takes
the built-in model's parameter *tensors* (``load_state_dict(assign=True)``: no copy), so every
contender of ``decode_e2e.py`` runs the same weights in the same memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from membound.models.llama import Llama, LlamaConfig, RMSNorm, SwiGLU, apply_rope, rope_cos_sin


class KVCache(nn.Module):
    """K and V buffers ``[B, KV, T, Dh]``; ``update`` writes positions ``input_pos`` and returns both."""

    def __init__(self, batch: int, n_kv_heads: int, max_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        super().__init__()
        shape = (batch, n_kv_heads, max_len, head_dim)
        self.register_buffer("k_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v_cache", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, input_pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k_cache.index_copy_(2, input_pos, k)  # k [B, KV, S, Dh] into slots input_pos [S]
        self.v_cache.index_copy_(2, input_pos, v)
        return self.k_cache, self.v_cache


class CachedAttention(nn.Module):
    """The built-in GQA attention (same parameter names) reading and writing a static cache."""

    def __init__(self, dim: int, n_heads: int, n_kv_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.n_kv_heads = n_kv_heads
        self.head_dim = dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=False)
        self.kv_cache: KVCache | None = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        if self.kv_cache is None:
            raise RuntimeError("StaticCacheLlama: call setup_caches(batch, max_len) before the first forward")
        B, S, _ = x.shape
        q = self.wq(x).view(B, S, self.n_heads, self.head_dim).transpose(1, 2)  # [B, H, S, Dh]
        k = self.wk(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, S, Dh]
        v = self.wv(x).view(B, S, self.n_kv_heads, self.head_dim).transpose(1, 2)  # [B, KV, S, Dh]
        q = apply_rope(q, cos, sin)
        k = apply_rope(k, cos, sin)
        k_all, v_all = self.kv_cache.update(input_pos, k, v)  # [B, KV, T, Dh]
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask,
                                             enable_gqa=self.n_heads != self.n_kv_heads)  # [B, H, S, Dh]
        out = out.transpose(1, 2).reshape(B, S, self.n_heads * self.head_dim)
        return self.wo(out)


class CachedBlock(nn.Module):
    """Pre-norm residual block, parameter names as ``membound.models.llama.LlamaBlock``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.dim, config.norm_eps)
        self.attention = CachedAttention(config.dim, config.n_heads, config.n_kv_heads)
        self.ffn_norm = RMSNorm(config.dim, config.norm_eps)
        self.feed_forward = SwiGLU(config.dim, config.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor,
                input_pos: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, input_pos)
        return x + self.feed_forward(self.ffn_norm(x))


class StaticCacheLlama(nn.Module):
    """``forward(idx [B, S], input_pos [S]) -> logits [B, S, V]``, writing K/V at ``input_pos``."""

    def __init__(self, config: LlamaConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(CachedBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = None if config.tie_embeddings else nn.Linear(config.dim, config.vocab_size, bias=False)
        self.max_batch = 0
        self.max_len = 0

    @classmethod
    def from_builtin(cls, model: Llama) -> "StaticCacheLlama":
        """A static-cache twin of ``model`` sharing its parameter tensors (no copy; eval, no grads)."""
        if not isinstance(model, Llama):
            raise TypeError(f"StaticCacheLlama.from_builtin expects membound.models.Llama, got {type(model).__name__}")
        with torch.device("meta"):
            twin = cls(model.config)
        twin.load_state_dict(model.state_dict(), strict=True, assign=True)
        return twin.eval().requires_grad_(False)

    def setup_caches(self, batch: int, max_len: int) -> None:
        """Allocate caches for ``batch`` rows of ``max_len`` positions, and the rope/mask tables."""
        weight = self.tok_embeddings.weight
        dtype, device = weight.dtype, weight.device
        cfg = self.config
        for layer in self.layers:
            layer.attention.kv_cache = KVCache(batch, cfg.n_kv_heads, max_len, cfg.head_dim, dtype, device)
        cos, sin = rope_cos_sin(max_len, cfg.head_dim, cfg.rope_theta, device, dtype)  # [T, Dh], as the built-in
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        causal = torch.ones(max_len, max_len, dtype=torch.bool, device=device).tril()
        self.register_buffer("causal_mask", causal, persistent=False)
        self.max_batch, self.max_len = batch, max_len

    def forward(self, idx: torch.Tensor, input_pos: torch.Tensor) -> torch.Tensor:
        x = self.tok_embeddings(idx)  # [B, S, D]
        cos = self.rope_cos[input_pos]  # [S, Dh]
        sin = self.rope_sin[input_pos]
        mask = self.causal_mask[None, None, input_pos]  # [1, 1, S, T]: query at p sees slots <= p
        for layer in self.layers:
            x = layer(x, cos, sin, mask, input_pos)
        x = self.norm(x)
        if self.output is None:  # tied: the embedding table is the head
            return F.linear(x, self.tok_embeddings.weight)  # [B, S, V]
        return self.output(x)  # [B, S, V] (an nn.Linear, or a weight-only int8 one)


class WeightOnlyInt8Linear(nn.Module):
    """gpt-fast's weight-only int8 linear: ``F.linear(x, W_int8.to(x.dtype)) * scales`` (per output channel),
    the form torch.compile fuses into one dequantizing GEMV. Built from membound's int8 packing so that
    both contenders hold the same int8 values and scales."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        from membound.ir.ops.quant import quantize

        q, s = quantize(weight, "int8")
        self.register_buffer("weight", q)  # int8 [N, K]
        self.register_buffer("scales", s)  # [N], the activation dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight.to(dtype=x.dtype)) * self.scales


def quantize_int8(model: StaticCacheLlama) -> StaticCacheLlama:
    """Replace every linear (the output head too, tied or not) with :class:`WeightOnlyInt8Linear`, in place."""
    for layer in model.layers:
        attn, ffn = layer.attention, layer.feed_forward
        for parent, names in ((attn, ("wq", "wk", "wv", "wo")), (ffn, ("w1", "w2", "w3"))):
            for name in names:
                setattr(parent, name, WeightOnlyInt8Linear(getattr(parent, name).weight))
    head = model.tok_embeddings.weight if model.output is None else model.output.weight
    model.output = WeightOnlyInt8Linear(head)
    return model
