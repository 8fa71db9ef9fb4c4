"""fuse-mlp-block: IR before/after (the docstring example is test_docstrings'), what it leaves alone and the log line
saying why, the cost model's decision, the ``decode-layer`` pipeline (a Llama layer in 2 launches), and HF Llama /
Qwen2 whose greedy generate with ``decode-layer`` equals the default pipeline's: on the reference backend at batch
1 and 2, on the triton backend at batch 1 (each layer's block and MLP the one-launch kernels, under the interpreter
on CPU) and batch 2 (the library's chains, the trace saying why)."""

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
    check_unchanged,
    parse_with_params,
    tiny_hf,
    triton_decode_with,
)

import membound  # noqa: E402
import membound.passes.fuse_mlp_block as module  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.ir import print_graph  # noqa: E402
from membound.passes import PassContext  # noqa: E402
from membound.passes.fuse_mlp_block import fuse_mlp_block  # noqa: E402
from membound.passes.pipeline import PIPELINES  # noqa: E402


def before() -> str:
    block = re.search(r"```\n(.*?)```", module.__doc__ or "", re.S)
    assert block is not None
    return re.split(r"^// after.*$", block.group(1), flags=re.M)[0]


def variant(**swaps: str) -> str:
    text = before()
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    return text


LEFT_ALONE = [
    # (what changes, the log's reason)
    ({"graph @f(%x: f32[B, 1, 16])": "graph @f(%x: f32[B, 1, 16], %r: f32[B, 1, 16])",
      "%y = linear_add(%g, %wd, %x)": "%y = linear_add(%g, %wd, %r)"}, "its residual is not the norm's input"),
    ({"%wd: f32[16, 12])": "%wd: f32[16, 12], %bd: f32[16])",
      "%y = linear_add(%g, %wd, %x)": "%y = linear_add(%g, %wd, %x, %bd)"}, "has a bias"),
    ({"  return %y": "  return %y, %h"}, "read elsewhere too"),
    ({"graph @f(%x: f32[B, 1, 16])": "graph @f(%x: f32[B, 1, 16], %wd: f32[16, 12])",
      "%wgu: f32[24, 16], %wd: f32[16, 12])": "%wgu: f32[24, 16])"}, "a weight is not a parameter"),
    ({"%y = linear_add(%g, %wd, %x) : f32[B, 1, 16]": "%y0 = linear(%g, %wd) : f32[B, 1, 16]\n"
      "  %y = add(%y0, %x) : f32[B, 1, 16]"}, "run fuse-linear-residual first"),
]


@pytest.mark.parametrize("case", range(len(LEFT_ALONE)))
def test_what_it_leaves_alone(case: int) -> None:
    swaps, why = LEFT_ALONE[case]
    text = variant(**swaps)
    check_unchanged(fuse_mlp_block, text)
    ctx = PassContext()
    apply(fuse_mlp_block, parse_with_params(text), ctx)
    assert any(why in line for line in ctx.log), ctx.log


def test_numerics_at_several_rows() -> None:
    """The op's reference composes the replaced ops' references: the reference backend rounds as the unfused graph
    (B = 3 rows)."""
    g = check_numerics(fuse_mlp_block, before(), bindings={"B": 3})
    assert [n.op for n in g.nodes] == ["mlp_block"]


def test_the_cost_model_decides() -> None:
    g = parse_with_params(before())
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")))
    assert apply(fuse_mlp_block, g, ctx)
    assert [n.op for n in g.nodes] == ["mlp_block"], print_graph(g)
    assert any(line.endswith("mlp_block: 1") for line in ctx.log), ctx.log


def test_the_pipeline() -> None:
    names = PIPELINES["decode-layer"]
    assert names.index("fuse-linear-residual") < names.index("fuse-mlp-block")
    assert names[:4] == PIPELINES["decode-block"][:4]
    assert "fuse-mlp-block" not in PIPELINES["decode"]  # not the default


def _decode_ops(compiled: object) -> list[str]:
    return [n.op for n in compiled._kv_program.decode_graph.nodes]  # type: ignore[attr-defined]


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_models_decode_with_the_layer_pipeline_reference(family: str, rows: int,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy generate with decode-layer equals the default pipeline's tokens (fp32, reference backend); the decode
    graph holds one attention_block and one mlp_block a layer and no GEMV of the MLP's own."""
    model = tiny_hf(family)
    ids = torch.randint(0, 97, (rows, 9), generator=torch.Generator().manual_seed(rows))
    want = membound.generate(membound.compile(model, backend="reference"), ids, 6)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-layer")
    compiled = membound.compile(model, backend="reference")
    assert torch.equal(membound.generate(compiled, ids, 6), want)
    ops = _decode_ops(compiled)
    assert ops.count("attention_block") == 2 and ops.count("mlp_block") == 2, ops
    assert not {"linear_glu", "linear_add"} & set(ops), ops


@pytest.mark.parametrize("rows", [1, 2])
def test_hf_llama_decodes_with_the_mlp_kernel(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The triton backend: at batch 1 each layer's MLP is the one-launch kernel (traced), at batch 2 (row 1 left
    padded) the library's kernels in turn, the trace saying why; greedy tokens equal the default pipeline's."""
    triton_decode_with("decode-layer", tiny_hf("llama"), rows, "mlp_block", monkeypatch)


def test_a_llama_layer_is_two_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode step's launches as the triton partition makes them (no GPU needed): with ``decode-layer`` a Llama
    layer is the attention block and the MLP block, 2 launches against decode-block's 4; at 8 rows the MLP block is
    priced as its three library launches (the norm, gate/up, down)."""
    from membound.step_prediction import predict_decode_step

    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-block")
    block = predict_decode_step(tiny_hf("llama"), batch=1, cache_len=16, hardware="h200")
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-layer")
    layer = predict_decode_step(tiny_hf("llama"), batch=1, cache_len=16, hardware="h200")
    layers = 2
    assert len(block.launches) - len(layer.launches) == 2 * layers, (len(block.launches), len(layer.launches))
    kinds = [w.work.kind for w in layer.launches]
    assert kinds.count("mlp_block") == layers and kinds.count("attention_block") == layers, kinds
    wide = predict_decode_step(tiny_hf("llama"), batch=8, cache_len=16, hardware="h200")
    names = [w.work.name for w in wide.launches]
    assert sum(n.endswith(("(norm)", "(gate/up)", "(down)")) and "mlp_block" in n for n in names) == 3 * layers, \
        names
