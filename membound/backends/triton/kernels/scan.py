"""``linear_scan``: every ``h_t = a_t * h_(t-1) + b_t`` along one dim, in one launch.

``a``, ``b`` ``[..., S, ...]`` (``dim`` the S), ``init`` ``[..., 1, ...]`` or none (zero). Seen as ``[O, S, I]``
(the dims before ``dim`` flattened, then those after it), each program owns ``BLOCK`` lanes of one outer row and walks
the S steps with its states in registers: it reads ``a`` and ``b`` once and writes every ``h`` once, the op's bytes,
in one launch where the torch reference makes about ``3 S`` (a Mamba layer's prefill; its decode step, S = 1, is one
launch instead of four). Each product and each state is rounded to the dtype at every step, as the reference's
torch ops (and the model's own loop) round them. Falls back to the torch reference for dtypes other than
fp16/bf16/fp32 and CPU tensors without ``TRITON_INTERPRET=1``.

``linear_attention``: a matrix state per row carried along one dim and read out at every token, its state at every
token never written (below).
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


@triton.jit
def _linear_attention(q_ptr, a_ptr, k_ptr, v_ptr, beta_ptr, h0_ptr, y_ptr, hn_ptr, S, INNER, K, V,
                      sqo, sqs, sqi, sqk, sao, sas, sai, sak, sko, sks, ski, skk, svo, svs, svi, svv, sbo, sbs, sbi,
                      sho, shi, shk, shv, syo, sys, syi, syv, sno, sni, snk, snv,
                      start_ptr, OB, sst,
                      HAS_INIT: tl.constexpr, HAS_START: tl.constexpr, PER_K: tl.constexpr, DELTA: tl.constexpr,
                      BK: tl.constexpr, BV: tl.constexpr, USE_PDL: tl.constexpr):
    pdl_enter(USE_PDL)
    row = tl.program_id(0).to(tl.int64)
    o, i = row // INNER, row % INNER
    rk = tl.arange(0, BK)
    rv = tl.program_id(1) * BV + tl.arange(0, BV)
    mk, mv = rk < K, rv < V
    m2 = mk[:, None] & mv[None, :]
    if HAS_INIT:
        h = tl.load(h0_ptr + o * sho + i * shi + rk[:, None] * shk + rv[None, :] * shv, mask=m2,
                    other=0.0).to(tl.float32)
        if HAS_START:  # the state buffer itself: zero for a row whose step starts at position 0 (a prefill)
            first = tl.load(start_ptr + (o // OB) * sst)
            h = tl.where(first == 0, 0.0, h)
    else:
        h = tl.zeros((BK, BV), dtype=tl.float32)
    for t in range(0, S):
        if PER_K:  # one decay per key channel (Kimi's KDA): a row of the state each
            a = tl.load(a_ptr + o * sao + t * sas + i * sai + rk * sak, mask=mk, other=0.0).to(tl.float32)[:, None]
        else:
            a = tl.load(a_ptr + o * sao + t * sas + i * sai).to(tl.float32)
        beta = tl.load(beta_ptr + o * sbo + t * sbs + i * sbi).to(tl.float32)
        k = tl.load(k_ptr + o * sko + t * sks + i * ski + rk * skk, mask=mk, other=0.0).to(tl.float32)
        v = tl.load(v_ptr + o * svo + t * svs + i * svi + rv * svv, mask=mv, other=0.0).to(tl.float32)
        q = tl.load(q_ptr + o * sqo + t * sqs + i * sqi + rk * sqk, mask=mk, other=0.0).to(tl.float32)
        h = h * a                                              # decay
        if DELTA:  # the delta rule writes what the state does not yet predict
            v = v - tl.sum(h * k[:, None], axis=0)
        h = h + k[:, None] * (v * beta)[None, :]               # write under the key
        y = tl.sum(h * q[:, None], axis=0)                     # read out by the query
        tl.store(y_ptr + o * syo + t * sys + i * syi + rv * syv, y.to(y_ptr.dtype.element_ty), mask=mv)
    tl.store(hn_ptr + o * sno + i * sni + rk[:, None] * snk + rv[None, :] * snv, h.to(hn_ptr.dtype.element_ty),
             mask=m2)


def linear_attention(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     init: Optional[torch.Tensor] = None, *, dim: int,
                     delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The IR op ``linear_attention``: ``(y, last state)`` (``init`` optional, the state's shape).

    Seen as ``beta [O, S, I]``, ``a [O, S, I]`` (or ``[O, S, I, K]``: a decay per key channel), ``q``/``k
    [O, S, I, K]``, ``v [O, S, I, V]``, each program owns one ``(o, i)`` row and a block of ``BV`` value columns:
    the columns are independent (with the delta rule too: a column's correction reads only that column of the
    state), so its ``[K, BV]`` slice of the state stays in registers for all S steps, in fp32. It reads the inputs
    once, writes ``y`` once and the state once at the end: the state at every token is never in memory (a prefill of
    S tokens writes ``S V`` values a row, not ``S K V``)."""
    return _launch_linear_attention(q, a, k, v, beta, init, None, dim=dim, delta=delta)


