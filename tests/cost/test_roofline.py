"""Per-op and per-kernel roofline estimates on hand-built IR, and the linear-layer crossover batch size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import sympy
import torch

from membound.cost.hardware import Hardware
from membound.cost.roofline import RooflineCost, crossover_expr, solve_crossover
from membound.ir.graph import Graph, Node
from membound.ir.types import B, S, TensorType, sym

bf16, f32 = torch.bfloat16, torch.float32
H = sym("H")

# the blog-level A100: 312 bf16 TFLOP/s, 2.0 TB/s -> ridge point 156 FLOP/byte
A100_BLOG = Hardware.named("a100-80gb").replace(bandwidth=2.0e12)


def linear_graph(k: object, n: object, dtype: torch.dtype = bf16) -> tuple[Graph, Node]:
    g = Graph("linear")
    x = g.add_input("x", TensorType(dtype, [B, k]))
    w = g.add_param("w", TensorType(dtype, [n, k]))
    y = g.call("linear", x, w)
    g.set_outputs([y])
    return g, y.producer


def test_linear_crossover_is_the_ridge_point_for_large_layers() -> None:
    # a [B, H] x [H, H] linear in IR; sympy solves FLOPs/peak == bytes/bandwidth for B
    _, node = linear_graph(H, H)
    cost = RooflineCost(A100_BLOG).symbolic(node)
    (crossover,) = crossover_expr(cost.compute_s, cost.memory_s, "B")
    # activations add 2*B*H bytes each way, so the crossover is 156*H/(H - 312), -> 156 as H grows
    assert sympy.simplify(crossover - 156 * H / (H - 312)) == 0
    assert sympy.limit(crossover, H, sympy.oo) == 156
    # a Llama-7B-sized layer sits within 10% of the blog's 156
    at_4096 = RooflineCost(A100_BLOG).crossover(node, "B", {"H": 4096})
    assert at_4096 == pytest.approx(156 * 4096 / (4096 - 312))
    assert 156 < at_4096 < 1.1 * 156


def test_crossover_of_an_odd_sized_layer_follows_its_own_shape() -> None:
    _, node = linear_graph(1000, 3001)
    got = RooflineCost(A100_BLOG).crossover(node, "B")
    # 2*B*N*K/312e12 == 2*(N*K + B*K + B*N)/2e12  ->  B = 156*N*K / (N*K - 156*(N + K))
    n, k = 3001, 1000
    assert got == pytest.approx(156 * n * k / (n * k - 156 * (n + k)))


def test_crossover_through_min_of_the_active_experts() -> None:
    """A moe op's bytes hold ``Min(E, B * k)``: each branch is solved, a root kept only on its own branch."""
    assert solve_crossover(100 * B, 1000 + 50 * sympy.Min(4, 2 * B)) == pytest.approx(12.0)  # past E: Min = 4
    assert solve_crossover(100 * B, 1000 + 500 * sympy.Min(4, 2 * B)) == pytest.approx(30.0)
    # the 2B branch's root (5.3) lies past E, where compute stops growing: no crossover
    assert solve_crossover(100 * sympy.Min(4, 2 * B), 1000 + 10 * B) is None
    assert solve_crossover(300 * B, 100 + 100 * sympy.Min(40, 2 * B)) == pytest.approx(1.0)  # below E: Min = 2B


def test_elementwise_is_never_compute_bound() -> None:
    hw = Hardware.named("h100-sxm")
    g = Graph("ew")
    x = g.add_input("x", TensorType(bf16, [B, S, 4097]))
    y = g.call("silu", x)
    est = RooflineCost(hw).estimate(y.producer, {"B": 3, "S": 1})
    assert est.bound == "memory"
    assert est.bytes == 2 * 2 * 3 * 4097  # read once, written once
    assert est.intensity == pytest.approx(est.flops / est.bytes) and est.intensity < 5
    assert est.time_s == pytest.approx(est.bytes / hw.bandwidth + hw.launch_overhead)


