"""``linear`` for few rows (decode): ``y[M, N] = x[M, K] @ W[N, K]^T (+ bias)`` streaming W once.

At decode, M = batch * new tokens is 1..16 while W is megabytes, so the product is a stack of GEMVs
whose time is the time to read W. The kernel gives each program a block of ``BLOCK_N`` rows of W (one
output column each) and walks K in wide tiles, so every byte of W is loaded exactly once, by one
program, with vectorised loads; the few x rows are re-read per program but stay in L2.

Two inner products, chosen by ``USE_DOT``:
- ``USE_DOT=False`` (M <= 2): multiply-accumulate in registers into ``acc[BLOCK_M, BLOCK_N, BLOCK_K]``
  and reduce over K once at the end (no tensor cores, no shared memory: the plain GEMV). At one row
  (``ROW``) x is a vector against the 2-D weight tile (``acc[BLOCK_N, BLOCK_K]``): no 3-D product's layout
  shuffles, the H200's fastest form at M = 1 on every Llama shape; with ``RESIDENT`` a program's whole K range
  is one register tile, loaded before the PDL wait for a parameter weight.
- ``USE_DOT=True`` (M > 2): pad M to 16 rows and use ``tl.dot`` (tensor cores; the loads feeding the
  dot are software-pipelined). The padded rows cost FLOPs, which are free when memory-bound.

When ``N / BLOCK_N`` programs would leave SMs idle (N = 1024 for a k/v projection, 4096 on a 132-SM
H100), K is split over ``SPLIT_K`` programs too: each writes an fp32 partial ``[SPLIT_K, M, N]`` and
bumps a per-column-block counter; the program that arrives last sums the ``SPLIT_K`` partials in
split order (deterministic, unlike float atomics), adds the bias, casts, stores and resets the counter
to 0. So a split launch is still one kernel: at decode a launch costs about as long as reading a
2048x2048 weight, so a second "reduce" kernel per projection would cost more than the split saves.
The counters live in one zeroed int32 buffer per device that every launch leaves zeroed; launches on
one stream (a decode step, a CUDA graph) run one after another, so they can share it.

The fused forms (issue 13) change only what x is and what happens to the output tile: ``GATED``
(silu(gate) * up), ``NORM`` (rms_norm of x, its 1 / rms from a prologue that re-reduces x in every
program, or with ``SUMSQ_IN`` from the partial sums of squares x's producer wrote), ``RESIDUAL`` (an add
as the tile is stored) and ``SUMSQ_OUT`` (the stored tile's sums of squares, one fp32 per
``SUMSQ_COLUMNS`` = 4 output columns and row, written by the program that stores those columns: the last
of a split; every program owns whole blocks since ``BLOCK_N`` is 4 or 32). ``GLU`` (``linear_glu``, from
fuse-linear-glu): the weight is a merged ``[2N, K]`` gate/up projection; each program streams its columns'
gate rows and up rows as two tiles into two accumulators and stores ``silu(gate) * up``. The partials are what the next
norm reduces (the rounded output upcast to fp32), so a residual linear followed by a norm-linear needs
neither a norm kernel nor a re-reduction: each consumer program sums the K / 4 partials (2-4 KB a row at
the Llama shapes, one vector load, from L2). ``ROPE`` (``linear_rope``, from fuse-rope-linear): each program
streams a head's column pairs ``(j, j + D/2)`` as two tiles and stores them rotated; it changes which rows a
program owns and its epilogue, not x, so it takes ``NORM`` too (``rms_norm_linear_rope_sumsq``), as ``GLU`` does
(``rms_norm_linear_glu_sumsq``).

For M > 16 the wrapper calls ``torch.nn.functional.linear`` (cuBLAS), which wins once W is reused
across enough rows. Falls back to the torch reference for: dtypes other than fp16/bf16/fp32, a weight
whose rows are not contiguous (``weight.stride(1) != 1``), CPU tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    arrive_last,
    cdiv,
    check_out,
    fallback,
    l2_prefetch_bytes,
    l2_prefetch_rows,
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

SMALL_M = 16  # the kernel's range: up to one tensor-core tile of rows
SUMSQ_COLUMNS = 4  # output columns per partial sum of squares (membound.ir.ops.matmul.SUMSQ_COLUMNS)


@triton.jit
def _w_tile(w_rows, row_ok, ks, k_end):
    """The ``[BLOCK_N, BLOCK_K]`` tile of W rows ``w_rows`` at columns ``ks`` (zeros from ``k_end`` on)."""
    return tl.load(w_rows[:, None] + ks[None, :], mask=row_ok[:, None] & (ks < k_end)[None, :], other=0.0)


@triton.jit
def _x_tile(x_ptr, u_ptr, nw_ptr, ms, ks, m_ok, k_ok, stride_xm, stride_um, rstd, GATED_X: tl.constexpr,
            NORM_X: tl.constexpr):
    """The few x rows of one K tile (re-read by every program, served from L2), formed as the op forms them:
    ``GATED_X`` silu(gate) * up, ``NORM_X`` rms_norm(x) * weight, each rounded to the dtype as eager rounds it
    (never stored)."""
    x = tl.load(x_ptr + ms[:, None] * stride_xm + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
    if GATED_X:
        u = tl.load(u_ptr + ms[:, None] * stride_um + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        x = _silu_mul(x, u)
    if NORM_X:
        nw = tl.load(nw_ptr + ks, mask=k_ok, other=0.0)
        xn = (x.to(tl.float32) * rstd[:, None]).to(x.dtype)
        x = (xn.to(tl.float32) * nw.to(tl.float32)[None, :]).to(x.dtype)
    return x


@triton.jit
def _finish(acc, r_ptr, ms, rows, stride_rm, mask, dtype, RESIDUAL: tl.constexpr):
    """The output tile in ``dtype``: the product rounded, then (``RESIDUAL``) the residual added and rounded
    again, as eager's ``residual + linear(x)`` rounds."""
    y = acc.to(dtype)
    if RESIDUAL:
        r = tl.load(r_ptr + ms[:, None] * stride_rm + rows[None, :], mask=mask, other=0.0)
        y = (y.to(tl.float32) + r.to(tl.float32)).to(dtype)
    return y


@triton.jit
def _silu_mul(g, u):
    """``silu(g) * u`` rounded as eager rounds it: the activation in fp32 rounded to g's dtype, then the product
    rounded to u's (the gated forms' x, and linear_glu's output from its two rounded accumulators)."""
    gf = g.to(tl.float32)
    a = (gf / (1.0 + tl.exp(-gf))).to(g.dtype)
    return (a.to(tl.float32) * u.to(tl.float32)).to(u.dtype)


