"""Dequantize a packed weight into a float ``[N, K]`` temporary: the first half of quantized prefill's
"dequantize, then cuBLAS" path (``quant_matmul.prefill_path``).

The result equals ``membound.ir.ops.quant.dequantize`` bit for bit: every scheme is computed in fp32 and
rounded once to the output dtype (int8 ``q * s[n]``, fp8 e4m3 ``f(q) * s[n]``, int4 ``q * s[n, g] + o[n, g]``
with ``g = k // group_size``, code ``k`` the low (even k) or high (odd k) nibble of byte ``k // 2``).

Why a kernel: the torch reference is several elementwise kernels with ``[N, K]`` fp32 temporaries (int4
also gathers each element's scale and offset through an index tensor). On an H200 it ran at 10% of read
bandwidth for int8 and 2.4% for int4, counting the packed read and the float write
(``benches/results/quant_matmul-nvidia-h200-2026-12-01.json``, "dequant+cublas" less "cublas bf16" at
M = 64). That was 0.4-6.4 ms per matrix, several times the matmul it feeds. Here each program reads its
``[BLOCK_N, BLOCK_K]`` codes once, as contiguous runs along K (an int4 row's bytes as one run, split into
nibbles and interleaved in registers), and writes the float tile once.

Falls back to the torch reference for CPU tensors without ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import cdiv, launchable, unsupported_device
from membound.backends.triton.kernels.quant_matmul import SCHEME_CODE

BLOCK_N = 16
BLOCK_K = 256  # elements along K per program: 256 bytes of int8, 128 of int4, 512 of bf16 written per row
# int4's q * s + o as a multiply then an add, each rounded, as torch computes it: a fused multiply-add
# rounds once and differs in the last fp32 bit (seen on the H200 in fp32). The interpreter never fuses.
NO_FMA = {} if os.environ.get("TRITON_INTERPRET", "0") == "1" else {"enable_fp_fusion": False}


@triton.jit
def _dequantize(q_ptr, s_ptr, w_ptr, N, K, KW, G, stride_q, stride_sn, stride_sg, stride_w,
                SCHEME: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    ns = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    n_ok = ns < N
    k0 = pid_k * BLOCK_K
    ks = k0 + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    if SCHEME == 1:
        # int4: the tile's BLOCK_K / 2 bytes a row, one contiguous run; nibbles interleaved back into k order
        kb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        raw = tl.load(q_ptr + ns[:, None] * stride_q + kb[None, :], mask=n_ok[:, None] & (kb[None, :] < KW),
                      other=0).to(tl.int32)
        lo = (raw & 0xF).to(tl.float32)
        hi = ((raw >> 4) & 0xF).to(tl.float32)
        q = tl.reshape(tl.join(lo, hi), (BLOCK_N, BLOCK_K))  # [.., kb, 2] -> k = 2 kb + nibble
        pair = s_ptr + ns[:, None] * stride_sn + (ks[None, :] // G) * stride_sg
        mask = n_ok[:, None] & k_ok[None, :]
        s = tl.load(pair, mask=mask, other=0.0).to(tl.float32)
        o = tl.load(pair + 1, mask=mask, other=0.0).to(tl.float32)
        w = q * s + o
    else:
        raw = tl.load(q_ptr + ns[:, None] * stride_q + ks[None, :], mask=n_ok[:, None] & k_ok[None, :], other=0)
        if SCHEME == 2:
            q = raw.to(tl.float8e4nv, bitcast=True).to(tl.float32)  # passed as its bytes (u8)
        else:
            q = raw.to(tl.float32)
        w = q * tl.load(s_ptr + ns * stride_sn, mask=n_ok, other=0.0).to(tl.float32)[:, None]
    tl.store(w_ptr + ns[:, None] * stride_w + ks[None, :], w.to(w_ptr.dtype.element_ty),
             mask=n_ok[:, None] & k_ok[None, :])


def dequantize_weight(qweight: torch.Tensor, scales: torch.Tensor, scheme: str, group_size: int, in_features: int,
                      dtype: torch.dtype) -> torch.Tensor:
    """``membound.ir.ops.quant.dequantize(qweight, scales, scheme, group_size, in_features, dtype)`` by one
    kernel: a new contiguous ``[N, in_features]`` tensor of ``dtype``."""
    from membound.ir.ops.quant import dequantize

    if scheme not in SCHEME_CODE:
        raise ValueError(f"dequantize_weight: unknown scheme {scheme!r}; expected one of {sorted(SCHEME_CODE)}")
    if unsupported_device(qweight, scales) is not None or qweight.stride(-1) != 1 and qweight.shape[-1] > 1:
        return dequantize(qweight, scales, scheme, group_size, in_features, dtype)
    n, k = qweight.shape[0], in_features
    w = torch.empty((n, k), dtype=dtype, device=qweight.device)
    if n == 0 or k == 0:
        return w
    q = qweight.view(torch.uint8) if scheme == "fp8" else qweight
    s = scales.contiguous()
    stride_sg = s.stride(1) if scheme == "int4" else 0
    launchable(_dequantize, qweight.device)[(cdiv(n, BLOCK_N), cdiv(k, BLOCK_K))](
        q, s, w, n, k, qweight.shape[1], max(group_size, 1), q.stride(0), s.stride(0), stride_sg, w.stride(0),
        SCHEME=SCHEME_CODE[scheme], BLOCK_N=BLOCK_N, BLOCK_K=BLOCK_K, num_warps=4,
        **NO_FMA)
    return w


__all__ = ["dequantize_weight"]
