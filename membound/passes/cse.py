"""common-subexpression-elimination: merge nodes that compute the same thing from the same values.

```
// before
graph @f(%x: f32[B, 8]) {
  %0 = exp(%x) : f32[B, 8]
  %1 = exp(%x) : f32[B, 8]
  %2 = add(%0, %1) : f32[B, 8]
  return %2
}
// after
graph @f(%x: f32[B, 8]) {
  %0 = exp(%x) : f32[B, 8]
  %2 = add(%0, %0) : f32[B, 8]
  return %2
}
```

Fires when two nodes have the same op, the same attributes (compared with their types, so ``1`` and
``1.0`` or ``0.0`` and ``-0.0`` are different) and the very same input values; the later node's uses
move to the earlier one. Ops with ``side_effects`` are never merged. Always a win: one computation
instead of two; no cost question. Commutative operands are not reordered here (canonicalize's job).
"""

from __future__ import annotations

from typing import Any, Hashable

from membound.ir import Graph, Node, get_op
from membound.passes.manager import PassContext, register_pass


def attr_key(v: Any) -> Hashable:
    """A hashable key that tells apart values Python considers equal (1 vs 1.0 vs True, 0.0 vs -0.0)."""
    if isinstance(v, (tuple, list)):
        return ("seq", tuple(attr_key(x) for x in v))
    if isinstance(v, float):
        return ("float", repr(v))
    try:
        hash(v)
    except TypeError:
        return (type(v).__name__, repr(v))
    return (type(v).__name__, v)


def attrs_key(node: Node) -> Hashable:
    """``node``'s attributes as a hashable key, each told apart by :func:`attr_key`."""
    return tuple(sorted((k, attr_key(a)) for k, a in node.attrs.items()))


def node_key(node: Node) -> Hashable:
    types = tuple(str(r.type) for r in node.results)
    return (node.op, attrs_key(node), tuple(id(v) for v in node.inputs), types)


@register_pass("common-subexpression-elimination")
def common_subexpression_elimination(graph: Graph, ctx: PassContext) -> bool:
    """Merge each node into an earlier identical one (same op, attrs, inputs), in one forward sweep."""
    seen: dict[Hashable, Node] = {}
    merged = 0
    for node in list(graph.nodes):
        if get_op(node.op).side_effects:
            continue
        key = node_key(node)
        first = seen.get(key)
        if first is None:
            seen[key] = node
            continue
        for old, new in zip(node.results, first.results):
            graph.replace_all_uses(old, new)
        graph.erase_node(node)
        merged += 1
    if merged:
        ctx.note(f"merged {merged} duplicate node(s)")
    return merged > 0
