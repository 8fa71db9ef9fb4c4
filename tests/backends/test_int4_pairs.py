"""The int4 pairs dequantization (``int4_pairs.py``) and the tensor-core path that uses it.

Two checks without a GPU: (1) the kernel at odd sizes under the Triton interpreter, which runs the plain
Triton twin of the PTX (``PAIRS == 2``), against dequantize-then-matmul (fp16, and fp32 where the path
falls back to the old dequantization; tolerances as test_quant_kernels.py: fp32 1e-4, fp16 1e-2); (2)
the PTX text itself, executed by a small emulator of its instructions (``prmt``, ``shr``, ``lop3``,
packed ``fma.rn``) on every byte and on random scales, against ``dequantize`` rounded to the dtype: the
magic constants, byte selectors and operand order are what the GPU will run. The GPU test runs the
compiled PTX in bf16 and fp16.
"""

from __future__ import annotations

import os
import re

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from membound.backends.triton.kernels import LIBRARY, QuantConfig, trace  # noqa: E402
from membound.backends.triton.kernels import int4_pairs as ip  # noqa: E402
from membound.backends.triton.kernels import quant_matmul as qm  # noqa: E402
from membound.ir.ops.quant import dequantize, quantize  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=1e-2, atol=2e-2)}


def rand(*shape: int, dtype: torch.dtype, seed: int = 0, device: str = DEVICE) -> torch.Tensor:
    """|x| in [0.5, 1.5) with a random sign: never zero."""
    gen = torch.Generator().manual_seed(seed + sum(shape))
    mag = torch.rand(shape, generator=gen) + 0.5
    return (mag * torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)).to(dtype).to(device)


def packed(n: int, k: int, group: int, dtype: torch.dtype, device: str = DEVICE):
    w = torch.randn(n, k, generator=torch.Generator().manual_seed(n * 1000 + k)) * k ** -0.5
    q, s = quantize(w.to(dtype).to(device), "int4", group)
    return q, s, dequantize(q, s, "int4", group, k, dtype)


# (M, K, N, group): K not a multiple of the group, K < group, odd K (a padded last nibble), N from 1 to 33
CASES = [(1, 77, 33, 32), (2, 77, 1, 32), (5, 300, 7, 128), (17, 77, 33, 128), (1, 20, 5, 128),
         (2, 160, 17, 64), (5, 45, 2, 16), (17, 300, 9, 32), (1, 256, 24, 128), (5, 129, 31, 64)]


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("m,k,n,group", CASES)
def test_pairs_path(m: int, k: int, n: int, group: int, dtype: torch.dtype) -> None:
    x = rand(m, k, dtype=dtype)
    q, s, w = packed(n, k, group, dtype)
    b = rand(n, dtype=dtype, seed=5)
    # fp32 x keeps the previous int4 path (its own config: a 16-bit one needs more shared memory than a
    # GPU has at fp32, which the H200 run showed)
    cfg = qm.pick_config(m, n, k, "int4", group, dtype, torch.device("cpu"))
    assert cfg.pairs == (dtype != torch.float32)
    assert not qm.pairs_ptx(x.device) or DEVICE == "cuda"  # the interpreter runs the Triton twin
    with trace() as calls:
        y = LIBRARY["quant_linear"](x, q, s, b, scheme="int4", group_size=group, in_features=k, config=cfg)
    assert calls == [("quant_linear", "kernel")], calls
    torch.testing.assert_close(y.float(), F.linear(x.float(), w.float(), b.float()), **TOL[dtype])


@pytest.mark.parametrize("m,k,n,group,split,block_k", [(1, 300, 33, 32, 3, 32), (2, 300, 7, 128, 2, 32),
                                                       (17, 77, 9, 32, 1, 32), (5, 300, 9, 16, 2, 128)])
