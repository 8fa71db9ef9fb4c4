"""Layout ops: views (reshape, permute, transpose, expand, unsqueeze, squeeze, slice, select, split) and cat.

Views cost 0 FLOPs and 0 bytes: they fold into their consumer's indexing. ``cat`` is a copy and costs
its bytes. Shape attributes are dims (ints or sympy expressions); ``-1`` must already be resolved by
the frontend, and slice bounds are already clamped to ``[0, size]``.
"""

from __future__ import annotations

from typing import Any

import sympy
import torch

from membound.ir.ops import REQUIRED, define_op, zero_flops
from membound.ir.ops._common import (
    dim_attr,
    fail,
    ints,
    lift_dim,
    lift_permute,
    lift_shape,
    lift_squeeze_dims,
    no_bytes,
    norm_dim,
    norm_dims,
    numel,
    promote_types,
    provably_different,
    require_same_dim,
    shape_attr,
    shape_str,
)
from membound.ir.types import TensorType, is_static


def _view(name: str, inputs: tuple[str, ...], attrs: dict[str, Any], infer: Any, reference: Any, doc: str,
          **extra: Any) -> None:
    define_op(name, inputs=inputs, attrs=attrs, kind="view", infer=infer, reference=reference, flops=zero_flops,
              bytes=no_bytes, doc=doc, **extra)


# ---------------------------------------------------------------------------------------------
# reshape / expand: element counts must agree
# ---------------------------------------------------------------------------------------------


def _infer_reshape(x: TensorType, *, shape: Any) -> TensorType:
    new = shape_attr("reshape", shape)
    before, after = x.numel(), numel(new)
    if provably_different(before, after):
        fail("reshape", f"cannot reshape {x} ({before} elements) to {shape_str(new)} ({after} elements)")
    return TensorType(x.dtype, new)


def _reshape(x: torch.Tensor, *, shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(ints(shape))


_view("reshape", ("x",), {"shape": REQUIRED}, _infer_reshape, _reshape,
      "same elements in row-major order under a new shape (no -1)", lift=lift_shape)


def _infer_expand(x: TensorType, *, shape: Any) -> TensorType:
    new = shape_attr("expand", shape)
    if len(new) < x.rank:
        fail("expand", f"target shape {shape_str(new)} has fewer dims than the input {x}")
    lead = len(new) - x.rank
    for i, (have, want) in enumerate(zip(x.shape, new[lead:])):
        if have != 1 and provably_different(have, want):
            fail("expand", f"cannot expand {x} to {shape_str(new)}: dim {i} has size {have}, which is neither 1 "
                 f"nor {want}")
    return TensorType(x.dtype, new)


def _expand(x: torch.Tensor, *, shape: tuple[int, ...]) -> torch.Tensor:
    return x.expand(ints(shape))


_view("expand", ("x",), {"shape": REQUIRED}, _infer_expand, _expand,
      "broadcast view: size-1 dims (and new leading dims) repeat to shape (no -1)", lift=lift_shape)


# ---------------------------------------------------------------------------------------------
# permute / transpose / unsqueeze / squeeze
# ---------------------------------------------------------------------------------------------


def _infer_permute(x: TensorType, *, dims: Any) -> TensorType:
    order = norm_dims("permute", dims, x.rank)
    if len(order) != x.rank:
        fail("permute", f"attribute dims={tuple(dims)} is not a permutation of the {x.rank} dims of {x}")
    return TensorType(x.dtype, tuple(x.shape[i] for i in order))


def _permute(x: torch.Tensor, *, dims: tuple[int, ...]) -> torch.Tensor:
    return x.permute(dims)


_view("permute", ("x",), {"dims": REQUIRED}, _infer_permute, _permute, "dims reordered: result dim i = x dim dims[i]",
      lift=lift_permute)


def _infer_transpose(x: TensorType, *, dim0: int, dim1: int) -> TensorType:
    a, b = norm_dim("transpose", dim0, x.rank, "dim0"), norm_dim("transpose", dim1, x.rank, "dim1")
    shape = list(x.shape)
    if shape:
        shape[a], shape[b] = shape[b], shape[a]
    return TensorType(x.dtype, shape)


def _transpose(x: torch.Tensor, *, dim0: int, dim1: int) -> torch.Tensor:
    return x.transpose(dim0, dim1)


_view("transpose", ("x",), {"dim0": REQUIRED, "dim1": REQUIRED}, _infer_transpose, _transpose,
      "dims dim0 and dim1 swapped", lift=lift_dim)


def _infer_unsqueeze(x: TensorType, *, dim: int) -> TensorType:
    at = norm_dim("unsqueeze", dim, x.rank + 1)
    shape = list(x.shape)
    shape.insert(at, sympy.Integer(1))
    return TensorType(x.dtype, shape)


def _unsqueeze(x: torch.Tensor, *, dim: int) -> torch.Tensor:
    return x.unsqueeze(dim)


_view("unsqueeze", ("x",), {"dim": REQUIRED}, _infer_unsqueeze, _unsqueeze, "a size-1 dim inserted at dim",
      lift=lift_dim)


def _infer_squeeze(x: TensorType, *, dims: Any) -> TensorType:
    axes = norm_dims("squeeze", dims, x.rank)
    for i in axes:
        if x.rank and x.shape[i] != 1:
            fail("squeeze", f"dim {i} of {x} has size {x.shape[i]}, not 1; the frontend must drop dims that are "
                 "not statically 1 (torch would silently keep them)")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))


