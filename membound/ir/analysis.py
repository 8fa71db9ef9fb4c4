"""Graph analyses: structural equality, networkx views (reachability, fusion legality), liveness."""

from __future__ import annotations

from typing import Any

import networkx as nx
import sympy

from membound.ir.graph import Graph, Node, Value


def _attr_equal(a: Any, b: Any) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(_attr_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and a != a and b != b:
        return True  # nan == nan for comparison purposes
    if isinstance(a, sympy.Expr) or isinstance(b, sympy.Expr):
        return sympy.simplify(sympy.sympify(a) - sympy.sympify(b)) == 0
    return type(a) is type(b) and a == b


def structurally_equal(a: Graph, b: Graph, explain: bool = False) -> bool | str:
    """True when the graphs have the same ops, attrs, types and wiring, up to renaming node results.

    Inputs, params and state are matched by position; params and state also by name (names bind
    tensors). With ``explain=True`` returns the first difference as a string ("" when equal).
    """

    def diff() -> str:
        ids: dict[int, str] = {}
        ids_b: dict[int, str] = {}
        for kind, va, vb in (("input", a.inputs, b.inputs), ("param", a.params, b.params),
                             ("state", a.state, b.state)):
            if len(va) != len(vb):
                return f"{len(va)} vs {len(vb)} {kind}s"
            for i, (x, y) in enumerate(zip(va, vb)):
                if not x.type.equivalent(y.type):
                    return f"{kind} {i}: {x.type} vs {y.type}"
                if kind != "input" and x.name != y.name:
                    return f"{kind} {i}: %{x.name} vs %{y.name}"
                ids[id(x)] = ids_b[id(y)] = f"{kind}{i}"
        if len(a.nodes) != len(b.nodes):
            return f"{len(a.nodes)} vs {len(b.nodes)} nodes"
        for i, (m, n) in enumerate(zip(a.nodes, b.nodes)):
            if m.op != n.op:
                return f"node {i}: {m.op} vs {n.op}"
            if set(m.attrs) != set(n.attrs) or not all(_attr_equal(m.attrs[k], n.attrs[k]) for k in m.attrs):
                return f"node {i} ({m.op}): attrs {m.attrs} vs {n.attrs}"
            if [ids.get(id(v)) for v in m.inputs] != [ids_b.get(id(v)) for v in n.inputs]:
                return f"node {i} ({m.op}): inputs differ"
            if len(m.results) != len(n.results):
                return f"node {i} ({m.op}): result counts differ"
            for j, (x, y) in enumerate(zip(m.results, n.results)):
                if not x.type.equivalent(y.type):
                    return f"node {i} ({m.op}) result {j}: {x.type} vs {y.type}"
                ids[id(x)] = ids_b[id(y)] = f"n{i}.{j}"
        if [ids.get(id(v)) for v in a.outputs] != [ids_b.get(id(v)) for v in b.outputs]:
            return "outputs differ"
        return ""

    d = diff()
    return d if explain else d == ""


def to_networkx(g: Graph) -> nx.DiGraph:
    """Nodes of the IR as a DiGraph (edges producer -> user); graph inputs/params are not nodes."""
    dg = nx.DiGraph()
    for n in g.nodes:
        dg.add_node(n)
        for v in n.inputs:
            if v.producer is not None:
                dg.add_edge(v.producer, n)
    return dg


def fusion_would_cycle(dg: nx.DiGraph, group: set[Node]) -> bool:
    """Would merging ``group`` into one kernel create a cycle? (a path leaves the group and re-enters)."""
    outside_succ = {s for n in group for s in dg.successors(n) if s not in group}
    for s in outside_succ:
        reach = nx.descendants(dg, s)
        if reach & group:
            return True
    return False


def last_uses(g: Graph) -> dict[int, int]:
    """id(value) -> index of the last node that reads it (len(nodes) for graph outputs): for memory plans."""
    out: dict[int, int] = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs:
            out[id(v)] = i
    for v in g.outputs:
        out[id(v)] = len(g.nodes)
    return out


def users_of(v: Value) -> list[Node]:
    return list(v.users)
