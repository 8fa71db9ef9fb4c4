"""``moe``: the routed experts as two kernels (gate/up, down), on one of two paths, that read each active
expert's weights once.

A step of T tokens makes ``T * top_k`` (token, expert) pairs. The wrapper routes: on the decode path with
few pairs (``routes_in_kernels``), the router's logits in one launch and ``torch.topk`` over them
(``moe_route.router_topk``), and each expert kernel finds its own expert's pairs and their weights; else
the router linear, softmax and top-k in torch and the pairs sorted by expert on the device, with the
per-expert offsets (``moe_route.sorted_pairs``). Nothing is read back to the host, so a step can be
captured in a CUDA graph. Then, on the **decode** path (few pairs per expert):

- ``_moe_gate_up``: one program per (expert e, block of ``BLOCK_N`` rows of I). It walks e's pairs
  ``BLOCK_M`` (16) at a time, gathers their token rows of x, and multiplies them with its gate and up
  tiles (``tl.dot``; the padded rows of a decode step cost FLOPs, which are free when memory-bound),
  then stores ``act(gate, up)`` for those pairs (``silu(gate) * up``, or gpt-oss's clamped SwiGLU, each
  product's bias added first where the op has biases). A program of an expert nobody chose returns before
  loading anything: a decode token reads only its top_k experts' weights.
- ``_moe_down``: one program per (expert e, block of D rows of the down weight, K split): the same walk
  over e's pairs, ``h @ w_down[e].T`` (plus its bias) times the pair's routing weight, stored per pair in
  fp32. K (I, the long side) is split while the active experts' programs would leave SMs idle
  (``down_split``); the last program of a split sums its partials in split order.

``moe_experts`` / ``quant_moe_experts`` (a routing the graph computed: DeepSeek, GLM-4.5) skip the routing: their
weights and ids become the sorted pairs in one launch (``moe_route.given_pairs``), then the same kernels.

Each program re-streams its weight tile for every 16 pairs, so with many pairs per expert (prefill) the
walk reads the experts many times over, through 16-row MMAs. The **grouped** path is a grouped GEMM
instead: the sorted pairs are cut into blocks of 64 or 128 rows, each expert's pairs padded to whole
blocks (``_block_table``: each block's expert and first pair, torch ops on the device, no host sync), and
``_moe_grouped_gate_up`` / ``_moe_grouped_down`` run one program per (m-block, N block) over a grid of the
fixed upper bound ``cdiv(T * k, BLOCK_M) + E`` m-blocks (the blocks past the last real one return at
once). The m-blocks of one expert run side by side and share each weight tile through L2; tiles are
64/128 x 128 x 64, Hopper wgmma at bf16/fp16 (``GroupedConfig``, ``pick_grouped_config``). Same gather,
same epilogues and rounding as the decode kernels. :func:`moe_path` picks the path from
:func:`path_times`, a roofline price of both with shares measured on an H200 (the crossover there is
about 15 pairs per expert, T = 58 at Mixtral-8x7B);
``path=`` / ``configs=`` force one (tests, ``gpu/moe_prefill.sh``).

The combine (sum over a token's k pairs) and the cast: in the decode down kernel where it routes itself
(without a shared expert), the program that stores a token's last pair summing its k rows (``_combine``);
else torch ops on ``[T, D]``, with the optional shared expert (cuBLAS). Memory stays
O(weights + T * top_k * (I + D)): no weight is ever copied per token.
Weights may be views (HF's gate/up halves): rows must be contiguous.

``quant_moe`` runs the same kernels over quantized expert weights (``SCHEME``), dequantizing each
weight tile in registers, rounded to the activation dtype as the reference does, before the ``tl.dot``
(``_weight_tile``, on both paths): int8 and fp8 (e4m3 bytes) with per-channel scales loaded once per
program; int4 (two codes a byte, group-wise scale and offset) with K tiles no wider than a group, so each
row's (scale, offset) is one load per tile. Each m-block dequantizes its expert's tiles once. The int4
tile reads each byte for both its nibbles (slow, see ``_weight_tile``) unless ``INT4_HALVES``, where each
byte is read once and the tile split into x's even and odd columns (the default).

Float expert weights may have any strides (K-major views: fuse-moe passes them where ``[E, N, K]`` copies would not
fit the device; a K stride of 1 is specialised at the launch, the code of contiguous rows unchanged); packed
(quantized) rows must be contiguous. Falls back to the torch reference for dtypes other than fp16/bf16/fp32,
activations without a kernel, packed rows that are not contiguous, and CPU tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    MAX_COUNTERS,
    arrive_last,
    cdiv,
    check_out,
    fallback,
    launchable,
    note,
    reset_counter,
    sm_count,
    split_counters,
    unsupported_device,
    unsupported_dtype,
)
from membound.backends.triton.kernels.int4_pairs import int4_pairs, pairs_ptx
from membound.backends.triton.kernels.moe_route import fits, given_pairs, router_topk, sorted_pairs
from membound.ir.ops import get_op
from membound.ir.ops.moe import moe_extras, shared_expert
from membound.ir.ops.quant import QWEIGHT_DTYPE

BLOCK_M = 16  # the decode walk's pairs per tile: one tensor-core tile of rows (the grouped path: GroupedConfig)
# int4 tiles as even/odd column halves (_int4_halves: each byte loaded once, two tl.dot a tile, no shape manipulation;
# sm_90 PTX: the code bytes arrive by cp.async, where the byte-per-code form issues 32 scalar byte loads a tile): on by
# default since tests/backends/test_moe_kernel.py passed with it on an H200 (2026-12-02, sixth session) and the
# Mixtral-8x7B shape cut to 8 layers decoded int4 at 310.0 tok/s with it against 186.5 without
# (benches/results/moe-*session6-fused-routing-first.json, moe-*-8x7b-8l-session5.json). Two forms that loaded a
# tile's bytes as contiguous runs and interleaved the nibbles with shape ops (tl.permute + tl.reshape; tl.join +
# tl.reshape + tl.trans) passed the interpreter but gave wrong codes compiled for sm_90 under Triton 3.6
# (benches/results/gpu-tests-nvidia-h200-2026-12-02-session5-kernels.log) and were removed
INT4_HALVES = os.environ.get("MEMBOUND_MOE_INT4_HALVES", "1") == "1"  # the variable: GPU checks and A/B runs
# the halves tile dequantized two codes per 32-bit instruction straight into x's dtype (int4_pairs.py, as quant_matmul's
# int4 pairs path: 2 instructions a code against about 5 for the fp32 form and its rounding) at bf16/fp16. On by default
# since the MoE kernel tests passed with it on an H200 (2026-12-02, seventh session: 309 passed) and the Mixtral-8x7B
# shape cut to 8 layers decoded int4 at 394.0 tok/s with it against 300.2 without (b8: 1048.1 against 787.9;
# benches/results/moe-nvidia-h200-2026-12-02-session7-int4-pairs{0,1}.log)
INT4_PAIRS = os.environ.get("MEMBOUND_MOE_INT4_PAIRS", "1") == "1"
# the pairs form's decode tiles (BLOCK_N, and BLOCK_K up to one group): 64 x 128 for gate/up and down, swept on the
# H200 at the 8x7B layer (moe_decode_tiles.py --scheme int4, benches/results/moe_decode_tiles-nvidia-h200-2026-12-02-
# session7-int4-pairs.json): 215.9 us at T = 1 and 606.3 at T = 8 against 287.1 and 998.2 for 32 x 64
INT4_PAIRS_BLOCK_N, INT4_PAIRS_BLOCK_K = 64, 128
# a decode step's routing in the expert kernels and the combine in the down kernel's epilogue (0: the pairs sorted
# by moe_route.sorted_pairs and the combine in torch, as before; A/B runs). Taken where the down kernel's active
# programs fit in one wave at the occupancy its extra registers leave (FUSED_DOWN_PROGRAMS_PER_SM): on an H200 at
# the Mixtral-8x7B layer (benches/results/moe_decode_tiles-nvidia-h200-2026-12-02-session6-fused-routing-*.json)
# one moe op took 188.0 us fused against 206.6 at T = 1 (2 experts x 128 column blocks x split 2 = 512 programs),
# but 772.1 against 714.6 at T = 8 and 868.4 against 723.2 at T = 32 (1024 programs, unsplit): ptxas gives the
# fused down kernel 80-96 registers (sm_90; 54 unfused), 5 programs of 4 warps an SM, so 1024 programs took two
# waves where the unfused kernel's took one (its time 217 -> 316 and 379 us)
FUSED_ROUTING = os.environ.get("MEMBOUND_MOE_FUSED_ROUTING", "1") == "1"
# MEMBOUND_MOE_INPLACE_PAIRS: gate/up experts read in place as the even and odd columns of one K-major weight
# (gpt-oss's, where fuse-moe's [E, N, K] copies would not fit) loaded as one tile of adjacent columns, split in
# registers (_gate_up_step's PAIRED), instead of two stride-2 loads Triton cannot vectorise. On the H100 the stride-2
# in-place path ran gpt-oss-20b's shape (4 layers) at 740 tok/s against 1346 for the copies at batch 1 (session 22).
# Its sm_90 PTX (Triton 3.9 and 3.6) says why: a 2-byte ld.global per weight element, where the copies and the paired
# tiles stream 16-byte cp.async into shared memory (tests/backends/test_moe_kernel.py checks both). The paired load
# is the default on that evidence; its speed is untimed (gpu/session23b.sh). 0: the stride-2 loads (A/B runs)
INPLACE_PAIRS = os.environ.get("MEMBOUND_MOE_INPLACE_PAIRS", "1") == "1"
# MEMBOUND_MOE_DOWN_MAXNREG: the fused down kernel's register cap (0: none). At 64 ptxas fits it with 16-32 bytes
# spilled before the K loop and reloaded after it, and 8 programs of 4 warps share an SM instead of 5. On the H200 at
# the 8x7B layer (one moe op, CUDA-graph replay, 2026-12-02 seventh session, benches/results/moe_decode_tiles-nvidia-
# h200-2026-12-02-session7-maxnreg-{0,64}.json) the capped fused path took 188.9 / 701.6 / 732.2 us at T = 1 / 8 / 32
# against 208.5 / 726.9 / 734.8 for the uncapped rule (fused at T = 1, sorted in torch at 8 and 32)
DOWN_MAXNREG = int(os.environ.get("MEMBOUND_MOE_DOWN_MAXNREG", "64"))
# programs of the fused down kernel an SM holds: 65536 registers over 128 threads x the cap, or 5 at ptxas's 80-96
FUSED_DOWN_PROGRAMS_PER_SM = 65536 // (128 * DOWN_MAXNREG) if DOWN_MAXNREG > 0 else 5


# SCHEME: how expert weights are stored (module constants a @triton.jit body may read must be constexpr)
NONE: tl.constexpr = tl.constexpr(0)
INT8: tl.constexpr = tl.constexpr(1)
INT4: tl.constexpr = tl.constexpr(2)
FP8: tl.constexpr = tl.constexpr(3)
SCHEME_CODE = {"int8": INT8.value, "int4": INT4.value, "fp8": FP8.value}
_SCHEME_NAME = {code: name for name, code in SCHEME_CODE.items()}
# ACT: the experts' activation (membound.ir.ops.moe.gated_act)
SILU: tl.constexpr = tl.constexpr(0)
CLAMPED_SWIGLU: tl.constexpr = tl.constexpr(1)
ACT_CODE = {"silu": SILU.value, "clamped_swiglu": CLAMPED_SWIGLU.value}


@triton.jit
def _row_scales(s_ptr, e, ns, n_ok, stride_se, SCHEME: tl.constexpr):
    """int8/fp8: the per-channel scales of this program's rows ``[BLOCK_N]`` in fp32 (else unused zeros)."""
    if SCHEME == INT8 or SCHEME == FP8:
        return tl.load(s_ptr + e * stride_se + ns, mask=n_ok, other=0.0).to(tl.float32)
    return tl.zeros(ns.shape, dtype=tl.float32)


