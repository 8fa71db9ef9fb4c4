"""Declarative rewrite rules: a pattern (a tree of op names, captures and predicates) plus a callback.

    RULES = [
        # reshape(reshape(x)) -> reshape(x)
        Rule(Pat("reshape", Pat("reshape", Any_("x")), name="out"), reshape_of_reshape),
        # mul(x, 1) -> x            (commutative: also matches mul(1, x))
        Rule(Pat("mul", Any_("x"), Const(1)), identity_if_same_type),
    ]
    changed = rewrite_to_fixpoint(graph, RULES)

Patterns match *values*. ``Pat(op, *inputs)`` matches a value produced by ``op`` (or any op of a
tuple) whose inputs match ``inputs`` exactly (a trailing ``...`` accepts any further inputs);
``add``/``mul`` and the other ops with the ``commutative`` trait also match with their operands
swapped. An op name that no op is declared under raises when the pattern is built.
``Any_(name)`` matches any value; ``Opt(op, inner)`` matches ``op(inner)`` or ``inner`` alone;
``Alt(a, b)`` matches either. A capture name used twice must bind the same value both times, which
is how ``mul(x, rsqrt(mean(pow(x, 2))))`` says "the same x". Matching backtracks over every choice.

A callback receives a :class:`Match` (``m["x"]``, ``m.root``, ``m.builder``) and returns the value
that replaces the matched one, or None to leave it alone. New nodes are built with
``m.builder.call(op, *inputs, **attrs)``, which places them just before the matched node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence, Union

from membound.ir import Graph, Node, Value, get_op, has_op
from membound.ir.graph import SOURCE_KEYS
from membound.ir.types import TensorType

Captures = dict[str, Value]


class RewriteError(RuntimeError):
    """A rule misbehaved (wrong replacement type) or the rules do not reach a fixpoint."""


def _bind(caps: Captures, name: Optional[str], v: Value) -> Optional[Captures]:
    if name is None:
        return caps
    old = caps.get(name)
    if old is None:
        return {**caps, name: v}
    return caps if old is v else None


def is_2d_param(v: Value) -> bool:
    """A parameter matrix: a weight known at compile time (a predicate for ``Any_``)."""
    return v.kind == "param" and v.rank == 2


def static_int(d: Any) -> Optional[int]:
    """A dim as an int when it is a literal (an int or a sympy Integer), else None (symbolic)."""
    return int(d) if isinstance(d, int) or getattr(d, "is_Integer", False) else None


def heads_view(t: Value) -> Optional[tuple[Value, list[Node]]]:
    """``(part, [transpose, reshape])`` when ``t = transpose(reshape(part, [B, S, H, D]), 1, 2)`` (the heads of a
    projection's columns ``part`` ``[B, S, H * D]``), the reshape's result and ``part`` read once; else None."""
    tr = t.producer
    if tr is None or tr.op != "transpose" or {tr.attrs.get("dim0") % 4, tr.attrs.get("dim1") % 4} != {1, 2}:
        return None
    rs = tr.inputs[0].producer
    if rs is None or rs.op != "reshape" or not is_single_use(tr.inputs[0]) or rs.results[0].rank != 4:
        return None
    part = rs.inputs[0]
    if part.rank != 3 or part.shape[:2] != rs.results[0].shape[:2] or not is_single_use(part):
        return None
    return part, [tr, rs]


def is_single_use(v: Value) -> bool:
    """True when exactly one node reads ``v`` (once or several times) and it is not a graph output."""
    graph = v.producer.graph if v.producer is not None else None
    if graph is not None and any(o is v for o in graph.outputs):
        return False
    return len({id(u) for u in v.users}) == 1


class Pattern:
    """Base class: ``matches(value, captures)`` yields every extended capture dict that matches."""

    def matches(self, v: Value, caps: Captures) -> Iterator[Captures]:
        raise NotImplementedError

    def root_ops(self) -> Optional[frozenset[str]]:
        """The ops a matched root value can be produced by (None: any), for indexing rules by op."""
        return None


class Any_(Pattern):
    """Any value, optionally captured as ``name`` and filtered by ``predicate(value)``."""

    def __init__(self, name: Optional[str] = None, predicate: Optional[Callable[[Value], bool]] = None) -> None:
        self.name = name
        self.predicate = predicate

    def matches(self, v: Value, caps: Captures) -> Iterator[Captures]:
        if self.predicate is not None and not self.predicate(v):
            return
        out = _bind(caps, self.name, v)
        if out is not None:
            yield out

    def __repr__(self) -> str:
        return f"Any_({self.name!r})"


AttrCheck = Union[Any, Callable[[Any], bool]]


class Pat(Pattern):
    """A value produced by ``op`` (a name or a tuple of names) whose inputs match ``inputs``.

    ``attrs``: attribute name -> required value, or a predicate on the attribute value.
    ``predicate``: a test on the producing node. ``one_use``: the value has a single user (use it when
    the rewrite would otherwise duplicate work that another user keeps alive). A trailing ``...`` in
    ``inputs`` accepts any further inputs.
    """

    def __init__(self, op: Union[str, tuple[str, ...]], *inputs: Any, name: Optional[str] = None,
                 attrs: Optional[dict[str, AttrCheck]] = None, predicate: Optional[Callable[[Node], bool]] = None,
                 one_use: bool = False, commutative: Optional[bool] = None) -> None:
        self.ops = frozenset((op,) if isinstance(op, str) else op)
        unknown = sorted(o for o in self.ops if not isinstance(o, str) or not has_op(o))
        if unknown or not self.ops:
            raise ValueError(f"Pat({op!r}): no IR op is declared as {unknown or 'an empty tuple'}; "
                             f"a pattern over it would never match (see membound.ir.all_ops())")
        self.open = bool(inputs) and inputs[-1] is Ellipsis
        self.inputs: tuple[Pattern, ...] = tuple(inputs[:-1] if self.open else inputs)
        for p in self.inputs:
            if not isinstance(p, Pattern):
                raise TypeError(f"Pat({sorted(self.ops)}): input patterns must be Pattern objects, got {p!r}")
        self.name = name
        self.attrs = dict(attrs or {})
        self.predicate = predicate
        self.one_use = one_use
        if commutative is None:
            commutative = (len(self.inputs) == 2 and not self.open
                           and all(get_op(o).commutative for o in self.ops))
        self.commutative = commutative

    def root_ops(self) -> Optional[frozenset[str]]:
        return self.ops

    def _attrs_ok(self, node: Node) -> bool:
        for key, want in self.attrs.items():
            if key not in node.attrs:
                return False
            have = node.attrs[key]
            if callable(want) and not isinstance(want, type):
                if not want(have):
                    return False
            elif have != want:
                return False
        return True

    def matches(self, v: Value, caps: Captures) -> Iterator[Captures]:
        node = v.producer
        if node is None or node.op not in self.ops:
            return
        if self.one_use and not is_single_use(v):
            return
        if not self._attrs_ok(node) or (self.predicate is not None and not self.predicate(node)):
            return
        bound = _bind(caps, self.name, v)
        if bound is None:
            return
        n = len(self.inputs)
        if len(node.inputs) < n or (not self.open and len(node.inputs) != n):
            return
        orders = [list(node.inputs[:n])]
        if self.commutative and node.inputs[0] is not node.inputs[1]:
            orders.append([node.inputs[1], node.inputs[0]])
        for values in orders:
            yield from _match_all(self.inputs, values, bound)

    def __repr__(self) -> str:
        ops = next(iter(self.ops)) if len(self.ops) == 1 else tuple(sorted(self.ops))
        return f"Pat({ops!r}, {', '.join(map(repr, self.inputs))})"


def _match_all(patterns: Sequence[Pattern], values: Sequence[Value], caps: Captures) -> Iterator[Captures]:
    if not patterns:
        yield caps
        return
    for c in patterns[0].matches(values[0], caps):
        yield from _match_all(patterns[1:], values[1:], c)


class Alt(Pattern):
    """The first alternative that matches (all of them, in order, when backtracking)."""

    def __init__(self, *alternatives: Pattern) -> None:
        self.alternatives = alternatives

    def matches(self, v: Value, caps: Captures) -> Iterator[Captures]:
        for alt in self.alternatives:
            yield from alt.matches(v, caps)

    def root_ops(self) -> Optional[frozenset[str]]:
        out: frozenset[str] = frozenset()
        for alt in self.alternatives:
            ops = alt.root_ops()
            if ops is None:
                return None
            out |= ops
        return out


def Opt(op: str, inner: Pattern, name: Optional[str] = None, attrs: Optional[dict[str, AttrCheck]] = None,
        predicate: Optional[Callable[[Node], bool]] = None) -> Pattern:
    """``op(inner)`` (captured as ``name`` when given) or ``inner`` alone; ``op`` is tried first."""
    return Alt(Pat(op, inner, name=name, attrs=attrs, predicate=predicate), inner)


def Const(value: Union[int, float, bool, Callable[[Any], bool], None] = None, name: Optional[str] = None,
          splat: bool = True) -> Pat:
    """A compile-time scalar: a ``constant`` node (or, with ``splat``, a ``full`` node) with this value.

    ``value`` is a number compared with ``==`` (so ``1`` matches ``1.0`` and ``true``), a predicate on
    the value, or None for any value.
    """
    ops: tuple[str, ...] = ("constant", "full") if splat else ("constant",)
    attrs: dict[str, AttrCheck] = {}
    if value is not None:
        attrs["value"] = value if callable(value) else (lambda have: _scalar_equal(have, value))
    return Pat(ops, name=name, attrs=attrs)


def _scalar_equal(have: Any, want: Any) -> bool:
    return isinstance(have, (bool, int, float)) and have == want


# ---------------------------------------------------------------------------------------------
# rules and matches
# ---------------------------------------------------------------------------------------------
class Builder:
    """Creates nodes just before ``anchor`` (so every captured value is already defined)."""

    def __init__(self, graph: Graph, anchor: Node) -> None:
        self.graph = graph
        self.anchor = anchor
        self.created: list[Node] = []

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.call_multi(op, *inputs, **attrs)[0]

    def call_multi(self, op: str, *inputs: Value, **attrs: Any) -> list[Value]:
        node = self.graph.create_node(op, inputs, attrs)
        # a replacement comes from where the matched node came from (the dump's source comment)
        node.meta.update({k: v for k, v in self.anchor.meta.items() if k in SOURCE_KEYS})
        self.graph.insert_before(self.anchor, node)
        self.created.append(node)
        return list(node.results)


@dataclass
class Match:
    """What a rule's callback sees: the captures, the matched value and its node, a builder."""

    captures: Captures
    value: Value
    builder: Builder
    rule: "Rule"
    notes: Optional[list[str]] = None

    @property
    def root(self) -> Node:
        assert self.value.producer is not None
        return self.value.producer

    @property
    def graph(self) -> Graph:
        return self.builder.graph

    def __getitem__(self, name: str) -> Value:
        return self.captures[name]

    def __contains__(self, name: str) -> bool:
        return name in self.captures

    def get(self, name: str) -> Optional[Value]:
        return self.captures.get(name)

    def note(self, message: str) -> None:
        """Say why the rule declined (collected into the pass log, once per distinct message)."""
        if self.notes is not None:
            line = f"{self.rule.name}: {message}"
            if line not in self.notes:
                self.notes.append(line)


Callback = Callable[[Match], Optional[Value]]


@dataclass
class Rule:
    """``pattern`` plus ``callback(match) -> replacement value or None``; named after the callback."""

    pattern: Pattern
    callback: Callback
    name: str = ""
    ops: Optional[frozenset[str]] = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not self.name:
            self.name = getattr(self.callback, "__name__", "rule").strip("_").replace("_", "-")
        self.ops = self.pattern.root_ops()

    def first_match(self, v: Value) -> Optional[Captures]:
        for caps in self.pattern.matches(v, {}):
            return caps
        return None


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
def erase_if_dead(graph: Graph, node: Node) -> int:
    """Erase ``node`` if nothing uses it, then its producers that became dead; returns how many went."""
    erased = 0
    work = [node]
    while work:
        n = work.pop()
        if n.graph is not graph or get_op(n.op).side_effects:
            continue
        outs = {id(o) for o in graph.outputs}
        if any(r.users or id(r) in outs for r in n.results):
            continue
        producers = [v.producer for v in n.inputs if v.producer is not None]
        graph.erase_node(n)
        erased += 1
        work.extend(producers)
    return erased


def _fingerprint(graph: Graph) -> int:
    """A hash of the graph's structure up to value renaming (for detecting rewrite loops)."""
    ids: dict[int, Any] = {}
    for kind, vals in (("i", graph.inputs), ("p", graph.params), ("s", graph.state)):
        for i, v in enumerate(vals):
            ids[id(v)] = (kind, i)
    rows: list[Any] = []
    for i, n in enumerate(graph.nodes):
        attrs = tuple(sorted((k, repr(a)) for k, a in n.attrs.items()))
        rows.append((n.op, attrs, tuple(ids.get(id(v)) for v in n.inputs), tuple(str(r.type) for r in n.results)))
        for j, r in enumerate(n.results):
            ids[id(r)] = (i, j)
    rows.append(tuple(ids.get(id(v)) for v in graph.outputs))
    return hash(tuple(rows))


def _check_replacement(rule: Rule, old: Value, new: Value) -> None:
    if not isinstance(new, Value):
        raise RewriteError(f"rule {rule.name!r} returned {new!r}; a callback returns a Value or None")
    if not new.type.equivalent(old.type):
        raise RewriteError(f"rule {rule.name!r} would replace %{old.name}: {old.type} with %{new.name}: {new.type}; "
                           f"a rewrite must keep the type (cast or reshape explicitly, or return None)")


def _apply_once(graph: Graph, node: Node, rules: Sequence[Rule], notes: Optional[list[str]]) -> Optional[Rule]:
    """Try every rule on each result of ``node``; apply the first that rewrites. Returns that rule."""
    for v in node.results:
        for rule in rules:
            if rule.ops is not None and node.op not in rule.ops:
                continue
            caps = rule.first_match(v)
            if caps is None:
                continue
            builder = Builder(graph, node)
            new = rule.callback(Match(caps, v, builder, rule, notes))
            if new is None or new is v:
                for created in reversed(builder.created):
                    erase_if_dead(graph, created)
                continue
            _check_replacement(rule, v, new)
            graph.replace_all_uses(v, new)
            for created in reversed(builder.created):
                if created is not new.producer:
                    erase_if_dead(graph, created)
            erase_if_dead(graph, node)
            return rule
    return None


def rewrite_to_fixpoint(graph: Graph, rules: Sequence[Rule], max_iterations: int = 64,
                        notes: Optional[list[str]] = None, counts: Optional[dict[str, int]] = None) -> bool:
    """Apply ``rules`` over the graph, sweep after sweep in topological order, until none fires.

    Each replaced value's uses move to the replacement; the replaced node and the nodes that only it
    used are erased. Raises :class:`RewriteError` naming the rules involved when a sweep brings the
    graph back to a state seen before (two rules undoing each other) or after ``max_iterations``
    sweeps. ``notes`` collects callbacks' reasons for declining; ``counts`` how often each rule fired.
    """
    seen: dict[int, int] = {_fingerprint(graph): 0}
    fired_per_sweep: list[list[str]] = [[]]
    changed = False
    for sweep in range(1, max_iterations + 1):
        fired: list[str] = []
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue  # erased by an earlier rewrite in this sweep
            rule = _apply_once(graph, node, rules, notes)
            if rule is not None:
                fired.append(rule.name)
                if counts is not None:
                    counts[rule.name] = counts.get(rule.name, 0) + 1
        if not fired:
            return changed
        changed = True
        fired_per_sweep.append(fired)
        state = _fingerprint(graph)
        if state in seen:
            involved = sorted({r for s in fired_per_sweep[seen[state] + 1:] for r in s})
            raise RewriteError(f"rewrite loop: after sweep {sweep} the graph is the same as after sweep "
                               f"{seen[state]}; rules involved: {involved}")
        seen[state] = sweep
    last = sorted(set(fired_per_sweep[-1]))
    raise RewriteError(f"no fixpoint after {max_iterations} sweeps; rules still firing: {last}")


def same_type(a: TensorType, b: TensorType) -> bool:
    """Same dtype and (provably) the same shape."""
    return a.equivalent(b)
