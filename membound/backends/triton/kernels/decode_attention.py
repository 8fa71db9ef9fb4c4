"""``cached_attention`` by flash-decoding: new queries attend over the filled prefix of a static KV cache.

Shapes: q ``[B, Hq, S, D]``, caches ``[B, Hkv, T, D]`` / ``[B, Hkv, T, Dv]`` (T = capacity), positions
``[S]`` or ``[B, S]``; the query of row b at position p sees slots ``0..p`` (the IR op's semantics).

Decode reads the whole cache prefix for one query token, so the time is the time to stream K and V.
Two things make that fast at batch 1:

- **GQA sharing.** The ``G = Hq / Hkv`` query heads of one kv head (times the S new tokens) form the
  rows of one ``[BLOCK_Q, D]`` block, so each K/V tile is loaded once for all of them and the scores
  come from one ``tl.dot`` (rows padded to 16; the padding costs FLOPs, never bytes).
- **Split-K over the cache length.** ``B * Hkv`` programs cannot fill 132 SMs, so the slots are cut
  into chunks of ``CHUNK`` and each (row block, chunk) program computes an online-softmax partial
  (running max ``m``, sum ``l`` and unnormalised ``acc``, in base 2). The partials of a row block are
  merged by whichever of its programs finishes last (an arrival counter per row block, see
  ``_launch.split_counters``): ``out = sum_s 2^(m_s - M) acc_s / sum_s 2^(m_s - M) l_s``, in chunk
  order. One launch per attention: at decode a second "combine" kernel cost more than the merge.

Only the filled prefix is read: each program loads its rows' positions on the device and stops at
``max(position) + 1``; chunks past it do nothing and are never read back. No host synchronisation,
so the op is CUDA-graph safe. The grid is sized from ``max_len`` (an upper bound of
``max(positions) + 1`` that the caller knows, e.g. the CUDA-graph cache-length bucket) or else from
the capacity T with small chunks.

Falls back to the torch reference for: dtypes other than fp16/bf16/fp32, head dims over 256, CPU
tensors without ``TRITON_INTERPRET=1``. Any strides work (a transposed q or cache is read in place).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    arrive_last,
    cdiv,
    check_out,
    fallback,
    launchable,
    next_pow2,
    note,
    pdl_enter,
    pdl_options,
    reset_counter,
    sm_count,
    split_counters,
    unsupported_device,
    unsupported_dtype,
)
from membound.ir.ops import get_op

LOG2E = 1.4426950408889634
_LOG2E: tl.constexpr = tl.constexpr(LOG2E)  # the same, for kernels
MAX_HEAD_DIM = 256
PREFILL_ROWS = 128  # query rows per kv head (G * S) past which prefill runs the flash kernel


@triton.jit
def _flash_decoding_split(
    q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, acc_ptr, m_ptr, l_ptr, lock_ptr,
    HKV, G, S, T, D, DV, CHUNK, N_QBLOCKS, N_SPLITS, qk_scale, WINDOW, softcap,
    sqb, sqh, sqs, sqd, skb, skh, skt, skd, svb, svh, svt, svd, spb, sps, sob, soh, sos, sod,
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ONE_SPLIT: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
):
    tl.static_assert(BLOCK_Q >= 16 and BLOCK_T >= 16 and BLOCK_D >= 16 and BLOCK_DV >= 16,
                     "tl.dot needs 16x16 tiles: pad rows, slots and head dims to 16")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    pid_split = tl.program_id(0)
    pid_row = tl.program_id(1)
    # which (batch, kv head, block of query rows) this program serves
    qb = pid_row % N_QBLOCKS
    # 64-bit scalars for every base offset (a head's cache passes 2**31 elements at T * D >= 2**31);
    # the per-tile vector offsets stay 32-bit
    kvh = ((pid_row // N_QBLOCKS) % HKV).to(tl.int64)
    b = (pid_row // (N_QBLOCKS * HKV)).to(tl.int64)
    # rows are (group member g, new token s): query head kvh * G + g shares this kv head
    rq = tl.arange(0, BLOCK_Q)
    rows = qb * BLOCK_Q + rq
    row_ok = rows < G * S
    s = rows % S
    h = kvh * G + rows // S
    ds = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    d_ok = ds < D
    dv_ok = dvs < DV
    # each row's position, read on the device: row r sees slots 0..pos[r]; padded rows see nothing
    pos = tl.load(pos_ptr + b * spb + s * sps, mask=row_ok, other=-1)
    chunk_start = pid_split * CHUNK
    # only the filled prefix: stop at the largest position among our rows
    chunk_end = tl.minimum(tl.minimum(chunk_start + CHUNK, tl.max(pos, axis=0) + 1), T)
    # with a sliding window, only the window: start at the oldest slot any of our rows still sees
    lo = _window_start(pos, row_ok, WINDOW, HAS_WINDOW)
    chunk_start = tl.maximum(chunk_start, lo)
    if chunk_start < chunk_end:
        # q stays in registers for the whole chunk
        q = tl.load(q_ptr + b * sqb + h[:, None] * sqh + s[:, None] * sqs + ds[None, :] * sqd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
        m_i = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        acc = tl.zeros((BLOCK_Q, BLOCK_DV), dtype=tl.float32)
        k_base = k_ptr + b * skb + kvh * skh
        v_base = v_ptr + b * svb + kvh * svh
        for t0 in range(chunk_start, chunk_end, BLOCK_T):
            tn = tl.arange(0, BLOCK_T)
            ts = t0 + tn
            t_ok = ts < chunk_end
            t64 = tl.full((), t0, tl.int64)  # this tile's first slot, as a 64-bit offset
            # one K tile, loaded once for every query row of the kv group: K^T [BLOCK_D, BLOCK_T]
            k_t = tl.load(k_base + t64 * skt + tn[None, :] * skt + ds[:, None] * skd,
                          mask=t_ok[None, :] & d_ok[:, None], other=0.0)
            scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_Q, BLOCK_T], log2 units
            if HAS_SOFTCAP:
                scores = _softcap_log2(scores, softcap)
            visible = (ts[None, :] <= pos[:, None]) & t_ok[None, :]
            if HAS_WINDOW:
                visible = visible & (ts[None, :] > pos[:, None] - WINDOW)
            scores = tl.where(visible, scores, float("-inf"))
            # online softmax; a row with nothing visible yet keeps m = -inf, so shift by 0 instead (no NaN)
            m_new = tl.maximum(m_i, tl.max(scores, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_i - m_safe)
            p = tl.exp2(scores - m_safe[:, None])
            l_i = l_i * alpha + tl.sum(p, axis=1)
            v = tl.load(v_base + t64 * svt + tn[:, None] * svt + dvs[None, :] * svd,
                        mask=t_ok[:, None] & dv_ok[None, :], other=0.0)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=INPUT_PRECISION)
            m_i = m_new
        if ONE_SPLIT:
            # the whole prefix was ours: normalise and write the result directly
            o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
            tl.store(o_ptr + b * sob + h[:, None] * soh + s[:, None] * sos + dvs[None, :] * sod,
                     o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        else:
            # the partial (m, l, acc) of this chunk; partials are [rows programs, N_SPLITS, BLOCK_Q(, BLOCK_DV)]
            # (padded rows are not stored: with G = 4 they would be 3/4 of the partial's bytes)
            slot = (pid_row * N_SPLITS + pid_split) * BLOCK_Q + rq
            tl.store(m_ptr + slot, m_i, mask=row_ok)
            tl.store(l_ptr + slot, l_i, mask=row_ok)
            tl.store(acc_ptr + slot[:, None] * BLOCK_DV + dvs[None, :], acc, mask=row_ok[:, None] & dv_ok[None, :])
    if not ONE_SPLIT:
        # every program of the row block counts in, idle ones too; the last to arrive merges the partials
        if arrive_last(lock_ptr, pid_row, N_SPLITS):
            n_active = tl.minimum(tl.cdiv(tl.minimum(tl.max(pos, axis=0) + 1, T), CHUNK), N_SPLITS)
            first = _window_start(pos, row_ok, WINDOW, HAS_WINDOW) // CHUNK  # chunks before the window wrote nothing
            _merge_partials(o_ptr, acc_ptr, m_ptr, l_ptr, pid_row, first, n_active, N_SPLITS, b, h, s, rq, row_ok, dvs,
                            dv_ok, sob, soh, sos, sod, BLOCK_Q, BLOCK_DV)
            reset_counter(lock_ptr, pid_row)


@triton.jit
def _window_start(pos, row_ok, WINDOW, HAS_WINDOW: tl.constexpr):
    """The oldest slot any row still sees: ``min(pos) - WINDOW + 1`` (0 without a window)."""
    if HAS_WINDOW:
        oldest = tl.min(tl.where(row_ok, pos, 2147483647), axis=0) - WINDOW + 1
        return tl.maximum(oldest, 0)
    else:
        return 0


@triton.jit
def _softcap_log2(scores, softcap):
    """``c * tanh(s / c)`` on scores in log2 units (s = x * log2(e)): the cap applies to x, in e units."""
    x = scores / (softcap * _LOG2E)
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both ends (exp overflow gives 1, underflow -1)
    t = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    return t * (softcap * _LOG2E)


@triton.jit
def _merge_partials(o_ptr, acc_ptr, m_ptr, l_ptr, pid_row, first, n_active, N_SPLITS, b, h, s, rq, row_ok, dvs, dv_ok,
                    sob, soh, sos, sod, BLOCK_Q: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Merge chunk partials ``first .. n_active - 1`` of one row block (in chunk order); store the output."""
    m_run = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
    l_run = tl.zeros((BLOCK_Q,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_Q, BLOCK_DV), dtype=tl.float32)
    for sp in range(first, n_active):
        slot = (pid_row * N_SPLITS + sp) * BLOCK_Q + rq
        # .cg: from L2, where the other programs' stores are (never a stale L1 line)
        m_s = tl.load(m_ptr + slot, mask=row_ok, other=float("-inf"), cache_modifier=".cg")
        l_s = tl.load(l_ptr + slot, mask=row_ok, other=0.0, cache_modifier=".cg")
        a_s = tl.load(acc_ptr + slot[:, None] * BLOCK_DV + dvs[None, :], mask=row_ok[:, None] & dv_ok[None, :],
                      other=0.0, cache_modifier=".cg")
        # rescale both sides to the common max; a chunk a row could not see has m = -inf, weight 0
        m_new = tl.maximum(m_run, m_s)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_run - m_safe)
        beta = tl.exp2(m_s - m_safe)
        l_run = l_run * alpha + l_s * beta
        acc = acc * alpha[:, None] + a_s * beta[:, None]
        m_run = m_new
    o = acc / tl.where(l_run > 0.0, l_run, 1.0)[:, None]
    tl.store(o_ptr + b * sob + h[:, None] * soh + s[:, None] * sos + dvs[None, :] * sod,
             o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])


