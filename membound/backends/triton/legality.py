"""Fusion legality: can these members be one generated kernel, and if not, why not.

A kernel has one iteration space: a pointwise kernel stores every escaping value (and every sink's
values) at the same shape; a row kernel has one row shape and length for all its reductions, and
every value computed from a reduction (*row-bound*) stays on its row (only the views in
``lowering.ROW_VIEWS`` may sit between them, and no ``cat`` or gather reads one off its lane). Sinks
write each cache once and no member reads a cache a sink writes. And the fused group must not make a
cycle with the rest of the graph (checked with networkx, state-order edges included).

``Legality.check(members)`` returns the kernel's :class:`Layout`, or a string: the reason, which the
partitioner records as a :class:`~membound.backends.triton.facts.Refusal`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import networkx as nx
import sympy

from membound.backends.triton.facts import GraphFacts, Shape, row_space, shapes_equal, space_shape, state_order
from membound.backends.triton.lowering import PER_ELEMENT_REDUCTIONS, REINDEXING, ROW_VIEWS
from membound.ir.analysis import fusion_would_cycle, to_networkx
from membound.ir.graph import Graph, Node
from membound.ir.types import dims_equal


@dataclass
class Layout:
    """The kernel members would form: ``"pointwise"`` or ``"row"``, its shape, the escaping members."""

    layout: str
    shape: Shape
    outputs: list[Node]


def _name(node: Node) -> str:
    return f"%{node.results[0].name}"


def _shape(shape: Sequence[sympy.Expr]) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


class Legality:
    def __init__(self, graph: Graph, facts: GraphFacts) -> None:
        self.graph = graph
        self.facts = facts
        self.dg = to_networkx(graph)
        self.dg.add_edges_from(state_order(graph, facts))

    def check(self, members: list[Node]) -> Union[Layout, str]:
        """The layout of a kernel over ``members`` (in graph order), or why they cannot form one kernel."""
        f = self.facts
        mset = {id(m) for m in members}
        escaping = []
        for m in members:
            if f.kind(m) == "sink":  # stored into its cache, not into a buffer of the result
                continue
            users, is_out = f.consumers(m.results[0])
            if is_out or any(id(u) not in mset for u in users):
                escaping.append(m)
        sinks = [m for m in members if f.kind(m) == "sink"]
        if sinks:
            reason = self._sinks_refusal(sinks, mset)
            if reason is not None:
                return reason
        reductions = [m for m in members if f.kind(m) == "row"]
        layout: Union[Layout, str]
        if reductions:
            layout = "a row kernel does not store into caches" if sinks else \
                self._check_row(members, reductions, escaping)
        else:
            stored = escaping + sinks
            shape = space_shape(stored[0]) if stored else space_shape(members[-1])
            other = next((m for m in stored if not shapes_equal(space_shape(m), shape)), None)
            if other is not None:
                return (f"it would store values of two shapes: {_name(stored[0])} {_shape(shape)} and "
                        f"{_name(other)} {_shape(space_shape(other))}")
            layout = Layout("pointwise", tuple(shape), escaping)
        if isinstance(layout, str):
            return layout
        through = self._cycle_through(members, mset)
        if through is not None:
            return f"the kernel would both feed and read {through} (a cycle)"
        return layout

    def _sinks_refusal(self, sinks: list[Node], mset: set[int]) -> Union[str, None]:
        """A cache is written by one sink of the kernel and read by no other member (the kernel's lanes
        run in no order), and no member reads a sink's result (the whole cache, after the write)."""
        f = self.facts
        caches = [w.inputs[0] for w in sinks]
        if len({id(c) for c in caches}) != len(caches):
            return "two cache writes into one cache"
        for w, cache in zip(sinks, caches):
            readers, _ = f.consumers(cache)
            reader = next((u for u in readers if id(u) in mset and u is not w), None)
            if reader is not None:
                return f"{_name(reader)} reads %{cache.name}, which {_name(w)} writes in the same kernel"
            users, _ = f.consumers(w.results[0])
            user = next((u for u in users if id(u) in mset), None)
            if user is not None:
                return f"{_name(user)} reads the cache {_name(w)} has just written"
        return None

    def _check_row(self, members: list[Node], reductions: list[Node], escaping: list[Node]) -> Union[Layout, str]:
        f = self.facts
        rows, n = row_space(reductions[0])
        for r in reductions[1:]:
            rows2, n2 = row_space(r)
            if not (shapes_equal(rows, rows2) and dims_equal(n, n2)):
                return (f"row reductions over different rows: {_name(reductions[0])} {_shape(rows + (n,))} and "
                        f"{_name(r)} {_shape(rows2 + (n2,))}")
        allowed = (rows + (n,), rows + (sympy.Integer(1),), rows)

        def fits(shape: Sequence[sympy.Expr]) -> bool:
            return any(shapes_equal(shape, a) for a in allowed)

        bound: set[int] = set()  # members whose value depends on a reduction: computable on this row only
        per_lane: set[int] = set()  # ... on a per-element reduction (cumsum, softmax, norms): on its lanes only
        for m in members:  # members are in graph order
            if f.kind(m) == "row":
                bound.add(id(m))
                if m.op in PER_ELEMENT_REDUCTIONS:
                    per_lane.add(id(m))
            for v in m.inputs:
                o, chain = f.origin(v)
                if o.producer is None or id(o.producer) not in bound:
                    continue
                if id(o.producer) in per_lane and n.is_Integer and int(n) == 1 and f.kind(m) != "row":
                    # a row of length 1: the consumer reads the size-1 dim at the broadcast index 0, but a
                    # per-element reduction is computed on the row's lanes (decode's S=1 cumsum of a mask)
                    return (f"{_name(m)} = {m.op} reads the per-element {o.producer.op} %{o.name} of a length-1 "
                            "row off its lanes")
                bound.add(id(m))
                if id(o.producer) in per_lane:
                    per_lane.add(id(m))
                if m.op in REINDEXING:
                    return f"{_name(m)} = {m.op} reads the row-bound %{o.name} off its lane"
                for view in chain:
                    if view.op not in ROW_VIEWS or not fits(view.inputs[0].shape) or not fits(view.results[0].shape):
                        return f"the view {_name(view)} = {view.op} moves the row-bound %{o.name} off its row"
        for m in members:
            if (id(m) in bound or m in escaping) and not fits(m.results[0].shape):
                return (f"{_name(m)} {_shape(m.results[0].shape)} is neither the row {_shape(rows + (n,))} nor one "
                        "value per row")
        return Layout("row", rows + (n,), escaping)

    def _cycle_through(self, members: list[Node], mset: set[int]) -> Union[str, None]:
        """A node outside the group on a path that leaves the group and comes back, or None. networkx
        looks at the nodes between the first and last member (such a path stays inside that window of
        the topological order)."""
        f = self.facts
        group = set(members)
        for m in members:  # views between two members are folded into the kernel too
            for v in m.inputs:
                o, chain = f.origin(v)
                if o.producer is not None and id(o.producer) in mset:
                    group.update(chain)
        lo = min(f.position[id(m)] for m in group)
        hi = max(f.position[id(m)] for m in group)
        sub = self.dg.subgraph(self.graph.nodes[lo:hi + 1])
        if not fusion_would_cycle(sub, group):
            return None
        after = set().union(*(nx.descendants(sub, m) for m in group)) - group
        before = set().union(*(nx.ancestors(sub, m) for m in group)) - group
        between = [n for n in self.graph.nodes[lo:hi + 1] if n in after and n in before and f.kind(n) != "view"]
        return f"{_name(between[0])} = {between[0].op}" if between else "a node outside it"
