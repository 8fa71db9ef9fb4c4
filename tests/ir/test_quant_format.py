"""The packed weight formats of membound.ir.ops.quant: quantize -> dequantize round trips and error bounds,
and the type rules of quant_linear / quant_gated_linear."""

from __future__ import annotations

import pytest
import torch

from membound.ir import parse, verify
from membound.ir.ops import get_op
from membound.ir.ops.quant import dequantize, num_groups, quantize, unpack_int4


def _w(n: int, k: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * 0.05 + 0.01).to(dtype)


@pytest.mark.parametrize("k", [1, 5, 64, 130])
def test_int8_round_trip_error_is_at_most_half_a_step(k: int) -> None:
    w = _w(9, k)
    q, s = quantize(w, "int8")
    assert q.dtype == torch.int8 and q.shape == (9, k) and s.shape == (9,) and s.dtype == w.dtype
    assert int(q.abs().max()) == 127  # the largest magnitude of every row maps to +-127
    d = dequantize(q, s, "int8", 0, k)
    step = s[:, None]
    assert torch.all((d - w).abs() <= step / 2 + 1e-7)
    assert not torch.equal(d, w)  # quantization really happened


@pytest.mark.parametrize("k,group", [(5, 32), (33, 32), (64, 32), (130, 128), (200, 64), (7, 16)])
def test_int4_round_trip_per_group(k: int, group: int) -> None:
    w = _w(6, k, seed=k)
    q, s = quantize(w, "int4", group)
    g = num_groups(k, group)
    assert q.dtype == torch.uint8 and q.shape == (6, (k + 1) // 2)
    assert s.shape == (6, g, 2)
    codes = unpack_int4(q, k)
    assert codes.shape == (6, k) and int(codes.max()) <= 15
    if k % 2:  # the pad nibble of an odd K stays zero
        assert int((q[:, -1] >> 4).max()) == 0
    d = dequantize(q, s, "int4", group, k)
    scale = s[:, torch.arange(k) // group, 0]
    assert torch.all((d - w).abs() <= scale / 2 + 1e-6)
    # each group's min and max are represented (codes 0 and 15 are used in every group with a range)
    for j in range(g):
        block = codes[:, j * group:(j + 1) * group]
        if block.shape[1] < 2:  # a one-column group has no range: its code is 0
            assert int(block.max()) == 0
            continue
        assert int(block.min()) == 0 and int(block.max()) == 15


def test_int4_partial_last_group_does_not_widen_its_range() -> None:
    # the padded tail of K=33 with group 32 must not pull the last group's min/max toward 0
    w = torch.full((2, 33), 5.0)
    w[:, 32] = 7.0
    q, s = quantize(w, "int4", 32)
    d = dequantize(q, s, "int4", 32, 33)
    torch.testing.assert_close(d, w, rtol=0, atol=1e-6)


def test_fp8_round_trip_relative_error() -> None:
    w = _w(8, 40)
    q, s = quantize(w, "fp8")
    assert q.dtype == torch.float8_e4m3fn
    d = dequantize(q, s, "fp8", 0, 40)
    # e4m3 keeps 3 mantissa bits: relative error <= 2**-4 of each value (plus subnormals near 0)
    assert torch.all((d - w).abs() <= w.abs() * 2 ** -4 + s[:, None] * 2 ** -9)


def test_dequantize_rounds_to_the_asked_dtype() -> None:
    w = _w(4, 16, torch.float16)
    q, s = quantize(w, "int8")
    assert s.dtype == torch.float16
    assert dequantize(q, s, "int8", 0, 16).dtype == torch.float16
    assert dequantize(q, s, "int8", 0, 16, torch.float32).dtype == torch.float32


@pytest.mark.parametrize("bad", [dict(scheme="int3"), dict(scheme="int4", group_size=100)])
def test_quantize_rejects_unknown_schemes(bad: dict) -> None:
    with pytest.raises(ValueError, match="quantize"):
        quantize(_w(2, 4), bad["scheme"], bad.get("group_size", 128))


def test_reference_is_dequantize_then_linear() -> None:
    w, x, b = _w(7, 33), torch.randn(3, 33), torch.randn(7)
    q, s = quantize(w, "int4", 32)
    y = get_op("quant_linear").reference(x, q, s, b, scheme="int4", group_size=32, in_features=33)
    torch.testing.assert_close(y, x @ dequantize(q, s, "int4", 32, 33).T + b)
    g, u = torch.randn(3, 33), torch.randn(3, 33)
    y = get_op("quant_gated_linear").reference(g, u, q, s, scheme="int4", group_size=32, in_features=33)
    torch.testing.assert_close(y, (torch.nn.functional.silu(g) * u) @ dequantize(q, s, "int4", 32, 33).T)


TYPED = """graph @f(%x: bf16[B, 40]) params(%q: u8[24, 20], %s: bf16[24, 2, 2]) {
  %y = quant_linear(%x, %q, %s) {scheme="int4", group_size=32, in_features=40} : bf16[B, 24]
  return %y
}"""


def test_type_rule_accepts_a_packed_int4_weight() -> None:
    verify(parse(TYPED))


@pytest.mark.parametrize("change,message", [
    (("u8[24, 20]", "i8[24, 20]"), "qweight must be"),
    (("u8[24, 20]", "u8[24, 40]"), "columns"),
    (("bf16[24, 2, 2]", "f32[24, 2, 2]"), "activation dtype"),
    (("bf16[24, 2, 2]", "bf16[24, 3, 2]"), "groups"),
    (("group_size=32", "group_size=30"), "group_size"),
    (("in_features=40", "in_features=41"), "in_features"),
])
def test_type_rule_names_what_is_wrong(change: tuple[str, str], message: str) -> None:
    with pytest.raises(Exception, match=message):
        verify(parse(TYPED.replace(*change)))
