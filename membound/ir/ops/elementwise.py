"""Elementwise ops: unary math, binary arithmetic/comparison/logic, ``where``, ``clamp``, ``cast``, ``gelu``,
``softplus``.

Most ops are declared from two tables (``_UNARY``, ``_BINARY``): a row gives the op name, the torch
function that is its reference, the dtype rule and the FLOPs per output element. Dtype rules follow
torch so that a captured graph keeps the dtypes eager torch produced:

- ``float``: integer/bool inputs compute in f32 (torch's int-to-float promotion: ``exp(i64) -> f32``)
- ``numeric``: like x; bool is rejected (torch rejects ``-bool`` and ``relu(bool)``)
- ``float_only``: x must be floating (``silu``/``gelu`` have no integer kernels)
- ``to_bool``: result is bool (comparisons, logical ops)
- ``integral``: operands must be integer or bool (bitwise ops)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from membound.ir.ops import REQUIRED, define_op, per_output
from membound.ir.ops._common import attr_dtype, broadcast, fail, is_bool, is_float, promote_types
from membound.ir.types import TensorType

# ---------------------------------------------------------------------------------------------
# dtype rules
# ---------------------------------------------------------------------------------------------


def _apply_rule(op: str, rule: str, dtype: torch.dtype, operands: str) -> torch.dtype:
    """The result dtype of ``op`` under ``rule`` given the (promoted) operand dtype."""
    if rule == "float":
        return dtype if is_float(dtype) else torch.float32
    if rule == "numeric":
        if is_bool(dtype):
            fail(op, f"does not take bool operands ({operands}); use logical_not/logical ops for masks", TypeError)
        return dtype
    if rule == "float_only":
        if not is_float(dtype):
            fail(op, f"needs floating-point operands, got {operands}", TypeError)
        return dtype
    if rule == "to_bool":
        return torch.bool
    if rule == "integral":
        if is_float(dtype):
            fail(op, f"needs integer or bool operands, got {operands}", TypeError)
        return dtype
    if rule == "same":
        return dtype
    raise AssertionError(f"unknown dtype rule {rule!r}")


# ---------------------------------------------------------------------------------------------
# unary ops: (name, reference, dtype rule, FLOPs per element, doc)
# ---------------------------------------------------------------------------------------------
_UNARY: list[tuple[str, Callable[[torch.Tensor], torch.Tensor], str, int, str]] = [
    ("neg", torch.neg, "numeric", 1, "-x"),
    ("abs", torch.abs, "numeric", 1, "|x|"),
    ("relu", torch.relu, "numeric", 1, "max(x, 0)"),
    ("floor", torch.floor, "numeric", 1, "round toward -inf (integers unchanged)"),
    ("exp", torch.exp, "float", 4, "e**x"),
    ("log", torch.log, "float", 4, "natural log"),
    ("expm1", torch.expm1, "float", 4, "e**x - 1 (exact near 0)"),
    ("log1p", torch.log1p, "float", 4, "log(1 + x) (exact near 0)"),
    ("sqrt", torch.sqrt, "float", 4, "square root"),
    ("rsqrt", torch.rsqrt, "float", 4, "1 / sqrt(x)"),
    ("sin", torch.sin, "float", 4, "sine"),
    ("cos", torch.cos, "float", 4, "cosine"),
    ("tanh", torch.tanh, "float", 4, "hyperbolic tangent"),
    ("sigmoid", torch.sigmoid, "float", 4, "1 / (1 + e**-x)"),
    ("erf", torch.erf, "float", 4, "error function"),
    ("reciprocal", torch.reciprocal, "float", 1, "1 / x"),
    ("silu", F.silu, "float_only", 4, "x * sigmoid(x)"),
    ("logical_not", torch.logical_not, "to_bool", 1, "x == 0, as bool"),
    ("bitwise_not", torch.bitwise_not, "integral", 1, "~x (bool: logical not)"),
]


def _unary_infer(name: str, rule: str) -> Callable[..., TensorType]:
    def infer(x: TensorType) -> TensorType:
        return TensorType(_apply_rule(name, rule, x.dtype, str(x)), x.shape)

    return infer


for _name, _fn, _rule, _flops, _doc in _UNARY:
    define_op(_name, inputs=("x",), kind="elementwise", infer=_unary_infer(_name, _rule), reference=_fn,
              flops=per_output(_flops), doc=_doc)


# gelu: the one unary op with an attribute
_GELU_MODES = ("none", "tanh")


def _infer_gelu(x: TensorType, *, approximate: str) -> TensorType:
    if approximate not in _GELU_MODES:
        fail("gelu", f"attribute approximate={approximate!r}; expected one of {_GELU_MODES}")
    return TensorType(_apply_rule("gelu", "float_only", x.dtype, str(x)), x.shape)


def _gelu(x: torch.Tensor, *, approximate: str) -> torch.Tensor:
    return F.gelu(x, approximate=approximate)


define_op("gelu", inputs=("x",), attrs={"approximate": "none"}, kind="elementwise", infer=_infer_gelu,
          reference=_gelu, flops=per_output(8), doc="Gaussian error linear unit (erf form, or tanh approximation)")


# softplus: log(1 + e**(beta x)) / beta, x itself where beta x > threshold (torch's)
def _infer_softplus(x: TensorType, *, beta: float, threshold: float) -> TensorType:
    for name, v in (("beta", beta), ("threshold", threshold)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail("softplus", f"attribute {name} must be a number, got {v!r}", TypeError)
    if beta == 0:
        fail("softplus", "attribute beta must not be 0")
    return TensorType(_apply_rule("softplus", "float_only", x.dtype, str(x)), x.shape)


def _softplus(x: torch.Tensor, *, beta: float, threshold: float) -> torch.Tensor:
    return F.softplus(x, beta=beta, threshold=threshold)


define_op("softplus", inputs=("x",), attrs={"beta": 1.0, "threshold": 20.0}, kind="elementwise",
          infer=_infer_softplus, reference=_softplus, flops=per_output(8),
          doc="log(1 + exp(beta * x)) / beta; x where beta * x > threshold")


# ---------------------------------------------------------------------------------------------
# binary ops: (name, reference, dtype rule, FLOPs per element, doc, commutative); operands broadcast
# ---------------------------------------------------------------------------------------------
_BINARY: list[tuple[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str, int, str, bool]] = [
    ("add", torch.add, "same", 1, "a + b", True),
    ("sub", torch.sub, "numeric", 1, "a - b", False),
    ("mul", torch.mul, "same", 1, "a * b", True),
    ("pow", torch.pow, "same", 4, "a ** b", False),
    ("maximum", torch.maximum, "same", 1, "elementwise max (NaN propagates)", True),
    ("minimum", torch.minimum, "same", 1, "elementwise min (NaN propagates)", True),
    ("remainder", torch.remainder, "same", 2, "a mod b with the sign of b (Python %)", False),
    ("eq", torch.eq, "to_bool", 1, "a == b", True),
    ("ne", torch.ne, "to_bool", 1, "a != b", True),
    ("lt", torch.lt, "to_bool", 1, "a < b", False),
    ("le", torch.le, "to_bool", 1, "a <= b", False),
    ("gt", torch.gt, "to_bool", 1, "a > b", False),
    ("ge", torch.ge, "to_bool", 1, "a >= b", False),
    ("logical_and", torch.logical_and, "to_bool", 1, "a != 0 and b != 0", True),
    ("logical_or", torch.logical_or, "to_bool", 1, "a != 0 or b != 0", True),
    ("bitwise_and", torch.bitwise_and, "integral", 1, "a & b", True),
    ("bitwise_or", torch.bitwise_or, "integral", 1, "a | b", True),
]


def _binary_infer(name: str, rule: str) -> Callable[..., TensorType]:
    def infer(a: TensorType, b: TensorType) -> TensorType:
        shape = broadcast(name, a, b)
        dtype = _apply_rule(name, rule, promote_types(a, b), f"{a} and {b}")
        return TensorType(dtype, shape)

    return infer


for _name, _fn, _rule, _flops, _doc, _commutative in _BINARY:
    define_op(_name, inputs=("a", "b"), kind="elementwise", infer=_binary_infer(_name, _rule), reference=_fn,
              flops=per_output(_flops), doc=_doc, commutative=_commutative)


# div: true division promotes integers to f32 unless a rounding mode is given (torch.div)
_ROUNDING_MODES = (None, "floor", "trunc")


def _infer_div(a: TensorType, b: TensorType, *, rounding_mode: str | None) -> TensorType:
    if rounding_mode not in _ROUNDING_MODES:
        fail("div", f"attribute rounding_mode={rounding_mode!r}; expected one of {_ROUNDING_MODES}")
    shape = broadcast("div", a, b)
    rule = "float" if rounding_mode is None else "numeric"
    return TensorType(_apply_rule("div", rule, promote_types(a, b), f"{a} and {b}"), shape)


def _div(a: torch.Tensor, b: torch.Tensor, *, rounding_mode: str | None) -> torch.Tensor:
    return torch.div(a, b, rounding_mode=rounding_mode)


define_op("div", inputs=("a", "b"), attrs={"rounding_mode": None}, kind="elementwise", infer=_infer_div,
          reference=_div, flops=per_output(1), doc="a / b; rounding_mode 'floor' or 'trunc' rounds the quotient")


# ---------------------------------------------------------------------------------------------
# where, clamp, cast
# ---------------------------------------------------------------------------------------------


def _infer_where(cond: TensorType, a: TensorType, b: TensorType) -> TensorType:
    if not is_bool(cond.dtype):
        fail("where", f"cond must be bool, got {cond}", TypeError)
    return TensorType(promote_types(a, b), broadcast("where", cond, a, b))


define_op("where", inputs=("cond", "a", "b"), kind="elementwise", infer=_infer_where, reference=torch.where,
          flops=per_output(1), doc="a where cond else b (all three broadcast)")


def _check_bound(value: Any, attr: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        fail("clamp", f"attribute {attr} must be None or a python int/float, got {value!r}", TypeError)


def _infer_clamp(x: TensorType, *, min: float | None, max: float | None) -> TensorType:
    _check_bound(min, "min")
    _check_bound(max, "max")
    if min is None and max is None:
        fail("clamp", "needs at least one of the attributes min, max")
    if is_bool(x.dtype):
        fail("clamp", f"does not take bool input, got {x}", TypeError)
    # torch: an integer tensor clamped to a float bound computes in f32
    float_bound = isinstance(min, float) or isinstance(max, float)
    dtype = torch.float32 if float_bound and not is_float(x.dtype) else x.dtype
    return TensorType(dtype, x.shape)


def _clamp(x: torch.Tensor, *, min: float | None, max: float | None) -> torch.Tensor:
    return torch.clamp(x, min=min, max=max)


define_op("clamp", inputs=("x",), attrs={"min": None, "max": None}, kind="elementwise", infer=_infer_clamp,
          reference=_clamp, flops=per_output(2), doc="min(max(x, min), max); either bound may be None")


def _infer_cast(x: TensorType, *, dtype: Any) -> TensorType:
    return TensorType(attr_dtype("cast", dtype), x.shape)


def _cast(x: torch.Tensor, *, dtype: Any) -> torch.Tensor:
    return x.to(attr_dtype("cast", dtype))


define_op("cast", inputs=("x",), attrs={"dtype": REQUIRED}, kind="elementwise", infer=_infer_cast,
          reference=_cast, flops=per_output(1), doc="x converted to dtype (same dtype allowed: canonicalize drops it)")
