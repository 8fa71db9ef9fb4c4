"""dead-code-elimination: remove nodes whose results nobody uses, and parameters nobody reads.

```
// before
graph @f(%x: f32[B, 8]) params(%w: f32[8, 8]) {
  %0 = exp(%x) : f32[B, 8]
  %1 = relu(%x) : f32[B, 8]
  %2 = linear(%0, %w) : f32[B, 8]
  return %1
}
// after
graph @f(%x: f32[B, 8]) {
  %1 = relu(%x) : f32[B, 8]
  return %1
}
```

Fires on every node none of whose results is read by another node or returned, unless its op has
``side_effects`` (state writes such as ``cache_write`` always stay). No cost question: removing work
that nobody reads is always a win. Graph inputs and state are part of the calling convention and are
never removed; unused parameters are (their tensors are dropped from ``graph.tensors``).
"""

from __future__ import annotations

from membound.ir import Graph, get_op
from membound.passes.manager import PassContext, register_pass


@register_pass("dead-code-elimination")
def dead_code_elimination(graph: Graph, ctx: PassContext) -> bool:
    """Remove unused, effect-free nodes (walking backwards, so whole dead chains go) and unused params."""
    outputs = {id(v) for v in graph.outputs}
    removed = 0
    for node in reversed(list(graph.nodes)):
        if get_op(node.op).side_effects:
            continue
        if any(r.users or id(r) in outputs for r in node.results):
            continue
        graph.erase_node(node)
        removed += 1
    n_params = len(graph.params)
    params_changed = graph.remove_unused_params()
    if removed or params_changed:
        ctx.note(f"removed {removed} node(s) and {n_params - len(graph.params)} unused param(s)")
    return bool(removed) or params_changed