@triton.jit
def _rope_pair(y1, y2, cs_ptr, sn_ptr, ms, jj, HALF, stride_cm, mask, rope_prog):
    """``linear_rope``'s epilogue for a program's column pairs ``(j, j + HALF)`` of one head (``y1``, ``y2``: the
    rounded products): ``t * cos + rotate_half(t) * sin`` rounded as eager rounds it (each product, then the
    sum; rotate_half(t) = cat(-t2, t1)), cos and sin read at the pair's two columns of the row's ``[D]`` tables.
    A program past the rotated columns (``rope_prog``, per lane, false) keeps its values."""
    offs = ms[:, None] * stride_cm + jj[None, :]
    ok = mask & rope_prog[None, :]
    c1 = tl.load(cs_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    c2 = tl.load(cs_ptr + offs + HALF, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(sn_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(sn_ptr + offs + HALF, mask=ok, other=0.0).to(tl.float32)
    o1, o2 = rotate_rounded(y1, y2, c1, c2, s1, s2)
    return tl.where(rope_prog[None, :], o1, y1), tl.where(rope_prog[None, :], o2, y2)


@triton.jit
def rotate_rounded(y1, y2, c1, c2, s1, s2):
    """A rotary pair ``(y1, y2)`` (columns ``j`` and ``j + D/2`` of a head, in the output dtype) rotated as eager
    rounds ``t * cos + rotate_half(t) * sin``: each product rounded to the dtype, then the sum (rotate_half(t) =
    cat(-t2, t1)); ``c*``, ``s*`` fp32 cos and sin at the two columns. Shared by ``linear_rope``'s epilogue and the
    attention block's q/k items (``attn_block``)."""
    dt = y1.dtype
    a1, a2 = y1.to(tl.float32), y2.to(tl.float32)
    o1 = ((a1 * c1).to(dt).to(tl.float32) + (-(a2 * s1)).to(dt).to(tl.float32)).to(dt)
    o2 = ((a2 * c2).to(dt).to(tl.float32) + (a1 * s2).to(dt).to(tl.float32)).to(dt)
    return o1, o2


@triton.jit
def _rope_store(acc, acc2, b_ptr, out_ptr, cs_ptr, sn_ptr, ms, rows, rows2, row_ok, row_ok2, offs, offs2, mask,
                mask2, jj, HALF, stride_cm, rope_prog, HAS_BIAS: tl.constexpr):
    """``linear_rope``'s finished tiles (the fp32 sums of both column sets): the bias added, each rounded to the
    output dtype, rotated (:func:`_rope_pair`), stored at their own columns."""
    if HAS_BIAS:
        acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        acc2 += tl.load(b_ptr + rows2, mask=row_ok2, other=0.0).to(tl.float32)[None, :]
    dt = out_ptr.dtype.element_ty
    o1, o2 = _rope_pair(acc.to(dt), acc2.to(dt), cs_ptr, sn_ptr, ms, jj, HALF, stride_cm, mask, rope_prog)
    tl.store(out_ptr + offs, o1, mask=mask)
    tl.store(out_ptr + offs2, o2, mask=mask2)


@triton.jit
def _split_sum(part_ptr, first, SPLIT_K: tl.constexpr, stride_split, offs, mask, BLOCK_M: tl.constexpr,
               BLOCK_N: tl.constexpr):
    """The fp32 partials ``first .. first + SPLIT_K`` summed in split order (the same sum on every run), from
    L2 (``.cg``: the other programs' stores)."""
    total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        total += tl.load(part_ptr + (first + s) * stride_split + offs, mask=mask, other=0.0, cache_modifier=".cg")
    return total


@triton.jit
def _store_sumsq(y, ss_ptr, ms, m_ok, out_mask, pid_n, N, stride_sm, BLOCK_N: tl.constexpr,
                 COLUMNS: tl.constexpr):
    """The partial sums of squares of the output tile ``y`` (its rounded values upcast to fp32, as eager's
    RMSNorm reduces them): one fp32 per ``COLUMNS`` output columns and row, at block ``pid_n * BLOCK_N /
    COLUMNS + g``. Each block is written by the one program that owns its columns: no atomics, no zeroing."""
    yf = y.to(tl.float32)
    sq = tl.where(out_mask, yf * yf, 0.0)
    GROUPS: tl.constexpr = BLOCK_N // COLUMNS
    cols = tl.arange(0, BLOCK_N)
    for g in tl.static_range(GROUPS):
        part = tl.sum(tl.where((cols // COLUMNS == g)[None, :], sq, 0.0), axis=1)
        block = pid_n * GROUPS + g
        tl.store(ss_ptr + ms * stride_sm + block, part, mask=m_ok & (block * COLUMNS + 0 * ms < N))


@triton.jit
def _linear_small_m(
    x_ptr, u_ptr, w_ptr, w2_ptr, b_ptr, out_ptr, part_ptr, lock_ptr, g_ptr, nw_ptr, r_ptr, ss_ptr,
    M, N, K, K_PER_SPLIT, NS,
    stride_xm, stride_um, stride_wn, stride_split, stride_rm, stride_sm, eps,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr, PREFETCH: tl.constexpr, GATED: tl.constexpr, EARLY_W: tl.constexpr,
    PRE_GATE: tl.constexpr = False, NORM: tl.constexpr = False, RESIDUAL: tl.constexpr = False,
    SUMSQ_IN: tl.constexpr = False, SUMSQ_OUT: tl.constexpr = False, SUMSQ_COLUMNS: tl.constexpr = 4,
    SS_CHUNK: tl.constexpr = 16,
    L2_PREFETCH: tl.constexpr = False, pf_bytes=0, GLU: tl.constexpr = False, GATE_ROWS: tl.constexpr = 16,
    ROPE: tl.constexpr = False, HALF: tl.constexpr = 1, cs_ptr=None, sn_ptr=None, stride_cm=0, ROPE_N=0,
    ROPE_PROGRAMS=0, SWAP: tl.constexpr = False, RESIDENT: tl.constexpr = False, ROW: tl.constexpr = False,
    EARLY_SWAP: tl.constexpr = False,
):
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of 16 (vector loads)")
    tl.static_assert(not SUMSQ_IN or NORM, "the partial sums of squares are read for a norm")
    tl.static_assert(not (SUMSQ_IN and SUMSQ_OUT), "ss_ptr is read or written, not both")
    if SUMSQ_OUT:
        tl.static_assert(BLOCK_N % SUMSQ_COLUMNS == 0, "a program owns whole blocks of the partial sums")
    tl.static_assert(not (NORM and GATED), "a norm prologue and gating are two forms of x: one at a time")
    tl.static_assert(not GLU or not (GATED or RESIDUAL or SUMSQ_OUT or HAS_BIAS),
                     "linear_glu: x plain or normed, no bias, and its output is the gated product")
    # the norm forms x as it is loaded (NORM, its mean square from SUMSQ_IN's partials or a prologue), the rotation
    # picks the program's weight rows and finishes its output tiles: orthogonal (rms_norm_linear_rope_sumsq)
    tl.static_assert(not ROPE or not (GLU or GATED or RESIDUAL or SUMSQ_OUT or L2_PREFETCH),
                     "linear_rope: x plain or normed (a bias allowed), its output the rotated product")
    # two W tiles a program: linear_glu's gate and up rows, linear_rope's column pairs (j, j + HALF) of a head
    TWO: tl.constexpr = GLU or ROPE
    if USE_DOT:
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs 16x16 tiles: pad M to 16")
    tl.static_assert(not SWAP or USE_DOT, "SWAP is a form of the tensor-core product")
    tl.static_assert(not RESIDENT or not USE_DOT, "RESIDENT is a form of the register product")
    tl.static_assert(not ROW or (BLOCK_M == 1 and not USE_DOT), "ROW: the register product at one row")
    tl.static_assert(not EARLY_SWAP or (SWAP and EARLY_W), "EARLY_SWAP: a parameter weight's swapped product")
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ms = tl.arange(0, BLOCK_M)
    if ROPE:
        # linear_rope: the first ROPE_PROGRAMS programs own BLOCK_N column pairs (j, j + HALF) of the rotated
        # heads each (pair p = head * HALF + j: columns head * 2 HALF + j and that + HALF), both in registers for
        # the rotation; the rest own 2 BLOCK_N consecutive columns past ROPE_N (the values), as two tiles
        lane = tl.arange(0, BLOCK_N)
        rope_prog = (pid_n + 0 * lane) < ROPE_PROGRAMS  # per lane (the same for all): a vector mask
        pair = pid_n * BLOCK_N + lane
        jj = pair % HALF
        rows = tl.where(rope_prog, (pair // HALF) * (2 * HALF) + jj, ROPE_N + (pid_n - ROPE_PROGRAMS) * (2 * BLOCK_N)
                        + lane)
        rows2 = tl.where(rope_prog, rows + HALF, rows + BLOCK_N)
        row_ok = tl.where(rope_prog, pair < ROPE_N // 2, rows < N)
        row_ok2 = tl.where(rope_prog, row_ok, rows2 < N)
    else:
        # this program owns W rows [pid_n * BLOCK_N, +BLOCK_N) = output columns, and one K chunk
        rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        row_ok = rows < N
        rows2 = rows
        row_ok2 = row_ok
    w_rows = w_ptr + rows.to(tl.int64) * stride_wn  # 64-bit: an lm head passes 2**31 elements
    if TWO:
        # linear_glu: this program's columns of the up half too (rows N + j of the merged weight, w2_ptr), in a
        # second tile and accumulator, so the epilogue has both factors of act(gate) * up in registers;
        # linear_rope: the pair's second columns (w2_ptr is the weight)
        w2_rows = w2_ptr + rows2.to(tl.int64) * stride_wn
    m_ok = ms < M
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)

    if SWAP:
        # out^T = W x^T: the weight tile is the MMA's A operand ([BLOCK_N, BLOCK_K] as stored, K contiguous), the
        # few x rows its narrow B ([BLOCK_K, BLOCK_M]); the accumulator is transposed once after the loop
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        if TWO:
            acc2 = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        if EARLY_SWAP:
            # a parameter weight's first K tile, loaded into registers before the wait: it is in flight while the
            # kernel before this one finishes (the loop's own tiles start after the wait); a config whose BLOCK_K
            # covers the program's K range so holds its whole weight slice before the wait
            w_first = _w_tile(w_rows, row_ok, k_start + tl.arange(0, BLOCK_K), k_end)
            if TWO:
                w_first2 = _w_tile(w2_rows, row_ok2, k_start + tl.arange(0, BLOCK_K), k_end)
    elif USE_DOT:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if TWO:
            acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    elif RESIDENT:
        # the program's whole weight slice is one tile (BLOCK_K covers its K range: the launcher checks), held in
        # registers; a parameter weight's is loaded before the wait, so a decode GEMV's stream starts while the
        # kernel before it finishes (H200: the fixed cost of a 1.24B q/k/v GEMV in a graph chain 3.0 -> 1.6 us,
        # benches/experiments/resident_gemv.py)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if TWO:
            acc2 = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if EARLY_W:
            w_res = _w_tile(w_rows, row_ok, k_start + tl.arange(0, BLOCK_K), k_end)
            if TWO:
                w_res2 = _w_tile(w2_rows, row_ok2, k_start + tl.arange(0, BLOCK_K), k_end)
    else:
        # defer the K reduction: one fp32 FMA per loaded W element, a single tree-sum at the end (one row: the
        # 2-D products of the tile and x as a vector)
        if ROW:
            acc3 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
            if TWO:
                acc3_2 = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        else:
            acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
            if TWO:
                acc3_2 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K), dtype=tl.float32)
        if PREFETCH and EARLY_W:
            # the first W tile of a parameter weight (no kernel writes it): loaded before the wait, so it
            # is in flight while the previous kernel finishes
            w_next = _w_tile(w_rows, row_ok, k_start + tl.arange(0, BLOCK_K), k_end)
            if TWO:
                w_next2 = _w_tile(w2_rows, row_ok2, k_start + tl.arange(0, BLOCK_K), k_end)
    if L2_PREFETCH:
        # a parameter weight's first pf_bytes of each of this program's rows (K chunk), asked of L2 before
        # the wait: the DRAM stays busy while the kernels before this one finish (_launch.l2_prefetch)
        l2_prefetch_rows(w_ptr, pid_n, N, stride_wn, k_start, k_end - k_start, pf_bytes, BLOCK_N)
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    if RESIDENT:
        if not EARLY_W:
            # a weight some earlier kernel may have written: read only after the wait
            w_res = _w_tile(w_rows, row_ok, k_start + tl.arange(0, BLOCK_K), k_end)
            if TWO:
                w_res2 = _w_tile(w2_rows, row_ok2, k_start + tl.arange(0, BLOCK_K), k_end)
    elif not USE_DOT:
        if PREFETCH and not EARLY_W:
            # a weight some earlier kernel may have written: read only after the wait
            w_next = _w_tile(w_rows, row_ok, k_start + tl.arange(0, BLOCK_K), k_end)
            if TWO:
                w_next2 = _w_tile(w2_rows, row_ok2, k_start + tl.arange(0, BLOCK_K), k_end)
    if NORM:
        ss = tl.zeros((BLOCK_M,), dtype=tl.float32)
        if SUMSQ_IN:
            # the producer of x wrote its rows' sums of squares in NS = K / 4 partials (2-4 KB a row at the
            # Llama shapes, from L2): a vector load per chunk (one at M <= 2), summed in a fixed order, while
            # the first W tile is in flight. (Tried, session 17: norming late instead, x times the norm weight in
            # the loop and the 1 / rms on the sums after it, with no scratch prologue on tensor cores. H200
            # norm_stats-...-session17-late-norm: a consumer's extra cost rose at three of four M = 8 / M = 1
            # pairs, 8B o -> gate/up M = 1 +1.9 -> +9.0 us, 8B down -> q/k/v M = 8 +11.8 -> +19.0; reverted)
            for c0 in range(0, NS, SS_CHUNK):
                cs = c0 + tl.arange(0, SS_CHUNK)
                ss += tl.sum(tl.load(ss_ptr + ms[:, None] * stride_sm + cs[None, :],
                                     mask=m_ok[:, None] & (cs < NS)[None, :], other=0.0), axis=1)
        else:
            # rms_norm prologue: every program reduces the whole rows of x (a few KB, from L2) for their
            # 1 / rms, in fp32; x is normed tile by tile below, never stored
            for k0 in range(0, K, BLOCK_K):
                ks = k0 + tl.arange(0, BLOCK_K)
                xs = tl.load(x_ptr + ms[:, None] * stride_xm + ks[None, :], mask=m_ok[:, None] & (ks < K)[None, :],
                             other=0.0).to(tl.float32)
                ss += tl.sum(xs * xs, axis=1)
        rstd = 1.0 / tl.sqrt(ss / K + eps)
    if PRE_GATE:
        # tensor cores: form x (silu(gate) * up, or the normed row) once for this program's K range, real rows
        # only, as vectors spread over all threads, into the scratch g[M, K] (programs of one K range write the
        # same values), then read it as x. Formed in the loop, the compiler recomputes it in the dot operand's
        # layout, once per warp (4x), for all 16 padded rows: the gated Llama-3-8B down projection at M = 8
        # took 103 us against 35 at M = 1 (H200)
        # the real rows (GATE_ROWS: M's power of two) in one [GATE_ROWS, GATE_CHUNK] tile of 4096 values a step:
        # the steps wait on their L2 loads one after another, so their count is the prologue's latency (a row
        # and 512 columns a step took M x K / 512 of them: 56 per program for the 8B down projection at M = 8,
        # split 4; 7 now). The tile costs registers: sm_90 ptxas gives the gated kernel at M = 8 72 against 48
        # before (2048 values a step: 56; 1024: 48), still under the 6 programs an SM its shared memory allows
        GATE_CHUNK: tl.constexpr = 4096 // GATE_ROWS
        gms = tl.arange(0, GATE_ROWS)
        gm_ok = gms < M
        if NORM:
            # this block's 1 / rms per gate row (rstd is per BLOCK_M row): rows past GATE_ROWS are padding
            grstd = tl.sum(tl.where(gms[:, None] == ms[None, :], rstd[None, :], 0.0), axis=1)
        for kk in range(k_start, k_end, GATE_CHUNK):
            kg = kk + tl.arange(0, GATE_CHUNK)
            g_ok = gm_ok[:, None] & (kg < k_end)[None, :]
            xg = tl.load(x_ptr + gms[:, None] * stride_xm + kg[None, :], mask=g_ok, other=0.0)
            if NORM:
                nwg = tl.load(nw_ptr + kg, mask=kg < k_end, other=0.0)
                xn = (xg.to(tl.float32) * grstd[:, None]).to(xg.dtype)
                tl.store(g_ptr + gms[:, None] * K + kg[None, :],
                         (xn.to(tl.float32) * nwg.to(tl.float32)[None, :]).to(xg.dtype), mask=g_ok)
            else:
                ug = tl.load(u_ptr + gms[:, None] * stride_um + kg[None, :], mask=g_ok, other=0.0)
                xf = xg.to(tl.float32)
                gg = (xf / (1.0 + tl.exp(-xf))).to(xg.dtype)
                tl.store(g_ptr + gms[:, None] * K + kg[None, :],
                         (gg.to(tl.float32) * ug.to(tl.float32)).to(ug.dtype), mask=g_ok)
        tl.debug_barrier()  # the block's stores are visible to all its threads after this
        x_ptr = g_ptr
        stride_xm = K
    GATED_X: tl.constexpr = GATED and not PRE_GATE
    NORM_X: tl.constexpr = NORM and not PRE_GATE
    if not NORM:
        rstd = tl.zeros((BLOCK_M,), dtype=tl.float32)  # (unused: _x_tile's NORM_X is off)
    loop_start = k_start
    if EARLY_SWAP:
        # the first K tile, peeled off the loop: its W tile came before the wait
        ks = k_start + tl.arange(0, BLOCK_K)
        x_t = tl.trans(_x_tile(x_ptr, u_ptr, nw_ptr, ms, ks, m_ok, ks < k_end, stride_xm, stride_um, rstd, GATED_X,
                               NORM_X))
        acc = tl.dot(w_first, x_t, acc, input_precision=INPUT_PRECISION)
        if TWO:
            acc2 = tl.dot(w_first2, x_t, acc2, input_precision=INPUT_PRECISION)
        loop_start = k_start + BLOCK_K
    for k0 in range(loop_start, k_end, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_end
        # the few x rows of this K tile (gated_linear: silu(gate) * up; a norm prologue: the normed row)
        x = _x_tile(x_ptr, u_ptr, nw_ptr, ms, ks, m_ok, k_ok, stride_xm, stride_um, rstd, GATED_X, NORM_X)
        if SWAP:
            w_s = tl.load(w_rows[:, None] + ks[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            x_t = tl.trans(x)
            acc = tl.dot(w_s, x_t, acc, input_precision=INPUT_PRECISION)
            if TWO:
                w_s2 = tl.load(w2_rows[:, None] + ks[None, :], mask=row_ok2[:, None] & k_ok[None, :], other=0.0)
                acc2 = tl.dot(w_s2, x_t, acc2, input_precision=INPUT_PRECISION)
        elif USE_DOT:
            # W tile as [BLOCK_K, BLOCK_N] (W^T): contiguous along K, so loads still vectorise
            w_t = tl.load(w_rows[None, :] + ks[:, None], mask=row_ok[None, :] & k_ok[:, None],
                          other=0.0)
            acc = tl.dot(x, w_t, acc, input_precision=INPUT_PRECISION)
            if TWO:
                w_t2 = tl.load(w2_rows[None, :] + ks[:, None], mask=row_ok2[None, :] & k_ok[:, None], other=0.0)
                acc2 = tl.dot(x, w_t2, acc2, input_precision=INPUT_PRECISION)
        elif RESIDENT:
            # one pass (the tile is the whole K range): the products reduced at once
            if ROW:
                # one row (BLOCK_M = 1): x as a vector against the 2-D tile, without the 3-D broadcast's layout
                # shuffles (sm_90 PTX: 4 barriers a program against 21, 128 B of shared memory against 4 KB)
                x1 = tl.sum(x, axis=0).to(tl.float32)
                acc += tl.sum(w_res.to(tl.float32) * x1[None, :], axis=1)[None, :]
                if TWO:
                    acc2 += tl.sum(w_res2.to(tl.float32) * x1[None, :], axis=1)[None, :]
            else:
                acc += tl.sum(x[:, None, :].to(tl.float32) * w_res[None, :, :].to(tl.float32), axis=2)
                if TWO:
                    acc2 += tl.sum(x[:, None, :].to(tl.float32) * w_res2[None, :, :].to(tl.float32), axis=2)
        else:
            if PREFETCH:
                # registers double-buffer W: the next tile's load is in flight while this one is used
                w = w_next
                w_next = _w_tile(w_rows, row_ok, ks + BLOCK_K, k_end)
                if TWO:
                    w2 = w_next2
                    w_next2 = _w_tile(w2_rows, row_ok2, ks + BLOCK_K, k_end)
            else:
                w = _w_tile(w_rows, row_ok, ks, k_end)
                if TWO:
                    w2 = _w_tile(w2_rows, row_ok2, ks, k_end)
            if ROW:
                x1 = tl.sum(x, axis=0).to(tl.float32)
                acc3 += w.to(tl.float32) * x1[None, :]
                if TWO:
                    acc3_2 += w2.to(tl.float32) * x1[None, :]
            else:
                acc3 += x[:, None, :].to(tl.float32) * w[None, :, :].to(tl.float32)
                if TWO:
                    acc3_2 += x[:, None, :].to(tl.float32) * w2[None, :, :].to(tl.float32)
    if not USE_DOT and not RESIDENT:
        if ROW:
            acc = tl.sum(acc3, axis=1)[None, :]
            if TWO:
                acc2 = tl.sum(acc3_2, axis=1)[None, :]
        else:
            acc = tl.sum(acc3, axis=2)
            if TWO:
                acc2 = tl.sum(acc3_2, axis=2)
    if SWAP:
        acc = tl.trans(acc)
        if TWO:
            acc2 = tl.trans(acc2)

    out_offs = ms[:, None] * N + rows[None, :]
    out_mask = m_ok[:, None] & row_ok[None, :]
    if ROPE:
        out_offs2 = ms[:, None] * N + rows2[None, :]
        out_mask2 = m_ok[:, None] & row_ok2[None, :]
        if SPLIT_K == 1:
            _rope_store(acc, acc2, b_ptr, out_ptr, cs_ptr, sn_ptr, ms, rows, rows2, row_ok, row_ok2, out_offs,
                        out_offs2, out_mask, out_mask2, jj, HALF, stride_cm, rope_prog, HAS_BIAS)
        else:
            # both tiles' partials in this split's slice (their columns are disjoint); the last to arrive reduces
            tl.store(part_ptr + pid_k * stride_split + out_offs, acc, mask=out_mask)
            tl.store(part_ptr + pid_k * stride_split + out_offs2, acc2, mask=out_mask2)
            if arrive_last(lock_ptr, pid_n, SPLIT_K):
                total = _split_sum(part_ptr, 0, SPLIT_K, stride_split, out_offs, out_mask, BLOCK_M, BLOCK_N)
                total2 = _split_sum(part_ptr, 0, SPLIT_K, stride_split, out_offs2, out_mask2, BLOCK_M, BLOCK_N)
                _rope_store(total, total2, b_ptr, out_ptr, cs_ptr, sn_ptr, ms, rows, rows2, row_ok, row_ok2, out_offs,
                            out_offs2, out_mask, out_mask2, jj, HALF, stride_cm, rope_prog, HAS_BIAS)
                reset_counter(lock_ptr, pid_n)
    elif SPLIT_K == 1:
        # the whole K range was ours: add the bias, round once to the output dtype
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        if GLU:
            y = _silu_mul(acc.to(out_ptr.dtype.element_ty), acc2.to(out_ptr.dtype.element_ty))
        else:
            y = _finish(acc, r_ptr, ms, rows, stride_rm, out_mask, out_ptr.dtype.element_ty, RESIDUAL)
        tl.store(out_ptr + out_offs, y, mask=out_mask)
        if SUMSQ_OUT:
            _store_sumsq(y, ss_ptr, ms, m_ok, out_mask, pid_n, N, stride_sm, BLOCK_N, SUMSQ_COLUMNS)
    else:
        # an fp32 partial sum, then count this split in; the last of the SPLIT_K to arrive reduces
        # (GLU: the up half's partials after the gate half's, SPLIT_K slices further on)
        tl.store(part_ptr + pid_k * stride_split + out_offs, acc, mask=out_mask)
        if GLU:
            tl.store(part_ptr + (SPLIT_K + pid_k) * stride_split + out_offs, acc2, mask=out_mask)
        if arrive_last(lock_ptr, pid_n, SPLIT_K):
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for s in tl.static_range(SPLIT_K):  # split order: the same sum on every run
                total += tl.load(part_ptr + s * stride_split + out_offs, mask=out_mask, other=0.0,
                                 cache_modifier=".cg")  # from L2: the other programs' stores
            if HAS_BIAS:
                total += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
            if GLU:
                total2 = _split_sum(part_ptr, SPLIT_K, SPLIT_K, stride_split, out_offs, out_mask, BLOCK_M, BLOCK_N)
                y = _silu_mul(total.to(out_ptr.dtype.element_ty), total2.to(out_ptr.dtype.element_ty))
            else:
                y = _finish(total, r_ptr, ms, rows, stride_rm, out_mask, out_ptr.dtype.element_ty, RESIDUAL)
            tl.store(out_ptr + out_offs, y, mask=out_mask)
            if SUMSQ_OUT:
                _store_sumsq(y, ss_ptr, ms, m_ok, out_mask, pid_n, N, stride_sm, BLOCK_N, SUMSQ_COLUMNS)
            reset_counter(lock_ptr, pid_n)


@dataclass(frozen=True)
class LinearConfig:
    """Tile sizes and launch shape of one ``_linear_small_m`` launch (see :func:`pick_config`)."""

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    use_dot: bool = False
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = True  # FMA path: double-buffer W tiles in registers
    # tensor cores: W as the MMA's A operand (out^T = W x^T), the batch rows as its narrow N side, as cuBLAS's
    # decode GEMMs tile it (128 x 8); Hopper's warpgroup MMA takes A from shared memory at 64 rows a warpgroup
    swap: bool = False
    # gated or normed, tensor cores: silu(gate) * up (or the normed x) formed once per program into a scratch
    # (PRE_GATE). The sm_90 SASS has the gating out of the main loop (963 -> 82 instructions a step); the H200
    # GPU tests of 2026-12-02 ran it (generate at batch 3 against eager and the reference backend). In the
    # H200 batch-8 steps it ran at 51% of read bandwidth (cost/step.py's gemv_dot_gated prior) with a prologue
    # of one row and 512 columns a step; now a [GATE_ROWS, 4096 / GATE_ROWS] tile a step (not yet timed). The
    # norm takes the same path (issue 13)
    pre_gate: bool = True
    # register path: each program's whole K range is one [BLOCK_N, BLOCK_K] tile held in registers, a parameter
    # weight's loaded before the PDL wait (``RESIDENT``; see RESIDENT_ELEMS); BLOCK_K must cover K / split_k
    resident: bool = False
    # the register product at block_m = 1 (resident or looping over K): x reduced as a vector against the 2-D tile
    # (ROW), without the 3-D products' layout shuffles; pick_config's choice at M = 1 (see RESIDENT_ROW_ENV)
    row: bool = False

    def __post_init__(self) -> None:
        if self.resident and self.use_dot:
            raise ValueError("LinearConfig: resident is a form of the register product (use_dot=False)")
        if self.row and (self.use_dot or self.block_m != 1):
            raise ValueError("LinearConfig: row is a form of the register product at block_m=1 (use_dot=False)")
        if self.swap and not self.use_dot:
            raise ValueError("LinearConfig: swap is a form of the tensor-core product (use_dot=True)")


def pick_config(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device, glu: bool = False) -> LinearConfig:
    """Tiles from sweeps of the Llama-3.2-1B and Llama-3-8B decode projections (``benches/gemv_sweep.py``,
    bf16, weights streamed from HBM, CUDA-graph replay).

    M <= 2, register FMA (H100 sweep, 2026-11-26; H200, ``gemv_sweep-nvidia-h200-2026-12-02-session8-m1``):
    four W rows per program and 1 KB of each row per K step (``BLOCK_K`` = 512 bf16), except for a large
    weight (N x K >= 24M values: the gate/up projections, the heads, the 8B qkv and down), where eight rows
    and 512 bytes per step stream faster (H200: 8B qkv 15.3-16.4 µs against 17.5, 1B gate/up 19.8 against
    21.1, 1B head 135.4 against 140.2). The H200 picks are within 2% of each shape's best but the 8B qkv's (7%).
    Splitting K pays only for a long K over few rows; elsewhere it cost up to 40% (the partials' traffic and
    the last program's serial sum).

    3 <= M <= 16, tensor cores (H200, ``gemv_sweep-tc-nvidia-h200-2026-12-02-session8``): 64 output columns
    per program when N or K reaches 8192 (the gate/up and down projections, the heads), 32 otherwise; K split
    until the programs fill 1.5 waves of SMs. Over the ten shapes this is 1.02x the time of each shape's best
    config at M = 8 and 16, where the earlier rule (32 columns, split to 4 waves) was 1.19x / 1.17x (it
    over-split: the 1B down projection 32.9 µs against 18.9 at M = 8).

    ``glu``: the tiles of ``linear_glu`` over its ``n`` = 2N merged gate/up rows (``BLOCK_N`` still counts weight
    rows here; the caller halves it into output columns). The register path keeps the narrow tile (four rows,
    1 KB of each a step) at every size: H200 (``gemv_sweep-nvidia-h200-2026-12-03-session11-glu``, shape
    gate_up_glu) 8B 62.3 µs against 66.5 for the wide tile (eight rows, 512 B), 1B 20.8 against 20.7.

    The swapped tensor-core product (``swap``; ``MEMBOUND_LINEAR_SWAP``, default on) replaces both where the
    H200 sweep of its grid (``gemv_sweep-tc-swap-nvidia-h200-2026-12-03``, 16 configs, M = 8 and 1, five
    shapes at each size) found it faster: at 3 <= M <= 16 on every shape (M = 8: 8B gate/up 61.0 µs against
    72.0 for the plain tl.dot tile, 8B down 32.4-33.1 against cuBLAS's 33.9, 1B down 11.9 against 14.6, 8B o
    11.8 against 13.5; 1B q/k/v equal), and at M <= 2 for 16-bit weights of N x K >= 24M values or K >= 3N
    (8B gate/up 58.7 against 64.6 for the register tile, head 244.8 against 268.1, q/k/v 15.9 against 17.5,
    down 31.4 against 33.5; 1B gate/up 19.0 against 22.4, head 127.2 against 142.9, down 11.7 against 12.6).
    The small square ones keep the register tile (1B q/k/v 5.6 against 6.5, o 4.5 against 5.1; 8B o 11.3
    against 11.5). Its split rule picks each of those shapes' best split.

    The resident register tiles (``resident``; ``MEMBOUND_LINEAR_RESIDENT``, default on) come first at M <= 2 for a
    K of at most 4096 and a weight of at most ``RESIDENT_MAX_WEIGHT`` values: each program holds its whole K range,
    ``RESIDENT_ELEMS`` weight values (4 warps, 64 registers a thread), loaded before the PDL wait. In a chain of
    decode GEMVs (``benches/experiments/resident_gemv.py``, H200) that cut a GEMV's fixed cost from ~3.0 to ~1.6 us;
    in the sweep and the decode step it paid only on the small 1.24B q/k/v and o (see RESIDENT_MAX_WEIGHT).

    At M = 1 both register forms run one-row (``row``: x a vector against the 2-D weight tile, no 3-D product's
    layout shuffles), which changes the picture: the resident tiles' one-row form is the fastest config on every
    K <= 4096 weight the H200 swept, large ones too (RESIDENT_ROW_ENV), and past K = 4096 the register loop's
    one-row form beats the swapped product (ROW_LOOP_ENV)."""
    row = m == 1 and _env_flag(RESIDENT_ROW_ENV, RESIDENT_ROW_DEFAULT)
    if (m <= RESIDENT_MAX_M and resident_product() and next_pow2(k) <= RESIDENT_MAX_K
            and (row or n * k <= RESIDENT_MAX_WEIGHT)):
        # resident register tiles: the program's whole K range in one tile, loaded before the PDL wait (one row:
        # any weight; two rows, whose 3-D products cost layout shuffles: the small ones)
        e = torch.empty((), dtype=dtype).element_size()
        block_k = max(16, next_pow2(k))
        block_n = max(2 if glu else 1, RESIDENT_ELEMS * 2 // e // block_k)
        return LinearConfig(next_pow2(m), block_n, block_k, 1, False, num_warps=4, num_stages=3, resident=True,
                            row=row)
    if row and next_pow2(k) > RESIDENT_MAX_K and _env_flag(ROW_LOOP_ENV, ROW_LOOP_DEFAULT):
        # one row over a K too long for one tile (the down projections): the register product's loop in its
        # one-row form, ROW_LOOP_TILE weight values a step, double-buffered in registers
        block_k = min(ROW_LOOP_TILE[1], max(16, next_pow2(k)))
        return LinearConfig(1, max(2 if glu else 1, ROW_LOOP_TILE[0]), block_k, 1, False, num_warps=4,
                            num_stages=3, row=True)
    if swap_product() and (m > 2 or (dtype != torch.float32 and (n * k >= 24 * 2**20 or k >= 3 * n))):
        # the swapped product: 64 weight rows a tile (one warpgroup MMA; linear_glu's programs two of them), 256 B
        # of each a step, 4 stages; K split until the programs fill two thirds of the SMs and no split spans more
        # than 4096 columns
        block_m, block_n, block_k = 16, 128 if glu else 64, min(128, max(16, next_pow2(k)))
        programs, split = cdiv(n, block_n), 1
        while (split < 16 and (programs * split < 2 * sm_count(device) // 3 or k > 4096 * split)
               and k >= 2 * block_k * 2 * split):
            split *= 2
        return LinearConfig(block_m, block_n, block_k, split, True, num_warps=4, num_stages=4, swap=True)
    if m <= 2:
        wide = n * k >= 24 * 2**20 and not glu
        block_m, block_n, use_dot = next_pow2(m), (8 if wide else 4), False
        block_k = (256 if wide else 512) // (2 if dtype == torch.float32 else 1)
    else:
        block_m, block_n, block_k, use_dot = 16, (64 if max(n, k) >= 8192 else 32), 128, True
    block_k = min(block_k, max(16, next_pow2(k)))
    programs = cdiv(n, block_n)
    split = 1
    # split K while SMs would idle and every split keeps enough K tiles: eight on the FMA path, two on the
    # tensor-core path (whose programs are fewer: 32 or 64 output columns each)
    min_tiles, target = (2, 3 * sm_count(device) // 2) if use_dot else (8, 4 * sm_count(device))
    while programs * split < target and k >= min_tiles * block_k * (2 * split) and split < 16:
        split *= 2
    return LinearConfig(block_m, block_n, block_k, split, use_dot, num_warps=4, num_stages=4 if use_dot else 3)


# the ops whose programs stream two W tiles (launch_config's paired tiles): linear_glu's gate and up rows,
# linear_rope's column pairs (j, j + D/2) of a head (and its norm form's)
PAIRED_OPS = {"linear_glu": "glu", "linear_rope": "rope", "rms_norm_linear_rope_sumsq": "rope",
              "rms_norm_linear_glu_sumsq": "glu"}


def launch_config(m: int, n: int, k: int, dtype: torch.dtype, device: torch.device, *, glu: bool = False,
                  rope: bool = False) -> LinearConfig:
    """The config a library call of ``m`` rows and ``n`` output columns over ``k`` runs with when none is given:
    :func:`pick_config`'s, except for the paired tiles (``glu``: linear_glu over its 2N merged rows; ``rope``:
    linear_rope's N columns as pairs), picked as a linear over all those rows (the rows a program streams, the
    programs and so the split) and ``block_n`` halved into the program's output columns (or pairs)."""
    if not (glu or rope):
        return pick_config(m, n, k, dtype, device)
    cfg = pick_config(m, 2 * n if glu else n, k, dtype, device, glu=True)
    return dataclasses.replace(cfg, block_n=max(cfg.block_n // 2, 64 if cfg.swap else 16 if cfg.use_dot else 1))


RESIDENT_ENV = "MEMBOUND_LINEAR_RESIDENT"
RESIDENT_DEFAULT = "1"
# the one-row form (LinearConfig.row) of the resident tiles at M = 1, for every weight with K <= 4096. H200
# (gemv_sweep-resident-nvidia-h200-2026-12-03-session14-row, M = 1) it was the fastest config on all eight shapes
# swept: 1.24B q/k/v 4.1 against 4.9 us (the 2-D resident tile), o 3.2 against 4.3, linear_glu 17.4 against 17.7
# (swap), head 119.0 against 121.2; 8B q/k/v 13.8 against 15.0, o 9.8 against 10.5 (register tile), linear_glu 55.1
# against 58.6, head 237.9 against 241.1; "0" turns it off
RESIDENT_ROW_ENV = "MEMBOUND_LINEAR_RESIDENT_ROW"
RESIDENT_ROW_DEFAULT = "1"
# the one-row form of the register loop at M = 1 past RESIDENT_MAX_K (the down projections; ROW_LOOP_TILE: rows x
# columns a step, double-buffered). H200 (gemv_sweep-resident-nvidia-h200-2026-12-03-session14-rowloop, M = 1): 8B
# down 29.5 us against 31.2 for the swapped product, 1.24B down 10.8 against 11.1 (its best, 10.3, a resident
# 2 x 8192 tile); in the decode step (decode_e2e-...-session14-rowloop, b1) 8B 3.943 ms against 4.108 without it,
# 1.24B 0.917 against 0.908 (noise level). "0": the swapped product runs them
ROW_LOOP_ENV = "MEMBOUND_LINEAR_ROW_LOOP"
ROW_LOOP_DEFAULT = "1"
ROW_LOOP_TILE = (4, 1024)
# the resident tiles' 16-bit weight elements a program (4 warps: 64 registers a thread of packed pairs; the H200
# experiment's 32K-element tiles were slower, spilling), and the longest K a program takes whole
RESIDENT_ELEMS = 16384
RESIDENT_MAX_K = 4096
RESIDENT_MAX_M = 2  # the rows it runs at: the x rows multiply its FMAs (H200 M = 8: 1.6-3x the swapped product)
# the largest weight (values) it takes. H200 sweep (gemv_sweep-resident-nvidia-h200-2026-12-03-session13, M = 1):
# it won only on the small 1.24B q/k/v (5.0 against 5.4 us for the register tile) and o (3.8-4.3 against 4.3);
# the swapped product streamed the large ones faster (1.24B linear_glu 17.5 against 21.2, head 119 against 128;
# 8B q/k/v 14.9 against 16.5, linear_glu 57.8 against 63.6), and the 8B o (16.8M values) ran the register tile
# faster (10.6 against 12.4). Taken everywhere K <= 4096, the decode step lost 6-7% (decode_e2e-...-session13-
# resident-all: 1.24B b1 0.980 against 0.919 ms, 8B b1 4.492 against 4.197)
RESIDENT_MAX_WEIGHT = 8 * 2**20


def _env_flag(name: str, default: str) -> bool:
    """An on/off setting (``1`` on) read from the environment at each config choice, so an A/B run can set it per
    compiled model."""
    return os.environ.get(name, default).strip() == "1"


def resident_product() -> bool:
    """Whether :func:`pick_config` may choose the resident register tiles (``LinearConfig.resident``, M <= 2):
    ``MEMBOUND_LINEAR_RESIDENT`` (``1`` / ``0``), read at each config choice."""
    return _env_flag(RESIDENT_ENV, RESIDENT_DEFAULT)


SWAP_ENV = "MEMBOUND_LINEAR_SWAP"
SWAP_DEFAULT = "1"


def swap_product() -> bool:
    """Whether :func:`pick_config` may choose the swapped product (``LinearConfig.swap``: at 3 <= M <= 16, and for
    the large or long-K 16-bit weights at M <= 2): read at each config choice, so an A/B run can set
    ``MEMBOUND_LINEAR_SWAP`` (``1`` / ``0``) per compiled model."""
    return _env_flag(SWAP_ENV, SWAP_DEFAULT)


# the swapped product's first W tile of a parameter weight loaded into registers before the PDL wait (kernel
# EARLY_SWAP; the register paths load theirs early already): "1" on, "0" off. Off: on the H200 it was slower
# everywhere it was timed (decode_e2e-nvidia-h200-2026-12-04-session15-swap-early, batch 8 decode step: 8B 4.422
# against 4.374 ms, 1.24B 1.070 against 0.868; gemv_sweep-tc-swap-...-session15-early{0,1}, M = 8, 8B: o 12.2 against
# 11.4 us, q/k/v 16.3 / 15.9, gate/up 60.7 / 59.8). The register tile costs the loop shared memory (sm_90: 100 KB
# a program against 80, 184 against 147 for linear_glu) and goes to the MMA through shared memory anyway
SWAP_EARLY_ENV = "MEMBOUND_LINEAR_SWAP_EARLY"
SWAP_EARLY_DEFAULT = "0"


def swap_early() -> bool:
    """Whether a swapped-product launch over a parameter weight loads its first W tile before the PDL wait:
    ``MEMBOUND_LINEAR_SWAP_EARLY`` (``1`` / ``0``), read at each launch (a CUDA graph keeps the variant it
    captured)."""
    return _env_flag(SWAP_EARLY_ENV, SWAP_EARLY_DEFAULT)


def prefers_cublas(m: int, n: int, k: int) -> bool:
    """The library runs a plain bf16/fp16 ``linear`` of ``3 <= m <= SMALL_M`` rows with cuBLAS rather than its
    tensor-core GEMV when the reduction is long against the columns (K >= 3N: the Llama down projections).
    Measured on the H200 (``gemv_sweep-tc-...-session8``), every tile config of ours lost there: the 8B down
    projection 54.7 µs at best against cuBLAS's 38.5 at M = 8 (71.9 against 39.1 at M = 16), the 1B one 18.9
    against 18.0; on the other eight shapes cuBLAS was 1.0-1.2x our pick. Only on CUDA (the interpreter runs the
    kernel), only without a fused prologue or epilogue (those have no cuBLAS form). Not with the swapped product
    (``MEMBOUND_LINEAR_SWAP=1``), which streams the long reduction as cuBLAS tiles it."""
    return 2 < m <= SMALL_M and k >= 3 * n and not swap_product()


def linear_bytes(m: int, n: int, k: int, dtype: torch.dtype, has_bias: bool = False) -> int:
    """Bytes the kernel must move (the cost-model hint): W once, x once, the output once, the bias."""
    e = torch.empty((), dtype=dtype).element_size()
    return e * (n * k + m * k + m * n + (n if has_bias else 0))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None,
           out: Optional[torch.Tensor] = None, *, config: Optional[LinearConfig] = None,
           static_weight: bool = False) -> torch.Tensor:
    """``x[..., K] @ weight[N, K].T (+ bias[N])`` as the IR op ``linear``; the GEMV kernel when M <= 16.

    ``M`` is the product of x's leading dims. ``config`` overrides the tile heuristic (benches, tests).
    ``static_weight=True`` promises that no kernel writes ``weight`` (a model parameter; generated
    launchers pass it for parameters), so with programmatic dependent launch its first tile is loaded
    before waiting for the previous kernel. Paths: M <= 16 -> ``_linear_small_m`` (one launch, split-K
    or not); M > 16 -> cuBLAS via ``F.linear``; the torch reference for what the kernel does not cover.
    """
    if x.dim() < 1:
        raise ValueError(f"linear: x must be [..., K], got shape {tuple(x.shape)}")
    return _small_m("linear", x, None, weight, bias, out, config, lambda: F.linear(x, weight, bias), static_weight)


def gated_linear(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor] = None,
                 *, act: str = "silu", config: Optional[LinearConfig] = None,
                 static_weight: bool = False) -> torch.Tensor:
    """The IR op ``gated_linear``: ``linear(silu(gate) * up, weight)`` with the gating done as x is loaded.

    The same kernel and paths as :func:`linear` (``silu(gate) * up`` is formed tile by tile in
    registers and never stored); for M > 16 the product is formed by torch and the linear is cuBLAS.
    """
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    if act != "silu":
        raise ValueError(f"gated_linear: act={act!r} has no kernel (silu does); known: {sorted(GATED_ACTIVATIONS)}")
    if gate.shape != up.shape:
        raise ValueError(f"gated_linear: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    if gate.dim() < 1:
        raise ValueError(f"gated_linear: gate must be [..., K], got shape {tuple(gate.shape)}")
    return _small_m("gated_linear", gate, up, weight, None, out, config,
                    lambda: F.linear(F.silu(gate) * up, weight), static_weight)


def linear_glu(x: torch.Tensor, weight: torch.Tensor, out: Optional[torch.Tensor] = None, *, act: str = "silu",
               config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``linear_glu``: ``silu(g) * u`` where ``g, u`` are the halves of ``linear(x, weight)``
    (``weight[2N, K]``: a gated MLP's merged gate/up projection), the gating in the GEMV's epilogue.

    Each program streams its columns' gate rows and up rows as two tiles with two accumulators, so the
    ``[M, 2N]`` projection is never stored and the down projection reads one ``[M, N]`` input. ``config``:
    its ``block_n`` counts output columns (each program reads twice as many weight rows); by default the
    tiles of the plain linear over ``2N`` rows with ``block_n`` halved. M > 16: torch (cuBLAS + pointwise).
    """
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    if act != "silu":
        raise ValueError(f"linear_glu: act={act!r} has no kernel (silu does); known: {sorted(GATED_ACTIVATIONS)}")
    if x.dim() < 1:
        raise ValueError(f"linear_glu: x must be [..., K], got shape {tuple(x.shape)}")

    def reference() -> torch.Tensor:
        g, u = F.linear(x, weight).chunk(2, dim=-1)
        return F.silu(g) * u

    return _small_m("linear_glu", x, None, weight, None, out, config, reference, static_weight, glu=True)


def linear_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                bias: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, *, head_dim: int,
                rope_cols: int, config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``linear_rope``: ``linear(x, weight, bias)`` whose first ``rope_cols`` columns (whole heads of
    ``head_dim``: a merged q/k/v projection's q and k) are rotated in the epilogue as HF's ``apply_rotary_pos_emb``
    rotates them (``t * cos + rotate_half(t) * sin`` per head), with ``cos``/``sin`` ``[..., head_dim]`` rows
    broadcastable to x's rows. Each program streams a head's column pairs ``(j, j + head_dim / 2)`` as two tiles
    (the weight is not permuted), so one launch replaces the projection and the rotation kernel after it.
    M > 16, or where the kernel cannot run: torch."""
    from membound.ir.ops.matmul import _linear_rope

    rope = _rope_operand("linear_rope", x, weight, cos, sin, head_dim, rope_cols)

    def reference() -> torch.Tensor:
        return _linear_rope(x, weight, cos, sin, bias, head_dim=head_dim, rope_cols=rope_cols)

    if rope[0].dtype != x.dtype or rope[1].dtype != x.dtype:
        return fallback("linear_rope", f"cos/sin dtype {rope[0].dtype} differs from x's {x.dtype}", reference(), out)
    return _small_m("linear_rope", x, None, weight, bias, out, config, reference, static_weight, rope=rope)


def _rope_operand(op: str, x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                  head_dim: int, rope_cols: int) -> tuple[torch.Tensor, torch.Tensor, int, int]:
    """The rotation's checks and its ``rope`` argument of :func:`_small_m`: cos and sin as one ``[head_dim]`` row
    per row of x (``[M, head_dim]``), the head dim and the rotated columns."""
    from membound.ir.ops.matmul import rope_rows

    if head_dim <= 0 or head_dim % 2 or rope_cols < 0 or rope_cols % head_dim:
        raise ValueError(f"{op}: rope_cols={rope_cols} must be whole heads of an even head_dim={head_dim}")
    if weight.dim() == 2 and rope_cols > weight.shape[0]:
        raise ValueError(f"{op}: rope_cols={rope_cols} exceeds the weight's {weight.shape[0]} rows")
    lead = tuple(x.shape[:-1])
    try:
        cs, sn = rope_rows(cos, lead, head_dim, "cos"), rope_rows(sin, lead, head_dim, "sin")
    except ValueError as e:  # rope_rows names linear_rope
        raise ValueError(f"{op}: {str(e).partition(': ')[2]}") from e
    k = x.shape[-1] if x.dim() else 0
    m = x.numel() // k if k else 0
    return cs.reshape(m, head_dim), sn.reshape(m, head_dim), head_dim, rope_cols


def rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                    bias: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, *, eps: float,
                    config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``rms_norm_linear``: ``linear(rms_norm(x, norm_weight, eps), weight, bias)``, the norm
    formed as x is loaded (``NORM``: each program first reduces the whole rows of x for their 1 / rms).

    The same kernel and paths as :func:`linear`; for M > 16 the norm is membound's row kernel and the
    linear cuBLAS.
    """
    from membound.backends.triton.kernels.norm import rms_norm

    if x.dim() < 1 or norm_weight.dim() != 1 or norm_weight.shape[0] != x.shape[-1]:
        raise ValueError(f"rms_norm_linear: needs x[..., K] and norm_weight[K], got x {tuple(x.shape)} and "
                         f"norm_weight {tuple(norm_weight.shape)}")
    return _small_m("rms_norm_linear", x, None, weight, bias, out, config,
                    lambda: F.linear(rms_norm(x, norm_weight, eps=eps), weight, bias), static_weight,
                    norm=(norm_weight, float(eps)))


def linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor, bias: Optional[torch.Tensor] = None,
               out: Optional[torch.Tensor] = None, *, config: Optional[LinearConfig] = None,
               static_weight: bool = False) -> torch.Tensor:
    """The IR op ``linear_add``: ``residual + linear(x, weight, bias)``, the add done as the output is
    stored (``RESIDUAL``; by the last program of a split-K launch). For M > 16: cuBLAS, then the add."""
    if x.dim() < 1:
        raise ValueError(f"linear_add: x must be [..., K], got shape {tuple(x.shape)}")
    return _small_m("linear_add", x, None, weight, bias, out, config,
                    lambda: residual + F.linear(x, weight, bias), static_weight, residual=residual)


def gated_linear_add(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                     out: Optional[torch.Tensor] = None, *, act: str = "silu", config: Optional[LinearConfig] = None,
                     static_weight: bool = False) -> torch.Tensor:
    """The IR op ``gated_linear_add``: ``residual + gated_linear(gate, up, weight)`` in one launch."""
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    if act != "silu":
        raise ValueError(f"gated_linear_add: act={act!r} has no kernel (silu does); known: "
                         f"{sorted(GATED_ACTIVATIONS)}")
    if gate.shape != up.shape or gate.dim() < 1:
        raise ValueError(f"gated_linear_add: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one "
                         f"shape [..., K]")
    return _small_m("gated_linear_add", gate, up, weight, None, out, config,
                    lambda: residual + F.linear(F.silu(gate) * up, weight), static_weight, residual=residual)


def _check_norm_sumsq(op: str, x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor) -> None:
    """The operands of a norm formed from its producer's partial sums of squares: x ``[..., K]``, the norm's
    weight ``[K]``, ``sumsq`` fp32 ``[..., ceil(K / SUMSQ_COLUMNS)]``."""
    k = x.shape[-1] if x.dim() else 0
    want = tuple(x.shape[:-1]) + (cdiv(k, SUMSQ_COLUMNS),)
    if x.dim() < 1 or norm_weight.dim() != 1 or norm_weight.shape[0] != k:
        raise ValueError(f"{op}: needs x[..., K] and norm_weight[K], got x {tuple(x.shape)} and norm_weight "
                         f"{tuple(norm_weight.shape)}")
    if tuple(sumsq.shape) != want or sumsq.dtype != torch.float32:
        raise ValueError(f"{op}: sumsq must be fp32 {want} (x's partial sums of squares), got {sumsq.dtype} "
                         f"{tuple(sumsq.shape)}")


def rms_norm_linear_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                          bias: Optional[torch.Tensor] = None, out: Optional[torch.Tensor] = None, *, eps: float,
                          config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``rms_norm_linear_sumsq``: ``linear(rms_norm(x, norm_weight, eps), weight, bias)`` with x's
    mean square from ``sumsq``, the fp32 partial sums of squares its producer wrote (``[..., ceil(K /
    SUMSQ_COLUMNS)]``): each program sums them (``SUMSQ_IN``) instead of re-reducing x, then norms x as it
    loads it. For M > 16: the op's reference (torch), then cuBLAS."""
    from membound.ir.ops.matmul import _rms_norm_linear_sumsq

    _check_norm_sumsq("rms_norm_linear_sumsq", x, sumsq, norm_weight)
    return _small_m("rms_norm_linear_sumsq", x, None, weight, bias, out, config,
                    lambda: _rms_norm_linear_sumsq(x, sumsq, norm_weight, weight, bias, eps=eps), static_weight,
                    norm=(norm_weight, float(eps)), sumsq=(sumsq, "in"))


def rms_norm_linear_rope_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                               cos: torch.Tensor, sin: torch.Tensor, bias: Optional[torch.Tensor] = None,
                               out: Optional[torch.Tensor] = None, *, eps: float, head_dim: int, rope_cols: int,
                               config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``rms_norm_linear_rope_sumsq``: :func:`rms_norm_linear_sumsq` whose first ``rope_cols`` output
    columns (whole heads of ``head_dim``: a merged q/k/v projection's q and k) are rotated as :func:`linear_rope`
    rotates them. One launch: each program sums x's partials for its 1 / rms and norms x as it loads it (``NORM``,
    ``SUMSQ_IN``), streams a head's column pairs ``(j, j + head_dim / 2)`` as two tiles and stores them rotated
    (``ROPE``). M > 16, or where the kernel cannot run: the op's reference (torch)."""
    from membound.ir.ops.matmul import _rms_norm_linear_rope_sumsq

    op = "rms_norm_linear_rope_sumsq"
    _check_norm_sumsq(op, x, sumsq, norm_weight)
    rope = _rope_operand(op, x, weight, cos, sin, head_dim, rope_cols)

    def reference() -> torch.Tensor:
        return _rms_norm_linear_rope_sumsq(x, sumsq, norm_weight, weight, cos, sin, bias, eps=eps, head_dim=head_dim,
                                           rope_cols=rope_cols)

    if rope[0].dtype != x.dtype or rope[1].dtype != x.dtype:
        return fallback(op, f"cos/sin dtype {rope[0].dtype} differs from x's {x.dtype}", reference(), out)
    return _small_m(op, x, None, weight, bias, out, config, reference, static_weight, norm=(norm_weight, float(eps)),
                    sumsq=(sumsq, "in"), rope=rope)


def linear_add_sumsq(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                     bias: Optional[torch.Tensor] = None, *, config: Optional[LinearConfig] = None,
                     static_weight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The IR op ``linear_add_sumsq``: :func:`linear_add`, and the fp32 partial sums of squares of its output
    per ``SUMSQ_COLUMNS`` columns (``SUMSQ_OUT``: each program writes those of the tile it stores)."""
    if x.dim() < 1:
        raise ValueError(f"linear_add_sumsq: x must be [..., K], got shape {tuple(x.shape)}")
    ss = _sumsq_buffer(x, weight)
    y = _small_m("linear_add_sumsq", x, None, weight, bias, None, config,
                 lambda: residual + F.linear(x, weight, bias), static_weight, residual=residual, sumsq=(ss, "out"))
    return y, ss


def gated_linear_add_sumsq(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                           *, act: str = "silu", config: Optional[LinearConfig] = None,
                           static_weight: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The IR op ``gated_linear_add_sumsq``: :func:`gated_linear_add` and its output's partial sums of squares."""
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    if act != "silu":
        raise ValueError(f"gated_linear_add_sumsq: act={act!r} has no kernel (silu does); known: "
                         f"{sorted(GATED_ACTIVATIONS)}")
    if gate.shape != up.shape or gate.dim() < 1:
        raise ValueError(f"gated_linear_add_sumsq: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have "
                         f"one shape [..., K]")
    ss = _sumsq_buffer(gate, weight)
    y = _small_m("gated_linear_add_sumsq", gate, up, weight, None, None, config,
                 lambda: residual + F.linear(F.silu(gate) * up, weight), static_weight, residual=residual,
                 sumsq=(ss, "out"))
    return y, ss


def _sumsq_buffer(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """The partials of an ``[..., N]`` output: written whole by the kernel (or the reference path)."""
    n = weight.shape[0] if weight.dim() == 2 else 0
    return torch.empty(tuple(x.shape[:-1]) + (cdiv(n, SUMSQ_COLUMNS),), dtype=torch.float32, device=x.device)


def rms_norm_linear_glu_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                              out: Optional[torch.Tensor] = None, *, eps: float, act: str = "silu",
                              config: Optional[LinearConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``rms_norm_linear_glu_sumsq``: :func:`linear_glu` over ``rms_norm(x, norm_weight, eps)``, x's mean
    square from ``sumsq`` (the partials its producer wrote). One launch: each program sums the partials for its
    1 / rms and norms x as it loads it (``NORM``, ``SUMSQ_IN``), streams its columns' gate and up rows as two tiles
    and stores ``silu(gate) * up`` (``GLU``). M > 16, or where the kernel cannot run: the op's reference."""
    from membound.ir.ops.matmul import GATED_ACTIVATIONS, _rms_norm_linear_glu_sumsq

    op = "rms_norm_linear_glu_sumsq"
    if act != "silu":
        raise ValueError(f"{op}: act={act!r} has no kernel (silu does); known: {sorted(GATED_ACTIVATIONS)}")
    _check_norm_sumsq(op, x, sumsq, norm_weight)
    return _small_m(op, x, None, weight, None, out, config,
                    lambda: _rms_norm_linear_glu_sumsq(x, sumsq, norm_weight, weight, eps=eps, act=act),
                    static_weight, norm=(norm_weight, float(eps)), sumsq=(sumsq, "in"), glu=True)


def _small_m(op: str, x: torch.Tensor, up: Optional[torch.Tensor], weight: torch.Tensor, bias: Optional[torch.Tensor],
             out: Optional[torch.Tensor], config: Optional[LinearConfig], reference: Callable[[], torch.Tensor],
             static_weight: bool, *, norm: Optional[tuple[torch.Tensor, float]] = None,
             residual: Optional[torch.Tensor] = None,
             sumsq: Optional[tuple[torch.Tensor, str]] = None, glu: bool = False,
             rope: Optional[tuple[torch.Tensor, torch.Tensor, int, int]] = None) -> torch.Tensor:
    """Every linear of the library: ``up`` given: x is the gate; ``norm`` (weight, eps): x is normed first;
    ``residual``: added to the output; ``sumsq`` (partials, "in"): the norm's mean square from the
    partials, (partials, "out"): the output's partials written there; ``glu``: weight is ``[2N, K]`` (gate
    rows, then up rows) and the output ``silu(gate) * up`` ``[.., N]``; ``rope`` (cos ``[M, D]``, sin, D, rotated
    columns): the output's first columns rotated per head (``linear_rope``). Checks, path choice, launch."""
    if weight.dim() != 2:
        raise ValueError(f"{op}: weight must be [N, K], got shape {tuple(weight.shape)}")
    n, k = weight.shape
    if glu:
        if n % 2:
            raise ValueError(f"{op}: weight must be [2N, K] (gate rows, then up rows), got {n} rows")
        n //= 2
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x {tuple(x.shape)} and weight {tuple(weight.shape)} disagree on K={k}")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{op}: bias must be [N] = [{n}], got {tuple(bias.shape)}")
    if residual is not None and tuple(residual.shape) != tuple(x.shape[:-1]) + (n,):
        raise ValueError(f"{op}: residual must have the output's shape {tuple(x.shape[:-1]) + (n,)}, got "
                         f"{tuple(residual.shape)}")
    extras = ([norm[0]] if norm is not None else []) + ([residual] if residual is not None else [])
    extras += [rope[0], rope[1]] if rope is not None else []
    operands = [x] + ([up] if up is not None else []) + [weight] + ([bias] if bias is not None else []) + extras
    if any(t.dtype != x.dtype for t in operands):
        raise TypeError(f"{op}: inputs must share a dtype, got {[t.dtype for t in operands]}")
    lead = tuple(x.shape[:-1])
    m = x.numel() // k if k else 0
    reason = unsupported_device(*operands, *([sumsq[0]] if sumsq is not None else [])) or unsupported_dtype(op, x)
    if reason is None and weight.stride(1) != 1:
        reason = f"weight strides {weight.stride()} (rows must be contiguous)"
    plain = op == "linear" and up is None and norm is None and residual is None and sumsq is None and not glu
    if reason is None and config is None and plain and x.is_cuda and 0 < m <= SMALL_M and prefers_cublas(m, n, k):
        note(op, "cublas")
        return _cublas_into(x, weight, bias, out, m, n, k)
    if reason is None and config is None and m > SMALL_M:
        note(op, "cublas")
        result = reference()
        result = result if out is None else _copy_out(out, result)
        return _reference_sumsq(result, sumsq)
    if reason is not None or m == 0 or k == 0:
        return _reference_sumsq(fallback(op, reason or "empty product", reference(), out), sumsq)

    y = check_out(op, out, lead + (n,), x.dtype, x.device)
    x2 = _rows(x, m, k)
    u2 = _rows(up, m, k) if up is not None else None
    r2 = _rows(residual, m, n) if residual is not None else None
    if config is not None:
        cfg = config
    else:
        cfg = launch_config(m, n, k, x.dtype, x.device, glu=glu, rope=rope is not None)
    if m > cfg.block_m:
        raise ValueError(f"{op}: config block_m={cfg.block_m} is smaller than M={m}")
    k_per_split = cdiv(cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = cdiv(k, k_per_split)  # no empty splits
    if cfg.resident and k_per_split > cfg.block_k:
        raise ValueError(f"{op}: a resident config holds one K tile a program; block_k={cfg.block_k} does not cover "
                         f"K={k} in split_k={cfg.split_k} parts (K / split_k = {cdiv(k, cfg.split_k)})")
    n_blocks = cdiv(n, cfg.block_n)
    rope_args: dict = {}
    if rope is not None:
        cs, sn, head_dim, rope_cols = rope
        rope_programs = cdiv(rope_cols // 2, cfg.block_n)
        n_blocks = rope_programs + cdiv(n - rope_cols, 2 * cfg.block_n)
        rope_args = dict(ROPE=True, HALF=head_dim // 2, cs_ptr=cs, sn_ptr=sn, stride_cm=cs.stride(0),
                         ROPE_N=rope_cols, ROPE_PROGRAMS=rope_programs)
        if cs.stride(1) != 1 or sn.stride(1) != 1 or sn.stride(0) != cs.stride(0):
            raise ValueError("linear_rope: cos and sin rows must be contiguous with one row stride")
    part = locks = gbuf = y  # placeholders the kernel never touches without a split / pre-gating
    pre_gate = (u2 is not None or norm is not None) and cfg.use_dot and cfg.pre_gate
    if pre_gate:
        gbuf = torch.empty((m, k), dtype=x.dtype, device=x.device)
    if split > 1:
        part = torch.empty(((2 if glu else 1) * split, m, n), dtype=torch.float32, device=x.device)
        locks = split_counters(x.device, n_blocks)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    b = bias if bias is not None else weight  # a valid pointer the kernel never reads
    ss2 = _rows(sumsq[0], m, sumsq[0].shape[-1]) if sumsq is not None else None
    if sumsq is not None and sumsq[1] == "out" and cfg.block_n % SUMSQ_COLUMNS:  # (its buffer: contiguous)
        raise ValueError(f"{op}: config block_n={cfg.block_n} must be a multiple of {SUMSQ_COLUMNS} (whole blocks "
                         f"of the partial sums per program)")
    ns = ss2.shape[1] if ss2 is not None else 0
    launchable(_linear_small_m, x.device)[(n_blocks, split)](
        x2, u2 if u2 is not None else x2, weight, weight[n:] if glu else weight, b, y, part, locks, gbuf,
        norm[0] if norm is not None else weight, r2 if r2 is not None else y, ss2 if ss2 is not None else part,
        m, n, k, k_per_split, ns, x2.stride(0), u2.stride(0) if u2 is not None else 0, weight.stride(0), m * n,
        r2.stride(0) if r2 is not None else 0, ss2.stride(0) if ss2 is not None else 0,
        norm[1] if norm is not None else 0.0,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, HAS_BIAS=bias is not None,
        USE_DOT=cfg.use_dot, INPUT_PRECISION=precision, PREFETCH=cfg.prefetch and not cfg.use_dot,
        GATED=u2 is not None, EARLY_W=static_weight, PRE_GATE=pre_gate, NORM=norm is not None,
        RESIDUAL=r2 is not None, SUMSQ_IN=sumsq is not None and sumsq[1] == "in",
        SUMSQ_OUT=sumsq is not None and sumsq[1] == "out", SUMSQ_COLUMNS=SUMSQ_COLUMNS,
        SS_CHUNK=min(next_pow2(max(ns, 1)), max(16, 4096 // cfg.block_m)), num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, GLU=glu, GATE_ROWS=min(next_pow2(m), cfg.block_m),
        **pdl_options(x.device),
        **(l2_prefetch_bytes(weight, static_weight, n * split, k_per_split) if rope is None
           else {"L2_PREFETCH": False, "pf_bytes": 0}), **rope_args, SWAP=cfg.swap,
        RESIDENT=cfg.resident, ROW=cfg.row, EARLY_SWAP=cfg.swap and static_weight and swap_early())
    note(op, "kernel")
    return y


def _reference_sumsq(y: torch.Tensor, sumsq: Optional[tuple[torch.Tensor, str]]) -> torch.Tensor:
    """On a path without the kernel, a producer's partials come from its output (the op's reference)."""
    if sumsq is not None and sumsq[1] == "out":
        from membound.ir.ops.matmul import sumsq_partials

        sumsq[0].copy_(sumsq_partials(y))
    return y


def _rows(t: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """``t`` as ``[M, K]`` rows with unit stride along K (a view when it can be: a split of a wider
    output keeps its row stride; otherwise a copy of at most 16 rows)."""
    t2 = t.reshape(m, k)
    return t2 if t2.stride(1) == 1 or k == 1 else t2.contiguous()


def _cublas_into(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], out: Optional[torch.Tensor],
                 m: int, n: int, k: int) -> torch.Tensor:
    """``x @ weight.T (+ bias)`` by cuBLAS, written straight into ``out`` (a decode step's planned buffer: no
    copy kernel after the matmul)."""
    y = check_out("linear", out, tuple(x.shape[:-1]) + (n,), x.dtype, x.device)  # contiguous
    if bias is None:
        torch.mm(x.reshape(m, k), weight.t(), out=y.view(m, n))
    else:
        torch.addmm(bias, x.reshape(m, k), weight.t(), out=y.view(m, n))
    return y


def _copy_out(out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    check_out("linear", out, tuple(result.shape), result.dtype, result.device)
    return out.copy_(result)
