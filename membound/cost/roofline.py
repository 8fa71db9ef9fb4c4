"""The roofline cost of one node or one kernel (a partition of nodes), symbolic or at concrete dims.

    time    = launch + max(compute, latency + memory)
    compute = max(FLOPs / peak(precision), elements / element_rate)
    memory  = bytes / (bandwidth * efficiency)

* ``launch``: every kernel pays it (``Hardware.launch_overhead``).
* ``FLOPs / peak``: the classic compute floor.
* ``bytes / bandwidth``: the classic memory floor, at the steady-state bandwidth.
* ``latency``: the memory pipeline filling and draining; a memory-bound kernel pays it on top of its
  bytes, a compute-bound one hides it under its arithmetic (its loads are issued ahead of its math).
* ``efficiency``, ``element_rate`` and a class's own ``latency``: what a measured *kernel class* of the
  torch library reaches (``Hardware.kernel_classes``, filled by ``calibrate()``). A node is costed as
  the library kernel that eager torch runs for it: ``kernel_class_of`` names the class, e.g. cuBLAS'
  small-M GEMM for a ``linear``. ``element_rate`` is a ceiling that is neither FLOPs nor bytes (per-
  element instructions or per-row latency); it counts on the compute side since the time then follows
  the element count, not the bytes. A class the spec did not measure, a datasheet spec (latency 0, no
  classes) and a fused kernel of our own (a partition) get efficiency 1 and no element ceiling.

FLOPs and bytes come from the op declarations (``OpDef.cost``), never from here. A partition (any
object with ``nodes``, e.g. a fused kernel) may report its own ``flops``/``bytes``; otherwise its bytes
are what a fused kernel moves: values read from outside it once, values used outside it written once.

    cost = RooflineCost(Hardware.named("a100-80gb"))
    est = cost.estimate(linear_node, {"B": 1})       # Estimate(flops, bytes, time_s, bound, intensity)
    cost.crossover(linear_node, "B")                  # batch size where the layer turns compute-bound

The precision that sets the FLOP rate: matmul and attention ops run on tensor cores at their dtype
(bf16, fp16, int8, fp8; fp32 at the fp32 rate unless ``fp32_matmul="tf32"``); every other op runs at
the fp32 CUDA-core rate.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Optional, Protocol, Sequence, Union

import sympy
import torch

from membound.cost.hardware import Hardware, KernelClass
from membound.ir.graph import Node, Value
from membound.ir.ops import get_op
from membound.ir.types import TensorType, as_dim, normalize_dim_index, sym

DimBindings = Mapping[Union[str, sympy.Symbol], int]

_TENSOR_CORE_PRECISION = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.int8: "int8",
                          torch.float8_e4m3fn: "fp8", torch.float8_e5m2: "fp8"}


class CostModel(Protocol):
    """What a pass may ask the cost model (``PassContext.cost``); :class:`RooflineCost` is ours.

    ``estimate(node_or_partition, dims)`` gives the time (``.time_s``) and the roofline verdict at
    concrete dims; a pass compares the estimates of the graph with and without its rewrite.
    """

    def estimate(self, item: Union[Node, Any], dims: Optional["DimBindings"] = None) -> "Estimate": ...


@dataclass(frozen=True)
class Estimate:
    """The roofline verdict for one node or kernel at concrete dims. Times in seconds.

    ``time_s = launch_s + max(compute_s, latency_s + memory_s)``. ``bound`` is ``"memory"`` or
    ``"compute"`` (which side of the max is higher), or ``"free"`` for nodes that launch no kernel
    (views, scalar constants). ``kernel_class`` names the measured library class that costed it ("" for
    the plain roofline).
    """

    flops: float
    bytes: float
    time_s: float
    bound: str
    intensity: float
    compute_s: float = 0.0
    memory_s: float = 0.0
    launch_s: float = 0.0
    latency_s: float = 0.0
    kernel_class: str = ""


@dataclass(frozen=True)
class SymbolicCost:
    """FLOPs, bytes, the two floors and the memory latency as sympy expressions of the dims (``B``, ``S``, ...).

    ``memory_s`` is the bytes term alone (the steady state); ``latency_s`` the fixed memory-side cost that
    a memory-bound kernel adds to it. Sums of ``compute_s``/``memory_s`` over a graph are throughput
    floors (``PhaseCost.roofline_s``); a kernel's own time is ``time_s``.
    """

    flops: sympy.Expr
    bytes: sympy.Expr
    compute_s: sympy.Expr
    memory_s: sympy.Expr
    launch_s: float
    free: bool = False
    latency_s: sympy.Expr = sympy.Integer(0)
    kernel_class: str = ""

    @property
    def time_s(self) -> sympy.Expr:
        return sympy.Max(self.compute_s, self.latency_s + self.memory_s) + self.launch_s

    @property
    def intensity(self) -> sympy.Expr:
        return self.flops / self.bytes

    def subs(self, mapping: Mapping[sympy.Symbol, sympy.Expr]) -> "SymbolicCost":
        """The same cost with symbols replaced (``{T: S}``)."""
        m = dict(mapping)
        return SymbolicCost(self.flops.xreplace(m), self.bytes.xreplace(m), self.compute_s.xreplace(m),
                            self.memory_s.xreplace(m), self.launch_s, self.free,
                            sympy.sympify(self.latency_s).xreplace(m), self.kernel_class)

    def at(self, dims: DimBindings, what: str = "cost") -> Estimate:
        """The concrete estimate with every symbol bound (an error names the unbound ones)."""
        if self.free:
            return Estimate(0.0, 0.0, 0.0, "free", 0.0)
        subs = bindings(dims)
        flops, nbytes, compute, memory, latency = (evaluate(e, subs, what) for e in (
            self.flops, self.bytes, self.compute_s, self.memory_s, self.latency_s))
        intensity = flops / nbytes if nbytes > 0 else math.inf
        bound = "compute" if compute > latency + memory else "memory"
        return Estimate(flops, nbytes, max(compute, latency + memory) + self.launch_s, bound, intensity, compute,
                        memory, self.launch_s, latency, self.kernel_class)


_ZERO = sympy.Integer(0)
FREE = SymbolicCost(_ZERO, _ZERO, _ZERO, _ZERO, 0.0, free=True)  # a node that launches no kernel


def bindings(dims: Optional[DimBindings]) -> dict[sympy.Symbol, sympy.Integer]:
    """``{"B": 4}`` or ``{B: 4}`` -> ``{B: Integer(4)}`` over membound's dim symbols."""
    out: dict[sympy.Symbol, sympy.Integer] = {}
    for k, v in (dims or {}).items():
        s = sym(k) if isinstance(k, str) else as_dim(k)
        if not isinstance(s, sympy.Symbol):
            raise TypeError(f"dims keys must be symbol names or symbols, got {k!r}")
        out[s] = sympy.Integer(int(v))
    return out


