"""The fixed costs and kernel classes of a calibrated spec: the latency term, which nodes get which
class, element ceilings, partitions, symbolic rows, and the fits calibrate() makes from timings."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import sympy
import torch
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

from membound.cost import Hardware, KernelClass, RooflineCost, analyze
from membound.cost.classes import (
    ELEMENT_BOUND_MARGIN,
    Sample,
    fixed_and_rate,
    one_point_class,
    shapes,
    two_point_class,
)
from membound.cost.hardware import from_measurements
from membound.cost.roofline import WARP_SOFTMAX_MAX, ClassUse, kernel_class_of
from membound.ir.graph import Graph, Node
from membound.ir.types import B, S, T, TensorType

bf16, f32 = torch.bfloat16, torch.float32
US = 1e-6

# a calibrated-looking H200: figures stated here, not measured
LAUNCH, LATENCY, BW = 4 * US, 1.5 * US, 4.2e12
CLASSES = {
    "gemv": KernelClass(latency=5.5 * US, efficiency=0.875, source="test"),
    "decode_attention": KernelClass(latency=8.5 * US, efficiency=0.95, source="test"),
    "softmax": KernelClass(latency=LATENCY, element_rate=370e9, source="test"),
    "broadcast": KernelClass(latency=LATENCY, element_rate=400e9, source="test"),
    "layer_norm": KernelClass(latency=LATENCY, efficiency=0.6, source="test"),
}
H200 = from_measurements(Hardware.named("h200"), read_bandwidth=4.18e12, copy_bandwidth=4.27e12, bf16_flops=690e12,
                         launch_overhead=LAUNCH, memory_latency=LATENCY, stream_bandwidth=BW, kernel_classes=CLASSES)


def one_op(op: str, *types: TensorType, params: int = 0, **attrs: object) -> Node:
    """A one-op graph: the first ``len(types) - params`` types are inputs, the rest parameters."""
    g = Graph(op)
    n_in = len(types) - params
    values = [g.add_input(f"x{i}", t) for i, t in enumerate(types[:n_in])]
    values += [g.add_param(f"p{i}", t) for i, t in enumerate(types[n_in:])]
    y = g.call(op, *values, **attrs)
    g.set_outputs([y])
    return y.producer


def linear(m: object, k: int, n: int) -> Node:
    return one_op("linear", TensorType(bf16, [m, k]), TensorType(bf16, [n, k]), params=1)


# ---------------------------------------------------------------------------------------------
# the latency term
# ---------------------------------------------------------------------------------------------
def test_latency_makes_a_small_kernel_latency_bound_and_a_big_one_bandwidth_bound() -> None:
    cost = RooflineCost(H200)
    tiny = cost.estimate(one_op("neg", TensorType(bf16, [1024])))  # 4 KB moved
    big = cost.estimate(one_op("neg", TensorType(bf16, [1 << 28])))  # 1 GiB moved
    for est in (tiny, big):
        assert est.bound == "memory" and est.latency_s == pytest.approx(LATENCY) and est.kernel_class == ""
        assert est.time_s == pytest.approx(LAUNCH + LATENCY + est.bytes / BW)
    # 4 KB: launch and latency are > 99.9% of the time; 1 GiB: the bytes are > 99%
    assert tiny.bytes == 4096 and (LAUNCH + LATENCY) / tiny.time_s > 0.999
    assert big.bytes == 1 << 30 and (big.bytes / BW) / big.time_s > 0.97 and LATENCY / big.time_s < 0.01
    # without a latency (a datasheet spec) the small kernel is launch overhead plus its bytes, as before
    plain = RooflineCost(H200.replace(memory_latency=0.0, kernel_classes={})).estimate(
        one_op("neg", TensorType(bf16, [1024])))
    assert plain.time_s == pytest.approx(LAUNCH + 4096 / BW) and plain.latency_s == 0


def test_a_compute_bound_kernel_hides_the_latency() -> None:
    est = RooflineCost(H200).estimate(linear(4096, 4096, 4096))
    assert est.bound == "compute" and est.kernel_class == "gemv"
    assert est.time_s == pytest.approx(LAUNCH + 2 * 4096**3 / 690e12)


def test_latency_moves_the_crossover_and_it_agrees_with_the_bound() -> None:
    node = linear(B, 4096, 4096)
    cost = RooflineCost(H200)
    cross = cost.crossover(node, "B")
    plain = RooflineCost(H200.replace(memory_latency=0.0, kernel_classes={})).crossover(node, "B")
    assert plain is not None and cross is not None and cross > plain
    # the bound flips between the two integers around the crossover
    assert cost.estimate(node, {"B": int(cross)}).bound == "memory"
    assert cost.estimate(node, {"B": int(cross) + 1}).bound == "compute"
    # GEMV class: latency 5.5 us, 0.875 of 4.2 TB/s: B * 2 * 4096^2 / 690e12 = 5.5e-6 + bytes / 3.675e12
    weights, row = 2 * 4096 * 4096, 2 * 2 * 4096
    expected = (5.5 * US + weights / (0.875 * BW)) / (2 * 4096**2 / 690e12 - row / (0.875 * BW))
    assert cross == pytest.approx(expected, rel=1e-6)


def test_a100_crossover_tends_to_the_ridge_with_a_latency_too() -> None:
    # the latency is a fixed cost: big layers amortise it and the crossover approaches 156 FLOP/byte
    blog = Hardware.named("a100-80gb").replace(bandwidth=2.0e12)
    with_latency = RooflineCost(blog.replace(memory_latency=2 * US))
    plain = RooflineCost(blog)
    small, big = linear(B, 4096, 4096), linear(B, 16384, 16384)
    assert plain.crossover(small, "B") == pytest.approx(156 * 4096 / (4096 - 312))
    # B * 2H^2 / 312e12 = 2 us + 2 (H^2 + 2 B H) / 2e12 at H = 4096: ~189, 12% above the plain 169
    h = 4096
    expected = (2 * US + 2 * h * h / 2.0e12) / (2 * h * h / 312e12 - 4 * h / 2.0e12)
    assert with_latency.crossover(small, "B") == pytest.approx(expected, rel=1e-6)
    assert 1.1 * plain.crossover(small, "B") < expected < 1.15 * plain.crossover(small, "B")
    assert with_latency.crossover(big, "B") == pytest.approx(plain.crossover(big, "B"), rel=0.01)
    assert 156 < with_latency.crossover(big, "B") < 1.03 * 156


# ---------------------------------------------------------------------------------------------
# which node gets which class
# ---------------------------------------------------------------------------------------------
def classify(node: Node) -> ClassUse | None:
    from membound.ir.ops import get_op

    return kernel_class_of(node.op, get_op(node.op).kind, [v.type for v in node.inputs],
                           [r.type for r in node.results], node.attrs)


def attention(b: object, hq: int, hkv: int, s: object, kv: object, d: int = 16) -> Node:
    return one_op("attention", TensorType(bf16, [b, hq, s, d]), TensorType(bf16, [b, hkv, kv, d]),
                  TensorType(bf16, [b, hkv, kv, d]))


def test_kernel_classes_follow_the_library_kernel_torch_runs() -> None:
    assert classify(linear(3, 40, 7)).name == "gemv"
    assert classify(one_op("matmul", TensorType(bf16, [2, 1, 8]), TensorType(bf16, [2, 8, 5]))).name == "gemv"
    assert classify(attention(3, 4, 2, 1, 77)).name == "decode_attention"
    assert classify(attention(3, 4, 2, 5, 77)) is None  # prefill: the plain roofline
    assert classify(attention(B, 4, 2, S, S)) is None  # symbolic query length: not known to be one token
    assert classify(one_op("layer_norm", TensorType(bf16, [5, 33]), TensorType(bf16, [33]), params=1)).name == \
        "layer_norm"
    assert classify(one_op("silu", TensorType(bf16, [5, 33]))) is None


def test_softmax_class_only_for_rows_longer_than_the_warp_kernel() -> None:
    long = classify(one_op("softmax", TensorType(bf16, [3, WARP_SOFTMAX_MAX + 1]), dim=-1))
    assert long is not None and long.name == "softmax" and long.elements == 3 * 1025 and long.when is True
    assert classify(one_op("softmax", TensorType(bf16, [3, WARP_SOFTMAX_MAX]), dim=-1)) is None
    assert classify(one_op("log_softmax", TensorType(f32, [3, 5000]), dim=1)).name == "softmax"
    # over another dim than the last: torch's spatial kernel, which calibrate() does not measure
    assert classify(one_op("softmax", TensorType(bf16, [3000, 3]), dim=0)) is None
    # a symbolic row: the class applies under a condition on the dims
    sym_row = classify(one_op("softmax", TensorType(bf16, [B, T]), dim=-1))
    assert sym_row is not None and sym_row.when == sympy.Gt(T, WARP_SOFTMAX_MAX)


def test_broadcast_class_is_any_input_smaller_than_the_result_but_scalars() -> None:
    add = "add"
    bias = classify(one_op(add, TensorType(bf16, [B, 7, 13]), TensorType(bf16, [13])))
    assert bias is not None and bias.name == "broadcast" and bias.elements == B * 7 * 13
    assert classify(one_op(add, TensorType(bf16, [5, 13]), TensorType(bf16, [1, 13]))).name == "broadcast"
    assert classify(one_op(add, TensorType(bf16, [B, 13]), TensorType(bf16, [B, 13]))) is None
    assert classify(one_op(add, TensorType(bf16, [5, 13]), TensorType(bf16, []))) is None  # a scalar operand
    # size-1 dims that only reshape (same element count) do not stop vectorisation
    assert classify(one_op(add, TensorType(bf16, [1, 5, 13]), TensorType(bf16, [5, 13]))) is None


# ---------------------------------------------------------------------------------------------
# how a class changes a node's cost
# ---------------------------------------------------------------------------------------------
def test_gemv_class_sets_the_latency_and_bandwidth_of_a_memory_bound_linear() -> None:
    est = RooflineCost(H200).estimate(linear(1, 4096, 14336))
    assert est.kernel_class == "gemv" and est.bound == "memory"
    assert est.memory_s == pytest.approx(est.bytes / (0.875 * BW))
    assert est.time_s == pytest.approx(LAUNCH + 5.5 * US + est.bytes / (0.875 * BW))


def test_element_rate_makes_a_wide_softmax_and_a_bias_add_compute_side() -> None:
    cost = RooflineCost(H200)
    soft = cost.estimate(one_op("softmax", TensorType(bf16, [2048, 32001]), dim=-1))
    n = 2048 * 32001
    assert soft.bound == "compute" and soft.compute_s == pytest.approx(n / 370e9)
    assert soft.time_s == pytest.approx(LAUNCH + n / 370e9)
    bias = cost.estimate(one_op("add", TensorType(bf16, [4099, 4097]), TensorType(bf16, [4097])))
    assert bias.bound == "compute" and bias.compute_s == pytest.approx(4099 * 4097 / 400e9)
    # the same softmax over short rows is torch's warp kernel: memory-bound at the spec's bandwidth
    short = cost.estimate(one_op("softmax", TensorType(bf16, [2048 * 32, 1000]), dim=-1))
    assert short.bound == "memory" and short.kernel_class == ""
    assert short.time_s == pytest.approx(LAUNCH + LATENCY + short.bytes / BW)


def test_an_element_rate_faster_than_the_flops_leaves_the_flop_floor() -> None:
    fast = H200.replace(kernel_classes={"broadcast": KernelClass(element_rate=1e15)})
    est = RooflineCost(fast).estimate(one_op("pow", TensorType(f32, [999, 37]), TensorType(f32, [37])))
    assert est.compute_s == pytest.approx(4 * 999 * 37 / H200.peak_flops("fp32"))


def test_decode_attention_and_layer_norm_efficiencies() -> None:
    cost = RooflineCost(H200)
    dec = cost.estimate(attention(8, 32, 8, 1, 4096, 128))
    assert dec.kernel_class == "decode_attention" and dec.bound == "memory"
    assert dec.time_s == pytest.approx(LAUNCH + 8.5 * US + dec.bytes / (0.95 * BW))
    ln = cost.estimate(one_op("layer_norm", TensorType(bf16, [4099, 4096]), TensorType(bf16, [4096]),
                              TensorType(bf16, [4096]), params=2))
    assert ln.time_s == pytest.approx(LAUNCH + LATENCY + ln.bytes / (0.6 * BW))


@dataclass
class Kernel:
    nodes: list[Node]


def test_a_partition_is_our_own_kernel_and_takes_no_library_class() -> None:
    node = one_op("add", TensorType(bf16, [4099, 4097]), TensorType(bf16, [4097]))
    cost = RooflineCost(H200)
    fused = cost.estimate(Kernel([node]))
    assert fused.kernel_class == "" and fused.bound == "memory"
    assert fused.time_s == pytest.approx(LAUNCH + LATENCY + fused.bytes / BW)
    assert cost.estimate(node).time_s > 2 * fused.time_s  # the eager broadcast path is much slower


def eager_attention_layer() -> Graph:
    """q @ k^T -> softmax over the keys -> @ v, with the keys' length a symbol (S in prefill, T in decode)."""
    g = Graph("eager_attention")
    q = g.add_input("q", TensorType(bf16, [B, 4, S, 16]))
    kt = g.add_input("kt", TensorType(bf16, [B, 4, 16, S]))
    v = g.add_input("v", TensorType(bf16, [B, 4, S, 16]))
    p = g.call("softmax", g.call("matmul", q, kt), dim=-1)
    g.set_outputs([g.call("matmul", p, v)])
    return g