@triton.jit
def _weight_tile(w_ptr, s_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_we, stride_wn, stride_wk, stride_se, stride_sn,
                 row_scale, SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_K, BLOCK_N]`` tile of ``W[e].T`` at columns ``ks`` (``k0 .. k0 + BLOCK_K``; a stored row is
    ``KW`` elements wide: K, or int4's ceil(K / 2) bytes, a size Triton sees divisible by 16 at real shapes): the
    float weights as stored (``NONE``), or dequantized in fp32 (the caller rounds to the activation dtype,
    as the reference does).

    int4: codes ``k`` of a row are nibble ``k % 2`` of byte ``k // 2``, indexed so, each byte loaded for both
    its codes, scattered: correct but slow (186.5 tok/s at the Mixtral-8x7B shape on an H200 against 498.2 for
    bf16); the kernels take it only where the halves tile cannot (``RUNS`` 0: fp32 x at K tiles under 32, or
    ``MEMBOUND_MOE_INT4_HALVES=0``); ``RUNS`` 2-4 go to :func:`_int4_halves` / :func:`_dot_int4_halves`.
    The tile lies inside one group (``BLOCK_K <= GROUP``, both powers of two, ``k0`` a multiple of
    ``BLOCK_K``), so each row's (scale, offset) is loaded once per tile. fp8: the bytes reinterpreted as e4m3."""
    # one return at the end: compiled Triton rejects returns of different dtypes in one function, even
    # in branches a constexpr rules out (the interpreter does not)
    mask = k_ok[:, None] & n_ok[None, :]
    rows = w_ptr + e * stride_we + ns[None, :] * stride_wn
    if SCHEME == INT4:
        raw = tl.load(rows + ks[:, None] // 2, mask=mask, other=0).to(tl.int32)
        code = ((raw >> ((ks[:, None] % 2) * 4)) & 0xF).to(tl.float32)
        pair = s_ptr + e * stride_se + ns * stride_sn + (k0 // GROUP) * 2
        scale = tl.load(pair, mask=n_ok, other=0.0).to(tl.float32)
        offset = tl.load(pair + 1, mask=n_ok, other=0.0).to(tl.float32)
        w = tl.where(mask, code * scale[None, :] + offset[None, :], 0.0)
    else:
        # float weights at any K stride (1 at the launch: specialised away; K-major views, fuse-moe's where copies
        # would not fit the device); packed codes are always K-contiguous
        w = tl.load(rows + ks[:, None] * stride_wk, mask=mask, other=0)
        if SCHEME == FP8:  # passed as its bytes (u8)
            w = w.to(tl.float8e4nv, bitcast=True)
        if SCHEME != NONE:
            w = w.to(tl.float32) * row_scale[None, :]
    return w


@triton.jit
def _int4_bytes(w_ptr, s_ptr, e, ns, n_ok, k0, KW, stride_we, stride_wn, stride_se, stride_sn, GROUP: tl.constexpr,
                BLOCK_K: tl.constexpr):
    """The halves tile's inputs: byte ``k0 / 2 + j`` of each row (``[BLOCK_K / 2, BLOCK_N]``, the bytes of a row
    contiguous along the first axis; columns ``k0 + 2j`` and ``k0 + 2j + 1`` in its low and high nibble) and the
    rows' group scale and offset (``[1, BLOCK_N]``, as stored). Masked at the row's end (KW bytes), not at a
    split's end: a mask Triton can prove constant over 16-byte runs lets it copy the bytes with cp.async (sm_90
    PTX: 14 cp.async, no scalar byte load; masked at the split's end it issued 16 scalar byte loads). The tile
    lies inside one group."""
    js = tl.arange(0, BLOCK_K // 2)
    rows = w_ptr + e * stride_we + k0 // 2 + ns[None, :] * stride_wn
    raw = tl.load(rows + js[:, None], mask=n_ok[None, :] & (k0 // 2 + js < KW)[:, None], other=0)
    pair = s_ptr + e * stride_se + ns * stride_sn + (k0 // GROUP) * 2
    scale = tl.load(pair, mask=n_ok, other=0.0)[None, :]
    offset = tl.load(pair + 1, mask=n_ok, other=0.0)[None, :]
    return raw, scale, offset


@triton.jit
def _int4_halves(w_ptr, s_ptr, e, ns, n_ok, k0, k_bound, KW, stride_we, stride_wn, stride_se, stride_sn,
                 GROUP: tl.constexpr, BLOCK_K: tl.constexpr):
    """int4, ``HALVES`` (``RUNS == 2``): the ``[BLOCK_K / 2, BLOCK_N]`` tiles of ``W[e].T``'s even and odd columns
    ``k0 + 2j`` and ``k0 + 2j + 1`` (the low and high nibbles of byte ``k0 / 2 + j`` of each row, so each byte is
    loaded once, the bytes of a row contiguous along the tile's first axis), dequantized in fp32, zero from
    ``k_bound`` on. No shape manipulation: the caller multiplies them with x's even and odd columns (two
    ``tl.dot``), as quant_matmul's int4 pairs path splits its tiles. The tile lies inside one group."""
    ke = k0 + 2 * tl.arange(0, BLOCK_K // 2)  # byte k0 / 2 + j of the row holds columns ke, ke + 1
    # bytes past k_bound (a split's end) are in the row (_int4_bytes): zeroed here and in x's halves
    raw, scale, offset = _int4_bytes(w_ptr, s_ptr, e, ns, n_ok, k0, KW, stride_we, stride_wn, stride_se, stride_sn,
                                     GROUP, BLOCK_K)
    scale = scale.to(tl.float32)
    offset = offset.to(tl.float32)
    lo = tl.where(n_ok[None, :] & (ke < k_bound)[:, None], (raw & 0xF).to(tl.float32) * scale + offset, 0.0)
    hi = tl.where(n_ok[None, :] & (ke + 1 < k_bound)[:, None], (raw >> 4).to(tl.float32) * scale + offset,
                  0.0)
    return lo, hi


@triton.jit
def _x_halves(a_rows, a_ok, k0, k_bound, BLOCK_K: tl.constexpr):
    """The ``[BLOCK_M, BLOCK_K / 2]`` even and odd columns ``k0 + 2j (+ 1)`` of the rows ``a_rows`` (pointers
    ``[BLOCK_M, 1]``; ``a_ok`` their mask), zero from ``k_bound`` on: the other operand of :func:`_int4_halves`."""
    ke = k0 + 2 * tl.arange(0, BLOCK_K // 2)
    xe = tl.load(a_rows + ke[None, :], mask=a_ok & (ke < k_bound)[None, :], other=0.0)
    xo = tl.load(a_rows + ke[None, :] + 1, mask=a_ok & (ke + 1 < k_bound)[None, :], other=0.0)
    return xe, xo


@triton.jit
def _dot_int4_halves(acc, xe, xo, w_ptr, s_ptr, e, ns, n_ok, k0, k_bound, KW, stride_we, stride_wn, stride_se,
                     stride_sn, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                     RUNS: tl.constexpr = 2):
    """``acc`` plus this K tile's product of x (its halves ``xe``, ``xo``) with the int4 weight tile, each half
    dequantized and rounded to x's dtype as the reference rounds the weight. ``RUNS`` 2: in fp32
    (:func:`_int4_halves`); 3 and 4 (bf16/fp16 x): two codes per 32-bit instruction straight into x's dtype,
    ``int4_pairs.int4_pairs`` with ``PAIRS = RUNS - 2`` (1: its PTX, 2: its Triton twin for the interpreter),
    as quant_matmul's pairs path. The pairs form leaves the bytes past ``k_bound`` (zeros past the row's end,
    the next split's weights before it) undimmed: x's halves are zero there, and every such weight is finite."""
    if RUNS >= 3:
        raw, scale, offset = _int4_bytes(w_ptr, s_ptr, e, ns, n_ok, k0, KW, stride_we, stride_wn, stride_se,
                                         stride_sn, GROUP, BLOCK_K)
        lo, hi = int4_pairs(raw, scale.to(xe.dtype), offset.to(xe.dtype), RUNS - 2)
    else:
        lo, hi = _int4_halves(w_ptr, s_ptr, e, ns, n_ok, k0, k_bound, KW, stride_we, stride_wn, stride_se,
                              stride_sn, GROUP, BLOCK_K)
    acc = tl.dot(xe, lo.to(xe.dtype), acc, input_precision=INPUT_PRECISION)
    return tl.dot(xo, hi.to(xo.dtype), acc, input_precision=INPUT_PRECISION)


@triton.jit
def _gate_up_step(acc_g, acc_u, x_rows, m_ok, k0, K, KW, wg_ptr, wu_ptr, sg_ptr, su_ptr, e, ns, n_ok, sg, su,
                  stride_ge, stride_gn, stride_gk, stride_ue, stride_un, stride_uk, stride_sg, stride_sgn, stride_su,
                  stride_sun, SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, RUNS: tl.constexpr,
                  INPUT_PRECISION: tl.constexpr, n0=0, N=0, BLOCK_N: tl.constexpr = 16, PAIRED: tl.constexpr = False):
    """One K tile of gate and up, for both expert kernels (decode walk, grouped): the rows ``x_rows`` (pointers
    ``[BLOCK_M, 1]``, ``m_ok`` their mask) times the ``[BLOCK_K, BLOCK_N]`` tiles of ``W.T`` (each row of W is
    contiguous in K), dequantized in registers and rounded to x's dtype; int4 halves: two dots each.

    ``PAIRED`` (float weights only): gate and up are the even and odd columns of one K-major ``[K, 2N]`` weight read
    in place (gpt-oss's, where fuse-moe's copies would not fit): one load of the ``2 * BLOCK_N`` adjacent columns
    from ``2 * n0`` (contiguous, so vectorised, where the two stride-2 loads are not), split into the two tiles."""
    if SCHEME == INT4 and RUNS >= 2:
        xe, xo = _x_halves(x_rows, m_ok[:, None], k0, K, BLOCK_K)
        acc_g = _dot_int4_halves(acc_g, xe, xo, wg_ptr, sg_ptr, e, ns, n_ok, k0, K, KW, stride_ge, stride_gn,
                                 stride_sg, stride_sgn, GROUP, BLOCK_K, INPUT_PRECISION, RUNS)
        acc_u = _dot_int4_halves(acc_u, xe, xo, wu_ptr, su_ptr, e, ns, n_ok, k0, K, KW, stride_ue, stride_un,
                                 stride_su, stride_sun, GROUP, BLOCK_K, INPUT_PRECISION, RUNS)
    else:
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < K
        x = tl.load(x_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        if PAIRED:  # (float weights: the launcher pairs only those)
            cols = 2 * n0 + tl.arange(0, 2 * BLOCK_N)
            both = tl.load(wg_ptr + e * stride_ge + cols[None, :] + ks[:, None] * stride_gk,
                           mask=k_ok[:, None] & (cols < 2 * N)[None, :], other=0)
            wg, wu = tl.split(tl.reshape(both, (BLOCK_K, BLOCK_N, 2)))
            wg, wu = wg.to(x.dtype), wu.to(x.dtype)
        else:
            wg = _weight_tile(wg_ptr, sg_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_ge, stride_gn, stride_gk,
                              stride_sg, stride_sgn, sg, SCHEME, GROUP, BLOCK_K).to(x.dtype)
            wu = _weight_tile(wu_ptr, su_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_ue, stride_un, stride_uk,
                              stride_su, stride_sun, su, SCHEME, GROUP, BLOCK_K).to(x.dtype)
        acc_g = tl.dot(x, wg, acc_g, input_precision=INPUT_PRECISION)
        acc_u = tl.dot(x, wu, acc_u, input_precision=INPUT_PRECISION)
    return acc_g, acc_u


@triton.jit
def _down_step(acc, h_rows, m_ok, k0, k_bound, KW, wd_ptr, sd_ptr, e, ns, n_ok, sd, stride_de, stride_dn, stride_dk,
               stride_sd, stride_sdn, SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr,
               RUNS: tl.constexpr, INPUT_PRECISION: tl.constexpr):
    """One K tile of the down projection (as :func:`_gate_up_step`, one weight, columns up to ``k_bound``)."""
    if SCHEME == INT4 and RUNS >= 2:
        he, ho = _x_halves(h_rows, m_ok[:, None], k0, k_bound, BLOCK_K)
        acc = _dot_int4_halves(acc, he, ho, wd_ptr, sd_ptr, e, ns, n_ok, k0, k_bound, KW, stride_de, stride_dn,
                               stride_sd, stride_sdn, GROUP, BLOCK_K, INPUT_PRECISION, RUNS)
    else:
        ks = k0 + tl.arange(0, BLOCK_K)
        k_ok = ks < k_bound
        h = tl.load(h_rows + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
        w = _weight_tile(wd_ptr, sd_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_de, stride_dn, stride_dk, stride_sd,
                         stride_sdn, sd, SCHEME, GROUP, BLOCK_K).to(h.dtype)
        acc = tl.dot(h, w, acc, input_precision=INPUT_PRECISION)
    return acc


@triton.jit
def _expert_span(idx_ptr, offs_ptr, e, P, ROUTED: tl.constexpr, BLOCK_P: tl.constexpr):
    """Expert ``e``'s pairs: ``(start, end, mine, rank)``. ``ROUTED``: from the top-k's experts ``idx [T, k]``
    (``P = T * k`` pairs, pair ``t * k + j``): ``mine`` marks e's pairs, ``rank`` numbers them in pair order,
    ``0 .. end`` counts them (no sorted order exists: each program finds its expert's pairs itself). Else from
    the pairs sorted by expert and the offsets (``moe_route.sorted_pairs``): ``start .. end`` in that order."""
    ps = tl.arange(0, BLOCK_P)
    if ROUTED:
        mine = tl.load(idx_ptr + ps, mask=ps < P, other=-1) == e
        rank = tl.cumsum(mine.to(tl.int32), 0) - 1
        end = tl.sum(mine.to(tl.int64), 0)
        start = end * 0
    else:
        start = tl.load(offs_ptr + e)
        end = tl.load(offs_ptr + e + 1)
        mine = ps < 0
        rank = ps
    return start, end, mine, rank


@triton.jit
def _chunk_pairs(m0, end, order_ptr, mine, rank, ROUTED: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_P: tl.constexpr):
    """The pairs (``t * k + j``) of positions ``m0 .. m0 + BLOCK_M`` of an expert's walk (:func:`_expert_span`),
    and which of them exist. ``ROUTED``: position m is the pair of rank m among the expert's (a
    ``[BLOCK_M, BLOCK_P]`` comparison, P <= ``moe_route.MAX_PAIRS``)."""
    ms = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
    m_ok = ms < end
    if ROUTED:
        ps = tl.arange(0, BLOCK_P)
        pick = mine[None, :] & (rank[None, :] == ms[:, None])
        pair = tl.sum(tl.where(pick, ps[None, :], 0), axis=1).to(tl.int64)
    else:
        pair = tl.load(order_ptr + ms, mask=m_ok, other=0).to(tl.int64)
    return pair, m_ok


@triton.jit
def _pair_weights(pair, m_ok, rw_ptr, logit_ptr, top_ptr, E, TOP_K, ROUTED: tl.constexpr,
                  SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_E: tl.constexpr):
    """The routing weight of each pair, fp32. ``ROUTED``: from the router's fp32 logits ``[T, E]`` and the top-k's
    values ``top [T, k]`` (the chosen logits, in any order), as ``membound.ir.ops.moe.route`` computes it:
    softmax over all E then the chosen (``SOFTMAX_FIRST``) or softmax over the chosen; then divided by their sum
    (``RENORM``). Else loaded from ``rw`` (``sorted_pairs``)."""
    if ROUTED:
        tok = pair // TOP_K
        js = tl.arange(0, BLOCK_KK)
        j_ok = m_ok[:, None] & (js < TOP_K)[None, :]
        tops = tl.load(top_ptr + tok[:, None] * TOP_K + js[None, :], mask=j_ok, other=float("-inf"))
        mx = tl.where(m_ok, tl.max(tops, axis=1), 0.0)  # the row's largest logit is always chosen
        own = tl.load(top_ptr + pair, mask=m_ok, other=0.0)
        if SOFTMAX_FIRST:
            es = tl.arange(0, BLOCK_E)
            logits = tl.load(logit_ptr + tok[:, None] * E + es[None, :], mask=m_ok[:, None] & (es < E)[None, :],
                             other=float("-inf"))
            denom = tl.where(m_ok, tl.sum(tl.exp(logits - mx[:, None]), axis=1), 1.0)
        else:
            denom = tl.where(m_ok, tl.sum(tl.where(j_ok, tl.exp(tops - mx[:, None]), 0.0), axis=1), 1.0)
        w = tl.exp(own - mx) / denom
        if RENORM:
            chosen = tl.where(j_ok, tl.exp(tops - mx[:, None]) / denom[:, None], 0.0)
            w = w / tl.where(m_ok, tl.sum(chosen, axis=1), 1.0)
        w = tl.where(m_ok, w, 0.0)
    else:
        w = tl.load(rw_ptr + pair, mask=m_ok, other=0.0)
    return w


@triton.jit
def _combine(y_ptr, out_ptr, cnt_ptr, pair, m_ok, ns, n_ok, pid_n, N_BLOCKS, TOP_K, stride_y, stride_o,
             BLOCK_KK: tl.constexpr):
    """After this program stored its pairs' weighted rows ``y`` (columns ``ns``): count each pair in on its
    token's counter for this column block; the program that brings a token's count to ``TOP_K`` sums the
    token's k rows in slot order (fp32, as ``y.view(T, k, D).sum(1)``), stores the sum in the output's dtype
    and sets the counter back to 0 (the counters are ``_launch.split_counters``'s: each launch leaves them
    zeroed). A token's k pairs have k different experts, so one program never holds two pairs of a token."""
    tok = pair // TOP_K
    count = cnt_ptr + tok * N_BLOCKS + pid_n
    tl.debug_barrier()  # every thread's stores of y before the counters move (released by the atomics)
    last = m_ok & (tl.atomic_add(count, 1, mask=m_ok, sem="acq_rel", scope="gpu") == TOP_K - 1)
    tl.debug_barrier()
    ok = last[:, None] & n_ok[None, :]
    acc = tl.zeros((pair.shape[0], ns.shape[0]), dtype=tl.float32)
    for j in tl.static_range(BLOCK_KK):
        slot = tok * TOP_K + j
        acc += tl.load(y_ptr + slot[:, None] * stride_y + ns[None, :], mask=ok & (slot < tok * TOP_K + TOP_K)[:, None],
                       other=0.0, cache_modifier=".cg")  # from L2: other programs' stores
    tl.store(out_ptr + tok[:, None] * stride_o + ns[None, :], acc.to(out_ptr.dtype.element_ty), mask=ok)
    tl.atomic_xchg(count, 0, mask=last, sem="relaxed", scope="gpu")


@triton.jit
def _moe_gate_up(
    x_ptr, wg_ptr, wu_ptr, sg_ptr, su_ptr, h_ptr, idx_ptr, order_ptr, offs_ptr, bg_ptr, bu_ptr,
    P, I, K, KW, TOP_K,
    stride_x, stride_ge, stride_gn, stride_ue, stride_un, stride_sg, stride_sgn, stride_su, stride_sun, stride_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr, ROUTED: tl.constexpr, BLOCK_P: tl.constexpr,
    HAS_BIAS: tl.constexpr = False, ACT: tl.constexpr = 0, ALPHA: tl.constexpr = 1.0, LIMIT: tl.constexpr = 0.0,
    stride_gk=1, stride_uk=1, PAIRED: tl.constexpr = False,
):
    e = tl.program_id(0).to(tl.int64)  # E * I * K weights pass 2**31 elements in big MoEs
    pid_n = tl.program_id(1)
    start, end, mine, rank = _expert_span(idx_ptr, offs_ptr, e, P, ROUTED, BLOCK_P)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < I
    sg = _row_scales(sg_ptr, e, ns, n_ok, stride_sg, SCHEME)  # int8/fp8: loaded once per program
    su = _row_scales(su_ptr, e, ns, n_ok, stride_su, SCHEME)
    # an expert nobody chose: nothing to load (start == end skips the loop)
    for m0 in range(start, end, BLOCK_M):
        pair, m_ok = _chunk_pairs(m0, end, order_ptr, mine, rank, ROUTED, BLOCK_M, BLOCK_P)
        tok = pair // TOP_K
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            acc_g, acc_u = _gate_up_step(acc_g, acc_u, x_ptr + tok[:, None] * stride_x, m_ok, k0, K, KW, wg_ptr, wu_ptr,
                                         sg_ptr, su_ptr, e, ns, n_ok, sg, su, stride_ge, stride_gn, stride_gk,
                                         stride_ue, stride_un, stride_uk, stride_sg, stride_sgn, stride_su, stride_sun,
                                         SCHEME, GROUP, BLOCK_K, RUNS, INPUT_PRECISION, pid_n * BLOCK_N, I, BLOCK_N,
                                         PAIRED)
        _act_store(acc_g, acc_u, h_ptr, pair, m_ok, ns, n_ok, stride_h, bg_ptr, bu_ptr, e * I, HAS_BIAS, ACT, ALPHA,
                   LIMIT)  # hidden rows by pair


@triton.jit
def _moe_down(
    h_ptr, wd_ptr, sd_ptr, y_ptr, idx_ptr, order_ptr, offs_ptr, rw_ptr, logit_ptr, top_ptr, part_ptr, lock_ptr,
    out_ptr, bd_ptr,
    P, E, TOP_K, D, I, KW, K_PER_SPLIT, COUNT_BASE,
    stride_h, stride_de, stride_dn, stride_sd, stride_sdn, stride_y, stride_split, stride_o,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr, SPLIT_K: tl.constexpr,
    ROUTED: tl.constexpr, SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr, COMBINE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_KK: tl.constexpr, BLOCK_E: tl.constexpr, HAS_BIAS: tl.constexpr = False,
    stride_dk=1,
):
    e = tl.program_id(0).to(tl.int64)  # E * I * K weights pass 2**31 elements in big MoEs
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    start, end, mine, rank = _expert_span(idx_ptr, offs_ptr, e, P, ROUTED, BLOCK_P)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < D
    k_start = pid_k * K_PER_SPLIT
    k_end = tl.minimum(k_start + K_PER_SPLIT, I)
    sd = _row_scales(sd_ptr, e, ns, n_ok, stride_sd, SCHEME)
    for m0 in range(start, end, BLOCK_M):
        pair, m_ok = _chunk_pairs(m0, end, order_ptr, mine, rank, ROUTED, BLOCK_M, BLOCK_P)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(k_start, k_end, BLOCK_K):
            acc = _down_step(acc, h_ptr + pair[:, None] * stride_h, m_ok, k0, k_end, KW, wd_ptr, sd_ptr, e, ns, n_ok,
                             sd, stride_de, stride_dn, stride_dk, stride_sd, stride_sdn, SCHEME, GROUP, BLOCK_K, RUNS,
                             INPUT_PRECISION)
        if SPLIT_K > 1:
            # an fp32 partial per pair; the last of the SPLIT_K programs of (e, pid_n) sums them in split order
            # (deterministic) for each chunk it walks (_launch.arrive_last, as linear's split-K)
            tl.store(part_ptr + pid_k * stride_split + pair[:, None] * D + ns[None, :], acc,
                     mask=m_ok[:, None] & n_ok[None, :])
        else:
            rw = _pair_weights(pair, m_ok, rw_ptr, logit_ptr, top_ptr, E, TOP_K, ROUTED, SOFTMAX_FIRST, RENORM,
                               BLOCK_KK, BLOCK_E)
            _down_store(acc, h_ptr, y_ptr, rw, pair, m_ok, ns, n_ok, stride_y, bd_ptr, e * D, HAS_BIAS)
            if COMBINE:
                _combine(y_ptr, out_ptr, lock_ptr + COUNT_BASE, pair, m_ok, ns, n_ok, pid_n, tl.num_programs(1),
                         TOP_K, stride_y, stride_o, BLOCK_KK)
    if SPLIT_K > 1:
        if end > start:  # an expert nobody chose: no partials, no arrival
            if arrive_last(lock_ptr, e * tl.num_programs(1) + pid_n, SPLIT_K):
                for m0 in range(start, end, BLOCK_M):
                    pair, m_ok = _chunk_pairs(m0, end, order_ptr, mine, rank, ROUTED, BLOCK_M, BLOCK_P)
                    tile = pair[:, None] * D + ns[None, :]
                    tile_ok = m_ok[:, None] & n_ok[None, :]
                    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
                    for sp in tl.static_range(SPLIT_K):
                        acc += tl.load(part_ptr + sp * stride_split + tile, mask=tile_ok, other=0.0,
                                       cache_modifier=".cg")  # from L2: the other programs' stores
                    rw = _pair_weights(pair, m_ok, rw_ptr, logit_ptr, top_ptr, E, TOP_K, ROUTED, SOFTMAX_FIRST,
                                       RENORM, BLOCK_KK, BLOCK_E)
                    _down_store(acc, h_ptr, y_ptr, rw, pair, m_ok, ns, n_ok, stride_y, bd_ptr, e * D, HAS_BIAS)
                    if COMBINE:
                        _combine(y_ptr, out_ptr, lock_ptr + COUNT_BASE, pair, m_ok, ns, n_ok, pid_n,
                                 tl.num_programs(1), TOP_K, stride_y, stride_o, BLOCK_KK)
                reset_counter(lock_ptr, e * tl.num_programs(1) + pid_n)


@triton.jit
def _rounded(v, dt):
    """``v`` (fp32) rounded to ``dt`` and back: one operation of the reference, computed in the activation dtype."""
    return v.to(dt).to(tl.float32)


@triton.jit
def _act_store(acc_g, acc_u, h_ptr, ms, m_ok, ns, n_ok, stride_h, bg_ptr, bu_ptr, bias_row, HAS_BIAS: tl.constexpr,
               ACT: tl.constexpr, ALPHA: tl.constexpr, LIMIT: tl.constexpr):
    """The activation of the pairs' gate and up rows (``ACT``: ``silu(g') * u'``, or the clamped SwiGLU
    ``g' * sigmoid(ALPHA * g') * (u' + 1)``; ``g' = min(g, L)``, ``u' = clamp(u, -L, L)``, no clamp where ``LIMIT`` is
    0), stored in the
    activation dtype (both gate/up kernels), rounded like the reference: each product in the activation dtype,
    its bias added (``HAS_BIAS``: the expert's bias row starts at ``bias_row``, contiguous), then each operation
    of the activation."""
    dt = h_ptr.dtype.element_ty
    g = _rounded(acc_g, dt)
    u = _rounded(acc_u, dt)
    if HAS_BIAS:
        g = _rounded(g + tl.load(bg_ptr + bias_row + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :], dt)
        u = _rounded(u + tl.load(bu_ptr + bias_row + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :], dt)
    if LIMIT > 0:
        g = tl.minimum(g, LIMIT)
        u = tl.minimum(tl.maximum(u, -LIMIT), LIMIT)
    if ACT == SILU:
        act = _rounded(g / (1.0 + tl.exp(-g)), dt) * u
    else:
        sig = _rounded(1.0 / (1.0 + tl.exp(-_rounded(g * ALPHA, dt))), dt)
        act = _rounded(u + 1.0, dt) * _rounded(g * sig, dt)
    tl.store(h_ptr + ms[:, None] * stride_h + ns[None, :], act.to(dt), mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _down_store(acc, h_ptr, y_ptr, rw, pair, m_ok, ns, n_ok, stride_y, bd_ptr, bias_row, HAS_BIAS: tl.constexpr):
    """The expert's output rounded to the activation dtype (its bias added and the sum rounded again:
    ``HAS_BIAS``, the expert's row at ``bias_row``), times the pairs' routing weights ``rw``, stored in fp32."""
    y = _rounded(acc, h_ptr.dtype.element_ty)
    if HAS_BIAS:
        y = _rounded(y + tl.load(bd_ptr + bias_row + ns, mask=n_ok, other=0.0).to(tl.float32)[None, :],
                     h_ptr.dtype.element_ty)
    tl.store(y_ptr + pair[:, None] * stride_y + ns[None, :], y * rw[:, None], mask=m_ok[:, None] & n_ok[None, :])


# ---- prefill: the grouped GEMM over (m-block, n-block) work items -------------------------------------------
#
# The pairs sorted by expert are cut into blocks of BLOCK_M rows, each expert's pairs padded to whole blocks
# (an expert's last block is partial; an expert nobody chose has none). _block_table lists, for each block, its
# expert and its first sorted position, computed on the device; the grid is the fixed upper bound
# cdiv(T * k, BLOCK_M) + E blocks times the N blocks (no host sync), and a block past the last real one has
# expert E and returns at once. The launch order (_tile) walks the m-blocks fastest, so the m-blocks of one
# expert and one N block run side by side and share their weight tile through L2; by default in one band of all
# m-blocks (each weight tile read once from HBM, the gathered rows re-read from L2 per N block: T * k * D
# elements for gate/up, T * k * I for down, which outgrows L2 at long prefills: GroupedConfig.group_m cuts the
# m-blocks into bands whose rows stay in L2, at the price of re-reading the weights of an expert cut by a band
# edge).


@triton.jit
def _tile(pid, M_BLOCKS, N_BLOCKS, GROUP_M):
    """(m-block, N block) of program ``pid`` on the 1-D grid: bands of ``GROUP_M`` consecutive m-blocks (one or
    two experts' rows), each swept over all N blocks with its m-blocks fastest. The m-blocks of a band share
    each weight tile through L2; the band's rows (x, or the hidden rows of down) stay in L2 across its N
    blocks. ``GROUP_M = M_BLOCKS``: one band, every N block visited by all m-blocks in turn."""
    per_band = GROUP_M * N_BLOCKS
    first = (pid // per_band) * GROUP_M
    rows = tl.minimum(M_BLOCKS - first, GROUP_M)
    return first + (pid % per_band) % rows, (pid % per_band) // rows


@triton.jit(do_not_specialize=["M_BLOCKS", "GROUP_M"])  # they follow T: one compile for all
def _moe_grouped_gate_up(
    x_ptr, wg_ptr, wu_ptr, sg_ptr, su_ptr, h_ptr, pair_ptr, offs_ptr, blk_expert_ptr, blk_start_ptr, bg_ptr, bu_ptr,
    E, M_BLOCKS, GROUP_M, I, K, KW, TOP_K,
    stride_x, stride_ge, stride_gn, stride_ue, stride_un, stride_sg, stride_sgn, stride_su, stride_sun, stride_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr,
    HAS_BIAS: tl.constexpr = False, ACT: tl.constexpr = 0, ALPHA: tl.constexpr = 1.0, LIMIT: tl.constexpr = 0.0,
    stride_gk=1, stride_uk=1, PAIRED: tl.constexpr = False,
):
    pid_m, pid_n = _tile(tl.program_id(0), M_BLOCKS, tl.cdiv(I, BLOCK_N), GROUP_M)
    e = tl.load(blk_expert_ptr + pid_m).to(tl.int64)  # 64-bit: E * I * K weights pass 2**31 elements
    if e >= E:  # past the last real block: the grid is an upper bound
        return
    start = tl.load(blk_start_ptr + pid_m)  # this block's first sorted pair
    end = tl.load(offs_ptr + e + 1)  # one past e's last pair
    ms = start + tl.arange(0, BLOCK_M).to(tl.int64)
    m_ok = ms < end
    pair = tl.load(pair_ptr + ms, mask=m_ok, other=0).to(tl.int64)  # sorted position -> pair t * TOP_K + j
    tok = pair // TOP_K  # x rows gathered by token, in the loop
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < I
    sg = _row_scales(sg_ptr, e, ns, n_ok, stride_sg, SCHEME)  # int8/fp8 per-channel scales, once a program
    su = _row_scales(su_ptr, e, ns, n_ok, stride_su, SCHEME)
    # gate and up share each x tile: two accumulators, one pass over K
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        acc_g, acc_u = _gate_up_step(acc_g, acc_u, x_ptr + tok[:, None] * stride_x, m_ok, k0, K, KW, wg_ptr, wu_ptr,
                                     sg_ptr, su_ptr, e, ns, n_ok, sg, su, stride_ge, stride_gn, stride_gk, stride_ue,
                                     stride_un, stride_uk, stride_sg, stride_sgn, stride_su, stride_sun, SCHEME, GROUP,
                                     BLOCK_K, RUNS, INPUT_PRECISION, pid_n * BLOCK_N, I, BLOCK_N, PAIRED)
    _act_store(acc_g, acc_u, h_ptr, ms, m_ok, ns, n_ok, stride_h, bg_ptr, bu_ptr, e * I, HAS_BIAS, ACT, ALPHA, LIMIT)


@triton.jit(do_not_specialize=["M_BLOCKS", "GROUP_M"])  # they follow T: one compile for all
def _moe_grouped_down(
    h_ptr, wd_ptr, sd_ptr, y_ptr, pair_ptr, weight_ptr, offs_ptr, blk_expert_ptr, blk_start_ptr, bd_ptr,
    E, M_BLOCKS, GROUP_M, D, I, KW,
    stride_h, stride_de, stride_dn, stride_sd, stride_sdn, stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr, HAS_BIAS: tl.constexpr = False,
    stride_dk=1,
):
    pid_m, pid_n = _tile(tl.program_id(0), M_BLOCKS, tl.cdiv(D, BLOCK_N), GROUP_M)
    e = tl.load(blk_expert_ptr + pid_m).to(tl.int64)
    if e >= E:
        return
    start = tl.load(blk_start_ptr + pid_m)
    end = tl.load(offs_ptr + e + 1)
    ms = start + tl.arange(0, BLOCK_M).to(tl.int64)  # 64-bit: pairs * I passes 2**31 at long prefills
    m_ok = ms < end
    pair = tl.load(pair_ptr + ms, mask=m_ok, other=0).to(tl.int64)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < D
    sd = _row_scales(sd_ptr, e, ns, n_ok, stride_sd, SCHEME)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, I, BLOCK_K):
        acc = _down_step(acc, h_ptr + ms[:, None] * stride_h, m_ok, k0, I, KW, wd_ptr, sd_ptr, e, ns, n_ok, sd,
                         stride_de, stride_dn, stride_dk, stride_sd, stride_sdn, SCHEME, GROUP, BLOCK_K, RUNS,
                         INPUT_PRECISION)
    rw = tl.load(weight_ptr + pair, mask=m_ok, other=0.0)
    _down_store(acc, h_ptr, y_ptr, rw, pair, m_ok, ns, n_ok, stride_y, bd_ptr, e * D, HAS_BIAS)


# decode's down projection splits K (I, the long side: 14336 at Mixtral-8x7B) while the programs of the experts a
# step is expected to read would number fewer than this many per SM. At batch 1 a top-2 step reads 2 experts:
# 2 x 64 programs of 64 rows each streamed 1.8 MB alone on an H200 (one program an SM, the down kernel at 49% of
# read bandwidth against gate/up's 97%, benches/results/moe_decode_tiles-nvidia-h200-2026-12-02.json)
DOWN_PROGRAMS_PER_SM = 4
DECODE_BLOCK_N = 32  # weight rows a decode program streams (gate/up and down)
DOWN_MAX_SPLIT = 8
DOWN_MIN_TILES = 8  # K tiles a split keeps at least


def down_split(tokens: int, experts: int, top_k: int, d: int, i: int, block_n: int, block_k: int,
               device: Optional[torch.device] = None, sms: Optional[int] = None) -> int:
    """K splits of the decode down kernel: doubled while the expected active experts' programs
    (:func:`expected_experts`, ``cdiv(D, BLOCK_N)`` programs each) leave SMs (``sms``, or ``device``'s) short
    of :data:`DOWN_PROGRAMS_PER_SM` programs and every split keeps at least :data:`DOWN_MIN_TILES` K tiles."""
    sms = sms if sms is not None else sm_count(device if device is not None else torch.device("cpu"))
    programs = max(1.0, expected_experts(tokens, experts, top_k)) * cdiv(d, block_n)
    split = 1
    while (programs * split < DOWN_PROGRAMS_PER_SM * sms and i >= DOWN_MIN_TILES * block_k * split * 2
           and split < DOWN_MAX_SPLIT):
        split *= 2
    return split


def int4_pairs_path(int4: bool, dtype: torch.dtype) -> bool:
    """Whether int4 experts take the pairs dequantization (``INT4_PAIRS``; 16-bit activations only)."""
    return INT4_PAIRS and int4 and dtype in (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class DecodePlan:
    """The decode path's launch shape (:func:`decode_plan`): tiles of the gate/up and down kernels, the down
    kernel's K split, its column blocks, and whether the kernels route the step themselves."""

    bn_gate_up: int
    bk_gate_up: int
    bn_down: int
    bk_down: int
    split: int
    k_per_split: int
    n_blocks: int
    routed: bool


def decode_plan(tokens: int, experts: int, top_k: int, d: int, i: int, int4: bool, group: int, pairs: bool,
                sms: int) -> DecodePlan:
    """What the decode launcher runs for ``tokens`` tokens on ``sms`` SMs (``int4``: group-wise int4 experts,
    their K tiles inside one group; ``pairs``: the int4 pairs dequantization's wider tiles). The step cost model
    (``backends/triton/step_plan.py``) asks it too, so both see the same launches. Gate/up's tiles are asked
    first, then down's (``benches/experiments/moe_decode_tiles.py`` replaces ``_block`` in that order)."""
    cap_n, cap_k = (INT4_PAIRS_BLOCK_N, min(INT4_PAIRS_BLOCK_K, group)) if pairs else (DECODE_BLOCK_N, 64)
    cap_k = min(cap_k, group) if int4 else cap_k
    bn_g, bk_g = _block(i, cap_n), _block(d, cap_k)
    bn_d, bk_d = _block(d, cap_n), _block(i, cap_k)
    split = down_split(tokens, experts, top_k, d, i, bn_d, bk_d, sms=sms)
    k_per_split = cdiv(cdiv(i, split), bk_d) * bk_d
    split = cdiv(i, k_per_split)  # no empty splits
    n_blocks = cdiv(d, bn_d)
    routed = routes_in_kernels(tokens, experts, top_k, n_blocks, split, sms)
    return DecodePlan(bn_g, bk_g, bn_d, bk_d, split, k_per_split, n_blocks, routed)


def routes_in_kernels(tokens: int, experts: int, top_k: int, n_blocks: int, split: int, sms: int) -> bool:
    """Whether a decode step routes in its expert kernels and combines in the down kernel (``FUSED_ROUTING``):
    few pairs (``moe_route.fits``), and the down kernel's expected active programs (``n_blocks`` column blocks
    times ``split`` for each of :func:`expected_experts`) fit in one wave of ``FUSED_DOWN_PROGRAMS_PER_SM``
    programs on each of ``sms`` SMs (8 under the default 64-register cap, 5 without)."""
    if not FUSED_ROUTING or not fits(tokens, experts, top_k):
        return False
    programs = max(1.0, expected_experts(tokens, experts, top_k)) * n_blocks * split
    return programs <= FUSED_DOWN_PROGRAMS_PER_SM * sms


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def _unsupported(op: str, x: torch.Tensor, weights: tuple[torch.Tensor, ...], act: str,
                 quant: tuple[torch.Tensor, ...] = (), scheme: str = "int8",
                 routing: tuple[torch.Tensor, ...] = ()) -> Optional[str]:
    """Why the kernels cannot run ``op`` (None: they can). ``weights``: the float operands; ``quant``: the expert
    codes (gate, up, down) then scales; ``routing``: a given routing's weights and ids (any dtype, x's device)."""
    if act not in ACT_CODE:
        return f"{op}: act={act!r} has no kernel ({', '.join(ACT_CODE)} do)"
    reason = unsupported_dtype(op, x, *weights) or unsupported_device(x, *weights, *quant, *routing)
    if reason is not None:
        return reason
    codes, scales = quant[:3], quant[3:]
    if any(q.dtype != QWEIGHT_DTYPE[scheme] for q in codes) or any(sc.dtype != x.dtype or not sc.is_contiguous()
                                                                  for sc in scales):
        return f"{op}: expects {scheme} codes ({QWEIGHT_DTYPE[scheme]}) and contiguous scales in x's dtype"
    if any(q.stride(-1) != 1 for q in codes):
        return f"{op}: packed expert rows must be contiguous (stride 1 along K)"
    if scheme == "fp8" and x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9):
        return f"{op}: fp8 experts need compute capability 8.9+ (Ada, Hopper)"
    return None


def moe(x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
        *rest: torch.Tensor, out: Optional[torch.Tensor] = None, top_k: int, softmax_first: bool = True,
        renormalize: bool = True, act: str = "silu", path: Optional[str] = None,
        configs: Optional[tuple[GroupedConfig, GroupedConfig]] = None, score: str = "softmax",
        weight_input: bool = False, bias: bool = False, alpha: float = 1.0, limit: Optional[float] = None
        ) -> torch.Tensor:
    """The IR op ``moe`` (see ``membound.ir.ops.moe``): grouped expert kernels, routing and combine in torch.

    ``path``: ``"decode"`` or ``"grouped"`` forces one (default: :func:`moe_path` prices both); ``configs``:
    the grouped kernels' tiles (gate/up, down), which force the grouped path (default: ``pick_grouped_config``).
    ``score="sigmoid"``, ``weight_input=True`` (Llama 4): routed in torch (``sorted_pairs``), each pair's token
    scaled by its weight before the gate/up kernel, the down kernel's outputs unweighted. ``bias=True``
    (gpt-oss; ``rest`` ends with the router's and the experts' biases): the router's in its logits, the experts'
    in the kernels' epilogues; ``act="clamped_swiglu"`` with ``alpha``, ``limit`` in the gate/up epilogue."""
    attrs = dict(top_k=top_k, softmax_first=softmax_first, renormalize=renormalize, act=act, score=score,
                 weight_input=weight_input, bias=bias, alpha=alpha, limit=limit)
    _check_shapes("moe", x, router, w_gate, w_down)
    reason = _unsupported("moe", x, (router, w_gate, w_up, w_down, *rest), act)
    if reason is not None:
        return fallback("moe", reason, get_op("moe").reference(x, router, w_gate, w_up, w_down, *rest, **attrs), out)
    return _launch("moe", x, router, (w_gate, w_up, w_down), None, rest, out, attrs, path=path, configs=configs)


def quant_moe(x: torch.Tensor, router: torch.Tensor, q_gate: torch.Tensor, s_gate: torch.Tensor, q_up: torch.Tensor,
              s_up: torch.Tensor, q_down: torch.Tensor, s_down: torch.Tensor, *rest: torch.Tensor,
              out: Optional[torch.Tensor] = None, top_k: int, softmax_first: bool = True, renormalize: bool = True,
              act: str = "silu", scheme: str = "int8", group_size: int = 0, path: Optional[str] = None,
              configs: Optional[tuple[GroupedConfig, GroupedConfig]] = None, score: str = "softmax",
              weight_input: bool = False, bias: bool = False, alpha: float = 1.0, limit: Optional[float] = None
              ) -> torch.Tensor:
    """The IR op ``quant_moe``: the same kernels reading int8 / int4 / fp8 expert weights, dequantized in
    registers (a decode token streams 1 byte, or half a byte, per active expert weight). ``path``, ``configs``:
    as :func:`moe`."""
    attrs = dict(top_k=top_k, softmax_first=softmax_first, renormalize=renormalize, act=act, score=score,
                 weight_input=weight_input, bias=bias, alpha=alpha, limit=limit)
    packed = (q_gate, s_gate, q_up, s_up, q_down, s_down)
    _check_shapes("quant_moe", x, router, q_gate, q_down)
    reason = None if scheme in SCHEME_CODE else f"quant_moe: scheme {scheme!r} has no kernel"
    reason = reason or _unsupported("quant_moe", x, (router, *rest), act,
                                    quant=(q_gate, q_up, q_down, s_gate, s_up, s_down), scheme=scheme)
    if reason is not None:
        want = get_op("quant_moe").reference(x, router, *packed, *rest, scheme=scheme, group_size=group_size,
                                             **attrs)
        return fallback("quant_moe", reason, want, out)
    codes = tuple(q.view(torch.uint8) if scheme == "fp8" else q for q in (q_gate, q_up, q_down))
    return _launch("quant_moe", x, router, codes, (s_gate, s_up, s_down), rest, out, attrs,
                   scheme=SCHEME_CODE[scheme], group=group_size, path=path, configs=configs)


def moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor,
                w_down: torch.Tensor, *biases: torch.Tensor, out: Optional[torch.Tensor] = None, act: str = "silu",
                alpha: float = 1.0, limit: Optional[float] = None, bias: bool = False, path: Optional[str] = None,
                configs: Optional[tuple[GroupedConfig, GroupedConfig]] = None) -> torch.Tensor:
    """The IR op ``moe_experts``: the routing the graph computed (``weights``, ``ids`` ``[T, k]``) into the pairs
    sorted by expert (``moe_route.given_pairs``: one launch for a decode step), then ``moe``'s expert kernels on
    either path, the combine in torch. ``path``, ``configs``: as :func:`moe`."""
    op = "moe_experts"
    attrs = dict(act=act, alpha=alpha, limit=limit, bias=bias)
    _check_given(op, x, weights, ids, w_gate)
    reason = _unsupported(op, x, (w_gate, w_up, w_down, *biases), act, routing=(weights, ids))
    if reason is not None:
        want = get_op(op).reference(x, weights, ids, w_gate, w_up, w_down, *biases, **attrs)
        return fallback(op, reason, want, out)
    return _launch(op, x, None, (w_gate, w_up, w_down), None, biases if bias else (), out, _given_attrs(attrs, ids),
                   path=path, configs=configs, given=(weights, ids))


def quant_moe_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, q_gate: torch.Tensor,
                      s_gate: torch.Tensor, q_up: torch.Tensor, s_up: torch.Tensor, q_down: torch.Tensor,
                      s_down: torch.Tensor, *biases: torch.Tensor, out: Optional[torch.Tensor] = None,
                      act: str = "silu", alpha: float = 1.0, limit: Optional[float] = None, bias: bool = False,
                      scheme: str = "int8", group_size: int = 0, path: Optional[str] = None,
                      configs: Optional[tuple[GroupedConfig, GroupedConfig]] = None) -> torch.Tensor:
    """The IR op ``quant_moe_experts``: :func:`moe_experts` over quantized experts, dequantized in registers as
    :func:`quant_moe` does."""
    op = "quant_moe_experts"
    attrs = dict(act=act, alpha=alpha, limit=limit, bias=bias)
    packed = (q_gate, s_gate, q_up, s_up, q_down, s_down)
    _check_given(op, x, weights, ids, q_gate, q_down)
    reason = None if scheme in SCHEME_CODE else f"{op}: scheme {scheme!r} has no kernel"
    reason = reason or _unsupported(op, x, tuple(biases), act, quant=(q_gate, q_up, q_down, s_gate, s_up, s_down),
                                    scheme=scheme, routing=(weights, ids))
    if reason is not None:
        want = get_op(op).reference(x, weights, ids, *packed, *biases, scheme=scheme, group_size=group_size, **attrs)
        return fallback(op, reason, want, out)
    codes = tuple(q.view(torch.uint8) if scheme == "fp8" else q for q in (q_gate, q_up, q_down))
    return _launch(op, x, None, codes, (s_gate, s_up, s_down), biases if bias else (), out, _given_attrs(attrs, ids),
                   scheme=SCHEME_CODE[scheme], group=group_size, path=path, configs=configs, given=(weights, ids))


def _check_given(op: str, x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, gate: torch.Tensor,
                 down: Optional[torch.Tensor] = None) -> None:
    """A given routing's operands agree: ``x[T, D]``, ``weights`` and ``ids`` ``[T, k]``, the gate ``[E, I, D]``
    (float: its K is D) or, quantized (``down`` given), gate and down codes over the same E."""
    agree = x.dim() == 2 and weights.shape == ids.shape and (
        gate.shape[-1] == x.shape[-1] if down is None else gate.shape[0] == down.shape[0])
    if not agree:
        raise ValueError(f"{op}: x {tuple(x.shape)}, weights {tuple(weights.shape)}, ids {tuple(ids.shape)}, gate "
                         f"{tuple(gate.shape)} disagree (x[T, D], weights and ids [T, k], gate [E, I, D])")


def _given_attrs(attrs: dict, ids: torch.Tensor) -> dict:
    """``_launch``'s attributes of a given routing: ``moe``'s with top_k the ids' k and no routing of its own."""
    return dict(attrs, top_k=ids.shape[1], softmax_first=True, renormalize=False, score="softmax",
                weight_input=False)


def _check_shapes(op: str, x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_down: torch.Tensor) -> None:
    e, d = router.shape
    if x.shape[-1] != d or w_gate.shape[0] != e or w_down.shape[1] != d:
        raise ValueError(f"{op}: x {tuple(x.shape)}, router {tuple(router.shape)}, gate {tuple(w_gate.shape)}, "
                         f"down {tuple(w_down.shape)} do not agree on E and D")


def interleaved_pair(w_gate: torch.Tensor, w_up: torch.Tensor) -> bool:
    """Whether ``[E, N, K]`` gate and up are the even and odd columns of one K-major ``[E, K, 2N]`` weight (views
    of it: up one element past gate, both stepping 2 along N, the same expert and K strides)."""
    return (w_gate.stride(1) == w_up.stride(1) == 2 and w_gate.stride(0) == w_up.stride(0)
            and w_gate.stride(2) == w_up.stride(2) and w_gate.shape == w_up.shape and w_gate.dtype == w_up.dtype
            and w_up.data_ptr() - w_gate.data_ptr() == w_gate.element_size())


def _launch(op: str, x: torch.Tensor, router: Optional[torch.Tensor], weights: tuple[torch.Tensor, ...],
            scales: Optional[tuple[torch.Tensor, ...]], rest: tuple[torch.Tensor, ...], out: Optional[torch.Tensor],
            attrs: dict, scheme: int = 0, group: int = 0, path: Optional[str] = None,
            configs: Optional[tuple[GroupedConfig, GroupedConfig]] = None,
            given: Optional[tuple[torch.Tensor, torch.Tensor]] = None) -> torch.Tensor:
    """The expert kernels of ``moe`` / ``quant_moe`` (routed by ``router``) and ``moe_experts`` (``given``: the
    graph's routing weights and ids, ``router`` None; ``rest`` its expert biases, or none)."""
    w_gate, w_up, w_down = weights
    if given is not None:
        shared, biases = (), (None, *rest) if rest else ()  # (no router bias: the routing is given)
    else:
        shared, biases = moe_extras(op, rest, attrs["bias"])
    # the biases: the router's into its logits; each expert's row read contiguous by the epilogues (a no-op for the
    # contiguous copies fuse-moe makes)
    router_bias, b_gate, b_up, b_down = ((None if b is None else b.contiguous() for b in biases) if biases
                                         else (None, w_gate, w_gate, w_gate))
    act = dict(HAS_BIAS=bool(biases), ACT=ACT_CODE[attrs["act"]], ALPHA=float(attrs["alpha"]),
               LIMIT=float(attrs["limit"] or 0.0))
    s_gate, s_up, s_down = scales if scales is not None else (w_gate, w_up, w_down)  # unread without a scheme
    top_k, e, d = attrs["top_k"], w_gate.shape[0], x.shape[-1]
    result = check_out(op, out, tuple(x.shape), x.dtype, x.device)
    h = x.reshape(-1, d).contiguous()  # [T, D]
    t, i = h.shape[0], w_gate.shape[1]
    scheme_name = _SCHEME_NAME.get(scheme)
    if path is None:
        path = "grouped" if configs is not None else moe_path(t, e, top_k, d, i, x.dtype, x.device, scheme_name,
                                                                 group)
    if path not in PATHS:
        raise ValueError(f"{op}: path={path!r}; expected one of {PATHS}")
    hidden = torch.empty((t * top_k, i), dtype=x.dtype, device=x.device)  # act(gate, up) per pair
    y = torch.empty((t * top_k, d), dtype=torch.float32, device=x.device)  # weighted expert outputs, pair order
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    sn = [sc.stride(1) if sc.dim() > 1 else 0 for sc in (s_gate, s_up, s_down)]
    quant = dict(SCHEME=scheme, GROUP=max(group, 1), INPUT_PRECISION=precision)
    combined_in_kernel = False
    paired = INPLACE_PAIRS and scheme == 0 and interleaved_pair(w_gate, w_up)

    # Llama 4's routing (a sigmoid of the kept logits, the weight on the token before the expert): in torch, then the
    # gate/up kernels read each pair's scaled token (x_in row p = pair p, so their token of a pair is the pair) and
    # the down kernel weights by 1
    plain = attrs["score"] == "softmax" and not attrs["weight_input"] and given is None
    x_in, k_in = h, top_k
    if given is not None and t > 0:  # moe_experts: the pairs of the graph's routing
        rw, order, offsets = given_pairs(given[0].reshape(t, top_k), given[1].reshape(t, top_k), e)
    elif not plain and t > 0:
        rw, order, offsets = sorted_pairs(h, router, top_k, attrs["softmax_first"], attrs["renormalize"],
                                          attrs["score"], router_bias)
        if attrs["weight_input"]:
            x_in, k_in = h.repeat_interleave(top_k, dim=0) * rw[:, None].to(h.dtype), 1
            rw = torch.ones_like(rw)
    pairs = int4_pairs_path(scheme == INT4.value, x.dtype)
    halves = 2 + (0 if not pairs else 1 if pairs_ptx(x.device) else 2)

    def runs(block_k: int) -> int:
        """The int4 tile form of a launch (``_weight_tile``'s ``RUNS``): 2 = halves (two dots, each byte loaded
        once) where ``INT4_HALVES`` and the K tile gives halves of 16+ columns, 3 / 4 the same dequantized two
        codes an instruction (``INT4_PAIRS``; its PTX / its interpreter twin); else 0, a byte load per code."""
        return halves if INT4_HALVES and scheme == INT4.value and block_k >= 32 else 0

    if t == 0:
        pass  # an empty step: nothing to launch (an empty tensor's data pointer may be null)
    elif path == "decode":
        # routing (routes_in_kernels): the router's logits (one launch), torch.topk over them, and each expert kernel
        # finds its own pairs and weights (no sort, no weights pass); else sorted_pairs. The down kernel's tiles and
        # split first: they decide it. int4: a K tile inside one group (both powers of two), so each row's (scale,
        # offset) is one load a tile. 32 output rows a program (H200,
        # benches/results/moe_decode_tiles-nvidia-h200-2026-12-02-down-split.json: 198.6 against 202.0 us at T = 1,
        # 668.7 against 693.6 at T = 8 for 64). Asked gate/up's first, then down's (moe_decode_tiles.py's plans)
        plan = decode_plan(t, e, top_k, d, i, scheme == INT4.value, group, pairs, sm_count(x.device))
        bn_g, bk_g, bn_d, bk_d = plan.bn_gate_up, plan.bk_gate_up, plan.bn_down, plan.bk_down
        split, k_per_split, n_blocks, routed = plan.split, plan.k_per_split, plan.n_blocks, plan.routed and plain
        if routed:
            logits, top, idx = router_topk(h, router, top_k, router_bias)
            rw, order, offsets = top, idx, idx  # unread
        else:
            if plain:
                rw, order, offsets = sorted_pairs(h, router, top_k, attrs["softmax_first"], attrs["renormalize"],
                                                  router_bias=router_bias)
            logits, top, idx = rw, rw, order  # unread
        p2 = triton.next_power_of_2
        route_args = dict(ROUTED=routed, BLOCK_P=max(2, p2(t * top_k)))
        launchable(_moe_gate_up, x.device)[(e, cdiv(i, bn_g))](
            x_in, w_gate, w_up, s_gate, s_up, hidden, idx, order, offsets, b_gate, b_up, t * top_k, i, d,
            w_gate.shape[-1], k_in, x_in.stride(0), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1),
            s_gate.stride(0), sn[0], s_up.stride(0), sn[1], hidden.stride(0), BLOCK_M=BLOCK_M, BLOCK_N=bn_g,
            BLOCK_K=bk_g, **quant, RUNS=runs(bk_g), **route_args, **act, stride_gk=w_gate.stride(2),
            stride_uk=w_up.stride(2), PAIRED=paired, num_warps=4)
        locks = n_locks = 0  # counters: the split's per (expert, column block), then the combine's per token
        if split > 1:
            n_locks = e * n_blocks
        # the combine (sum over a token's k pairs, cast) in the down kernel's epilogue: without a shared expert
        # (added in fp32 before the cast) and into a contiguous output
        combined_in_kernel = (routed and not shared and result.is_contiguous()
                              and n_locks + t * n_blocks <= MAX_COUNTERS)
        if split > 1 or combined_in_kernel:
            locks = split_counters(x.device, n_locks + t * n_blocks * combined_in_kernel)
        part = y
        if split > 1:
            part = torch.empty((split, t * top_k, d), dtype=torch.float32, device=x.device)
        lock_arg = locks if split > 1 or combined_in_kernel else offsets  # unread unsplit without the combine
        cap = dict(maxnreg=DOWN_MAXNREG) if x.is_cuda and routed and DOWN_MAXNREG > 0 else {}
        launchable(_moe_down, x.device)[(e, n_blocks, split)](
            hidden, w_down, s_down, y, idx, order, offsets, rw, logits, top, part, lock_arg, result, b_down,
            t * top_k, e, top_k, d, i, w_down.shape[-1], k_per_split, n_locks,
            hidden.stride(0), w_down.stride(0), w_down.stride(1), s_down.stride(0), sn[2], y.stride(0),
            t * top_k * d, d, BLOCK_M=BLOCK_M, BLOCK_N=bn_d, BLOCK_K=bk_d, **quant, RUNS=runs(bk_d), SPLIT_K=split,
            SOFTMAX_FIRST=attrs["softmax_first"], RENORM=attrs["renormalize"], COMBINE=combined_in_kernel,
            BLOCK_KK=max(2, p2(top_k)), BLOCK_E=max(2, p2(e)), HAS_BIAS=act["HAS_BIAS"], **route_args,
            stride_dk=w_down.stride(2), num_warps=4, **cap)
    else:
        # routing weight per pair, pairs sorted by expert (stable: a token's pairs stay in slot order),
        # offsets[e] = first pair of e (moe_route.sorted_pairs)
        if plain:
            rw, order, offsets = sorted_pairs(h, router, top_k, attrs["softmax_first"], attrs["renormalize"],
                                              router_bias=router_bias)
        cfg_gu, cfg_dn = configs or (pick_grouped_config(t * top_k, e, i, d, x.dtype, scheme_name, group, True),
                                     pick_grouped_config(t * top_k, e, d, i, x.dtype, scheme_name, group, False))
        cfg_gu, cfg_dn = _fit(cfg_gu, i, d, scheme, group), _fit(cfg_dn, d, i, scheme, group)
        counts = offsets[1:] - offsets[:-1]  # [E] pairs per expert
        tables = {bm: _block_table(counts, offsets, bm, grouped_m_blocks(t * top_k, e, bm))
                  for bm in {cfg_gu.block_m, cfg_dn.block_m}}
        blk_expert, blk_start = tables[cfg_gu.block_m]
        mb = blk_expert.shape[0]
        launchable(_moe_grouped_gate_up, x.device)[(mb * cdiv(i, cfg_gu.block_n),)](
            x_in, w_gate, w_up, s_gate, s_up, hidden, order, offsets, blk_expert, blk_start, b_gate, b_up, e, mb,
            min(cfg_gu.group_m or mb, mb), i, d, w_gate.shape[-1],
            k_in, x_in.stride(0), w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1), s_gate.stride(0),
            sn[0], s_up.stride(0), sn[1], hidden.stride(0), BLOCK_M=cfg_gu.block_m, BLOCK_N=cfg_gu.block_n,
            BLOCK_K=cfg_gu.block_k, **quant, RUNS=runs(cfg_gu.block_k), **act, stride_gk=w_gate.stride(2),
            stride_uk=w_up.stride(2), PAIRED=paired, num_warps=cfg_gu.num_warps, num_stages=cfg_gu.num_stages)
        blk_expert, blk_start = tables[cfg_dn.block_m]
        mb = blk_expert.shape[0]
        launchable(_moe_grouped_down, x.device)[(mb * cdiv(d, cfg_dn.block_n),)](
            hidden, w_down, s_down, y, order, rw, offsets, blk_expert, blk_start, b_down, e, mb,
            min(cfg_dn.group_m or mb, mb), d, i, w_down.shape[-1],
            hidden.stride(0), w_down.stride(0), w_down.stride(1), s_down.stride(0), sn[2], y.stride(0),
            BLOCK_M=cfg_dn.block_m, BLOCK_N=cfg_dn.block_n, BLOCK_K=cfg_dn.block_k, **quant, RUNS=runs(cfg_dn.block_k),
            HAS_BIAS=act["HAS_BIAS"], stride_dk=w_down.stride(2), num_warps=cfg_dn.num_warps,
            num_stages=cfg_dn.num_stages)
    if not combined_in_kernel:
        combined = y.view(t, top_k, d).sum(dim=1)  # [T, D] fp32
        if shared:
            combined += shared_expert(h, shared)
        result.copy_(combined.view(x.shape))
    note(op, "kernel")
    return result


# ---- the grouped path's tiles and block table ----------------------------------------------------------------


@dataclass(frozen=True)
class GroupedConfig:
    """Tiles of one grouped kernel: ``block_m`` sorted pairs (a block never mixes experts), ``block_n`` weight
    rows, ``block_k`` elements of K a step; launch options. The unit ``gpu/moe_prefill.sh`` sweeps."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 0  # m-blocks a band of the launch order (_tile); 0: all of them, one band


# Tiles per (block_m, kernel), bf16/fp16, sm_90: from the H200 sweep of gpu/moe_prefill.sh at the Mixtral-8x7B
# layer (benches/results/moe_prefill-nvidia-h200-2026-12-02.json): 128 x 128 x 64 tiles won at T = 512 (278.6
# TFLOP/s against 263.2 for 64 x 128) and T = 2048 (469.8 against 387.5); 64-row blocks are kept for fewer pairs
# an expert (less padding). Shared memory a stage = (BM + 2 BN) * BK * 2 bytes for gate/up (two weight tiles),
# (BM + BN) * BK * 2 for down; fp32 accumulators <= 64 registers a thread each (gate/up holds two).
GROUPED_TILES: dict[tuple[int, str], GroupedConfig] = {
    (64, "gate_up"): GroupedConfig(64, 128, 64, num_warps=8, num_stages=3),  # 40 KB a stage
    (128, "gate_up"): GroupedConfig(128, 128, 64, num_warps=8, num_stages=3),  # 48 KB a stage
    (64, "down"): GroupedConfig(64, 128, 64, num_warps=4, num_stages=4),  # 24 KB a stage
    (128, "down"): GroupedConfig(128, 128, 64, num_warps=8, num_stages=4),  # 32 KB a stage
}
# quantized experts: the in-register dequantization holds more registers (sm_90 under Triton 3.9, cuobjdump: int4
# down at 64 x 128 x 64 with 4 warps needed 255 registers and a stack; these stay at 72-128, no stack)
QUANT_TILES: dict[tuple[int, str], GroupedConfig] = {
    (64, "gate_up"): GroupedConfig(64, 64, 64, num_warps=8, num_stages=3),
    (64, "down"): GroupedConfig(64, 128, 64, num_warps=8, num_stages=3),
}
FP32_TILE = GroupedConfig(64, 64, 32, num_warps=8, num_stages=2)  # fp32 x (FMA dots): twice the bytes a tile
# pairs per expert (T * k / E) from which a block holds 128 rows: the mean padding of an expert's last block is
# then <= 50% of its rows; 128-row tiles already won at 128 pairs an expert (T = 512, top-2 of 8, H200 sweep)
BLOCK_M_128_FROM = 128


def pick_grouped_config(pairs: int, experts: int, n: int, k: int, dtype: torch.dtype, scheme: Optional[str],
                        group: int, gate_up: bool) -> GroupedConfig:
    """The grouped kernel's tiles for ``pairs`` = T * top_k (sorted pairs), weight ``[E, n, k]``: 64-row blocks
    until ``BLOCK_M_128_FROM`` pairs per expert, then 128 (``GROUPED_TILES``, ``QUANT_TILES`` for quantized
    experts where they differ); fp32 x: ``FP32_TILE``. int4 K
    tiles are cut to one group (``_fit``), small n / k to their next power of two."""
    if dtype == torch.float32:
        return FP32_TILE
    key = (128 if pairs >= BLOCK_M_128_FROM * experts else 64, "gate_up" if gate_up else "down")
    return QUANT_TILES.get(key, GROUPED_TILES[key]) if scheme is not None else GROUPED_TILES[key]


def _fit(cfg: GroupedConfig, n: int, k: int, scheme: int, group: int) -> GroupedConfig:
    """``cfg`` with tiles no larger than the weight (powers of two, >= 16 for tl.dot) and, for int4, K tiles
    inside one group (``_weight_tile`` loads each row's scale and offset once a tile)."""
    block_k = min(cfg.block_k, group) if scheme == INT4.value else cfg.block_k
    return replace(cfg, block_n=_block(n, cfg.block_n), block_k=_block(k, block_k))


def grouped_m_blocks(pairs: int, experts: int, block_m: int) -> int:
    """The grid's m-blocks: ``cdiv(pairs, block_m) + experts``, an upper bound on sum_e cdiv(count_e, block_m)
    (each expert's last block at most one more than its share) that needs no count on the host."""
    return cdiv(pairs, block_m) + experts


def _block_table(counts: torch.Tensor, offsets: torch.Tensor, block_m: int,
                 m_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(expert i32[m_blocks], start i64[m_blocks])``: block b holds sorted pairs ``start[b] ..`` of expert
    ``expert[b]``, up to BLOCK_M of them and never past ``offsets[expert + 1]``; blocks past the last real one
    have expert E. Torch ops on the device (no host sync: a CUDA graph may capture them)."""
    e = counts.shape[0]
    blocks = (counts + block_m - 1) // block_m  # [E] each expert's m-blocks (0 for an unchosen expert)
    ends = torch.cumsum(blocks, 0)  # [E] one past each expert's last block
    b = torch.arange(m_blocks, device=counts.device)
    expert = torch.searchsorted(ends, b, right=True)  # [MB] the first expert whose blocks end after b
    safe = expert.clamp(max=e - 1)
    start = offsets[safe] + (b - (ends - blocks)[safe]) * block_m
    return expert.to(torch.int32), start


# ---- which path: priced on the device's roofline -------------------------------------------------------------

PATHS = ("decode", "grouped")
# What each path reaches, as shares of the device's bandwidth (B) and dense tensor-core peak (F), measured on an
# H200 at the Mixtral-8x7B layer (benches/results/moe_prefill-nvidia-h200-2026-12-02.json, bf16, T = 8..64 for
# the bandwidth shares, T = 2048 for the MMA share; the two paths tie at T = 64: 0.990 ms each):
# - DECODE_BW_SHARE 0.82: the walk re-reads an expert's tiles once per 16-pair chunk, partly from L2, so over the
#   priced bytes it looks faster than HBM allows;
# - GROUPED_BW_SHARE 0.59 (T = 24..64), GROUPED_MMA_SHARE 0.47 (469.8 TFLOP/s of 989 at 128 x 128 tiles).
DECODE_BW_SHARE = 0.82
GROUPED_BW_SHARE = 0.59
GROUPED_MMA_SHARE = 0.47
GROUPED_FIXED_S = 15e-6  # the block table: ~6 small torch ops before the kernels


def expected_experts(tokens: int, experts: int, top_k: int) -> float:
    """Distinct experts ``tokens`` tokens choose, uniform routing: ``E * (1 - (1 - k/E)^T)`` (benches/moe.py's)."""
    return experts * (1.0 - (1.0 - top_k / experts) ** tokens)


def expected_blocks(pairs_per_expert: float, block_m: int) -> float:
    """m-blocks of ``block_m`` rows an expert with ``n`` pairs on average needs: one while its pairs fill at most
    half a block, then ``n / block_m + 1/2`` (half a block of padding on average: counts spread around n)."""
    return max(1.0, pairs_per_expert / block_m + 0.5)


def path_times(tokens: int, experts: int, top_k: int, hidden: int, intermediate: int, dtype: torch.dtype,
               device: torch.device, scheme: Optional[str] = None, group: int = 0, hw=None) -> dict[str, float]:
    """Roofline seconds of one ``moe`` layer's expert kernels on each path: ``{"decode": .., "grouped": ..}``.

    ``A`` experts are chosen (:func:`expected_experts`), each with ``n = T * k / A`` pairs and ``P`` bytes of
    weights (packed when quantized); ``b16`` / ``bM``: its m-blocks of 16 / BLOCK_M (64 or 128) rows
    (:func:`expected_blocks`)::

        decode  = A * b16 * P / (DECODE_BW_SHARE * B)                                    + A * b16 * Q
        grouped = max(A * P / (GROUPED_BW_SHARE * B), A * bM * BM * 6DI / (GROUPED_MMA_SHARE * F))
                  + A * bM * Q + GROUPED_FIXED_S

    The decode walk streams an expert's weights once per 16-pair chunk: a program's weight tiles (0.5-2 MB
    over K) does not stay in L2 between its chunks, and its 16-row MMAs never bind (16 FLOP a weight byte).
    The grouped kernel runs an expert's m-blocks side by side, so they share each weight tile through L2, and
    its padded rows cost tensor-core time. ``Q`` (quantized experts): dequantizing one expert's ``3DI``
    weights in registers, paid once per m-block on both paths, at the rate quant_matmul's fused prefill kernel
    implies (its measured compute share at M = 64 against cuBLAS's, ``membound.cost.step`` priors: the time
    beyond cuBLAS's is the dequantization). ``hw``: a ``membound.cost.Hardware`` (default: ``device``'s
    datasheet spec)."""
    from membound.backends.triton.kernels.quant_matmul import PREFILL_BLOCK_M, _device_spec, packed_bytes
    from membound.cost.step import step_priors

    hw = hw or _device_spec(device)
    itemsize = torch.empty((), dtype=dtype).element_size()
    peak = hw.peak_flops({torch.float32: "fp32", torch.float16: "fp16"}.get(dtype, "bf16"))
    weights = 3 * hidden * intermediate  # elements of one expert
    if scheme is None:
        per_expert, dequant = weights * itemsize, 0.0
    else:
        per_expert = (2 * packed_bytes(intermediate, hidden, scheme, group, dtype)
                      + packed_bytes(hidden, intermediate, scheme, group, dtype))
        priors = step_priors(hw)
        fused = priors.kernel(f"quant_mma_{scheme}").compute_efficiency
        cublas = priors.kernel("cublas").compute_efficiency
        dequant = weights * 2.0 * PREFILL_BLOCK_M / peak * (1.0 / fused - 1.0 / cublas)  # Q: s an expert a block
    chosen = max(expected_experts(tokens, experts, top_k), 1e-9)  # no tokens: no expert, nothing to stream
    per_chosen = tokens * top_k / chosen
    activations = tokens * top_k * (hidden * itemsize + 2 * intermediate * itemsize + hidden * 4)  # x, hidden, y
    chunks = chosen * expected_blocks(per_chosen, BLOCK_M)
    decode = (chunks * per_expert + activations) / (DECODE_BW_SHARE * hw.bandwidth) + chunks * dequant
    block_m = 128 if tokens * top_k >= BLOCK_M_128_FROM * experts else 64
    blocks = chosen * expected_blocks(per_chosen, block_m)
    memory = (chosen * per_expert + activations) / (GROUPED_BW_SHARE * hw.bandwidth)
    compute = blocks * block_m * 2.0 * weights / (GROUPED_MMA_SHARE * peak)
    grouped = max(memory, compute) + blocks * dequant + GROUPED_FIXED_S
    return {"decode": decode, "grouped": grouped}


def moe_path(tokens: int, experts: int, top_k: int, hidden: int, intermediate: int, dtype: torch.dtype,
             device: torch.device, scheme: Optional[str] = None, group: int = 0, hw=None) -> str:
    """``"decode"`` (one program per expert and N block, walking its pairs 16 at a time) or ``"grouped"`` (the
    grouped GEMM over m-blocks): the cheaper in :func:`path_times`. Both stream the chosen experts once while an
    expert's pairs fit one 16-row chunk, and the decode walk wins there by its (measured) bandwidth share and
    the grouped path's fixed cost; past that it re-reads the weights per chunk. With the constants above, on an
    H200 the grouped path wins from about 9 pairs per expert (T * k / E): at the Mixtral-8x7B layer (D 4096,
    I 14336, 8 experts, top-2) from T = 36 tokens with bf16 experts, 34 with int8, 39 with int4 (group 128);
    8.5-10 pairs at the other MoE shapes tried (``tests/backends/test_moe_prefill.py`` checks the 8x7B
    crossovers). A decode batch of 36+ tokens at that shape thus takes the grouped path too (its block table is
    captured with the rest)."""
    times = path_times(tokens, experts, top_k, hidden, intermediate, dtype, device, scheme, group, hw)
    return "decode" if times["decode"] <= times["grouped"] else "grouped"


def moe_bytes(tokens: int, experts: int, top_k: int, hidden: int, intermediate: int, itemsize: int) -> int:
    """Bytes of expert weights a step of ``tokens`` tokens reads: ``min(E, tokens * k)`` experts."""
    return min(experts, tokens * top_k) * 3 * hidden * intermediate * itemsize


__all__ = ["GroupedConfig", "moe", "moe_bytes", "moe_experts", "moe_path", "path_times", "pick_grouped_config",
           "quant_moe", "quant_moe_experts"]
