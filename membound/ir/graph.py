"""The IR graph: typed SSA values, nodes in topological order, inputs, parameters, state, outputs.

```
graph @tiny(%x: f32[B, 8]) params(%w: f32[4, 8]) {
  %0 = linear(%x, %w) : f32[B, 4]
  %1 = relu(%0) : f32[B, 4]
  return %1
}
```
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import sympy
import torch

from membound.ir.types import TensorType


class IRError(Exception):
    """A malformed graph or an invalid graph edit."""


class Value:
    """One SSA value. ``kind`` is ``input``, ``param``, ``state`` or ``node`` (a node's result)."""

    __slots__ = ("name", "type", "kind", "producer", "index", "users")

    def __init__(self, name: str, type: TensorType, kind: str, producer: Optional["Node"] = None,
                 index: int = 0) -> None:
        self.name = name
        self.type = type
        self.kind = kind
        self.producer = producer
        self.index = index  # result index within the producer
        self.users: list[Node] = []

    @property
    def dtype(self) -> torch.dtype:
        return self.type.dtype

    @property
    def shape(self) -> tuple[sympy.Expr, ...]:
        return self.type.shape

    @property
    def rank(self) -> int:
        return self.type.rank

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    """``%r = op(%a, %b) {attr=...} : type``. Multi-result ops (topk, sort, split) have several results."""

    __slots__ = ("op", "inputs", "attrs", "results", "graph", "meta")

    def __init__(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any], results: list[Value]) -> None:
        self.op = op
        self.inputs = list(inputs)
        self.attrs = dict(attrs)
        self.results = results
        self.graph: Optional[Graph] = None
        # free-form annotations that never affect semantics: source location, module path
        self.meta: dict[str, Any] = {}

    @property
    def result(self) -> Value:
        if len(self.results) != 1:
            raise IRError(f"{self.op} has {len(self.results)} results; use .results")
        return self.results[0]

    @property
    def type(self) -> TensorType:
        return self.result.type

    def replace_input(self, old: Value, new: Value) -> None:
        for i, v in enumerate(self.inputs):
            if v is old:
                self.inputs[i] = new
                old.users.remove(self)
                new.users.append(self)

    def __repr__(self) -> str:
        from membound.ir.printer import format_node
        return format_node(self)


SOURCE_KEYS = ("module", "source", "loc")  # Node.meta entries that say where a node came from


def _inherit_source(old: Node, new: Node, depth: int = 3) -> None:
    """A node a pass made in place of ``old`` comes from where ``old`` came from: so do the new nodes that
    feed it (a merged linear feeding the split that replaced three linears), up to ``depth`` steps back."""
    where = {k: v for k, v in old.meta.items() if k in SOURCE_KEYS}
    todo = [(new, depth)]
    while where and todo:
        node, left = todo.pop()
        if any(k in node.meta for k in SOURCE_KEYS):
            continue
        node.meta.update(where)
        if left > 1:
            todo += [(v.producer, left - 1) for v in node.inputs if v.producer is not None]


