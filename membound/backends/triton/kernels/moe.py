"""``moe``: the routed experts as two grouped kernels that read each active expert's weights once.

A step of T tokens makes ``T * top_k`` (token, expert) pairs. The wrapper routes in torch (router
linear, softmax, top-k, renormalisation: a few ``[T, E]`` ops) and sorts the pairs by expert on the
device, with the per-expert offsets from a comparison count; nothing is read back to the host, so a decode
step can be captured in a CUDA graph. Then:

- ``_moe_gate_up``: one program per (expert e, block of ``BLOCK_N`` rows of I). It walks e's pairs
  ``BLOCK_M`` at a time, gathers their token rows of x, and multiplies them with its gate and up
  tiles (``tl.dot``; the padded rows of a decode step cost FLOPs, which are free when memory-bound),
  then stores ``silu(gate) * up`` for those pairs. A program of an expert nobody chose returns before
  loading anything: a decode token reads only its top_k experts' weights.
- ``_moe_down``: one program per (expert e, block of D rows of the down weight): the same walk over
  e's pairs, ``h @ w_down[e].T`` times the pair's routing weight, stored per pair in fp32.

The combine (sum over a token's k pairs), the optional shared expert (cuBLAS) and the cast are torch
ops on ``[T, D]``. Memory stays O(weights + T * top_k * (I + D)): no weight is ever copied per token.
For many tokens per expert (prefill) the same kernels are a grouped GEMM (each W tile is re-read once
per ``BLOCK_M`` rows, from L2). Weights may be views (HF's gate/up halves): rows must be contiguous.

``quant_moe`` runs the same kernels over quantized expert weights (``SCHEME``), dequantizing each
weight tile in registers, rounded to the activation dtype as the reference does, before the ``tl.dot``
(``_weight_tile``): int8 and fp8 (e4m3 bytes) with per-channel scales loaded once per program; int4
(two codes a byte, group-wise scale and offset) with K tiles no wider than a group, so each row's
(scale, offset) is one load per tile. At prefill the same walk is the grouped GEMM, dequantizing each
tile once per ``BLOCK_M`` pairs. (The int4 tile reads each byte for both its nibbles: simple, not the
word-wide decoding of ``quant_matmul``; measure before tuning.)

Falls back to the torch reference for dtypes other than fp16/bf16/fp32, activations other than
silu, weights whose rows are not contiguous, and CPU tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    cdiv,
    check_out,
    fallback,
    launchable,
    note,
    unsupported_device,
    unsupported_dtype,
)
from membound.backends.triton.kernels.moe_route import sorted_pairs
from membound.ir.ops import get_op
from membound.ir.ops.moe import shared_expert
from membound.ir.ops.quant import QWEIGHT_DTYPE

BLOCK_M = 16  # pairs per tile: one tensor-core tile of rows
INT4_RUNS = False  # int4 weight tiles as contiguous byte runs (_weight_tile): faster, not yet checked on a GPU


# SCHEME: how expert weights are stored (module constants a @triton.jit body may read must be constexpr)
NONE: tl.constexpr = tl.constexpr(0)
INT8: tl.constexpr = tl.constexpr(1)
INT4: tl.constexpr = tl.constexpr(2)
FP8: tl.constexpr = tl.constexpr(3)
SCHEME_CODE = {"int8": INT8.value, "int4": INT4.value, "fp8": FP8.value}


@triton.jit
def _row_scales(s_ptr, e, ns, n_ok, stride_se, SCHEME: tl.constexpr):
    """int8/fp8: the per-channel scales of this program's rows ``[BLOCK_N]`` in fp32 (else unused zeros)."""
    if SCHEME == INT8 or SCHEME == FP8:
        return tl.load(s_ptr + e * stride_se + ns, mask=n_ok, other=0.0).to(tl.float32)
    return tl.zeros(ns.shape, dtype=tl.float32)


