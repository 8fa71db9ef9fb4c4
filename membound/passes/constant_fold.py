"""constant-fold: evaluate at compile time the nodes whose inputs are all compile-time constants.

```
// before
graph @f(%x: f32[B, 4]) {
  %0 = constant() {value=2.0, dtype=f32} : f32[]
  %1 = constant() {value=3.0, dtype=f32} : f32[]
  %2 = arange() {start=0, end=4, dtype=f32} : f32[4]
  %3 = mul(%2, %0) : f32[4]
  %4 = mul(%0, %1) : f32[]
  %5 = add(%x, %3) : f32[B, 4]
  %6 = mul(%5, %4) : f32[B, 4]
  return %6
}
// after: [0, 2, 4, 6] is baked into the param const.0, 2 * 3 into a constant
graph @f(%x: f32[B, 4]) params(%const.0: f32[4]) {
  %4 = constant() {value=6.0, dtype=f32} : f32[]
  %5 = add(%x, %const.0) : f32[B, 4]
  %6 = mul(%5, %4) : f32[B, 4]
  return %6
}
```

Compile-time constants are ``constant`` nodes, ``full`` and ``arange`` with static shapes, and the
``const.N`` params this pass creates. A node fires when all its inputs are constants, it has no side
effects, its result is static and no larger than ``max_eval_elements``; it is evaluated with the op's
reference implementation. Only the values that leave the constant region are materialised: a 0-d
result becomes a ``constant`` node, a uniform result a ``full`` node, any other result with at most
``max_elements`` (4096) elements a new param ``const.N`` whose tensor goes into ``graph.tensors``;
larger results are left unfolded (noted in the log). Model params are never folded over: their
tensors may change after compilation. The rule is a size bound, not a cost question: reading a small
baked tensor is never slower than recomputing it, and folding removes launches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import sympy
import torch

from membound.ir import Graph, Node, TensorType, Value, get_op
from membound.passes.manager import PassContext, register_pass
from membound.passes.options import pass_options
from membound.passes.pattern import erase_if_dead

_CONST_PARAM = re.compile(r"const\.\d+")


def is_const_param(graph: Graph, v: Value) -> bool:
    """A ``const.N`` param made by constant folding (the only params that are compile-time constants)."""
    return v.kind == "param" and _CONST_PARAM.fullmatch(v.name) is not None and v.name in graph.tensors


def _has_free_symbols(attr: Any) -> bool:
    if isinstance(attr, sympy.Expr):
        return bool(attr.free_symbols)
    if isinstance(attr, tuple):
        return any(_has_free_symbols(x) for x in attr)
    return False


def _concrete(attr: Any) -> Any:
    if isinstance(attr, sympy.Expr) and attr.is_Integer:
        return int(attr)
    if isinstance(attr, tuple):
        return tuple(_concrete(x) for x in attr)
    return attr


def _python_scalar(t: torch.Tensor) -> Any:
    item = t.item()
    if t.dtype == torch.bool:
        return bool(item)
    if t.dtype.is_floating_point:
        return float(item)
    return int(item)


_SAME_SIZE_INT = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _uniform(t: torch.Tensor) -> bool:
    """All elements bitwise equal (so -0.0 and 0.0 differ, and a NaN fill counts as uniform)."""
    flat = t.reshape(-1)
    if t.dtype.is_floating_point:
        flat = flat.view(_SAME_SIZE_INT[t.element_size()])
    return bool((flat == flat[0]).all())


@dataclass(frozen=True)
class ConstantFoldOptions:
    """``max_elements``: the largest folded tensor kept (as a new param); ``max_eval_elements``: the
    largest result evaluated at all."""

    max_elements: int = 4096
    max_eval_elements: int = 1 << 20

    def __post_init__(self) -> None:
        for name in ("max_elements", "max_eval_elements"):
            if getattr(self, name) < 0:
                raise ValueError(f"option {name}={getattr(self, name)} must be >= 0")


@register_pass("constant-fold")
class ConstantFold:
    """Evaluate constant subgraphs once at compile time (options: :class:`ConstantFoldOptions`)."""

    name = "constant-fold"
    Options = ConstantFoldOptions

    def __init__(self, options: Optional[ConstantFoldOptions] = None, **kwargs: Any) -> None:
        self.options = pass_options(self.name, ConstantFoldOptions, options, kwargs)
        self.max_elements = self.options.max_elements
        self.max_eval_elements = self.options.max_eval_elements

    # ---- evaluation -------------------------------------------------------------------------
    def _evaluable(self, node: Node, known: dict[int, torch.Tensor], ctx: PassContext) -> bool:
        opdef = get_op(node.op)
        if opdef.side_effects or node.op == "torch_call":
            return False
        if not all(id(v) in known for v in node.inputs):
            return False
        if not get_op(node.op).source and not node.inputs:
            return False
        if any(not r.type.is_static for r in node.results) or _has_free_symbols(tuple(node.attrs.values())):
            return False
        size = sum(int(r.type.numel()) for r in node.results)
        if size > self.max_eval_elements:
            ctx.note(f"%{node.results[0].name} ({node.op}) not evaluated: {size} elements > "
                     f"max_eval_elements={self.max_eval_elements}")
            return False
        return True

    def _evaluate(self, node: Node, known: dict[int, torch.Tensor]) -> list[torch.Tensor]:
        attrs = {k: _concrete(a) for k, a in node.attrs.items()}
        with torch.device("cpu"), torch.no_grad():
            out = get_op(node.op).reference(*[known[id(v)] for v in node.inputs], **attrs)
        results = [out] if len(node.results) == 1 else list(out)
        for r, t in zip(node.results, results):
            want = r.type.concrete_shape({})
            if t.dtype != r.dtype or tuple(t.shape) != want:
                raise RuntimeError(f"constant-fold: the reference of {node.op} returned {t.dtype}{list(t.shape)} "
                                   f"for %{r.name}: {r.type}; the op's type rule and reference disagree")
        return results

    # ---- materialisation --------------------------------------------------------------------
    def _materialise(self, graph: Graph, v: Value, t: torch.Tensor, names: set[str], ctx: PassContext
                     ) -> Optional[Value]:
        producer = v.producer
        assert producer is not None
        if t.dim() == 0:
            if producer.op == "constant":
                return None
            node = graph.create_node("constant", [], {"value": _python_scalar(t), "dtype": t.dtype})
            return graph.insert_before(producer, node).result
        if t.numel() > 1 and _uniform(t):
            if producer.op == "full":
                return None
            attrs = {"shape": tuple(t.shape), "value": _python_scalar(t.reshape(-1)[0]), "dtype": t.dtype}
            return graph.insert_before(producer, graph.create_node("full", [], attrs)).result
        if get_op(producer.op).source:
            return None
        if t.numel() > self.max_elements:
            ctx.note(f"%{v.name} ({producer.op}) not folded: {t.numel()} elements > max_elements="
                     f"{self.max_elements}")
            return None
        n = 0
        while f"const.{n}" in names:
            n += 1
        name = f"const.{n}"
        names.add(name)
        # evaluated on the CPU; the folded tensor lives where the model's own tensors live
        device = next((x.device for x in graph.tensors.values() if isinstance(x, torch.Tensor)), t.device)
        return graph.add_param(name, TensorType(t.dtype, tuple(t.shape)), t.contiguous().to(device))

    def __call__(self, graph: Graph, ctx: PassContext) -> bool:
        known: dict[int, torch.Tensor] = {id(p): graph.tensors[p.name] for p in graph.params
                                          if is_const_param(graph, p)}
        folded_nodes: list[Node] = []
        for node in graph.nodes:
            if self._evaluable(node, known, ctx):
                for r, t in zip(node.results, self._evaluate(node, known)):
                    known[id(r)] = t
                folded_nodes.append(node)
        folded = {id(n) for n in folded_nodes}
        outputs = {id(v) for v in graph.outputs}
        names = {v.name for v in graph.values()}
        changed = 0
        for node in folded_nodes:
            for r in node.results:
                escapes = id(r) in outputs or any(id(u) not in folded for u in r.users)
                if not escapes:
                    continue
                new = self._materialise(graph, r, known[id(r)], names, ctx)
                if new is not None:
                    graph.replace_all_uses(r, new)
                    changed += 1
        if not changed:
            return False
        for node in reversed(folded_nodes):
            erase_if_dead(graph, node)
        ctx.note(f"folded {changed} constant value(s)")
        return True