def evaluate(expr: sympy.Expr, subs: Mapping[sympy.Symbol, sympy.Expr], what: str = "cost") -> float:
    """A float from an expression whose symbols are all bound."""
    value = sympy.sympify(expr).xreplace(dict(subs))
    if value.free_symbols:
        missing = sorted(s.name for s in value.free_symbols)
        raise ValueError(f"{what}: dims {missing} are not bound; pass them in dims (e.g. dims={{'B': 1, 'S': 128}})")
    return float(value)


def rate(per_second: float) -> sympy.Integer:
    """A rate as an exact integer, so symbolic results stay readable (``156*H/(H - 312)``, not floats)."""
    return sympy.Integer(round(per_second))


def duration(seconds: float) -> sympy.Expr:
    """A fixed time as an exact rational (whole picoseconds), for the same reason as ``rate``."""
    return sympy.Rational(round(seconds * 1e12), 10**12)


def precision_of(op: str, dtype: torch.dtype, fp32_matmul: str = "fp32") -> str:
    """The FLOP-rate class of an op: tensor-core precision for ops with the ``tensor_core`` trait, else the
    fp32 vector rate."""
    if get_op(op).tensor_core:
        if dtype == torch.float32:
            return fp32_matmul
        return _TENSOR_CORE_PRECISION.get(dtype, "fp32")
    return "fp32"


