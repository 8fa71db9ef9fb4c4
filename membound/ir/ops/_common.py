"""Helpers shared by the op family modules: attribute coercion, shape checks, dtype classes, costs.

Every check raises with the op's name first (``"reshape: ..."``) so that a failing frontend mapping
or pass points at the op and the offending shape or attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NoReturn

import sympy
import torch

from membound.ir.types import TensorType, as_dim, broadcast_shapes, dims_equal, numel, parse_dtype, promote

Shape = tuple[sympy.Expr, ...]

# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def fail(op: str, msg: str, exc: type[Exception] = ValueError) -> NoReturn:
    """Raise ``exc("<op>: <msg>")``."""
    raise exc(f"{op}: {msg}")


def shape_str(shape: Sequence[sympy.Expr]) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


# ---------------------------------------------------------------------------------------------
# dtype classes
# ---------------------------------------------------------------------------------------------


def is_float(dtype: torch.dtype) -> bool:
    return dtype.is_floating_point


def is_bool(dtype: torch.dtype) -> bool:
    return dtype == torch.bool


def is_int(dtype: torch.dtype) -> bool:
    """Integer, not bool."""
    return not dtype.is_floating_point and dtype != torch.bool


def require_float(op: str, t: TensorType, what: str = "input") -> None:
    if not is_float(t.dtype):
        fail(op, f"{what} must be floating point, got {t}", TypeError)


def require_index(op: str, t: TensorType, what: str = "index", allowed: tuple[torch.dtype, ...] = (
        torch.int64, torch.int32)) -> None:
    if t.dtype not in allowed:
        names = "/".join(str(d).replace("torch.", "") for d in allowed)
        fail(op, f"{what} must be an {names} tensor, got {t}", TypeError)


def promote_types(*types: TensorType) -> torch.dtype:
    """torch's result dtype for these operands (0-d operands are weaker)."""
    return promote(*[(t.dtype, t.rank) for t in types])


def attr_dtype(op: str, value: Any, attr: str = "dtype") -> torch.dtype | None:
    """A dtype attribute: a ``torch.dtype`` or its IR name (``"bf16"``); ``None`` passes through."""
    if value is None or isinstance(value, torch.dtype):
        return value
    if isinstance(value, str):
        try:
            return parse_dtype(value)
        except ValueError as e:
            fail(op, f"attribute {attr}={value!r}: {e}", TypeError)
    fail(op, f"attribute {attr} must be a dtype, got {value!r}", TypeError)


# ---------------------------------------------------------------------------------------------
# dims
# ---------------------------------------------------------------------------------------------


def dim_attr(op: str, value: Any, attr: str) -> sympy.Expr:
    """A size-valued attribute (int or sympy expression) as a dim expression."""
    if isinstance(value, (bool, float)) or value is None:
        fail(op, f"attribute {attr} must be an int or dim expression, got {value!r}", TypeError)
    try:
        return as_dim(value)
    except (TypeError, ValueError) as e:
        fail(op, f"attribute {attr}={value!r}: {e}", TypeError)


def shape_attr(op: str, value: Any, attr: str = "shape") -> Shape:
    if not isinstance(value, (tuple, list)):
        fail(op, f"attribute {attr} must be a tuple of dims, got {value!r}", TypeError)
    dims = tuple(dim_attr(op, d, attr) for d in value)
    for d in dims:
        if d.is_negative:
            fail(op, f"attribute {attr}={shape_str(dims)} has a negative dim; -1 must be resolved by the frontend")
    return dims


def norm_dim(op: str, dim: Any, rank: int, attr: str = "dim") -> int:
    """Normalise a possibly negative dim index against ``rank`` (0-d tensors accept 0 and -1)."""
    if isinstance(dim, bool) or not isinstance(dim, int):
        fail(op, f"attribute {attr} must be an int, got {dim!r}", TypeError)
    if rank == 0 and dim in (0, -1):
        return 0
    if not -rank <= dim < rank:
        fail(op, f"attribute {attr}={dim} is out of range for a rank-{rank} input")
    return dim % rank


def norm_dims(op: str, dims: Any, rank: int, attr: str = "dims") -> tuple[int, ...]:
    """A tuple of distinct dims, normalised (an int is taken as a 1-tuple)."""
    if isinstance(dims, int) and not isinstance(dims, bool):
        dims = (dims,)
    if not isinstance(dims, (tuple, list)):
        fail(op, f"attribute {attr} must be a tuple of ints, got {dims!r}", TypeError)
    out = tuple(norm_dim(op, d, rank, attr) for d in dims)
    if len(set(out)) != len(out):
        fail(op, f"attribute {attr}={tuple(dims)} names a dim twice")
    return out


def provably_different(a: sympy.Expr, b: sympy.Expr) -> bool:
    """True when ``a != b`` for every binding of the symbols (e.g. 3 vs 4, S vs S+1, 4*S vs 8*S)."""
    diff = sympy.simplify(a - b)
    return diff.is_zero is False


def require_same_dim(op: str, a: sympy.Expr, b: sympy.Expr, what: str) -> None:
    if provably_different(a, b):
        fail(op, f"{what}: {a} vs {b}")


