"""fuse-norm-linear: an ``rms_norm`` read only by linears becomes the prologue of each of them.

```
// before: the attention input of a Llama layer after merge-linear (q/k/v merged into one projection)
graph @f(%h: bf16[B, 1, 2048]) params(%ln: bf16[2048], %wqkv: bf16[3072, 2048]) {
  %n = rms_norm(%h, %ln) {eps=1e-05} : bf16[B, 1, 2048]
  %qkv = linear(%n, %wqkv) : bf16[B, 1, 3072]
  return %qkv
}
// after
graph @f(%h: bf16[B, 1, 2048]) params(%ln: bf16[2048], %wqkv: bf16[3072, 2048]) {
  %0 = rms_norm_linear(%h, %ln, %wqkv) {eps=1e-05} : bf16[B, 1, 3072]
  return %0
}
```

Matches ``linear(rms_norm(x, w), W[, b])`` where every reader of the norm is a linear that takes it as
its input ``x`` (so the norm's kernel goes away once all of them are fused; the norm is not a graph
output) and the norm, x and its weight share one dtype. Each GEMV program first reduces the whole rows
of x (4-8 KB per token at the Llama shapes, from L2) for their 1 / rms, then norms each x tile as it
loads it, rounding as eager does (the normed value, then the product with the weight). At decode the
norm's launch goes away, and its output is never written nor read back.

Which linear ops have a prologue form is one table, :data:`PROLOGUE` (a quantized linear's fused form is
added there once its kernel has one).

When it fires: when the cost model (``ctx.cost``) estimates the fused linears faster than the norm plus
the linears, at the decode dims (``ctx.decode_dims``; symbols not given at 1). Without a cost model:
when the token count is symbolic or at most 16 (the GEMV range).
"""

from __future__ import annotations

from typing import Optional

from membound.ir import Graph, Node, Value
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds, seconds_of
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import Any_, Match, Pat, Rule, rewrite_to_fixpoint

# linear op -> its form with the rms_norm of its input as prologue (the norm weight goes in after x)
PROLOGUE: dict[str, str] = {"linear": "rms_norm_linear"}

_NORMED = Pat(tuple(PROLOGUE), Pat("rms_norm", Any_("x"), Any_("nw"), name="norm"), ..., name="lin")


def _fused(lin: Node, x: Value, nw: Value, eps: float) -> tuple[str, list[Value], dict]:
    return PROLOGUE[lin.op], [x, nw] + list(lin.inputs[1:]), {**lin.attrs, "eps": eps}


def _declines(ctx: PassContext, m: Match) -> Optional[str]:
    """None when fusing pays, else why not (for the pass log)."""
    x, nw, normed = m["x"], m["nw"], m["norm"]
    norm = normed.producer
    assert norm is not None
    if not (x.dtype == nw.dtype == normed.dtype) or nw.rank != 1:
        return f"the norm's input %{x.name} {x.type} and weight %{nw.name} {nw.type} are not one dtype and a row"
    graph = norm.graph
    readers = {id(u): u for u in normed.users}.values()
    if any(o is normed for o in graph.outputs):
        return f"%{normed.name} is a graph output: its kernel would stay"
    others = sorted({u.op for u in readers if u.op not in PROLOGUE or u.inputs[0] is not normed
                     or normed in u.inputs[1:]})
    if others:
        return (f"%{normed.name} has readers other than linears' inputs ({', '.join(others)}; fused forms exist "
                f"for {', '.join(PROLOGUE)}): its kernel would stay")
    if ctx.cost is None:
        return beyond_gemv(x, "the linears are not GEMVs")
    dims = decode_dims(ctx, (x,))
    eps = float(norm.attrs["eps"])
    apart = seconds(ctx, norm, dims) + sum(seconds(ctx, u, dims) for u in readers)
    together = sum(seconds_of(ctx, *_fused(u, x, nw, eps), dims) for u in readers)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s fused"
    return None


def _make_rule(ctx: PassContext) -> Rule:
    def norm_linear(m: Match) -> Optional[Value]:
        reason = _declines(ctx, m)
        if reason is not None:
            ctx.note(f"%{m.value.name} not fused: {reason}")
            return None
        norm, lin = m["norm"].producer, m.root
        assert norm is not None
        op, inputs, attrs = _fused(lin, m["x"], m["nw"], float(norm.attrs["eps"]))
        return m.builder.call(op, *inputs, **attrs)

    return Rule(_NORMED, norm_linear, name="fuse-norm-linear")


@register_pass("fuse-norm-linear")
def fuse_norm_linear(graph: Graph, ctx: PassContext) -> bool:
    """Fold ``linear(rms_norm(x, w), W)`` into ``rms_norm_linear`` where the cost model says it pays."""
    counts: dict[str, int] = {}
    changed = rewrite_to_fixpoint(graph, [_make_rule(ctx)], counts=counts)
    if counts:
        ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return changed