# ---------------------------------------------------------------------------------------------
# kernel classes: which measured library kernel eager torch runs for a node
# ---------------------------------------------------------------------------------------------
# torch runs a last-dim softmax row of <= 1024 elements in its warp-per-row kernel (memory-bound) and
# longer rows in its block-per-row kernel, the measured "softmax" class
WARP_SOFTMAX_MAX = 1024


@dataclass(frozen=True)
class ClassUse:
    """A node's kernel class: ``name`` (a ``Hardware.kernel_classes`` key), the ``elements`` its element
    ceiling counts, and ``when``: True, or a condition on symbolic dims under which the class applies."""

    name: str
    elements: Optional[sympy.Expr] = None
    when: Any = True


def kernel_class_of(op: str, kind: str, ins: Sequence[TensorType], outs: Sequence[TensorType],
                    attrs: Mapping[str, Any]) -> Optional[ClassUse]:
    """The library kernel class eager torch runs ``op`` with at these types, or None (plain roofline).

    The op declares its class (the ``eager_class`` trait); the rules here say when it applies.

    * ``gemv``: ``linear``/``matmul``, i.e. cuBLAS; the class only matters where the product is
      memory-bound (small M), where cuBLAS runs its GEMV and split-K kernels.
    * ``decode_attention``: attention with one query token (SDPA's flash-decoding path).
    * ``softmax``: softmax/log_softmax over the last dim, rows longer than ``WARP_SOFTMAX_MAX``: torch's
      block-per-row kernel (a softmax over another dim runs a kernel nobody measured: plain roofline).
    * ``layer_norm``: torch's layer_norm kernel.
    * ``broadcast``: an elementwise op with an input (of rank >= 1) smaller than its result: torch's
      TensorIterator cannot take its contiguous vectorised path and computes every operand's offset
      element by element. Rank-0 inputs are scalars that eager torch passes as kernel arguments.
    """
    eager = get_op(op).eager_class
    if eager == "gemv":
        return ClassUse("gemv")
    if kind == "attention" and ins and ins[0].rank == 4 and ins[0].shape[2] == 1:
        return ClassUse("decode_attention")
    if eager == "softmax" and ins and ins[0].rank >= 1:
        x = ins[0]
        if normalize_dim_index(int(attrs.get("dim", -1)), x.rank) != x.rank - 1:
            return None
        when = sympy.Gt(x.shape[-1], WARP_SOFTMAX_MAX)
        if when == sympy.false:
            return None
        return ClassUse("softmax", x.numel(), True if when == sympy.true else when)
    if eager == "layer_norm":
        return ClassUse("layer_norm")
    if kind == "elementwise" and outs:
        out = outs[0].numel()
        if any(t.rank >= 1 and sympy.simplify(t.numel() - out) != 0 for t in ins):
            return ClassUse("broadcast", out)
    return None


def is_free(node: Node) -> bool:
    """Nodes that launch no kernel: views (0 bytes, folded into indexing) and scalar constants."""
    opdef = get_op(node.op)
    if opdef.kind == "view":
        return True
    return opdef.kind == "creation" and all(r.rank == 0 for r in node.results)


