"""``quant_dequant.dequantize_weight`` (the kernel behind quantized prefill's dequantize + cuBLAS path)
against ``ir/ops/quant.dequantize``: equal bit for bit (both compute in fp32 and round once).

On CPU the kernel runs under the Triton interpreter (``TRITON_INTERPRET=1`` set below, before anything
imports triton) in fp32 and fp16; on a GPU also bf16. Sizes are odd: K not a multiple of the group or of
the kernel's 256-wide tile, K smaller than a group, an odd K (int4's padded last nibble), N not a multiple
of 16.
"""

from __future__ import annotations

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from membound.backends.triton.kernels import quant_matmul as qm  # noqa: E402
from membound.backends.triton.kernels import trace  # noqa: E402
from membound.backends.triton.kernels.quant_dequant import dequantize_weight  # noqa: E402
from membound.ir.ops.quant import dequantize, quantize  # noqa: E402

DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
CASES = [  # scheme, group, N, K
    ("int8", 0, 17, 300),
    ("int8", 0, 5, 7),
    ("int4", 32, 19, 301),   # odd K: a partial last group and a padded last nibble
    ("int4", 128, 3, 77),    # K < the group
    ("int4", 16, 33, 520),   # K past two 256-wide tiles
]
if DEVICE == "cuda" and torch.cuda.get_device_capability() >= (8, 9):
    CASES.append(("fp8", 0, 17, 300))


def packed(scheme: str, group: int, n: int, k: int, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(n * 1000 + k)
    w = (torch.randn(n, k, generator=gen) * k ** -0.5).to(dtype).to(DEVICE)
    return quantize(w, scheme, group or 128)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,group,n,k", CASES)
def test_dequantize_weight_equals_the_reference_bit_for_bit(scheme: str, group: int, n: int, k: int,
                                                            dtype: torch.dtype) -> None:
    q, s = packed(scheme, group, n, k, dtype)
    got = dequantize_weight(q, s, scheme, group, k, dtype)
    want = dequantize(q, s, scheme, group, k, dtype)
    assert got.shape == (n, k) and got.dtype == dtype and got.is_contiguous()
    assert torch.equal(got, want), float((got.float() - want.float()).abs().max())
    assert float(want.float().abs().max()) > 0  # a test that an all-zero weight would pass proves nothing


def test_fp8_codes_dequantize_through_the_kernel_in_the_interpreter() -> None:
    """fp8 e4m3 on CPU (the interpreter decodes the bitcast bytes): every finite code, both signs."""
    if DEVICE == "cuda":
        pytest.skip("covered by the parametrized test on cards with fp8")
    codes = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn)
    finite = codes[~torch.isnan(codes.float())].reshape(1, -1)  # 254 codes: +-NaN dropped
    s = torch.full((1,), 0.75)
    got = dequantize_weight(finite, s, "fp8", 0, finite.shape[1], torch.float32)
    assert torch.equal(got, dequantize(finite, s, "fp8", 0, finite.shape[1], torch.float32))


def test_prefill_cublas_path_uses_the_kernel_and_equals_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """M > 32 with the rule forced to "dequantize + cuBLAS": the plain and the gated op equal their
    dequantize-then-matmul references (fp32, 1e-4)."""
    monkeypatch.setattr(qm, "prefill_path", lambda *a, **k: "cublas")
    calls = []
    real = dequantize_weight
    import membound.backends.triton.kernels.quant_dequant as qd

    monkeypatch.setattr(qd, "dequantize_weight", lambda *a, **k: calls.append(a[2]) or real(*a, **k))
    gen = torch.Generator().manual_seed(3)
    x, u = (torch.randn(40, 77, generator=gen).to(DEVICE) for _ in range(2))
    q, s = packed("int4", 32, 33, 77, torch.float32)
    w = dequantize(q, s, "int4", 32, 77, torch.float32)
    b = torch.randn(33, generator=gen).to(DEVICE)
    with trace() as paths:
        y = qm.quant_linear(x, q, s, b, scheme="int4", group_size=32, in_features=77)
        g = qm.quant_gated_linear(x, u, q, s, scheme="int4", group_size=32, in_features=77)
    assert [p for _, p in paths] == ["cublas", "cublas"] and calls == ["int4", "int4"]
    torch.testing.assert_close(y, F.linear(x, w, b), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g, F.linear(F.silu(x) * u, w), rtol=1e-4, atol=1e-4)


def test_unknown_scheme_is_named() -> None:
    q, s = packed("int8", 0, 3, 8, torch.float32)
    with pytest.raises(ValueError, match="dequantize_weight: unknown scheme 'int3'"):
        dequantize_weight(q, s, "int3", 0, 8, torch.float32)
