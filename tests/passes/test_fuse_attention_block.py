"""fuse-attention-block: IR before/after (the docstring example is test_docstrings'), the residual add's operands in
either order, a q/k/v bias, numerics against the unfused graph (reference backend, B = 3: the op's reference is
the ops it replaces), what it leaves alone and the log line saying why, the cost model's decision, the
``decode-block`` pipeline, and HF Llama / Qwen2 (a q/k/v bias) whose greedy generate with ``decode-block`` equals
the default pipeline's: on the reference backend at batch 2 (and 1), on the triton backend at batch 1, where each
layer's block runs as the one-launch kernel (under the interpreter on CPU)."""

from __future__ import annotations

import os
import re

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend's kernels on the CPU

import pytest  # noqa: E402
from pass_testing import (  # noqa: E402
    apply,
    check_numerics,
    check_rewrite,
    check_unchanged,
    parse_with_params,
    tiny_hf,
    triton_decode_with,
)

import membound  # noqa: E402
import membound.passes.fuse_attention_block as module  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.ir import print_graph  # noqa: E402
from membound.passes import PassContext  # noqa: E402
from membound.passes.fuse_attention_block import fuse_attention_block  # noqa: E402
from membound.passes.pipeline import PIPELINES  # noqa: E402


def example() -> tuple[str, str]:
    block = re.search(r"```\n(.*?)```", module.__doc__ or "", re.S)
    assert block is not None
    before, after = re.split(r"^// after.*$", block.group(1), flags=re.M)
    return before, after


def variant(**swaps: str) -> str:
    """The docstring's before-graph with lines replaced (``{old: new}`` substrings)."""
    text = example()[0]
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


def test_the_residual_add_either_way_and_a_bias() -> None:
    before, after = example()
    check_rewrite(fuse_attention_block, variant(**{"add(%x, %y0)": "add(%y0, %x)"}), after)
    biased = variant(**{"%wo: f32[16, 16])": "%wo: f32[16, 16], %bqkv: f32[32])",
                        "linear_rope(%h, %wqkv, %cs, %sn)": "linear_rope(%h, %wqkv, %cs, %sn, %bqkv)"})
    g = check_numerics(fuse_attention_block, biased)
    assert [n.op for n in g.nodes] == ["attention_block"] and g.nodes[0].inputs[-1].name == "bqkv"


LEFT_ALONE = [
    # (what changes, the log's reason)
    ({"{scale=0.5}": "{scale=0.5, window=3}"}, "a window, attention chunks, soft-cap or ALiBi"),
    ({"%y0 = linear(%a, %wo)": "%y0 = linear(%a, %wo, %ln)"}, "the o projection has a bias"),
    ({"%y = add(%x, %y0)": "%y = add(%y0, %y0)"}, "the residual add does not add the block's input"),
    ({"%q, %k, %v = split(%qkv) {dim=-1, sizes=[16, 8, 8]} : f32[B, 1, 16], f32[B, 1, 8], f32[B, 1, 8]":
      "%k, %q, %v = split(%qkv) {dim=-1, sizes=[8, 16, 8]} : f32[B, 1, 8], f32[B, 1, 16], f32[B, 1, 8]"},
     "not the three parts of one split"),
    ({"  return %y": "  return %y, %kc"}, "read by it alone"),
]


@pytest.mark.parametrize("case", range(len(LEFT_ALONE)))
def test_what_it_leaves_alone(case: int) -> None:
    swaps, why = LEFT_ALONE[case]
    text = variant(**swaps)
    check_unchanged(fuse_attention_block, text)
    ctx = PassContext()
    apply(fuse_attention_block, parse_with_params(text), ctx)
    assert any(why in line for line in ctx.log), ctx.log


def test_an_unrotated_projection_is_named() -> None:
    """A plain linear (fuse-rope-linear not run, or the rotation elsewhere) is left alone, the log saying what to
    run first."""
    text = variant(**{"linear_rope(%h, %wqkv, %cs, %sn) {head_dim=4, rope_cols=24}": "linear(%h, %wqkv)"})
    check_unchanged(fuse_attention_block, text)
    ctx = PassContext()
    apply(fuse_attention_block, parse_with_params(text), ctx)
    assert any("run fuse-rope-linear first" in line for line in ctx.log), ctx.log


