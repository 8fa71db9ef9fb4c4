"""``linear_scan``: every ``h_t = a_t * h_(t-1) + b_t`` along one dim, in one launch.

``a``, ``b`` ``[..., S, ...]`` (``dim`` the S), ``init`` ``[..., 1, ...]`` or none (zero). Seen as ``[O, S, I]``
(the dims before ``dim`` flattened, then those after it), each program owns ``BLOCK`` lanes of one outer row and walks
the S steps with its states in registers: it reads ``a`` and ``b`` once and writes every ``h`` once, the op's bytes,
in one launch where the torch reference makes about ``3 S`` (a Mamba layer's prefill; its decode step, S = 1, is one
launch instead of four). Each product and each state is rounded to the dtype at every step, as the reference's
torch ops (and the model's own loop) round them. Falls back to the torch reference for dtypes other than
fp16/bf16/fp32 and CPU tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import math
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
def _linear_scan(a_ptr, b_ptr, h0_ptr, out_ptr, S, INNER, sao, sas, sai, sbo, sbs, sbi, sho, shi, soo, sos, soi,
                 HAS_INIT: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    o = tl.program_id(0).to(tl.int64)
    lanes = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    ok = lanes < INNER
    if HAS_INIT:
        h = tl.load(h0_ptr + o * sho + lanes * shi, mask=ok, other=0.0).to(tl.float32)
    else:
        h = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in range(0, S):
        a = tl.load(a_ptr + o * sao + t * sas + lanes * sai, mask=ok, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + o * sbo + t * sbs + lanes * sbi, mask=ok, other=0.0).to(tl.float32)
        # the product, then the state, rounded to the op's dtype: as the reference's two torch ops round them
        ah = (a * h).to(out_ptr.dtype.element_ty).to(tl.float32)
        hs = (ah + b).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + o * soo + t * sos + lanes * soi, hs, mask=ok)
        h = hs.to(tl.float32)


def linear_scan(a: torch.Tensor, b: torch.Tensor, init: Optional[torch.Tensor] = None,
                out: Optional[torch.Tensor] = None, *, dim: int) -> torch.Tensor:
    """The IR op ``linear_scan`` (``init`` optional, ``[..., 1, ...]`` at ``dim``)."""
    op = "linear_scan"
    reference = get_op(op).reference
    args = (a, b) if init is None else (a, b, init)
    if a.shape != b.shape or a.dtype != b.dtype:
        raise ValueError(f"{op}: a {tuple(a.shape)} {a.dtype} and b {tuple(b.shape)} {b.dtype} must match")
    reason = unsupported_device(*args) or unsupported_dtype(op, *args)
    if reason is not None:
        return fallback(op, reason, reference(*args, dim=dim), out)
    d = dim % a.dim()
    outer, steps, inner = math.prod(a.shape[:d]), a.shape[d], math.prod(a.shape[d + 1:])
    result = out if out is not None else torch.empty_like(b, memory_format=torch.contiguous_format)
    if out is not None:
        check_out(op, out, tuple(b.shape), b.dtype, b.device)
    if result.numel() == 0:
        return result
    a3, b3, o3 = a.reshape(outer, steps, inner), b.reshape(outer, steps, inner), result.view(outer, steps, inner)
    h3 = init.reshape(outer, 1, inner) if init is not None else a3
    block = min(max(16, next_pow2(inner)), 256)
    launchable(_linear_scan, a.device)[(outer, triton.cdiv(inner, block))](
        a3, b3, h3, o3, steps, inner, a3.stride(0), a3.stride(1), a3.stride(2), b3.stride(0), b3.stride(1),
        b3.stride(2), h3.stride(0), h3.stride(2), o3.stride(0), o3.stride(1), o3.stride(2),
        HAS_INIT=init is not None, BLOCK=block, num_warps=1 if block <= 64 else 4, **pdl_options(a.device))
    note(op, "kernel")
    return result
