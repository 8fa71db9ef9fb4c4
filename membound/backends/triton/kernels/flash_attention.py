"""``attention`` (prefill) by flash attention: each program owns a block of query rows of one head
and streams K/V tiles past it with an online softmax; the ``[S, L]`` scores never reach memory.

Shapes: q ``[B, Hq, S, D]``, k ``[B, Hkv, L, D]``, v ``[B, Hkv, L, Dv]``, optional mask broadcastable to
``[B, Hq, S, L]`` (bool: True = attend; or additive in q's dtype). GQA reads the kv head
``h // (Hq / Hkv)`` in place: K/V are never expanded. Attributes as the IR op: ``causal`` (top-left
aligned, SDPA's), ``scale``, ``window`` (the query at i sees ``i - W < j <= i``), ``softcap``
(``c * tanh(s / c)`` before mask and softmax).

The same kernel serves ``cached_attention`` at prefill (many new tokens per row): there each query
row's position comes from ``positions`` (right-padded rows have their own lengths) and the keys it
sees are the cache slots ``<= position`` (``> position - window``).

Work skipped, never masked after the fact: a block of query rows loops only over the key range its
rows can see, ``[min(pos) - W + 1, max(pos)]`` when causal, so causal attention does about half the
tiles and windowed attention about ``W / L`` of them. Head dims are padded to a power of two (>= 16)
inside the kernel (64, 80, 96, 128, 256 all run; loads are masked past D).

Tiles (``FlashConfig``) are chosen per shape by ``pick_config``: 128 query rows per program for
head dims up to 128 in 16-bit types, 64 otherwise; 64 keys per tile (32 past D = 128). The cost
rule that picks this kernel or torch's SDPA per shape is ``choose_impl`` (below).

Falls back to the torch reference for: dtypes other than fp16/bf16/fp32, head dims over 256, CPU
tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    cdiv,
    check_out,
    fallback,
    interpreting,
    launchable,
    next_pow2,
    note,
    pdl_enter,
    pdl_options,
    unsupported_device,
    unsupported_dtype,
)
from membound.backends.triton.kernels.decode_attention import (
    _LOG2E,
    LOG2E,
    MAX_HEAD_DIM,
    _online_softmax,
    _softcap_log2,
    alibi_slopes,
    check_sinks,
    first_key,
)
from membound.ir.ops import get_op
from membound.ir.ops.attention import attention_extras


@triton.jit
def _flash_attention_fwd(
    q_ptr, k_ptr, v_ptr, mask_ptr, pos_ptr, o_ptr, sink_ptr, slope_ptr,
    HQ, G, S, L, D, DV, qk_scale, WINDOW, softcap,
    sqb, sqh, sqs, sqd, skb, skh, skt, skd, svb, svh, svt, svd, smb, smh, sms, sml, spb, sps, sob, soh, sos, sod,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    CAUSAL: tl.constexpr, HAS_POS: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr,
    MASK_KIND: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr, EVEN_D: tl.constexpr = False,
    HAS_SINKS: tl.constexpr = False, HAS_ALIBI: tl.constexpr = False, CHUNKED: tl.constexpr = False,
):
    tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16 and BLOCK_D >= 16 and BLOCK_DV >= 16,
                     "tl.dot needs 16x16 tiles: pad rows, keys and head dims to 16")
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    # the row blocks of a head in reverse: with causal attention the last blocks have the most key tiles,
    # so they start first and the short ones fill the tail of the grid
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    pid_bh = tl.program_id(1)
    # 64-bit scalars for every base offset (a head's K passes 2**31 elements at L * D >= 2**31);
    # the per-tile vector offsets stay 32-bit (tile extents are small)
    h = (pid_bh % HQ).to(tl.int64)
    b = (pid_bh // HQ).to(tl.int64)
    kvh = h // G  # GQA: the kv head of this query head, read in place
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < S
    ds = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    d_ok = ds < D
    dv_ok = dvs < DV
    # each row's position: its index (causal is top-left aligned), or the cache slot it fills
    if HAS_POS:
        qpos = tl.load(pos_ptr + b * spb + rows * sps, mask=row_ok, other=-1)
    else:
        qpos = rows
    # the key range this block of rows can see: skip whole tiles above the diagonal / before the window
    lo = 0
    hi = L
    # [full_lo, full_hi): whole key tiles every row of the block sees, with no mask to apply: they take the
    # unmasked loop (no masked loads, no -inf select); the tiles before and after it take the masked one
    full_lo = 0
    full_end = L  # one past the last key every row sees
    if CAUSAL:
        top = tl.max(tl.where(row_ok, qpos, -1), axis=0)
        bottom = tl.min(tl.where(row_ok, qpos, 2147483647), axis=0)
        hi = tl.minimum(top + 1, L)
        full_end = tl.minimum(bottom + 1, hi)
        if HAS_WINDOW:  # (or chunks of WINDOW positions: the first key a query sees grows with its position)
            lo = tl.maximum(first_key(bottom, WINDOW, CHUNKED), 0)
            # the first key every row still sees is the top row's; the full tiles start at a tile edge
            full_lo = lo + tl.cdiv(tl.maximum(first_key(top, WINDOW, CHUNKED) - lo, 0), BLOCK_N) * BLOCK_N
    full_lo = tl.minimum(full_lo, hi)
    n_full = tl.maximum(full_end - full_lo, 0) // BLOCK_N
    if MASK_KIND != 0:
        n_full = 0  # a mask operand applies to every tile
    full_hi = full_lo + n_full * BLOCK_N
    # q stays in registers for the whole loop
    rows64 = rows.to(tl.int64)  # rows * stride passes 2**31 in a [S, L] mask at S * L >= 2**31
    q = tl.load(q_ptr + b * sqb + h * sqh + rows64[:, None] * sqs + ds[None, :] * sqd,
                mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    if HAS_SINKS:  # the head's sink logit (log2 units) starts the softmax as a key whose value is 0
        m_i = tl.zeros((BLOCK_M,), dtype=tl.float32) + tl.load(sink_ptr + h).to(tl.float32) * _LOG2E
        l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
    acc = tl.zeros((BLOCK_M, BLOCK_DV), dtype=tl.float32)
    slope = 0.0
    if HAS_ALIBI:  # the head's ALiBi slope, in log2 units like the scores
        slope = tl.load(slope_ptr + h) * _LOG2E
    k_base = k_ptr + b * skb + kvh * skh
    v_base = v_ptr + b * svb + kvh * svh
    m_rows = mask_ptr + b * smb + h * smh + rows64[:, None] * sms  # [BLOCK_M, 1] row starts of the mask
    # the tiles before the full ones (a window's edge), the full ones, the rest (the diagonal, the tail)
    m_i, l_i, acc = _flash_tiles(q, k_base, v_base, m_rows, row_ok, qpos, m_i, l_i, acc, lo, full_lo, hi,
                                 qk_scale, WINDOW, softcap, skt, skd, svt, svd, sml, D, DV, BLOCK_N, BLOCK_D,
                                 BLOCK_DV, True, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, MASK_KIND, INPUT_PRECISION, EVEN_D,
                                 slope, HAS_ALIBI, CHUNKED)
    m_i, l_i, acc = _flash_tiles(q, k_base, v_base, m_rows, row_ok, qpos, m_i, l_i, acc, full_lo, full_hi, hi,
                                 qk_scale, WINDOW, softcap, skt, skd, svt, svd, sml, D, DV, BLOCK_N, BLOCK_D,
                                 BLOCK_DV, False, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, MASK_KIND, INPUT_PRECISION, EVEN_D,
                                 slope, HAS_ALIBI, CHUNKED)
    m_i, l_i, acc = _flash_tiles(q, k_base, v_base, m_rows, row_ok, qpos, m_i, l_i, acc, full_hi, hi, hi,
                                 qk_scale, WINDOW, softcap, skt, skd, svt, svd, sml, D, DV, BLOCK_N, BLOCK_D,
                                 BLOCK_DV, True, CAUSAL, HAS_WINDOW, HAS_SOFTCAP, MASK_KIND, INPUT_PRECISION, EVEN_D,
                                 slope, HAS_ALIBI, CHUNKED)
    # a row that saw nothing (a padded row) writes 0
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    tl.store(o_ptr + b * sob + h * soh + rows64[:, None] * sos + dvs[None, :] * sod, o.to(o_ptr.dtype.element_ty),
             mask=row_ok[:, None] & dv_ok[None, :])


@triton.jit
def _flash_tiles(q, k_base, v_base, m_rows, row_ok, qpos, m_i, l_i, acc, start, end, hi, qk_scale, WINDOW, softcap,
                 skt, skd, svt, svd, sml, D, DV, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                 BLOCK_DV: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr,
                 HAS_SOFTCAP: tl.constexpr, MASK_KIND: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                 EVEN_D: tl.constexpr, slope, HAS_ALIBI: tl.constexpr, CHUNKED: tl.constexpr):
    """The key tiles ``[start, end)`` of one row block into the online softmax. ``MASKED``: keys past ``hi``,
    the causal diagonal, the window and the mask operand are applied (scores -inf where not visible);
    otherwise every key of every tile is visible to every row (the caller's full range): plain loads when
    the head dims need no padding, the scale folded into the exponent, no select. ``HAS_ALIBI``: ``slope`` (log2
    units) times (key position - query position) added after any soft-cap, on both paths."""
    tn = tl.arange(0, BLOCK_N)
    ds = tl.arange(0, BLOCK_D)
    dvs = tl.arange(0, BLOCK_DV)
    d_ok = ds < D
    dv_ok = dvs < DV
    for n0 in range(start, end, BLOCK_N):
        ts = n0 + tn
        n64 = tl.full((), n0, tl.int64)  # this tile's first key, as a 64-bit offset
        k_ptrs = k_base + n64 * skt + tn[None, :] * skt + ds[:, None] * skd
        v_ptrs = v_base + n64 * svt + tn[:, None] * svt + dvs[None, :] * svd
        if MASKED:
            t_ok = ts < hi
            k_t = tl.load(k_ptrs, mask=t_ok[None, :] & d_ok[:, None], other=0.0)
            scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_M, BLOCK_N], log2 units
            if HAS_SOFTCAP:
                scores = _softcap_log2(scores, softcap)  # c * tanh(s / c)
            if HAS_ALIBI:
                scores += slope * (ts[None, :] - qpos[:, None]).to(tl.float32)
            visible = t_ok[None, :]
            if CAUSAL:
                visible = visible & (ts[None, :] <= qpos[:, None])
                if HAS_WINDOW:  # a sliding window, or chunks
                    visible = visible & (ts[None, :] >= first_key(qpos, WINDOW, CHUNKED)[:, None])
            if MASK_KIND != 0:
                mvals = tl.load(m_rows + n64 * sml + tn[None, :] * sml, mask=row_ok[:, None] & t_ok[None, :], other=0)
                if MASK_KIND == 1:  # bool: True = attend
                    visible = visible & (mvals != 0)
                else:  # additive, in natural-log units
                    scores = scores + mvals.to(tl.float32) * _LOG2E
            scores = tl.where(visible, scores, float("-inf"))
            v = tl.load(v_ptrs, mask=t_ok[:, None] & dv_ok[None, :], other=0.0)
            m_i, l_i, acc = _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION)
        else:
            if EVEN_D:
                k_t = tl.load(k_ptrs)
            else:
                k_t = tl.load(k_ptrs, mask=d_ok[:, None], other=0.0)
            raw = tl.dot(q, k_t, input_precision=INPUT_PRECISION)
            # every score is finite here, so the running max is too after the first tile: no -inf guard
            if HAS_SOFTCAP or HAS_ALIBI:
                scores = raw * qk_scale
                if HAS_SOFTCAP:
                    scores = _softcap_log2(scores, softcap)
                if HAS_ALIBI:
                    scores += slope * (ts[None, :] - qpos[:, None]).to(tl.float32)
                m_new = tl.maximum(m_i, tl.max(scores, axis=1))
                p = tl.exp2(scores - m_new[:, None])
            else:
                m_new = tl.maximum(m_i, tl.max(raw, axis=1) * qk_scale)
                p = tl.exp2(raw * qk_scale - m_new[:, None])
            alpha = tl.exp2(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, axis=1)
            if EVEN_D:
                v = tl.load(v_ptrs)
            else:
                v = tl.load(v_ptrs, mask=dv_ok[None, :], other=0.0)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
            m_i = m_new
    return m_i, l_i, acc


@dataclass(frozen=True)
class FlashConfig:
    """Tiles of one flash-attention launch: query rows per program, keys per tile, warps, stages."""

    block_m: int
    block_n: int
    num_warps: int = 4
    num_stages: int = 2


@functools.lru_cache(maxsize=256)
def pick_config(s: int, head_dim: int, dtype: torch.dtype, interpreted: bool) -> FlashConfig:
    """Tiles per shape (cached): big query blocks keep tensor cores busy, the K/V tile fits the registers
    left by q and the accumulator (``BLOCK_M * D`` each); short sequences take small blocks."""
    if interpreted:
        return FlashConfig(16, 16)
    wide = dtype != torch.float32 and head_dim <= 128
    block_m = 128 if wide and s > 64 else 64
    block_n = 64 if head_dim <= 128 else 32
    # H200 sweep (flash_prefill_configs-nvidia-h200-2026-12-03): at D = 64, 128 x 64 tiles on 4 warps 0.88x
    # SDPA (geomean of four shapes) against 0.87x on 8; at D = 128, 8 warps 0.76x against 0.54x on 4
    warps = 8 if (block_m == 128 and head_dim > 64) or head_dim > 128 else 4
    stages = 3 if head_dim <= 128 and dtype != torch.float32 else 2
    return FlashConfig(block_m, block_n, warps, stages)


# ---------------------------------------------------------------------------------------------
# the cost rule: this kernel or torch's SDPA
# ---------------------------------------------------------------------------------------------
# Fractions of the dense tensor-core peak (989 TFLOP/s) each implementation reaches at prefill, from
# benches/results/flash_prefill_configs-nvidia-h200-2026-12-03.json (bf16, B = 4, S = 4096, D = 128, GQA 32/8):
# SDPA 598 TFLOP/s non-causal, 525 causal; ours 481 and 431 (0.81-0.82x; at D = 64 0.90-0.91x, at S = 1024
# 0.72x). Before the unmasked full-tile loop (2026-12-02) ours was 424 and 352. So SDPA still wins wherever it
# can run; ours where it cannot (soft-capping) or would read a materialised window mask.
# Session 31 (H100, flash_prefill_configs-loop-nvidia-h100-...-session31): two forms of the unmasked loop, both slower
# everywhere, reverted (the code: commit 9b0e794). A lazy rescale (the accumulator rescaled only when a row's max
# grows by more than 2**8, as FlashAttention-4 does): B4 S4096 D128 causal 395 TFLOP/s against 420 for pick_config's
# tiles (SDPA 524); issuing the next tile's q @ K^T before this tile's softmax (pipelining by hand): 406; both: 359.
# At D = 64: 353 / 357 / 360 against 373. Triton's own pipelining and wgmma waits do better than either.
# Hopper features (benches/experiments/flash_prefill_hopper.py, H200, session 13; ..._one_loop_ws.py, H100, session
# 32; both Triton 3.6): q/K/V through tensor descriptors (TMA) are slower at every shape and tile tried (H100, B4
# S4096 D128 causal 386-396 TFLOP/s against 451 for these pointer loads, SDPA 619; non-causal 433-447 against 498).
# Triton's warp specialisation engages on Hopper only at 4 warps with the key loop as the kernel's one, branch-free
# loop (every tile masked); non-causal it gains 3% at D128 (514 against 498), loses at D64 (322 against 441), and
# causal it returns wrong results (max abs error 0.7-1.4 against SDPA; the same code without it is right): not taken.
SDPA_EFFICIENCY = {False: 0.60, True: 0.53}
OURS_EFFICIENCY = {False: 0.49, True: 0.44}


def attention_flops(b: int, hq: int, s: int, length: int, d: int, dv: int, causal: bool,
                    window: Optional[int]) -> float:
    """FLOPs of the key range a kernel really visits: 2*S*L*(D + Dv) per head, causal about half,
    a window W about W/L of it (the IR op's cost rule, concretely)."""
    seen = float(length)
    if causal:
        seen = min(length, window) if window is not None else (length + 1) / 2 if s == length else length
    return 2.0 * b * hq * s * seen * (d + dv)


def choose_impl(b: int, hq: int, s: int, length: int, d: int, dv: int, *, causal: bool, window: Optional[int],
                softcap: Optional[float], has_mask: bool, dtype: torch.dtype, score_terms: bool = False) -> str:
    """``"kernel"`` or ``"sdpa"``: the implementation with the smaller predicted time at this shape.

    Both are compute-bound at prefill, so time = FLOPs / (efficiency * peak); the peak cancels.
    SDPA has no soft-capping (the torch alternative materialises the scores: always slower), and no
    sliding window: it takes the window as a materialised ``[S, L]`` mask, visits every key (the
    full FLOPs, causal halving lost) and reads the mask (counted as FLOPs at the device's ridge
    point, 1 byte = 300 FLOPs on Hopper in 16-bit). Our kernel skips the tiles outside the window. Nor does SDPA
    take attention sinks or ALiBi slopes (``score_terms``): it would need them materialised.
    """
    if softcap is not None or score_terms:
        return "kernel"
    ours = attention_flops(b, hq, s, length, d, dv, causal, window) / OURS_EFFICIENCY[causal]
    if window is not None and window < length:
        mask_bytes = b * s * length * torch.empty((), dtype=dtype).element_size()
        sdpa = attention_flops(b, hq, s, length, d, dv, False, None) / SDPA_EFFICIENCY[False] + 300.0 * mask_bytes
    else:
        sdpa = attention_flops(b, hq, s, length, d, dv, causal, None) / SDPA_EFFICIENCY[causal and not has_mask]
    return "kernel" if ours < sdpa else "sdpa"


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------
def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None, *, causal: bool = False, scale: Optional[float] = None,
                    window: Optional[int] = None, softcap: Optional[float] = None,
                    positions: Optional[torch.Tensor] = None, config: Optional[FlashConfig] = None,
                    sinks: Optional[torch.Tensor] = None, alibi: Optional[tuple[float, ...]] = None,
                    chunk: Optional[int] = None) -> torch.Tensor:
    """Run the flash kernel (no cost choice): the IR op ``attention``, or with ``positions`` ([S] or
    [B, S]: each query row's cache slot) the prefill of ``cached_attention`` (then causal is implied).
    ``sinks``: ``[Hq]`` per-head sink logits (the op's ``sinks=true`` operand), on q's device; ``alibi``: one slope a
    query head (the op's attribute: ``slope * (key position - query position)`` added to the scores); ``chunk``: causal
    within chunks of that many positions (Llama 4; not with a window)."""
    if chunk is not None and window is not None:
        raise ValueError(f"attention: window={window} and chunk={chunk} do not combine")
    bsz, hq, s, d = q.shape
    hkv, length, dv = k.shape[1], k.shape[2], v.shape[3]
    y = check_out("attention", out, (bsz, hq, s, dv), q.dtype, q.device)
    if positions is not None:
        causal = True
    mask_kind, mask_arg, m_strides = 0, q, (0, 0, 0, 0)
    if mask is not None:
        mask_kind = 1 if mask.dtype == torch.bool else 2
        mask_arg = mask.expand(bsz, hq, s, length)
        m_strides = mask_arg.stride()
        if mask_kind == 1:
            mask_arg = mask_arg.view(torch.uint8)  # bools as bytes: the kernel tests != 0
    pos_arg, p_strides = q, (0, 0)
    if positions is not None:
        pos_arg = positions
        p_strides = (positions.stride(0), positions.stride(1)) if positions.dim() == 2 else (0, positions.stride(0))
    cfg = config or pick_config(s, max(d, dv), q.dtype, q.device.type != "cuda")
    qk_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    block_d, block_dv = max(16, next_pow2(d)), max(16, next_pow2(dv))  # head dims padded to a power of two
    grid = (cdiv(s, cfg.block_m), bsz * hq)
    launchable(_flash_attention_fwd, q.device)[grid](
        q, k, v, mask_arg, pos_arg, y, sinks if sinks is not None else q,
        alibi_slopes(alibi, q.device) if alibi is not None else q,
        hq, hq // hkv, s, length, d, dv, qk_scale, int(window or chunk or 0), float(softcap or 1.0),
        *q.stride(), *k.stride(), *v.stride(), *m_strides, *p_strides, *y.stride(),
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_D=block_d, BLOCK_DV=block_dv,
        CAUSAL=causal, HAS_POS=positions is not None, HAS_WINDOW=(window or chunk) is not None and causal,
        CHUNKED=chunk is not None,
        HAS_SOFTCAP=softcap is not None, MASK_KIND=mask_kind, INPUT_PRECISION=precision,
        EVEN_D=d == block_d and dv == block_dv, HAS_SINKS=sinks is not None, HAS_ALIBI=alibi is not None,
        num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_options(q.device))
    return y


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *operands: Optional[torch.Tensor],
              out: Optional[torch.Tensor] = None, causal: bool = False, scale: Optional[float] = None,
              window: Optional[int] = None, softcap: Optional[float] = None, impl: Optional[str] = None,
              config: Optional[FlashConfig] = None, alibi: Optional[tuple[float, ...]] = None,
              sinks: bool = False, chunk: Optional[int] = None) -> torch.Tensor:
    """The IR op ``attention`` (operands ``q, k, v, mask?``, then the ``[Hq]`` sink logits with ``sinks=True``):
    our flash kernel or torch's SDPA, as ``choose_impl`` (the cost rule) says for this shape; ``impl="kernel"`` /
    ``"sdpa"`` forces one (benches, tests; SDPA has no sinks: the torch reference then)."""
    mask, sink = attention_extras(operands, sinks)
    _check(q, k, v, mask, sink)
    bsz, hq, s, d = q.shape
    length, dv = k.shape[2], v.shape[3]
    attrs = dict(causal=causal, scale=scale, window=window, softcap=softcap, chunk=chunk)
    extra = [x for x in (mask, sink) if x is not None]
    reason = unsupported_device(q, k, v, *extra) or unsupported_dtype("attention", q)
    if reason is None and max(d, dv) > MAX_HEAD_DIM:
        reason = f"head dim {max(d, dv)} > {MAX_HEAD_DIM}"
    if reason is None and q.numel() == 0:
        reason = "empty query"
    if reason is None:
        if impl is None and not interpreting():
            impl = choose_impl(bsz, hq, s, length, d, dv, causal=causal, window=window or chunk, softcap=softcap,
                               has_mask=mask is not None, dtype=q.dtype,
                               score_terms=sink is not None or alibi is not None)
        if impl == "sdpa":
            reason = "the cost rule picks SDPA at this shape"
    if reason is not None:
        ref = get_op("attention").reference(q, k, v, *extra, alibi=alibi, sinks=sink is not None, **attrs)
        return fallback("attention", reason, ref, out)
    y = flash_attention(q, k, v, mask, out, config=config, sinks=sink, alibi=alibi, **attrs)
    note("attention", "kernel")
    return y


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Optional[torch.Tensor],
           sinks: Optional[torch.Tensor] = None) -> None:
    op = "attention"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: needs q[B, Hq, S, D], k[B, Hkv, L, D], v[B, Hkv, L, Dv]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    bsz, hq, s, d = q.shape
    if k.shape[0] != bsz or v.shape[0] != bsz or k.shape[3] != d or v.shape[1:3] != k.shape[1:3]:
        raise ValueError(f"{op}: k {tuple(k.shape)} / v {tuple(v.shape)} do not fit q {tuple(q.shape)} "
                         f"(batch, head dim, kv heads and length must agree)")
    if hq % k.shape[1]:
        raise ValueError(f"{op}: query heads {hq} must be a multiple of kv heads {k.shape[1]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_sinks(op, sinks, q)
    if mask is not None:
        try:
            torch.broadcast_shapes(mask.shape, (bsz, hq, s, k.shape[2]))
        except RuntimeError:
            raise ValueError(f"{op}: mask {tuple(mask.shape)} does not broadcast to [B, Hq, S, L] = "
                             f"{[bsz, hq, s, k.shape[2]]}") from None
