"""quantize-weights: IR before/after, numerics against the dequantized float graph, the error it
really introduces, the cost rule, skip patterns, shared and tied weights, unmatched graphs."""

from __future__ import annotations

import pytest
import torch
from pass_testing import BINDINGS, apply, check_unchanged, parse_with_params, random_tensor

from membound.backends.reference import run_graph
from membound.cost import Hardware, RooflineCost
from membound.ir import parse, print_graph, structurally_equal, sym
from membound.passes import PassContext
from membound.passes.quantize_weights import QuantConfig, QuantizeWeights, as_quant_config, dequantized_weights

LINEARS = """graph @f(%x: f32[B, S, 40]) params(%w: f32[24, 40], %b: f32[24], %w2: f32[40, 24]) {
  %y = linear(%x, %w, %b) : f32[B, S, 24]
  %z = linear(%y, %w2) : f32[B, S, 40]
  return %z
}"""

CASES = [
    ("int8", 0, LINEARS, """graph @f(%x: f32[B, S, 40]) params(%b: f32[24], %w.qweight: i8[24, 40], %w.scales: f32[24], %w2.qweight: i8[40, 24], %w2.scales: f32[40]) {
  %0 = quant_linear(%x, %w.qweight, %w.scales, %b) {scheme="int8", group_size=0, in_features=40} : f32[B, S, 24]
  %1 = quant_linear(%0, %w2.qweight, %w2.scales) {scheme="int8", group_size=0, in_features=24} : f32[B, S, 40]
  return %1
}"""),
    ("int4", 16, LINEARS, """graph @f(%x: f32[B, S, 40]) params(%b: f32[24], %w.qweight: u8[24, 20], %w.scales: f32[24, 3, 2], %w2.qweight: u8[40, 12], %w2.scales: f32[40, 2, 2]) {
  %0 = quant_linear(%x, %w.qweight, %w.scales, %b) {scheme="int4", group_size=16, in_features=40} : f32[B, S, 24]
  %1 = quant_linear(%0, %w2.qweight, %w2.scales) {scheme="int4", group_size=16, in_features=24} : f32[B, S, 40]
  return %1
}"""),
    ("int8", 0,  # the gated down projection (after fuse-gated-linear)
     """graph @f(%g: f32[B, 24], %u: f32[B, 24]) params(%w: f32[8, 24]) {
  %y = gated_linear(%g, %u, %w) {act="silu"} : f32[B, 8]
  return %y
}""", """graph @f(%g: f32[B, 24], %u: f32[B, 24]) params(%w.qweight: i8[8, 24], %w.scales: f32[8]) {
  %0 = quant_gated_linear(%g, %u, %w.qweight, %w.scales) {scheme="int8", group_size=0, in_features=24, act="silu"} : f32[B, 8]
  return %0
}"""),
    ("int4", 32,  # GPT-2's Conv1D: x @ W[K, N] is quantized as W.T; K=21 < one group, odd
     """graph @f(%x: f32[B, 21]) params(%w: f32[21, 9]) {
  %y = matmul(%x, %w) : f32[B, 9]
  return %y
}""", """graph @f(%x: f32[B, 21]) params(%w.t.qweight: u8[9, 11], %w.t.scales: f32[9, 1, 2]) {
  %0 = quant_linear(%x, %w.t.qweight, %w.t.scales) {scheme="int4", group_size=32, in_features=21} : f32[B, 9]
  return %0
}"""),
]


def _pass(scheme: str, group: int) -> QuantizeWeights:
    return QuantizeWeights(QuantConfig(scheme, group or 128))


@pytest.mark.parametrize("scheme,group,before,expected", CASES)
def test_ir(scheme: str, group: int, before: str, expected: str) -> None:
    g = parse_with_params(before)
    assert apply(_pass(scheme, group), g) is True
    want = parse(expected)
    diff = structurally_equal(g, want, explain=True)
    assert diff == "", f"{diff}\n--- got:\n{print_graph(g)}"


def _inputs(g, seed: int = 1) -> list[torch.Tensor]:
    binds = {sym(k): n for k, n in BINDINGS.items()}
    gen = torch.Generator().manual_seed(seed)
    return [random_tensor(v, binds, gen) for v in g.inputs]


