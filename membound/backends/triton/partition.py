"""Partition an IR graph into the steps the Triton backend runs: generated fused kernels and op calls.

Each node is classified by the lowering registry (``lowering.classify``):

- **pointwise** (elementwise ops, ``cat``, and the gathers ``index`` and ``embedding``): fused into a
  kernel that computes one block of a flat iteration range per program;
- **row** reductions over the last dim (``sum``/``mean``/``amax``/``amin``, ``softmax``/``log_softmax``,
  ``cumsum``, ``rms_norm``, ``layer_norm``): fused into a *row kernel*, one program per row, with
  pointwise prologue and epilogue;
- **view** (reshape, transpose, slice...): never a kernel of its own; a kernel that reads through it
  folds it into its index arithmetic, and a consumer that is not a kernel gets a torch view;
- **source** (``constant``, ``full``, ``arange``): computed inline from the index wherever it is read;
- **sink** (``cache_write`` into a graph state buffer): a store of a pointwise kernel that iterates over
  the written values, each element going straight to its cache slot; the result *is* the cache
  (updated in place, never a planned buffer);
- **call**: everything else (matmuls, attention, gathers, other state writes...), run by a library
  kernel or the op's torch reference.

Fusion is greedy in graph order: a fusible node joins the kernels of its producers when the result
is *legal* (``legality.py``: one iteration space, no cycle through the rest of the graph) and
*profitable* (``profitability.py``: the cost model's time of one kernel beats that of the parts, at
the dims the passes use). Then ``schedule.py`` orders the steps and merges independent pointwise
kernels into one launch (horizontal fusion). Every fusion not made is a :class:`Refusal` with its
reason, listed by ``Partition.describe()`` (``# not fused: ...`` lines):

    kernel _fused_add_rms_norm_2 [row ['B', 'S', '64']]: %47=add, %124=rms_norm
    torch   %50 = argmax
    # not fused: %51 = cumsum with [%50] (legality): ...
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional

from membound.backends.triton.facts import (  # noqa: F401  (re-exported: the partition's public names)
    Call,
    GraphFacts,
    Kernel,
    PartitionError,
    Refusal,
    Shape,
    Step,
    row_space,
    shapes_equal,
    space_shape,
    state_order,
)
from membound.backends.triton.legality import Layout, Legality
from membound.backends.triton.lowering import classify  # noqa: F401  (re-exported)
from membound.backends.triton.profitability import Profitability
from membound.backends.triton.schedule import merge_sections, op_names, schedule, step_graph
from membound.cost import CostModel, Hardware, RooflineCost
from membound.ir.graph import Graph, Node, Value


@dataclass
class Partition:
    graph: Graph
    steps: list[Step]
    refusals: list[Refusal] = field(default_factory=list)  # fusions not made, and why

    @property
    def kernels(self) -> list[Kernel]:
        return [s for s in self.steps if isinstance(s, Kernel)]

    @property
    def calls(self) -> list[Call]:
        return [s for s in self.steps if isinstance(s, Call)]

    @property
    def notes(self) -> list[str]:
        """The refusals as text, each once."""
        return list(dict.fromkeys(str(r) for r in self.refusals))

    def why_not_fused(self, name: str) -> list[Refusal]:
        """The refusals of the node whose result is ``%name`` (without the ``%``)."""
        return [r for r in self.refusals if r.node.results[0].name == name.lstrip("%")]

    def describe(self) -> str:
        """One line per step: what runs, in order; then one line per fusion not made."""
        lines = []
        for s in self.steps:
            if isinstance(s, Kernel) and s.sections:
                lines.append(f"kernel {s.name} [{len(s.sections)} sections]:")
                for k in s.sections:
                    nodes = ", ".join(f"%{m.results[0].name}={m.op}" for m in k.members)
                    lines.append(f"    [{k.layout} {list(map(str, k.shape))}]: {nodes}")
            elif isinstance(s, Kernel):
                nodes = ", ".join(f"%{m.results[0].name}={m.op}" for m in s.members)
                lines.append(f"kernel {s.name} [{s.layout} {list(map(str, s.shape))}]: {nodes}")
            else:
                lines.append(f"{s.impl:7s} %{s.node.results[0].name} = {s.node.op}")
        lines += [f"# {note}" for note in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# the greedy driver
# ---------------------------------------------------------------------------------------------
class _Fuser:
    def __init__(self, graph: Graph, facts: GraphFacts, legality: Legality, profit: Profitability) -> None:
        self.graph = graph
        self.facts = facts
        self.legality = legality
        self.profit = profit
        self.group_of: dict[int, list[Node]] = {}
        self.refusals: list[Refusal] = []

    def run(self) -> list[list[Node]]:
        f = self.facts
        groups: list[list[Node]] = []
        for node in self.graph.nodes:
            if f.kind(node) not in ("pointwise", "row", "sink"):
                continue
            current = [node]
            alone = self.legality.check(current)
            if not isinstance(alone, Layout):
                raise PartitionError(f"a lone {node.op} node cannot form a kernel: {alone}")
            for producer_group in self._producer_groups(node):
                merged = sorted(producer_group + current, key=lambda m: f.position[id(m)])
                layout = self.legality.check(merged)
                if not isinstance(layout, Layout):
                    self.refusals.append(Refusal(node, tuple(producer_group), "legality", layout))
                    continue
                reason = self.profit.refusal([producer_group, current], merged, layout.shape)
                if reason is not None:
                    self.refusals.append(Refusal(node, tuple(producer_group), "profitability", reason))
                    continue
                groups = [g for g in groups if g is not producer_group]
                current = merged
            groups.append(current)
            for m in current:
                self.group_of[id(m)] = current
        return groups

    def _producer_groups(self, node: Node) -> list[list[Node]]:
        """Groups that produce node's operands (through views), nearest producer first."""
        found: list[list[Node]] = []
        for v in node.inputs:
            o, _ = self.facts.origin(v)
            if o.producer is None:
                continue
            g = self.group_of.get(id(o.producer))
            if g is not None and all(g is not x for x in found):
                found.append(g)
        found.sort(key=lambda g: -max(self.facts.position[id(m)] for m in g))
        return found


