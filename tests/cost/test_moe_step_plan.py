"""The step model's view of an MoE op (``step_plan.moe_works``): the launches ``kernels/moe.py`` makes on each path
(routed in the kernels, routed in torch, grouped), with the op's bytes split over them, for a compiled HF Mixtral."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend's kernels on the CPU

import pytest  # noqa: E402

import membound  # noqa: E402
from membound.backends.triton.step_plan import kernel_works, moe_works  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402


@pytest.fixture(scope="module")
def program():
    import transformers as tf

    cfg = tf.MixtralConfig(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                           num_attention_heads=4, num_key_value_heads=2, num_local_experts=8, num_experts_per_tok=2,
                           max_position_embeddings=128)
    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"  # the interpreter takes CPU tensors, a GPU CUDA ones
    compiled = membound.compile(tf.MixtralForCausalLM(cfg).eval().to(device), backend="triton")
    membound.generate(compiled, torch.randint(0, 97, (1, 5), device=device), 2)
    return compiled._kv_program


def _moe_items(partition, dims):
    return [w for w in kernel_works(partition, dims, Hardware.named("h200")) if "moe" in w.name]


def test_a_decode_step_routed_in_the_kernels_is_four_launches(program) -> None:
    items = _moe_items(program.decode.partition, {"B": 1, "T": 32})
    assert [w.kind for w in items] == ["fused", "torch", "moe_decode", "moe_decode"]
    gate_up, down = items[2], items[3]
    assert gate_up.bytes > down.bytes > 0  # two of the three expert matrices, then one


def test_past_128_pairs_the_routing_and_the_combine_are_torch_launches(program) -> None:
    items = _moe_items(program.decode.partition, {"B": 65, "T": 32})  # 130 pairs
    kinds = [w.kind for w in items]
    assert kinds[0] == "cublas" and kinds.count("moe_decode") == 2 and kinds[-2:] == ["torch", "torch"]


def _mixtral_layer(tokens: int):
    """A moe node at the Mixtral-8x7B layer (types only: D 4096, I 14336, 8 experts, top-2, bf16)."""
    from membound.ir import Graph
    from membound.ir.types import TensorType

    bf16 = torch.bfloat16
    g = Graph("mixtral_layer")
    x = g.add_input("x", TensorType(bf16, (tokens, 4096)))
    ws = [g.add_param(n, TensorType(bf16, shape)) for n, shape in (
        ("router", (8, 4096)), ("w_gate", (8, 14336, 4096)), ("w_up", (8, 14336, 4096)), ("w_down", (8, 4096, 14336)))]
    node = g.call("moe", x, *ws, top_k=2, softmax_first=True, renormalize=True, act="silu").producer
    est = RooflineCost(Hardware.named("h200")).estimate(node, {})
    return moe_works(node, "moe", est.flops, est.bytes, {}, "bf16", Hardware.named("h200"))


@pytest.mark.parametrize("tokens,kinds", [
    (1, ["fused", "torch", "moe_decode", "moe_decode"]),  # routed in the kernels (session 7: up to T = 32 here)
    (64, ["cublas"] + ["torch"] * 6 + ["moe_grouped", "moe_grouped", "torch", "torch"]),  # grouped from ~36 tokens
])
def test_the_mixtral_8x7b_layer_paths(tokens: int, kinds: list[str]) -> None:
    assert [w.kind for w in _mixtral_layer(tokens)] == kinds


def test_the_op_bytes_are_all_counted(program) -> None:
    """The launches read what the op's roofline counts (x once more per expert kernel)."""
    node = next(s.node for s in program.decode.partition.steps if getattr(s, "node", None) is not None
                and s.node.op == "moe")
    dims = {"B": 1, "T": 32}
    est = RooflineCost(Hardware.named("h200")).estimate(node, dims)
    items = moe_works(node, "moe", est.flops, est.bytes, dims, "fp32", Hardware.named("h200"))
    x_bytes = float(node.inputs[0].type.numel().subs({s: 1 for s in node.inputs[0].type.free_symbols()})) * 4
    assert sum(w.bytes for w in items) == pytest.approx(est.bytes + x_bytes, rel=1e-6)


def _given_layer(tokens: int):
    """A moe_experts node at DeepSeek-V3's layer shape cut to 64 experts (types only: D 7168, I 2048, top-8, bf16)."""
    from membound.ir import Graph
    from membound.ir.types import TensorType

    bf16 = torch.bfloat16
    g = Graph("deepseek_layer")
    x = g.add_input("x", TensorType(bf16, (tokens, 7168)))
    w = g.add_input("weights", TensorType(torch.float32, (tokens, 8)))
    ids = g.add_input("ids", TensorType(torch.int64, (tokens, 8)))
    ws = [g.add_param(n, TensorType(bf16, shape)) for n, shape in (
        ("w_gate", (64, 2048, 7168)), ("w_up", (64, 2048, 7168)), ("w_down", (64, 7168, 2048)))]
    node = g.call("moe_experts", x, w, ids, *ws).producer
    est = RooflineCost(Hardware.named("h200")).estimate(node, {})
    return est, moe_works(node, "moe_experts", est.flops, est.bytes, {}, "bf16", Hardware.named("h200"))


@pytest.mark.parametrize("tokens,kinds", [
    (1, ["fused", "moe_decode", "moe_decode", "torch", "torch"]),  # the pairs sorted in one launch
    (512, ["fused", "torch", "torch", "torch", "moe_grouped", "moe_grouped", "torch", "torch"]),  # + block table
])
def test_a_given_routing_is_one_sorting_launch_then_the_expert_kernels(tokens: int, kinds: list[str]) -> None:
    """moe_experts has no router: its launches are the pairs' sort (moe_route.given_pairs), the two expert kernels
    (and the grouped path's block table), the combine; they read the op's bytes and do its FLOPs."""
    est, items = _given_layer(tokens)
    assert [w.kind for w in items] == kinds
    assert sum(w.bytes for w in items) == pytest.approx(float(est.bytes), rel=0.01)
    assert sum(w.flops for w in items) == pytest.approx(float(est.flops), rel=1e-6)
