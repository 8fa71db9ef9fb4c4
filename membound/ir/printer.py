"""Text form of the IR: one SSA line per node, parseable back by ``membound.ir.parser.parse``.

```
graph @tiny(%x: f32[B, 8]) params(%w: f32[4, 8]) {
  %0 = linear(%x, %w) : f32[B, 4]
  %1 = softmax(%0) {dim=-1, dtype=none} : f32[B, 4]
  return %1
}
```
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from membound.ir.graph import Graph, Node, Value
from membound.ir.types import dtype_name


def float_literal(v: float, python: bool = False) -> str:
    """A float as text that reads back to the same value: ``nan``, ``inf``, ``-inf`` in IR text
    (``float("nan")``... in Python source, ``python=True``), else the shortest round-trip ``repr``,
    which always has a ``.`` or an exponent (``1.0``, ``1e-05``)."""
    if math.isnan(v):
        return 'float("nan")' if python else "nan"
    if math.isinf(v):
        text = "inf" if v > 0 else "-inf"
        return f'float("{text}")' if python else text
    return repr(float(v))


def format_attr(v: Any) -> str:
    """Attribute value -> text that ``parser.parse_attr`` reads back to an equal value."""
    if v is None:
        return "none"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return float_literal(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, torch.dtype):
        return dtype_name(v)
    if isinstance(v, sympy.Expr):
        return str(v)
    if isinstance(v, (tuple, list)):
        return "[" + ", ".join(format_attr(x) for x in v) + "]"
    raise TypeError(f"attribute value {v!r} of type {type(v).__name__} has no text form")


def format_value(v: Value) -> str:
    return f"%{v.name}"


def format_node(n: Node) -> str:
    lhs = ", ".join(format_value(r) for r in n.results)
    args = ", ".join(format_value(v) for v in n.inputs)
    attrs = ""
    if n.attrs:
        attrs = " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
    types = ", ".join(str(r.type) for r in n.results)
    return f"{lhs} = {n.op}({args}){attrs} : {types}"


def _decls(values: list[Value]) -> str:
    return ", ".join(f"%{v.name}: {v.type}" for v in values)


def print_graph(g: Graph) -> str:
    head = f"graph @{g.name}({_decls(g.inputs)})"
    if g.params:
        head += f" params({_decls(g.params)})"
    if g.state:
        head += f" state({_decls(g.state)})"
    lines = [head + " {"]
    lines += ["  " + format_node(n) for n in g.nodes]
    lines.append("  return " + ", ".join(format_value(v) for v in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