def test_pairs_gated_and_split(m: int, k: int, n: int, group: int, split: int, block_k: int) -> None:
    """The gated op (x = silu(gate) * up, formed first) and a K split; tiles of one group and of eight."""
    dtype = torch.float16
    gate, up = rand(m, k, dtype=dtype, seed=1), rand(m, k, dtype=dtype, seed=2)
    q, s, w = packed(n, k, group, dtype)
    cfg = QuantConfig(16 if m <= 16 else 32, 16, block_k, split_k=split, use_dot=True, pairs=True)
    with trace() as calls:
        y = LIBRARY["quant_gated_linear"](gate, up, q, s, scheme="int4", group_size=group, in_features=k,
                                          config=cfg)
    assert calls == [("quant_gated_linear", "kernel")], calls
    gx = (F.silu(gate) * up).float()
    torch.testing.assert_close(y.float(), F.linear(gx, w.float()), **TOL[dtype])


# ---------------------------------------------------------------------------------------------
# the PTX, executed by an emulator of the few instructions it uses
# ---------------------------------------------------------------------------------------------
def _halves(v: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor([v & 0xFFFF, v >> 16], dtype=torch.int32).to(torch.int16).view(dtype).double()


def _pack(t: torch.Tensor, dtype: torch.dtype) -> int:
    lo, hi = (int(h) & 0xFFFF for h in t.to(dtype).view(torch.int16))
    return lo | hi << 16


def run_ptx(asm: str, regs: dict[str, int], dtype: torch.dtype) -> dict[str, int]:
    """Execute the asm block's instructions on 32-bit ``regs`` (``$i`` and named); returns the registers."""
    regs = dict(regs)

    def val(a: str) -> int:
        a = a.strip()
        return int(a, 0) & 0xFFFFFFFF if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", a) else regs[a]

    for line in asm.split(";"):
        line = line.strip().strip("{}").strip()
        if not line or line.startswith(".reg"):
            continue
        op, args = line.split(None, 1)
        a = [t.strip() for t in args.split(",")]
        if op == "mov.b32":
            regs[a[0]] = val(a[1])
        elif op == "prmt.b32":
            pool = val(a[1]) | val(a[2]) << 32
            sel = val(a[3])
            regs[a[0]] = sum(((pool >> (8 * ((sel >> (4 * i)) & 7))) & 0xFF) << (8 * i) for i in range(4))
        elif op == "shr.u32":
            regs[a[0]] = val(a[1]) >> val(a[2])
        elif op == "lop3.b32":
            x, y, z, lut = val(a[1]), val(a[2]), val(a[3]), val(a[4])
            assert lut == 0xEA, "the emulator knows (a & b) | c"
            regs[a[0]] = (x & y) | z
        elif op in ("fma.rn.bf16x2", "fma.rn.f16x2"):
            want = torch.bfloat16 if "bf16" in op else torch.float16
            assert want == dtype
            r = _halves(val(a[1]), dtype) * _halves(val(a[2]), dtype) + _halves(val(a[3]), dtype)
            regs[a[0]] = _pack(r, dtype)  # float64 holds the exact fma here; one rounding to the dtype
        else:
            raise AssertionError(f"the emulator does not know {op!r}")
    return regs


@pytest.mark.parametrize("dtype,asm", [(torch.bfloat16, ip._BF16_PAIRS.value), (torch.float16, ip._F16_PAIRS.value)])
def test_ptx_dequantizes_every_byte(dtype: torch.dtype, asm: str) -> None:
    """All 256 byte values in every position of the 32-bit word, with random (scale, offset) per element,
    give lo = (b & 15) * s + o and hi = (b >> 4) * s + o rounded once to the dtype (the reference's value)."""
    gen = torch.Generator().manual_seed(0)
    codes = torch.randperm(256, generator=gen).view(64, 4)
    codes = torch.cat([codes, codes.roll(1, dims=1), codes.roll(2, dims=1), codes.roll(3, dims=1)])
    mismatches = 0
    for row in codes.tolist():
        s = (torch.rand(4, generator=gen) * 0.05 + 1e-3).to(dtype)
        o = (-torch.rand(4, generator=gen) * 0.4).to(dtype)
        regs = {"$4": row[0] | row[1] << 8 | row[2] << 16 | row[3] << 24,
                "$5": _pack(s[:2].double(), dtype), "$6": _pack(s[2:].double(), dtype),
                "$7": _pack(o[:2].double(), dtype), "$8": _pack(o[2:].double(), dtype)}
        out = run_ptx(asm, regs, dtype)
        lo = torch.cat([_halves(out["$0"], dtype), _halves(out["$1"], dtype)])
        hi = torch.cat([_halves(out["$2"], dtype), _halves(out["$3"], dtype)])
        b = torch.tensor(row)
        for got, q in ((lo, b & 15), (hi, b >> 4)):
            want = (q.float() * s.float() + o.float()).to(dtype).double()  # dequantize's fp32, then one rounding
            assert torch.equal((got - want).abs() <= want.abs() * 2.0 ** -7, torch.ones(4, dtype=torch.bool)), \
                (row, got, want)
            mismatches += int((got != want).sum())
    assert mismatches <= 2, f"{mismatches} of 2048 values differ from the reference's rounding"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 2, 5, 16, 17, 32])