class RooflineCost:
    """The cost model passes ask (``ctx.cost.estimate(node_or_partition, dims)``)."""

    def __init__(self, hardware: Hardware, *, fp32_matmul: str = "fp32") -> None:
        self.hardware = hardware
        self.fp32_matmul = fp32_matmul

    def __repr__(self) -> str:
        return f"RooflineCost({self.hardware.describe()})"

    # ---- one node -------------------------------------------------------------------------------
    def node_cost(self, node: Node, in_types: Optional[Sequence[TensorType]] = None,
                  out_types: Optional[Sequence[TensorType]] = None, attrs: Optional[dict[str, Any]] = None,
                  *, library: bool = True) -> SymbolicCost:
        """Symbolic cost of ``node``; pass other types/attrs to cost it at another shape (decode analysis).

        ``library``: cost it as the kernel eager torch runs for it alone (its kernel class applies); False
        for a node inside a kernel of our own (plain roofline: a partition's parts).
        """
        if is_free(node):
            return FREE
        ins = list(in_types) if in_types is not None else [v.type for v in node.inputs]
        outs = list(out_types) if out_types is not None else [r.type for r in node.results]
        node_attrs = attrs if attrs is not None else node.attrs
        opdef = get_op(node.op)
        flops, nbytes = opdef.cost(ins, outs, node_attrs)
        dtype = (ins or outs)[0].dtype
        peak = rate(self.hardware.peak_flops(precision_of(node.op, dtype, self.fp32_matmul)))
        plain = self._stream(flops, nbytes, flops / peak)
        use = kernel_class_of(node.op, opdef.kind, ins, outs, node_attrs) if library else None
        if use is None or use.name not in self.hardware.kernel_classes:
            return plain
        klass = self.hardware.kernel_classes[use.name]
        compute = _with_element_ceiling(flops, peak, use.elements, klass)
        classed = SymbolicCost(flops, nbytes, compute, nbytes / rate(self.hardware.bandwidth * klass.efficiency),
                               self.hardware.launch_overhead, latency_s=duration(klass.latency), kernel_class=use.name)
        if use.when is True:
            return classed
        return SymbolicCost(flops, nbytes, _where(use.when, classed.compute_s, plain.compute_s),
                            _where(use.when, classed.memory_s, plain.memory_s), self.hardware.launch_overhead,
                            latency_s=_where(use.when, classed.latency_s, plain.latency_s), kernel_class=use.name)

    def _stream(self, flops: sympy.Expr, nbytes: sympy.Expr, compute: sympy.Expr) -> SymbolicCost:
        """The plain roofline: the spec's bandwidth after its memory latency."""
        return SymbolicCost(flops, nbytes, compute, nbytes / rate(self.hardware.bandwidth),
                            self.hardware.launch_overhead, latency_s=duration(self.hardware.memory_latency))

    # ---- a node or a partition ------------------------------------------------------------------
    def symbolic(self, item: Union[Node, Any]) -> SymbolicCost:
        """Symbolic cost of a node or of a partition (one kernel: one launch)."""
        if isinstance(item, Node):
            return self.node_cost(item)
        nodes: list[Node] = list(getattr(item, "nodes", None) or [])
        if not nodes and getattr(item, "flops", None) is None:
            raise TypeError(f"cost: expected an IR Node or a partition with .nodes, got {type(item).__name__}")
        if getattr(item, "flops", None) is not None and getattr(item, "bytes", None) is not None:
            flops = sympy.sympify(item.flops)  # the partition's own count: no per-node costs needed
            return self._stream(flops, sympy.sympify(item.bytes), flops / rate(self._partition_peak(nodes)))
        parts = [self.node_cost(n, library=False) for n in nodes]
        kernel = [p for p in parts if not p.free]
        own_flops = getattr(item, "flops", None)
        own_bytes = getattr(item, "bytes", None)
        if not kernel and own_flops is None and own_bytes is None:
            return FREE
        if own_flops is not None:
            flops = sympy.sympify(own_flops)
            compute = flops / rate(self._partition_peak(nodes))
        else:
            flops = sum((p.flops for p in kernel), sympy.Integer(0))
            compute = sum((p.compute_s for p in kernel), sympy.Integer(0))
        if own_bytes is not None:
            nbytes = sympy.sympify(own_bytes)
        elif len(kernel) == 1 and len(nodes) == 1:
            nbytes = kernel[0].bytes
        else:
            nbytes = boundary_bytes(nodes)
        return self._stream(flops, nbytes, compute)

    def estimate(self, item: Union[Node, Any], dims: Optional[DimBindings] = None) -> Estimate:
        """Concrete estimate for a node or partition; ``dims`` binds every symbol in its types."""
        what = item.op if isinstance(item, Node) else type(item).__name__
        return self.symbolic(item).at(dims or {}, what)

    def crossover(self, item: Union[Node, Any, SymbolicCost], symbol: Union[str, sympy.Symbol] = "B",
                  dims: Optional[DimBindings] = None) -> Optional[float]:
        """The value of ``symbol`` where compute time reaches memory time, latency included, so that it
        agrees with ``estimate(...).bound`` (other symbols bound by ``dims``).

        Returns the smallest positive solution, or None when the item never turns compute-bound.
        """
        cost = item if isinstance(item, SymbolicCost) else self.symbolic(item)
        return solve_crossover(cost.compute_s, cost.latency_s + cost.memory_s, symbol, dims)

    def _partition_peak(self, nodes: Iterable[Node]) -> float:
        """The FLOP rate of a partition that reports its own FLOPs: that of its tensor-core op, if any."""
        precision = "fp32"
        for n in nodes:
            opdef = get_op(n.op)
            if opdef.tensor_core and n.inputs:
                precision = precision_of(n.op, n.inputs[0].dtype, self.fp32_matmul)
                break
        return self.hardware.peak_flops(precision)


