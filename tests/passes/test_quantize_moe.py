"""quantize-weights on ``moe``: int8 / int4 / fp8 experts become ``quant_moe`` (int8/fp8: codes
[E, N, K], scales [E, N]; int4: bytes [E, N, ceil(K/2)], (scale, offset) [E, N, groups, 2]); the router
and the shared expert stay float.

Numerics: the quantized graph equals the float ``moe`` over the dequantized experts exactly (the
reference dequantizes, then runs moe's reference), and the float model within a per-scheme bound
(measured here: int8 ~0.005, fp8 ~0.03, int4 g16 ~0.07) that is also not zero.
"""

from __future__ import annotations

import pytest
import torch
from pass_testing import BINDINGS, apply, parse_with_params, random_tensor

from membound.backends.reference import run_graph
from membound.cost import Hardware, RooflineCost
from membound.ir import get_op, parse, print_graph, structurally_equal, sym
from membound.ir.ops.moe import dequantize_experts
from membound.passes import PassContext
from membound.passes.quantize_weights import QuantConfig, QuantizeWeights, dequantized_experts

MOE = """graph @f(%x: f32[B, S, 16]) params(%router: f32[5, 16], %wg: f32[5, 12, 16], %wu: f32[5, 12, 16], %wd: f32[5, 16, 12], %sg: f32[7, 16], %su: f32[7, 16], %sd: f32[16, 7], %sr: f32[1, 16], %head: f32[9, 16]) {
  %y = moe(%x, %router, %wg, %wu, %wd, %sg, %su, %sd, %sr) {top_k=2, softmax_first=true, renormalize=false, act="silu"} : f32[B, S, 16]
  %z = linear(%y, %head) : f32[B, S, 9]
  return %z
}"""

MOE_INT8 = """graph @f(%x: f32[B, S, 16]) params(%router: f32[5, 16], %sg: f32[7, 16], %su: f32[7, 16], %sd: f32[16, 7], %sr: f32[1, 16], %wg.qweight: i8[5, 12, 16], %wg.scales: f32[5, 12], %wu.qweight: i8[5, 12, 16], %wu.scales: f32[5, 12], %wd.qweight: i8[5, 16, 12], %wd.scales: f32[5, 16], %head.qweight: i8[9, 16], %head.scales: f32[9]) {
  %0 = quant_moe(%x, %router, %wg.qweight, %wg.scales, %wu.qweight, %wu.scales, %wd.qweight, %wd.scales, %sg, %su, %sd, %sr) {top_k=2, softmax_first=true, renormalize=false, act="silu", scheme="int8", group_size=0} : f32[B, S, 16]
  %1 = quant_linear(%0, %head.qweight, %head.scales) {scheme="int8", group_size=0, in_features=16} : f32[B, S, 9]
  return %1
}"""


def _inputs(g):  # type: ignore[no-untyped-def]
    binds = {sym(k): n for k, n in BINDINGS.items()}
    gen = torch.Generator().manual_seed(1)
    return [random_tensor(v, binds, gen) for v in g.inputs]


def test_ir() -> None:
    g = parse_with_params(MOE)
    ctx = PassContext()
    assert apply(QuantizeWeights(QuantConfig("int8")), g, ctx) is True
    diff = structurally_equal(g, parse(MOE_INT8), explain=True)
    assert diff == "", f"{diff}\n{print_graph(g)}"
    assert any("1 linears to int8, the experts of 1 moe ops" in line for line in ctx.log), ctx.log


MOE_INT4 = """graph @f(%x: f32[B, S, 16]) params(%router: f32[5, 16], %sg: f32[7, 16], %su: f32[7, 16], %sd: f32[16, 7], %sr: f32[1, 16], %wg.qweight: u8[5, 12, 8], %wg.scales: f32[5, 12, 1, 2], %wu.qweight: u8[5, 12, 8], %wu.scales: f32[5, 12, 1, 2], %wd.qweight: u8[5, 16, 6], %wd.scales: f32[5, 16, 1, 2], %head.qweight: u8[9, 8], %head.scales: f32[9, 1, 2]) {
  %0 = quant_moe(%x, %router, %wg.qweight, %wg.scales, %wu.qweight, %wu.scales, %wd.qweight, %wd.scales, %sg, %su, %sd, %sr) {top_k=2, softmax_first=true, renormalize=false, act="silu", scheme="int4", group_size=16} : f32[B, S, 16]
  %1 = quant_linear(%0, %head.qweight, %head.scales) {scheme="int4", group_size=16, in_features=16} : f32[B, S, 9]
  return %1
}"""


