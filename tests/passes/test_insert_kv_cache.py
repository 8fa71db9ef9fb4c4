"""insert-kv-cache: IR before/after, what it refuses (with a reason), numerics, decode cost."""

import pytest
import sympy
import torch

from membound.backends.reference import run_graph
from membound.ir import T, get_op, parse, print_graph, structurally_equal, verify
from membound.ir.types import B, S
from membound.passes import PassContext
from membound.passes.insert_kv_cache import insert_kv_cache

# one layer: learned positions (arange -> embedding), MQA attention (2 q heads, 1 kv head), LM head
BEFORE = """graph @one(%ids: i64[B, S]) params(%emb: f32[11, 8], %wpe: f32[16, 8], %wq: f32[8, 8], %wk: f32[4, 8], %wv: f32[4, 8], %head: f32[11, 8]) {
  %x = embedding(%emb, %ids) : f32[B, S, 8]
  %p = arange() {start=0, end=S, step=1, dtype=i64} : i64[S]
  %pe = embedding(%wpe, %p) : f32[S, 8]
  %h = add(%x, %pe) : f32[B, S, 8]
  %q0 = linear(%h, %wq) : f32[B, S, 8]
  %q1 = reshape(%q0) {shape=[B, S, 2, 4]} : f32[B, S, 2, 4]
  %q = transpose(%q1) {dim0=1, dim1=2} : f32[B, 2, S, 4]
  %k0 = linear(%h, %wk) : f32[B, S, 4]
  %k1 = reshape(%k0) {shape=[B, S, 1, 4]} : f32[B, S, 1, 4]
  %k = transpose(%k1) {dim0=1, dim1=2} : f32[B, 1, S, 4]
  %v0 = linear(%h, %wv) : f32[B, S, 4]
  %v1 = reshape(%v0) {shape=[B, S, 1, 4]} : f32[B, S, 1, 4]
  %v = transpose(%v1) {dim0=1, dim1=2} : f32[B, 1, S, 4]
  %a = attention(%q, %k, %v) {causal=true, scale=none} : f32[B, 2, S, 4]
  %a1 = transpose(%a) {dim0=1, dim1=2} : f32[B, S, 2, 4]
  %a2 = reshape(%a1) {shape=[B, S, 8]} : f32[B, S, 8]
  %r = add(%h, %a2) : f32[B, S, 8]
  %logits = linear(%r, %head) : f32[B, S, 11]
  return %logits
}"""

# positions become an input (per row), K/V go to state through cache_write, the LM head runs on
# one position per row (last_index)
AFTER = """graph @one(%ids: i64[B, S], %positions: i64[B, S], %last_index: i64[B]) params(%emb: f32[11, 8], %wpe: f32[16, 8], %wq: f32[8, 8], %wk: f32[4, 8], %wv: f32[4, 8], %head: f32[11, 8]) state(%cache.k.0: f32[B, 1, T, 4], %cache.v.0: f32[B, 1, T, 4]) {
  %0 = embedding(%emb, %ids) : f32[B, S, 8]
  %1 = embedding(%wpe, %positions) : f32[B, S, 8]
  %2 = add(%0, %1) : f32[B, S, 8]
  %3 = linear(%2, %wq) : f32[B, S, 8]
  %4 = reshape(%3) {shape=[B, S, 2, 4]} : f32[B, S, 2, 4]
  %5 = transpose(%4) {dim0=1, dim1=2} : f32[B, 2, S, 4]
  %6 = linear(%2, %wk) : f32[B, S, 4]
  %7 = reshape(%6) {shape=[B, S, 1, 4]} : f32[B, S, 1, 4]
  %8 = transpose(%7) {dim0=1, dim1=2} : f32[B, 1, S, 4]
  %9 = linear(%2, %wv) : f32[B, S, 4]
  %10 = reshape(%9) {shape=[B, S, 1, 4]} : f32[B, S, 1, 4]
  %11 = transpose(%10) {dim0=1, dim1=2} : f32[B, 1, S, 4]
  %12 = cache_write(%cache.k.0, %8, %positions) {dim=2} : f32[B, 1, T, 4]
  %13 = cache_write(%cache.v.0, %11, %positions) {dim=2} : f32[B, 1, T, 4]
  %14 = cached_attention(%5, %12, %13, %positions) {scale=none} : f32[B, 2, S, 4]
  %15 = transpose(%14) {dim0=1, dim1=2} : f32[B, S, 2, 4]
  %16 = reshape(%15) {shape=[B, S, 8]} : f32[B, S, 8]
  %17 = add(%2, %16) : f32[B, S, 8]
  %19 = arange() {start=0, end=B, step=1, dtype=i64} : i64[B]
  %20 = index(%17, %19, %last_index) {dims=[0, 1]} : f32[B, 8]
  %21 = unsqueeze(%20) {dim=1} : f32[B, 1, 8]
  %22 = linear(%21, %head) : f32[B, 1, 11]
  return %22
}
"""


