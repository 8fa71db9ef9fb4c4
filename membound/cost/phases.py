"""Symbolic analysis of a whole graph: FLOPs, bytes and time of prefill and of one decode step.

**Prefill** is the captured graph as it is: costs are expressions of ``B`` and ``S``; divided by ``B``
they are per prompt. In a step graph over a KV cache (from the insert-kv-cache pass) the prompt
fills the cache, so its length ``T`` is ``S`` there.

**Decode** is one step that produces one token per sequence while attending to ``T`` cached
positions. Until the KV-cache pass produces a real decode graph, it is modelled on the full graph:

* ``S`` is set to 1 everywhere (one new token per sequence);
* every ``attention`` node reads ``k``/``v`` of length ``T`` (the cache) instead of ``S``, at the head
  count the cache stores, i.e. before any GQA head repeat (``expand``/``reshape``) in front of the
  attention; an explicit mask gets ``T`` columns.

That is what one decode step moves: every weight once, the whole KV cache once, activations of one
token. Writing the new token's k/v into the cache and the mask construction at ``[1, T]`` are left out
(both are O(1) per token and negligible). A graph that already has the cache length symbol ``T``
(a decode graph from the KV-cache pass) is costed as it is, with ``S = 1``. Decode costs divided by
``B`` are per generated token.

    phases = analyze(graph, RooflineCost(hw))
    phases.decode.bytes_per_unit          # bytes per generated token, an expression of B and T
    phases.decode.crossover(dims={"T": 512})   # batch size where the step turns compute-bound
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import sympy

from membound.cost.roofline import DimBindings, RooflineCost, SymbolicCost, bindings, evaluate, solve_crossover
from membound.ir.graph import Graph, Node, Value
from membound.ir.ops import get_op
from membound.ir.types import B, S, T, TensorType

ZERO = sympy.Integer(0)
ATTENTION_OPS = ("attention", "cached_attention")  # inputs (q, k, v, ...)


@dataclass
class PhaseCost:
    """Per-node symbolic costs of one phase and their totals.

    ``time_s`` is the sum of per-kernel times (each its own max, memory latency included, plus a
    launch: the unfused eager picture); ``roofline_s`` is the whole phase's max(compute, memory) over
    the throughput terms alone, the floor a perfect schedule could reach (no per-kernel latencies), and
    ``crossover`` balances the same two sums. ``unit`` is what ``*_per_unit`` divides by ``B`` into:
    "prompt" or "token".
    """

    phase: str
    unit: str
    items: list[tuple[Node, SymbolicCost]]

    @property
    def flops(self) -> sympy.Expr:
        return sympy.Add(*[c.flops for _, c in self.items])

    @property
    def bytes(self) -> sympy.Expr:
        return sympy.Add(*[c.bytes for _, c in self.items])

    @property
    def compute_s(self) -> sympy.Expr:
        return sympy.Add(*[c.compute_s for _, c in self.items])

    @property
    def memory_s(self) -> sympy.Expr:
        return sympy.Add(*[c.memory_s for _, c in self.items])

    @property
    def kernels(self) -> int:
        return sum(1 for _, c in self.items if not c.free)

    @property
    def launch_s(self) -> float:
        return sum(c.launch_s for _, c in self.items if not c.free)

    @property
    def time_s(self) -> sympy.Expr:
        return sympy.Add(*[c.time_s for _, c in self.items if not c.free])

    @property
    def roofline_s(self) -> sympy.Expr:
        return sympy.Max(self.compute_s, self.memory_s)

    @property
    def flops_per_unit(self) -> sympy.Expr:
        return sympy.expand(self.flops / B)

    @property
    def bytes_per_unit(self) -> sympy.Expr:
        return sympy.expand(self.bytes / B)

    def crossover(self, symbol: str = "B", dims: Optional[DimBindings] = None) -> Optional[float]:
        """The ``symbol`` value where the phase's total compute time reaches its memory time (None: never)."""
        return solve_crossover(self.compute_s, self.memory_s, symbol, dims)

    def at(self, dims: DimBindings) -> dict[str, Any]:
        """Concrete totals: flops, bytes, compute_s, memory_s, time_s, roofline_s, bound, kernels."""
        subs = bindings(dims)
        what = f"{self.phase} totals"
        out: dict[str, Any] = {key: evaluate(getattr(self, key), subs, what) for key in
                               ("flops", "bytes", "compute_s", "memory_s")}
        out["time_s"] = sum(evaluate(c.time_s, subs, what) for _, c in self.items if not c.free)
        out["roofline_s"] = max(out["compute_s"], out["memory_s"])
        out["bound"] = "compute" if out["compute_s"] > out["memory_s"] else "memory"
        out["kernels"] = self.kernels
        return out


@dataclass
class Phases:
    prefill: PhaseCost
    decode: PhaseCost
    kv_bytes_per_token: sympy.Expr