def test_big_gemm_is_compute_bound_and_gemv_memory_bound() -> None:
    hw = Hardware.named("h100-sxm")
    _, node = linear_graph(8192, 8192)
    cost = RooflineCost(hw)
    gemm = cost.estimate(node, {"B": 8192})
    gemv = cost.estimate(node, {"B": 1})
    assert gemm.bound == "compute" and gemv.bound == "memory"
    assert gemm.flops == 2 * 8192**3
    assert gemm.time_s == pytest.approx(gemm.flops / hw.peak_flops("bf16") + hw.launch_overhead)
    assert gemv.bytes == 2 * (8192 * 8192 + 8192 + 8192)


def test_fp32_matmul_uses_the_fp32_rate_unless_tf32_is_asked() -> None:
    hw = Hardware.named("a100-40gb")
    _, node = linear_graph(4096, 4096, f32)
    dims = {"B": 4096}
    plain = RooflineCost(hw).estimate(node, dims)
    tf32 = RooflineCost(hw, fp32_matmul="tf32").estimate(node, dims)
    assert plain.compute_s == pytest.approx(plain.flops / 19.5e12)
    assert tf32.compute_s == pytest.approx(plain.flops / 156e12)


def test_views_and_scalar_constants_are_free() -> None:
    g = Graph("views")
    x = g.add_input("x", TensorType(bf16, [B, 6, 5]))
    r = g.call("reshape", x, shape=(B, 30))
    c = g.call("constant", value=0.5, dtype=bf16)
    cost = RooflineCost(Hardware.named("h100-sxm"))
    for value in (r, c):
        est = cost.estimate(value.producer, {"B": 7})
        assert est.bound == "free" and est.time_s == 0.0 and est.bytes == 0.0


def test_unbound_dims_are_named_in_the_error() -> None:
    _, node = linear_graph(64, 32)
    with pytest.raises(ValueError, match=r"\['B'\]"):
        RooflineCost(Hardware.named("l4")).estimate(node, {})


@dataclass
class Kernel:
    nodes: list[Node]
    flops: Optional[int] = None
    bytes: Optional[int] = None


def swiglu_graph() -> tuple[Graph, list[Node]]:
    g = Graph("swiglu")
    gate = g.add_input("gate", TensorType(bf16, [B, 11]))
    up = g.add_input("up", TensorType(bf16, [B, 11]))
    act = g.call("silu", gate)
    out = g.call("mul", act, up)
    g.set_outputs([out])
    return g, [act.producer, out.producer]


def test_a_fused_partition_moves_only_its_boundary() -> None:
    hw = Hardware.named("h100-sxm")
    cost = RooflineCost(hw)
    _, nodes = swiglu_graph()
    dims = {"B": 5}
    fused = cost.estimate(Kernel(nodes), dims)
    separate = [cost.estimate(n, dims) for n in nodes]
    # fused: read gate and up, write out; separately silu's result is also written and read back
    assert fused.bytes == 3 * 5 * 11 * 2
    assert sum(e.bytes for e in separate) == fused.bytes + 2 * 5 * 11 * 2
    assert fused.flops == sum(e.flops for e in separate)
    assert fused.launch_s == hw.launch_overhead  # one kernel, one launch


def test_a_partition_may_report_its_own_bytes_and_flops() -> None:
    _, nodes = swiglu_graph()
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(Kernel(nodes, flops=1000, bytes=4000), {"B": 5})
    assert (est.flops, est.bytes) == (1000, 4000)


def test_cost_rejects_objects_that_are_not_nodes_or_partitions() -> None:
    with pytest.raises(TypeError, match="partition"):
        RooflineCost(Hardware.named("h100-sxm")).estimate(object(), {})


def test_a_partition_reads_a_broadcast_input_at_its_own_size() -> None:
    # y = silu(x + bias) with the bias expanded to x's shape by a view outside the kernel
    g = Graph("bias")
    x = g.add_input("x", TensorType(bf16, [B, 7, 13]))
    bias = g.add_param("bias", TensorType(bf16, [13]))
    wide = g.call("expand", bias, shape=(B, 7, 13))
    y = g.call("silu", g.call("add", x, wide))
    g.set_outputs([y])
    kernel = Kernel([y.producer.inputs[0].producer, y.producer])
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(kernel, {"B": 3})
    assert est.bytes == 2 * (3 * 7 * 13 + 13 + 3 * 7 * 13)  # x, the bias once, y


