"""Ops emitted as index arithmetic (the ``at`` writer of their lowering entry): sources, computed from
the index alone (``constant``, ``full``, ``arange``), and ops that read their inputs at other positions
than their own (``cat``: each piece at its local index; the gathers ``index``, ``embedding`` and ``gather``: at
positions read from their index tensors).

A writer gets the emitter, the node and the index it is read at, and returns the value there.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

import sympy
import torch

from membound.backends.triton.bounds import device_asserts
from membound.backends.triton.indexing import ZERO, Index, broadcast_index, view_input_index
from membound.backends.triton.values import TL_DTYPE, Val, compute_dtype, convert, literal, literal_code
from membound.ir.graph import Node, Value
from membound.ir.types import broadcast_shapes

if TYPE_CHECKING:
    from membound.backends.triton.kernel import KernelEmitter

AtWriter = Callable[["KernelEmitter", Node, Index], Val]


def emit_source(em: "KernelEmitter", node: Node, idx: Index) -> Val:
    a = node.attrs
    dtype = node.results[0].dtype
    if node.op in ("constant", "full"):
        return literal(a["value"], dtype)
    # arange: start + i * step
    start, step = a["start"], a["step"]
    if isinstance(start, float) or isinstance(step, float) or (dtype.is_floating_point and idx[0] != 0):
        i = em.code(idx[0])
        text = f"tl.cast({i}, tl.float32)" if not em.is_vector(idx[0]) else f"{i}.to(tl.float32)"
        if step != 1:
            text = f"{text} * {literal_code(step, torch.float32)}"
        if start != 0:
            text = f"{literal_code(start, torch.float32)} + {text}"
        if compute_dtype(dtype) != torch.float32:
            text = f"({text}).to({TL_DTYPE[compute_dtype(dtype)]})"
        return em.assign(text, dtype, em.is_vector(idx[0]), f"%{node.results[0].name} arange")
    e = sympy.sympify(start) + idx[0] * int(step)
    if e.is_Integer:
        return literal(int(e), dtype)
    text = f"tl.cast({em.code(e)}, {TL_DTYPE[compute_dtype(dtype)]})"
    return em.assign(text, dtype, em.is_vector(e), f"%{node.results[0].name} arange")


def _piece_indices(em: "KernelEmitter", node: Node, idx: Index) -> list[tuple[sympy.Expr, Index]]:
    """``cat``'s pieces at ``idx``: (the end of the piece along the cat dim, the piece's own index, its local
    position clamped into range so that no lane reads out of bounds)."""
    out = node.results[0]
    d = node.attrs["dim"] % out.rank
    last = len(node.inputs) - 1
    pieces: list[tuple[sympy.Expr, Index]] = []
    offset: sympy.Expr = ZERO
    for k, v in enumerate(node.inputs):
        size = v.shape[d]
        local: sympy.Expr = idx[d] - offset
        if k > 0:
            local = sympy.Max(local, 0)
        if k < last:
            local = sympy.Min(local, size - 1)
        if not local.is_Integer and not local.is_Symbol:
            local = em.new_index("c", em.code(local), em.is_vector(local))
        sub = list(idx)
        sub[d] = local
        offset = offset + size
        pieces.append((offset, broadcast_index(v.shape, out.shape, tuple(sub))))
    return pieces


def _origin_at(em: "KernelEmitter", v: Value, idx: Index) -> tuple[Value, Index]:
    """The value ``v`` at ``idx`` reads, followed up through views and through the kernel's cats whose pieces all
    read one value (:func:`_merged_cat`): that value and the index it is read at."""
    while True:
        node = v.producer
        if node is None:
            return v, idx
        if em.facts.kind(node) == "view":
            v, idx = node.inputs[0], tuple(sympy.sympify(i) for i in view_input_index(node, v, idx))
            continue
        if node.op == "cat" and id(node) in em.members:
            merged = _merged_cat(em, node, idx)
            if merged is not None:
                v, idx = merged
                continue
        return v, idx


def _merged_cat(em: "KernelEmitter", node: Node, idx: Index,
                pieces: Optional[list[tuple[sympy.Expr, Index]]] = None) -> Optional[tuple[Value, Index]]:
    """A ``cat`` whose pieces are all views (or such cats) of one value ``x``: ``x`` and the index it is read at,
    chosen per dim by ``tl.where`` on the cat dim from the pieces' own indices. Reading ``x`` once at the chosen
    index gives each element the value its piece holds (the same arithmetic: exact), where reading each piece
    computes ``x`` once per piece and selects: Qwen3.5's interleaved mrope table, nested cats of strided slices of
    ``cos(freqs)``, evaluated ``cos`` some 20 times an element (a 63 us kernel on an H100, code-size bound)."""
    d = node.attrs["dim"] % node.results[0].rank
    pieces = pieces if pieces is not None else _piece_indices(em, node, idx)
    origins = [_origin_at(em, v, at) for v, (_, at) in zip(node.inputs, pieces)]
    base = origins[0][0]
    if any(o[0] is not base for o in origins) or any(len(o[1]) != base.rank for o in origins):
        return None
    if idx[d].is_Integer:  # the piece may be known here (sizes symbolic in S may leave it open): its index as it is
        known = [sympy.sympify(idx[d] < end) for end, _ in pieces[:-1]]
        if all(c in (sympy.true, sympy.false) for c in known):
            k = next((k for k, c in enumerate(known) if c == sympy.true), len(pieces) - 1)
            return base, origins[k][1]
    chosen: list[sympy.Expr] = []
    for j in range(base.rank):
        exprs = [o[1][j] for o in origins]
        if all(e == exprs[0] for e in exprs):
            chosen.append(exprs[0])
            continue
        text = em.code(exprs[-1])
        vector = em.is_vector(exprs[-1])
        for (end, _), e in zip(reversed(pieces[:-1]), reversed(exprs[:-1])):
            text = f"tl.where({em.code(idx[d])} < {em.code(end)}, {em.code(e)}, {text})"
            vector = vector or em.is_vector(e) or em.is_vector(idx[d])
        chosen.append(em.new_index("m", text, vector))
    return base, tuple(chosen)


def emit_cat(em: "KernelEmitter", node: Node, idx: Index) -> Val:
    """``cat`` at ``idx``: every piece is read at its local index clamped into range (so no lane
    reads out of bounds), and ``tl.where`` picks the piece the index falls in. Pieces that are all views of
    one value computed in the kernel are read once instead, at an index chosen the same way (:func:`_merged_cat`)."""
    out = node.results[0]
    d = node.attrs["dim"] % out.rank
    at = _piece_indices(em, node, idx)
    merged = _merged_cat(em, node, idx, at)
    if merged is not None and merged[0].producer is not None and (
            id(merged[0].producer) in em.members or em.facts.kind(merged[0].producer) == "source"):
        val = em.emit(*merged)
        return em.assign(convert(val, out.dtype), out.dtype, val.vector or any(em.is_vector(i) for i in idx),
                         f"%{node.results[0].name} = {node.op}, one read of %{merged[0].name}")
    pieces: list[tuple[sympy.Expr, Val]] = [(end, em.emit(v, i)) for v, (end, i) in zip(node.inputs, at)]
    result = convert(pieces[-1][1], out.dtype)
    vector = pieces[-1][1].vector
    for end, val in reversed(pieces[:-1]):
        result = f"tl.where({em.code(idx[d])} < {em.code(end)}, {convert(val, out.dtype)}, {result})"
        vector = vector or val.vector or em.is_vector(idx[d])
    return em.assign(result, out.dtype, vector, f"%{node.results[0].name} = {node.op}")


def _clamped(em: "KernelEmitter", node: Node, v: Value, iv: Val, n_dim: sympy.Expr, negatives: bool,
             wrap: bool) -> sympy.Expr:
    """The index variable of ``x`` read at index value ``iv`` (from ``%v``) along a dim of ``n_dim`` entries:
    negative values counted from the end (``wrap``; valid where ``negatives``: the debug assert's range), then
    clamped into range."""
    code = convert(iv, v.dtype)
    if iv.literal is not None:
        return (sympy.Integer(int(iv.literal) % int(n_dim)) if n_dim.is_Integer else sympy.Integer(int(iv.literal)))
    n = em.code(n_dim)
    if device_asserts():
        first = f"-{n}" if negatives else "0"
        em.lines.append(f"tl.device_assert(~mask | (({code} >= {first}) & ({code} < {n})), "
                          f"\"{node.op} %{node.results[0].name}: index out of range [{first}, {n}) "
                          f"in %{v.name} (MEMBOUND_DEBUG=bounds)\")")
    # clamped: a wrong index (the host check and the debug asserts report it) never reads out of bounds
    wrapped = f"tl.where({code} < 0, {code} + {n}, {code})" if wrap else code
    wrapped = f"tl.minimum(tl.maximum({wrapped}, 0), {n} - 1)"
    if v.dtype != torch.int64:  # narrow ids widen with the rest of the index math
        wrapped = f"{wrapped}.to(INDEX_DTYPE)"
    return em.new_index("g", wrapped, iv.vector)


def emit_gather(em: "KernelEmitter", node: Node, idx: Index) -> Val:
    """``index(x, *indices) {dims}`` / ``embedding(weight, ids)`` at ``idx``: read the index tensors at
    their (broadcast) position, then read ``x`` there (negative indices count from the end for ``index``).
    ``gather(x, index) {dim}`` (torch.gather): ``x`` at ``idx`` with dim ``dim`` replaced by ``index`` at ``idx``."""
    if node.op == "gather":
        x, v = node.inputs
        d = node.attrs["dim"] % x.rank
        at = list(idx)
        at[d] = _clamped(em, node, v, em.emit(v, idx), x.shape[d], negatives=False, wrap=False)
        return em.emit(x, tuple(at))
    if node.op == "embedding":
        x, indices, dims = node.inputs[0], [node.inputs[1]], (0,)
    else:
        x, indices = node.inputs[0], list(node.inputs[1:])
        dims = tuple(d % x.rank for d in node.attrs["dims"])
    k = max(v.rank for v in indices)
    bshape = broadcast_shapes(*[v.shape for v in indices])
    adjacent = dims == tuple(range(dims[0], dims[0] + len(dims)))
    pos = dims[0] if adjacent else 0
    gathered = idx[pos:pos + k]
    rest = iter(tuple(idx[:pos]) + tuple(idx[pos + k:]))
    x_index: list[sympy.Expr] = []
    for d in range(x.rank):
        if d not in dims:
            x_index.append(next(rest))
            continue
        v = indices[dims.index(d)]
        iv = em.emit(v, broadcast_index(v.shape, bshape, gathered))
        x_index.append(_clamped(em, node, v, iv, x.shape[d], negatives=node.op != "embedding", wrap=True))
    return em.emit(x, tuple(x_index))
