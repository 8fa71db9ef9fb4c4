"""``cache_write``: scatter the new K or V rows into a static cache at their positions, in place.

cache ``[B, H, T, D]``, values ``[B, H, S, D]``, positions ``[S]`` (shared by every batch row) or
``[B, S]`` (per row); ``cache[b, h, positions[b, s], :] = values[b, h, s, :]`` and the cache is
returned. One program copies one ``(b, h, s)`` row of D elements (or a ``BLOCK_D`` slice of it), so
only the new entries move: ``2 * values`` bytes, never the cache. When several new entries go to one
slot (a ring cache written by a prefill longer than its window), entries sharing a slot all write the
last one's value, so the slot ends as a write in order of ``s`` would leave it (``last_writers``).

Positions are read on the device (no host sync, CUDA-graph safe). A position outside ``[0, T)`` is
skipped, where the torch reference raises: checking would need a host sync, and the runtime never
produces one. Falls back to the torch reference for: a write along a dim other than 2 of a rank-4
cache, dtypes other than fp16/bf16/fp32, CPU tensors without ``TRITON_INTERPRET=1``. Any strides work
(values are often a transposed ``[B, S, H, D]`` view).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    fallback,
    launchable,
    next_pow2,
    note,
    pdl_enter,
    pdl_options,
    unsupported_device,
    unsupported_dtype,
)
from membound.ir.ops import get_op
from membound.ir.ops.kv_cache import last_writers


@triton.jit
def _cache_write(
    cache_ptr, val_ptr, pos_ptr, src_ptr,
    H, S, T, D,
    scb, sch, sct, scd, svb, svh, svs, svd, spb, sps,
    BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr, HAS_SRC: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "BLOCK_D: at least one 16-element vector per program")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    # program (row, d-block): row enumerates (b, h, s) of the new values
    # 64-bit offsets: a big cache passes 2**31 elements across batch rows or across heads
    row = tl.program_id(0).to(tl.int64)
    s = row % S
    h = (row // S) % H
    b = row // (S * H)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    # the slot this token goes to, read on the device
    p = tl.load(pos_ptr + b * spb + s * sps).to(tl.int64)
    # compared as a vector: the interpreter rejects masks mixing scalar and vector booleans
    slot = p + tl.zeros_like(ds)
    ok = (ds < D) & (slot >= 0) & (slot < T)
    src = s
    if HAS_SRC:  # several entries go to one slot: each writes the last one's value (same strides as pos)
        src = tl.load(src_ptr + b * spb + s * sps).to(tl.int64)
    x = tl.load(val_ptr + b * svb + h * svh + src * svs + ds * svd, mask=ok)
    tl.store(cache_ptr + b * scb + h * sch + slot * sct + ds * scd, x, mask=ok)


def cache_write_bytes(values_numel: int, dtype: torch.dtype) -> int:
    """Bytes moved: the new values read once and written once (positions are negligible)."""
    return 2 * values_numel * torch.empty((), dtype=dtype).element_size()


def cache_write(cache: torch.Tensor, values: torch.Tensor, positions: torch.Tensor,
                out: Optional[torch.Tensor] = None, *, dim: int = 2) -> torch.Tensor:
    """The IR op ``cache_write``: writes ``values`` into ``cache`` in place and returns ``cache``.

    ``out``, when given, must be ``cache`` itself (the op's result *is* the state buffer).
    """
    op = "cache_write"
    if out is not None and out is not cache:
        raise ValueError(f"{op}: the result is the cache itself; pass out=None or out=cache")
    if cache.dtype != values.dtype:
        raise TypeError(f"{op}: values dtype {values.dtype} must equal the cache dtype {cache.dtype}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: positions must be int32/int64, got {positions.dtype}")
    reference = get_op(op).reference
    if cache.dim() != 4 or dim % 4 != 2:
        note(op, f"fallback: dim={dim} of a rank-{cache.dim()} cache (the kernel writes dim 2 of [B, H, T, D])")
        return reference(cache, values, positions, dim=dim)
    bsz, heads, cap, d = cache.shape
    s = values.shape[2] if values.dim() == 4 else -1
    if values.dim() != 4 or (values.shape[0], values.shape[1], values.shape[3]) != (bsz, heads, d):
        raise ValueError(f"{op}: values {tuple(values.shape)} must be [B, H, S, D] matching the cache "
                         f"{tuple(cache.shape)} outside dim 2")
    if tuple(positions.shape) not in ((s,), (bsz, s)):
        raise ValueError(f"{op}: positions must be [S] = [{s}] or [B, S] = [{bsz}, {s}], got {tuple(positions.shape)}")
    reason = unsupported_device(cache, values, positions) or unsupported_dtype(op, cache)
    if reason is not None:
        return fallback(op, reason, reference(cache, values, positions, dim=dim), None)
    if values.numel() == 0:
        return cache
    # several entries may share a slot (a ring cache in a prefill longer than its window, a padded row's
    # tail): written as in order of s, the last one stays; one new token (decode) cannot collide
    src = last_writers(positions, cap).contiguous() if s > 1 else None
    if src is not None:
        positions = positions.contiguous()
    spb, sps = (positions.stride(0), positions.stride(1)) if positions.dim() == 2 else (0, positions.stride(0))
    block_d = min(max(16, next_pow2(d)), 1024)

    def grid(meta: dict) -> tuple[int, int]:
        return (bsz * heads * s, triton.cdiv(d, meta["BLOCK_D"]))

    launchable(_cache_write, cache.device)[grid](
        cache, values, positions, positions if src is None else src, heads, s, cap, d, *cache.stride(),
        *values.stride(), spb, sps, BLOCK_D=block_d, num_warps=1 if block_d <= 256 else 4,
        HAS_SRC=src is not None, **pdl_options(cache.device))
    note(op, "kernel")
    return cache
