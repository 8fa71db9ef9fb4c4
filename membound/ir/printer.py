"""Text form of the IR: one SSA line per node, parseable back by ``membound.ir.parser.parse``.

```
graph @tiny(%x: f32[B, 8]) params(%w: f32[4, 8]) {
  %0 = linear(%x, %w) : f32[B, 4]
  %1 = softmax(%0) {dim=-1, dtype=none} : f32[B, 4]  // head (Linear), model.py:12: y = self.head(x)
  return %1
}
```

With ``sources=True`` (``str(graph)``, IR dumps, ``membound opt``) each node captured from a model ends
with a ``//`` comment naming where it came from: the module path and class, then file:line and the
source line (``Node.meta["module"]`` / ``["source"]``, set at capture). The parser keeps such a trailing
comment as ``meta["loc"]``, so a dump reads back and prints again unchanged.
"""

from __future__ import annotations

import math
import os
import re
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


_SOURCE = re.compile(r"^(?P<file>.+?):(?P<line>\d+) in (?P<func>[^:]+): (?P<code>.*)$")


def source_comment(n: Node, code: bool = True) -> str:
    """Where a node came from, on one line: ``layers.0.mlp (LlamaMLP), modeling_llama.py:160: return
    self.down_proj(...)`` (module path, file name, line and code), or what the parser read back (``loc``),
    or ``""`` for a node made by a pass or parsed from text without a comment. ``code=False`` leaves
    the source line's code out (the explain tables' short form)."""
    parts = []
    if n.meta.get("module"):
        parts.append(str(n.meta["module"]))
    source = str(n.meta.get("source") or "")
    if source:
        m = _SOURCE.match(source)
        if m is None:
            parts.append(source)
        else:
            where = f"{os.path.basename(m['file'])}:{m['line']}"
            parts.append(f"{where}: {m['code']}" if code else where)
    if not parts:
        return str(n.meta.get("loc") or "")
    return ", ".join(parts).replace("\n", " ")


def format_node(n: Node, sources: bool = False) -> str:
    lhs = ", ".join(format_value(r) for r in n.results)
    args = ", ".join(format_value(v) for v in n.inputs)
    attrs = ""
    if n.attrs:
        attrs = " {" + ", ".join(f"{k}={format_attr(v)}" for k, v in n.attrs.items()) + "}"
    types = ", ".join(str(r.type) for r in n.results)
    line = f"{lhs} = {n.op}({args}){attrs} : {types}"
    comment = source_comment(n) if sources else ""
    return f"{line}  // {comment}" if comment else line


def _decls(values: list[Value]) -> str:
    return ", ".join(f"%{v.name}: {v.type}" for v in values)


def print_graph(g: Graph, sources: bool = False) -> str:
    """The graph as text; ``sources=True`` ends each node's line with its source comment."""
    head = f"graph @{g.name}({_decls(g.inputs)})"
    if g.params:
        head += f" params({_decls(g.params)})"
    if g.state:
        head += f" state({_decls(g.state)})"
    lines = [head + " {"]
    lines += ["  " + format_node(n, sources) for n in g.nodes]
    lines.append("  return " + ", ".join(format_value(v) for v in g.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