@dataclass
class Graph:
    """A function in SSA form. Parameters are held by reference in ``param_values`` (never copied)."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    params: list[Value] = field(default_factory=list)
    state: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    # name -> tensor for params and state buffers (by reference)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    # facts passes record for the runtime (e.g. the KV-cache layout); never affects semantics
    meta: dict[str, Any] = field(default_factory=dict)
    _names: set[str] = field(default_factory=set, repr=False)
    _counter: Iterator[int] = field(default_factory=itertools.count, repr=False)

    # ---- construction -------------------------------------------------------------------------
    def _claim(self, name: Optional[str]) -> str:
        if name is None:
            while True:
                name = str(next(self._counter))
                if name not in self._names:
                    break
        elif name in self._names:
            raise IRError(f"value name %{name} already used in @{self.name}")
        self._names.add(name)
        return name

    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(self._claim(name), type, "input")
        self.inputs.append(v)
        return v

    def add_param(self, name: str, type: TensorType, tensor: Optional[torch.Tensor] = None) -> Value:
        v = Value(self._claim(name), type, "param")
        self.params.append(v)
        if tensor is not None:
            self.tensors[v.name] = tensor
        return v

    def add_state(self, name: str, type: TensorType, tensor: Optional[torch.Tensor] = None) -> Value:
        v = Value(self._claim(name), type, "state")
        self.state.append(v)
        if tensor is not None:
            self.tensors[v.name] = tensor
        return v

    def create_node(self, op: str, inputs: Sequence[Value], attrs: Optional[dict[str, Any]] = None,
                    types: Optional[Sequence[TensorType]] = None, names: Optional[Sequence[Optional[str]]] = None
                    ) -> Node:
        """Make a node (not yet placed). Types are inferred from the op declaration when not given."""
        from membound.ir.ops import get_op

        opdef = get_op(op)
        attrs = opdef.normalize_attrs(dict(attrs or {}))
        if types is None:
            types = opdef.infer_types([v.type for v in inputs], attrs)
        names = list(names) if names is not None else [None] * len(types)
        node = Node(op, inputs, attrs, [])
        node.results = [Value(self._claim(n), t, "node", node, i) for i, (t, n) in enumerate(zip(types, names))]
        return node

    def _link(self, node: Node) -> None:
        node.graph = self
        for v in node.inputs:
            v.users.append(node)

    def append(self, node: Node) -> Node:
        self._link(node)
        self.nodes.append(node)
        return node

    def insert_before(self, anchor: Node, node: Node) -> Node:
        self._link(node)
        self.nodes.insert(self.nodes.index(anchor), node)
        return node

    def insert_after(self, anchor: Node, node: Node) -> Node:
        self._link(node)
        self.nodes.insert(self.nodes.index(anchor) + 1, node)
        return node

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Append ``op(*inputs) {attrs}`` and return its single result (builder convenience)."""
        node = self.append(self.create_node(op, inputs, attrs))
        return node.result

    def call_multi(self, op: str, *inputs: Value, **attrs: Any) -> list[Value]:
        node = self.append(self.create_node(op, inputs, attrs))
        return list(node.results)

    def set_outputs(self, values: Iterable[Value]) -> None:
        self.outputs = list(values)

    # ---- mutation -----------------------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        if old is new:
            return
        if old.producer is not None and new.producer is not None:
            _inherit_source(old.producer, new.producer)
        for user in list(old.users):
            user.replace_input(old, new)
        self.outputs = [new if v is old else v for v in self.outputs]

    def erase_node(self, node: Node) -> None:
        for r in node.results:
            if r.users or any(o is r for o in self.outputs):
                raise IRError(f"cannot erase {node.op} (%{r.name}): it still has users")
        for v in node.inputs:
            if node in v.users:
                v.users.remove(node)
        self.nodes.remove(node)
        node.graph = None
        for r in node.results:
            self._names.discard(r.name)

    def remove_unused_params(self) -> bool:
        used = {id(v) for n in self.nodes for v in n.inputs} | {id(v) for v in self.outputs}
        keep = [p for p in self.params if id(p) in used]
        changed = len(keep) != len(self.params)
        for p in self.params:
            if id(p) not in used:
                self.tensors.pop(p.name, None)
                self._names.discard(p.name)
        self.params = keep
        return changed

    # ---- queries ------------------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.params
        yield from self.state
        for n in self.nodes:
            yield from n.results

    def value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(f"no value %{name} in @{self.name}")

    def symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for v in self.values():
            out |= v.type.free_symbols()
        return out

    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]

    def count(self, op: str) -> int:
        return sum(1 for n in self.nodes if n.op == op)

    def __str__(self) -> str:
        from membound.ir.printer import print_graph
        return print_graph(self, sources=True)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.nodes)} nodes>"

    def copy(self) -> "Graph":
        """A structural copy sharing parameter tensors (by reference)."""
        return self._rebuilt(lambda t: t, lambda a: a)

    def specialized(self, bindings: dict[sympy.Symbol, Any]) -> "Graph":
        """A copy with some dim symbols replaced (``{S: 1}`` turns a step graph into a decode graph)."""
        from membound.ir.types import as_dim

        repl = {k: as_dim(v) for k, v in bindings.items()}

        def sub_type(t: TensorType) -> TensorType:
            return TensorType(t.dtype, [sympy.simplify(d.xreplace(repl)) for d in t.shape])

        def sub_attr(a: Any) -> Any:
            if isinstance(a, sympy.Expr):
                e = sympy.simplify(a.xreplace(repl))
                return int(e) if e.is_Integer else e
            if isinstance(a, tuple):
                return tuple(sub_attr(x) for x in a)
            return a

        return self._rebuilt(sub_type, sub_attr)

    def _rebuilt(self, sub_type: Callable[[TensorType], TensorType], sub_attr: Callable[[Any], Any]) -> "Graph":
        """A structural copy (same value names, parameter tensors shared) with types and attrs mapped."""
        g = Graph(self.name)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, sub_type(v.type))
        for v in self.params:
            vmap[id(v)] = g.add_param(v.name, sub_type(v.type), self.tensors.get(v.name))
        for v in self.state:
            vmap[id(v)] = g.add_state(v.name, sub_type(v.type), self.tensors.get(v.name))
        for n in self.nodes:
            new = g.create_node(n.op, [vmap[id(v)] for v in n.inputs], {k: sub_attr(a) for k, a in n.attrs.items()},
                                [sub_type(r.type) for r in n.results], [r.name for r in n.results])
            new.meta = dict(n.meta)
            g.append(new)
            for a, b in zip(n.results, new.results):
                vmap[id(a)] = b
        g.outputs = [vmap[id(v)] for v in self.outputs]
        g.meta = dict(self.meta)
        return g
