"""fuse-attention on the forms beyond plain softmax attention: soft-capped logits (Gemma 2), masks built from
``arange(S)`` that are proven causal or sliding-window (folded into attributes), and forms it must leave alone
with a log line saying what did not match."""

import pytest
import torch

from membound.backends.reference import run_graph
from membound.ir import parse, print_graph, structurally_equal, verify
from membound.passes import PassContext, PassManager
from membound.passes.fuse_attention import fuse_attention

# Gemma 2: scores * scale, then cap * tanh(scores / cap), plus an additive mask
SOFTCAP = """graph @g(%q: f32[B, 2, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8], %m: f32[B, 1, S, S]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 2, 8, S]
  %s = matmul(%q, %kt) : f32[B, 2, S, S]
  %c = constant() {value=0.25, dtype=f32} : f32[]
  %ss = mul(%s, %c) : f32[B, 2, S, S]
  %cap = constant() {value=5.0, dtype=f32} : f32[]
  %d = div(%ss, %cap) {rounding_mode=none} : f32[B, 2, S, S]
  %t = tanh(%d) : f32[B, 2, S, S]
  %tc = mul(%t, %cap) : f32[B, 2, S, S]
  %sm = add(%tc, %m) : f32[B, 2, S, S]
  %p = softmax(%sm) {dim=-1, dtype=none} : f32[B, 2, S, S]
  %o = matmul(%p, %v) : f32[B, 2, S, 8]
  return %o
}"""
SOFTCAP_AFTER = """graph @g(%q: f32[B, 2, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8], %m: f32[B, 1, S, S]) {
  %0 = attention(%q, %k, %v, %m) {causal=false, scale=0.25, window=none, softcap=5.0} : f32[B, 2, S, 8]
  return %0
}"""

# a sliding-window mask built from positions (Mistral's kv <= q and kv > q - W), W = 3
WINDOW = """graph @w(%q: f32[B, 4, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %i = arange() {start=0, end=S, step=1, dtype=i64} : i64[S]
  %qi = unsqueeze(%i) {dim=1} : i64[S, 1]
  %ki = unsqueeze(%i) {dim=0} : i64[1, S]
  %le = le(%ki, %qi) : bool[S, S]
  %w = constant() {value=3, dtype=i64} : i64[]
  %lo = sub(%qi, %w) : i64[S, 1]
  %gt = gt(%ki, %lo) : bool[S, S]
  %keep = logical_and(%le, %gt) : bool[S, S]
  %o = attention(%q, %k, %v, %keep) {causal=false, scale=0.5} : f32[B, 4, S, 8]
  return %o
}"""
WINDOW_AFTER = """graph @w(%q: f32[B, 4, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %0 = attention(%q, %k, %v) {causal=true, scale=0.5, window=3} : f32[B, 4, S, 8]
  return %0
}"""

# GPT-2 eager written by hand: masked_fill(~ones(S, S).tril(), -inf) as torch.export writes it, scale as a division
GPT2_TRIL = """graph @t(%q: f32[B, 2, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %one = full() {shape=[S, S], value=true, dtype=bool} : bool[S, S]
  %r = arange() {start=0, end=S, step=1, dtype=i64} : i64[S]
  %rows = unsqueeze(%r) {dim=-1} : i64[S, 1]
  %cols = unsqueeze(%r) {dim=0} : i64[1, S]
  %diff = sub(%cols, %rows) : i64[S, S]
  %zero = constant() {value=0, dtype=i64} : i64[]
  %below = le(%diff, %zero) : bool[S, S]
  %false = constant() {value=false, dtype=bool} : bool[]
  %tril = where(%below, %one, %false) : bool[S, S]
  %fill = bitwise_not(%tril) : bool[S, S]
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 2, 8, S]
  %s = matmul(%q, %kt) : f32[B, 2, S, S]
  %c = constant() {value=2.0, dtype=f32} : f32[]
  %ss = div(%s, %c) {rounding_mode=none} : f32[B, 2, S, S]
  %ninf = constant() {value=-inf, dtype=f32} : f32[]
  %sm = where(%fill, %ninf, %ss) : f32[B, 2, S, S]
  %p = softmax(%sm) {dim=-1, dtype=none} : f32[B, 2, S, S]
  %o = matmul(%p, %v) : f32[B, 2, S, 8]
  return %o
}"""
GPT2_TRIL_AFTER = """graph @t(%q: f32[B, 2, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %0 = attention(%q, %k, %v) {causal=true, scale=0.5} : f32[B, 2, S, 8]
  return %0
}"""