def test_a_partition_reads_a_slice_only_in_part() -> None:
    g = Graph("slice")
    x = g.add_input("x", TensorType(bf16, [B, 10]))
    head = g.call("slice", x, dim=1, start=0, end=3)
    y = g.call("neg", g.call("exp", head))
    g.set_outputs([y])
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(Kernel([y.producer.inputs[0].producer, y.producer]),
                                                              {"B": 5})
    assert est.bytes == 2 * (5 * 3 + 5 * 3)


def test_fused_gather_reads_only_the_rows_it_picks():
    import torch

    from membound.cost.roofline import boundary_bytes
    from membound.ir import B, Graph, S, TensorType

    g = Graph("emb")
    ids = g.add_input("ids", TensorType(torch.int64, [B, S]))
    table = g.add_param("table", TensorType(torch.bfloat16, [128256, 2048]))
    w = g.add_param("w", TensorType(torch.bfloat16, [2048]))
    x = g.call("embedding", table, ids)
    y = g.call("rms_norm", x, w, eps=1e-5)
    g.set_outputs([y])
    nbytes = boundary_bytes(g.nodes).subs({B: 1, S: 1})
    # ids (8 B) + one 2048-wide bf16 row + the norm weight + the output row, not the 525 MB table
    assert nbytes == 8 + 2048 * 2 + 2048 * 2 + 2048 * 2


def test_a_partition_keeps_values_read_through_views_on_chip() -> None:
    # exp -> unsqueeze -> neg, both computes in the kernel: the exp's result is not written (only a view of
    # it is read, by a member); a view of a member that is an output is
    g = Graph("views")
    x = g.add_input("x", TensorType(bf16, [B, 7]))
    e = g.call("exp", x)
    u = g.call("unsqueeze", e, dim=1)
    y = g.call("neg", u)
    g.set_outputs([y])
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(Kernel([e.producer, y.producer]), {"B": 3})
    assert est.bytes == 2 * (3 * 7 + 3 * 7)  # x read, y written
    g.set_outputs([y, u])
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(Kernel([e.producer, y.producer]), {"B": 3})
    assert est.bytes == 2 * (3 * 7 + 3 * 7 + 3 * 7)  # and the exp's result, whose view leaves the graph


def test_a_partition_computes_sources_and_writes_caches_in_place() -> None:
    # cache_write(cache, k * 2, positions): the constant is computed, not read; the cache is neither read
    # nor written whole: only the new entries are
    g = Graph("sink")
    k = g.add_input("k", TensorType(f32, [B, 2, 1, 4]))
    pos = g.add_input("pos", TensorType(torch.int64, [1]))
    cache = g.add_state("cache", TensorType(f32, [B, 2, 64, 4]))
    two = g.call("constant", value=2.0, dtype=f32)
    k2 = g.call("mul", k, two)
    w = g.call("cache_write", cache, k2, pos, dim=2)
    g.set_outputs([w])
    est = RooflineCost(Hardware.named("h100-sxm")).estimate(Kernel([k2.producer, w.producer]), {"B": 3})
    assert est.bytes == 4 * 3 * 2 * 4 + 8 + 4 * 3 * 2 * 4  # k, the positions, the written entries


def test_crossover_without_a_closed_form_is_found_numerically() -> None:
    """A sort's n * (1 + ceil(log2 n)) in B (an unfused HF MoE router) has no closed-form root: the first
    sign change is searched instead of sympy raising."""
    b = B
    compute = 1e-3 * b * (1 + sympy.ceiling(sympy.log(2 * b, 2)))
    root = solve_crossover(compute, sympy.Integer(1), "B")
    assert root is not None and abs(float(compute.subs(b, root)) - 1) < 0.05
    assert solve_crossover(1e-9 * b * sympy.ceiling(sympy.log(b, 2)) - 1, sympy.Integer(1), "B") is None