@dataclass(frozen=True)
class DecodeConfig:
    """Tiles and the split of one flash-decoding launch (see :func:`pick_config`)."""

    block_q: int
    block_t: int
    chunk: int  # slots per program; a multiple of block_t
    num_warps: int = 4
    num_stages: int = 2


def pick_config(rows: int, groups: int, length: int, known_length: bool, head_dim: int, dtype: torch.dtype,
                device: torch.device) -> DecodeConfig:
    """Rows padded to a tensor-core tile; chunks sized so that there are about 4 programs per SM.

    ``rows`` = query rows per kv head (G * S); ``groups`` = B * Hkv; ``length`` = the slots the grid
    must cover. When the filled length is unknown (``known_length=False``: length is the capacity)
    chunks stay small, so a short prefix in a long cache still spreads over many programs.
    """
    block_q = max(16, next_pow2(min(rows, 64)))
    block_t = 64 if head_dim <= 128 and dtype != torch.float32 else 32
    programs = groups * cdiv(rows, block_q)
    splits = max(1, min(cdiv(4 * sm_count(device), programs), cdiv(length, block_t)))
    chunk = cdiv(cdiv(length, splits), block_t) * block_t
    if not known_length:
        chunk = min(chunk, 4 * block_t)
    return DecodeConfig(block_q, block_t, chunk, num_warps=4, num_stages=2)