def analyze(graph: Graph, cost: RooflineCost) -> Phases:
    """Prefill and decode costs of ``graph`` (see the module docstring for the decode model)."""
    fills_cache = {T: S} if T in graph.symbols() else {}
    prefill = PhaseCost("prefill", "prompt", [(n, cost.node_cost(n).subs(fills_cache)) for n in graph.nodes])
    decode = PhaseCost("decode", "token", [(n, decode_node_cost(n, cost)) for n in graph.nodes])
    return Phases(prefill, decode, kv_cache_bytes_per_token(graph))


def decode_node_cost(node: Node, cost: RooflineCost) -> SymbolicCost:
    """The node's cost in one decode step: S = 1, attention k/v over T cached positions."""
    return cost.node_cost(node, *decode_signature(node))


def decode_signature(node: Node) -> tuple[list[TensorType], list[TensorType], dict[str, Any]]:
    """(input types, result types, attrs) of ``node`` in one decode step (see the module docstring)."""
    one = {S: sympy.Integer(1)}
    ins = [at_one_token(v.type, one) for v in node.inputs]
    outs = [at_one_token(r.type, one) for r in node.results]
    attrs = {k: _subs_attr(v, one) for k, v in node.attrs.items()}
    if node.op == "attention" and not has_cache_dims(node):
        ins = _attention_decode_inputs(node, ins)
    return ins, outs, attrs


def has_cache_dims(node: Node) -> bool:
    return any(T in v.type.free_symbols() for v in node.inputs)


def at_one_token(t: TensorType, one: Mapping[sympy.Symbol, sympy.Expr]) -> TensorType:
    return TensorType(t.dtype, [d.xreplace(one) for d in t.shape])


def _subs_attr(value: Any, one: Mapping[sympy.Symbol, sympy.Expr]) -> Any:
    if isinstance(value, sympy.Expr):
        return value.xreplace(one)
    if isinstance(value, tuple):
        return tuple(_subs_attr(v, one) for v in value)
    return value


def _attention_decode_inputs(node: Node, ins: list[TensorType]) -> list[TensorType]:
    """q stays at one token; k/v become the cache ``[B, Hkv, T, D]``; a mask gets T columns."""
    q, k, v = ins[0], ins[1], ins[2]
    out = [q, _cache_type(node.inputs[1], k), _cache_type(node.inputs[2], v)]
    if len(ins) > 3:
        mask = ins[3]
        cols = T if mask.shape[-1] != 1 else mask.shape[-1]
        out.append(TensorType(mask.dtype, list(mask.shape[:-1]) + [cols]))
    return out


def _cache_type(value: Value, at_one: TensorType) -> TensorType:
    """``[B, heads the cache stores, T, D]`` for a k or v input of an attention node."""
    heads = at_one.shape[1]
    per_token = kv_elements_per_token(value)
    if per_token is not None:
        stored = sympy.simplify(per_token / at_one.shape[3])
        if stored.is_Integer:
            heads = stored
    return TensorType(at_one.dtype, [at_one.shape[0], heads, T, at_one.shape[3]])


def kv_source(value: Value) -> Value:
    """Walk back from an attention k/v input through views that drop no data (reshape, transpose,
    expand, unsqueeze, a full slice) to the value a KV cache would store (before any GQA repeat)."""
    while value.producer is not None and value.producer.inputs:
        producer = value.producer
        if get_op(producer.op).kind != "view":
            break
        src = producer.inputs[0]
        grows = sympy.simplify(value.type.numel() - src.type.numel())
        if grows.is_nonnegative is not True:
            break  # a real slice/select: the cache holds what is left, not the source
        value = src
    return value


def kv_elements_per_token(value: Value) -> Optional[sympy.Expr]:
    """Elements per token (per batch row and position) of ``value``'s cache source; None if it scales
    neither with B*S (new tokens) nor with B*T (an explicit cache): then it is not per-token data. A graph
    captured from a one-row example has its batch dim specialised to 1: then S (or T) alone."""
    numel = kv_source(value).type.numel()
    for tokens in (B * S, B * T, S, T):
        per_token = sympy.simplify(numel / tokens)
        if not per_token.free_symbols:
            return per_token
    return None


def kv_cache_bytes_per_token(graph: Graph) -> sympy.Expr:
    """Bytes the KV cache holds per token: the k and v sources of every attention node (expected
    2 * layers * kv_heads * head_dim * itemsize)."""
    total: sympy.Expr = ZERO
    for node in graph.nodes:
        if node.op not in ATTENTION_OPS:
            continue
        for value in node.inputs[1:3]:
            per_token = kv_elements_per_token(value)
            if per_token is None:
                raise ValueError(f"attention %{node.results[0].name}: its {value.name} input {value.type} is not "
                                 f"per-token data (does not scale with B*S); cannot size the KV cache")
            total += per_token * value.dtype.itemsize
    return total