# gpt-oss: per-head sink logits joined to the masked scores, the row max subtracted, the sink's column dropped
SINKS = """graph @s(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S], %sk: f32[4]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 4, 8, S]
  %s = matmul(%q, %kt) : f32[B, 4, S, S]
  %c = constant() {value=0.25, dtype=f32} : f32[]
  %ss = mul(%s, %c) : f32[B, 4, S, S]
  %sm = add(%ss, %m) : f32[B, 4, S, S]
  %r = reshape(%sk) {shape=[1, 4, 1, 1]} : f32[1, 4, 1, 1]
  %e = expand(%r) {shape=[B, 4, S, 1]} : f32[B, 4, S, 1]
  %j = cat(%sm, %e) {dim=-1} : f32[B, 4, S, S + 1]
  %mx = amax(%j) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]
  %d = sub(%j, %mx) : f32[B, 4, S, S + 1]
  %p = softmax(%d) {dim=-1, dtype=none} : f32[B, 4, S, S + 1]
  %pk = slice(%p) {dim=3, start=0, end=S, step=1} : f32[B, 4, S, S]
  %o = matmul(%pk, %v) : f32[B, 4, S, 8]
  return %o
}"""
SINKS_AFTER = """graph @s(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S], %sk: f32[4]) {
  %0 = attention(%q, %k, %v, %m, %sk) {causal=false, scale=0.25, window=none, softcap=none, sinks=true} : f32[B, 4, S, 8]
  return %0
}"""
# ... with the sliding-window mask of WINDOW (folded to attributes, the sinks kept) and no max subtracted
SINKS_WINDOW = WINDOW.replace("%v: f32[B, 2, S, 8])", "%v: f32[B, 2, S, 8], %sk: f32[4])").replace(
    "  %o = attention(%q, %k, %v, %keep) {causal=false, scale=0.5} : f32[B, 4, S, 8]\n", """\
  %ks = unsqueeze(%k) {dim=2} : f32[B, 2, 1, S, 8]
  %ke = expand(%ks) {shape=[B, 2, 2, S, 8]} : f32[B, 2, 2, S, 8]
  %kr = reshape(%ke) {shape=[B, 4, S, 8]} : f32[B, 4, S, 8]
  %kt = transpose(%kr) {dim0=2, dim1=3} : f32[B, 4, 8, S]
  %s = matmul(%q, %kt) : f32[B, 4, S, S]
  %c = constant() {value=0.5, dtype=f32} : f32[]
  %ss = mul(%s, %c) : f32[B, 4, S, S]
  %z = constant() {value=0.0, dtype=f32} : f32[]
  %ni = constant() {value=-inf, dtype=f32} : f32[]
  %add = where(%keep, %z, %ni) : f32[S, S]
  %sm = add(%ss, %add) : f32[B, 4, S, S]
  %r = reshape(%sk) {shape=[1, 4, 1, 1]} : f32[1, 4, 1, 1]
  %e = expand(%r) {shape=[B, 4, S, 1]} : f32[B, 4, S, 1]
  %j = cat(%sm, %e) {dim=-1} : f32[B, 4, S, S + 1]
  %p = softmax(%j) {dim=-1, dtype=none} : f32[B, 4, S, S + 1]
  %pk = slice(%p) {dim=3, start=0, end=S, step=1} : f32[B, 4, S, S]
  %vs = unsqueeze(%v) {dim=2} : f32[B, 2, 1, S, 8]
  %ve = expand(%vs) {shape=[B, 2, 2, S, 8]} : f32[B, 2, 2, S, 8]
  %vr = reshape(%ve) {shape=[B, 4, S, 8]} : f32[B, 4, S, 8]
  %o = matmul(%pk, %vr) : f32[B, 4, S, 8]
""")
SINKS_WINDOW_AFTER = WINDOW_AFTER.replace("%v: f32[B, 2, S, 8])", "%v: f32[B, 2, S, 8], %sk: f32[4])").replace(
    "attention(%q, %k, %v) {causal=true, scale=0.5, window=3}", "attention(%q, %k, %v, %sk) {causal=true, scale=0.5, "
    "window=3, sinks=true}")