def _with_element_ceiling(flops: sympy.Expr, peak: sympy.Expr, elements: Optional[sympy.Expr],
                          klass: KernelClass) -> sympy.Expr:
    """max(FLOPs / peak, elements / element_rate); one term when the per-element ratio is a number (it is
    for every classed op), so sums stay linear in the dims and crossovers stay solvable."""
    compute = flops / peak
    if not klass.element_rate or elements is None:
        return compute
    ceiling = elements / rate(klass.element_rate)
    per_element = sympy.simplify(compute / ceiling)
    if per_element.is_number:
        return compute if per_element > 1 else ceiling
    return sympy.Max(compute, ceiling)


def _where(condition: Any, then: sympy.Expr, otherwise: sympy.Expr) -> sympy.Expr:
    """``then`` where ``condition`` holds on the dims, else ``otherwise`` (a Piecewise)."""
    return sympy.Piecewise((then, condition), (otherwise, True))


def boundary_bytes(nodes: Sequence[Node], at: Optional[Mapping[sympy.Symbol, Any]] = None) -> sympy.Expr:
    """Bytes a fused kernel over ``nodes`` moves: each outside value read once, each escaping result written once.

    A result escapes when a node outside the partition uses it (directly or through views) or it is a
    graph output; intermediates stay on chip, also when read through views. An input read through
    views outside the partition (views fold into the kernel's indexing) costs the smaller of what the
    views show and what their origin holds: a broadcast bias is read at its own size, a slice only in
    part, and two views of one origin are read once. A ``source`` op's value (constant, arange) is
    computed from the index, never read; a ``sink`` (``cache_write``) writes its values into its
    buffer in place: it reads nothing of the buffer and writes only the values.

    ``at`` (symbol -> value) gives the number at those dims instead of an expression (a partitioner
    comparing many candidates at one point need not build symbolic minima).
    """
    point = None if at is None else tuple(sorted(((sympy.sympify(k), sympy.sympify(v)) for k, v in at.items()),
                                                 key=str))

    def size(t: TensorType) -> sympy.Expr:
        return t.nbytes() if point is None else _bytes_at(t, point)

    lo = sympy.Min if at is None else min
    hi = sympy.Max if at is None else max
    inside = {id(n) for n in nodes}
    produced = {id(r) for n in nodes for r in n.results}
    reads: dict[int, sympy.Expr] = {}  # origin value -> bytes read from it
    total: sympy.Expr = sympy.Integer(0)
    for n in nodes:
        opdef = get_op(n.op)
        for i, v in enumerate(n.inputs):
            if id(v) in produced or (opdef.sink and i == 0):
                continue
            origin, nbytes = _read_through_views(v, size, lo)
            if id(origin) in produced or (origin.producer is not None and get_op(origin.producer.op).source):
                continue
            if opdef.gather == i:  # a gather reads only the rows it picks, not the table
                nbytes = lo(nbytes, size(n.results[0].type))
            reads[id(origin)] = hi(reads[id(origin)], nbytes) if id(origin) in reads else nbytes
        if opdef.sink:
            total += size(n.inputs[1].type)
            continue
        outputs = n.graph.outputs if n.graph is not None else []
        for r in n.results:
            if _escapes(r, inside, outputs):
                total += size(r.type)
    return total + sympy.Add(*reads.values())


@functools.lru_cache(maxsize=8192)
def _bytes_at(t: TensorType, point: tuple[tuple[sympy.Expr, sympy.Expr], ...]) -> sympy.Expr:
    return sympy.Integer(int(t.nbytes().xreplace(dict(point))))


