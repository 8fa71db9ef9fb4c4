"""Partition an IR graph into the steps the Triton backend runs: generated fused kernels and op calls.

Every node is one of:

- **pointwise** (elementwise ops with a Triton lowering, ``cat``, and the gathers ``index`` and
  ``embedding``): fused into a kernel that computes one block of a flat iteration range per program;
- **reduction** over the last dim (``sum``/``mean``/``amax``/``amin``, ``softmax``/``log_softmax``,
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
is *legal* (one iteration space: escaping values have the kernel's shape, row-bound values are
per-row; no cycle through the rest of the graph, checked with networkx) and *profitable* (the
roofline time saved by not writing and re-reading the intermediate and by one launch less, from the
cost model's hardware spec, outweighs recomputation). State buffers order the graph too: a kernel
never holds a sink together with a reader of the same cache, and the cycle check sees the edges that
keep readers on the right side of every write.

Then *horizontal fusion*: pointwise kernels next to each other in the schedule (only torch views
between them) that do not depend on each other, directly or through state, become the sections of
one launch: one program-id range split into their flat iteration ranges. The rule is the launch
time the cost model charges per kernel: it is saved once for every kernel merged.

    %25 = add(...) : f32[B, 4, 1, 16]                         # q rope       } one launch:
    %35 = cache_write(%cache.k.0, %34, %positions) {dim=2}     # k rope+write } _horizontal_..._2
    %36 = cache_write(%cache.v.0, %16, %positions) {dim=2}     # v write      } (3 sections)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

import networkx as nx
import sympy

from membound.backends.triton.lowering import PER_ELEMENT_REDUCTIONS, REINDEXING, ROW_VIEWS, classify
from membound.cost import Hardware, RooflineCost
from membound.ir.analysis import fusion_would_cycle, to_networkx
from membound.ir.graph import Graph, Node, Value
from membound.ir.ops import get_op
from membound.ir.types import dims_equal, numel

# symbol values at which the cost model compares fusion choices
SAMPLE_DIM = 64

Shape = tuple[sympy.Expr, ...]


class PartitionError(RuntimeError):
    """The partitioner produced something inconsistent (a bug here, never the user's graph)."""


@dataclass
class Kernel:
    """One generated Triton kernel.

    ``layout`` is ``"pointwise"`` (``shape`` is the flat iteration space), ``"row"`` (``shape`` is the
    row shape plus the reduced length N) or ``"sections"`` (horizontal fusion: independent pointwise
    kernels, ``sections``, run one after the other along the program id; ``shape`` is empty).
    ``outputs`` are the members whose values leave the kernel (stored); ``inputs`` the values it loads
    (the origins of the views it folds); ``sinks`` the ``cache_write`` members, stored into their
    caches in place.
    """

    name: str
    layout: str
    members: list[Node]
    shape: Shape
    outputs: list[Value]
    inputs: list[Value]
    views: list[Node] = field(default_factory=list)
    sinks: list[Node] = field(default_factory=list)
    sections: list["Kernel"] = field(default_factory=list)

    @property
    def nodes(self) -> list[Node]:
        """The nodes the cost model charges to this kernel."""
        return list(self.members)

    def __repr__(self) -> str:
        return f"<Kernel {self.name}: {self.layout} {[f'%{m.results[0].name}' for m in self.members]}>"


@dataclass
class Call:
    """One node run as a call: ``impl`` is ``"library"`` (membound's kernel library), ``"torch"`` (the op's
    torch reference) or ``"view"`` (a torch view or creation op materialised for a non-kernel consumer)."""

    node: Node
    impl: str

    @property
    def nodes(self) -> list[Node]:
        return [self.node]

    def __repr__(self) -> str:
        return f"<Call {self.impl} %{self.node.results[0].name} = {self.node.op}>"


Step = Union[Kernel, Call]


@dataclass
class Partition:
    graph: Graph
    steps: list[Step]
    notes: list[str] = field(default_factory=list)  # fusions refused for a reason worth telling

    @property
    def kernels(self) -> list[Kernel]:
        return [s for s in self.steps if isinstance(s, Kernel)]

    @property
    def calls(self) -> list[Call]:
        return [s for s in self.steps if isinstance(s, Call)]

    def describe(self) -> str:
        """One line per step: what runs, in order."""
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
        lines += [f"# {note}" for note in dict.fromkeys(self.notes)]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------
def space_shape(node: Node) -> Shape:
    """The iteration space a kernel member needs: its result's shape, a sink's written values' shape."""
    return tuple(node.inputs[1].shape) if get_op(node.op).sink else tuple(node.results[0].shape)


def row_space(node: Node) -> tuple[Shape, sympy.Expr]:
    """(row shape, row length) of a row reduction."""
    x = node.inputs[0]
    return tuple(x.shape[:-1]), x.shape[-1]


def shapes_equal(a: Sequence[sympy.Expr], b: Sequence[sympy.Expr]) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


# ---------------------------------------------------------------------------------------------
# graph facts shared by the partitioner, the memory plan and codegen
# ---------------------------------------------------------------------------------------------
class GraphFacts:
    """Node classes, view chains and the real (non-view) consumers of every value."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.position = {id(n): i for i, n in enumerate(graph.nodes)}
        self.cls = {id(n): classify(n) for n in graph.nodes}
        self.outputs = {id(v) for v in graph.outputs}

    def kind(self, node: Node) -> str:
        return self.cls[id(node)]

    def origin(self, v: Value) -> tuple[Value, list[Node]]:
        """Follow ``v`` up through views: the first value not produced by a view, and the views passed."""
        chain: list[Node] = []
        while v.producer is not None and self.kind(v.producer) == "view":
            chain.append(v.producer)
            v = v.producer.inputs[0]
        return v, chain

    def consumers(self, v: Value) -> tuple[list[Node], bool]:
        """The non-view nodes that read ``v`` (directly or through views), and whether ``v`` or a view of it
        is a graph output."""
        out: list[Node] = []
        is_output = False
        stack = [v]
        seen: set[int] = set()
        while stack:
            x = stack.pop()
            if id(x) in seen:
                continue
            seen.add(id(x))
            is_output = is_output or id(x) in self.outputs
            for u in x.users:
                if self.kind(u) == "view":
                    stack.extend(u.results)
                elif all(u is not o for o in out):
                    out.append(u)
        return out, is_output


# ---------------------------------------------------------------------------------------------
# fusion groups
# ---------------------------------------------------------------------------------------------
@dataclass
class _Layout:
    layout: str
    shape: Shape
    outputs: list[Node]


class _Fuser:
    def __init__(self, graph: Graph, facts: GraphFacts, cost: RooflineCost) -> None:
        self.graph = graph
        self.facts = facts
        self.cost = cost
        self.dg = to_networkx(graph)
        self.dg.add_edges_from(state_order(graph, facts))
        self.group_of: dict[int, list[Node]] = {}
        self.refusals: list[str] = []  # legal-looking fusions refused, and why (Partition.notes)

    # ---- legality -----------------------------------------------------------------------------
    def check(self, members: list[Node]) -> Optional[_Layout]:
        """The layout of a kernel over ``members``, or None when they cannot form one kernel."""
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
        if sinks and not self._sinks_ok(sinks, mset):
            return None
        reductions = [m for m in members if f.kind(m) == "row"]
        if reductions:
            layout = None if sinks else self._check_row(members, reductions, escaping, mset)
        else:
            stored = escaping + sinks
            shape = space_shape(stored[0]) if stored else space_shape(members[-1])
            if not all(shapes_equal(space_shape(m), shape) for m in stored):
                return None
            layout = _Layout("pointwise", tuple(shape), escaping)
        if layout is None or self._would_cycle(members, mset):
            return None
        return layout

    def _sinks_ok(self, sinks: list[Node], mset: set[int]) -> bool:
        """A cache is written by one sink of the kernel and read by no other member (the kernel's lanes
        run in no order), and no member reads a sink's result (the whole cache, after the write)."""
        f = self.facts
        caches = [w.inputs[0] for w in sinks]
        if len({id(c) for c in caches}) != len(caches):
            return False
        for w, cache in zip(sinks, caches):
            readers, _ = f.consumers(cache)
            if any(id(u) in mset and u is not w for u in readers):
                return False
            users, _ = f.consumers(w.results[0])
            if any(id(u) in mset for u in users):
                return False
        return True

    def _check_row(self, members: list[Node], reductions: list[Node], escaping: list[Node],
                   mset: set[int]) -> Optional[_Layout]:
        f = self.facts
        rows, n = row_space(reductions[0])
        for r in reductions[1:]:
            rows2, n2 = row_space(r)
            if not (shapes_equal(rows, rows2) and dims_equal(n, n2)):
                return None
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
                    self.refusals.append(f"not fused: %{m.results[0].name} = {m.op} reads the per-element "
                                         f"{o.producer.op} %{o.name} of a length-1 row off its lanes")
                    return None
                bound.add(id(m))
                if id(o.producer) in per_lane:
                    per_lane.add(id(m))
                if m.op in REINDEXING:  # cat and gathers read their inputs off this lane's position
                    return None
                for view in chain:
                    if view.op not in ROW_VIEWS or not fits(view.inputs[0].shape) or not fits(view.results[0].shape):
                        return None
        for m in members:
            if (id(m) in bound or m in escaping) and not fits(m.results[0].shape):
                return None
        return _Layout("row", rows + (n,), escaping)

    def _would_cycle(self, members: list[Node], mset: set[int]) -> bool:
        """networkx check on the nodes between the first and last member (a path that leaves the
        kernel and comes back must stay inside that window of the topological order)."""
        f = self.facts
        group = set(members)
        for m in members:  # views between two members are folded into the kernel too
            for v in m.inputs:
                o, chain = f.origin(v)
                if o.producer is not None and id(o.producer) in mset:
                    group.update(chain)
        lo = min(f.position[id(m)] for m in group)
        hi = max(f.position[id(m)] for m in group)
        window = self.graph.nodes[lo:hi + 1]
        return fusion_would_cycle(self.dg.subgraph(window), group)

    # ---- profitability ------------------------------------------------------------------------
    def seconds_saved(self, parts: list[list[Node]], merged: list[Node], layout: _Layout) -> float:
        """Roofline time of the parts as separate kernels minus that of the merged kernel."""
        hw = self.cost.hardware
        before = sum(self._bytes(p) for p in parts)
        after = self._bytes(merged)
        extra_flops = self._recompute_flops(merged, layout)
        return ((before - after) / hw.bandwidth + (len(parts) - 1) * hw.launch_overhead
                - extra_flops / hw.peak_flops("fp32"))

    def _bytes(self, members: list[Node]) -> float:
        """Bytes a kernel over ``members`` moves: each loaded value once, each escaping value written once."""
        f = self.facts
        mset = {id(m) for m in members}
        total: sympy.Expr = sympy.Integer(0)
        loaded: set[int] = set()
        for m in members:
            sink = f.kind(m) == "sink"
            for v in m.inputs[1:] if sink else m.inputs:  # a sink never reads its cache
                o, _ = f.origin(v)
                p = o.producer
                if (p is not None and (id(p) in mset or f.kind(p) == "source")) or id(o) in loaded:
                    continue
                loaded.add(id(o))
                total += o.type.nbytes()
            if sink:  # only the new entries are written
                total += m.inputs[1].type.nbytes()
                continue
            users, is_out = f.consumers(m.results[0])
            if is_out or any(id(u) not in mset for u in users):
                total += m.results[0].type.nbytes()
        return _at_sample(total)

    def _recompute_flops(self, members: list[Node], layout: _Layout) -> float:
        """Internal pointwise values smaller than the iteration space are recomputed per element."""
        total: sympy.Expr = sympy.Integer(0)
        space = numel(layout.shape)
        for m in members:
            if self.facts.kind(m) != "pointwise":
                continue
            n = numel(m.results[0].shape)
            flops, _ = get_op(m.op).cost([v.type for v in m.inputs], [r.type for r in m.results], m.attrs)
            if flops != 0 and n != 0:
                total += flops * (space / n - 1)
        return max(_at_sample(total), 0.0)

    # ---- the greedy pass ----------------------------------------------------------------------
    def run(self) -> list[list[Node]]:
        f = self.facts
        groups: list[list[Node]] = []
        for node in self.graph.nodes:
            if f.kind(node) not in ("pointwise", "row", "sink"):
                continue
            current = [node]
            if self.check(current) is None:
                raise PartitionError(f"a lone {node.op} node cannot form a kernel")
            for producer_group in self._producer_groups(node):
                merged = sorted(producer_group + current, key=lambda m: f.position[id(m)])
                layout = self.check(merged)
                if layout is None or self.seconds_saved([producer_group, current], merged, layout) <= 0:
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



def _at_sample(e: sympy.Expr) -> float:
    e = sympy.sympify(e)
    return float(e.xreplace({s: sympy.Integer(SAMPLE_DIM) for s in e.free_symbols}))


# ---------------------------------------------------------------------------------------------
# the partition
# ---------------------------------------------------------------------------------------------
def partition(graph: Graph, cost: Optional[RooflineCost] = None, library: Optional[Iterable[str]] = None
              ) -> Partition:
    """Split ``graph`` into kernels and calls, in an order that respects every dependency.

    ``library`` names the ops membound's kernel library implements (their calls are marked
    ``"library"``, the others ``"torch"``).
    """
    cost = cost if cost is not None else RooflineCost(Hardware.named("h100-sxm"))
    lib = set(library or ())
    facts = GraphFacts(graph)
    fuser = _Fuser(graph, facts, cost)
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
    dg = _step_graph(graph, facts, steps, step_of)
    steps, dg = _merge_sections(graph, facts, steps, dg, cost)
    ordered = _schedule(graph, facts, steps, dg)
    for i, k in enumerate(s for s in ordered if isinstance(s, Kernel)):  # number kernels in launch order
        k.name = f"{k.name.rsplit('_', 1)[0]}_{i}"
        for j, sec in enumerate(k.sections):
            sec.name = f"{k.name}_s{j}"
    return Partition(graph, ordered, list(dict.fromkeys(fuser.refusals)))


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
    name = "_fused_" + "_".join(_op_names(members)[:4]) + f"_{index}"
    return Kernel(name, layout, list(members), tuple(shape), [m.results[0] for m in escaping], inputs, views,
                  sinks)


def _op_names(members: list[Node]) -> list[str]:
    names: list[str] = []
    for m in members:
        if m.op not in names:
            names.append(m.op)
    return names


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


def state_order(graph: Graph, facts: GraphFacts) -> list[tuple[Node, Node]]:
    """Edges that keep the readers of a state buffer on the right side of its in-place writes: every
    reader before a write (in graph order) runs before it, every reader after it runs after."""
    edges: list[tuple[Node, Node]] = []
    for st in graph.state:
        users, _ = facts.consumers(st)
        users = sorted(users, key=lambda n: facts.position[id(n)])
        for i, w in enumerate(users):
            if not get_op(w.op).side_effects:
                continue
            edges += [(u, w) for u in users[:i]]
            edges += [(w, u) for u in users[i + 1:]]
    return edges


def _step_graph(graph: Graph, facts: GraphFacts, steps: list[Step], step_of: dict[int, Step]) -> nx.DiGraph:
    """Step indices, with an edge from each step to every step that must run after it."""
    dg = nx.DiGraph()
    index = {id(s): i for i, s in enumerate(steps)}
    dg.add_nodes_from(range(len(steps)))

    def depend(before: Optional[Step], after: Optional[Step]) -> None:
        if before is not None and after is not None and before is not after:
            dg.add_edge(index[id(before)], index[id(after)])

    for s in steps:
        for v in (s.inputs if isinstance(s, Kernel) else s.node.inputs):
            depend(step_of.get(id(v.producer)) if v.producer is not None else None, s)
    for u, w in state_order(graph, facts):
        depend(step_of.get(id(u)), step_of.get(id(w)))
    return dg


def _schedule(graph: Graph, facts: GraphFacts, steps: list[Step], dg: nx.DiGraph) -> list[Step]:
    """Steps in a topological order of ``dg`` (their data dependencies, and state reads around state
    writes), each as early as graph order allows."""
    first = {i: min(facts.position[id(n)] for n in s.nodes) for i, s in enumerate(steps)}
    try:
        order = list(nx.lexicographical_topological_sort(dg, key=lambda i: first[i]))
    except nx.NetworkXUnfeasible:
        raise PartitionError(f"the steps of @{graph.name} depend on each other in a cycle; "
                             "a fusion decision was illegal (please report the graph)") from None
    return [steps[i] for i in order]


# ---------------------------------------------------------------------------------------------
# horizontal fusion
# ---------------------------------------------------------------------------------------------
def _sections(order: list[Step], dg: nx.DiGraph, index: dict[int, int], cost: RooflineCost) -> list[list[Kernel]]:
    """Runs of pointwise kernels, in schedule order, with only torch views between them and no path
    from one to another in ``dg``: independent, so running them at once reorders nothing, and no
    cycle forms (a run of kernels the graph orders, by data or by a state buffer, is cut there).
    Each run of two or more saves ``len - 1`` launches."""
    runs: list[list[Kernel]] = []
    run: list[Kernel] = []
    for s in order:
        if isinstance(s, Call) and s.impl == "view":
            continue  # a torch view (or creation op): the path test sees whether a kernel needs it
        if isinstance(s, Kernel) and s.layout == "pointwise" and run and not any(
                nx.has_path(dg, index[id(k)], index[id(s)]) for k in run):
            run.append(s)
            continue
        if len(run) > 1:
            runs.append(run)
        run = [s] if isinstance(s, Kernel) and s.layout == "pointwise" else []
    if len(run) > 1:
        runs.append(run)
    return [r for r in runs if _sections_saving(r, cost.hardware) > 0]


def _sections_saving(run: list[Kernel], hw: Hardware) -> float:
    """Seconds one launch of ``run`` saves over ``len(run)`` launches: the cost model's per-kernel launch
    time, once per kernel merged (the bytes moved are the same either way)."""
    return (len(run) - 1) * hw.launch_overhead


def _merge_sections(graph: Graph, facts: GraphFacts, steps: list[Step], dg: nx.DiGraph,
                    cost: RooflineCost) -> tuple[list[Step], nx.DiGraph]:
    """Replace each run of ``_sections`` by one ``"sections"`` kernel; the step graph contracted to match."""
    order = _schedule(graph, facts, steps, dg)
    index = {id(s): i for i, s in enumerate(steps)}
    runs = _sections(order, dg, index, cost)
    if not runs:
        return steps, dg
    merged_into: dict[int, Kernel] = {}
    for run in runs:
        h = _horizontal_kernel(run)
        for k in run:
            merged_into[id(k)] = h
    new_steps: list[Step] = []
    for s in steps:
        h = merged_into.get(id(s), s)  # type: ignore[arg-type]
        if all(h is not x for x in new_steps):
            new_steps.append(h)
    new_index = {id(s): i for i, s in enumerate(new_steps)}
    new_dg = nx.DiGraph()
    new_dg.add_nodes_from(range(len(new_steps)))
    for a, b in dg.edges:
        na, nb = new_index[id(merged_into.get(id(steps[a]), steps[a]))], \
            new_index[id(merged_into.get(id(steps[b]), steps[b]))]
        if na != nb:
            new_dg.add_edge(na, nb)
    return new_steps, new_dg


def _horizontal_kernel(sections: list[Kernel]) -> Kernel:
    members = [m for k in sections for m in k.members]
    inputs: list[Value] = []
    for k in sections:
        inputs += [v for v in k.inputs if all(v is not x for x in inputs)]
    name = "_horizontal_" + "_".join(_op_names(members)[:4]) + "_0"
    return Kernel(name, "sections", members, (), [v for k in sections for v in k.outputs], inputs,
                  [n for k in sections for n in k.views], [n for k in sections for n in k.sinks], list(sections))