def test_ir_int4() -> None:
    g = parse_with_params(MOE)
    assert apply(QuantizeWeights(QuantConfig("int4", 16)), g) is True
    diff = structurally_equal(g, parse(MOE_INT4), explain=True)
    assert diff == "", f"{diff}\n{print_graph(g)}"


BOUND = {"int8": 2e-2, "fp8": 8e-2, "int4": 0.2}


@pytest.mark.parametrize("scheme", ["int8", "int4", "fp8"])
def test_numerics_equal_moe_over_the_dequantized_experts(scheme: str) -> None:
    g = parse_with_params(MOE)
    x = _inputs(g)
    want_float = run_graph(g.copy(), x)[0]
    apply(QuantizeWeights(QuantConfig(scheme, 16)), g)
    got = run_graph(g, x)[0]
    t = g.tensors
    node = next(n for n in g.nodes if n.op == "quant_moe")
    experts = dequantized_experts(g)
    assert sorted(experts) == ["wd", "wg", "wu"] and experts["wd"].shape == (5, 16, 12)
    assert torch.equal(experts["wg"], dequantize_experts(t["wg.qweight"], t["wg.scales"], torch.float32, scheme, 16,
                                                         16))
    attrs = {k: v for k, v in node.attrs.items() if k not in ("scheme", "group_size")}
    y = get_op("moe").reference(x[0], t["router"], *(experts[w] for w in ("wg", "wu", "wd")),
                                *(t[n] for n in ("sg", "su", "sd", "sr")), **attrs)
    group = 16 if scheme == "int4" else 0
    head = get_op("quant_linear").reference(y, t["head.qweight"], t["head.scales"], scheme=scheme, group_size=group,
                                            in_features=16)
    assert torch.equal(got, head)
    error = float((got - want_float).norm() / want_float.norm())
    assert 1e-4 < error < BOUND[scheme], f"{scheme}: {error:.3g}"


def test_f64_experts_stay_in_float_and_say_so() -> None:
    g = parse_with_params(MOE.replace("f32", "f64"))
    ctx = PassContext()
    apply(QuantizeWeights(QuantConfig("int4", 16)), g, ctx)
    assert g.count("moe") == 1 and g.count("quant_moe") == 0
    assert any("experts left in f64: f64 activations" in line for line in ctx.log), ctx.log


def test_skip_patterns_keep_the_experts_in_float() -> None:
    g = parse_with_params(MOE)
    ctx = PassContext()
    apply(QuantizeWeights(QuantConfig("int8", skip=("wu",))), g, ctx)
    assert g.count("moe") == 1 and any("wu is not a parameter or matches a skip pattern" in line for line in ctx.log)


def test_the_roofline_model_quantizes_a_decode_moe() -> None:
    g = parse_with_params(MOE)
    ctx = PassContext(cost=RooflineCost(Hardware.named("h100-sxm")))
    assert QuantizeWeights(QuantConfig("int8"))(g, ctx) is True and g.count("quant_moe") == 1


def test_int8_mixtral_compiles_to_quant_moe_close_to_eager() -> None:
    import membound
    from membound.models import build_model

    torch.manual_seed(0)
    model = build_model("mixtral-tiny").eval()
    ids = torch.randint(0, 256, (2, 9))
    compiled = membound.compile(model, example_inputs=(ids,), backend="reference", quantize="int8")
    assert compiled.ir.count("quant_moe") == 2 and compiled.ir.count("moe") == 0
    with torch.no_grad():
        want = model(ids)
    got = compiled(ids)
    assert float((got - want).norm() / want.norm()) < 3e-2


def test_a_router_the_graph_computes_stays_float() -> None:
    """DeepSeek-V3's router is a plain linear whose sigmoid scores (plus a correction bias) feed the top-k that picks
    the experts: quantize-weights leaves it float and says why, and quantizes the experts (quant_moe_experts) and
    the other linears."""
    import membound
    from tests.e2e.hf_moe import tiny_deepseek_v3

    model = tiny_deepseek_v3()
    compiled = membound.compile(model, quantize="int8", backend="reference")
    compiled(torch.randint(3, 61, (1, 4)))
    ops = [n.op for n in compiled.ir.nodes]
    assert ops.count("quant_moe_experts") == 1 and ops.count("moe_experts") == 0
    router = [n for n in compiled.ir.nodes if n.op == "linear" and n.inputs[1].name == "model.layers.1.mlp.gate.weight"]
    assert len(router) == 1  # still a float linear
    assert any(n.op == "quant_linear" and n.meta.get("quantized_from") == "lm_head.weight" for n in compiled.ir.nodes)