def _squeeze(x: torch.Tensor, *, dims: tuple[int, ...]) -> torch.Tensor:
    return x.squeeze(tuple(dims)) if dims else x


_view("squeeze", ("x",), {"dims": REQUIRED}, _infer_squeeze, _squeeze,
      "the listed size-1 dims removed (empty = none; every listed dim must be statically 1)", lift=lift_squeeze_dims)


# ---------------------------------------------------------------------------------------------
# slice / select
# ---------------------------------------------------------------------------------------------


def _slice_len(start: sympy.Expr, end: sympy.Expr, step: int) -> sympy.Expr:
    n = sympy.ceiling((end - start) / step)
    if is_static(n):
        return sympy.Integer(max(int(n), 0))
    return n


def _infer_slice(x: TensorType, *, dim: int, start: Any, end: Any, step: int) -> TensorType:
    axis = norm_dim("slice", dim, x.rank)
    if x.rank == 0:
        fail("slice", f"cannot slice a 0-d input {x}")
    lo, hi = dim_attr("slice", start, "start"), dim_attr("slice", end, "end")
    if isinstance(step, bool) or not isinstance(step, int) or step < 1:
        fail("slice", f"attribute step must be a positive int, got {step!r}")
    size = x.shape[axis]
    for attr, v in (("start", lo), ("end", hi)):
        if v.is_negative or (v - size).is_positive:
            fail("slice", f"attribute {attr}={v} is outside [0, {size}] for dim {axis} of {x}; the frontend must "
                 "clamp slice bounds")
    shape = list(x.shape)
    shape[axis] = _slice_len(lo, hi, step)
    return TensorType(x.dtype, shape)


def _slice(x: torch.Tensor, *, dim: int, start: int, end: int, step: int) -> torch.Tensor:
    index = [slice(None)] * x.dim()
    index[dim] = slice(int(start), int(end), int(step))
    return x[tuple(index)]


_view("slice", ("x",), {"dim": REQUIRED, "start": REQUIRED, "end": REQUIRED, "step": 1}, _infer_slice, _slice,
      "x[..., start:end:step, ...] along dim; bounds clamped to [0, size]", lift=lift_dim)


def _infer_select(x: TensorType, *, dim: int, index: Any) -> TensorType:
    if x.rank == 0:
        fail("select", f"cannot select from a 0-d input {x}")
    axis = norm_dim("select", dim, x.rank)
    i = dim_attr("select", index, "index")
    if i.is_negative or (i - x.shape[axis]).is_nonnegative:
        fail("select", f"attribute index={i} is outside [0, {x.shape[axis]}) for dim {axis} of {x}")
    return TensorType(x.dtype, x.shape[:axis] + x.shape[axis + 1:])


def _select(x: torch.Tensor, *, dim: int, index: int) -> torch.Tensor:
    return x.select(dim, int(index))


_view("select", ("x",), {"dim": REQUIRED, "index": REQUIRED}, _infer_select, _select,
      "x[..., index, ...] along dim (rank - 1); index is non-negative", lift=lift_dim)


# ---------------------------------------------------------------------------------------------
# split (view, several results) / cat (copy)
# ---------------------------------------------------------------------------------------------


def _infer_split(x: TensorType, *, dim: int, sizes: Any) -> list[TensorType]:
    axis = norm_dim("split", dim, x.rank)
    if x.rank == 0:
        fail("split", f"cannot split a 0-d input {x}")
    parts = shape_attr("split", sizes, "sizes")
    if not parts:
        fail("split", "attribute sizes must not be empty")
    total: sympy.Expr = sympy.Integer(0)
    for p in parts:
        total += p
    require_same_dim("split", total, x.shape[axis], f"sizes {shape_str(parts)} must add up to dim {axis} of {x}")
    return [TensorType(x.dtype, x.shape[:axis] + (p,) + x.shape[axis + 1:]) for p in parts]


def _split(x: torch.Tensor, *, dim: int, sizes: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.split(x, ints(sizes), dim))


_view("split", ("x",), {"dim": REQUIRED, "sizes": REQUIRED}, _infer_split, _split,
      "consecutive pieces of the given sizes along dim, one result each", lift=lift_dim)


def _infer_cat(*xs: TensorType, dim: int) -> TensorType:
    if not xs:
        fail("cat", "needs at least one input")
    first = xs[0]
    if first.rank == 0:
        fail("cat", f"cannot concatenate 0-d inputs ({first})")
    axis = norm_dim("cat", dim, first.rank)
    total: sympy.Expr = sympy.Integer(0)
    for i, t in enumerate(xs):
        if t.rank != first.rank:
            fail("cat", f"input {i} {t} has rank {t.rank}, input 0 {first} has rank {first.rank}")
        for j, (a, b) in enumerate(zip(t.shape, first.shape)):
            if j != axis:
                require_same_dim("cat", a, b, f"input {i} {t} and input 0 {first} differ at dim {j}")
        total += t.shape[axis]
    shape = list(first.shape)
    shape[axis] = total
    return TensorType(promote_types(*xs), shape)


def _cat(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim)


define_op("cat", inputs=("*xs",), attrs={"dim": REQUIRED}, kind="memory", infer=_infer_cat, reference=_cat,
          flops=zero_flops, doc="inputs joined along dim (dtypes promote as torch.cat)", lift=lift_dim)
