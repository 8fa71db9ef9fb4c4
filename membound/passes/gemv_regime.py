"""What passes that pay off at decode (merge-linear, fuse-gated-linear) share: is a linear in the GEMV
regime, and what the cost model says at the decode step's dims.

At decode a linear's token count M (its input's leading dims) is 1..16 and the kernel streams the
weight: a launch saved or an intermediate not written is a visible share of its time. Without a cost
model a pass takes M symbolic or at most ``SMALL_M`` as that regime; with one, it compares estimates
at every symbolic dim = 1 (one token per row), or at the dims the pass's option gives.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence

from membound.ir import Graph, Node, Value
from membound.ir.types import numel, sym
from membound.passes.manager import PassContext

SMALL_M = 16  # the kernel library's small-M GEMV range (membound.backends.triton.kernels.SMALL_M)


def beyond_gemv(x: Value, what: str) -> Optional[str]:
    """Why ``x``'s token count (its leading dims) is past the GEMV range, for a pass without a cost
    model to ask (``what``: the rest of the log line), or None when it is symbolic or small."""
    m = numel(x.shape[:-1])
    if m.is_Integer and int(m) > SMALL_M:
        return f"M = {m} tokens > {SMALL_M} and no cost model to ask: {what}"
    return None


def decode_dims(ctx: PassContext, values: Iterable[Value]) -> dict[Any, int]:
    """Every symbol of ``values``' types at 1, overridden by ``ctx.decode_dims`` (name or symbol -> int)."""
    dims: dict[Any, int] = {s: 1 for v in values for s in v.type.free_symbols()}
    for key, value in (ctx.decode_dims or {}).items():
        dims[sym(key) if isinstance(key, str) else key] = int(value)
    return dims


def seconds(ctx: PassContext, node: Node, dims: dict[Any, int]) -> float:
    """The cost model's time for ``node`` at ``dims``."""
    assert ctx.cost is not None, "seconds() needs a cost model; check ctx.cost first"
    return float(ctx.cost.estimate(node, dims).time_s)


def seconds_of(ctx: PassContext, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
               dims: dict[Any, int]) -> float:
    """The cost model's time for a node ``op(inputs) {attrs}`` that is not in the graph yet (built in a
    scratch graph over inputs of the same types; parameters stay parameters)."""
    scratch = Graph(f"{op}_cost")
    args = [scratch.add_param(f"a{i}", v.type) if v.kind == "param" else scratch.add_input(f"a{i}", v.type)
            for i, v in enumerate(inputs)]
    node = scratch.call_multi(op, *args, **attrs)[0].producer
    assert node is not None
    return seconds(ctx, node, dims)


def block_declines(ctx: PassContext, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                   nodes: Sequence[Node], what: str) -> Optional[str]:
    """Why a block of ``nodes`` should not become one ``op(inputs) {attrs}`` (None: it pays), for the pass log:
    without a cost model, a block past the GEMV range (``what``: the log's words for that); with one, the op not
    faster than the nodes it replaces at the decode dims."""
    if ctx.cost is None:
        return beyond_gemv(inputs[0], what)
    dims = decode_dims(ctx, inputs)
    apart = sum(seconds(ctx, n, dims) for n in nodes)
    together = seconds_of(ctx, op, inputs, attrs, dims)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s as one op"
    return None


def fuse_blocks(graph: Graph, ctx: PassContext, anchor: str, op: str,
                match: Callable[[Node], tuple[Optional[Any], str]],
                parts: Callable[[Any], tuple[Sequence[Value], dict[str, Any], Sequence[Node], Node]]) -> bool:
    """The driver of the block-fusing passes (fuse-attention-block, fuse-mlp-block): for each ``anchor`` node,
    ``match(node)`` gives the block around it or ``(None, why not)`` ("" when not worth a log line); ``parts(block)``
    its op's inputs and attributes, the nodes it replaces (consumers first: erased in that order) and the node whose
    result the op's replaces. Each block the cost rule (:func:`block_declines`) takes becomes one ``op`` node; the
    log names every block left alone and why, then the count."""
    fused = 0
    for node in list(graph.nodes):
        if node.graph is not graph or node.op != anchor:
            continue
        block, why = match(node)
        if block is None:
            if why:
                ctx.note(f"%{node.results[0].name} not fused: {why}")
            continue
        inputs, attrs, nodes, last = parts(block)
        reason = block_declines(ctx, op, inputs, attrs, nodes, "the block is not at decode sizes")
        if reason is not None:
            ctx.note(f"%{node.results[0].name} not fused: {reason}")
            continue
        new = graph.insert_before(last, graph.create_node(op, list(inputs), attrs))
        graph.replace_all_uses(last.results[0], new.results[0])
        for n in nodes:
            graph.erase_node(n)
        fused += 1
    if fused:
        ctx.note(f"{op}: {fused}")
    return fused > 0
