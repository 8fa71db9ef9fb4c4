"""What the partitioner's concerns share: the steps it makes (``Kernel``, ``Call``), the reasons it
gives when it does not fuse (``Refusal``), and facts about the graph (``GraphFacts``: each node's class
from the lowering registry, view chains, real consumers, and the order state writes impose).

The partitioner is split by concern, each reading these:

    lowering.classify     what each node is (pointwise, row, view, source, sink, call)
    legality.py           whether members can form one kernel, and why not
    profitability.py      whether the cost model says fusing pays, and why not
    schedule.py           the order of the steps, and horizontal fusion
    partition.py          the greedy driver over them
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence, Union

import sympy

from membound.backends.triton.lowering import classify
from membound.ir.graph import Graph, Node, Value
from membound.ir.ops import get_op
from membound.ir.types import dims_equal

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


@dataclass(frozen=True)
class Refusal:
    """A fusion the partitioner did not make, and why (shown by ``Partition.describe``, like Inductor's
    ``WhyNoFuse``). ``node`` is the node that stayed out; ``into`` the members of the kernel it would
    have joined (or the kernel it would have shared a launch with); ``concern`` is ``"legality"``,
    ``"profitability"`` or ``"schedule"``."""

    node: Node
    into: tuple[Node, ...]
    concern: str
    reason: str

    def __str__(self) -> str:
        into = ", ".join(f"%{m.results[0].name}" for m in self.into[:4]) + (", ..." if len(self.into) > 4 else "")
        return f"not fused: %{self.node.results[0].name} = {self.node.op} with [{into}] ({self.concern}): {self.reason}"


def space_shape(node: Node) -> Shape:
    """The iteration space a kernel member needs: its result's shape, a sink's written values' shape."""
    return tuple(node.inputs[1].shape) if get_op(node.op).sink else tuple(node.results[0].shape)


def row_space(node: Node) -> tuple[Shape, sympy.Expr]:
    """(row shape, row length) of a row reduction."""
    x = node.inputs[0]
    return tuple(x.shape[:-1]), x.shape[-1]


def shapes_equal(a: Sequence[sympy.Expr], b: Sequence[sympy.Expr]) -> bool:
    return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))


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
