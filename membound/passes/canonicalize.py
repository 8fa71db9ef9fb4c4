"""canonicalize: rewrite equivalent spellings to one canonical form, so later passes match one shape.

```
// before: Hugging Face LlamaRMSNorm as torch.export spells it
graph @f(%x: bf16[B, S, 64]) params(%g: bf16[64]) {
  %0 = cast(%x) {dtype=f32} : f32[B, S, 64]
  %1 = constant() {value=2, dtype=i64} : i64[]
  %2 = pow(%0, %1) : f32[B, S, 64]
  %3 = mean(%2) {dims=[-1], keepdim=true, dtype=none} : f32[B, S, 1]
  %4 = constant() {value=1e-05, dtype=f32} : f32[]
  %5 = add(%3, %4) : f32[B, S, 1]
  %6 = rsqrt(%5) : f32[B, S, 1]
  %7 = mul(%0, %6) : f32[B, S, 64]
  %8 = cast(%7) {dtype=bf16} : bf16[B, S, 64]
  %9 = mul(%g, %8) : bf16[B, S, 64]
  return %9
}
// after
graph @f(%x: bf16[B, S, 64]) params(%g: bf16[64]) {
  %9 = rms_norm(%x, %g) {eps=1e-05} : bf16[B, S, 64]
  return %9
}
```

The rules (``RULES`` below, each with a ``# before -> after`` comment) fold view chains and identity
views, drop no-op casts, apply algebraic identities with constants, normalise matmul forms to
``linear`` (and a matmul over a reduction of length one to ``mul``) and recognise ``rms_norm``. Every
rule keeps the exact numerics of the graph it rewrites: an ``rms_norm`` chain computed in low precision
without the f32 casts is left alone, because ``rms_norm`` computes in f32. No cost question: each rule
removes ops or keeps their number. Rules run to a fixpoint (``pattern.rewrite_to_fixpoint``); the nodes
they orphan are erased.
"""

from __future__ import annotations

from typing import Optional

import torch

from membound.ir import Graph, Node, Value, all_ops, get_op
from membound.ir.types import dims_equal, promote
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import (
    Alt,
    Any_,
    Const,
    Match,
    Opt,
    Pat,
    Rule,
    is_2d_param,
    rewrite_to_fixpoint,
    static_int,
)

_RESHAPE_LIKE = ("reshape", "squeeze", "unsqueeze")  # views that keep the row-major element order
_PERMUTE_LIKE = ("permute", "transpose")
_LOW_FLOAT = (torch.float16, torch.bfloat16)


def _same_shape(a: Value, b: Value) -> bool:
    return a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def _norm_dim(d: int, rank: int) -> int:
    return d % rank if rank else 0


def _permutation(node: Node) -> tuple[int, ...]:
    """The permutation a permute/transpose applies: result dim i is input dim perm[i]."""
    rank = node.inputs[0].rank
    if node.op == "permute":
        return tuple(_norm_dim(d, rank) for d in node.attrs["dims"])
    perm = list(range(rank))
    a, b = _norm_dim(node.attrs["dim0"], rank), _norm_dim(node.attrs["dim1"], rank)
    perm[a], perm[b] = perm[b], perm[a]
    return tuple(perm)


# ---------------------------------------------------------------------------------------------
# views
# ---------------------------------------------------------------------------------------------
def reshape_of_reshape(m: Match) -> Optional[Value]:
    x = m["x"]
    if _same_shape(m.value, x):
        return x
    return m.builder.call("reshape", x, shape=m.root.attrs["shape"])


def squeeze_unsqueeze_round_trip(m: Match) -> Optional[Value]:
    # only size-1 dims moved, so equal shapes mean equal tensors
    return m["x"] if _same_shape(m.value, m["x"]) else None


def view_to_same_shape(m: Match) -> Optional[Value]:
    x, node = m["x"], m.root
    if not _same_shape(m.value, x):
        return None
    if node.op == "slice":
        size = x.shape[_norm_dim(node.attrs["dim"], x.rank)]
        if node.attrs["start"] != 0 or (node.attrs["step"] != 1 and size != 1):
            return None
    return x


