"""Bounds of the gathers in generated kernels: token ids and indices are never read out of range.

Three layers, cheapest first:

- **Clamped addresses, always.** A generated gather (``embedding``/``index``/``gather``) clamps its row index
  into ``[0, n)`` before the load, so no id, however wrong, reads outside the table (no segfault,
  no out-of-bounds read on the GPU). A clamped read is a wrong number, so it is never the only layer.
- **A host check of user-provided indices, always.** ``gather_checks(graph)`` finds every gather
  whose indices are a graph input (through views and integer casts only); before each call the
  executable takes the input's ``aminmax`` and raises :class:`GatherIndexError` naming the op, the
  input, the values found and the valid range, as eager PyTorch raises. One reduction and one
  host sync per checked input and call; none while a CUDA graph is being captured (replays run no
  Python). ``MEMBOUND_CHECK_INDICES=0`` turns it off.
- **Device asserts, on request.** ``MEMBOUND_DEBUG=bounds`` (a comma-separated list) makes every
  generated gather ``tl.device_assert`` its indices, also those computed inside the graph, and
  compiles the kernels with ``debug=True`` so the asserts are live on the GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Sequence

import sympy
import torch

from membound.ir.graph import Graph, Node, Value

GATHER_OPS = ("embedding", "index", "gather")
# views and casts an index tensor may go through between the graph input and the gather
_THROUGH = ("reshape", "view", "unsqueeze", "squeeze", "expand", "flatten", "contiguous", "slice", "select",
            "transpose", "permute")


class GatherIndexError(IndexError):
    """An index given to a gather (a token id to ``embedding``, an index to ``index``) is out of range."""


def debug_flags() -> set[str]:
    """The ``MEMBOUND_DEBUG`` flags (comma-separated, case-insensitive)."""
    return {f.strip().lower() for f in os.environ.get("MEMBOUND_DEBUG", "").split(",") if f.strip()}


def device_asserts() -> bool:
    return "bounds" in debug_flags()


def enable_interpreter_asserts() -> None:
    """Under ``TRITON_INTERPRET=1`` ``debug=True`` on a kernel is not honoured: the interpreter's one
    builder decides. Turn its asserts on (debug mode only)."""
    try:
        from dataclasses import replace

        from triton.runtime import interpreter
    except ImportError:  # pragma: no cover - triton without its interpreter
        return
    b = interpreter.interpreter_builder
    if not b.options.debug:
        b.options = replace(b.options, debug=True)


def host_checks_enabled() -> bool:
    return os.environ.get("MEMBOUND_CHECK_INDICES", "1").strip().lower() not in ("0", "false", "no", "off")


def valid_range(op: str) -> str:
    return "-n <= i < n" if op == "index" else "0 <= i < n"


@dataclass(frozen=True)
class GatherCheck:
    """Input number ``position`` (``%input``) indexes dim ``dim`` of ``%table`` in ``node``."""

    position: int
    input: Value
    node: Node
    table: Value
    dim: int

    @property
    def negatives(self) -> bool:
        """``index`` counts negative indices from the end (``-n <= i < n``); ``embedding`` does not."""
        return self.node.op == "index"

    def size(self, graph: Graph, inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor],
             bindings: dict[sympy.Symbol, int]) -> Optional[int]:
        t = self.table
        d = t.shape[self.dim]
        if isinstance(d, sympy.Integer) or (isinstance(d, int)):
            return int(d)
        for v, x in zip(graph.inputs, inputs):
            if v is t:
                return int(x.shape[self.dim])
        if t.name in tensors and isinstance(tensors[t.name], torch.Tensor):
            return int(tensors[t.name].shape[self.dim])
        e = sympy.sympify(d).subs(bindings)
        return int(e) if e.is_Integer else None

    def check(self, ids: torch.Tensor, n: int) -> None:
        if ids.numel() == 0:
            return
        lo, hi = (int(x) for x in torch.aminmax(ids.detach()))
        first = -n if self.negatives else 0
        if lo >= first and hi < n:
            return
        op, name = self.node.op, self.node.results[0].name
        what = "token ids" if op == "embedding" else "indices"
        allowed = f"{first} <= i < {n}" + (" (negative counts from the end)" if self.negatives else "")
        raise GatherIndexError(
            f"{op} %{name}: input %{self.input.name} holds {what} in [{lo}, {hi}], but dim {self.dim} of "
            f"%{self.table.name} has {n} entries (allowed: {allowed}); check the ids against the model's "
            f"vocabulary / table size")


def gather_checks(graph: Graph) -> list[GatherCheck]:
    """The gathers whose indices come straight from a graph input (through views and casts)."""
    positions = {id(v): i for i, v in enumerate(graph.inputs)}
    out: list[GatherCheck] = []
    for node in graph.nodes:
        if node.op not in GATHER_OPS:
            continue
        if node.op == "embedding":
            pairs = [(node.inputs[1], 0)]
        elif node.op == "gather":
            pairs = [(node.inputs[1], node.attrs["dim"] % node.inputs[0].rank)]
        else:
            x = node.inputs[0]
            pairs = list(zip(node.inputs[1:], (d % x.rank for d in node.attrs["dims"])))
        for v, dim in pairs:
            src = _origin(v)
            if src is not None and id(src) in positions and not src.dtype.is_floating_point \
                    and src.dtype != torch.bool:
                out.append(GatherCheck(positions[id(src)], src, node, node.inputs[0], dim))
    return out


def _origin(v: Value) -> Optional[Value]:
    while v.producer is not None:
        n = v.producer
        if n.op in _THROUGH or (n.op == "cast" and not n.results[0].dtype.is_floating_point):
            v = n.inputs[0]
            continue
        return None
    return v


def check_inputs(checks: list[GatherCheck], graph: Graph, inputs: Sequence[torch.Tensor],
                 tensors: dict[str, torch.Tensor], bindings: dict[sympy.Symbol, int]) -> None:
    """Raise :class:`GatherIndexError` when an input index is out of its gather's range."""
    if not checks or not host_checks_enabled():
        return
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return  # no host sync inside a CUDA graph capture; replays run no Python anyway
    for c in checks:
        n = c.size(graph, inputs, tensors, bindings)
        if n is not None:
            c.check(inputs[c.position], n)
