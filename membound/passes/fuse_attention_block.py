"""fuse-attention-block: a decode layer's attention block becomes one ``attention_block`` op (issue 13).

```
// before: a Llama layer's attention at decode (S = 1), after fuse-rope-linear
graph @f(%x: f32[B, 1, 16], %cs: f32[B, 1, 4], %sn: f32[B, 1, 4], %pos: i64[B, 1]) params(%ln: f32[16],
      %wqkv: f32[32, 16], %wo: f32[16, 16]) state(%cache.k.0: f32[B, 2, T, 4], %cache.v.0: f32[B, 2, T, 4]) {
  %h = rms_norm(%x, %ln) {eps=1e-05} : f32[B, 1, 16]
  %qkv = linear_rope(%h, %wqkv, %cs, %sn) {head_dim=4, rope_cols=24} : f32[B, 1, 32]
  %q, %k, %v = split(%qkv) {dim=-1, sizes=[16, 8, 8]} : f32[B, 1, 16], f32[B, 1, 8], f32[B, 1, 8]
  %q4 = reshape(%q) {shape=[B, 1, 4, 4]} : f32[B, 1, 4, 4]
  %qh = transpose(%q4) {dim0=1, dim1=2} : f32[B, 4, 1, 4]
  %k4 = reshape(%k) {shape=[B, 1, 2, 4]} : f32[B, 1, 2, 4]
  %kh = transpose(%k4) {dim0=1, dim1=2} : f32[B, 2, 1, 4]
  %v4 = reshape(%v) {shape=[B, 1, 2, 4]} : f32[B, 1, 2, 4]
  %vh = transpose(%v4) {dim0=1, dim1=2} : f32[B, 2, 1, 4]
  %kc = cache_write(%cache.k.0, %kh, %pos) {dim=2} : f32[B, 2, T, 4]
  %vc = cache_write(%cache.v.0, %vh, %pos) {dim=2} : f32[B, 2, T, 4]
  %o = cached_attention(%qh, %kc, %vc, %pos) {scale=0.5} : f32[B, 4, 1, 4]
  %ot = transpose(%o) {dim0=1, dim1=2} : f32[B, 1, 4, 4]
  %a = reshape(%ot) {shape=[B, 1, 16]} : f32[B, 1, 16]
  %y0 = linear(%a, %wo) : f32[B, 1, 16]
  %y = add(%x, %y0) : f32[B, 1, 16]
  return %y
}
// after
graph @f(%x: f32[B, 1, 16], %cs: f32[B, 1, 4], %sn: f32[B, 1, 4], %pos: i64[B, 1]) params(%ln: f32[16],
      %wqkv: f32[32, 16], %wo: f32[16, 16]) state(%cache.k.0: f32[B, 2, T, 4], %cache.v.0: f32[B, 2, T, 4]) {
  %0 = attention_block(%x, %ln, %wqkv, %cs, %sn, %cache.k.0, %cache.v.0, %pos, %wo) {eps=1e-05, num_heads=4,
       num_kv_heads=2, head_dim=4, scale=0.5} : f32[B, 1, 16]
  return %0
}
```

Why: at batch 1 the block is five dependent kernels over a few MB of weights, and most of its time in the decode
step is the latency between and inside them (session 15's H200 profile: ~19 us a layer at the Llama-3.2-1B shape
for ~5 us of weights, ~39.5 us at 8B for ~20). One launch of ordered work items (``kernels/attn_block.py``)
streams the o projection's weights while attention runs and pays one launch's ramp instead of five. At more than
one row the op runs the library's kernels in turn (its wrapper says so), so the rewrite never costs a batch.

What it matches: the shape above, where every link is read only by the next (the caches' writes only by the
attention), the weights (and the norm's, and a q/k/v bias) are parameters (the kernel reads them before its PDL
wait), the attention has no window, chunks, soft-cap, ALiBi or ring, and the split gives q, k, v in that order as whole
heads. The residual add may take its operands in either order. A form not matched is left alone, named in the
pass log when it got as far as a ``cached_attention`` over ``cache_write`` results.

When it fires: in the ``decode-block`` pipeline (``MEMBOUND_DECODE_PIPELINE=decode-block``, an A/B setting: on an
H200 the op lost to the library's chain, session 20, ``benches/experiments/attn_block.py``), or any pipeline that
lists it after fuse-rope-linear; where the cost model estimates the op faster than the nodes it replaces at the
decode dims, or without a cost model in the GEMV range. (The roofline cost model counts the launches it saves, not
the kernel's lower bandwidth: it does not decline the op. The step model's prior does know it, from session 20's
profile.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from membound.ir import Graph, Node, Value
from membound.passes.gemv_regime import fuse_blocks
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import heads_view, is_2d_param, is_single_use, static_int


@dataclass
class Block:
    x: Value
    inputs: list[Value]  # the op's operands, in its order
    attrs: dict
    nodes: list[Node]  # every node replaced, consumers first (the order they are erased in)
    add: Node


def _producer(v: Value, op: str) -> Optional[Node]:
    node = v.producer
    return node if node is not None and node.op == op else None


def _only_user(v: Value, op: str) -> Optional[Node]:
    """The one node reading ``v`` when it is an ``op`` (and ``v`` is no graph output), else None."""
    if not is_single_use(v):
        return None
    user = v.users[0]
    return user if user.op == op else None


def match_block(ca: Node) -> tuple[Optional[Block], str]:
    """The attention block around ``ca`` (a ``cached_attention``), or (None, why not; "" when it is not worth a
    log line: not over cache writes at all)."""
    if ca.op != "cached_attention" or len(ca.inputs) < 4:
        return None, ""
    q_t, kw, vw, pos = ca.inputs[:4]
    wk, wv = _producer(kw, "cache_write"), _producer(vw, "cache_write")
    if wk is None or wv is None:
        return None, ""
    if ca.attrs.get("sinks"):
        return None, "attention sinks (the one-launch kernel has none)"
    if len(ca.inputs) != 4:
        return None, "a ring cache (the one-launch kernel reads a linear one)"
    if any(ca.attrs.get(a) is not None for a in ("window", "chunk", "softcap", "alibi")):
        return None, "a window, attention chunks, soft-cap or ALiBi (the one-launch kernel has none)"
    if q_t.rank != 4 or static_int(q_t.shape[2]) != 1:
        return None, "not one new token a row"
    for w in (wk, wv):
        cache, _, wpos = w.inputs
        if (cache.kind != "state" or wpos is not pos or w.attrs.get("dim", 2) % 4 != 2
                or not is_single_use(w.results[0])):
            return None, "the caches are not state buffers written at the attention's positions and read by it alone"
    # q, k, v as head views of the projection's columns, each read only by what reads it here
    views = [heads_view(t) if is_single_use(t) else None for t in (q_t, wk.inputs[1], wv.inputs[1])]
    if any(v is None for v in views):
        return None, "q, k and v are not head views of a projection's columns"
    parts = [v[0] for v in views]  # type: ignore[index]
    split = parts[0].producer
    if split is None or split.op != "split" or [p.producer for p in parts] != [split] * 3 \
            or list(split.results) != parts or split.attrs.get("dim") not in (-1, 2):
        return None, "q, k and v are not the three parts of one split of the projection, in that order"
    qkv = split.inputs[0]
    lin = _producer(qkv, "linear_rope")
    if lin is None or not is_single_use(qkv):
        return None, "the projection is not a linear_rope (run fuse-rope-linear first) read only by the split"
    hq, hkv = static_int(q_t.shape[1]), static_int(wk.inputs[1].shape[1])
    d = static_int(q_t.shape[3])
    if hq is None or hkv is None or d is None or lin.attrs.get("head_dim") != d \
            or lin.attrs.get("rope_cols") != (hq + hkv) * d:
        return None, "the rotated columns are not q and k"
    h, wqkv, cs, sn, *bias = lin.inputs
    norm = _producer(h, "rms_norm")
    if norm is None or not is_single_use(h) or len(norm.inputs) != 2 or norm.inputs[1].kind != "param":
        return None, "the projection's input is not an rms_norm (with a parameter weight) read only by it"
    x = norm.inputs[0]
    if not is_2d_param(wqkv) or any(b.kind != "param" for b in bias):
        return None, "the q/k/v weight or bias is not a parameter"
    # after the attention: heads back to columns, the o projection, the residual add of the block's input
    tr = _only_user(ca.results[0], "transpose")
    rs = _only_user(tr.results[0], "reshape") if tr is not None else None
    o = _only_user(rs.results[0], "linear") if rs is not None else None
    add = _only_user(o.results[0], "add") if o is not None else None
    if tr is None or {tr.attrs.get("dim0") % 4, tr.attrs.get("dim1") % 4} != {1, 2} or add is None:
        return None, "the attention's output is not read by the o projection and a residual add"
    if len(o.inputs) != 2 or not is_2d_param(o.inputs[1]):
        return None, "the o projection has a bias or a weight that is not a parameter"
    if len(add.inputs) != 2 or not any(i is x for i in add.inputs) or add.results[0].type != x.type:
        return None, "the residual add does not add the block's input"
    if x.rank != 3 or static_int(x.shape[1]) != 1:
        return None, "the block's input is not [B, 1, K]"
    inputs = [x, norm.inputs[1], wqkv, cs, sn, wk.inputs[0], wv.inputs[0], pos, o.inputs[1], *bias]
    attrs = dict(eps=norm.attrs["eps"], num_heads=hq, num_kv_heads=hkv, head_dim=d, scale=ca.attrs.get("scale"))
    q_views, k_views, v_views = (v[1] for v in views)  # type: ignore[index]
    nodes = [add, o, rs, tr, ca, wk, wv, *q_views, *k_views, *v_views, split, lin, norm]
    return Block(x, inputs, attrs, nodes, add), ""


@register_pass("fuse-attention-block")
def fuse_attention_block(graph: Graph, ctx: PassContext) -> bool:
    """Replace each decode attention block (norm -> q/k/v with rope -> cache writes -> attention -> o + residual)
    with one ``attention_block`` op."""
    return fuse_blocks(graph, ctx, "cached_attention", "attention_block", match_block,
                       lambda b: (b.inputs, b.attrs, b.nodes, b.add))