def identity_permutation(m: Match) -> Optional[Value]:
    perm = _permutation(m.root)
    return m["x"] if perm == tuple(range(len(perm))) else None


def compose_permutations(m: Match) -> Optional[Value]:
    inner = _permutation(m["inner"].producer)  # type: ignore[union-attr]
    outer = _permutation(m.root)
    composed = tuple(inner[i] for i in outer)
    if composed == tuple(range(len(composed))):
        return m["x"]
    return m.builder.call("permute", m["x"], dims=composed)


# ---------------------------------------------------------------------------------------------
# slices moved towards the data they read (static bounds only)
# ---------------------------------------------------------------------------------------------
def _static_slice(node: Node) -> Optional[tuple[int, int, int]]:
    """``(dim, start, length)`` of a step-1 slice whose bounds and sliced dim are literals, else None (a slice
    along a symbolic dim, ``S`` in a prefill, is left to the passes that read it: insert-kv-cache's windows)."""
    x = node.inputs[0]
    d = _norm_dim(node.attrs["dim"], x.rank)
    start, size = static_int(node.attrs["start"]), static_int(x.shape[d])
    length = static_int(node.results[0].shape[d])
    if node.attrs["step"] != 1 or start is None or size is None or length is None:
        return None
    return d, start, length


def slice_of_slice(m: Match) -> Optional[Value]:
    outer, inner = m.root, m["inner"].producer
    assert inner is not None
    a, b = _static_slice(outer), _static_slice(inner)
    if a is None or b is None or a[0] != b[0]:
        return None
    d, start = a[0], a[1] + b[1]
    return m.builder.call("slice", m["x"], dim=d, start=start, end=start + a[2], step=1)


def slice_of_cat(m: Match) -> Optional[Value]:
    """``slice(cat(x0, x1, ...))`` along the cat's dim reads only the pieces it overlaps: the one piece (sliced
    or whole), or the cat of the overlapped parts. The same elements: exact. At a decode step a short
    convolution's window ``cat(past, x, zeros)`` is read by three shifted slices of one position each; after
    this each reads its own piece and the chain computing the convolution fuses into one kernel."""
    node, cat = m.root, m["cat"].producer
    assert cat is not None
    sl = _static_slice(node)
    if sl is None or _norm_dim(cat.attrs["dim"], cat.results[0].rank) != sl[0]:
        return None
    d, start, length = sl
    sizes = [static_int(v.shape[d]) for v in cat.inputs]
    if any(n is None for n in sizes):
        return None
    pieces: list[Value] = []
    offset = 0
    for v, n in zip(cat.inputs, sizes):
        assert n is not None
        lo, hi = max(start, offset), min(start + length, offset + n)
        if lo < hi:
            whole = lo == offset and hi == offset + n
            pieces.append(v if whole else m.builder.call("slice", v, dim=d, start=lo - offset, end=hi - offset,
                                                         step=1))
        offset += n
    if len(pieces) == len(cat.inputs):
        return None  # every piece is read: no narrower form
    out = pieces[0] if len(pieces) == 1 else m.builder.call("cat", *pieces, dim=cat.attrs["dim"])
    return out if out.type.equivalent(m.value.type) else None


def _sliced_operand(m: Match, v: Value, rank: int, d: int, start: int, length: int) -> Value:
    """Operand ``v`` of a broadcasting op of result rank ``rank``, sliced like the result along ``d``."""
    k = d - (rank - v.rank)
    if k < 0 or dims_equal(v.shape[k], 1):
        return v  # broadcast along d: every position reads the same element
    return m.builder.call("slice", v, dim=k, start=start, end=start + length, step=1)