def test_a_symbolic_softmax_row_is_costed_per_binding_and_phases_still_solve() -> None:
    g = eager_attention_layer()
    soft = next(n for n in g.nodes if n.op == "softmax")
    cost = RooflineCost(H200)
    short, long = cost.estimate(soft, {"B": 2, "S": 512}), cost.estimate(soft, {"B": 2, "S": 4096})
    assert short.compute_s == pytest.approx(5 * 2 * 4 * 512 * 512 / H200.peak_flops("fp32"))
    assert long.compute_s == pytest.approx(2 * 4 * 4096 * 4096 / 370e9) and long.bound == "compute"
    phases = analyze(g, cost)
    at = phases.prefill.at({"B": 2, "S": 4096})
    assert at["time_s"] == pytest.approx(sum(cost.estimate(n, {"B": 2, "S": 4096}).time_s for n in g.nodes))
    # every term is proportional to B here: no batch size balances compute and memory
    assert phases.prefill.crossover("B", {"S": 4096}) is None


def test_a_phase_crossover_solves_through_the_symbolic_softmax_rule() -> None:
    # x[B, S] -> softmax over S -> linear to 4096 features: weights fixed, everything else grows with B
    g = Graph("softmax_linear")
    x = g.add_input("x", TensorType(bf16, [B, S]))
    w = g.add_param("w", TensorType(bf16, [4096, S]))
    g.set_outputs([g.call("linear", g.call("softmax", x, dim=-1), w)])
    prefill = analyze(g, RooflineCost(H200)).prefill
    for row in (1000, 2048):  # the warp softmax and the block softmax
        cross = prefill.crossover("B", {"S": row})
        assert cross is not None
        assert prefill.at({"B": int(cross), "S": row})["bound"] == "memory"
        assert prefill.at({"B": int(cross) + 1, "S": row})["bound"] == "compute"
    # the block softmax's element ceiling adds compute per row: the phase turns compute-bound sooner
    no_softmax = {k: v for k, v in CLASSES.items() if k != "softmax"}
    without = analyze(g, RooflineCost(H200.replace(kernel_classes=no_softmax))).prefill
    assert prefill.crossover("B", {"S": 2048}) < 0.9 * without.crossover("B", {"S": 2048})
    assert prefill.crossover("B", {"S": 1000}) == pytest.approx(without.crossover("B", {"S": 1000}))


