"""fuse-attention-linear: IR before/after (the docstring example is test_docstrings'), a bias, a window and a soft-cap
kept, numerics against the unfused graph (reference backend, B = 3: the op's reference is the ops it replaces), what
it leaves alone and the log line saying why, the cost model's decision, the ``decode-attn-linear`` pipeline, and HF
Llama / Qwen2 (a q/k/v bias) whose greedy generate with it equals the default pipeline's: on the reference backend at
batch 1 and 2, and on the triton backend (the interpreter on CPU) at batch 1 and 2, every ``attention_linear`` call
its kernels (flash decoding's partials merged by the o projection)."""

from __future__ import annotations

import os
import re

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend's kernels on the CPU

import pytest  # noqa: E402
from pass_testing import apply, check_numerics, check_unchanged, parse_with_params, tiny_hf  # noqa: E402

import membound  # noqa: E402
import membound.passes.fuse_attention_linear as module  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.ir import print_graph  # noqa: E402
from membound.passes import PassContext  # noqa: E402
from membound.passes.fuse_attention_linear import fuse_attention_linear  # noqa: E402
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


def test_a_bias_a_window_and_a_softcap_are_kept() -> None:
    text = variant(**{"params(%wo: f32[16, 16])": "params(%wo: f32[16, 16], %bo: f32[16])",
                      "linear(%a, %wo)": "linear(%a, %wo, %bo)",
                      "{scale=0.5}": "{scale=0.5, window=3, softcap=2.0}"})
    g = check_numerics(fuse_attention_linear, text, bindings={"B": 3, "T": 9})
    assert [n.op for n in g.nodes] == ["attention_linear"], print_graph(g)
    node = g.nodes[0]
    assert node.inputs[-1].name == "bo" and node.attrs == {"scale": 0.5, "window": 3, "softcap": 2.0}


LEFT_ALONE = [
    # (what changes, the log's reason)
    ({"  return %y": "  return %y, %a"}, "read, as rows, only by a linear's x"),
    ({"%y = linear(%a, %wo) : f32[B, 1, 16]": "%y = gelu(%a) : f32[B, 1, 16]"}, "read, as rows, only by a linear"),
    ({"{scale=0.5}": "{scale=0.5, chunk=4}"}, "ALiBi or attention chunks"),
    ({"%a = reshape(%ot) {shape=[B, 1, 16]} : f32[B, 1, 16]\n  %y = linear(%a, %wo) : f32[B, 1, 16]":
      "%a = reshape(%ot) {shape=[B, 16]} : f32[B, 16]\n  %y = linear(%a, %wo) : f32[B, 16]",
      "  return %y": "  return %y"}, "is not the rows [B, S, Hq * Dv]"),
]


@pytest.mark.parametrize("case", range(len(LEFT_ALONE)))
def test_what_it_leaves_alone(case: int) -> None:
    swaps, why = LEFT_ALONE[case]
    text = variant(**swaps)
    check_unchanged(fuse_attention_linear, text)
    ctx = PassContext()
    apply(fuse_attention_linear, parse_with_params(text), ctx)
    assert any(why in line for line in ctx.log), ctx.log


def test_the_cost_model_decides() -> None:
    g = parse_with_params(before())
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")))
    assert apply(fuse_attention_linear, g, ctx)
    assert [n.op for n in g.nodes] == ["attention_linear"], print_graph(g)
    assert any(line.endswith("attention_linear: 1") for line in ctx.log), ctx.log


def test_the_pipeline() -> None:
    assert PIPELINES["decode-attn-linear"] == ("canonicalize", "fuse-attention-linear", "dead-code-elimination")
    assert "fuse-attention-linear" not in PIPELINES["decode"]  # not the default


def _decode_ops(compiled: object) -> list[str]:
    return [n.op for n in compiled._kv_program.decode_graph.nodes]  # type: ignore[attr-defined]


@pytest.mark.parametrize("rows", [1, 2])
@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_hf_models_decode_with_the_pipeline_reference(family: str, rows: int,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy generate with decode-attn-linear equals the default pipeline's tokens (fp32, reference backend); the
    decode graph holds one attention_linear a layer and no cached_attention."""
    model = tiny_hf(family)
    ids = torch.randint(0, 97, (rows, 9), generator=torch.Generator().manual_seed(rows))
    want = membound.generate(membound.compile(model, backend="reference"), ids, 6)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-attn-linear")
    compiled = membound.compile(model, backend="reference")
    assert torch.equal(membound.generate(compiled, ids, 6), want)
    ops = _decode_ops(compiled)
    assert ops.count("attention_linear") == 2 and "cached_attention" not in ops, ops


@pytest.mark.parametrize("rows", [1, 2])
def test_hf_llama_decodes_with_the_merging_gemv(rows: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The triton backend (row 2 left-padded): every attention_linear call runs flash decoding's partials and the
    merging GEMV; greedy tokens equal the default pipeline's."""
    from membound.backends.triton.kernels._launch import trace

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = tiny_hf("llama").to(device)
    ids = torch.randint(0, 97, (rows, 7), generator=torch.Generator().manual_seed(3)).to(device)
    mask = torch.ones_like(ids)
    mask[rows - 1, :3] = 0 if rows > 1 else 1
    want = membound.generate(membound.compile(model, backend="triton"), ids, 4, attention_mask=mask)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-attn-linear")
    compiled = membound.compile(model, backend="triton")
    with trace() as calls:
        got = membound.generate(compiled, ids, 4, attention_mask=mask)
    assert torch.equal(got, want)
    assert {c[1] for c in calls if c[0] == "attention_linear"} == {"kernel"}, sorted(set(calls))


def test_the_step_model_prices_two_launches(monkeypatch: pytest.MonkeyPatch) -> None:
    """The decode step's launches as the triton partition makes them (no GPU needed): the same count as the
    default pipeline's, the attention priced with its partials split's serial tiles and no merge."""
    from membound.step_prediction import predict_decode_step

    base = predict_decode_step(tiny_hf("llama"), batch=1, cache_len=300, hardware="h200")
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-attn-linear")
    fused = predict_decode_step(tiny_hf("llama"), batch=1, cache_len=300, hardware="h200")
    assert len(fused.launches) == len(base.launches)
    names = [w.work.name for w in fused.launches]
    assert sum("attention_linear" in n and n.endswith("(attention)") for n in names) == 2, names
    assert sum("attention_linear" in n and n.endswith("(o projection)") for n in names) == 2, names