def test_pairs_gpu(m: int, dtype: torch.dtype) -> None:
    """The compiled PTX (PAIRS == 1) at model-like and odd sizes, against the torch reference."""
    for n, k, group in ((4096, 4096, 128), (33, 300, 32), (1000, 77, 128)):
        x = rand(m, k, dtype=dtype, device="cuda")
        q, s, w = packed(n, k, group, dtype, device="cuda")
        cfg = qm.pick_config(m, n, k, "int4", group, dtype, x.device)
        assert cfg.pairs
        y = qm.quant_linear(x, q, s, scheme="int4", group_size=group, in_features=k)
        torch.testing.assert_close(y.float(), F.linear(x.float(), w.float()), **TOL[dtype])


@pytest.mark.parametrize("dtype,asm,bias", [(torch.bfloat16, ip._BF16_CODES.value, 128.0),
                                            (torch.float16, ip._F16_CODES.value, 1024.0)])
def test_ptx_biased_codes_of_every_byte(dtype: torch.dtype, asm: str, bias: float) -> None:
    """``int4_codes``' PTX: lo = BIAS + (b & 15), hi = BIAS + (b >> 4), exactly, for every byte in every position."""
    for first in range(0, 256, 4):
        row = [first, (first + 85) % 256, (first + 170) % 256, 255 - first]
        out = run_ptx(asm, {"$4": row[0] | row[1] << 8 | row[2] << 16 | row[3] << 24}, dtype)
        lo = torch.cat([_halves(out["$0"], dtype), _halves(out["$1"], dtype)])
        hi = torch.cat([_halves(out["$2"], dtype), _halves(out["$3"], dtype)])
        b = torch.tensor(row, dtype=torch.float64)
        assert torch.equal(lo, bias + b.remainder(16)), (row, lo)
        assert torch.equal(hi, bias + (b / 16).floor()), (row, hi)


@pytest.mark.parametrize("m,k,n,group,split", [(1, 300, 33, 128, 2), (5, 77, 7, 32, 1), (17, 129, 9, 64, 1)])
def test_pair_codes_variant(m: int, k: int, n: int, group: int, split: int) -> None:
    """``pair_codes``: the dot on the biased codes, the group's scale/offset on the fp32 product (fp16)."""
    dtype = torch.float16
    x = rand(m, k, dtype=dtype)
    q, s, w = packed(n, k, group, dtype)
    cfg = QuantConfig(16 if m <= 16 else 32, 16, min(group, 128), split_k=split, use_dot=True, pairs=True,
                      pair_codes=True)
    with trace() as calls:
        y = LIBRARY["quant_linear"](x, q, s, scheme="int4", group_size=group, in_features=k, config=cfg)
    assert calls == [("quant_linear", "kernel")], calls
    torch.testing.assert_close(y.float(), F.linear(x.float(), w.float()), **TOL[dtype])
    with pytest.raises(ValueError, match="pair_codes needs block_k <= group_size"):
        LIBRARY["quant_linear"](x, q, s, scheme="int4", group_size=group, in_features=k,
                                config=QuantConfig(16, 16, 2 * group, use_dot=True, pairs=True, pair_codes=True))