def _escapes(value: Value, inside: set[int], outputs: Sequence[Value]) -> bool:
    """Whether ``value`` (or a view of it) is a graph output or read by a node outside ``inside``."""
    stack, seen = [value], set()
    while stack:
        v = stack.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if any(o is v for o in outputs):
            return True
        for u in v.users:
            if id(u) in inside:
                continue
            if get_op(u.op).kind != "view":
                return True
            stack.extend(u.results)
    return False


def _read_through_views(value: Value, size: Callable[[TensorType], sympy.Expr] = TensorType.nbytes,
                        lo: Callable[..., sympy.Expr] = sympy.Min) -> tuple[Value, sympy.Expr]:
    """(origin of ``value`` through view ops, bytes of the smallest value on that chain)."""
    nbytes = size(value.type)
    while value.producer is not None and value.producer.inputs and get_op(value.producer.op).kind == "view":
        value = value.producer.inputs[0]
        nbytes = lo(nbytes, size(value.type))
    return value, nbytes


def solve_crossover(compute_s: sympy.Expr, memory_s: sympy.Expr, symbol: Union[str, sympy.Symbol] = "B",
                    dims: Optional[DimBindings] = None) -> Optional[float]:
    """Smallest positive ``symbol`` with compute_s == memory_s (None if there is none)."""
    s = sym(symbol) if isinstance(symbol, str) else symbol
    subs = bindings(dims)
    subs.pop(s, None)
    diff = sympy.sympify(compute_s - memory_s).xreplace(subs)
    others = diff.free_symbols - {s}
    if others:
        raise ValueError(f"crossover in {s}: bind {sorted(x.name for x in others)} in dims")
    try:
        positive = [float(r) for r in _solve_real(diff, s) if r.is_real and float(r) > 0]
    except NotImplementedError:  # no closed form (a sort's n*ceil(log2 n) of B): search numerically
        return _first_sign_change(diff, s)
    return min(positive) if positive else None


def _first_sign_change(diff: sympy.Expr, s: sympy.Symbol, top: int = 1 << 24) -> Optional[float]:
    """The smallest ``s`` in [1, top] where ``diff`` changes sign (doubling, then bisection), else None."""
    f = sympy.lambdify(s, diff, modules=["math"])
    lo, hi = 1.0, 2.0
    if f(lo) == 0:
        return lo
    while hi <= top and (f(lo) < 0) == (f(hi) < 0) and f(hi) != 0:
        lo, hi = hi, hi * 2
    if hi > top:
        return None
    for _ in range(60):
        mid = (lo + hi) / 2
        if (f(mid) < 0) == (f(lo) < 0) and f(mid) != 0:
            lo = mid
        else:
            hi = mid
    return hi


def crossover_expr(compute_s: sympy.Expr, memory_s: sympy.Expr, symbol: Union[str, sympy.Symbol] = "B"
                   ) -> list[sympy.Expr]:
    """The crossover of ``symbol`` as expressions of the remaining symbols (e.g. ``156*H/(H - 312)``)."""
    s = sym(symbol) if isinstance(symbol, str) else symbol
    return [sympy.simplify(r) for r in _solve_real(compute_s - memory_s, s)]


def _solve_real(expr: sympy.Expr, s: sympy.Symbol) -> list[sympy.Expr]:
    """Roots of ``expr == 0`` in ``s`` taken as a positive real: dim symbols are integers, but a
    crossover batch size of 168.9 is a fine answer."""
    x = sympy.Symbol(f"{s.name}_real", positive=True)
    expr = sympy.sympify(expr).xreplace({s: x})
    # Min/Max of x (a moe op reads min(E, tokens * k) experts): solve each branch, keep the roots
    # where that branch is the one taken
    picks = sorted(expr.atoms(sympy.Min, sympy.Max), key=str)
    picks = [m for m in picks if x in m.free_symbols][:4]
    if not picks:
        return sympy.solve(sympy.together(expr), x)
    roots: list[sympy.Expr] = []
    for choice in itertools.product(*(m.args for m in picks)):
        branch = expr.xreplace(dict(zip(picks, choice)))
        for r in _solve_real(branch.xreplace({x: s}), s):
            if all(sympy.sympify(m.xreplace({x: r}) - c.xreplace({x: r})).equals(0) for m, c in zip(picks, choice)):
                roots.append(r)
    return roots

