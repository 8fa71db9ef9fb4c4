"""Weight-only quantized matmuls (W8A16, W4A16, W8(fp8)A16): the IR ops ``quant_linear`` and ``quant_gated_linear``.

``y[M, N] = x[M, K] @ dequantize(qweight, scales)[N, K]^T (+ bias)`` where the weight is stored packed in
one of the formats of ``membound/ir/ops/quant.py`` (int8 per channel, int4 group-wise with (scale,
offset) per group, fp8 e4m3 per channel) and is dequantized in registers, never in memory. At decode the
time is the time to stream the packed weight, so int8 halves it and int4 quarters it against bf16.

One kernel, ``_quant_matmul``, built like ``linear.py``'s ``_linear_small_m``: each program owns
``BLOCK_N`` weight rows (output columns) and walks K in tiles, loading each packed byte once; the few x
rows are re-read per program from L2. Two inner products, chosen by ``USE_DOT``: register FMAs (the GEMV,
no tensor cores: M <= 2 where :func:`tensor_cores_at_gemv` says it wins, today int4 below lm-head widths)
or ``tl.dot`` on a tile dequantized to x's dtype (M = 3..32 with M padded to 16, M <= 2 otherwise, and the
fused prefill kernel).

Instructions per byte are the budget: at 4.8 TB/s an H200 SM must retire ~37 int4 nibbles a clock
from 128 ALU lanes, and its int -> float conversion runs at 16 a clock. So codes never go through that
conversion (``MAGIC``): a code shifted into the top mantissa bits of 1.0f *is* a float (int4:
``1 + q/16``; int8 with its sign bit flipped: ``1 + (q + 128)/256``), one shift and one ``lop3`` each,
and the affine part is folded into sums the kernel needs anyway:

- int4, a tile inside one group (``BLOCK_K`` divides ``group_size``): ``sum_k x*w = 16s * sum_k
  x*(1 + q/16) + (o - 16s) * sum_k x``: one FMA a nibble, the group's scale and offset once per row and
  tile (GEMV: per x row, summed along K mostly inside a thread; tensor cores: ``1 + q/16`` is exact in
  bf16/fp16, so ``tl.dot`` takes it as is and the scale goes on the tile's product).
- int8: ``sum_k x*q = 256 sum_k x*f - 384 sum_k x``, the per-channel scale once, in the epilogue.
- fp8: the native ``cvt`` (see below); the per-channel scale once, in the epilogue.

Codes are read as int32 words (``WORDS``: eight int4 or four int8 codes, 16 bytes a thread per tile)
when rows hold whole words (K a multiple of 8 / 4); the planes of a word are interleaved back into k
order by ``tl.join`` in registers. Otherwise (odd K) int4 is read as bytes, each multiplying two
strided views of x (even and odd columns, split in registers): same formulas, more instructions. A bytes
tile wider than a group (a ``config`` that asks for it, or group 16 on the tensor cores) gathers the
group's scale per element: correct, slower. int4 words never gather: a tile of several groups is loaded
as ``[BLOCK_N, GPT, GW]`` (``_int4_groups``: GPT chunks of GW words, each inside one group) with a
``[BLOCK_N, GPT]`` scale/offset tile, dequantized to ``q * s + o`` by one FMA a nibble after the shift and
``lop3`` (``_int4_dequant``); the GEMV accumulates ``x * w`` elementwise over its whole K range and
reduces once at the end (no reduction, no barrier per step), the tensor-core path rounds the tile to x's
dtype (as the reference rounds) and issues one ``tl.dot``. The packed formats are ``ir/ops/quant.py``'s,
unchanged.

int4 with fp16/bf16 x at M <= 32 (decode) takes the ``PAIRS`` variant of the tensor-core path by default
(:func:`pairs_path`): bytes, not words, dequantized two codes per 32-bit instruction straight into x's
dtype by ``int4_pairs.py`` (``prmt``/``lop3`` into the mantissa of 128 (bf16) or 1024 (fp16), then packed
``fma.rn.bf16x2``/``f16x2`` for the bias and the group's scale and offset: 2 instructions a code, against
about 5 for ``_int4_dequant`` plus the rounding to 16 bits), 128 weight rows a program, M padded to 16 / 32,
the gated input formed first (``PRE_GATE``) at every M. In the sm_90 SASS of the 8B shapes its loop spends
3.3 instructions a code (126-128 registers) where the FMA GEMV spent 5.8 (202) and the old tensor-core
tile 7.1 (``benches/experiments/int4_sass.py``). ``QuantConfig(pairs=False)`` / ``INT4_PAIRS = False`` keep
the previous paths for A/B runs (``benches/experiments/int4_pairs_paths.py``). The stored format is
unchanged.

fp8 codes are converted natively (``cvt`` e4m3 -> f16/bf16) on sm_89+ and under the interpreter; older
cards decode the bits (``FP8_BITS``): e4m3's sign, exponent and mantissa shifted into an fp16 are the
value / 256 (exponent biases 7 and 15), subnormals included, and the 256 joins the channel scale.

``quant_gated_linear`` forms ``x = silu(gate) * up`` (rounded as eager rounds it) from the two inputs. The
GEMV does it once per program, spread over its threads, into a scratch ``[M, K]`` it then reads as x
(``PRE_GATE``; programs of one K range write the same values): formed in the loop, every thread would
recompute the x columns of its tile, two MUFU instructions each (16 a clock per SM) for a few bytes of
weight. The tensor-core path forms each x tile once per program (M x K silus per program: at M = 16 and
32 weight rows a program, about one MUFU instruction per nibble, which may bound int4 there).

Split-K, PDL and ``static_weight`` work as in ``linear.py``: split programs store fp32 partials and the
last to arrive reduces them in split order (one launch, deterministic); under programmatic dependent
launch the first packed tile (and its scales) of a parameter is loaded before the wait.

M > 32 (prefill) is compute-bound as M grows: :func:`prefill_path` compares two roofline times on the
device's spec (``membound.cost``: bandwidth ``B``, tensor-core rate ``F`` at x's precision):

    fused  = max(m_blocks * P / B, 2MNK / (FUSED_MMA_SHARE * F))      (P: packed weight + scales; the
                                                                       fused kernel re-reads it per
                                                                       64-row block of M)
    cublas = P / (DEQUANT_EFFICIENCY * B) + D / B                     (D: the weight dequantized to x's
             + max((D + x + y) / B, 2MNK / F)                          dtype: written, then read)

and takes the smaller. Both rates are measured, per scheme (``benches/quant_matmul.py`` times both paths
at M = 64): the fused kernel issues the dequantization (two to four instructions per weight element, per
M block) from the same warps that feed the tensor cores, with tiles sized for streaming (64 rows), and
reaches about a quarter of cuBLAS's tensor-core rate (``FUSED_MMA_SHARE``); the dequantization kernel
(``quant_dequant.py``) reads int8 at 41% of the bandwidth and int4 at 4% (``DEQUANT_EFFICIENCY``). Both come
from the step priors (:func:`measured_rates`), which the step prediction prices these paths with too.

Falls back to the torch reference (dequantize, then ``F.linear``) for: activations other than
fp16/bf16/fp32, a qweight whose rows are not contiguous, CPU tensors without ``TRITON_INTERPRET=1``,
empty products.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
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
from membound.backends.triton.kernels.int4_pairs import int4_codes, int4_pairs, pairs_ptx
from membound.ir.ops.quant import QWEIGHT_DTYPE, SCHEMES, check_scheme, dequantize, num_groups

SMALL_M = 32  # decode: the GEMV (M <= 2) and the skinny tensor-core kernel (M <= 32); beyond, prefill_path
GEMV_M = 2
PREFILL_BLOCK_M = 64
SCHEME_CODE = {"int8": 0, "int4": 1, "fp8": 2}


@triton.jit
def _gate(x, u_ptrs, mask, GATED: tl.constexpr):
    """``x``, or for the gated op ``silu(x) * up`` rounded as eager rounds it (each product to the dtype)."""
    if GATED:
        u = tl.load(u_ptrs, mask=mask, other=0.0)
        xf = x.to(tl.float32)
        g = (xf / (1.0 + tl.exp(-xf))).to(x.dtype)
        x = (g.to(tl.float32) * u.to(tl.float32)).to(u.dtype)
    return x


@triton.jit
def _x_tile(x_ptr, u_ptr, ms, m_ok, ks, k_end, stride_xm, stride_um, GATED: tl.constexpr):
    """x rows ``ms`` at columns ``ks`` (zeros from ``k_end`` on); gated: ``silu(gate) * up``, never stored."""
    mask = m_ok[:, None] & (ks < k_end)[None, :]
    x = tl.load(x_ptr + ms[:, None] * stride_xm + ks[None, :], mask=mask, other=0.0)
    return _gate(x, u_ptr + ms[:, None] * stride_um + ks[None, :], mask, GATED)


@triton.jit
def _x_chunks(x_ptr, u_ptr, ms, m_ok, ks3, k_end, stride_xm, stride_um, GATED: tl.constexpr):
    """x rows ``ms`` at columns ``ks3`` ``[GPT, L]`` (a tile's chunks) as ``[BLOCK_M, GPT, L]``, zeros from
    ``k_end`` on (gated: ``silu(gate) * up``)."""
    mask = m_ok[:, None, None] & (ks3 < k_end)[None, :, :]
    x = tl.load(x_ptr + ms[:, None, None] * stride_xm + ks3[None, :, :], mask=mask, other=0.0)
    return _gate(x, u_ptr + ms[:, None, None] * stride_um + ks3[None, :, :], mask, GATED)


@triton.jit
def _x_row(x_ptr, u_ptr, m, M, ks, k_end, stride_xm, stride_um, GATED: tl.constexpr):
    """One x row as a vector (``_x_tile`` for the GEMV's per-row sums)."""
    mask = (ks < k_end) & (ks * 0 + m < M)  # (a vector compare: a scalar mask confuses the interpreter)
    x = tl.load(x_ptr + m * stride_xm + ks, mask=mask, other=0.0)
    return _gate(x, u_ptr + m * stride_um + ks, mask, GATED)


@triton.jit
def _x_rows(x_ptr, u_ptr, ms, m_ok, row0, M, ks, k_end, stride_xm, stride_um, GATED: tl.constexpr,
            X_ROWS: tl.constexpr):
    """``_x_tile`` for the tensor cores; ``X_ROWS`` > 0 (a gated op with M <= X_ROWS rows in a tile padded to
    16): only the real rows are loaded and gated, as vectors, then placed in the tile (``silu(gate) * up``
    formed for 16 rows per program would cost 16x the MUFU work: 104 us vs 24 at 4096x14336 int8, H200)."""
    if X_ROWS == 0:
        return _x_tile(x_ptr, u_ptr, ms, m_ok, ks, k_end, stride_xm, stride_um, GATED)
    r0 = _x_row(x_ptr, u_ptr, row0, M, ks, k_end, stride_xm, stride_um, GATED)
    x = tl.where((ms == row0)[:, None], r0[None, :], tl.zeros((ms.shape[0], ks.shape[0]), dtype=r0.dtype))
    if X_ROWS > 1:
        r1 = _x_row(x_ptr, u_ptr, row0 + 1, M, ks, k_end, stride_xm, stride_um, GATED)
        x = tl.where((ms == row0 + 1)[:, None], r1[None, :], x)
    return x


@triton.jit
def _q_tile(q_rows, s_rows, row_ok, c0, c_end, G, SCHEME: tl.constexpr, GROUP: tl.constexpr,
            BLOCK_KW: tl.constexpr, UNIT: tl.constexpr, TRANS: tl.constexpr):
    """The packed tile of this program's rows at weight columns ``[c0, c0 + BLOCK_KW)`` (``UNIT`` elements
    each: int4 bytes 2, int4 words 8): ``(raw, s, o)``.

    ``raw`` is ``[BLOCK_N, BLOCK_KW]`` (``TRANS``: ``[BLOCK_KW, BLOCK_N]``) of codes; zeros from ``c_end`` on.
    For int4 ``s``, ``o`` are the group scale and offset in fp32, shaped to broadcast against ``raw``; for
    int8/fp8 they are unused zeros (the channel scale is applied in the epilogue).
    """
    cols = c0 + tl.arange(0, BLOCK_KW)
    col_ok = cols < c_end
    if TRANS:
        raw = tl.load(q_rows[None, :] + cols[:, None], mask=row_ok[None, :] & col_ok[:, None], other=0)
    else:
        raw = tl.load(q_rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0)
    s = 0.0
    o = 0.0
    if SCHEME == 1:
        GROUP_COLS: tl.constexpr = GROUP // UNIT
        if BLOCK_KW <= GROUP_COLS:
            # the whole tile is in one group: one (scale, offset) per row
            g_ptr = s_rows + (c0 // GROUP_COLS) * 2
            s = tl.load(g_ptr, mask=row_ok, other=0.0).to(tl.float32)
            o = tl.load(g_ptr + 1, mask=row_ok, other=0.0).to(tl.float32)
            if TRANS:
                s = s[None, :]
                o = o[None, :]
            else:
                s = s[:, None]
                o = o[:, None]
        else:
            # the tile spans several groups: gather each element's (scale, offset) (L1 hits, but per element)
            grp = cols // GROUP_COLS
            g_ok = grp < G
            if TRANS:
                g_ptr = s_rows[None, :] + grp[:, None] * 2
                g_mask = row_ok[None, :] & g_ok[:, None]
            else:
                g_ptr = s_rows[:, None] + grp[None, :] * 2
                g_mask = row_ok[:, None] & g_ok[None, :]
            s = tl.load(g_ptr, mask=g_mask, other=0.0).to(tl.float32)
            o = tl.load(g_ptr + 1, mask=g_mask, other=0.0).to(tl.float32)
    return raw, s, o


@triton.jit
def _pairs_tile(q_rows, s_rows, row_ok, c0, c_end, G, GROUP: tl.constexpr, BLOCK_KW: tl.constexpr):
    """int4 bytes of this program's rows at byte columns ``[c0, c0 + BLOCK_KW)`` as W^T ``[BLOCK_KW, BLOCK_N]``
    (zeros from ``c_end`` on), and each byte's group scale and offset in the scales' dtype, broadcast
    against it: ``[1, BLOCK_N]`` when the tile is inside one group, else the ``[GPT, BLOCK_N]`` groups of the
    tile repeated along K in registers (``GPT`` groups of ``GB`` bytes; no per-element gather)."""
    cols = c0 + tl.arange(0, BLOCK_KW)
    raw = tl.load(q_rows[None, :] + cols[:, None], mask=row_ok[None, :] & (cols < c_end)[:, None], other=0)
    GB: tl.constexpr = GROUP // 2
    if BLOCK_KW <= GB:
        g_ptr = s_rows + (c0 // GB) * 2
        s = tl.load(g_ptr, mask=row_ok, other=0.0)[None, :]
        o = tl.load(g_ptr + 1, mask=row_ok, other=0.0)[None, :]
    else:
        GPT: tl.constexpr = BLOCK_KW // GB
        grp = c0 // GB + tl.arange(0, GPT)
        g_ptr = s_rows[None, :] + grp[:, None] * 2
        g_mask = row_ok[None, :] & (grp < G)[:, None]
        s2 = tl.load(g_ptr, mask=g_mask, other=0.0)
        o2 = tl.load(g_ptr + 1, mask=g_mask, other=0.0)
        s = tl.reshape(tl.broadcast_to(s2[:, None, :], (GPT, GB, s2.shape[1])), (BLOCK_KW, s2.shape[1]))
        o = tl.reshape(tl.broadcast_to(o2[:, None, :], (GPT, GB, o2.shape[1])), (BLOCK_KW, o2.shape[1]))
    return raw, s, o


@triton.jit
def _units(raw):
    """int4 bytes -> ``(1 + lo/16, 1 + hi/16)`` in fp32, without an int -> float conversion (sm_90 converts
    16 values a clock per SM, under half of what int4 at HBM speed needs): the nibble shifted into the top
    four mantissa bits of 1.0f is that float exactly (a shift and one ``lop3`` each)."""
    b = raw.to(tl.uint32)
    f_lo = (((b << 19) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f_hi = (((b << 15) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    return f_lo, f_hi


@triton.jit
def _int4_groups(q_rows, s_rows, row_ok, c0, c_end, G, GROUP_COLS: tl.constexpr, GPT: tl.constexpr,
                 GW: tl.constexpr):
    """int4 words of this program's rows at word columns ``[c0, c0 + GPT * GW)`` as ``[BLOCK_N, GPT, GW]``
    (``GPT`` chunks of ``GW`` words, each inside one group: a tile spanning several groups is split along
    a new axis, never gathered per element), and the chunks' scale and offset ``[BLOCK_N, GPT]`` in fp32."""
    cols = c0 + tl.arange(0, GPT)[:, None] * GW + tl.arange(0, GW)[None, :]
    raw = tl.load(q_rows[:, None, None] + cols[None, :, :], mask=row_ok[:, None, None] & (cols < c_end)[None, :, :],
                  other=0)
    grp = (c0 + tl.arange(0, GPT) * GW) // GROUP_COLS
    g_ptr = s_rows[:, None] + grp[None, :] * 2
    g_mask = row_ok[:, None] & (grp < G)[None, :]
    s = tl.load(g_ptr, mask=g_mask, other=0.0).to(tl.float32)
    o = tl.load(g_ptr + 1, mask=g_mask, other=0.0).to(tl.float32)
    return raw, s, o


@triton.jit
def _int4_dequant(raw, s, o):
    """``[R, C, W]`` int4 words (eight nibbles, ``k = 8j + i`` in bits ``4i..4i+3``) and ``[R, C]`` scale/offset
    -> the weight ``q * s + o`` as fp32 ``[R, C, 8W]`` in k order, without int -> float conversions (sm_90
    converts 16 values a clock per SM, under half of what int4 at HBM speed needs): each nibble shifted
    into the top of the mantissa of 1.0f is ``1 + q/16`` exactly (a shift and one ``lop3``), and
    ``(1 + q/16) * 16s + (o - 16s)`` is one FMA; the eight planes are interleaved by joins (new last axes,
    in registers)."""
    w = raw.to(tl.uint32, bitcast=True)
    f0 = (((w << 19) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f1 = (((w << 15) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f2 = (((w << 11) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f3 = (((w << 7) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f4 = (((w << 3) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f5 = (((w >> 1) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f6 = (((w >> 5) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f7 = (((w >> 9) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
    f = tl.join(tl.join(tl.join(f0, f4), tl.join(f2, f6)), tl.join(tl.join(f1, f5), tl.join(f3, f7)))
    f = tl.reshape(f, (raw.shape[0], raw.shape[1], raw.shape[2] * 8))
    s16 = 16.0 * s
    return f * s16[:, :, None] + (o - s16)[:, :, None]


@triton.jit
def _int8_units(raw):
    """int8 as int32 words ``[R, W]`` (four bytes, ``k = 4j + i`` in bits ``8i..8i+7``) -> ``1 + (q + 128)/256``
    as fp32 ``[R, 4W]`` in k order, as :func:`_int4_dequant` (flipping the byte's top bit turns two's
    complement into ``q + 128``)."""
    w = raw.to(tl.uint32, bitcast=True)
    g0 = ((w << 15) & 0x7F8000 ^ 0x3FC00000).to(tl.float32, bitcast=True)
    g1 = ((w << 7) & 0x7F8000 ^ 0x3FC00000).to(tl.float32, bitcast=True)
    g2 = ((w >> 1) & 0x7F8000 ^ 0x3FC00000).to(tl.float32, bitcast=True)
    g3 = ((w >> 9) & 0x7F8000 ^ 0x3FC00000).to(tl.float32, bitcast=True)
    g = tl.join(tl.join(g0, g2), tl.join(g1, g3))  # i = 2a + b
    return tl.reshape(g, (raw.shape[0], raw.shape[1] * 4))


@triton.jit
def _int8_exact(raw):
    """int8 as int32 words ``[R, W]`` -> the codes ``q`` as fp32 ``[R, 4W]`` in k order, exactly and without an int
    -> float conversion: the byte ``q + 128`` (top bit flipped) in the low mantissa bits of 2**23 is the float
    ``2**23 + q + 128`` (one byte permute), and one add of ``-(2**23 + 128)`` leaves ``q`` (integers below 2**24
    are exact in fp32). Two instructions a code against three to four for ``_int8_units`` then ``256 f - 384``
    (the tensor-core path rounds q to x's dtype right after, where the scale-free codes are exact)."""
    w = raw.to(tl.uint32, bitcast=True) ^ 0x80808080
    g0 = ((w & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    g1 = (((w >> 8) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    g2 = (((w >> 16) & 0xFF) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    g3 = ((w >> 24) | 0x4B000000).to(tl.float32, bitcast=True) - 8388736.0
    g = tl.join(tl.join(g0, g2), tl.join(g1, g3))  # i = 2a + b
    return tl.reshape(g, (raw.shape[0], raw.shape[1] * 4))


@triton.jit
def _nibbles(raw, s, o, MAGIC: tl.constexpr):
    """int4 bytes -> the dequantized (low, high) nibbles ``q * s + o`` in fp32 (``MAGIC``: from
    :func:`_units`, as ``(1 + q/16) * 16s + (o - 16s)``; else by int -> float conversions)."""
    if MAGIC:
        f_lo, f_hi = _units(raw)
        s16 = 16.0 * s
        o16 = o - s16
        return f_lo * s16 + o16, f_hi * s16 + o16
    return (raw & 0xF).to(tl.float32) * s + o, (raw >> 4).to(tl.float32) * s + o


@triton.jit
def _codes(raw, SCHEME: tl.constexpr, FP8_BITS: tl.constexpr, MAGIC: tl.constexpr):
    """int8/fp8 codes as fp32; fp8 comes as bytes: converted natively (``cvt``), or from its bits (the value
    / 256, see the module docstring). int8 with ``MAGIC``: ``q + 128`` in the top mantissa bits of 1.0f is
    ``1 + (q + 128)/256``, so ``q = 256 f - 384`` exactly, without the slow int -> float conversion."""
    if SCHEME == 0 and MAGIC:
        b = raw.to(tl.uint8, bitcast=True).to(tl.uint32)
        f = (((b ^ 0x80) << 15) | 0x3F800000).to(tl.float32, bitcast=True)
        return f * 256.0 - 384.0
    if SCHEME == 2 and FP8_BITS:
        b = raw.to(tl.uint16)
        bits = ((b & 0x80) << 8) | ((b & 0x7F) << 7)
        return bits.to(tl.float16, bitcast=True).to(tl.float32)
    if SCHEME == 2:
        return raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # fp8 is passed as its bytes (u8)
    return raw.to(tl.float32)


@triton.jit
def _quant_matmul(
    x_ptr, u_ptr, q_ptr, s_ptr, b_ptr, out_ptr, part_ptr, lock_ptr, g_ptr,
    M, N, K, KW, G, KW_PER_SPLIT,
    stride_xm, stride_um, stride_qn, stride_sn, stride_split,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, FP8_BITS: tl.constexpr, MAGIC: tl.constexpr, WORDS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, USE_DOT: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr, PREFETCH: tl.constexpr, GATED: tl.constexpr, EARLY_W: tl.constexpr,
    PRE_GATE: tl.constexpr, PREFETCH_X: tl.constexpr, X_ROWS: tl.constexpr = 0, PAIRS: tl.constexpr = 0,
    PAIR_CODES: tl.constexpr = False, L2_PREFETCH: tl.constexpr = False, pf_bytes=0, GATE_ROWS: tl.constexpr = 16,
):
    tl.static_assert(BLOCK_K % 16 == 0, "BLOCK_K must be a multiple of 16 (vector loads)")
    if SCHEME == 1:
        tl.static_assert(BLOCK_K <= GROUP or BLOCK_K % GROUP == 0, "int4: BLOCK_K and the group must nest")
        if USE_DOT:
            tl.static_assert(BLOCK_K >= 32, "int4 tl.dot: BLOCK_K / 2 >= 16 bytes per row")
    if USE_DOT:
        tl.static_assert(BLOCK_M >= 16 and BLOCK_N >= 16, "tl.dot needs 16x16 tiles: pad M to 16")
    HALF: tl.constexpr = BLOCK_K // 2
    # K elements per weight column: int32 words (WORDS) of int4 8, of int8 4; int4 bytes 2; int8/fp8 bytes 1
    UNIT: tl.constexpr = (8 if SCHEME == 1 else 4) if WORDS else (2 if SCHEME == 1 else 1)
    # int8 words: codes come as f = 1 + (q + 128)/256, so sum x*q = 256 sum x*f - 384 sum x (x summed apart)
    INT8_SUM: tl.constexpr = SCHEME == 0 and WORDS
    # int4 GEMV with the tile inside one group: sum x * (1 + q/16) over the tile, then apply the group's
    # scale and offset once per row: sum x*w = 16s * sum x*(1 + q/16) + (o - 16s) * sum x (three instructions
    # a nibble: shift, lop3, fma)
    GROUP_SUM: tl.constexpr = SCHEME == 1 and MAGIC and not USE_DOT and BLOCK_K <= GROUP and not WORDS
    BLOCK_KW: tl.constexpr = BLOCK_K // UNIT  # weight columns per tile
    # int4 words: the tile as [BLOCK_N, GPT, GW] words, GPT chunks each inside one group (_int4_groups),
    # dequantized to q * s + o by one FMA a nibble; the GEMV accumulates x * w elementwise over the whole
    # K range (one reduction at the end, no barrier in the loop), the tensor cores take w in x's dtype
    INT4_GROUPS: tl.constexpr = SCHEME == 1 and WORDS
    GPT: tl.constexpr = BLOCK_K // GROUP if INT4_GROUPS and BLOCK_K > GROUP else 1
    GW: tl.constexpr = BLOCK_KW // GPT
    GROUP_COLS: tl.constexpr = GROUP // 8 if INT4_GROUPS else 1
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m = tl.program_id(2)
    # this program owns qweight rows [pid_n * BLOCK_N, +BLOCK_N) = output columns, x rows of block pid_m,
    # and one K chunk
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    q_rows = q_ptr + rows.to(tl.int64) * stride_qn  # 64-bit: an lm head passes 2**31 elements
    s_rows = s_ptr + rows.to(tl.int64) * stride_sn
    ms = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = ms < M
    # weight columns [c_start, c_end) of K (int4 bytes: KW = ceil(K / 2); words: K / 8), elements up to k_end
    c_start = pid_k * KW_PER_SPLIT
    c_end = tl.minimum(c_start + KW_PER_SPLIT, KW)
    if UNIT > 1:
        k_end = tl.minimum(UNIT * c_end, K)
    else:
        k_end = c_end

    if USE_DOT or GROUP_SUM:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if not USE_DOT:
        if INT4_GROUPS:
            acc4 = tl.zeros((BLOCK_M, BLOCK_N, GPT, 8 * GW), dtype=tl.float32)
        elif not GROUP_SUM:
            # defer the K reduction: FMAs into registers, one tree-sum at the end
            acc3 = tl.zeros((BLOCK_M, BLOCK_N, BLOCK_K if WORDS else BLOCK_KW), dtype=tl.float32)
            if INT8_SUM:
                xs3 = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
        if PREFETCH and EARLY_W:
            # a parameter's first tile, before the wait: in flight while the previous kernel finishes
            if INT4_GROUPS:
                raw_n, s_n, o_n = _int4_groups(q_rows, s_rows, row_ok, c_start, c_end, G, GROUP_COLS, GPT, GW)
            else:
                raw_n, s_n, o_n = _q_tile(q_rows, s_rows, row_ok, c_start, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT,
                                          False)
    if L2_PREFETCH:
        # the first pf_bytes of each of this program's code rows asked of L2 before the wait (linear.py)
        l2_prefetch_rows(q_ptr, pid_n, N, stride_qn, c_start, c_end - c_start, pf_bytes, BLOCK_N)
    pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    if not USE_DOT:
        if PREFETCH and not EARLY_W:
            if INT4_GROUPS:
                raw_n, s_n, o_n = _int4_groups(q_rows, s_rows, row_ok, c_start, c_end, G, GROUP_COLS, GPT, GW)
            else:
                raw_n, s_n, o_n = _q_tile(q_rows, s_rows, row_ok, c_start, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT,
                                          False)
    if PRE_GATE:
        # gated (GEMV, and tensor cores from M = 3): form silu(gate) * up for this program's K range once,
        # real rows only, spread over all its threads,
        # into the scratch g[M, K] (programs of one K range write the same values), then read it as x. In
        # the loop every thread would form the x columns of its tile itself: the same values once per
        # weight row group a warp holds, two MUFU instructions each, more than the bytes allow
        # The block's real rows (GATE_ROWS: M's power of two, at most BLOCK_M) in one [GATE_ROWS, GATE_CHUNK] tile
        # of 4096 values a step: the steps wait on their L2 loads one after another, so their count is the
        # prologue's latency. A row and 512 columns a step took M x K / 512 of them (224 per program for the
        # Llama-3-8B down projection at M = 8, unsplit; the H200 batch-8 steps ran 30-45 us a launch over the
        # model's line), 28 now; 4 at M = 1 instead of 28. The tile costs registers (sm_90 ptxas, the 8B down
        # projection at M = 8): int8 108 against 90 before, fp8 106 against 80, int4 pairs 128 against 126; at
        # 2048 values a step 90 / 88 / 128, at 1024 80 / 88 / 128. Which pays is for a GPU run to say
        GATE_CHUNK: tl.constexpr = 4096 // GATE_ROWS
        gms = pid_m * BLOCK_M + tl.arange(0, GATE_ROWS)
        gm_ok = gms < tl.minimum(M, pid_m * BLOCK_M + BLOCK_M)
        for kk in range(UNIT * c_start, k_end, GATE_CHUNK):
            kg = kk + tl.arange(0, GATE_CHUNK)
            xg = _x_tile(x_ptr, u_ptr, gms, gm_ok, kg, k_end, stride_xm, stride_um, True)
            tl.store(g_ptr + gms[:, None] * K + kg[None, :], xg, mask=gm_ok[:, None] & (kg < k_end)[None, :])
        tl.debug_barrier()  # the block's stores are visible to all its threads after this
        x_ptr = g_ptr
        stride_xm = K
    GATED_X: tl.constexpr = GATED and not PRE_GATE
    # int4 GEMV: x's chunk offsets within a tile; PREFETCH_X double-buffers x's tile too (its L2 load and
    # layout change are otherwise on every step's critical path)
    ks3_0 = tl.arange(0, GPT)[:, None] * (8 * GW) + tl.arange(0, 8 * GW)[None, :]
    if INT4_GROUPS and not USE_DOT and PREFETCH_X:
        x3_n = _x_chunks(x_ptr, u_ptr, ms, m_ok, 8 * c_start + ks3_0, k_end, stride_xm, stride_um, GATED_X)
    for c0 in range(c_start, c_end, BLOCK_KW):
        if INT4_GROUPS and not USE_DOT:
            # GEMV: x as [BLOCK_M, GPT, 8 GW] (the tile's chunks), times the dequantized [BLOCK_N, GPT, 8 GW]
            if PREFETCH:
                raw, s, o = raw_n, s_n, o_n
                raw_n, s_n, o_n = _int4_groups(q_rows, s_rows, row_ok, c0 + BLOCK_KW, c_end, G, GROUP_COLS, GPT, GW)
            else:
                raw, s, o = _int4_groups(q_rows, s_rows, row_ok, c0, c_end, G, GROUP_COLS, GPT, GW)
            w3 = _int4_dequant(raw, s, o)
            if PREFETCH_X:
                x3 = x3_n
                x3_n = _x_chunks(x_ptr, u_ptr, ms, m_ok, 8 * (c0 + BLOCK_KW) + ks3_0, k_end, stride_xm, stride_um,
                                 GATED_X)
            else:
                x3 = _x_chunks(x_ptr, u_ptr, ms, m_ok, 8 * c0 + ks3_0, k_end, stride_xm, stride_um, GATED_X)
            acc4 += x3.to(tl.float32)[:, None, :, :] * w3[None, :, :, :]
        else:
            xk = _x_rows(x_ptr, u_ptr, ms, m_ok, pid_m * BLOCK_M, M, UNIT * c0 + tl.arange(0, BLOCK_K), k_end,
                         stride_xm, stride_um, GATED_X, X_ROWS)
            if SCHEME == 1 and not WORDS:
                # bytes: x's tile split into the even columns (low nibbles) and odd (high), in registers
                xe, xo = tl.split(tl.reshape(xk, (BLOCK_M, HALF, 2)))
            if USE_DOT and WORDS:
                # whole words [BLOCK_N, BLOCK_KW] -> codes [BLOCK_N, BLOCK_K] -> tl.dot against their transpose
                if SCHEME == 1:
                    # dequantized once per tile (amortised over the M rows), rounded to x's dtype as the
                    # reference rounds, then one tl.dot
                    raw, s, o = _int4_groups(q_rows, s_rows, row_ok, c0, c_end, G, GROUP_COLS, GPT, GW)
                    w = tl.reshape(_int4_dequant(raw, s, o), (BLOCK_N, BLOCK_K)).to(xk.dtype)
                    acc = tl.dot(xk, tl.trans(w), acc, input_precision=INPUT_PRECISION)
                else:
                    raw, s, o = _q_tile(q_rows, s_rows, row_ok, c0, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT, False)
                    w = _int8_exact(raw).to(xk.dtype)  # the integer code, exact in 16-bit floats
                    acc = tl.dot(xk, tl.trans(w), acc, input_precision=INPUT_PRECISION)
            elif USE_DOT:
                # the tile as W^T [BLOCK_KW, BLOCK_N], contiguous along K so loads still vectorise
                if SCHEME == 1 and PAIRS and PAIR_CODES:
                    # the biased codes (exact in x's dtype, one instruction a code) on the tensor cores, the
                    # group's scale and offset on the tile's fp32 product: s * P + (o - BIAS s) * sum x
                    tl.static_assert(BLOCK_K <= GROUP, "int4 pair codes: a tile inside one group")
                    raw, s, o = _pairs_tile(q_rows, s_rows, row_ok, c0, c_end, G, GROUP, BLOCK_KW)
                    t_lo, t_hi = int4_codes(raw, xe.dtype, PAIRS)
                    p = tl.dot(xe, t_lo, tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32),
                               input_precision=INPUT_PRECISION)
                    p = tl.dot(xo, t_hi, p, input_precision=INPUT_PRECISION)
                    BIAS: tl.constexpr = 128.0 if xe.dtype == tl.bfloat16 else 1024.0
                    sf = s.to(tl.float32)
                    xs = tl.sum(xk.to(tl.float32), axis=1)
                    acc += p * sf + xs[:, None] * (o.to(tl.float32) - BIAS * sf)
                elif SCHEME == 1 and PAIRS:
                    # two codes per 32-bit op, straight into x's 16-bit dtype (int4_pairs.py)
                    raw, s, o = _pairs_tile(q_rows, s_rows, row_ok, c0, c_end, G, GROUP, BLOCK_KW)
                    w_lo, w_hi = int4_pairs(raw, s.to(xe.dtype), o.to(xe.dtype), PAIRS)
                    acc = tl.dot(xe, w_lo, acc, input_precision=INPUT_PRECISION)
                    acc = tl.dot(xo, w_hi, acc, input_precision=INPUT_PRECISION)
                elif SCHEME == 1:
                    raw, s, o = _q_tile(q_rows, s_rows, row_ok, c0, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT, True)
                    w_lo, w_hi = _nibbles(raw, s, o, MAGIC)  # rounded to x's dtype as the reference rounds
                    acc = tl.dot(xe, w_lo.to(xe.dtype), acc, input_precision=INPUT_PRECISION)
                    acc = tl.dot(xo, w_hi.to(xe.dtype), acc, input_precision=INPUT_PRECISION)
                else:
                    raw, s, o = _q_tile(q_rows, s_rows, row_ok, c0, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT, True)
                    w = _codes(raw, SCHEME, FP8_BITS, MAGIC).to(xk.dtype)  # exact: |q| <= 127, e4m3 fits in 16 bits
                    acc = tl.dot(xk, w, acc, input_precision=INPUT_PRECISION)
            else:
                if PREFETCH:
                    # registers double-buffer the packed tile: the next one's load is in flight while this is used
                    raw, s, o = raw_n, s_n, o_n
                    raw_n, s_n, o_n = _q_tile(q_rows, s_rows, row_ok, c0 + BLOCK_KW, c_end, G, SCHEME, GROUP,
                                              BLOCK_KW, UNIT, False)
                else:
                    raw, s, o = _q_tile(q_rows, s_rows, row_ok, c0, c_end, G, SCHEME, GROUP, BLOCK_KW, UNIT, False)
                if INT8_SUM:
                    xf = xk.to(tl.float32)
                    acc3 += xf[:, None, :] * _int8_units(raw)[None, :, :]
                    xs3 += xf
                elif GROUP_SUM:
                    # per x row (M <= 2): [BLOCK_N, BLOCK_K] products summed along K, mostly within a thread
                    s16 = 16.0 * tl.reshape(s, (BLOCK_N,))
                    o16 = tl.reshape(o, (BLOCK_N,)) - s16
                    f_lo, f_hi = _units(raw)  # [BLOCK_N, HALF] each
                    for mm in tl.static_range(BLOCK_M):
                        x1 = _x_row(x_ptr, u_ptr, pid_m * BLOCK_M + mm, M, UNIT * c0 + tl.arange(0, BLOCK_K), k_end,
                                    stride_xm, stride_um, GATED_X).to(tl.float32)
                        x1e, x1o = tl.split(tl.reshape(x1, (HALF, 2)))
                        p1 = tl.sum(f_lo * x1e[None, :] + f_hi * x1o[None, :], axis=1)
                        row = p1 * s16 + tl.sum(x1, axis=0) * o16
                        acc += tl.where((tl.arange(0, BLOCK_M) == mm)[:, None], row[None, :], 0.0)
                elif SCHEME == 1:
                    w_lo, w_hi = _nibbles(raw, s, o, MAGIC)  # dequantized in fp32, one FMA per nibble
                    acc3 += xe[:, None, :].to(tl.float32) * w_lo[None, :, :]
                    acc3 += xo[:, None, :].to(tl.float32) * w_hi[None, :, :]
                else:
                    acc3 += xk[:, None, :].to(tl.float32) * _codes(raw, SCHEME, FP8_BITS, MAGIC)[None, :, :]
    if INT4_GROUPS and not USE_DOT:
        acc = tl.sum(tl.sum(acc4, axis=3), axis=2)
    elif INT8_SUM and not USE_DOT:
        acc = 256.0 * tl.sum(acc3, axis=2) - 384.0 * tl.sum(xs3, axis=1)[:, None]
    elif not USE_DOT and not GROUP_SUM and not INT4_GROUPS:
        acc = tl.sum(acc3, axis=2)
    if SCHEME != 1:
        # the per-channel scale, once per output (fp8 from bits: the codes were value / 256)
        scale = tl.load(s_rows, mask=row_ok, other=0.0).to(tl.float32)
        if SCHEME == 2 and FP8_BITS:
            scale = scale * 256.0
        acc = acc * scale[None, :]

    out_offs = ms[:, None] * N + rows[None, :]
    out_mask = m_ok[:, None] & row_ok[None, :]
    if SPLIT_K == 1:
        if HAS_BIAS:
            acc += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
        tl.store(out_ptr + out_offs, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        # an fp32 partial, then count this split in; the last of the SPLIT_K to arrive reduces in split order
        tl.store(part_ptr + pid_k * stride_split + out_offs, acc, mask=out_mask)
        block = pid_m * tl.num_programs(0) + pid_n
        if arrive_last(lock_ptr, block, SPLIT_K):
            total = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
            for sp in tl.static_range(SPLIT_K):
                total += tl.load(part_ptr + sp * stride_split + out_offs, mask=out_mask, other=0.0,
                                 cache_modifier=".cg")  # from L2: the other programs' stores
            if HAS_BIAS:
                total += tl.load(b_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[None, :]
            tl.store(out_ptr + out_offs, total.to(out_ptr.dtype.element_ty), mask=out_mask)
            reset_counter(lock_ptr, block)


@dataclass(frozen=True)
class QuantConfig:
    """Tile sizes and launch shape of one ``_quant_matmul`` launch (see :func:`pick_config`).

    ``block_k`` counts weight *elements* along K (an int4 tile is ``block_k / 2`` bytes per row). For int4
    it must divide the group size or be a multiple of it (the latter gathers scales per element: slow).
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    use_dot: bool = False
    num_warps: int = 4
    num_stages: int = 3
    prefetch: bool = True  # FMA path: double-buffer the packed tiles in registers
    magic: bool = True  # int8/int4 codes to floats by bit tricks, not int -> float conversions (see _int4_dequant)
    pre_gate: bool = True  # gated GEMV: silu(gate) * up formed once per program into a scratch (PRE_GATE)
    tc_pre_gate: bool = True  # ... and on the tensor cores from M = 3 (checked on the H200 at M = 4, 16; not timed)
    prefetch_x: bool = False  # int4 GEMV on words: double-buffer x's tiles too (unmeasured: not a default)
    words: bool = True  # int8/int4: load int32 words (when whole words fit the rows), not bytes (_int4_dequant)
    pairs: bool = False  # int4 on tensor cores, fp16/bf16 x: bytes to x's dtype two codes an op (int4_pairs.py)
    pair_codes: bool = False  # ... dot on the exact biased codes, group affine on the fp32 product (block_k <= group;
    # sm_90 SASS: 3.20 instructions a code vs 3.31 under triton 3.9, 3.37 vs 3.33 under 3.6: off, untimed)


TC_GEMV_INT4_N = 32768  # int4 at M <= 2, without PAIRS: the tensor-core kernel from this many output columns on
INT4_PAIRS = True  # int4 at M <= 32 with fp16/bf16 x: the tensor-core kernel with int4_pairs' dequantization
PAIRS_BLOCK_N = 128  # its weight rows per program: x's tile (16 x BLOCK_K, reloaded each step) spread over more codes
# ... and its K split at M <= 2: until 3.5 waves of programs. ncu on the H200 saw 1.5 waves leave 1.9 blocks
# (7.7 warps) an SM at 144 registers (benches/results/ncu-quant-gemv-m1-nvidia-h200-2026-12-02.txt); the split
# sweep at M = 1 (quant_matmul-sweep-nvidia-h200-2026-12-02-m1-splits.json) was fastest at 896 / 512 programs
# for 28672 x 4096 / 4096 x 14336 (35.2 against 39.8 us, 18.3 against 19.6), 384-768 for 6144 x 4096 (13.0-13.2)
PAIRS_WAVES = 3.5


def pairs_path(m: int, scheme: str, dtype: torch.dtype, pairs: Optional[bool] = None) -> bool:
    """Whether ``m`` rows take the int4 ``PAIRS`` kernel: tensor cores (M padded to 16 or 32) fed by
    :func:`int4_pairs`, at every decode M (1..32) for fp16/bf16 x.

    Expected from the sm_90 SASS of the main loops at the Llama-3-8B shapes (``benches/experiments/
    int4_sass.py``; bf16, M = 1 and 16): 3.3 instructions per code at 128 rows x 128 elements and 126
    registers, against 5.8 for the FMA GEMV (202 registers) and 7.1 for the tensor-core kernel over
    ``_int4_dequant``; an H200 streaming int4 at 4.1 TB/s has ~4 per code at full issue (128 lanes a clock
    per SM, ~31 codes a clock per SM). Not yet timed on a GPU: ``benches/experiments/int4_pairs_paths.py``
    times both (``INT4_PAIRS = False`` restores the previous rule).
    """
    on = INT4_PAIRS if pairs is None else pairs
    return on and scheme == "int4" and m <= SMALL_M and dtype in (torch.float16, torch.bfloat16)


def tensor_cores_at_gemv(n: int, k: int, scheme: str) -> bool:
    """Whether M <= 2 runs the tensor-core kernel (M padded to 16) rather than the FMA GEMV, where the int4
    pairs kernel does not apply (:func:`pairs_path`: fp32 x, or switched off).

    Measured on one H200 (``benches/results/quant_gemv_paths-nvidia-h200-2026-12-02*.json``, bf16 x, M = 1,
    weights streamed from HBM, CUDA-graph replay; Llama-3-8B decode projections): the FMA GEMV spends ~7.5
    instructions per int8 code and ~6-9 per int4 code (dequantize, convert x, FMA, addressing; sm_90 SASS)
    and holds 199 registers, while the tensor-core kernel pipelines its loads (cp.async) and leaves the
    multiply-add to the MMA. int8 on tensor cores (``_int8_exact``), us, tensor cores vs GEMV (bf16 GEMV):
    qkv 6144x4096 14.2 vs 18.4 (17.3), o 4096x4096 9.7 vs 10.0 (10.4), gate_up 28672x4096 41.1 vs 60.1
    (62.9), down (gated) 4096x14336 23.8 vs 41.9 (35.3), head 128256x4096 151 vs 257 (265). int4 wins only
    on lm heads (128256x4096 239 vs 315, 128256x2048 109 vs 190) and loses elsewhere (28672x4096 76.7 vs
    73.0, 6144x4096 23.2 vs 18.7). fp8 at M = 4 on tensor cores beat its M = 1 GEMV at every shape of the
    2026-12-01 run. The gated op follows the same rule: its tensor-core tiles gate only the real rows
    (``X_ROWS``; gating all 16 padded rows cost 104 us at 4096x14336). The integer-code int4 dot tried on
    2026-12-02 (6.2 instructions a code against 7.5) was slower (lm head 381 us against 239; ``-layer2.json``,
    mode m16) and was removed.
    """
    if scheme == "int4":
        return k % 8 == 0 and n >= TC_GEMV_INT4_N  # words: the tensor-core int4 tile needs whole words
    return True


def pick_config(m: int, n: int, k: int, scheme: str, group_size: int, dtype: torch.dtype,
                device: torch.device, pairs: Optional[bool] = None) -> QuantConfig:
    """Tiles for ``m`` rows, from one H200 sweep at 4096 x 14336 (``benches/results/quant_matmul-sweep-
    nvidia-h200-2026-12-01-int4-groups.json``; other shapes untuned):

    - M <= 2 (FMA): int8 16 rows x 512 bytes (29.9 -> 27.0 us over 8 rows, split 2), fp8 8 x 512 (not
      swept); int4 words 16 rows x 512 elements (256 bytes, four groups of 128; 8 rows at M = 2), which
      beat 8 x 1024 and 4 x 1024; int4 bytes (odd K) one group-aligned tile of ``min(group, 256)``.
    - M = 3..32 (tensor cores): 64 rows x 256 elements (int8/fp8) or 64 x 128 (int4 words; 32.3 us
      against 41.9 for 64 x 256 and 83.9 for the old 32 x 128 gather-free single-group tile), 3 stages,
      M padded to 16 or 32. M > 32: 64 x 64 x 128, 3 stages: fits shared memory for every scheme
      (64 x 64 x 256 with 4 stages asked for 272 KB and could not launch).
    - gated (``quant_gated_linear``): the same tiles; the GEMV forms ``silu(gate) * up`` once per program
      first (``PRE_GATE``), so the tiles see a plain x.
    - split K only while the programs would leave SMs idle (one wave on the FMA path, 1.5 on the tensor
      cores) and each split keeps enough K tiles (8 on the FMA path, 4 for int4, 2 on the tensor cores):
      the sweep found every GEMV split of 4096 x 14336 slower than none, and split 4 best at M = 16.

    - int4 with fp16/bf16 x at M <= 32 (:func:`pairs_path`; ``pairs`` forces it on or off): tensor cores
      over bytes dequantized by :func:`int4_pairs`, 128 rows x one group (32..128 elements), M padded to
      16 / 32.

    ``benches/quant_matmul.py --sweep`` times a grid around these on the GPU.
    """
    int4 = scheme == "int4"
    words = int4 and k % 8 == 0  # int4 read as words: tiles of several groups (_int4_groups), no gathers
    kcap = max(32 if int4 else 16, next_pow2(k))
    if pairs_path(m, scheme, dtype, pairs):
        # tensor cores over bytes (the pairs are made from bytes), 128 elements a tile (smaller groups: their
        # scales repeated in registers, _pairs_tile), M padded to 16 / 32
        block_k = min(128, kcap)
        return _with_split(16 if m <= 16 else 32, PAIRS_BLOCK_N, block_k, m, n, k, True, int4, device, pairs=True)
    if m <= GEMV_M and tensor_cores_at_gemv(n, k, scheme):
        m = GEMV_M + 1  # the tensor-core kernel with M padded to 16 rows (see tensor_cores_at_gemv)
    if m <= GEMV_M:
        if words:
            # 16 rows x 256 bytes (8 rows at M = 2: the x * w accumulators double)
            block_k, block_n = max(min(512, kcap), min(group_size, kcap)), (16 if m == 1 else 8)
        else:
            block_k = min(min(group_size, 256) if int4 else 512, kcap)
            block_n = max(4, min(128, 4096 // block_k)) if int4 else (16 if scheme == "int8" else 8)
        block_m, use_dot = next_pow2(m), False
    else:
        if words:
            block_k = min(128, kcap)  # nests with every group size (powers of two)
        else:
            block_k = min(min(max(group_size, 32), 256) if int4 else 256, kcap)
        if m <= SMALL_M:
            block_m, block_n = (16 if m <= 16 else 32), (32 if int4 and not words else 64)
        else:
            # 64 x 64 x 128 with 3 stages fits shared memory for every scheme (64 x 64 x 256 x 4 did not)
            block_m, block_n, block_k = PREFILL_BLOCK_M, 64, min(block_k, 128)
            if int4 and block_k < group_size and block_k % 8 == 0:
                block_k = min(group_size, 128)
        use_dot = True
    return _with_split(block_m, block_n, block_k, m, n, k, use_dot, int4, device)


def _with_split(block_m: int, block_n: int, block_k: int, m: int, n: int, k: int, use_dot: bool, int4: bool,
                device: torch.device, pairs: bool = False) -> QuantConfig:
    """The config with its K split: only while the SMs would otherwise idle, one wave for the GEMV, 1.5 for
    the tensor cores (the H200 sweep: 4096 x 14336 at M = 1 is fastest unsplit, at M = 16 with 64 rows split
    in 4), each split keeping enough K tiles."""
    programs = cdiv(n, block_n) * cdiv(m, block_m)
    split = 1
    waves = PAIRS_WAVES if pairs and m <= GEMV_M else (1.5 if use_dot else 1.0)  # M > 2: not swept with pairs
    min_tiles = 2 if use_dot else (4 if int4 else 8)
    while programs * split < waves * sm_count(device) and k >= min_tiles * block_k * (2 * split) and split < 16:
        split *= 2
    return QuantConfig(block_m, block_n, block_k, split, use_dot, num_warps=4, num_stages=3, pairs=pairs)


def packed_bytes(n: int, k: int, scheme: str, group_size: int, dtype: torch.dtype) -> int:
    """Bytes of a packed weight and its scales: int8/fp8 ``N*K + N*e``, int4 ``N*ceil(K/2) + N*G*2*e``."""
    e = torch.empty((), dtype=dtype).element_size()
    if scheme == "int4":
        return n * ((k + 1) // 2) + n * num_groups(k, group_size) * 2 * e
    return n * k + n * e


def quant_linear_bytes(m: int, n: int, k: int, scheme: str, group_size: int, dtype: torch.dtype,
                       has_bias: bool = False) -> int:
    """Bytes the kernel must move (the effective bytes of the benches): packed weight + scales once, x
    once, the output once (and the bias)."""
    e = torch.empty((), dtype=dtype).element_size()
    return packed_bytes(n, k, scheme, group_size, dtype) + e * (m * k + m * n + (n if has_bias else 0))


@functools.lru_cache(maxsize=None)
def _device_spec(device: torch.device):  # -> membound.cost.Hardware
    """The datasheet spec of ``device`` (an unknown GPU: the H100 SXM's, whose ratio of tensor-core rate
    to bandwidth is typical of current cards; never calibrates inside a launch)."""
    from membound.cost.hardware import SPECS, Hardware, cpu_spec, match_gpu

    if device.type != "cuda":
        return cpu_spec()
    props = torch.cuda.get_device_properties(device)
    return SPECS.get(match_gpu(props.name, props.total_memory) or "", Hardware.named("h100-sxm"))


def measured_rates(scheme: str, hw) -> tuple[float, float]:
    """prefill_path's two measured rates (module docstring), read from the step priors (``membound.cost.step``,
    one source for both): the fused kernel's share of cuBLAS's tensor-core rate (``quant_mma_<scheme>``'s
    compute efficiency over ``cublas``'s: H200, M = 64, five shapes), and the dequantization kernel's read
    bandwidth over the packed bytes (``quant_dequant_<scheme>``'s efficiency)."""
    from membound.cost.step import step_priors

    priors = step_priors(hw)
    share = priors.kernel(f"quant_mma_{scheme}").compute_efficiency / priors.kernel("cublas").compute_efficiency
    return share, priors.kernel(f"quant_dequant_{scheme}").efficiency


def prefill_times(m: int, n: int, k: int, scheme: str, group_size: int, dtype: torch.dtype,
                  device: torch.device, hw=None) -> dict[str, float]:
    """Roofline seconds of the two prefill paths (module docstring): ``{"kernel": fused, "cublas": ...}``,
    on ``hw`` (a ``membound.cost.Hardware``; default: ``device``'s datasheet spec)."""
    hw = hw or _device_spec(device)
    e = torch.empty((), dtype=dtype).element_size()
    peak = hw.peak_flops({torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, "bf16"))
    packed = packed_bytes(n, k, scheme, group_size, dtype)
    dense = n * k * e
    io = (m * k + m * n) * e
    flops = 2.0 * m * n * k
    share, dequant_eff = measured_rates(scheme, hw)
    fused = max((cdiv(m, PREFILL_BLOCK_M) * packed + io) / hw.bandwidth, flops / (share * peak))
    dequant = packed / (hw.bandwidth * dequant_eff) + dense / hw.bandwidth  # read, write D
    cublas = dequant + max((dense + io) / hw.bandwidth, flops / peak)
    return {"kernel": fused, "cublas": cublas}


def prefill_path(m: int, n: int, k: int, scheme: str, group_size: int, dtype: torch.dtype,
                 device: torch.device) -> str:
    """``"kernel"`` (fused) or ``"cublas"`` (dequantize to a temporary, then ``F.linear``) for M > 32."""
    t = prefill_times(m, n, k, scheme, group_size, dtype, device)
    return "kernel" if t["kernel"] <= t["cublas"] else "cublas"


def quant_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None,
                 out: Optional[torch.Tensor] = None, *, scheme: str, group_size: int = 0, in_features: int,
                 config: Optional[QuantConfig] = None, static_weight: bool = False) -> torch.Tensor:
    """The IR op ``quant_linear``: ``x[..., K] @ dequantize(qweight, scales).T (+ bias[N])``.

    Paths: M <= 2 the GEMV, M <= 32 the tensor-core kernel, M > 32 :func:`prefill_path` (fused kernel or
    dequantize + cuBLAS); ``config`` forces the kernel with those tiles. ``static_weight=True`` promises
    no kernel writes qweight/scales (parameters), so their first tile is loaded before the PDL wait.
    """
    if x.dim() < 1:
        raise ValueError(f"quant_linear: x must be [..., K], got shape {tuple(x.shape)}")

    def reference() -> torch.Tensor:
        return F.linear(x, dequantize(qweight, scales, scheme, group_size, in_features, x.dtype), bias)

    return _launch("quant_linear", x, None, qweight, scales, bias, out, scheme, group_size, in_features, config,
                   reference, static_weight)


def quant_gated_linear(gate: torch.Tensor, up: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                       out: Optional[torch.Tensor] = None, *, scheme: str, group_size: int = 0, in_features: int,
                       act: str = "silu", config: Optional[QuantConfig] = None,
                       static_weight: bool = False) -> torch.Tensor:
    """The IR op ``quant_gated_linear``: ``quant_linear(silu(gate) * up, ...)``, the product formed tile by
    tile as x is loaded (rounded as eager rounds it) and never stored. Paths as :func:`quant_linear`."""
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    if act != "silu":
        raise ValueError(f"quant_gated_linear: act={act!r} has no kernel (silu does); known: "
                         f"{sorted(GATED_ACTIVATIONS)}")
    if gate.shape != up.shape:
        raise ValueError(f"quant_gated_linear: gate {tuple(gate.shape)} and up {tuple(up.shape)} must have one shape")
    if gate.dim() < 1:
        raise ValueError(f"quant_gated_linear: gate must be [..., K], got shape {tuple(gate.shape)}")

    def reference() -> torch.Tensor:
        w = dequantize(qweight, scales, scheme, group_size, in_features, gate.dtype)
        return F.linear(F.silu(gate) * up, w)

    return _launch("quant_gated_linear", gate, up, qweight, scales, None, out, scheme, group_size, in_features,
                   config, reference, static_weight)


def _check(op: str, x: torch.Tensor, up: Optional[torch.Tensor], qweight: torch.Tensor, scales: torch.Tensor,
           bias: Optional[torch.Tensor], scheme: str, group_size: int, k: int) -> int:
    """Shapes and dtypes against the format (ir/ops/quant.py); returns N."""
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"{op}: in_features must be a positive int, got {k!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"{op}: scheme must be one of {SCHEMES}, got {scheme!r}")
    try:
        check_scheme(scheme, group_size, op)
    except ValueError as e:
        raise ValueError(f"{e}; the group_size the weight was quantized with") from None
    if qweight.dtype != QWEIGHT_DTYPE[scheme]:
        raise TypeError(f"{op}: {scheme} qweight must be {QWEIGHT_DTYPE[scheme]}, got {qweight.dtype}")
    packed_k = (k + 1) // 2 if scheme == "int4" else k
    if qweight.dim() != 2 or qweight.shape[1] != packed_k:
        raise ValueError(f"{op}: {scheme} qweight must be [N, {packed_k}] for in_features={k}, got "
                         f"{tuple(qweight.shape)}")
    n = qweight.shape[0]
    want = (n, num_groups(k, group_size), 2) if scheme == "int4" else (n,)
    if tuple(scales.shape) != want:
        raise ValueError(f"{op}: {scheme} scales must be {list(want)}, got {tuple(scales.shape)}")
    if x.shape[-1] != k:
        raise ValueError(f"{op}: x {tuple(x.shape)} and in_features={k} disagree on K")
    if bias is not None and tuple(bias.shape) != (n,):
        raise ValueError(f"{op}: bias must be [N] = [{n}], got {tuple(bias.shape)}")
    floats = [x] + ([up] if up is not None else []) + [scales] + ([bias] if bias is not None else [])
    if any(t.dtype != x.dtype for t in floats):
        raise TypeError(f"{op}: x, scales (and up, bias) must share the activation dtype, got "
                        f"{[t.dtype for t in floats]}")
    return n


def _launch(op: str, x: torch.Tensor, up: Optional[torch.Tensor], qweight: torch.Tensor, scales: torch.Tensor,
            bias: Optional[torch.Tensor], out: Optional[torch.Tensor], scheme: str, group_size: int, k: int,
            config: Optional[QuantConfig], reference: Callable[[], torch.Tensor], static_weight: bool) -> torch.Tensor:
    """Checks, path choice and the launch, for both ops (``up`` given: x is the gate)."""
    n = _check(op, x, up, qweight, scales, bias, scheme, group_size, k)
    lead = tuple(x.shape[:-1])
    m = x.numel() // k
    operands = [x] + ([up] if up is not None else []) + [qweight, scales] + ([bias] if bias is not None else [])
    reason = unsupported_device(*operands) or unsupported_dtype(op, x)
    if reason is None and qweight.stride(1) != 1 and qweight.shape[1] > 1:
        reason = f"qweight strides {qweight.stride()} (rows must be contiguous)"
    if reason is not None or m == 0 or n == 0:
        return fallback(op, reason or "empty product", reference(), out)
    if m > SMALL_M and config is None and prefill_path(m, n, k, scheme, group_size, x.dtype, x.device) == "cublas":
        # the weight dequantized into a temporary by one kernel (quant_dequant.py), then cuBLAS
        from membound.backends.triton.kernels.quant_dequant import dequantize_weight

        note(op, "cublas")
        w = dequantize_weight(qweight, scales, scheme, group_size, k, x.dtype)
        result = F.linear(x if up is None else F.silu(x) * up, w, bias)
        return result if out is None else _copy_out(op, out, result)

    y = check_out(op, out, lead + (n,), x.dtype, x.device)
    x2 = _rows(x, m, k)
    u2 = _rows(up, m, k) if up is not None else None
    s = scales.contiguous()
    int4 = scheme == "int4"
    cfg = config or pick_config(m, n, k, scheme, group_size, x.dtype, x.device)
    if not cfg.use_dot and m > cfg.block_m:
        raise ValueError(f"{op}: config block_m={cfg.block_m} is smaller than M={m} on the FMA path")
    if int4 and not (cfg.block_k <= group_size and group_size % cfg.block_k == 0
                     or cfg.block_k % group_size == 0):
        raise ValueError(f"{op}: config block_k={cfg.block_k} must divide group_size={group_size} or be a "
                         f"multiple of it")
    if int4 and cfg.pairs and cfg.pair_codes and cfg.block_k > group_size:
        raise ValueError(f"{op}: config pair_codes needs block_k <= group_size (one group a tile), got "
                         f"block_k={cfg.block_k}, group_size={group_size}")
    k_per_split = cdiv(cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    split = cdiv(k, k_per_split)  # no empty splits
    n_blocks, m_blocks = cdiv(n, cfg.block_n), cdiv(m, cfg.block_m)
    part = locks = gbuf = y  # placeholders the kernel never touches without a split / pre-gating
    # gated: the GEMV forms silu(gate) * up once per program (PRE_GATE); so may the tensor cores from M = 3
    # (tc_pre_gate: in the loop the compiler recomputes it in the dot operand's layout, per warp, for all
    # padded rows); at M <= 2 their tiles gate the real rows as vectors (X_ROWS), except the int4 pairs
    # kernel, which forms it first at every M (sm_90 SASS at 4096 x 14336, M = 1: 3.31 instructions a
    # code against 4.21 gating in the loop)
    pairs = int4 and cfg.pairs and cfg.use_dot and x.dtype in (torch.float16, torch.bfloat16)
    pre_gate = u2 is not None and cfg.pre_gate and (not cfg.use_dot or (m > GEMV_M and cfg.tc_pre_gate) or pairs)
    if pre_gate:
        gbuf = torch.empty((m, k), dtype=x.dtype, device=x.device)
    if split > 1:
        part = torch.empty((split, m, n), dtype=torch.float32, device=x.device)
        locks = split_counters(x.device, n_blocks * m_blocks)
    fp8_bits = scheme == "fp8" and fp8_from_bits(x.device)
    q = qweight.view(torch.uint8) if scheme == "fp8" else qweight  # masked loads need a zero: u8 has one
    # int4 pairs (tensor cores, 16-bit x): bytes; inline PTX when compiled, its Triton twin when interpreted
    pairs_code = 0 if not pairs else (1 if pairs_ptx(x.device) else 2)
    # int32 words (eight int4 / four int8 codes): rows of whole words; for int4 a group-aligned tile
    unit = 8 if int4 else 4
    words = (scheme != "fp8" and cfg.magic and cfg.words and k % unit == 0 and cfg.block_k % unit == 0
             and q.stride(0) % 4 == 0 and q.data_ptr() % 4 == 0 and not pairs)
    if words:
        q = q.view(torch.int32)
    kw = q.shape[1]
    kw_per_split = k_per_split // (unit if words else 2 if int4 else 1)
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    b = bias if bias is not None else s  # a valid pointer the kernel never reads
    launchable(_quant_matmul, x.device)[(n_blocks, split, m_blocks)](
        x2, u2 if u2 is not None else x2, q, s, b, y, part, locks, gbuf, m, n, k, kw,
        num_groups(k, group_size) if int4 else 1, kw_per_split, x2.stride(0),
        u2.stride(0) if u2 is not None else 0,
        q.stride(0), s.stride(0), m * n,
        SCHEME=SCHEME_CODE[scheme], GROUP=group_size if int4 else 0, FP8_BITS=fp8_bits, MAGIC=cfg.magic, WORDS=words,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split, HAS_BIAS=bias is not None,
        USE_DOT=cfg.use_dot, INPUT_PRECISION=precision, PREFETCH=cfg.prefetch and not cfg.use_dot,
        GATED=u2 is not None, EARLY_W=static_weight, PRE_GATE=pre_gate, PREFETCH_X=cfg.prefetch_x,
        X_ROWS=m if u2 is not None and cfg.use_dot and m <= GEMV_M and not pre_gate else 0, PAIRS=pairs_code,
        PAIR_CODES=pairs and cfg.pair_codes, GATE_ROWS=min(next_pow2(m), cfg.block_m),
        num_warps=cfg.num_warps,
        num_stages=cfg.num_stages, **pdl_options(x.device),
        **l2_prefetch_bytes(q, m_blocks == 1, n * split, kw_per_split))  # codes: parameters, never written
    note(op, "kernel")
    return y


def fp8_from_bits(device: torch.device) -> bool:
    """Decode fp8 codes from their bits (cards before sm_89 have no e4m3 conversion instruction)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) < (8, 9)


def _rows(t: torch.Tensor, m: int, k: int) -> torch.Tensor:
    """``t`` as ``[M, K]`` rows with unit stride along K (a view when it can be)."""
    t2 = t.reshape(m, k)
    return t2 if t2.stride(1) == 1 or k == 1 else t2.contiguous()


def _copy_out(op: str, out: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
    check_out(op, out, tuple(result.shape), result.dtype, result.device)
    return out.copy_(result)


def compile_args(m: int, n: int, k: int, scheme: str, group: int, cfg: QuantConfig,
                 gated: bool = False) -> tuple[str, dict, dict]:
    """(label, kernel arguments, launch options) of the launch ``_launch`` makes for bf16 x at these sizes,
    for compiling without a GPU (``compile_check.py``, ``benches/experiments/int4_sass.py``)."""
    int4 = scheme == "int4"
    pairs = int4 and cfg.pairs and cfg.use_dot
    pre_gate = gated and cfg.pre_gate and (not cfg.use_dot or (m > GEMV_M and cfg.tc_pre_gate) or pairs)
    unit = 8 if int4 else 4
    words = scheme != "fp8" and cfg.magic and cfg.words and k % unit == 0 and cfg.block_k % unit == 0 and not pairs
    unit = unit if words else 2 if int4 else 1
    q_type = "*i32" if words else "*u8" if scheme != "int8" else "*i8"
    kw = cdiv(k, unit)
    k_per_split = cdiv(cdiv(k, cfg.split_k), cfg.block_k) * cfg.block_k
    args = dict(x_ptr="*bf16", u_ptr="*bf16", q_ptr=q_type, s_ptr="*bf16", b_ptr="*bf16", out_ptr="*bf16",
                part_ptr="*fp32", lock_ptr="*i32", g_ptr="*bf16", M=m, N=n, K=k, KW=kw,
                G=num_groups(k, group) if int4 else 1, KW_PER_SPLIT=k_per_split // unit, stride_xm=k,
                stride_um=k, stride_qn=kw, stride_sn=2 * num_groups(k, group) if int4 else 1,
                stride_split=m * n, SCHEME=SCHEME_CODE[scheme], GROUP=group if int4 else 0, FP8_BITS=False,
                MAGIC=cfg.magic, WORDS=words, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                SPLIT_K=cdiv(k, k_per_split), HAS_BIAS=False, USE_DOT=cfg.use_dot, INPUT_PRECISION="tf32",
                USE_PDL=True, PREFETCH=cfg.prefetch and not cfg.use_dot, GATED=gated, EARLY_W=not gated,
                PRE_GATE=pre_gate,
                PREFETCH_X=cfg.prefetch_x and not cfg.use_dot,
                X_ROWS=m if gated and cfg.use_dot and m <= GEMV_M and not pre_gate else 0, PAIRS=1 if pairs else 0,
                PAIR_CODES=pairs and cfg.pair_codes, GATE_ROWS=min(next_pow2(m), cfg.block_m))
    label = (f"{scheme}{f' g{group}' if int4 else ''} M={m} {'dot' if cfg.use_dot else 'fma'} "
             f"{cfg.block_m}x{cfg.block_n}x{cfg.block_k} split{args['SPLIT_K']}{' gated' if gated else ''}"
             f"{' words' if words else ''}{' pairs' if pairs else ''}{' codes' if pairs and cfg.pair_codes else ''}")
    return label, args, dict(num_warps=cfg.num_warps, num_stages=cfg.num_stages)


def compile_cases() -> list[tuple[str, dict, dict]]:
    """(label, kernel arguments, launch options) at Llama-3-8B decode shapes, bf16, for the sm_90 PTX check
    (``python -m membound.backends.triton.kernels.quant_matmul``; see ``compile_check.py``)."""
    cases = []
    n, k = 4096, 14336  # the down projection
    for scheme, group, m, gated, words, pairs in (
            ("int8", 0, 1, False, True, False), ("int8", 0, 2, True, False, False),
            ("fp8", 0, 1, False, False, False), ("int4", 128, 1, False, True, False),
            ("int4", 128, 1, False, False, False), ("int4", 32, 2, True, True, False),
            ("int8", 0, 16, False, True, False), ("fp8", 0, 16, False, False, False),
            ("int4", 128, 16, True, True, False), ("int4", 128, 16, False, False, False),
            ("int4", 128, 64, False, True, False), ("int4", 128, 1, False, False, True),
            ("int4", 128, 1, True, False, True), ("int4", 128, 16, False, False, True),
            ("int4", 32, 17, True, False, True)):
        cfg = pick_config(m, n, k, scheme, group, torch.bfloat16, torch.device("cpu"), pairs=pairs)
        cases.append(compile_args(m, n, k, scheme, group, replace(cfg, words=words), gated))
    return cases


def main(argv: Optional[list[str]] = None) -> int:
    """Compile ``_quant_matmul`` for a GPU target without a GPU and count its loads (as ``compile_check``)."""
    import argparse
    import collections
    import json
    import re

    from membound.backends.triton.kernels.compile_check import compile_ptx

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    for label, kargs, options in compile_cases():
        ptx, shared = compile_ptx(_quant_matmul, kargs, args.arch, **options)
        loads = dict(collections.Counter(re.findall(r"ld\.global[\w.]*", ptx)))
        # the packed weight: 16-byte vectors (ld.global.v4.b32) or cp.async copies (tensor-core pipeline)
        r = dict(kernel="_quant_matmul", config=label, shared_bytes=shared, loads=loads,
                 cp_async=ptx.count("cp.async."), mma=len(re.findall(r"\b(?:wg)?mma\.", ptx)),
                 pdl_wait="griddepcontrol.wait" in ptx, i2f=len(re.findall(r"cvt\.rn\.f\d+\.[su]\d+", ptx)))
        r["vectorised"] = loads.get("ld.global.v4.b32", 0) + r["cp_async"] > 0
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print(f"{label:44s} shared {shared:6d} B  cp.async {r['cp_async']:3d}  mma {r['mma']:3d}  "
                  f"int->float {r['i2f']:4d}  loads {loads}", flush=True)
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