def slice_through_pointwise(m: Match) -> Optional[Value]:
    """``slice(f(a, b, ...))`` -> ``f(slice(a), slice(b), ...)`` for an elementwise ``f`` (or a ``gather``, which
    reads its index at the result's own position) when every user of ``f`` is a slice along the same dim and
    together they read no more positions than ``f`` computes: ``f`` is then computed only where it is read,
    each element by the same arithmetic (exact). Moves a decode step's one-position reads of a windowed
    computation (a short convolution's shifted products) up to its inputs, so the chain is one kernel of the
    step's shape instead of kernels of the window's shape."""
    node, f = m.root, m["f"].producer
    assert f is not None
    sl = _static_slice(node)
    if sl is None or len(f.results) != 1:
        return None
    d, start, length = sl
    total = 0
    for u in f.results[0].users:
        other = _static_slice(u) if u.op == "slice" and u.inputs[0] is f.results[0] else None
        if other is None or other[0] != d:
            return None
        total += other[2]
    if total > static_int(f.results[0].shape[d]):  # type: ignore[operator]  (static: _static_slice checked)
        return None
    rank = f.results[0].rank
    if f.op == "gather":
        x, index = f.inputs
        g = _norm_dim(f.attrs["dim"], x.rank)
        x = x if g == d else m.builder.call("slice", x, dim=d, start=start, end=start + length, step=1)
        out = m.builder.call("gather", x, _sliced_operand(m, index, rank, d, start, length), **f.attrs)
    else:
        ins = [_sliced_operand(m, v, rank, d, start, length) for v in f.inputs]
        out = m.builder.call(f.op, *ins, **f.attrs)
    return out if out.type.equivalent(m.value.type) else None


# ---------------------------------------------------------------------------------------------
# casts and algebraic identities
# ---------------------------------------------------------------------------------------------
def cast_to_same_dtype(m: Match) -> Optional[Value]:
    return m["x"] if m["x"].dtype == m.value.dtype else None


# (from, to) pairs where every value of ``from`` survives ``to`` exactly, so casting back is identity
_LOSSLESS = {
    torch.float16: (torch.float32, torch.float64), torch.bfloat16: (torch.float32, torch.float64),
    torch.float32: (torch.float64,), torch.int8: (torch.int16, torch.int32, torch.int64),
    torch.uint8: (torch.int16, torch.int32, torch.int64), torch.int16: (torch.int32, torch.int64),
    torch.int32: (torch.int64,),
}


def cast_round_trip(m: Match) -> Optional[Value]:
    x, wide = m["x"], m["wide"]
    if m.value.dtype == x.dtype and wide.dtype in _LOSSLESS.get(x.dtype, ()):
        return x
    return None


def identity_if_same_type(m: Match) -> Optional[Value]:
    # x * 1, x + 0 ... are x only when broadcasting and promotion leave x's type alone
    return m["x"] if m.value.type.equivalent(m["x"].type) else None


# ---------------------------------------------------------------------------------------------
# matmul forms
# ---------------------------------------------------------------------------------------------
def matmul_to_linear(m: Match) -> Optional[Value]:
    x, w = m["x"], m["w"]
    if _permutation(m["wt"].producer) != (1, 0):  # type: ignore[arg-type]
        return None
    if x.dtype != w.dtype or not x.dtype.is_floating_point:
        return None
    return m.builder.call("linear", x, w)


def matmul_k1_to_mul(m: Match) -> Optional[Value]:
    """A matmul over a reduction of length one is an outer product: ``a[..., M, 1] @ b[..., 1, N]`` is
    ``a * b`` broadcast, the same one product per output (rounded once either way), batch dims broadcast alike.
    As an elementwise op it fuses with its neighbours instead of taking a GEMM launch (Hugging Face's rotary
    embedding spells ``inv_freq x positions`` so in some versions: a cuBLAS launch per step)."""
    a, b = m["a"], m["b"]
    if a.dtype != b.dtype:  # (the IR's matmul takes operands of rank >= 2 only: no vector forms here)
        return None
    if not (dims_equal(a.shape[-1], 1) and dims_equal(b.shape[-2], 1)):
        return None
    out = m.builder.call("mul", a, b)
    return out if out.type.equivalent(m.value.type) else None


