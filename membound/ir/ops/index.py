"""Indexing ops: embedding, advanced ``index``, functional ``index_put``, gather/scatter, index_select,
functional index_copy.

Gathers (embedding, index, gather, index_select) read the index tensors and only the gathered
elements, not the whole source: their bytes are ``index bytes + 2 * output bytes``. Writes
(index_put, scatter, index_copy) are functional: they return a new tensor like ``x`` and cost the
default (every operand read once, the result written once).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import sympy
import torch
import torch.nn.functional as F

from membound.ir.ops import REQUIRED, define_op, zero_flops
from membound.ir.ops._common import (
    broadcast,
    fail,
    gathered_bytes,
    norm_dim,
    provably_different,
    require_index,
    require_same_dim,
    same_dtype,
    shape_str,
)
from membound.ir.types import TensorType


def _gather_cost(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Every op here has its source first and its index tensors after it."""
    return gathered_bytes(ins, outs, first_index=1)

# ---------------------------------------------------------------------------------------------
# embedding: weight[V, D][ids] -> ids.shape + [D]
# ---------------------------------------------------------------------------------------------


def _infer_embedding(weight: TensorType, ids: TensorType) -> TensorType:
    if weight.rank != 2:
        fail("embedding", f"weight must be [V, D], got {weight}")
    require_index("embedding", ids, "ids")
    return TensorType(weight.dtype, ids.shape + (weight.shape[1],))