def test_phase_roofline_is_the_throughput_floor_without_per_kernel_latency() -> None:
    g = eager_attention_layer()
    phases = analyze(g, RooflineCost(H200))
    at = phases.prefill.at({"B": 1, "S": 8})
    kernels = at["kernels"]
    assert at["roofline_s"] == pytest.approx(max(at["compute_s"], at["memory_s"]))
    assert at["time_s"] >= kernels * (LAUNCH + LATENCY)  # every tiny kernel pays launch and latency


# ---------------------------------------------------------------------------------------------
# the fits calibrate() makes
# ---------------------------------------------------------------------------------------------
def test_fixed_and_rate_recovers_a_line_and_clamps_noise() -> None:
    launch, latency, rate = 4 * US, 5.5 * US, 3.7e12
    t = lambda a: launch + latency + a / rate  # noqa: E731
    got = fixed_and_rate((26e6, t(26e6)), (142e6, t(142e6)), launch)
    assert got == pytest.approx((latency, rate))
    # an intercept below the launch (noise): latency 0 and the rate through the big point
    assert fixed_and_rate((10e6, 6 * US), (110e6, 31 * US), launch) == pytest.approx((0.0, 110e6 / 27e-6))
    # a small point slower than the big one: no line; latency 0, rate through the big point
    assert fixed_and_rate((10e6, 40 * US), (110e6, 31 * US), launch)[0] == 0.0