def _tensors(g):
    gen = torch.Generator().manual_seed(0)
    return {p.name: torch.randn([int(d) for d in p.shape], generator=gen) for p in g.params}


def test_one_layer_before_after():
    g = parse(BEFORE)
    ctx = PassContext()
    assert insert_kv_cache(g, ctx)
    verify(g)
    assert structurally_equal(g, parse(AFTER)), structurally_equal(g, parse(AFTER), explain=True)
    assert g.meta["kv_cache"]["max_positions"] == 16  # the learned table bounds the cache


def test_step_graph_matches_full_recompute_at_last_position():
    full = parse(BEFORE)
    tensors = _tensors(full)
    full.tensors.update(tensors)
    step = parse(BEFORE)
    step.tensors.update(tensors)
    assert insert_kv_cache(step, PassContext())
    ids = torch.randint(0, 11, (3, 7))
    ref = run_graph(full, [ids])[0]
    cache = {n: torch.zeros(3, 1, 16, 4) for n in ("cache.k.0", "cache.v.0")}
    step.tensors.update(cache)
    positions = torch.arange(7).expand(3, 7).contiguous()
    last = torch.tensor([6, 6, 6])
    (out,) = run_graph(step, [ids, positions, last])
    torch.testing.assert_close(out[:, 0], ref[:, -1], rtol=1e-5, atol=1e-6)
    # then one decode step for an 8th token equals recomputing 8 tokens
    nxt = torch.randint(0, 11, (3, 1))
    (dec,) = run_graph(step, [nxt, torch.full((3, 1), 7), torch.zeros(3, dtype=torch.long)])
    ref8 = run_graph(full, [torch.cat([ids, nxt], 1)])[0]
    torch.testing.assert_close(dec[:, 0], ref8[:, -1], rtol=1e-4, atol=1e-5)  # fp32, other reduction order


@pytest.mark.parametrize("edit, reason", [
    # bidirectional attention (BERT-like): a cache would change what earlier tokens see
    (("{causal=true, scale=none}", "{causal=false, scale=none}"), "bidirectional"),
    # a sequence-wide op on the data path: the mean over S mixes positions
    (("  %r = add(%h, %a2) : f32[B, S, 8]",
      "  %m = mean(%h) {dims=[1], keepdim=true, dtype=none} : f32[B, 1, 8]\n  %r = add(%a2, %m) : f32[B, S, 8]"),
     "reduces over the sequence dim"),
])
def test_refuses_with_reason_and_leaves_graph_unchanged(edit, reason):
    text = BEFORE.replace(*edit)
    g = parse(text)
    before = print_graph(g)
    ctx = PassContext()
    assert not insert_kv_cache(g, ctx)
    assert print_graph(g) == before
    assert any(reason in line for line in ctx.log), ctx.log


def test_graph_without_attention_is_unchanged():
    g = parse("graph @mlp(%x: f32[B, S, 8]) params(%w: f32[8, 8]) {\n  %0 = linear(%x, %w) : f32[B, S, 8]\n"
              "  return %0\n}")
    before = print_graph(g)
    ctx = PassContext()
    assert not insert_kv_cache(g, ctx)
    assert print_graph(g) == before and any("no attention" in line for line in ctx.log)


def decode_bytes(graph) -> sympy.Expr:
    total = sympy.Integer(0)
    for n in graph.nodes:
        _, nbytes = get_op(n.op).cost([v.type for v in n.inputs], [r.type for r in n.results], n.attrs)
        total += nbytes
    return sympy.expand(total)


def test_decode_bytes_grow_linearly_with_cache_length_without_prompt_recompute():
    g = parse(BEFORE)
    assert insert_kv_cache(g, PassContext())
    decode = g.specialized({S: 1, B: 1})
    total = decode_bytes(decode)
    assert total.free_symbols == {T}                      # no S: nothing is recomputed over the prompt
    poly = sympy.Poly(total, T)
    assert poly.degree() == 1
    # the slope is one K and one V row per cached position: 2 * layers * kv_heads * head_dim * 4 bytes
    assert poly.coeffs()[0] == 2 * 1 * 1 * 4 * 4