def fold_bias_into_linear(m: Match) -> Optional[Value]:
    lin, b = m["lin"], m["b"]
    w = lin.producer.inputs[1]  # type: ignore[union-attr]
    if b.rank != 1 or not dims_equal(b.shape[0], w.shape[0]) or b.dtype != lin.dtype:
        return None
    return m.builder.call("linear", m["x"], w, b)


# ---------------------------------------------------------------------------------------------
# gathers
# ---------------------------------------------------------------------------------------------
_BCAST = "b"     # a dim broadcast from size one (expand): every index along it sees the same element
_UNIT = "1"      # a dim of size one


def _broadcast_layout(v: Value) -> tuple[Value, list[object]]:
    """``v`` as views of a base value: ``(base, labels)``, one label per dim of ``v``: ``k`` (the int) when the
    dim is base's axis ``k`` whole, ``_BCAST`` when it is a broadcast, ``_UNIT`` for size one. Follows expand
    and the order-keeping views (reshape / squeeze / unsqueeze) where they only add or drop dims of size one;
    any other view (or producer) is the base."""
    node = v.producer
    if node is not None and node.op in _RESHAPE_LIKE + ("expand",):
        base, inner = _broadcast_layout(node.inputs[0])
        x = node.inputs[0]
        out: list[object]
        if node.op == "expand":
            lead = v.rank - x.rank
            out = [_UNIT if dims_equal(d, 1) else _BCAST for d in v.shape[:lead]]
            for lab, a, b in zip(inner, x.shape, v.shape[lead:]):
                out.append(lab if dims_equal(a, b) else _BCAST if dims_equal(a, 1) else None)
            if None not in out:
                return base, out
        else:
            kept_in = [(lab, d) for lab, d in zip(inner, x.shape) if lab != _UNIT]
            kept_out = [i for i, d in enumerate(v.shape) if not dims_equal(d, 1)]
            if len(kept_in) == len(kept_out) and all(dims_equal(d, v.shape[i])
                                                     for (_, d), i in zip(kept_in, kept_out)):
                out = [_UNIT] * v.rank
                for (lab, _), i in zip(kept_in, kept_out):
                    out[i] = lab
                return base, out
    return v, [_UNIT if dims_equal(d, 1) else k for k, d in enumerate(v.shape)]


def gather_of_broadcast_to_index(m: Match) -> Optional[Value]:
    """``gather(x, idx, dim=d)`` where x is a table ``T`` broadcast along the dims before ``d`` and idx holds
    positions ``p`` broadcast along the dims after ``d`` picks whole rows: ``out[..., s, j] = T[p[..., s], j]``,
    i.e. ``T[p]`` (an ``index`` at dim 0, reshaped). Hugging Face GPT-J before transformers 5.2x spells its
    rotary lookup so (``gather(table.repeat(B, 1, 1), 1, position_ids[..., None].repeat(1, 1, D))``); as an
    index, insert-kv-cache lifts it like an embedding. Same elements, no arithmetic: exact."""
    x, idx = m["x"], m["idx"]
    d = _norm_dim(m.root.attrs["dim"], x.rank)
    table, tlab = _broadcast_layout(x)
    pos, plab = _broadcast_layout(idx)
    # x: dims before d broadcast (or one), dims from d on exactly the table's axes
    if table.rank != x.rank - d or tlab[d:] != list(range(table.rank)) or any(
            t not in (_UNIT, _BCAST) for t in tlab[:d]):
        return None
    # idx: p's axes in order up to and including d (d its last), broadcast after, sized as x there
    axes = [k for k, n in enumerate(pos.shape) if not dims_equal(n, 1)]   # p's own unit dims carry no label
    if not axes or plab[d] != axes[-1] or [t for t in plab[:d + 1] if t != _UNIT] != axes:
        return None
    if any(t not in (_UNIT, _BCAST) for t in plab[d + 1:]) or not all(
            dims_equal(a, b) for a, b in zip(idx.shape[d + 1:], x.shape[d + 1:])):
        return None
    rows = m.builder.call("index", table, pos, dims=(0,))
    out = m.builder.call("reshape", rows, shape=tuple(m.value.shape))
    return out if out.type.equivalent(m.value.type) else None

