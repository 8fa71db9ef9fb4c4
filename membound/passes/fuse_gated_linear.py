"""fuse-gated-linear: a gated MLP's ``down(silu(gate) * up)`` becomes one ``gated_linear`` node.

```
// before: the MLP of a Llama layer after merge-linear (gate/up merged into one projection)
%gu = linear(%h, %w1_w3) : bf16[B, S, 16384]
%g, %u = split(%gu) {dim=-1, sizes=[8192, 8192]} : bf16[B, S, 8192], bf16[B, S, 8192]
%a = silu(%g) : bf16[B, S, 8192]
%p = mul(%a, %u) : bf16[B, S, 8192]
%y = linear(%p, %w2) : bf16[B, S, 2048]
// after
%gu = linear(%h, %w1_w3) : bf16[B, S, 16384]
%g, %u = split(%gu) {dim=-1, sizes=[8192, 8192]} : bf16[B, S, 8192], bf16[B, S, 8192]
%y = gated_linear(%g, %u, %w2) {act="silu"} : bf16[B, S, 2048]
```

Matches ``linear(mul(silu(gate), up), W)`` (either operand order of the ``mul``), no bias, where the
silu and the product have no other reader. The library kernel forms ``silu(gate) * up`` tile by tile
as the GEMV loads its input, so at decode the product is never written and read back and its kernel
is never launched: one launch less per layer, which at batch 1 costs about as long as the GEMV of a
small projection.

When it fires: when the cost model (``ctx.cost``) estimates ``gated_linear`` faster than the product
kernel plus the linear, at the dims in ``ctx.decode_dims`` (symbols not given at 1: the decode
step). Without a cost model: when the token count M is symbolic or at
most 16 (the GEMV range). At prefill sizes the op runs the product in torch and the linear in cuBLAS,
so firing costs prefill almost nothing.
"""

from __future__ import annotations

from typing import Optional

from membound.ir import Graph, Value
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import Any_, Match, Pat, Rule, is_2d_param, rewrite_to_fixpoint

_GATED = Pat("linear",
             Pat("mul", Pat("silu", Any_("gate"), name="act", one_use=True), Any_("up"), name="prod", one_use=True),
             Any_("w", is_2d_param), name="lin")


def _declines(ctx: PassContext, m: Match) -> Optional[str]:
    """None when fusing pays, else why not (for the pass log)."""
    gate, up, w = m["gate"], m["up"], m["w"]
    if tuple(gate.type.shape) != tuple(up.type.shape) or gate.dtype != up.dtype:
        return f"gate %{gate.name} {gate.type} and up %{up.name} {up.type} differ (a broadcast product)"
    if ctx.cost is None:
        return beyond_gemv(gate, "the linear is not a GEMV")
    dims = decode_dims(ctx, (gate, up))
    scratch = Graph("gated_linear_cost")
    fused = scratch.call("gated_linear", scratch.add_input("gate", gate.type), scratch.add_input("up", up.type),
                         scratch.add_param("w", w.type), act="silu").producer
    # apart: one kernel forms the product (silu fused into it), then the linear reads it back
    apart = seconds(ctx, m["prod"].producer, dims) + seconds(ctx, m["lin"].producer, dims)
    together = seconds(ctx, fused, dims)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s fused"
    return None


def _make_rule(ctx: PassContext) -> Rule:
    def gated_linear(m: Match) -> Optional[Value]:
        reason = _declines(ctx, m)
        if reason is not None:
            ctx.note(f"%{m.value.name} not fused: {reason}")
            return None
        return m.builder.call("gated_linear", m["gate"], m["up"], m["w"], act="silu")

    return Rule(_GATED, gated_linear, name="fuse-gated-linear")


@register_pass("fuse-gated-linear")
def fuse_gated_linear(graph: Graph, ctx: PassContext) -> bool:
    """Fuse ``linear(silu(gate) * up, W)`` into ``gated_linear`` where the cost model says it pays."""
    counts: dict[str, int] = {}
    changed = rewrite_to_fixpoint(graph, [_make_rule(ctx)], counts=counts)
    if counts:
        ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return changed