def cached_attention_bytes(b: int, hq: int, hkv: int, s: int, length: int, d: int, dv: int,
                           dtype: torch.dtype) -> int:
    """Bytes the kernel must move (the cost-model hint): K and V of ``length`` slots at Hkv heads, q, out."""
    e = torch.empty((), dtype=dtype).element_size()
    return e * (b * hkv * length * (d + dv) + b * hq * s * (d + dv))


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     out: Optional[torch.Tensor] = None, *, scale: Optional[float] = None,
                     window: Optional[int] = None, softcap: Optional[float] = None,
                     max_len: Optional[int] = None, config: Optional[DecodeConfig] = None) -> torch.Tensor:
    """The IR op ``cached_attention`` (flash-decoding); result ``[B, Hq, S, Dv]`` in q's dtype.

    ``max_len``: optional upper bound of ``max(positions) + 1`` known on the host (the runtime's
    cache-length bucket); slots at or past it are never read, so it must not be too small. Without it
    the grid covers the capacity T and idle programs exit at once. ``config`` overrides the heuristic.
    With ``window`` only the last ``window`` slots before each position are read: programs whose
    chunk lies wholly before the window exit at once, the merge starts at the window's first chunk.
    """
    _check(q, k, v, positions)
    bsz, hq, s, d = q.shape
    hkv, cap, dv = k.shape[1], k.shape[2], v.shape[3]
    reason = unsupported_device(q, k, v, positions) or unsupported_dtype("cached_attention", q)
    if reason is None and max(d, dv) > MAX_HEAD_DIM:
        reason = f"head dim {max(d, dv)} > {MAX_HEAD_DIM}"
    if reason is not None or q.numel() == 0:
        ref = get_op("cached_attention").reference(q, k, v, positions, scale=scale, window=window, softcap=softcap)
        return fallback("cached_attention", reason or "empty query", ref, out)

    y = check_out("cached_attention", out, (bsz, hq, s, dv), q.dtype, q.device)
    g = hq // hkv
    rows = g * s
    if rows > PREFILL_ROWS and config is None:
        # prefill: the flash kernel skips the key tiles above each row block's diagonal, which this
        # kernel (every row block reads the whole prefix) does not; at this many rows both are compute-bound
        from membound.backends.triton.kernels.flash_attention import flash_attention

        flash_attention(q, k, v, None, y, scale=scale, window=window, softcap=softcap, positions=positions)
        note("cached_attention", "kernel")
        return y
    length = cap if max_len is None else max(1, min(int(max_len), cap))
    cfg = config or pick_config(rows, bsz * hkv, length, max_len is not None, max(d, dv), q.dtype, q.device)
    if cfg.chunk % cfg.block_t:
        raise ValueError(f"cached_attention: config chunk={cfg.chunk} must be a multiple of block_t={cfg.block_t}")
    n_qblocks = cdiv(rows, cfg.block_q)
    n_splits = cdiv(length, cfg.chunk)
    row_programs = bsz * hkv * n_qblocks
    one = n_splits == 1
    block_dv = max(16, next_pow2(dv))
    f32 = dict(dtype=torch.float32, device=q.device)
    if one:
        acc = m = lse = locks = y  # never touched: the split kernel writes y directly
    else:
        acc = torch.empty((row_programs, n_splits, cfg.block_q, block_dv), **f32)
        m = torch.empty((row_programs, n_splits, cfg.block_q), **f32)
        lse = torch.empty((row_programs, n_splits, cfg.block_q), **f32)
        locks = split_counters(q.device, row_programs)
    spb, sps = (positions.stride(0), positions.stride(1)) if positions.dim() == 2 else (0, positions.stride(0))
    qk_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    # axis 0: chunks of the slots the grid covers; axis 1: (batch, kv head, query-row block)
    launchable(_flash_decoding_split, q.device)[(n_splits, row_programs)](
        q, k, v, positions, y, acc, m, lse, locks,
        hkv, g, s, cap, d, dv, cfg.chunk, n_qblocks, n_splits, qk_scale, int(window or 0), float(softcap or 1.0),
        *q.stride(), *k.stride(), *v.stride(), spb, sps, *y.stride(),
        BLOCK_Q=cfg.block_q, BLOCK_T=cfg.block_t, BLOCK_D=max(16, next_pow2(d)), BLOCK_DV=block_dv,
        ONE_SPLIT=one, INPUT_PRECISION=precision, HAS_WINDOW=window is not None, HAS_SOFTCAP=softcap is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **pdl_options(q.device))
    note("cached_attention", "kernel")
    return y


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor) -> None:
    op = "cached_attention"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: needs q[B, Hq, S, D] and caches [B, Hkv, T, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    bsz, hq, s, d = q.shape
    if k.shape[0] != bsz or v.shape[0] != bsz or k.shape[3] != d:
        raise ValueError(f"{op}: caches k {tuple(k.shape)} / v {tuple(v.shape)} do not fit q {tuple(q.shape)} "
                         f"(batch and head dim must agree)")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"{op}: v cache {tuple(v.shape)} must have k's heads and capacity ({tuple(k.shape)})")
    if hq % k.shape[1]:
        raise ValueError(f"{op}: query heads {hq} must be a multiple of kv heads {k.shape[1]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: positions must be int32/int64, got {positions.dtype}")
    if tuple(positions.shape) not in ((s,), (bsz, s)):
        raise ValueError(f"{op}: positions must be [S] = [{s}] or [B, S] = [{bsz}, {s}], got "
                         f"{tuple(positions.shape)}")
