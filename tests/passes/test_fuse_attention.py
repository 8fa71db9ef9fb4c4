"""fuse-attention: hand-written softmax attention -> one attention op (IR text, numerics, no-match)."""

import pytest
import torch

from membound.backends.reference import run_graph
from membound.ir import parse, print_graph, structurally_equal, verify
from membound.passes import PassContext, PassManager
from membound.passes.fuse_attention import fuse_attention

# GPT-2 "eager": scores scaled by a constant, an additive float mask, softmax, @ v
ADDITIVE = """graph @a(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 4, 8, S]
  %s = matmul(%q, %kt) : f32[B, 4, S, S]
  %c = constant() {value=0.25, dtype=f32} : f32[]
  %ss = mul(%s, %c) : f32[B, 4, S, S]
  %sm = add(%ss, %m) : f32[B, 4, S, S]
  %p = softmax(%sm) {dim=-1, dtype=none} : f32[B, 4, S, S]
  %o = matmul(%p, %v) : f32[B, 4, S, 8]
  return %o
}"""
ADDITIVE_AFTER = """graph @a(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S]) {
  %0 = attention(%q, %k, %v, %m) {causal=false, scale=0.25} : f32[B, 4, S, 8]
  return %0
}"""

# masked_fill(fill, -inf) with the scale as a division, k.T as a permute of a [B, S, H, D] value
MASKED_FILL = """graph @b(%q: f32[B, 2, S, 8], %k: f32[B, S, 2, 8], %v: f32[B, 2, S, 8], %fill: bool[S, S]) {
  %kt = permute(%k) {dims=[0, 2, 3, 1]} : f32[B, 2, 8, S]
  %s = matmul(%q, %kt) : f32[B, 2, S, S]
  %c = constant() {value=2.0, dtype=f32} : f32[]
  %ss = div(%s, %c) {rounding_mode=none} : f32[B, 2, S, S]
  %ninf = constant() {value=-inf, dtype=f32} : f32[]
  %sm = where(%fill, %ninf, %ss) : f32[B, 2, S, S]
  %p = softmax(%sm) {dim=-1, dtype=none} : f32[B, 2, S, S]
  %o = matmul(%p, %v) : f32[B, 2, S, 8]
  return %o
}"""
MASKED_FILL_AFTER = """graph @b(%q: f32[B, 2, S, 8], %k: f32[B, S, 2, 8], %v: f32[B, 2, S, 8], %fill: bool[S, S]) {
  %kt = permute(%k) {dims=[0, 2, 3, 1]} : f32[B, 2, 8, S]
  %0 = logical_not(%fill) : bool[S, S]
  %1 = transpose(%kt) {dim0=2, dim1=3} : f32[B, 2, S, 8]
  %2 = attention(%q, %1, %v, %0) {causal=false, scale=0.5} : f32[B, 2, S, 8]
  return %2
}"""

# HF eager in half precision: softmax upcast to f32 and cast back; fused kernels keep it in f32 too
UPCAST = """graph @d(%q: f16[B, 2, S, 8], %k: f16[B, 2, S, 8], %v: f16[B, 2, S, 8]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f16[B, 2, 8, S]
  %s = matmul(%q, %kt) : f16[B, 2, S, S]
  %s32 = cast(%s) {dtype=f32} : f32[B, 2, S, S]
  %p = softmax(%s32) {dim=-1, dtype=none} : f32[B, 2, S, S]
  %p16 = cast(%p) {dtype=f16} : f16[B, 2, S, S]
  %o = matmul(%p16, %v) : f16[B, 2, S, 8]
  return %o
}"""
UPCAST_AFTER = """graph @d(%q: f16[B, 2, S, 8], %k: f16[B, 2, S, 8], %v: f16[B, 2, S, 8]) {
  %0 = attention(%q, %k, %v) {causal=false, scale=1.0} : f16[B, 2, S, 8]
  return %0
}"""

# repeat_kv (unsqueeze, expand, reshape) feeding attention folds into GQA: k/v stay at 1 head
REPEAT_KV = """graph @c(%q: f32[B, 4, S, 8], %k: f32[B, 1, S, 8], %v: f32[B, 1, S, 8]) {
  %ku = unsqueeze(%k) {dim=2} : f32[B, 1, 1, S, 8]
  %ke = expand(%ku) {shape=[B, 1, 4, S, 8]} : f32[B, 1, 4, S, 8]
  %kr = reshape(%ke) {shape=[B, 4, S, 8]} : f32[B, 4, S, 8]
  %vu = unsqueeze(%v) {dim=2} : f32[B, 1, 1, S, 8]
  %ve = expand(%vu) {shape=[B, 1, 4, S, 8]} : f32[B, 1, 4, S, 8]
  %vr = reshape(%ve) {shape=[B, 4, S, 8]} : f32[B, 4, S, 8]
  %o = attention(%q, %kr, %vr) {causal=true, scale=none} : f32[B, 4, S, 8]
  return %o
}"""
REPEAT_KV_AFTER = """graph @c(%q: f32[B, 4, S, 8], %k: f32[B, 1, S, 8], %v: f32[B, 1, S, 8]) {
  %0 = attention(%q, %k, %v) {causal=true, scale=none} : f32[B, 4, S, 8]
  return %0
}"""


@pytest.mark.parametrize("before, after", [(ADDITIVE, ADDITIVE_AFTER), (MASKED_FILL, MASKED_FILL_AFTER),
                                           (UPCAST, UPCAST_AFTER), (REPEAT_KV, REPEAT_KV_AFTER)],
                         ids=["additive", "masked-fill", "upcast", "gqa"])
def test_before_after(before, after):
    g = parse(before)
    assert PassManager([fuse_attention, "dead-code-elimination"]).run(g) is not None
    verify(g)
    want = parse(after)
    assert structurally_equal(g, want), structurally_equal(g, want, explain=True) + "\n" + print_graph(g)


def _inputs(g, b=3, s=5):
    out = []
    for v in g.inputs:
        shape = [b if str(d) == "B" else s if str(d) == "S" else int(d) for d in v.shape]
        if v.dtype == torch.bool:
            out.append(torch.ones(s, s, dtype=torch.bool).triu(1))   # causal fill mask: never a full row
        elif v.name == "m":
            out.append(torch.zeros(shape).masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")))
        else:
            out.append(torch.randn(shape))
    return out


@pytest.mark.parametrize("before", [ADDITIVE, MASKED_FILL, REPEAT_KV], ids=["additive", "masked-fill", "gqa"])
def test_numerics_unchanged(before):
    g = parse(before)
    ins = _inputs(g)
    ref = run_graph(g, ins)[0]
    assert fuse_attention(g, PassContext())
    torch.testing.assert_close(run_graph(g, ins)[0], ref, rtol=1e-5, atol=1e-6)  # fp32


@pytest.mark.parametrize("text", [
    # softmax over the wrong dim is not attention
    ADDITIVE.replace("{dim=-1, dtype=none}", "{dim=2, dtype=none}"),
    # a plain matmul chain
    """graph @e(%a: f32[3, 4], %b: f32[4, 5]) {
  %0 = matmul(%a, %b) : f32[3, 5]
  return %0
}""",
], ids=["softmax-dim", "no-softmax"])
def test_unmatched_graph_unchanged(text):
    g = parse(text)
    before = print_graph(g)
    assert not fuse_attention(g, PassContext())
    assert print_graph(g) == before