@triton.jit
def _weight_tile(w_ptr, s_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_we, stride_wn, stride_se, stride_sn, row_scale,
                 SCHEME: tl.constexpr, GROUP: tl.constexpr, BLOCK_K: tl.constexpr, RUNS: tl.constexpr):
    """The ``[BLOCK_K, BLOCK_N]`` tile of ``W[e].T`` at columns ``ks`` (``k0 .. k0 + BLOCK_K``; a stored row is
    ``KW`` elements wide: K, or int4's ceil(K / 2) bytes, a size Triton sees divisible by 16 at real shapes): the
    float weights as stored (``NONE``), or dequantized in fp32 (the caller rounds to the activation dtype,
    as the reference does).

    int4: codes ``k`` of a row are nibble ``k % 2`` of byte ``k // 2``, indexed so (``RUNS`` off, the
    default), each byte loaded for both its codes, scattered: correct on the GPU but slow (42 tok/s at the
    Mixtral-8x7B shape on an H200 against 387 for bf16). ``RUNS`` (``INT4_RUNS``) loads the tile's
    ``BLOCK_K / 2`` bytes a row once, as one contiguous run, and interleaves the nibbles in registers; its
    first form (``tl.permute`` then ``tl.reshape``) passed the interpreter but gave wrong codes compiled for
    sm_90 under Triton 3.6, and the form here (nibbles joined on a last axis, as ``quant_dequant.py`` does,
    which the H200 ran correctly, then ``tl.trans``) is checked by the interpreter only so far: off until a
    GPU run of ``tests/backends/test_moe_kernel.py`` passes with it (the test runs both).
    The tile lies inside one group (``BLOCK_K <= GROUP``, both powers of two, ``k0`` a multiple of
    ``BLOCK_K``), so each row's (scale, offset) is loaded once per tile. fp8: the bytes reinterpreted as e4m3."""
    # one return at the end: compiled Triton rejects returns of different dtypes in one function, even
    # in branches a constexpr rules out (the interpreter does not)
    mask = k_ok[:, None] & n_ok[None, :]
    rows = w_ptr + e * stride_we + ns[None, :] * stride_wn
    if SCHEME == INT4:
        if RUNS:
            # the tile's bytes along K, loaded [BLOCK_N, BLOCK_K / 2]; the nibbles joined on a last axis and
            # reshaped give k = 2 kb + nibble in k order, then transposed to [BLOCK_K, BLOCK_N]. (Joining them
            # on the K axis of a [BLOCK_K / 2, BLOCK_N] tile through tl.permute then tl.reshape passed the
            # interpreter but gave wrong codes compiled for sm_90 under Triton 3.6.)
            kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            raw = tl.load(w_ptr + e * stride_we + ns[:, None] * stride_wn + kb[None, :],
                          mask=n_ok[:, None] & (kb[None, :] < KW), other=0).to(tl.int32)
            lo = (raw & 0xF).to(tl.float32)  # code 2 * kb
            hi = ((raw >> 4) & 0xF).to(tl.float32)  # code 2 * kb + 1
            code = tl.trans(tl.reshape(tl.join(lo, hi), (ns.shape[0], BLOCK_K)))
        else:
            raw = tl.load(rows + ks[:, None] // 2, mask=mask, other=0).to(tl.int32)
            code = ((raw >> ((ks[:, None] % 2) * 4)) & 0xF).to(tl.float32)
        pair = s_ptr + e * stride_se + ns * stride_sn + (k0 // GROUP) * 2
        scale = tl.load(pair, mask=n_ok, other=0.0).to(tl.float32)
        offset = tl.load(pair + 1, mask=n_ok, other=0.0).to(tl.float32)
        w = tl.where(mask, code * scale[None, :] + offset[None, :], 0.0)
    else:
        w = tl.load(rows + ks[:, None], mask=mask, other=0)
        if SCHEME == FP8:  # passed as its bytes (u8)
            w = w.to(tl.float8e4nv, bitcast=True)
        if SCHEME != NONE:
            w = w.to(tl.float32) * row_scale[None, :]
    return w


@triton.jit
def _moe_gate_up(
    x_ptr, wg_ptr, wu_ptr, sg_ptr, su_ptr, h_ptr, pair_ptr, offs_ptr,
    I, K, KW, TOP_K,
    stride_x, stride_ge, stride_gn, stride_ue, stride_un, stride_sg, stride_sgn, stride_su, stride_sun, stride_h,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64)  # E * I * K weights pass 2**31 elements in big MoEs
    pid_n = tl.program_id(1)
    start = tl.load(offs_ptr + e)
    end = tl.load(offs_ptr + e + 1)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < I
    ks0 = tl.arange(0, BLOCK_K)
    sg = _row_scales(sg_ptr, e, ns, n_ok, stride_sg, SCHEME)  # int8/fp8: loaded once per program
    su = _row_scales(su_ptr, e, ns, n_ok, stride_su, SCHEME)
    # an expert nobody chose: nothing to load (start == end skips the loop)
    for m0 in range(start, end, BLOCK_M):
        # 64-bit: pairs * I (the hidden buffer) passes 2**31 elements at long prefills
        ms = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_ok = ms < end
        pair = tl.load(pair_ptr + ms, mask=m_ok, other=0).to(tl.int64)  # sorted position -> pair t * TOP_K + j
        tok = pair // TOP_K
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            ks = k0 + ks0
            k_ok = ks < K
            x = tl.load(x_ptr + tok[:, None] * stride_x + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            # [BLOCK_K, BLOCK_N] tiles of W.T (each row of W is contiguous in K), dequantized in registers
            wg = _weight_tile(wg_ptr, sg_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_ge, stride_gn, stride_sg,
                              stride_sgn, sg, SCHEME, GROUP, BLOCK_K, RUNS).to(x.dtype)
            wu = _weight_tile(wu_ptr, su_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_ue, stride_un, stride_su,
                              stride_sun, su, SCHEME, GROUP, BLOCK_K, RUNS).to(x.dtype)
            acc_g = tl.dot(x, wg, acc_g, input_precision=INPUT_PRECISION)
            acc_u = tl.dot(x, wu, acc_u, input_precision=INPUT_PRECISION)
        # round like the reference: each product in the activation dtype, then silu * up
        g = acc_g.to(h_ptr.dtype.element_ty).to(tl.float32)
        u = acc_u.to(h_ptr.dtype.element_ty).to(tl.float32)
        act = (g / (1.0 + tl.exp(-g))).to(h_ptr.dtype.element_ty).to(tl.float32) * u
        tl.store(h_ptr + ms[:, None] * stride_h + ns[None, :], act.to(h_ptr.dtype.element_ty),
                 mask=m_ok[:, None] & n_ok[None, :])


@triton.jit
def _moe_down(
    h_ptr, wd_ptr, sd_ptr, y_ptr, pair_ptr, weight_ptr, offs_ptr,
    D, I, KW,
    stride_h, stride_de, stride_dn, stride_sd, stride_sdn, stride_y,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    SCHEME: tl.constexpr, GROUP: tl.constexpr, RUNS: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64)  # E * I * K weights pass 2**31 elements in big MoEs
    pid_n = tl.program_id(1)
    start = tl.load(offs_ptr + e)
    end = tl.load(offs_ptr + e + 1)
    ns = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = ns < D
    ks0 = tl.arange(0, BLOCK_K)
    sd = _row_scales(sd_ptr, e, ns, n_ok, stride_sd, SCHEME)
    for m0 in range(start, end, BLOCK_M):
        ms = m0 + tl.arange(0, BLOCK_M).to(tl.int64)
        m_ok = ms < end
        pair = tl.load(pair_ptr + ms, mask=m_ok, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, I, BLOCK_K):
            ks = k0 + ks0
            k_ok = ks < I
            h = tl.load(h_ptr + ms[:, None] * stride_h + ks[None, :], mask=m_ok[:, None] & k_ok[None, :], other=0.0)
            w = _weight_tile(wd_ptr, sd_ptr, e, ns, n_ok, ks, k_ok, k0, KW, stride_de, stride_dn, stride_sd,
                             stride_sdn, sd, SCHEME, GROUP, BLOCK_K, RUNS).to(h.dtype)
            acc = tl.dot(h, w, acc, input_precision=INPUT_PRECISION)
        y = acc.to(h_ptr.dtype.element_ty).to(tl.float32)  # the expert's output, in the activation dtype
        rw = tl.load(weight_ptr + pair, mask=m_ok, other=0.0)
        tl.store(y_ptr + pair[:, None] * stride_y + ns[None, :], y * rw[:, None], mask=m_ok[:, None] & n_ok[None, :])


def _block(n: int, cap: int) -> int:
    return max(16, min(cap, triton.next_power_of_2(n)))


def _unsupported(x: torch.Tensor, weights: tuple[torch.Tensor, ...], act: str,
                 quant: tuple[torch.Tensor, ...] = (), scheme: str = "int8") -> Optional[str]:
    """Why the kernels cannot run (None: they can). ``quant``: the expert codes (gate, up, down) then scales."""
    op = "quant_moe" if quant else "moe"
    if act != "silu":
        return f"{op}: act={act!r} has no kernel (silu does)"
    reason = unsupported_dtype(op, x, *weights) or unsupported_device(x, *weights, *quant)
    if reason is not None:
        return reason
    codes, scales = quant[:3], quant[3:]
    if any(q.dtype != QWEIGHT_DTYPE[scheme] for q in codes) or any(sc.dtype != x.dtype or not sc.is_contiguous()
                                                                  for sc in scales):
        return f"{op}: expects {scheme} codes ({QWEIGHT_DTYPE[scheme]}) and contiguous scales in x's dtype"
    if any(w.stride(-1) != 1 for w in (*weights, *codes) if w.dim() == 3):
        return f"{op}: expert weight rows must be contiguous (stride 1 along K)"
    if scheme == "fp8" and x.is_cuda and torch.cuda.get_device_capability(x.device) < (8, 9):
        return f"{op}: fp8 experts need compute capability 8.9+ (Ada, Hopper)"
    return None


def moe(x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor,
        *shared: torch.Tensor, out: Optional[torch.Tensor] = None, top_k: int, softmax_first: bool = True,
        renormalize: bool = True, act: str = "silu") -> torch.Tensor:
    """The IR op ``moe`` (see ``membound.ir.ops.moe``): grouped expert kernels, routing and combine in torch."""
    attrs = dict(top_k=top_k, softmax_first=softmax_first, renormalize=renormalize, act=act)
    _check_shapes("moe", x, router, w_gate, w_down)
    reason = _unsupported(x, (router, w_gate, w_up, w_down), act)
    if reason is not None:
        return fallback("moe", reason, get_op("moe").reference(x, router, w_gate, w_up, w_down, *shared, **attrs), out)
    return _launch("moe", x, router, (w_gate, w_up, w_down), None, shared, out, attrs)


def quant_moe(x: torch.Tensor, router: torch.Tensor, q_gate: torch.Tensor, s_gate: torch.Tensor, q_up: torch.Tensor,
              s_up: torch.Tensor, q_down: torch.Tensor, s_down: torch.Tensor, *shared: torch.Tensor,
              out: Optional[torch.Tensor] = None, top_k: int, softmax_first: bool = True, renormalize: bool = True,
              act: str = "silu", scheme: str = "int8", group_size: int = 0) -> torch.Tensor:
    """The IR op ``quant_moe``: the same kernels reading int8 / int4 / fp8 expert weights, dequantized in
    registers (a decode token streams 1 byte, or half a byte, per active expert weight)."""
    attrs = dict(top_k=top_k, softmax_first=softmax_first, renormalize=renormalize, act=act)
    packed = (q_gate, s_gate, q_up, s_up, q_down, s_down)
    _check_shapes("quant_moe", x, router, q_gate, q_down)
    reason = None if scheme in SCHEME_CODE else f"quant_moe: scheme {scheme!r} has no kernel"
    reason = reason or _unsupported(x, (router, *shared), act, quant=(q_gate, q_up, q_down, s_gate, s_up, s_down),
                                    scheme=scheme)
    if reason is not None:
        want = get_op("quant_moe").reference(x, router, *packed, *shared, scheme=scheme, group_size=group_size,
                                             **attrs)
        return fallback("quant_moe", reason, want, out)
    codes = tuple(q.view(torch.uint8) if scheme == "fp8" else q for q in (q_gate, q_up, q_down))
    return _launch("quant_moe", x, router, codes, (s_gate, s_up, s_down), shared, out, attrs,
                   scheme=SCHEME_CODE[scheme], group=group_size)


def _check_shapes(op: str, x: torch.Tensor, router: torch.Tensor, w_gate: torch.Tensor, w_down: torch.Tensor) -> None:
    e, d = router.shape
    if x.shape[-1] != d or w_gate.shape[0] != e or w_down.shape[1] != d:
        raise ValueError(f"{op}: x {tuple(x.shape)}, router {tuple(router.shape)}, gate {tuple(w_gate.shape)}, "
                         f"down {tuple(w_down.shape)} do not agree on E and D")


def _launch(op: str, x: torch.Tensor, router: torch.Tensor, weights: tuple[torch.Tensor, ...],
            scales: Optional[tuple[torch.Tensor, ...]], shared: tuple[torch.Tensor, ...], out: Optional[torch.Tensor],
            attrs: dict, scheme: int = 0, group: int = 0) -> torch.Tensor:
    w_gate, w_up, w_down = weights
    s_gate, s_up, s_down = scales if scales is not None else (w_gate, w_up, w_down)  # unread without a scheme
    top_k, e, d = attrs["top_k"], router.shape[0], router.shape[1]
    result = check_out(op, out, tuple(x.shape), x.dtype, x.device)
    h = x.reshape(-1, d).contiguous()  # [T, D]
    t, i = h.shape[0], w_gate.shape[1]
    # routing weights per pair, pairs sorted by expert (stable: a token's pairs stay in slot order),
    # offsets[e] = first pair of e; one launch after the top-k for a decode step's few pairs (moe_route.py)
    pair_weights, order, offsets = sorted_pairs(h, router, top_k, attrs["softmax_first"], attrs["renormalize"])
    hidden = torch.empty((t * top_k, i), dtype=x.dtype, device=x.device)  # silu(gate) * up, sorted order
    y = torch.empty((t * top_k, d), dtype=torch.float32, device=x.device)  # weighted expert outputs, pair order
    precision = "ieee" if x.dtype == torch.float32 else "tf32"
    # int4: a K tile inside one group (both powers of two), so each row's (scale, offset) is one load a tile
    cap_k = min(64, group) if scheme == INT4.value else 64
    sn = [sc.stride(1) if sc.dim() > 1 else 0 for sc in (s_gate, s_up, s_down)]
    bn, bk = _block(i, 64), _block(d, cap_k)
    launchable(_moe_gate_up, x.device)[(e, cdiv(i, bn))](
        h, w_gate, w_up, s_gate, s_up, hidden, order, offsets, i, d, w_gate.shape[-1], top_k, h.stride(0),
        w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1), s_gate.stride(0), sn[0],
        s_up.stride(0), sn[1], hidden.stride(0), BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=bk,
        INPUT_PRECISION=precision, SCHEME=scheme, GROUP=max(group, 1), RUNS=INT4_RUNS, num_warps=4)
    bn, bk = _block(d, 64), _block(i, cap_k)
    launchable(_moe_down, x.device)[(e, cdiv(d, bn))](
        hidden, w_down, s_down, y, order, pair_weights, offsets, d, i, w_down.shape[-1],
        hidden.stride(0), w_down.stride(0), w_down.stride(1), s_down.stride(0), sn[2], y.stride(0),
        BLOCK_M=BLOCK_M, BLOCK_N=bn, BLOCK_K=bk, INPUT_PRECISION=precision, SCHEME=scheme, GROUP=max(group, 1),
        RUNS=INT4_RUNS, num_warps=4)
    combined = y.view(t, top_k, d).sum(dim=1)  # [T, D] fp32
    if shared:
        combined += shared_expert(h, shared, attrs["act"])
    result.copy_(combined.view(x.shape))
    note(op, "kernel")
    return result


def moe_bytes(tokens: int, experts: int, top_k: int, hidden: int, intermediate: int, itemsize: int) -> int:
    """Bytes of expert weights a step of ``tokens`` tokens reads: ``min(E, tokens * k)`` experts."""
    return min(experts, tokens * top_k) * 3 * hidden * intermediate * itemsize


__all__ = ["moe", "moe_bytes", "quant_moe"]
