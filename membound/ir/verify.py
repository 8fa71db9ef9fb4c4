"""The verifier: SSA dominance, types agree with each op's type rule, no dangling values.

Run after every pass in tests and debug mode (``PassManager(verify=True)``).
"""

from __future__ import annotations

from membound.ir.graph import Graph, IRError


class VerificationError(IRError):
    pass


class _Where:
    """``@graph, node i: <the node printed>``, printed only when an error message needs it."""

    def __init__(self, graph: str, index: int, node: object, fmt: object) -> None:
        self.graph, self.index, self.node, self.fmt = graph, index, node, fmt

    def __format__(self, spec: str) -> str:
        return f"@{self.graph}, node {self.index}: {self.fmt(self.node)}"  # type: ignore[operator]

    __str__ = __repr__ = lambda self: format(self)  # noqa: E731


def verify(g: Graph) -> None:
    """Raise ``VerificationError`` naming the first offending node, else return None."""
    from membound.ir.ops import get_op
    from membound.ir.printer import format_node

    defined: set[int] = set()
    names: set[str] = set()
    for v in list(g.inputs) + list(g.params) + list(g.state):
        if v.name in names:
            raise VerificationError(f"@{g.name}: value name %{v.name} is declared twice")
        names.add(v.name)
        defined.add(id(v))
    for kind, vals in (("input", g.inputs), ("param", g.params), ("state", g.state)):
        for v in vals:
            if v.kind != kind:
                raise VerificationError(f"@{g.name}: %{v.name} is listed as {kind} but has kind {v.kind}")
    in_graph = {id(n) for n in g.nodes}
    for i, n in enumerate(g.nodes):
        where = _Where(g.name, i, n, format_node)
        if n.graph is not g:
            raise VerificationError(f"{where}: node is not linked to this graph")
        try:
            opdef = get_op(n.op)
        except KeyError as e:
            raise VerificationError(f"{where}: {e}") from None
        for v in n.inputs:
            if id(v) not in defined:
                origin = "a node not in this graph" if v.producer is not None and id(v.producer) not in in_graph \
                    else "later in the graph (dominance violated)"
                raise VerificationError(f"{where}: input %{v.name} is not defined before use; it comes from {origin}")
            if n not in v.users:
                raise VerificationError(f"{where}: use-list of %{v.name} is missing this node")
        try:
            attrs = opdef.normalize_attrs(n.attrs)
        except TypeError as e:
            raise VerificationError(f"{where}: {e}") from None
        if attrs != n.attrs:
            raise VerificationError(f"{where}: attributes are not normalised (expected {attrs})")
        if not opdef.extra.get("infer_from_capture", False):
            try:
                expected = opdef.infer_types([v.type for v in n.inputs], n.attrs)
            except (TypeError, ValueError, IndexError) as e:
                raise VerificationError(f"{where}: type rule rejects the inputs: {e}") from None
            got = [r.type for r in n.results]
            if len(expected) != len(got) or not all(a.equivalent(b) for a, b in zip(expected, got)):
                raise VerificationError(f"{where}: result types {got} disagree with the type rule {expected}")
        for r in n.results:
            if r.producer is not n:
                raise VerificationError(f"{where}: result %{r.name} does not point back to its node")
            if r.name in names:
                raise VerificationError(f"{where}: value name %{r.name} is defined twice")
            names.add(r.name)
            defined.add(id(r))
            for u in r.users:
                if id(u) not in in_graph:
                    raise VerificationError(f"{where}: %{r.name} is used by a node outside the graph ({u.op})")
    for v in g.outputs:
        if id(v) not in defined:
            raise VerificationError(f"@{g.name}: output %{v.name} is not defined in the graph")
