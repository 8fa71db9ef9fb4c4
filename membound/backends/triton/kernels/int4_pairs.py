"""int4 codes to 16-bit floats two at a time: the dequantization of ``quant_matmul``'s ``PAIRS`` path.

The int4 format (``membound/ir/ops/quant.py``) stores ``q[n, 2j]`` in the low nibble of byte ``j`` and
``q[n, 2j + 1]`` in its high nibble, with a (scale, offset) per group: ``w = q * s + o``. The tensor-core
kernel wants ``w`` in x's dtype (bf16/fp16) as its dot operand, split into the even columns (low nibbles)
and the odd ones (high nibbles), each multiplied by the matching half of x. :func:`int4_pairs` makes
both halves from the bytes with packed 16-bit arithmetic, two codes per 32-bit instruction:

- ``prmt`` spreads two bytes of a 32-bit word of four into the two 16-bit halves of a register
  (``[b0, 0, b1, 0]``); a code OR-ed into the low mantissa bits of a power of two is that power plus
  the code, exactly: bf16 ``0x4300`` is 128, so ``(t & 0x000F000F) | 0x43004300`` (one ``lop3``) holds
  ``(128 + q0, 128 + q2)`` and the same after ``t >> 4`` holds ``(128 + q1, 128 + q3)``. fp16 has ten
  mantissa bits: ``0x6400`` is 1024, the low nibble gives ``1024 + q`` and the high one, unshifted,
  ``1024 + 16 q``;
- one packed FMA removes the bias exactly (``t * 1 - 128``; fp16 high nibbles ``t / 16 - 64``) and one
  more applies the group: ``fma.rn(q, s, o)`` rounds ``q * s + o`` once to x's dtype, as the reference's
  dequantize-then-round does (``q * s`` is exact in fp32; the fp32 sum the reference rounds differs only
  in a double rounding).

Per four bytes (eight codes): bf16 2 ``prmt`` + 2 shifts + 4 ``lop3`` + 8 packed FMAs = 2 instructions a
code; fp16 14 (no shifts). The old path (``_nibbles``) spent a shift, a ``lop3``, an fp32 FMA and half a
conversion to 16 bits per code, plus the packing. Folding the bias into the offset (``t * s + (o - 128
s)``) would save a fourth, but ``o - 128 s`` rounded to 16 bits is off by up to a quarter of a
quantization step: not the reference's weight.

The bytes keep the stored layout: a layout chosen for this (pairs ``(q0, q4)`` in one word, as some
kernels store) would replace the two ``prmt`` by shifts the code needs anyway, one instruction in eight,
not worth a second on-disk format.

:func:`int4_codes` (``QuantConfig.pair_codes``, off by default) stops after the ``lop3``: the exact biased
codes ``BIAS + q`` (one instruction a code) go to the tensor cores and the kernel applies the group's
affine map to the fp32 tile product, which needs tiles inside one group and adds per-tile fp32 work and a
sum of x (sm_90 SASS: 3.20 against 3.31 instructions a code under triton 3.9, 3.37 against 3.33 under 3.6).

``PAIRS == 1`` runs the PTX through ``tl.inline_asm_elementwise`` (CUDA, sm_80+: ``fma.rn.bf16x2``);
``PAIRS == 2`` is the same arithmetic in plain Triton (fp32, rounded once), for the interpreter, which
cannot run inline assembly. Which four elements one asm instance receives is the compiler's choice:
the asm is elementwise (byte ``i`` of the register gives element ``i`` of both outputs; the scale and
offset of element ``i`` come in the matching half of their registers), so any grouping is right.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import interpreter_ready

# operands: $0 $1 the low nibbles of bytes (0, 1) and (2, 3); $2 $3 the high ones; $4 the four bytes;
# $5 $6 the scales of elements (0, 1), (2, 3); $7 $8 the offsets
_BF16_PAIRS = tl.constexpr("""{
.reg .b32 t0, t1, u0, u1, one, bias;
mov.b32 one, 0x3F803F80;
mov.b32 bias, 0xC300C300;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $1, t1, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $2, u0, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $3, u1, 0x000F000F, 0x43004300, 0xEA;
fma.rn.bf16x2 $0, $0, one, bias;
fma.rn.bf16x2 $1, $1, one, bias;
fma.rn.bf16x2 $2, $2, one, bias;
fma.rn.bf16x2 $3, $3, one, bias;
fma.rn.bf16x2 $0, $0, $5, $7;
fma.rn.bf16x2 $1, $1, $6, $8;
fma.rn.bf16x2 $2, $2, $5, $7;
fma.rn.bf16x2 $3, $3, $6, $8;
}""")

_F16_PAIRS = tl.constexpr("""{
.reg .b32 t0, t1, one, bias, sixteenth, bias16;
mov.b32 one, 0x3C003C00;
mov.b32 bias, 0xE400E400;
mov.b32 sixteenth, 0x2C002C00;
mov.b32 bias16, 0xD400D400;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
lop3.b32 $0, t0, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $1, t1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $2, t0, 0x00F000F0, 0x64006400, 0xEA;
lop3.b32 $3, t1, 0x00F000F0, 0x64006400, 0xEA;
fma.rn.f16x2 $0, $0, one, bias;
fma.rn.f16x2 $1, $1, one, bias;
fma.rn.f16x2 $2, $2, sixteenth, bias16;
fma.rn.f16x2 $3, $3, sixteenth, bias16;
fma.rn.f16x2 $0, $0, $5, $7;
fma.rn.f16x2 $1, $1, $6, $8;
fma.rn.f16x2 $2, $2, $5, $7;
fma.rn.f16x2 $3, $3, $6, $8;
}""")


# the biased codes only (int4_codes): $0..$3 as above, $4 the bytes; bf16 128 + q, fp16 1024 + q (shifted)
_BF16_CODES = tl.constexpr("""{
.reg .b32 t0, t1, u0, u1;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $1, t1, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $2, u0, 0x000F000F, 0x43004300, 0xEA;
lop3.b32 $3, u1, 0x000F000F, 0x43004300, 0xEA;
}""")

_F16_CODES = tl.constexpr("""{
.reg .b32 t0, t1, u0, u1;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shr.u32 u0, t0, 4;
shr.u32 u1, t1, 4;
lop3.b32 $0, t0, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $1, t1, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $2, u0, 0x000F000F, 0x64006400, 0xEA;
lop3.b32 $3, u1, 0x000F000F, 0x64006400, 0xEA;
}""")


@triton.jit
def int4_codes(raw, dtype: tl.constexpr, PAIRS: tl.constexpr):
    """int4 bytes ``raw`` (u8) -> ``(lo, hi)``: the biased codes ``BIAS + q`` of the low and high nibbles in
    ``dtype`` (bf16: ``BIAS = 128``; fp16: 1024), exact; one instruction a code (``prmt``/shift/``lop3``).
    The caller applies the group's affine map to the fp32 product: ``sum x w = s * sum x (BIAS + q) +
    (o - BIAS s) * sum x``."""
    if PAIRS == 1:
        if dtype == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(_BF16_CODES, "=r,=r,=r,=r,r", [raw], dtype=(tl.bfloat16, tl.bfloat16),
                                               is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(_F16_CODES, "=r,=r,=r,=r,r", [raw], dtype=(tl.float16, tl.float16),
                                               is_pure=True, pack=4)
    else:
        b = raw.to(tl.int32)
        bias = 128.0 if dtype == tl.bfloat16 else 1024.0
        lo = ((b & 15).to(tl.float32) + bias).to(dtype)
        hi = ((b >> 4).to(tl.float32) + bias).to(dtype)
    return lo, hi


@triton.jit
def int4_pairs(raw, s, o, PAIRS: tl.constexpr):
    """int4 bytes ``raw`` (u8) and each element's group scale ``s`` and offset ``o`` in x's dtype (bf16 or
    fp16; broadcast against ``raw``) -> ``(lo, hi)``: the dequantized low and high nibbles ``q * s + o`` in
    that dtype, shaped as ``raw`` (module docstring)."""
    if PAIRS == 1:
        if s.dtype == tl.bfloat16:
            lo, hi = tl.inline_asm_elementwise(_BF16_PAIRS, "=r,=r,=r,=r,r,r,r,r,r", [raw, s, o],
                                               dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            lo, hi = tl.inline_asm_elementwise(_F16_PAIRS, "=r,=r,=r,=r,r,r,r,r,r", [raw, s, o],
                                               dtype=(tl.float16, tl.float16), is_pure=True, pack=4)
    else:
        b = raw.to(tl.int32)
        sf = s.to(tl.float32)
        of = o.to(tl.float32)
        lo = ((b & 15).to(tl.float32) * sf + of).to(s.dtype)
        hi = ((b >> 4).to(tl.float32) * sf + of).to(s.dtype)
    return lo, hi


def pairs_ptx(device: torch.device) -> bool:
    """The int4 pairs dequantization runs its inline PTX (compiled for a CUDA card of sm_80+:
    ``fma.rn.bf16x2``), not the Triton twin (the interpreter, older cards)."""
    return (device.type == "cuda" and not interpreter_ready()
            and torch.cuda.get_device_capability(device) >= (8, 0))