def test_the_cost_model_decides() -> None:
    """The H200 roofline at the decode dims prices the one op (its bytes: every weight once, the live cache) below
    the nodes it replaces (their launches); the log names the fusion."""
    g = parse_with_params(example()[0])
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")))
    assert apply(fuse_attention_block, g, ctx)
    assert [n.op for n in g.nodes] == ["attention_block"], print_graph(g)
    assert any(line.endswith("attention_block: 1") for line in ctx.log), ctx.log


def test_the_pipeline() -> None:
    names = PIPELINES["decode-block"]
    assert names.index("fuse-rope-linear") < names.index("fuse-attention-block")
    assert "fuse-attention-block" not in PIPELINES["decode"]  # not the default


def _decode_ops(compiled: object) -> list[str]:
    return [n.op for n in compiled._kv_program.decode_graph.nodes]  # type: ignore[attr-defined]


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_models_decode_with_the_block_pipeline_reference(family: str, rows: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy generate with decode-block equals the default pipeline's tokens (fp32, reference backend); the
    decode graph holds one attention_block a layer and no attention, cache write or rotation of its own."""
    model = tiny_hf(family)
    ids = torch.randint(0, 97, (rows, 9), generator=torch.Generator().manual_seed(rows))
    want = membound.generate(membound.compile(model, backend="reference"), ids, 6)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-block")
    compiled = membound.compile(model, backend="reference")
    assert torch.equal(membound.generate(compiled, ids, 6), want)
    ops = _decode_ops(compiled)
    assert ops.count("attention_block") == 2, ops
    assert not {"cached_attention", "cache_write", "linear_rope", "neg"} & set(ops), ops


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_models_decode_with_the_block_kernel(family: str, rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The triton backend: at batch 1 each layer's block is the one-launch kernel (traced), at batch 2 (row 1 left
    padded: per-row positions) the library's kernels in turn, the trace saying why; greedy generate equals the
    default pipeline's tokens (fp32; ~10 s a case under the interpreter)."""
    triton_decode_with("decode-block", tiny_hf(family), rows, "attention_block", monkeypatch)


def test_the_step_model_prices_the_op_as_its_launches() -> None:
    """``step_plan.attention_block_works``: one launch of its own kind at one row; at 8 rows the six launches of the
    library's kernels in turn (norm, q/k/v GEMV, two cache writes, flash-decoding, o GEMV), their bytes the op's."""
    from membound.backends.triton.step_plan import attention_block_works
    from membound.cost.roofline import bindings, evaluate
    from membound.ir.ops import get_op

    g = parse_with_params(example()[0])
    assert apply(fuse_attention_block, g)
    node = g.nodes[0]
    for rows in (1, 8):
        dims = {"B": rows, "T": 7}
        flops, nbytes = (float(evaluate(c, bindings(dims), "cost"))
                         for c in get_op("attention_block").cost([v.type for v in node.inputs],
                                                                 [v.type for v in node.results], node.attrs))
        works = attention_block_works(node, "blk", flops, nbytes, dims, "fp32")
        if rows == 1:
            assert [(w.kind, w.bytes, w.flops) for w in works] == [("attention_block", nbytes, flops)]
            continue
        assert [w.kind for w in works][:1] + [w.kind for w in works][2:5] == \
            ["fused", "library", "library", "decode_attention"], works
        assert all(works[i].kind.startswith(("gemv", "cublas")) for i in (1, 5)), works
        # the GEMVs' FLOPs and the attention's add up to the op's; the bytes too, but for the norm's own launch
        # (x read and written once more) and the GEMVs' reading of their inputs
        assert abs(sum(w.flops for w in works) - flops) < 1e-6 * flops
        assert nbytes <= sum(w.bytes for w in works) <= 1.3 * nbytes, (nbytes, works)


def test_a_llama_layer_is_four_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode step's launches as the triton partition makes them (``predict_decode_step``, no GPU needed): with
    ``decode-block`` a Llama layer is the block, the post-attention norm, the gate/up GEMV and the down GEMV with
    the residual add (fuse-linear-residual: the add no longer shares a kernel with the next layer's norm), 4 launches
    against the default pipeline's 8."""
    from membound.step_prediction import predict_decode_step

    model = tiny_hf("llama")
    default = predict_decode_step(model, batch=1, cache_len=16, hardware="h200")
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-block")
    block = predict_decode_step(tiny_hf("llama"), batch=1, cache_len=16, hardware="h200")
    layers = 2
    assert len(default.launches) - len(block.launches) == 4 * layers, (len(default.launches), len(block.launches))
    kinds = [w.work.kind for w in block.launches]
    assert kinds.count("attention_block") == layers, kinds