# Llama 4's chunked attention: causal within chunks of 3 positions, j // 3 == i // 3 (HF's chunked_causal_mask)
CHUNK = """graph @c(%q: f32[B, 4, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %i = arange() {start=0, end=S, step=1, dtype=i64} : i64[S]
  %qi = unsqueeze(%i) {dim=1} : i64[S, 1]
  %ki = unsqueeze(%i) {dim=0} : i64[1, S]
  %le = le(%ki, %qi) : bool[S, S]
  %c = constant() {value=3, dtype=i64} : i64[]
  %qc = div(%qi, %c) {rounding_mode="floor"} : i64[S, 1]
  %kc = div(%ki, %c) {rounding_mode="floor"} : i64[1, S]
  %same = eq(%kc, %qc) : bool[S, S]
  %keep = logical_and(%le, %same) : bool[S, S]
  %o = attention(%q, %k, %v, %keep) {causal=false, scale=0.5} : f32[B, 4, S, 8]
  return %o
}"""
CHUNK_AFTER = """graph @c(%q: f32[B, 4, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8]) {
  %0 = attention(%q, %k, %v) {causal=true, scale=0.5, chunk=3} : f32[B, 4, S, 8]
  return %0
}"""

# MiMo-V2-Flash's full-attention layers: the masked scores' row max subtracted before the softmax (no sink column)
SHIFTED = """graph @m(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 4, 8, S]
  %s = matmul(%q, %kt) : f32[B, 4, S, S]
  %c = constant() {value=0.25, dtype=f32} : f32[]
  %ss = mul(%s, %c) : f32[B, 4, S, S]
  %sm = add(%ss, %m) : f32[B, 4, S, S]
  %mx = amax(%sm) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]
  %d = sub(%sm, %mx) : f32[B, 4, S, S]
  %p = softmax(%d) {dim=-1, dtype=none} : f32[B, 4, S, S]
  %o = matmul(%p, %v) : f32[B, 4, S, 8]
  return %o
}"""
SHIFTED_AFTER = """graph @m(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S]) {
  %0 = attention(%q, %k, %v, %m) {causal=false, scale=0.25, window=none, softcap=none} : f32[B, 4, S, 8]
  return %0
}"""

CASES = [(SOFTCAP, SOFTCAP_AFTER), (WINDOW, WINDOW_AFTER), (GPT2_TRIL, GPT2_TRIL_AFTER), (SINKS, SINKS_AFTER),
         (SINKS_WINDOW, SINKS_WINDOW_AFTER), (CHUNK, CHUNK_AFTER), (SHIFTED, SHIFTED_AFTER)]
IDS = ["softcap", "window-mask", "gpt2-tril", "sinks", "sinks-window-gqa", "chunk-mask", "row-max-shifted"]


@pytest.mark.parametrize("old, new", [
    ("%mx = amax(%sm) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]",
     "%mx = amax(%sm) {dims=[-2], keepdim=true} : f32[B, 4, 1, S]"),   # the max over the queries
    ("%mx = amax(%sm) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]",
     "%mx = amax(%ss) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]"),   # the max of other scores (before the mask)
], ids=["other-dim", "other-scores"])
def test_a_shift_that_is_not_the_rows_own_max_is_left_alone(old, new):
    """Only the scores' own row max is a no-op under the softmax: another shift stays unfused, and the log says so."""
    assert old in SHIFTED
    g = parse(SHIFTED.replace(old, new))
    before = print_graph(g)
    ctx = PassContext()
    fuse_attention(g, ctx)
    assert print_graph(g) == before
    assert any("is not their own row max" in line for line in ctx.log), ctx.log


def _run(text):
    g = parse(text)
    ctx = PassContext()
    PassManager([fuse_attention, "dead-code-elimination"]).run(g, ctx)
    verify(g)
    return g, ctx


@pytest.mark.parametrize("before, after", CASES, ids=IDS)
def test_before_after(before, after):
    g, ctx = _run(before)
    want = parse(after)
    assert structurally_equal(g, want), structurally_equal(g, want, explain=True) + "\n" + print_graph(g)


