"""fuse-norm-linear: an ``rms_norm`` read only by linears is formed by each of them as it loads x, its
mean square taken from the statistics the norm's producer wrote.

```
// before: the MLP input of a Llama layer after fuse-linear-residual (gate/up merged into one projection)
graph @f(%a: f32[B, 1, 16], %h: f32[B, 1, 8]) params(%wo: f32[8, 16], %ln: f32[8], %wgu: f32[24, 8]) {
  %h2 = linear_add(%a, %wo, %h) : f32[B, 1, 8]
  %n = rms_norm(%h2, %ln) {eps=1e-05} : f32[B, 1, 8]
  %gu = linear(%n, %wgu) : f32[B, 1, 24]
  return %h2, %gu
}
// after
graph @f(%a: f32[B, 1, 16], %h: f32[B, 1, 8]) params(%wo: f32[8, 16], %ln: f32[8], %wgu: f32[24, 8]) {
  %0, %1 = linear_add_sumsq(%a, %wo, %h) : f32[B, 1, 8], f32[B, 1, 2]
  %2 = rms_norm_linear_sumsq(%0, %1, %ln, %wgu) {eps=1e-05} : f32[B, 1, 24]
  return %0, %2
}
```

Matches ``rms_norm(x, w)`` whose every reader is a linear that takes it as its input ``x`` (so the
norm's kernel goes away; the norm is not a graph output), the norm, x and its weight of one dtype.

* **Statistics form** (x is the sum of a residual linear: ``linear_add`` / ``gated_linear_add``, the
  producer table :data:`STATS`): the producer becomes its ``_sumsq`` form, which also writes the fp32
  sums of squares of its rounded output per block of ``SUMSQ_COLUMNS`` columns (each block by the one
  program that stores those columns: deterministic, no atomics, nothing to zero, so a CUDA graph replays
  it as is); each reader becomes ``rms_norm_linear_sumsq``, whose GEMV programs sum those few partials
  for their 1 / rms and norm x tile by tile as they load it (rounded as eager rounds). At decode the
  norm's launch goes away and no program re-reduces the row.
* **Prologue form** (any other x, e.g. the first layer's norm of the embedding): ``rms_norm_linear``,
  whose every program first re-reduces its rows of x. Only with the option ``prologue=True``: an H200
  measured it slower than the norm's own launch (the fused GEMVs 55 us against 39 unfused, Llama-3-8B
  decode 178 tok/s against 207; issue 13), a chain of L2 loads in front of the weight stream that the
  roofline's bytes under-price. By default such a norm stays a kernel (fused with its own producer by
  the backend, e.g. the embedding gather). The final norm before the head is one of them: it reads the
  last position through a gather (``index``), a kernel of its own either way (gathering the partials
  too would keep that launch), so it stays the gather + norm kernel.

Which linears have a norm form is one table, :data:`PROLOGUE` (the quantized linears have none: a norm
read by one stays); which producers write statistics, :data:`STATS`. ``linear_rope`` (fuse-rope-linear's q/k/v
projection with q and k rotated in its epilogue, when that pass ran first: the ``decode-fused-rope`` pipeline) has
a statistics form, ``rms_norm_linear_rope_sumsq``, the norm in the prologue and the rotation in the epilogue of one
GEMV, and no prologue form (a norm without statistics read by one stays); so does ``linear_glu`` (fuse-linear-glu's
merged gate/up projection with the gating in its epilogue), ``rms_norm_linear_glu_sumsq``: the post-attention norm
from the o projection's partials in the prologue, which takes a Llama layer of the ``decode-fused`` pipelines from
seven launches to six. The rope form:

```
// before: the next layer's attention input after fuse-linear-residual and fuse-rope-linear
graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 16], %cs: f32[B, 1, 8], %sn: f32[B, 1, 8])
      params(%wd: f32[16, 12], %ln: f32[16], %wqkv: f32[32, 16]) {
  %h2 = gated_linear_add(%g, %u, %wd, %h) {act="silu"} : f32[B, 1, 16]
  %n = rms_norm(%h2, %ln) {eps=1e-05} : f32[B, 1, 16]
  %qkv = linear_rope(%n, %wqkv, %cs, %sn) {head_dim=8, rope_cols=24} : f32[B, 1, 32]
  return %h2, %qkv
}
// after
graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 16], %cs: f32[B, 1, 8], %sn: f32[B, 1, 8])
      params(%wd: f32[16, 12], %ln: f32[16], %wqkv: f32[32, 16]) {
  %0, %1 = gated_linear_add_sumsq(%g, %u, %wd, %h) {act="silu"} : f32[B, 1, 16], f32[B, 1, 4]
  %2 = rms_norm_linear_rope_sumsq(%0, %1, %ln, %wqkv, %cs, %sn) {eps=1e-05, head_dim=8, rope_cols=24} : f32[B, 1, 32]
  return %0, %2
}
```

When it fires: when the cost model (``ctx.cost``) estimates the fused ops faster than the norm, its
readers and the producer as they are, at the decode dims (``ctx.decode_dims``; symbols not given at 1).
The fused ops' bytes count what every GEMV program re-reads (the partials, or x for the prologue; see
``ir/ops/matmul.py``). Without a cost model: when the token count is symbolic or at most 16 (the GEMV
range).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from membound.ir import Graph, Node, Value
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds, seconds_of
from membound.passes.manager import PassContext, register_pass
from membound.passes.options import pass_options
from membound.passes.pattern import erase_if_dead

# linear op -> (its form with the norm in the prologue, or None: it has none; its form with the norm from the
# producer's statistics). The fused form takes the norm's x, the partials and its weight in front of the linear's
# own inputs (weight, then the rest: cos, sin, bias), and the linear's attributes plus eps
PROLOGUE: dict[str, tuple[Optional[str], str]] = {
    "linear": ("rms_norm_linear", "rms_norm_linear_sumsq"),
    "linear_rope": (None, "rms_norm_linear_rope_sumsq"),
    "linear_glu": (None, "rms_norm_linear_glu_sumsq"),
}
# residual linear -> its form that also writes the partial sums of squares of its output (second result)
STATS: dict[str, str] = {"linear_add": "linear_add_sumsq", "gated_linear_add": "gated_linear_add_sumsq"}
_STATS_FORMS = frozenset(STATS.values())


@dataclass(frozen=True)
class FuseNormLinearOptions:
    """``prologue``: fuse a norm whose input has no producer's statistics into its readers' prologue
    (measured slower on an H200: off)."""

    prologue: bool = False


def _refusal(norm: Node) -> Optional[str]:
    """Why this norm cannot be folded into its readers at all, or None."""
    normed = norm.results[0]
    if len(norm.inputs) != 2:
        return f"%{normed.name} has no weight"
    x, nw = norm.inputs
    if not (x.dtype == nw.dtype == normed.dtype) or nw.rank != 1:
        return f"the norm's input %{x.name} {x.type} and weight %{nw.name} {nw.type} are not one dtype and a row"
    graph = norm.graph
    assert graph is not None
    if any(o is normed for o in graph.outputs):
        return f"%{normed.name} is a graph output: its kernel would stay"
    readers = {id(u): u for u in normed.users}.values()
    others = sorted({u.op for u in readers if u.op not in PROLOGUE or u.inputs[0] is not normed
                     or normed in u.inputs[1:]})
    if others:
        return (f"%{normed.name} has readers other than linears' inputs ({', '.join(others)}; fused forms exist "
                f"for {', '.join(PROLOGUE)}): its kernel would stay")
    return None


def _without_prologue(norm: Node) -> Optional[str]:
    """Why the prologue form cannot take this norm (a reader with no prologue form), or None."""
    ops = sorted({u.op for u in norm.results[0].users if PROLOGUE[u.op][0] is None})
    if ops:
        return f"%{norm.results[0].name} is read by {', '.join(ops)}, which has no prologue form (only statistics)"
    return None


def _stats_of(x: Value) -> Optional[Node]:
    """The producer that writes (or can write) the statistics of ``x``, or None."""
    p = x.producer
    if p is None or x is not p.results[0]:
        return None
    return p if p.op in STATS or p.op in _STATS_FORMS else None


def _fused(lin: Node, x: Value, nw: Value, eps: float, sumsq: Optional[Value]) -> tuple[str, list[Value], dict]:
    """The reader ``lin`` with the norm folded in: from ``sumsq`` (statistics form) or its prologue."""
    prologue, stats = PROLOGUE[lin.op]
    if sumsq is None:
        assert prologue is not None, f"{lin.op} has no prologue form"
        return prologue, [x, nw] + list(lin.inputs[1:]), {**lin.attrs, "eps": eps}
    return stats, [x, sumsq, nw] + list(lin.inputs[1:]), {**lin.attrs, "eps": eps}


def _declines(ctx: PassContext, norm: Node, producer: Optional[Node]) -> Optional[str]:
    """None when fusing pays (with the statistics of ``producer``, or the prologue), else why not."""
    x, nw = norm.inputs
    if ctx.cost is None:
        return beyond_gemv(x, "the linears are not GEMVs")
    dims = decode_dims(ctx, (x,))
    eps = float(norm.attrs["eps"])
    readers = list({id(u): u for u in norm.results[0].users}.values())
    apart = seconds(ctx, norm, dims) + sum(seconds(ctx, u, dims) for u in readers)
    sumsq = None
    if producer is not None and producer.op in STATS:
        # the producer's time as it is against its form that also writes the partials
        apart += seconds(ctx, producer, dims)
        together = seconds_of(ctx, STATS[producer.op], list(producer.inputs), dict(producer.attrs), dims)
        sumsq = _scratch_sumsq(producer)
    elif producer is not None:
        together = 0.0
        sumsq = producer.results[1]
    else:
        together = 0.0
    together += sum(seconds_of(ctx, *_fused(u, x, nw, eps, sumsq), dims) for u in readers)
    if together >= apart:
        form = "from the producer's statistics" if producer is not None else "in the prologue"
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s with the norm {form}"
    return None


def _scratch_sumsq(producer: Node) -> Value:
    """A value of the partials' type for pricing a reader before the producer is rewritten."""
    scratch = Graph("sumsq_type")
    args = [scratch.add_input(f"a{i}", v.type) for i, v in enumerate(producer.inputs)]
    return scratch.call_multi(STATS[producer.op], *args, **dict(producer.attrs))[1]


