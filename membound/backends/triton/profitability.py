"""Fusion profitability: does the cost model say one kernel beats the parts, and if not, why not.

The partitioner asks the cost model (``membound.cost``) for the time of each would-be kernel: its bytes
are the cost model's ``boundary_bytes`` of the members (each outside value read once, each escaping
value written once; views, sources and intermediates stay on chip), its FLOPs the members' own plus
what fusing *recomputes*: a pointwise value smaller than the kernel's iteration space (a RoPE table,
a per-row scale) is recomputed at every element that reads it. Fusing pays when

    time(merged) < sum(time(part))          (roofline time per kernel, launch and latency included)

at the dims the passes use: every symbolic dim at 1 (one decode step, ``passes.gemv_regime``), or the
dims given to ``partition(..., dims=)``. Horizontal fusion (``schedule.py``) asks the same question of
independent kernels that would share one launch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence

import sympy

from membound.backends.triton.facts import GraphFacts
from membound.cost import CostModel
from membound.cost.roofline import boundary_bytes
from membound.ir.graph import Graph, Node
from membound.ir.ops import get_op
from membound.ir.types import numel, sym

Dims = Mapping[Any, int]


@dataclass(frozen=True)
class KernelCandidate:
    """A would-be kernel as the cost model prices it: its nodes, FLOPs and bytes (sympy, of the dims)."""

    nodes: Sequence[Node]
    flops: sympy.Expr
    bytes: sympy.Expr


def decode_dims(graph: Graph, dims: Optional[Dims] = None) -> dict[Any, int]:
    """Every symbol of ``graph`` at 1, overridden by ``dims`` (name or symbol -> int)."""
    out: dict[Any, int] = {s: 1 for s in graph.symbols()}
    for key, value in (dims or {}).items():
        out[sym(key) if isinstance(key, str) else key] = int(value)
    return out


def _at(dims: Dims) -> str:
    return ", ".join(f"{s}={v}" for s, v in sorted(((str(s), v) for s, v in dims.items()))) or "static shapes"


class Profitability:
    def __init__(self, graph: Graph, facts: GraphFacts, cost: CostModel, dims: Optional[Dims] = None) -> None:
        self.facts = facts
        self.cost = cost
        self.dims = decode_dims(graph, dims)
        self._subs = {s: sympy.Integer(v) for s, v in self.dims.items()}
        self._node_flops: dict[int, tuple[float, float]] = {}

    def candidate(self, members: Sequence[Node], space: Optional[Sequence[sympy.Expr]] = None) -> KernelCandidate:
        """``members`` as one kernel; ``space``: its iteration shape (recomputation is charged against it).
        FLOPs and bytes are evaluated at ``self.dims`` (a long chain would otherwise grow long sums)."""
        flops = 0.0
        size = self._value(numel(space)) if space is not None else 0.0
        for m in members:
            f, n = self._flops(m)
            flops += f
            if space is not None and f != 0 and n != 0 and self.facts.kind(m) == "pointwise":
                flops += f * max(size / n - 1, 0.0)
        nbytes = float(boundary_bytes(list(members), at=self._subs))
        return KernelCandidate(list(members), sympy.Float(flops), sympy.Float(nbytes))

    def _value(self, e: sympy.Expr) -> float:
        return float(sympy.sympify(e).xreplace(self._subs))

    def _flops(self, node: Node) -> tuple[float, float]:
        """(FLOPs, result elements) of ``node`` at the dims."""
        got = self._node_flops.get(id(node))
        if got is None:
            expr, _ = get_op(node.op).cost([v.type for v in node.inputs], [r.type for r in node.results], node.attrs)
            got = self._node_flops[id(node)] = (self._value(expr), self._value(numel(node.results[0].shape)))
        return got

    def seconds(self, candidate: KernelCandidate) -> float:
        return float(self.cost.estimate(candidate, self.dims).time_s)

    def refusal(self, parts: Sequence[Sequence[Node]], merged: Sequence[Node], space: Sequence[sympy.Expr]
                ) -> Optional[str]:
        """None when one kernel over ``merged`` is faster than the ``parts`` apart, else why not."""
        apart = sum(self.seconds(self.candidate(p)) for p in parts)
        fused = self.seconds(self.candidate(merged, space))
        if fused < apart:
            return None
        return (f"one kernel takes {fused * 1e6:.3g} us, {len(parts)} apart {apart * 1e6:.3g} us "
                f"(cost model at {_at(self.dims)}; fusing recomputes the smaller values per element)")

    def launch_saving(self, kernels: Sequence[Sequence[Node]]) -> float:
        """Seconds one launch of independent ``kernels`` saves over one launch each (bytes and FLOPs are
        the same either way: what is saved is the launch and latency the cost model charges per kernel)."""
        parts = [self.candidate(k) for k in kernels]
        apart = sum(self.seconds(p) for p in parts)
        one = KernelCandidate([n for p in parts for n in p.nodes], sympy.Add(*[p.flops for p in parts]),
                              sympy.Add(*[p.bytes for p in parts]))
        return apart - self.seconds(one)