# ---------------------------------------------------------------------------------------------
# rms_norm
# ---------------------------------------------------------------------------------------------
def _number(v: Value) -> Optional[float]:
    value = v.producer.attrs["value"] if v.producer is not None else None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def form_rms_norm(m: Match) -> Optional[Value]:
    """``[cast f32] -> x*x -> mean(-1, keepdim) -> + eps -> rsqrt -> x * r -> [cast back]`` -> rms_norm(x)."""
    xf, mean = m["xf"], m["mean"].producer
    assert mean is not None
    if xf.dtype != torch.float32 or xf.rank == 0:
        return None
    if tuple(_norm_dim(d, xf.rank) for d in mean.attrs["dims"]) != (xf.rank - 1,):
        return None
    eps = _number(m["eps"])
    if eps is None:
        return None
    cast_back = m.get("cast_back")
    src = xf.producer
    if src is not None and src.op == "cast" and src.inputs[0].dtype in _LOW_FLOAT:
        x = src.inputs[0]
        if cast_back is None or cast_back.dtype != x.dtype:
            if not any(u.op == "cast" and u.results[0].dtype == x.dtype for u in m.value.users):
                m.note(f"not formed at %{m.value.name}: the f32 chain over {x.type} is not cast back to "
                       f"{x.type.dtype}, and rms_norm rounds to the input dtype before the weight")
            return None
        return m.builder.call("rms_norm", x, eps=eps)
    if cast_back is not None:
        return None  # the inner mul was (or will be) rewritten; the cast stays around the rms_norm
    return m.builder.call("rms_norm", xf, eps=eps)


def fold_rms_norm_weight(m: Match) -> Optional[Value]:
    x, w = m["x"], m["w"]
    if w.rank != 1 or not dims_equal(w.shape[0], x.shape[-1]):
        return None
    if promote((x.dtype, x.rank), (w.dtype, 1)) != m.value.dtype:
        return None
    return m.builder.call("rms_norm", x, w, eps=m["norm"].producer.attrs["eps"])  # type: ignore[union-attr]


_XF = Any_("xf")
_SQUARE = Alt(Pat("pow", _XF, Const(2, splat=False)), Pat("mul", _XF, _XF))
_MEAN = Pat("mean", _SQUARE, name="mean", attrs={"keepdim": True, "dtype": None})
_INV_RMS = Pat("rsqrt", Pat("add", _MEAN, Const(name="eps", splat=False)))
_RMS_CHAIN = Opt("cast", Pat("mul", _XF, _INV_RMS), name="cast_back")

_POINTWISE = tuple(sorted(o for o in all_ops() if get_op(o).kind == "elementwise")) + ("gather",)

