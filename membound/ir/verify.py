"""The verifier: SSA dominance, types agree with each op's type rule, no dangling values.

Run after every pass in tests and debug mode (``PassManager(verify=True)``).

Dims are integers >= 0 or integer expressions over the size symbols: a negative, fractional or
infinite dim (``-3``, ``2.5``, ``oo``, ``nan``) is rejected wherever it appears. A graph has at least
one output, and every output is a value defined in it (an input, param, state or node result).
The same value may be returned twice (a model may return one tensor twice, and CSE may merge two
equal results); what a pass may not do is change how many outputs there are or their types: the
``PassManager`` compares that signature before and after each pass (``changes_signature = True`` on
a pass, e.g. insert-kv-cache, opts out).
"""

from __future__ import annotations

import sympy

from membound.ir.graph import Graph, IRError, Value


class VerificationError(IRError):
    pass


class _Where:
    """``@graph, node i: <the node printed>``, printed only when an error message needs it."""

    def __init__(self, graph: str, index: int, node: object, fmt: object) -> None:
        self.graph, self.index, self.node, self.fmt = graph, index, node, fmt

    def __format__(self, spec: str) -> str:
        return f"@{self.graph}, node {self.index}: {self.fmt(self.node)}"  # type: ignore[operator]

    __str__ = __repr__ = lambda self: format(self)  # noqa: E731


def dim_problem(d: object) -> str:
    """Why ``d`` is not a valid dim ("" when it is one)."""
    if isinstance(d, bool) or not isinstance(d, (int, sympy.Expr)):
        return f"{d!r} ({type(d).__name__}) is not a dim"
    e = sympy.sympify(d)
    if e.has(sympy.nan, sympy.oo, -sympy.oo, sympy.zoo) or e.is_finite is False:
        return f"{d} is not finite"
    if any(isinstance(a, sympy.Float) for a in e.atoms(sympy.Number)) or e.is_integer is False:
        return f"{d} is not an integer"
    if e.is_negative:
        return f"{d} is negative"
    if not all(isinstance(s, sympy.Symbol) and s.is_integer for s in e.free_symbols):
        return f"{d} uses a symbol that is not an integer size"
    return ""


def _check_type(g: Graph, v: Value, where: object) -> None:
    for k, d in enumerate(v.type.shape):
        why = dim_problem(d)
        if why:
            raise VerificationError(f"{where}: dim {k} of %{v.name} ({v.type}): {why}; dims are integers >= 0 or "
                                    f"integer expressions over size symbols")


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
        _check_type(g, v, f"@{g.name}")
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
            _check_type(g, r, where)
            for u in r.users:
                if id(u) not in in_graph:
                    raise VerificationError(f"{where}: %{r.name} is used by a node outside the graph ({u.op})")
    if not g.outputs:
        raise VerificationError(f"@{g.name}: the graph has no outputs (a graph returns at least one value)")
    for i, v in enumerate(g.outputs):
        if not isinstance(v, Value):
            raise VerificationError(f"@{g.name}: output {i} is {type(v).__name__}, not a value of the graph")
        if id(v) not in defined:
            raise VerificationError(f"@{g.name}: output %{v.name} is not defined in the graph (output number {i})")