def _with_stats(graph: Graph, producer: Node) -> Value:
    """The partials of ``producer``'s output: its second result, rewriting it to its ``_sumsq`` form first."""
    if producer.op in _STATS_FORMS:
        return producer.results[1]
    node = graph.create_node(STATS[producer.op], list(producer.inputs), dict(producer.attrs))
    node.meta.update(producer.meta)
    graph.insert_before(producer, node)
    graph.replace_all_uses(producer.results[0], node.results[0])
    graph.erase_node(producer)
    return node.results[1]


def _fold(graph: Graph, norm: Node, sumsq: Optional[Value]) -> None:
    """Replace every reader of ``norm`` by its fused form, then drop the norm."""
    x, nw = norm.inputs
    eps = float(norm.attrs["eps"])
    for lin in list({id(u): u for u in norm.results[0].users}.values()):
        op, inputs, attrs = _fused(lin, x, nw, eps, sumsq)
        node = graph.create_node(op, inputs, attrs)
        node.meta.update(lin.meta)
        graph.insert_before(lin, node)
        graph.replace_all_uses(lin.results[0], node.results[0])
        erase_if_dead(graph, lin)


@register_pass("fuse-norm-linear")
class FuseNormLinear:
    """Fold ``linear(rms_norm(x, w), W)`` into ``rms_norm_linear_sumsq`` (x from a residual linear, which then
    writes the statistics) or, with ``prologue=True``, ``rms_norm_linear``, where the cost model says it pays;
    ``linear_rope(rms_norm(x, w), ...)`` into ``rms_norm_linear_rope_sumsq`` and ``linear_glu(rms_norm(x, w), W)``
    into ``rms_norm_linear_glu_sumsq`` (statistics only)."""

    name = "fuse-norm-linear"
    Options = FuseNormLinearOptions

    def __init__(self, options: Optional[FuseNormLinearOptions] = None, **kwargs: Any) -> None:
        self.options = pass_options(self.name, FuseNormLinearOptions, options, kwargs)

    def __call__(self, graph: Graph, ctx: PassContext) -> bool:
        counts: dict[str, int] = {}
        for norm in list(graph.nodes):
            if norm.graph is not graph or norm.op != "rms_norm":
                continue
            name = norm.results[0].name
            reason = _refusal(norm)
            producer = _stats_of(norm.inputs[0]) if reason is None else None
            if reason is None and producer is None and not self.options.prologue:
                reason = (f"%{norm.inputs[0].name} is not a residual linear's output ({', '.join(STATS)}) and the "
                          f"prologue form is off (measured slower; option prologue=True)")
            if reason is None and producer is None:
                reason = _without_prologue(norm)
            if reason is None:
                reason = _declines(ctx, norm, producer)
            if reason is not None:
                ctx.note(f"%{name} not fused: {reason}")
                continue
            sumsq = _with_stats(graph, producer) if producer is not None else None
            form = "statistics" if sumsq is not None else "prologue"
            counts[form] = counts.get(form, 0) + len({id(u) for u in norm.results[0].users})
            _fold(graph, norm, sumsq)
        if counts:
            ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
        return bool(counts)


fuse_norm_linear = FuseNormLinear()  # the pass with its default options