RULES: list[Rule] = [
    # reshape(reshape|squeeze|unsqueeze(x)) -> reshape(x), or x when the shape comes back
    Rule(Pat("reshape", Pat(_RESHAPE_LIKE, Any_("x"))), reshape_of_reshape),
    # unsqueeze(squeeze(x)) -> x, squeeze(unsqueeze(x)) -> x    when the shape comes back
    Rule(Pat(("squeeze", "unsqueeze"), Pat(("squeeze", "unsqueeze"), Any_("x"))), squeeze_unsqueeze_round_trip),
    # reshape|expand|squeeze|slice(x) to x's own shape -> x
    Rule(Pat(("reshape", "expand", "squeeze", "slice"), Any_("x")), view_to_same_shape),
    # cat(x) of one input -> x
    Rule(Pat("cat", Any_("x")), view_to_same_shape, name="cat-of-one"),
    # slice(slice(x)) along one dim -> slice(x)      (static bounds)
    Rule(Pat("slice", Pat("slice", Any_("x"), name="inner")), slice_of_slice),
    # slice(cat(x0, x1, ...)) along the cat's dim -> the pieces it overlaps, sliced      (static sizes)
    Rule(Pat("slice", Pat("cat", Any_(), ..., name="cat")), slice_of_cat),
    # slice(f(a, b)) -> f(slice(a), slice(b))      (f elementwise or a gather; every user of f a slice along that
    # dim, together no wider than f; static bounds)
    Rule(Pat("slice", Pat(_POINTWISE, Any_(), ..., name="f")), slice_through_pointwise),
    # permute(x, identity) -> x;  transpose(x, d, d) -> x
    Rule(Pat(_PERMUTE_LIKE, Any_("x")), identity_permutation),
    # permute|transpose(permute|transpose(x)) -> permute(x, composed), or x when they cancel
    Rule(Pat(_PERMUTE_LIKE, Pat(_PERMUTE_LIKE, Any_("x"), name="inner")), compose_permutations),
    # cast(x) to x's own dtype -> x
    Rule(Pat("cast", Any_("x")), cast_to_same_dtype),
    # cast(cast(x, wider), x.dtype) -> x      (a lossless round trip, e.g. bf16 -> f32 -> bf16)
    Rule(Pat("cast", Pat("cast", Any_("x"), name="wide")), cast_round_trip),
    # mul(x, 1) -> x      (either operand order)
    Rule(Pat("mul", Any_("x"), Const(1)), identity_if_same_type, name="mul-by-one"),
    # add(x, 0) -> x      (either operand order)
    Rule(Pat("add", Any_("x"), Const(0)), identity_if_same_type, name="add-zero"),
    # sub(x, 0) -> x
    Rule(Pat("sub", Any_("x"), Const(0)), identity_if_same_type, name="sub-zero"),
    # div(x, 1) -> x      (true division only: floor(x / 1) is not x)
    Rule(Pat("div", Any_("x"), Const(1), attrs={"rounding_mode": None}), identity_if_same_type, name="div-by-one"),
    # logical_and(x, true) -> x;  logical_or(x, false) -> x      (either operand order, x bool)
    Rule(Pat("logical_and", Any_("x"), Const(True)), identity_if_same_type, name="and-true"),
    Rule(Pat("logical_or", Any_("x"), Const(False)), identity_if_same_type, name="or-false"),
    # matmul(x, transpose(w, -1, -2)) -> linear(x, w)      (w a 2-D param; matmul(x, w) stays matmul)
    Rule(Pat("matmul", Any_("x"), Pat(_PERMUTE_LIKE, Any_("w", is_2d_param), name="wt")), matmul_to_linear),
    # matmul(a[..., M, 1], b[..., 1, N]) -> mul(a, b)      (a reduction of length one: an outer product)
    Rule(Pat("matmul", Any_("a"), Any_("b")), matmul_k1_to_mul, name="matmul-k1-to-mul"),
    # gather(x = T broadcast before dim, idx = p broadcast after dim) -> reshape(index(T, p))      (whole rows)
    Rule(Pat("gather", Any_("x"), Any_("idx")), gather_of_broadcast_to_index, name="gather-rows-to-index"),
    # add(linear(x, w), b[N]) -> linear(x, w, b)      (the linear has no other user)
    Rule(Pat("add", Pat("linear", Any_("x"), Any_("w"), name="lin", one_use=True), Any_("b")),
         fold_bias_into_linear),
    # [cast(x, f32) ->] x*x -> mean(-1, keepdim) -> + eps -> rsqrt -> x * r [-> cast back]  ->  rms_norm(x)
    Rule(_RMS_CHAIN, form_rms_norm),
    # mul(rms_norm(x), w[D]) -> rms_norm(x, w)      (either operand order; the rms_norm has no other user)
    Rule(Pat("mul", Pat("rms_norm", Any_("x"), name="norm", one_use=True), Any_("w")), fold_rms_norm_weight),
]


@register_pass("canonicalize")
def canonicalize(graph: Graph, ctx: PassContext) -> bool:
    """Apply ``RULES`` to a fixpoint; the log says which rules fired and why some declined."""
    notes: list[str] = []
    counts: dict[str, int] = {}
    changed = rewrite_to_fixpoint(graph, RULES, notes=notes, counts=counts)
    for line in notes:
        ctx.note(line)
    if counts:
        ctx.note("fired " + ", ".join(f"{name} x{n}" for name, n in sorted(counts.items())))
    return changed
