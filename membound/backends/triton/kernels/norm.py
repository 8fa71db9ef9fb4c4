"""``rms_norm``, and ``add_rms_norm`` (the residual add fused in front of it): one program per row.

    rms_norm(x, w)       = (x.float() * rsqrt(mean(x.float()**2, -1) + eps)).to(x.dtype) * w
    add_rms_norm(x, r, w) = (h, rms_norm(h, w))  with h = x + r   (the residual stream and the normed value)

A transformer block does ``h = h + attn(...)`` then ``rms_norm(h)``: fused, h is read once, written
once (the next residual) and normalised from registers, instead of add (read 2, write 1) then norm
(read 1, write 1). The row is held in registers (``BLOCK_D >= D``), statistics in fp32, and the
roundings match the reference: the sum is rounded to x's dtype before it is normalised, the normed
value to x's dtype before the weight multiplies it.

Falls back to the torch reference for: rows longer than 65536, dtypes other than fp16/bf16/fp32,
CPU tensors without ``TRITON_INTERPRET=1``.
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

MAX_ROW = 65536


@triton.jit
def _rms_norm(
    x_ptr, r_ptr, w_ptr, sum_ptr, y_ptr,
    D, stride_x, stride_r, eps,
    BLOCK_D: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_WEIGHT: tl.constexpr, USE_PDL: tl.constexpr,
):
    tl.static_assert(BLOCK_D >= 16, "BLOCK_D covers the whole row (at least 16)")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    row = tl.program_id(0).to(tl.int64)
    ds = tl.arange(0, BLOCK_D)
    ok = ds < D
    # the whole row in registers
    x = tl.load(x_ptr + row * stride_x + ds, mask=ok, other=0.0)
    if HAS_RESIDUAL:
        # h = x + residual, rounded to the model dtype as torch's add would, and written once
        r = tl.load(r_ptr + row * stride_r + ds, mask=ok, other=0.0)
        x = (x.to(tl.float32) + r.to(tl.float32)).to(x_ptr.dtype.element_ty)
        tl.store(sum_ptr + row * D + ds, x, mask=ok)
    xf = x.to(tl.float32)
    # statistics in fp32; padded lanes are 0 and do not count (divide by D, not BLOCK_D)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / D + eps)
    y = (xf * rstd).to(x_ptr.dtype.element_ty)
    if HAS_WEIGHT:
        w = tl.load(w_ptr + ds, mask=ok, other=0.0)
        y = y.to(tl.float32) * w.to(tl.float32)
    tl.store(y_ptr + row * D + ds, y.to(y_ptr.dtype.element_ty), mask=ok)


def rms_norm_bytes(rows: int, d: int, dtype: torch.dtype, residual: bool = False) -> int:
    """Bytes moved: x read and y written (plus, fused, the residual read and the sum written)."""
    e = torch.empty((), dtype=dtype).element_size()
    return e * rows * d * (4 if residual else 2) + e * d


def _rows(op: str, x: torch.Tensor) -> torch.Tensor:
    if x.dim() == 0:
        raise ValueError(f"{op}: needs an input of rank >= 1, got a 0-d tensor")
    x2 = x.reshape(-1, x.shape[-1]) if x.numel() else x.reshape(0, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _check_weight(op: str, x: torch.Tensor, weight: Optional[torch.Tensor]) -> None:
    if weight is not None and tuple(weight.shape) != (x.shape[-1],):
        raise ValueError(f"{op}: weight must be [D] = [{x.shape[-1]}], got {tuple(weight.shape)}")


def _launch(x2: torch.Tensor, r2: Optional[torch.Tensor], weight: Optional[torch.Tensor], h: Optional[torch.Tensor],
            y: torch.Tensor, eps: float) -> None:
    rows, d = x2.shape
    block_d = max(16, next_pow2(d))

    def grid(meta: dict) -> tuple[int]:
        return (rows,)  # one program per row; the row is one block (BLOCK_D >= D)

    launchable(_rms_norm, x2.device)[grid](
        x2, r2 if r2 is not None else x2, weight if weight is not None else x2, h if h is not None else y, y,
        d, x2.stride(0), r2.stride(0) if r2 is not None else 0, float(eps),
        BLOCK_D=block_d, HAS_RESIDUAL=r2 is not None, HAS_WEIGHT=weight is not None,
        num_warps=min(16, max(1, block_d // 512)), **pdl_options(x2.device))


def _uncovered(op: str, *tensors: Optional[torch.Tensor]) -> Optional[str]:
    given = [t for t in tensors if t is not None]
    reason = unsupported_device(*given) or unsupported_dtype(op, *given)
    if reason is None and given[0].shape[-1] > MAX_ROW:
        reason = f"rows of {given[0].shape[-1]} > {MAX_ROW} elements"
    return reason


def rms_norm(x: torch.Tensor, weight: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, *,
             eps: float) -> torch.Tensor:
    """The IR op ``rms_norm`` over the last dim; the result dtype promotes x with the weight (as torch)."""
    op = "rms_norm"
    _check_weight(op, x, weight)
    reason = _uncovered(op, x, weight)
    if reason is not None or x.numel() == 0:
        return fallback(op, reason or "empty input", get_op(op).reference(x, weight, eps=eps), out)
    dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    y = check_out(op, out, tuple(x.shape), dtype, x.device)
    _launch(_rows(op, x), None, weight, None, y, eps)
    note(op, "kernel")
    return y


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: Optional[torch.Tensor] = None, *,
                 eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``h = x + residual`` and ``rms_norm(h, weight)`` in one pass; returns ``(h, normed)``.

    Not an IR op of its own: the partitioner uses it for an ``add`` whose result feeds ``rms_norm``
    and is also needed later (the residual stream).
    """
    op = "add_rms_norm"
    if x.shape != residual.shape or x.dtype != residual.dtype:
        raise ValueError(f"{op}: x {tuple(x.shape)} {x.dtype} and residual {tuple(residual.shape)} "
                         f"{residual.dtype} must have one shape and dtype")
    _check_weight(op, x, weight)
    reason = _uncovered(op, x, residual, weight)
    if reason is not None or x.numel() == 0:
        note(op, f"fallback: {reason or 'empty input'}")
        h = x + residual
        return h, get_op("rms_norm").reference(h, weight, eps=eps)
    dtype = x.dtype if weight is None else torch.promote_types(x.dtype, weight.dtype)
    h = torch.empty_like(x, memory_format=torch.contiguous_format)
    y = torch.empty(x.shape, dtype=dtype, device=x.device)
    _launch(_rows(op, x), _rows(op, residual), weight, h, y, eps)
    note(op, "kernel")
    return h, y