@pytest.mark.parametrize("scheme,group,before,expected", CASES)
@pytest.mark.parametrize("which", ["int8", "int4", "fp8"])
def test_numerics_equal_the_dequantized_float_graph(scheme: str, group: int, before: str, expected: str,
                                                    which: str) -> None:
    """The quantized graph computes exactly what the float graph computes with dequantized weights
    (fp32: 1e-5), and differs from the float graph with the original weights (the error is real)."""
    g = parse_with_params(before)
    original = g.copy()
    inputs = _inputs(g)
    apply(_pass(which, 16), g)
    deq = dequantized_weights(g)
    assert set(deq) == {p.name for p in original.params if p.rank == 2}
    with_deq = original.copy()
    for name, w in deq.items():
        with_deq.tensors[name] = w
    got, want, exact = run_graph(g, inputs), run_graph(with_deq, inputs), run_graph(original, inputs)
    for a, b, c in zip(got, want, exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        rel = float((a - c).norm() / c.norm())
        bound = {"int8": 0.02, "int4": 0.2, "fp8": 0.1}[which]
        assert 1e-5 < rel < bound, f"{which}: relative error {rel:.3g} against the float weights"


def test_skip_patterns_keep_float_weights() -> None:
    g = parse_with_params(LINEARS)
    ctx = PassContext()
    assert QuantizeWeights(QuantConfig("int8", skip=("w2",)))(g, ctx)
    ops = [n.op for n in g.nodes]
    assert ops == ["quant_linear", "linear"]
    assert any(p.name == "w2" for p in g.params)


def test_a_shared_weight_is_quantized_once_and_a_tied_table_keeps_its_float_copy() -> None:
    text = """graph @f(%ids: i64[B, S], %x: f32[B, S, 16]) params(%emb: f32[32, 16]) {
      %e = embedding(%emb, %ids) : f32[B, S, 16]
      %a = linear(%x, %emb) : f32[B, S, 32]
      %b = linear(%e, %emb) : f32[B, S, 32]
      %c = add(%a, %b) : f32[B, S, 32]
      return %c
    }"""
    g = parse_with_params(text)
    assert apply(_pass("int8", 0), g)
    assert sorted(p.name for p in g.params) == ["emb", "emb.qweight", "emb.scales"]
    assert [n.op for n in g.nodes].count("quant_linear") == 2


def test_cache_makes_a_second_capture_reuse_the_packed_tensors() -> None:
    config = QuantConfig("int4", 16)
    first, second = parse_with_params(LINEARS), parse_with_params(LINEARS)
    second.tensors.update(first.tensors)  # the same model's tensors, captured twice
    QuantizeWeights(config)(first, PassContext())
    QuantizeWeights(config)(second, PassContext())
    assert first.tensors["w.qweight"] is second.tensors["w.qweight"]


class _NeverPays:
    """A cost model under which quantizing never pays (to check the pass asks it)."""

    def estimate(self, node, dims):
        class _E:
            time_s = 2.0 if node.op.startswith("quant") else 1.0
        return _E()


def test_the_cost_model_decides_and_the_log_says_why() -> None:
    g = parse_with_params(LINEARS)
    ctx = PassContext(cost=_NeverPays())
    assert QuantizeWeights(QuantConfig("int8"))(g, ctx) is False
    assert any("left in f32" in line and "cost model" in line for line in ctx.log)


def test_the_roofline_model_quantizes_decode_linears() -> None:
    g = parse_with_params(LINEARS)
    ctx = PassContext(cost=RooflineCost(Hardware.named("h100-sxm")))
    assert QuantizeWeights(QuantConfig("int4", 16))(g, ctx) is True


UNCHANGED = [
    # the weight is an activation, not a parameter
    """graph @f(%x: f32[B, 8], %w: f32[4, 8]) {
      %y = linear(%x, %w) : f32[B, 4]
      return %y
    }""",
    # no linear at all
    """graph @f(%x: f32[B, 8]) params(%w: f32[8]) {
      %y = mul(%x, %w) : f32[B, 8]
      return %y
    }""",
    # a batched matmul of two activations
    """graph @f(%a: f32[B, 4, 8], %b: f32[B, 8, 4]) {
      %y = matmul(%a, %b) : f32[B, 4, 4]
      return %y
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unmatched_graphs_are_unchanged(text: str) -> None:
    check_unchanged(_pass("int8", 0), text)


def test_config_arguments_are_checked() -> None:
    assert as_quant_config(None) is None
    assert as_quant_config("int4").group_size == 128
    with pytest.raises(ValueError, match="quantize='int5'"):
        as_quant_config("int5")
    with pytest.raises(ValueError, match="group_size"):
        QuantConfig("int4", group_size=100)
    with pytest.raises(TypeError, match="quantize must be"):
        as_quant_config(8)
