"""The reference backend: interprets an IR graph with each op's torch reference implementation.

It runs on any device (the device of the first input or parameter) and is the correctness oracle
every other backend and every pass is tested against.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import sympy
import torch

from membound.ir.graph import Graph, Value
from membound.ir.ops import get_op
from membound.ir.types import concretize, eval_dim


class ShapeMismatchError(ValueError):
    """The tensors given do not fit the graph's input types."""


def _has_expr(v: Any) -> bool:
    if isinstance(v, sympy.Expr):
        return True
    if isinstance(v, tuple):
        return any(_has_expr(x) for x in v)
    if isinstance(v, dict):
        return any(_has_expr(x) for x in v.values())
    return False


def bind_symbols(values: Sequence[Value], tensors: Sequence[torch.Tensor],
                 bindings: Optional[dict[sympy.Symbol, int]] = None, what: str = "input") -> dict[sympy.Symbol, int]:
    """Bind the graph's dim symbols from actual tensor shapes, checking every dim is consistent."""
    bindings = dict(bindings or {})
    if len(values) != len(tensors):
        raise ShapeMismatchError(f"graph takes {len(values)} {what}s, got {len(tensors)}")
    pending = []
    for v, t in zip(values, tensors):
        if not isinstance(t, torch.Tensor):
            raise ShapeMismatchError(f"{what} %{v.name} must be a tensor, got {type(t).__name__}")
        if t.dim() != v.rank:
            raise ShapeMismatchError(f"{what} %{v.name}: expected rank {v.rank} ({v.type}), got shape {tuple(t.shape)}")
        if t.dtype != v.dtype:
            raise ShapeMismatchError(f"{what} %{v.name}: expected {v.type}, got dtype {t.dtype}")
        for d, n in zip(v.shape, t.shape):
            if isinstance(d, sympy.Symbol):
                if bindings.setdefault(d, int(n)) != int(n):
                    raise ShapeMismatchError(f"{what} %{v.name}: dim {d} is {bindings[d]} elsewhere but {n} here")
            else:
                pending.append((v, d, int(n)))
    for v, d, n in pending:
        free = [s for s in d.free_symbols if s not in bindings]
        if len(free) == 1:
            sol = [x for x in sympy.solve(sympy.Eq(d, n), free[0]) if x.is_integer and x > 0]
            if sol:
                bindings[free[0]] = int(sol[0])
        if eval_dim(d, bindings) != n:
            raise ShapeMismatchError(f"{what} %{v.name}: dim {d} should be {eval_dim(d, bindings)}, got {n}")
    return bindings


class ReferenceExecutable:
    """A graph prepared for repeated interpretation: op lookups and attr analysis done once."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._slot: dict[int, int] = {}
        for v in graph.values():
            self._slot[id(v)] = len(self._slot)
        bound = set()
        for v in graph.inputs:
            bound |= v.type.free_symbols()
        self._steps: list[_Step] = []
        for n in graph.nodes:
            # results with symbols no input binds (data-dependent sizes) teach the bindings at run time
            learns = [r for r in n.results if r.type.free_symbols() - bound]
            for r in learns:
                bound |= r.type.free_symbols()
            self._steps.append(_Step(get_op(n.op).reference, [self._slot[id(v)] for v in n.inputs], n.attrs,
                                     _has_expr(n.attrs), [self._slot[id(r)] for r in n.results], learns,
                                     not n.inputs))
        self._outputs = [self._slot[id(v)] for v in graph.outputs]
        self._attr_cache: dict[tuple[int, tuple[tuple[sympy.Symbol, int], ...]], dict[str, Any]] = {}

    def _attrs(self, index: int, step: "_Step", bindings: dict[sympy.Symbol, int]) -> dict[str, Any]:
        key = (index, tuple(sorted(bindings.items(), key=lambda kv: kv[0].name)))
        attrs = self._attr_cache.get(key)
        if attrs is None:
            attrs = self._attr_cache[key] = concretize(step.attrs, bindings)
        return attrs

    def __call__(self, inputs: Sequence[torch.Tensor], tensors: Optional[dict[str, torch.Tensor]] = None
                 ) -> list[torch.Tensor]:
        g = self.graph
        tensors = g.tensors if tensors is None else tensors
        env: list[Any] = [None] * len(self._slot)
        bindings = bind_symbols(g.inputs, list(inputs))
        for v, t in zip(g.inputs, inputs):
            env[self._slot[id(v)]] = t
        for v in list(g.params) + list(g.state):
            try:
                env[self._slot[id(v)]] = tensors[v.name]
            except KeyError:
                raise ValueError(f"no tensor bound for {v.kind} %{v.name}; pass tensors= or build the graph "
                                 f"from a model") from None
        device = inputs[0].device if inputs else (next(iter(tensors.values())).device if tensors else None)
        for index, step in enumerate(self._steps):
            attrs = self._attrs(index, step, bindings) if step.has_expr else step.attrs
            args = [env[i] for i in step.inputs]
            if step.creates and device is not None:
                with torch.device(device):  # factory ops (arange, full) build on the graph's device
                    res = step.ref(*args, **attrs)
            else:
                res = step.ref(*args, **attrs)
            if len(step.outputs) == 1:
                env[step.outputs[0]] = res
            else:
                for i, r in zip(step.outputs, res):
                    env[i] = r
            for r in step.learns:
                _bind_result(r, env[self._slot[id(r)]], bindings)
        return [env[i] for i in self._outputs]


class _Step:
    __slots__ = ("ref", "inputs", "attrs", "has_expr", "outputs", "learns", "creates")

    def __init__(self, ref: Callable[..., Any], inputs: list[int], attrs: dict[str, Any], has_expr: bool,
                 outputs: list[int], learns: list[Value], creates: bool) -> None:
        self.ref, self.inputs, self.attrs, self.has_expr = ref, inputs, attrs, has_expr
        self.outputs, self.learns, self.creates = outputs, learns, creates


def _bind_result(v: Value, t: torch.Tensor, bindings: dict[sympy.Symbol, int]) -> None:
    # data-dependent sizes (unbacked symbols) are learned from the tensors that produce them
    for d, n in zip(v.shape, t.shape):
        if isinstance(d, sympy.Symbol) and d not in bindings:
            bindings[d] = int(n)


def run_graph(graph: Graph, inputs: Sequence[torch.Tensor], tensors: Optional[dict[str, torch.Tensor]] = None
              ) -> list[torch.Tensor]:
    """Interpret ``graph`` on ``inputs``; params and state come from ``graph.tensors`` unless given."""
    return ReferenceExecutable(graph)(inputs, tensors)
