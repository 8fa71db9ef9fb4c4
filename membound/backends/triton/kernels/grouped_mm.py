"""``grouped_mm``: rows of ``x[N, K]`` sorted by group, group ``e`` (rows ``offsets[e-1] .. offsets[e]``) times
``w[e][K, M]`` -> ``[N, M]``; rows past ``offsets[-1]`` belong to no group and come out zero (the IR op).

What Hugging Face's mixture-of-experts blocks run (transformers 5.x's grouped experts) where fuse-moe does not make
them one ``moe`` op (gpt-oss: interleaved gate/up columns, expert biases, a clamped SwiGLU). The torch reference
reads the group sizes on the host (``offsets.tolist()``) and multiplies group by group in Python: a host
synchronisation every call, so a decode step holding one cannot be a CUDA graph. This kernel reads the offsets on
the device: each program takes ``BLOCK_R`` rows and ``BLOCK_M`` output columns, finds each row's group by counting
the group ends at or below it, and for each group its rows span (groups without rows there are skipped, so their
weights are never read) accumulates ``x_rows @ w[e]`` over K tiles in fp32 (one rounding to x's dtype, as the
reference's per-group product). Only the weights of groups that have rows move: at decode (a few routed rows) the
active experts' once per column block.

Tiles (``pick_config``): 16 rows while there are few (decode), 64 past 64 rows; 64 output columns (M contiguous in
HF's ``[E, K, M]`` experts: 16-byte loads), fewer while the grid would not fill the SMs; 64 K a step. Falls back
to the torch reference for: dtypes other than fp16/bf16/fp32, CPU tensors without ``TRITON_INTERPRET=1``, more than
1024 groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    cdiv,
    check_out,
    fallback,
    launchable,
    next_pow2,
    note,
    pdl_enter,
    pdl_options,
    sm_count,
    unsupported_device,
    unsupported_dtype,
)
from membound.ir.ops import get_op

MAX_GROUPS = 1024  # the group ends one program holds (a [BLOCK_E] vector)


@triton.jit
def _grouped_mm(x_ptr, w_ptr, off_ptr, y_ptr, N, K, M, E, sxn, sxk, swe, swk, swm, syn, sym,
                BLOCK_R: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_E: tl.constexpr,
                INPUT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    tl.static_assert(BLOCK_R >= 16 and BLOCK_M >= 16 and BLOCK_K >= 16, "tl.dot needs 16 x 16 tiles")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < N
    ms = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    es = tl.arange(0, BLOCK_E)
    ends = tl.load(off_ptr + es, mask=es < E, other=0).to(tl.int64)
    ends = tl.where(es < E, ends, 9223372036854775807)  # (padding: past every row)
    # each row's group: how many group ends lie at or below it (E: past the last end, no group: zeros)
    grp = tl.sum((ends[None, :] <= rows.to(tl.int64)[:, None]).to(tl.int32), axis=1)
    g_lo = tl.min(tl.where(r_ok, grp, E), axis=0)
    g_hi = tl.minimum(tl.max(tl.where(r_ok, grp, -1), axis=0), E - 1)
    rows64 = rows.to(tl.int64)
    acc = tl.zeros((BLOCK_R, BLOCK_M), dtype=tl.float32)
    for g in range(g_lo, g_hi + 1):
        in_g = r_ok & (grp == g)
        if tl.max(in_g.to(tl.int32), axis=0) > 0:  # a group without rows here: its weight is not read
            w_base = w_ptr + (tl.full((), 0, tl.int64) + g) * swe  # (64-bit: E * K * M may pass 2**31)
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                k_ok = ks < K
                xt = tl.load(x_ptr + rows64[:, None] * sxn + ks[None, :] * sxk, mask=in_g[:, None] & k_ok[None, :],
                             other=0.0)
                wt = tl.load(w_base + ks[:, None] * swk + ms[None, :] * swm, mask=k_ok[:, None] & m_ok[None, :],
                             other=0.0)
                acc = tl.dot(xt, wt, acc, input_precision=INPUT_PRECISION)
    tl.store(y_ptr + rows64[:, None] * syn + ms[None, :] * sym, acc.to(y_ptr.dtype.element_ty),
             mask=r_ok[:, None] & m_ok[None, :])


@dataclass(frozen=True)
class GroupedConfig:
    block_r: int = 16
    block_m: int = 64
    block_k: int = 64
    num_warps: int = 4
    num_stages: int = 3


def pick_config(n: int, m: int, k: int, device: torch.device) -> GroupedConfig:
    """16 rows a program at decode (a few routed rows), 64 past 64 rows; 64 x 64 weight tiles, narrowed to 32 or 16
    columns while the grid would leave SMs idle (a decode step's grid is its column blocks: gpt-oss-20b's down
    projection, M = 2880, is 45 programs of 64 columns on 132 SMs, 180 of 16). A first guess, not yet timed on a
    GPU; 16 x 16 tiles under the interpreter (whose cost is per element)."""
    if device.type != "cuda":
        return GroupedConfig(16, 16, 16, 4, 1)
    block_r = 64 if n > 64 else 16
    block_m = 64
    while block_m > 16 and cdiv(n, block_r) * cdiv(m, block_m) < sm_count(device):
        block_m //= 2
    return GroupedConfig(block_r, block_m, 64, 4, 3)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor, out: Optional[torch.Tensor] = None, *,
               config: Optional[GroupedConfig] = None) -> torch.Tensor:
    """The IR op ``grouped_mm`` with no host synchronisation (see the module)."""
    op = "grouped_mm"
    if x.dim() != 2 or w.dim() != 3 or offsets.dim() != 1:
        raise ValueError(f"{op}: needs x[N, K], w[E, K, M], offsets[E]; got x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"offsets {tuple(offsets.shape)}")
    if x.shape[1] != w.shape[1] or offsets.shape[0] != w.shape[0]:
        raise ValueError(f"{op}: x {tuple(x.shape)}, w {tuple(w.shape)} and offsets {tuple(offsets.shape)} disagree "
                         f"on K or E")
    if offsets.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: offsets must be int32/int64, got {offsets.dtype}")
    if x.dtype != w.dtype:
        raise TypeError(f"{op}: x and w must share a dtype, got {x.dtype} and {w.dtype}")
    n, k = x.shape
    e, _, m = w.shape
    reason = unsupported_device(x, w, offsets) or unsupported_dtype(op, x)
    if reason is None and e > MAX_GROUPS:
        reason = f"{e} groups (the kernel holds at most {MAX_GROUPS} group ends)"
    if reason is None and (n == 0 or m == 0):
        reason = "an empty result"
    if reason is not None:
        return fallback(op, reason, get_op(op).reference(x, w, offsets), out)
    y = check_out(op, out, (n, m), x.dtype, x.device)
    cfg = config or pick_config(n, m, k, x.device)
    grid = (cdiv(n, cfg.block_r), cdiv(m, cfg.block_m))
    launchable(_grouped_mm, x.device)[grid](
        x, w, offsets, y, n, k, m, e, x.stride(0), x.stride(1), w.stride(0), w.stride(1), w.stride(2),
        y.stride(0), y.stride(1), BLOCK_R=cfg.block_r, BLOCK_M=cfg.block_m, BLOCK_K=cfg.block_k,
        BLOCK_E=max(16, next_pow2(e)), INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_options(x.device))
    note(op, "kernel")
    return y
