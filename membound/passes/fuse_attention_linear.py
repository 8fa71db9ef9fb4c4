"""fuse-attention-linear: a decode attention and the o projection that reads it become one ``attention_linear`` op.

```
// before: a Llama layer's attention output at decode (S = 1)
graph @f(%q: f32[B, 4, 1, 4], %kc: f32[B, 2, T, 4], %vc: f32[B, 2, T, 4], %pos: i64[B, 1]) params(%wo: f32[16, 16]) {
  %o = cached_attention(%q, %kc, %vc, %pos) {scale=0.5} : f32[B, 4, 1, 4]
  %ot = transpose(%o) {dim0=1, dim1=2} : f32[B, 1, 4, 4]
  %a = reshape(%ot) {shape=[B, 1, 16]} : f32[B, 1, 16]
  %y = linear(%a, %wo) : f32[B, 1, 16]
  return %y
}
// after
graph @f(%q: f32[B, 4, 1, 4], %kc: f32[B, 2, T, 4], %vc: f32[B, 2, T, 4], %pos: i64[B, 1]) params(%wo: f32[16, 16]) {
  %0 = attention_linear(%q, %kc, %vc, %pos, %wo) {scale=0.5} : f32[B, 1, 16]
  return %0
}
```

Why: at batch 1 and a short context, flash decoding is latency-bound: one program per kv head streams the
cache's few key tiles one after another (at the 1.24B shape, context 256: three 128-slot tiles, 7.9 us of the
H100 step's path a layer, session 29), and splitting them over more programs costs a merge (partial stores, an
arrival atomic, the last program's reads). The op splits down to one tile a program and lets the o projection's
GEMV, whose weight is loaded before its PDL wait, merge the partials as it loads x (``kernels/linear.py``,
``attention_linear``): the attention's output is never written and read back, and nobody waits on an atomic.

What it matches: ``linear(reshape(transpose(cached_attention(...), 1, 2), [B, S, Hq * Dv]), weight, bias?)``
where each link is read only by the next, the attention over a linear cache (no ring, sinks, ALiBi or attention
chunks; a window and a soft-cap are kept) and a plain ``linear`` (a quantized one is not). A form not matched is
left alone, named in the pass log when it got as far as a ``cached_attention`` read by a transpose.

When it fires: in the ``decode-attn-linear`` pipeline (``MEMBOUND_DECODE_PIPELINE=decode-attn-linear``, an A/B
setting until a GPU run says it pays), or any pipeline that lists it; where the cost model estimates the op
faster than the nodes it replaces at the decode dims (it saves a launch and the output's round trip), or without a
cost model in the GEMV range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from membound.ir import Graph, Node, Value
from membound.passes.gemv_regime import fuse_blocks
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import is_single_use, static_int

# what the op's kernels do not take (the attention's attributes it has no operand or attribute for)
_UNSUPPORTED = ("alibi", "chunk")


@dataclass
class Site:
    inputs: list[Value]
    attrs: dict
    nodes: list[Node]  # consumers first (the order they are erased in)
    last: Node


def _only_user(v: Value, op: str) -> Optional[Node]:
    """The one node reading ``v`` when it is an ``op`` (and ``v`` is no graph output), else None."""
    if not is_single_use(v):
        return None
    user = v.users[0]
    return user if user.op == op else None


def match_site(ca: Node) -> tuple[Optional[Site], str]:
    """The o projection around ``ca`` (a ``cached_attention``), or (None, why not; "" when not worth a log line:
    the attention's output is not read by a transpose at all)."""
    tr = _only_user(ca.results[0], "transpose")
    if tr is None:
        return None, ""
    if len(ca.inputs) != 4 or ca.attrs.get("sinks"):
        return None, "a ring cache or attention sinks (the op reads a linear cache, no sinks)"
    if any(ca.attrs.get(a) is not None for a in _UNSUPPORTED):
        return None, "ALiBi or attention chunks (the op has neither)"
    if {tr.attrs.get("dim0", 0) % 4, tr.attrs.get("dim1", 0) % 4} != {1, 2}:
        return None, "the transpose does not bring the heads back next to the head dim"
    rs = _only_user(tr.results[0], "reshape")
    lin = _only_user(rs.results[0], "linear") if rs is not None else None
    if rs is None or lin is None or lin.inputs[0] is not rs.results[0]:
        return None, "the heads are not read, as rows, only by a linear's x"
    b, hq, s, dv = ca.results[0].shape
    row = rs.results[0].shape
    width = static_int(hq * dv)
    if len(row) != 3 or row[0] != b or row[1] != s or width is None or static_int(row[2]) != width:
        return None, f"the reshape's {list(row)} is not the rows [B, S, Hq * Dv]"
    inputs = list(ca.inputs) + list(lin.inputs[1:])
    attrs = {k: ca.attrs.get(k) for k in ("scale", "window", "softcap") if ca.attrs.get(k) is not None}
    return Site(inputs, attrs, [lin, rs, tr, ca], lin), ""


@register_pass("fuse-attention-linear")
def fuse_attention_linear(graph: Graph, ctx: PassContext) -> bool:
    """Replace each ``linear(heads -> rows(cached_attention(...)))`` with one ``attention_linear`` op."""
    return fuse_blocks(graph, ctx, "cached_attention", "attention_linear", match_site,
                       lambda site: (site.inputs, site.attrs, site.nodes, site.last))