def _inputs(g, b=2, s=7):
    out = []
    for v in g.inputs:
        shape = [b if str(d) == "B" else s if str(d) == "S" else int(d) for d in v.shape]
        if v.name == "m":
            out.append(torch.zeros(shape).masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")))
        else:
            out.append(torch.randn(shape))
    return out


@pytest.mark.parametrize("before", [c[0] for c in CASES], ids=IDS)
def test_numerics_unchanged(before):
    g = parse(before)
    ins = _inputs(g)
    ref = run_graph(g, ins)[0]
    assert fuse_attention(g, PassContext())
    torch.testing.assert_close(run_graph(g, ins)[0], ref, rtol=1e-5, atol=1e-6)  # fp32


def test_bidirectional_band_keeps_its_mask_and_says_why():
    # |i - j| < 3 is a window but not causal: the mask stays, the log names what the proof found
    text = WINDOW.replace("%le = le(%ki, %qi) : bool[S, S]\n", "").replace(
        "%keep = logical_and(%le, %gt) : bool[S, S]",
        "%hi = add(%qi, %w) : i64[S, 1]\n  %lt = lt(%ki, %hi) : bool[S, S]\n  %keep = logical_and(%lt, %gt) : bool[S, S]")
    g, ctx = _run(text)
    attn = [n for n in g.nodes if n.op == "attention"]
    assert len(attn) == 1 and len(attn[0].inputs) == 4 and attn[0].attrs["causal"] is False
    assert any("keeps its mask" in line and "neither a causal band" in line for line in ctx.log), ctx.log


def test_chunks_with_a_window_keep_their_mask_and_say_why():
    # causal within chunks of 3 *and* a window of 2: neither form alone, no kernel has both: the mask stays
    text = CHUNK.replace("%keep = logical_and(%le, %same) : bool[S, S]", """%both = logical_and(%le, %same) : bool[S, S]
  %w = constant() {value=2, dtype=i64} : i64[]
  %lo = sub(%qi, %w) : i64[S, 1]
  %gt = gt(%ki, %lo) : bool[S, S]
  %keep = logical_and(%both, %gt) : bool[S, S]""")
    g, ctx = _run(text)
    attn = [n for n in g.nodes if n.op == "attention"]
    assert len(attn) == 1 and len(attn[0].inputs) == 4 and attn[0].attrs["chunk"] is None
    assert any("keeps its mask" in line and "nor causal within chunks" in line for line in ctx.log), ctx.log


def test_unrecognised_form_is_left_unfused_with_a_log_line():
    # a scale that is a graph input, not a constant: no attention form matches
    text = """graph @u(%q: f32[B, 2, S, 8], %k: f32[B, 2, S, 8], %v: f32[B, 2, S, 8], %c: f32[]) {
  %kt = transpose(%k) {dim0=2, dim1=3} : f32[B, 2, 8, S]
  %s = matmul(%q, %kt) : f32[B, 2, S, S]
  %ss = mul(%s, %c) : f32[B, 2, S, S]
  %p = softmax(%ss) {dim=-1, dtype=none} : f32[B, 2, S, S]
  %o = matmul(%p, %v) : f32[B, 2, S, 8]
  return %o
}"""
    g = parse(text)
    before = print_graph(g)
    ctx = PassContext()
    assert not fuse_attention(g, ctx)
    assert print_graph(g) == before
    assert any("left unfused" in line and "mul <- matmul" in line for line in ctx.log), ctx.log


def test_softcap_with_mismatched_scales_is_not_fused():
    g = parse(SOFTCAP.replace("%tc = mul(%t, %cap)", "%tc = mul(%t, %c)"))
    ctx = PassContext()
    assert not fuse_attention(g, ctx)
    assert any("not a soft cap" in line for line in ctx.log), ctx.log


STORED_SCALARS = """graph @h(%q: f32[B, 4, S, 8], %k: f32[B, 4, S, 8], %v: f32[B, 4, S, 8], %m: f32[B, 1, S, S])
    params(%scale_attn: f32[], %lowest: f32[]) {
  %q3 = reshape(%q) {shape=[4*B, S, 8]} : f32[4*B, S, 8]
  %k3 = reshape(%k) {shape=[4*B, S, 8]} : f32[4*B, S, 8]
  %v3 = reshape(%v) {shape=[4*B, S, 8]} : f32[4*B, S, 8]
  %kt = transpose(%k3) {dim0=1, dim1=2} : f32[4*B, 8, S]
  %s3 = matmul(%q3, %kt) : f32[4*B, S, S]
  %sc = div(%s3, %scale_attn) {rounding_mode=none} : f32[4*B, S, S]
  %s4 = reshape(%sc) {shape=[B, 4, S, S]} : f32[B, 4, S, S]
  %sm = add(%s4, %m) : f32[B, 4, S, S]
  %fl = maximum(%sm, %lowest) : f32[B, 4, S, S]
  %f3 = reshape(%fl) {shape=[4*B, S, S]} : f32[4*B, S, S]
  %p = softmax(%f3) {dim=-1, dtype=none} : f32[4*B, S, S]
  %o = matmul(%p, %v3) : f32[4*B, S, 8]
  return %o
}"""


def test_stored_scale_and_floor_scalars_are_read_as_constants():
    """transformers 4.x keeps attention scalars as 0-d buffers (GPT-J / CodeGen ``scores / self.scale_attn``, XGLM's
    ``torch.tensor(finfo.min)`` floor): read as constants, the forms fuse (scale 1 / 4, the floor dropped at f32's
    lowest value); the result equals the unfused graph's. A floor that is not very negative stays a stored value."""
    g = parse(STORED_SCALARS)
    g.tensors["scale_attn"] = torch.tensor(4.0)
    g.tensors["lowest"] = torch.tensor(torch.finfo(torch.float32).min)
    ins = _inputs(g)
    ref = run_graph(g, ins)[0]
    assert fuse_attention(g, PassContext())
    (att,) = [n for n in g.nodes if n.op == "attention"]
    assert att.attrs["scale"] == 0.25
    torch.testing.assert_close(run_graph(g, ins)[0], ref, rtol=1e-5, atol=1e-6)
    g2 = parse(STORED_SCALARS)
    g2.tensors["scale_attn"] = torch.tensor(4.0)
    g2.tensors["lowest"] = torch.tensor(-1.0)
    fuse_attention(g2, PassContext())
    assert not any(n.op == "attention" for n in g2.nodes)


SINK_LEFT_ALONE = [
    # (what changes, the log's reason)
    ({"%pk = slice(%p) {dim=3, start=0, end=S, step=1}": "%pk = slice(%p) {dim=3, start=1, end=S + 1, step=1}"},
     "not one joined column whose probability is dropped"),
    ({"%mx = amax(%j) {dims=[-1], keepdim=true} : f32[B, 4, S, 1]": "%mx = amax(%j) {dims=[-2], keepdim=true} : "
      "f32[B, 4, 1, S + 1]"}, "the subtracted max is not the joined row's"),
    # a sink column per row and query (an input of that shape), not one logit a head
    ({"%e = expand(%r) {shape=[B, 4, S, 1]} : f32[B, 4, S, 1]": "%e = mul(%m1, %m1) : f32[B, 4, S, 1]",
      "%sk: f32[4])": "%sk: f32[4], %m1: f32[B, 4, S, 1])"},
     "not one logit a query head broadcast over the rows"),
]


@pytest.mark.parametrize("case", range(len(SINK_LEFT_ALONE)))
def test_sink_forms_it_leaves_alone_say_why(case):
    swaps, why = SINK_LEFT_ALONE[case]
    text = SINKS
    for old, new in swaps.items():
        assert old in text, old
        text = text.replace(old, new)
    g = parse(text)
    before = print_graph(g)
    ctx = PassContext()
    fuse_attention(g, ctx)
    assert not any(n.op == "attention" for n in g.nodes), print_graph(g)
    assert print_graph(g) == before
    assert any(why in line for line in ctx.log), ctx.log


def test_sinks_take_weight_from_the_keys():
    """The fused graph equals the unfused one (test_numerics_unchanged) and differs from attention without the sink
    column: the test would catch a sink dropped on the way."""
    g = parse(SINKS)
    ins = _inputs(g)
    ins[-1] = torch.full((4,), 3.0)  # a sink well above the scores: most of each row's weight
    ref = run_graph(g, ins)[0]
    assert fuse_attention(g, PassContext())
    torch.testing.assert_close(run_graph(g, ins)[0], ref, rtol=1e-5, atol=1e-6)
    (node,) = [n for n in g.nodes if n.op == "attention"]
    node.attrs = dict(node.attrs, sinks=False)
    node.inputs = node.inputs[:4]
    assert (run_graph(g, ins)[0] - ref).abs().max() > 0.1