def test_two_point_class_figures_are_relative_to_the_spec_bandwidth() -> None:
    t = lambda a: LAUNCH + 8 * US + a / 4.0e12  # noqa: E731
    k = two_point_class([Sample("big", 537e6, 0, t(537e6)), Sample("small", 67e6, 0, t(67e6))], LAUNCH, BW)
    assert k.latency == pytest.approx(8 * US) and k.efficiency == pytest.approx(4.0e12 / BW)
    assert "small" in k.source and "big" in k.source


def test_one_point_class_keeps_an_element_rate_only_when_clearly_slower_than_streaming() -> None:
    nbytes, elements = 268e6, 67e6
    stream = LATENCY + nbytes / BW
    slow = Sample("softmax", nbytes, elements, LAUNCH + 3 * stream)
    k = one_point_class(slow, LAUNCH, BW, LATENCY, element_bound=True)
    assert k.element_rate == pytest.approx(elements / (3 * stream)) and k.efficiency == 1.0
    # just under the margin: this device streams it; an efficiency instead of a rate
    near = Sample("softmax", nbytes, elements, LAUNCH + 0.99 * ELEMENT_BOUND_MARGIN * stream)
    k = one_point_class(near, LAUNCH, BW, LATENCY, element_bound=True)
    assert k.element_rate == 0 and k.efficiency == pytest.approx((nbytes / BW) / (0.99 * 1.25 * stream - LATENCY))
    # a memory class: efficiency after the spec's latency
    ln = one_point_class(Sample("layer_norm", nbytes, 0, LAUNCH + LATENCY + nbytes / (0.6 * BW)), LAUNCH, BW,
                         LATENCY, element_bound=False)
    assert ln.efficiency == pytest.approx(0.6) and ln.latency == LATENCY


def load_bench() -> object:
    return load_module("benches/cost_model.py", "cost_model_bench_classes")


def input_types(node: Node) -> tuple[tuple[torch.dtype, tuple[int, ...]], ...]:
    return tuple((v.type.dtype, v.type.concrete_shape({})) for v in node.inputs)


def test_calibration_kernels_are_not_the_bench_cases() -> None:
    bench = load_bench()
    tested = {(c.build()[1].op, input_types(c.build()[1])) for c in bench.cases(False)}  # type: ignore[attr-defined]
    calibration = [build() for kernels in shapes(1).values() for _, build in kernels]
    assert len(calibration) == 7
    for node in calibration:
        assert (node.op, input_types(node)) not in tested, node
    # and each class's kernels are the class they calibrate
    for name, kernels in shapes(1).items():
        for _, build in kernels:
            assert classify(build()).name == name
