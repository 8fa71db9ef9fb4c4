"""fuse-linear-glu: a gated MLP's merged gate/up projection takes the gating into its epilogue.

```
// before: a Llama MLP after merge-linear and fuse-gated-linear
%gu = linear(%h, %w1_w3) : bf16[B, S, 28672]
%g, %u = split(%gu) {dim=-1, sizes=[14336, 14336]} : bf16[B, S, 14336], bf16[B, S, 14336]
%y = gated_linear(%g, %u, %w2) {act="silu"} : bf16[B, S, 4096]
// after
%p = linear_glu(%h, %w1_w3) {act="silu"} : bf16[B, S, 14336]
%y = linear(%p, %w2) : bf16[B, S, 4096]
```

Matches the halves of an even two-way ``split`` of ``linear(x, W)`` (no bias, W a parameter, the split
its only reader) where the halves are read only by ``gated_linear(g, u, W2)`` (-> ``linear(linear_glu(x,
W), W2)``) or only by ``mul(silu(g), u)`` in either operand order (-> ``linear_glu(x, W)``). The weight
is not touched: the kernel reads the gate rows ``[0, N)`` and the up rows ``[N, 2N)`` of the merged weight as
two tiles per program (``kernels/linear.py``), so each program holds both factors of ``silu(g) * u`` for
its columns and stores only the product.

Why: ``gated_linear`` on tensor cores (2 < M <= 16, batch 8 at decode) forms ``silu(gate) * up`` once per
program into a scratch before its loop (every column program of the down projection gates the whole of
its K range again): on the H200 the gated down projection ran at 51% of read bandwidth in the batch-8
step against 95% for a plain linear (``cost/step.py``'s ``gemv_dot_gated`` and ``gemv_dot`` priors).
Here the down projection is a plain linear at every M, and the gate/up projection stores half its output.

When it fires: where the cost model (``ctx.cost``) estimates the fused form faster at the decode dims
(``ctx.decode_dims``; symbols not given at 1), or without a cost model in the GEMV range. On by default
since the H200 A/B of the decode step (``benches/results/decode_e2e-nvidia-h200-2026-12-02-session8-pending``):
Llama-3-8B 4.893 -> 4.721 ms at batch 1 and 6.108 -> 5.569 at batch 8, Llama-3.2-1B 1.016 -> 1.002 and
1.427 -> 1.315. ``MEMBOUND_LINEAR_GLU=0`` turns it off (the gated down projection of ``fuse-gated-linear``).
Quantization runs before it (``driver.pipeline_for``), so a quantized gate/up
projection is left to ``quant_linear`` and ``quant_gated_linear``.
"""

from __future__ import annotations

import os
from typing import Optional

from membound.ir import Graph, Node, Value
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds, seconds_of
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import is_2d_param, is_single_use

ENV = "MEMBOUND_LINEAR_GLU"


def enabled() -> bool:
    """On unless ``MEMBOUND_LINEAR_GLU=0``."""
    return os.environ.get(ENV, "1").strip() != "0"


def _only_reader(v: Value, node: Node) -> bool:
    """``node`` is the one reader of ``v`` (not a graph output)."""
    return is_single_use(v) and v.users[0] is node


def _halves(g: Value, u: Value) -> Optional[Node]:
    """The ``linear`` whose even two-way split gives ``g`` (first half) and ``u`` (second half), else None."""
    split = g.producer
    if split is None or split.op != "split" or u.producer is not split or len(split.results) != 2:
        return None
    if split.results[0] is not g or split.results[1] is not u:
        return None
    sizes = tuple(split.attrs.get("sizes") or ())
    src = split.inputs[0]
    dim = split.attrs.get("dim")
    if len(sizes) != 2 or sizes[0] != sizes[1] or dim not in (-1, src.rank - 1):
        return None
    lin = src.producer
    if lin is None or lin.op != "linear" or len(lin.inputs) != 2 or not is_2d_param(lin.inputs[1]):
        return None
    if not _only_reader(src, split) or lin.inputs[1].shape[0] != 2 * sizes[0]:
        return None
    return lin


def _match(node: Node) -> Optional[tuple[Node, list[Node]]]:
    """(the gate/up linear, the nodes the fusion replaces) when ``node`` reads the halves of one, else None."""
    if node.op == "gated_linear" and node.attrs.get("act") == "silu":
        g, u = node.inputs[0], node.inputs[1]
        lin = _halves(g, u)
        if lin is not None and _only_reader(g, node) and _only_reader(u, node):
            return lin, [node]
        return None
    if node.op != "mul" or len(node.inputs) != 2:
        return None
    for act, u in (node.inputs, node.inputs[::-1]):
        silu = act.producer
        if silu is None or silu.op != "silu" or not _only_reader(act, node):
            continue
        g = silu.inputs[0]
        lin = _halves(g, u)
        if lin is not None and _only_reader(g, silu) and _only_reader(u, node):
            return lin, [silu, node]
    return None


def _declines(ctx: PassContext, lin: Node, replaced: list[Node]) -> Optional[str]:
    """None when fusing pays, else why not (for the pass log)."""
    x, w = lin.inputs
    if ctx.cost is None:
        return beyond_gemv(x, "the linear is not a GEMV")
    dims = decode_dims(ctx, (x, *replaced[-1].inputs))
    apart = seconds(ctx, lin, dims) + sum(seconds(ctx, n, dims) for n in replaced)
    together = seconds_of(ctx, "linear_glu", [x, w], {"act": "silu"}, dims)
    if replaced[-1].op == "gated_linear":
        down = replaced[-1]  # then a plain linear over linear_glu's output, which has a half's (the gate's) type
        together += seconds_of(ctx, "linear", [down.inputs[0], down.inputs[2]], {}, dims)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s fused"
    return None


def _fuse(graph: Graph, lin: Node, replaced: list[Node]) -> None:
    last = replaced[-1]
    x, w = lin.inputs
    glu = graph.insert_before(last, graph.create_node("linear_glu", [x, w], {"act": "silu"}))
    new = glu.results[0]
    if last.op == "gated_linear":
        new = graph.insert_before(last, graph.create_node("linear", [new, last.inputs[2]])).results[0]
    graph.replace_all_uses(last.results[0], new)
    split = lin.results[0].users[0]
    for node in reversed(replaced):
        graph.erase_node(node)
    graph.erase_node(split)
    graph.erase_node(lin)


@register_pass("fuse-linear-glu")
def fuse_linear_glu(graph: Graph, ctx: PassContext) -> bool:
    """Fold ``silu(g) * u`` over the halves of a merged gate/up linear into ``linear_glu``."""
    fused = 0
    on = enabled()
    matches = 0
    for node in list(graph.nodes):
        if node.graph is not graph:
            continue  # erased by an earlier fusion
        found = _match(node)
        if found is None:
            continue
        matches += 1
        if not on:
            continue
        lin, replaced = found
        reason = _declines(ctx, lin, replaced)
        if reason is not None:
            ctx.note(f"%{node.results[0].name} not fused: {reason}")
            continue
        _fuse(graph, lin, replaced)
        fused += 1
    if matches and not on:
        ctx.note(f"{matches} gate/up projection(s) match, not fused: off ({ENV}=0)")
    if fused:
        ctx.note(f"linear_glu: {fused}")
    return fused > 0
