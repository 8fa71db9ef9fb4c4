"""``embedding``: gather rows of ``weight[V, D]`` at integer ``ids`` (any shape) -> ``ids.shape + [D]``.

One program copies one id's row (a ``BLOCK_D`` slice of it): only the gathered rows move. An id
outside ``[0, V)`` yields a zero row where the torch reference raises (checking would need a host
sync). Falls back to the torch reference for: dtypes other than fp16/bf16/fp32, CPU tensors without
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    check_out,
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


@triton.jit
def _embedding(w_ptr, ids_ptr, out_ptr, V, D, stride_wv, stride_wd, BLOCK_D: tl.constexpr, USE_PDL: tl.constexpr):
    tl.static_assert(BLOCK_D >= 16, "BLOCK_D: at least one 16-element vector per program")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    i = tl.program_id(0).to(tl.int64)
    ds = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    # the row index, read on the device; out-of-range ids read nothing and write zeros
    # (as a vector: the interpreter rejects masks mixing scalar and vector booleans)
    row = tl.load(ids_ptr + i).to(tl.int64) + tl.zeros_like(ds)
    inside = (row >= 0) & (row < V)
    x = tl.load(w_ptr + row * stride_wv + ds * stride_wd, mask=(ds < D) & inside, other=0.0)
    tl.store(out_ptr + i * D + ds, x, mask=ds < D)


def embedding(weight: torch.Tensor, ids: torch.Tensor, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The IR op ``embedding``: ``weight[ids]`` with the result ``ids.shape + (D,)``."""
    op = "embedding"
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be [V, D], got {tuple(weight.shape)}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: ids must be int32/int64, got {ids.dtype}")
    reason = unsupported_device(weight, ids) or unsupported_dtype(op, weight)
    if reason is not None or ids.numel() == 0:
        return fallback(op, reason or "no ids", get_op(op).reference(weight, ids), out)
    v, d = weight.shape
    y = check_out(op, out, tuple(ids.shape) + (d,), weight.dtype, weight.device)
    flat = ids.reshape(-1)
    if flat.stride(0) != 1:
        flat = flat.contiguous()
    block_d = min(max(16, next_pow2(d)), 1024)

    def grid(meta: dict) -> tuple[int, int]:
        return (flat.numel(), triton.cdiv(d, meta["BLOCK_D"]))

    launchable(_embedding, weight.device)[grid](weight, flat, y, v, d, *weight.stride(), BLOCK_D=block_d,
                                                num_warps=1 if block_d <= 256 else 4, **pdl_options(weight.device))
    note(op, "kernel")
    return y