# ---------------------------------------------------------------------------------------------
# the partition
# ---------------------------------------------------------------------------------------------
def partition(graph: Graph, cost: Optional[CostModel] = None, library: Optional[Iterable[str]] = None,
              dims: Optional[Mapping[Any, int]] = None) -> Partition:
    """Split ``graph`` into kernels and calls, in an order that respects every dependency.

    ``library`` names the ops membound's kernel library implements (their calls are marked
    ``"library"``, the others ``"torch"``). ``dims``: where the cost model compares fusion choices
    (symbols not given are 1: one decode step, as the passes compare).
    """
    cost = cost if cost is not None else RooflineCost(Hardware.named("h100-sxm"))
    lib = set(library or ())
    facts = GraphFacts(graph)
    profit = Profitability(graph, facts, cost, dims)
    fuser = _Fuser(graph, facts, Legality(graph, facts), profit)
    groups = fuser.run()
    kernels = [_make_kernel(g, facts, i) for i, g in enumerate(groups)]
    step_of: dict[int, Step] = {}
    for k in kernels:
        for m in k.members:
            step_of[id(m)] = k
    materialised = _materialised_views(graph, facts)
    steps: list[Step] = list(kernels)
    for n in graph.nodes:
        kind = facts.kind(n)
        if kind == "call":
            call = Call(n, "library" if n.op in lib else "torch")
        elif kind in ("view", "source") and id(n) in materialised:
            call = Call(n, "view")
        else:
            continue
        step_of[id(n)] = call
        steps.append(call)
    dg = step_graph(graph, facts, steps, step_of)
    steps, dg = merge_sections(graph, facts, steps, dg, profit, fuser.refusals)
    ordered = schedule(graph, facts, steps, dg)
    for i, k in enumerate(s for s in ordered if isinstance(s, Kernel)):  # number kernels in launch order
        k.name = f"{k.name.rsplit('_', 1)[0]}_{i}"
        for j, sec in enumerate(k.sections):
            sec.name = f"{k.name}_s{j}"
    return Partition(graph, ordered, fuser.refusals)


def _make_kernel(members: list[Node], facts: GraphFacts, index: int) -> Kernel:
    mset = {id(m) for m in members}
    escaping, layout, shape = [], "pointwise", space_shape(members[-1])
    sinks = [m for m in members if facts.kind(m) == "sink"]
    reductions = [m for m in members if facts.kind(m) == "row"]
    if reductions:
        rows, n = row_space(reductions[0])
        layout, shape = "row", rows + (n,)
    for m in members:
        if facts.kind(m) == "sink":
            continue
        users, is_out = facts.consumers(m.results[0])
        if is_out or any(id(u) not in mset for u in users):
            escaping.append(m)
    if layout == "pointwise" and (escaping or sinks):
        shape = space_shape((escaping + sinks)[0])
    inputs: list[Value] = []
    views: list[Node] = []
    for m in members:
        for v in m.inputs[1:] if m in sinks else m.inputs:  # a sink's cache is written, not loaded
            o, chain = facts.origin(v)
            views.extend(c for c in chain if c not in views)
            p = o.producer
            if p is not None and (id(p) in mset or facts.kind(p) == "source"):
                continue
            if all(o is not x for x in inputs):
                inputs.append(o)
    name = "_fused_" + "_".join(op_names(members)[:4]) + f"_{index}"
    return Kernel(name, layout, list(members), tuple(shape), [m.results[0] for m in escaping], inputs, views,
                  sinks)


def _materialised_views(graph: Graph, facts: GraphFacts) -> set[int]:
    """View and source nodes some non-kernel consumer (a call, a graph output) needs as a real tensor."""
    need: set[int] = set()
    outputs = {id(v) for v in graph.outputs}
    for n in reversed(graph.nodes):
        if facts.kind(n) not in ("view", "source"):
            continue
        for r in n.results:
            if id(r) in outputs or any(facts.kind(u) == "call" or id(u) in need for u in r.users):
                need.add(id(n))
    return need