def _embedding(weight: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.embedding(ids, weight)


define_op("embedding", inputs=("weight", "ids"), kind="index", infer=_infer_embedding, reference=_embedding,
          flops=zero_flops, bytes=_gather_cost, doc="rows of weight[V, D] at ids: ids.shape + [D]", gather=0)


# ---------------------------------------------------------------------------------------------
# index / index_put: torch advanced indexing with integer tensors at `dims`, full slices elsewhere
# ---------------------------------------------------------------------------------------------


def _index_dims(op: str, x: TensorType, indices: Sequence[TensorType], dims: Any) -> tuple[int, ...]:
    if not isinstance(dims, (tuple, list)) or not dims:
        fail(op, f"attribute dims must be a non-empty tuple of ints, got {dims!r}", TypeError)
    axes = tuple(norm_dim(op, d, x.rank, "dims") for d in dims)
    if any(b <= a for a, b in itertools.pairwise(axes)):
        fail(op, f"attribute dims={tuple(dims)} must be strictly increasing (normalised: {axes})")
    if len(indices) != len(axes):
        fail(op, f"got {len(indices)} index tensors for dims={tuple(dims)}; need one per dim", TypeError)
    for i, t in enumerate(indices):
        require_index(op, t, f"index {i}")
    return axes


def _indexed_shape(op: str, x: TensorType, indices: Sequence[TensorType], axes: tuple[int, ...]
                   ) -> tuple[sympy.Expr, ...]:
    """Shape of ``x[idx]``: the broadcast index shape replaces the indexed dims when they are adjacent,
    and goes first when they are not (torch/numpy advanced indexing)."""
    idx_shape = broadcast(op, *indices)
    rest_before = x.shape[:axes[0]]
    rest_after = x.shape[axes[-1] + 1:]
    adjacent = axes == tuple(range(axes[0], axes[-1] + 1))
    if adjacent:
        return rest_before + idx_shape + rest_after
    others = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    return idx_shape + others


def _index_tuple(x: torch.Tensor, indices: Sequence[torch.Tensor], dims: Sequence[int]) -> list[Any | None]:
    out: list[Any | None] = [None] * (max(d % x.dim() for d in dims) + 1)
    for d, t in zip(dims, indices):
        out[d % x.dim()] = t
    return out


def _infer_index(x: TensorType, *indices: TensorType, dims: Any) -> TensorType:
    axes = _index_dims("index", x, indices, dims)
    return TensorType(x.dtype, _indexed_shape("index", x, indices, axes))


def _index(x: torch.Tensor, *indices: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    parts = _index_tuple(x, indices, dims)
    return x[tuple(slice(None) if p is None else p for p in parts)]


define_op("index", inputs=("x", "*indices"), attrs={"dims": REQUIRED}, kind="index", infer=_infer_index,
          reference=_index, flops=zero_flops, bytes=_gather_cost,
          doc="x[..., i0, ..., i1, ...]: integer index tensors at dims (strictly increasing), full slices elsewhere",
          gather=0)


def _infer_index_put(x: TensorType, values: TensorType, *indices: TensorType, dims: Any,
                     accumulate: bool) -> TensorType:
    axes = _index_dims("index_put", x, indices, dims)
    same_dtype("index_put", ("x", x), ("values", values))
    target = _indexed_shape("index_put", x, indices, axes)
    if values.rank > len(target):
        fail("index_put", f"values {values} has more dims than the indexed region {shape_str(target)} of {x}")
    for v, t in zip(values.shape[::-1], target[::-1]):
        if v != 1 and provably_different(v, t):
            fail("index_put", f"values {values} do not broadcast to the indexed region {shape_str(target)} of {x}")
    if not isinstance(accumulate, bool):
        fail("index_put", f"attribute accumulate must be a bool, got {accumulate!r}", TypeError)
    return TensorType(x.dtype, x.shape)


def _index_put(x: torch.Tensor, values: torch.Tensor, *indices: torch.Tensor, dims: tuple[int, ...],
               accumulate: bool) -> torch.Tensor:
    return torch.ops.aten.index_put.default(x, _index_tuple(x, indices, dims), values, accumulate)


define_op("index_put", inputs=("x", "values", "*indices"), attrs={"dims": REQUIRED, "accumulate": False},
          kind="index", infer=_infer_index_put, reference=_index_put, flops=zero_flops,
          doc="a copy of x with x[idx] = values (or += when accumulate); functional")


# ---------------------------------------------------------------------------------------------
# gather / scatter along one dim
# ---------------------------------------------------------------------------------------------


def _check_along(op: str, x: TensorType, index: TensorType, axis: int, what: str) -> None:
    """torch: index.size(d) <= x.size(d) for every d != dim (checked where provable)."""
    if index.rank != x.rank:
        fail(op, f"index {index} must have the rank of {what} {x}")
    for d, (i, s) in enumerate(zip(index.shape, x.shape)):
        if d != axis and (i - s).is_positive:
            fail(op, f"index {index} is larger than {what} {x} at dim {d}")


def _infer_gather(x: TensorType, index: TensorType, *, dim: int) -> TensorType:
    axis = norm_dim("gather", dim, x.rank)
    require_index("gather", index)
    _check_along("gather", x, index, axis, "x")
    return TensorType(x.dtype, index.shape)


def _gather(x: torch.Tensor, index: torch.Tensor, *, dim: int) -> torch.Tensor:
    return torch.gather(x, dim, index)


define_op("gather", inputs=("x", "index"), attrs={"dim": REQUIRED}, kind="index", infer=_infer_gather,
          reference=_gather, flops=zero_flops, bytes=_gather_cost,
          doc="out[..., i, ...] = x[..., index[..., i, ...], ...] along dim; shaped like index", gather=0)


_SCATTER_REDUCE = (None, "add")


def _infer_scatter(x: TensorType, index: TensorType, src: TensorType, *, dim: int,
                   reduce: str | None) -> TensorType:
    axis = norm_dim("scatter", dim, x.rank)
    require_index("scatter", index, allowed=(torch.int64,))
    same_dtype("scatter", ("x", x), ("src", src))
    if reduce not in _SCATTER_REDUCE:
        fail("scatter", f"attribute reduce={reduce!r}; expected one of {_SCATTER_REDUCE}")
    _check_along("scatter", x, index, axis, "x")
    _check_along("scatter", src, index, -1, "src")
    return TensorType(x.dtype, x.shape)


def _scatter(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor, *, dim: int,
             reduce: str | None) -> torch.Tensor:
    if reduce == "add":
        return torch.scatter_add(x, dim, index, src)
    return torch.scatter(x, dim, index, src)


define_op("scatter", inputs=("x", "index", "src"), attrs={"dim": REQUIRED, "reduce": None}, kind="index",
          infer=_infer_scatter, reference=_scatter, flops=zero_flops,
          doc="a copy of x with x[..., index[...], ...] = src[...] along dim (reduce='add': +=); functional")


# ---------------------------------------------------------------------------------------------
# index_select / index_copy: a 1-D index along one dim
# ---------------------------------------------------------------------------------------------


def _index_len(op: str, index: TensorType) -> sympy.Expr:
    if index.rank > 1:
        fail(op, f"index must be 1-D (or 0-d), got {index}")
    return index.shape[0] if index.rank == 1 else sympy.Integer(1)


def _infer_index_select(x: TensorType, index: TensorType, *, dim: int) -> TensorType:
    axis = norm_dim("index_select", dim, x.rank)
    require_index("index_select", index)
    shape = list(x.shape)
    if shape:
        shape[axis] = _index_len("index_select", index)
    return TensorType(x.dtype, shape)


def _index_select(x: torch.Tensor, index: torch.Tensor, *, dim: int) -> torch.Tensor:
    return torch.index_select(x, dim, index)


define_op("index_select", inputs=("x", "index"), attrs={"dim": REQUIRED}, kind="index", infer=_infer_index_select,
          reference=_index_select, flops=zero_flops, bytes=_gather_cost,
          doc="the slices of x at index along dim", gather=0)


def _infer_index_copy(x: TensorType, index: TensorType, src: TensorType, *, dim: int) -> TensorType:
    axis = norm_dim("index_copy", dim, x.rank)
    require_index("index_copy", index, allowed=(torch.int64,))
    same_dtype("index_copy", ("x", x), ("src", src))
    n = _index_len("index_copy", index)
    if src.rank != x.rank:
        fail("index_copy", f"src {src} must have the rank of x {x}")
    for d, (a, b) in enumerate(zip(src.shape, x.shape)):
        want = n if d == axis else b
        require_same_dim("index_copy", a, want, f"src {src} must be x {x} with dim {axis} = len(index) ({n})")
    return TensorType(x.dtype, x.shape)


def _index_copy(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor, *, dim: int) -> torch.Tensor:
    return torch.index_copy(x, dim, index, src)


define_op("index_copy", inputs=("x", "index", "src"), attrs={"dim": REQUIRED}, kind="index",
          infer=_infer_index_copy, reference=_index_copy, flops=zero_flops,
          doc="a copy of x with the slices at index along dim replaced by src; functional")
