"""fuse-linear-residual: a residual add after a linear becomes the linear's epilogue.

```
// before: the end of a Llama attention block (the MLP's down projection is the same with gated_linear)
graph @f(%a: bf16[B, 1, 2048], %h: bf16[B, 1, 2048]) params(%wo: bf16[2048, 2048]) {
  %o = linear(%a, %wo) : bf16[B, 1, 2048]
  %h2 = add(%h, %o) : bf16[B, 1, 2048]
  return %h2
}
// after
graph @f(%a: bf16[B, 1, 2048], %h: bf16[B, 1, 2048]) params(%wo: bf16[2048, 2048]) {
  %0 = linear_add(%a, %wo, %h) : bf16[B, 1, 2048]
  return %0
}
```

Matches ``add(linear(...), r)`` and ``add(gated_linear(...), r)`` (either operand order), where the
linear's result has no other reader and ``r`` has the sum's shape and dtype (no broadcast). The GEMV adds
``r`` to its output tile as it stores it (the last program of a split-K launch, after its sum), rounding
the product and then the sum as eager does. At decode the add's launch goes away; the row kernel that
follows (the next ``rms_norm``) reads the stored sum as before, or is itself folded into the next GEMV
by fuse-norm-linear.

Which linear ops have an epilogue form is one table, :data:`EPILOGUE` (a quantized linear's fused form
is added there once its kernel has one).

When it fires: when the cost model (``ctx.cost``) estimates the fused op faster than the linear plus the
add at the decode dims (``ctx.decode_dims``; symbols not given at 1). Without a cost model: when the
token count is symbolic or at most 16 (the GEMV range).
"""

from __future__ import annotations

from typing import Optional

from membound.ir import Graph, Value
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds, seconds_of
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import Any_, Match, Pat, Rule, rewrite_to_fixpoint

# linear op -> its form with the residual add as epilogue (the residual goes in after the op's own
# required inputs, before an optional bias)
EPILOGUE: dict[str, str] = {"linear": "linear_add", "gated_linear": "gated_linear_add"}
_REQUIRED = {"linear": 2, "gated_linear": 3}

_RESIDUAL = Pat("add", Pat(tuple(EPILOGUE), ..., name="lin", one_use=True), Any_("r"), name="sum")


def _fused_inputs(m: Match) -> list[Value]:
    lin = m["lin"].producer
    assert lin is not None
    n = _REQUIRED[lin.op]
    return list(lin.inputs[:n]) + [m["r"]] + list(lin.inputs[n:])


def _declines(ctx: PassContext, m: Match) -> Optional[str]:
    """None when fusing pays, else why not (for the pass log)."""
    y, r, total = m["lin"], m["r"], m["sum"]
    if r.type != total.type or y.type != total.type:
        return f"residual %{r.name} {r.type} and the product %{y.name} {y.type} differ (a broadcast add)"
    lin = y.producer
    assert lin is not None
    if ctx.cost is None:
        return beyond_gemv(lin.inputs[0], "the linear is not a GEMV")
    dims = decode_dims(ctx, (lin.inputs[0], r))
    apart = seconds(ctx, lin, dims) + seconds(ctx, total.producer, dims)
    together = seconds_of(ctx, EPILOGUE[lin.op], _fused_inputs(m), dict(lin.attrs), dims)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s fused"
    return None


def _make_rule(ctx: PassContext) -> Rule:
    def linear_residual(m: Match) -> Optional[Value]:
        reason = _declines(ctx, m)
        if reason is not None:
            ctx.note(f"%{m.value.name} not fused: {reason}")
            return None
        lin = m["lin"].producer
        assert lin is not None
        return m.builder.call(EPILOGUE[lin.op], *_fused_inputs(m), **dict(lin.attrs))

    return Rule(_RESIDUAL, linear_residual, name="fuse-linear-residual")


@register_pass("fuse-linear-residual")
def fuse_linear_residual(graph: Graph, ctx: PassContext) -> bool:
    """Fold ``add(linear(...), r)`` into ``linear_add`` / ``gated_linear_add`` where the cost model says it pays."""
    counts: dict[str, int] = {}
    changed = rewrite_to_fixpoint(graph, [_make_rule(ctx)], counts=counts)
    if counts:
        ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return changed
