"""merge-linear: linears that read one input with different weights become one linear and a split.

```
// before: the q/k/v projections of one attention layer
graph @f(%x: f32[B, S, 16]) params(%wq: f32[16, 16], %wk: f32[8, 16], %wv: f32[8, 16]) {
  %q = linear(%x, %wq) : f32[B, S, 16]
  %k = linear(%x, %wk) : f32[B, S, 8]
  %v = linear(%x, %wv) : f32[B, S, 8]
  return %q, %k, %v
}
// after
graph @f(%x: f32[B, S, 16]) params(%wq_wk_wv: f32[32, 16]) {
  %0 = linear(%x, %wq_wk_wv) : f32[B, S, 32]
  %q, %k, %v = split(%0) {dim=-1, sizes=[16, 8, 8]} : f32[B, S, 16], f32[B, S, 8], f32[B, S, 8]
  return %q, %k, %v
}
```

Matches: ``linear`` nodes with the same input value, each with a 2-D parameter weight (distinct
weights) and a parameter bias or none, of one dtype (q/k/v; gate/up; a gated DeltaNet's input
projections, one of which carries the ``dt_bias`` canonicalize folded into it). The merged weight is a
new parameter, ``torch.cat`` of the originals along N; biases likewise, zeros for a linear without one
when others have one (its sums plus 0.0: the same numbers). ``split`` is a
view, so the merged form moves the same weight bytes, reads x once instead of n times, and launches
one kernel instead of n.

When it fires: when the cost model (``ctx.cost``) estimates the merged linear faster than the n
separate ones, at the dims in ``ctx.decode_dims`` (symbols not given at 1: the decode step, where
linears are memory- and launch-bound). Without a cost model: when the token count M (x's leading
dims) is symbolic or at most ``SMALL_M`` = 16, the range where a linear is a GEMV streaming its
weight (the library's small-M kernel) and the saved launches and x reads are a visible share of the
time.

Weights are copied once, at compile time: the merged tensor is new memory (n·N·K elements), and the
graph drops the originals, so a runtime holding the compiled graph holds one copy. A caller that
also keeps its eager module alive holds both, as with any pass that rewrites weights (quantization
makes new tensors too); the copy buys a contiguous ``[sum N, K]`` weight that one kernel streams.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from membound.ir import Graph, Node, Value
from membound.ir.types import TensorType
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import Any_, Pat, is_2d_param

# linear(x, W) or linear(x, W, bias) with W a 2-D parameter (the bias is checked by _groups)
_LINEAR = Pat("linear", Any_("x"), Any_("weight", is_2d_param), ...)


def _bias(node: Node) -> Optional[Value]:
    return node.inputs[2] if len(node.inputs) > 2 else None


def _groups(graph: Graph) -> list[list[Node]]:
    """Sibling linears to merge, in graph order: same x, same dtype, parameter biases or none, distinct weights."""
    groups: dict[tuple[int, torch.dtype], list[Node]] = {}
    for node in graph.nodes:
        if node.op != "linear":
            continue
        caps = next(_LINEAR.matches(node.results[0], {}), None)
        if caps is None:
            continue
        bias = _bias(node)
        if bias is not None and bias.kind != "param":
            continue
        key = (id(caps["x"]), node.results[0].dtype)
        group = groups.setdefault(key, [])
        if all(n.inputs[1] is not node.inputs[1] for n in group):  # a repeated weight is CSE's to remove
            group.append(node)
    return [g for g in groups.values() if len(g) >= 2]


def _merged_name(graph: Graph, params: Sequence[Value]) -> str:
    """``a.0.q_proj.weight`` + ``a.0.k_proj.weight`` -> ``a.0.q_proj_k_proj.weight`` (unique in the graph)."""
    parts = [p.name.split(".") for p in params]
    head = 0
    while all(len(p) > head + 1 and p[head] == parts[0][head] for p in parts):
        head += 1
    tail = 0
    while all(len(p) > head + tail + 1 and p[-1 - tail] == parts[0][-1 - tail] for p in parts):
        tail += 1
    middles = [".".join(p[head:len(p) - tail]) for p in parts]
    base = ".".join(parts[0][:head] + ["_".join(middles)] + (parts[0][len(parts[0]) - tail:] if tail else []))
    return _unique(graph, base)


def _unique(graph: Graph, base: str) -> str:
    taken = {v.name for v in graph.values()}
    name, i = base, 1
    while name in taken:
        name, i = f"{base}_{i}", i + 1
    return name


def _concat(graph: Graph, params: Sequence[Value], name: str, type: TensorType) -> Value:
    """A new parameter holding ``torch.cat`` of the originals' tensors along dim 0 (when they have tensors)."""
    tensors = [graph.tensors.get(p.name) for p in params]
    merged = torch.cat(tensors, dim=0) if all(t is not None for t in tensors) else None
    return graph.add_param(name, type, merged)