def linear_attention_state(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                           state: torch.Tensor, start: torch.Tensor, *, dim: int, delta: bool) -> torch.Tensor:
    """The IR op ``linear_attention_state``: ``y``, the state read from ``state`` (zero for a row whose ``start`` is
    0) and the last state written back into it, in place: each program reads its ``[K, BV]`` slice first and
    writes the same slice last, no other program touching it."""
    return _launch_linear_attention(q, a, k, v, beta, state, start, dim=dim, delta=delta)[0]


def _launch_linear_attention(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                             init: Optional[torch.Tensor], start: Optional[torch.Tensor], *, dim: int,
                             delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both ops' launch: ``start`` None for ``linear_attention`` (a fresh buffer for the last state), given for
    ``linear_attention_state`` (``init`` the state buffer, read and written in place)."""
    op = "linear_attention" if start is None else "linear_attention_state"
    reference = get_op(op).reference
    args = (q, a, k, v, beta) if init is None else (q, a, k, v, beta, init)
    reason = unsupported_device(*args) or unsupported_dtype(op, *args)
    if reason is not None:
        note(op, f"fallback: {reason}")
        if start is None:
            return reference(*args, dim=dim, delta=delta)
        return reference(*args, start, dim=dim, delta=delta), init
    d = dim % beta.dim()
    kd, vd = k.shape[-1], v.shape[-1]
    per_k = a.dim() > beta.dim()
    lead = tuple(beta.shape)
    if tuple(q.shape) != lead + (kd,) or tuple(k.shape[:-1]) != lead or tuple(v.shape[:-1]) != lead \
            or tuple(a.shape) != (lead + (kd,) if per_k else lead):
        raise ValueError(f"{op}: q {tuple(q.shape)}, a {tuple(a.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} and "
                         f"beta {tuple(beta.shape)} must share their leading dims")
    outer, steps, inner = math.prod(lead[:d]), lead[d], math.prod(lead[d + 1:])
    y = torch.empty_like(v, memory_format=torch.contiguous_format)
    state_shape = tuple(1 if j == d else n for j, n in enumerate(lead)) + (kd, vd)
    if start is not None:  # in place: the buffer is the initial state and receives the last
        if init is None or tuple(init.shape) != state_shape or not init.is_contiguous():
            raise ValueError(f"{op}: the state buffer {None if init is None else tuple(init.shape)} must be a "
                             f"contiguous tensor of shape {state_shape} (it is written in place)")
        last = init
        if y.numel() == 0 or last.numel() == 0:
            return y, last.masked_fill_((start[:, 0] == 0).reshape((-1,) + (1,) * (last.dim() - 1)), 0)
    else:
        last = torch.empty(state_shape, dtype=v.dtype, device=v.device)
        if y.numel() == 0 or last.numel() == 0:
            return y, last.zero_() if init is None else last.copy_(init)
    q4, k4, v4 = q.reshape(outer, steps, inner, kd), k.reshape(outer, steps, inner, kd), v.reshape(outer, steps,
                                                                                                     inner, vd)
    a4 = a.reshape(outer, steps, inner, kd if per_k else 1)
    b3 = beta.reshape(outer, steps, inner)
    y4, n4 = y.view(outer, steps, inner, vd), last.view(outer, inner, kd, vd)
    h4 = init.reshape(outer, inner, kd, vd) if init is not None else n4
    bk = max(16, next_pow2(kd))
    bv = max(16, min(next_pow2(vd), max(16, 4096 // bk)))  # a [BK, BV] fp32 state of at most 4096 entries
    per_row = outer // state_shape[0]  # outer rows per row of the state (of start): o // per_row is that row
    launchable(_linear_attention, v.device)[(outer * inner, triton.cdiv(vd, bv))](
        q4, a4, k4, v4, b3, h4, y4, n4, steps, inner, kd, vd,
        *q4.stride(), *a4.stride(), *k4.stride(), *v4.stride(), *b3.stride(), *h4.stride(), *y4.stride(),
        *n4.stride(), start if start is not None else b3, per_row,
        start.stride(0) if start is not None else 0, HAS_INIT=init is not None, HAS_START=start is not None,
        PER_K=per_k, DELTA=bool(delta), BK=bk, BV=bv, num_warps=4, **pdl_options(v.device))
    note(op, "kernel")
    return y, last