def broadcast(op: str, *types: TensorType) -> Shape:
    """Broadcast of the operands' shapes, with the op named in the error."""
    try:
        return broadcast_shapes(*[t.shape for t in types])
    except ValueError as e:
        fail(op, f"operand shapes {', '.join(shape_str(t.shape) for t in types)} do not broadcast ({e})")


def same_dtype(op: str, *named: tuple[str, TensorType]) -> torch.dtype:
    """All named operands share one dtype (torch requires it for linear/matmul/index_put...)."""
    first_name, first = named[0]
    for name, t in named[1:]:
        if t.dtype != first.dtype:
            fail(op, f"{name} dtype must equal {first_name} dtype: {t} vs {first}", TypeError)
    return first.dtype


# ---------------------------------------------------------------------------------------------
# references: attrs arrive concretised, but be strict about it
# ---------------------------------------------------------------------------------------------


def ints(values: Sequence[Any]) -> list[int]:
    """Concrete ints from dims (ints or integer sympy numbers); fails loudly on free symbols."""
    return [int(v) for v in values]


# ---------------------------------------------------------------------------------------------
# reduces hooks (the ``reduces`` trait): the dims of input 0 an op mixes
# ---------------------------------------------------------------------------------------------
def reduces_dims(attrs: dict[str, Any], rank: int) -> tuple[int, ...]:
    """``dims`` (empty: all of them): sum, mean, amax, amin."""
    return tuple(sorted({d % rank for d in attrs["dims"]})) if attrs["dims"] else tuple(range(rank))


def reduces_dim(attrs: dict[str, Any], rank: int) -> tuple[int, ...]:
    """``dim`` (None: all of them, as argmax takes it): softmax, cumsum, sort, topk..."""
    if rank == 0:
        return ()
    return tuple(range(rank)) if attrs["dim"] is None else (attrs["dim"] % rank,)


def reduces_last(attrs: dict[str, Any], rank: int) -> tuple[int, ...]:
    """The last ``ndim`` dims (1 when the op has no such attribute): layer_norm, rms_norm."""
    return tuple(range(rank - int(attrs.get("ndim", 1)), rank)) if rank else ()


# ---------------------------------------------------------------------------------------------
# lift hooks (the ``lift`` trait): attrs of an op whose inputs gained a new leading dim of size ``lead``
# ---------------------------------------------------------------------------------------------
_DIM_ATTRS = ("dim", "dim0", "dim1")


def lift_dim(attrs: dict[str, Any], rank_in: int, lead: sympy.Expr) -> dict[str, Any]:
    """Non-negative ``dim``/``dim0``/``dim1`` move right by one (negative ones count from the end)."""
    out = dict(attrs)
    for k in _DIM_ATTRS:
        if k in out and isinstance(out[k], int) and out[k] >= 0:
            out[k] = out[k] + 1
    return out


def lift_reduce_dims(attrs: dict[str, Any], rank_in: int, lead: sympy.Expr) -> dict[str, Any]:
    """``dims`` (empty: all of them) move right by one: the new leading dim is never reduced."""
    out = dict(attrs)
    dims = out["dims"] or tuple(range(rank_in))
    out["dims"] = tuple(d + 1 if d >= 0 else d for d in dims)
    return out


def lift_squeeze_dims(attrs: dict[str, Any], rank_in: int, lead: sympy.Expr) -> dict[str, Any]:
    out = dict(attrs)
    out["dims"] = tuple(d + 1 if d >= 0 else d for d in out["dims"])
    return out


def lift_permute(attrs: dict[str, Any], rank_in: int, lead: sympy.Expr) -> dict[str, Any]:
    """The new dim stays first; the others keep their order."""
    return {**attrs, "dims": (0,) + tuple(d % rank_in + 1 for d in attrs["dims"])}


def lift_shape(attrs: dict[str, Any], rank_in: int, lead: sympy.Expr) -> dict[str, Any]:
    """``shape`` gains the new leading dim (reshape, expand)."""
    return {**attrs, "shape": (lead,) + tuple(attrs["shape"])}


# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------


def no_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Views move nothing: they fold into the indexing of their consumer."""
    return sympy.Integer(0)


def gathered_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], first_index: int) -> sympy.Expr:
    """Gathers read the index tensors (inputs ``first_index`` on) and only the gathered elements (as
    many as the output), then write the output: ``index bytes + 2 * out bytes``, not the whole source."""
    total: sympy.Expr = sympy.Integer(0)
    for t in ins[first_index:]:
        total += t.nbytes()
    return total + 2 * outs[0].nbytes()


__all__ = [
    "Shape",
    "attr_dtype",
    "broadcast",
    "dim_attr",
    "dims_equal",
    "fail",
    "gathered_bytes",
    "ints",
    "is_bool",
    "is_float",
    "is_int",
    "lift_dim",
    "lift_permute",
    "lift_reduce_dims",
    "lift_shape",
    "lift_squeeze_dims",
    "reduces_dim",
    "reduces_dims",
    "reduces_last",
    "no_bytes",
    "norm_dim",
    "norm_dims",
    "numel",
    "promote_types",
    "provably_different",
    "require_float",
    "require_index",
    "require_same_dim",
    "same_dtype",
    "shape_attr",
    "shape_str",
]