def _merged_bias(graph: Graph, group: Sequence[Node], sizes: Sequence[int], dtype: torch.dtype, weight: str) -> Value:
    """The biases of ``group`` as one new parameter, zeros where a linear has none (named after the biases, or
    after the merged ``weight`` where some have none: ``....in_proj_qkv_in_proj_a.weight`` -> ``....bias``)."""
    biases = [_bias(n) for n in group]
    named = [b for b in biases if b is not None]
    tensors = [graph.tensors.get(b.name) if b is not None else None for b in biases]
    known = [t for t in tensors if t is not None]
    merged = None
    if len(known) == len(named):  # every bias has its tensor: zeros beside them on the same device
        merged = torch.cat([t if t is not None else torch.zeros(n, dtype=dtype, device=known[0].device)
                            for t, n in zip(tensors, sizes)])
    if len(named) == len(biases):
        name = _merged_name(graph, named)
    else:
        name = _unique(graph, weight[:-len("weight")] + "bias" if weight.endswith(".weight") else weight + "_bias")
    return graph.add_param(name, TensorType(dtype, (sum(sizes),)), merged)


def _declines(ctx: PassContext, group: Sequence[Node], n_total: int) -> Optional[str]:
    """None when merging pays, else why not (for the pass log)."""
    x = group[0].inputs[0]
    if ctx.cost is None:
        return beyond_gemv(x, "the linears are not weight-streaming GEMVs")
    dims = decode_dims(ctx, (v for n in group for v in n.inputs))
    # cost the merged linear on a scratch graph: the cost model takes nodes
    scratch = Graph("merge_linear_cost")
    xs = scratch.add_input("x", x.type)
    w = scratch.add_param("w", TensorType(x.dtype, (n_total, x.shape[-1])))
    biased = any(_bias(n) is not None for n in group)
    extra = [scratch.add_param("b", TensorType(x.dtype, (n_total,)))] if biased else []
    merged = scratch.append(scratch.create_node("linear", [xs, w] + extra))
    separate = sum(seconds(ctx, n, dims) for n in group)
    together = seconds(ctx, merged, dims)
    if together >= separate:
        return f"the cost model says {len(group)} linears take {separate:.3g}s apart and {together:.3g}s merged"
    return None


def _merge(graph: Graph, group: Sequence[Node], ctx: PassContext) -> bool:
    weights = [n.inputs[1] for n in group]
    sizes = tuple(int(w.shape[0]) for w in weights)
    x = group[0].inputs[0]
    reason = _declines(ctx, group, sum(sizes))
    if reason is not None:
        ctx.note(f"{', '.join('%' + n.results[0].name for n in group)} not merged: {reason}")
        return False
    dtype, k = x.dtype, weights[0].shape[1]
    inputs = [x, _concat(graph, weights, _merged_name(graph, weights), TensorType(dtype, (sum(sizes), k)))]
    if any(_bias(n) is not None for n in group):
        inputs.append(_merged_bias(graph, group, sizes, dtype, inputs[1].name))
    # provenance of the merged weight (rows per original), so a saved quantized copy of either form is found
    sources = dict(graph.meta.get("param_sources", {}))  # a new dict: graph copies share meta values
    sources[inputs[1].name] = tuple((w.name, int(w.shape[0])) for w in weights)
    graph.meta["param_sources"] = sources
    first = group[0]
    linear = graph.insert_before(first, graph.create_node("linear", inputs))
    split = graph.insert_before(first, graph.create_node("split", linear.results, {"dim": -1, "sizes": sizes}))
    for node, part in zip(group, split.results):
        graph.replace_all_uses(node.results[0], part)
        graph.erase_node(node)
    ctx.note(f"merged {len(group)} linears over %{x.name} into %{inputs[1].name} ({list(sizes)})")
    return True


@register_pass("merge-linear")
def merge_linear(graph: Graph, ctx: PassContext) -> bool:
    """Merge sibling linears (one input, several parameter weights) into one linear + split."""
    changed = False
    for group in _groups(graph):
        changed |= _merge(graph, group, ctx)
    if changed:
        graph.remove_unused_params()  # the originals, now read by nobody
    return changed
