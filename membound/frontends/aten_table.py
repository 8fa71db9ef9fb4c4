"""The one ATen -> membound IR table.

``TABLE`` maps an ATen overload (``torch.ops.aten.linear.default``; a string ``"ns.name.overload"``
for ops of libraries that may not be loaded, like ``transformers.grouped_mm_fallback``) to a rule
``rule(t, a)``: ``t`` is the :class:`~membound.frontends.translate.Translator` (``t.emit`` appends
IR ops), ``a`` the op's arguments by schema name with FX nodes already translated. A rule returns
the IR value(s) for the node's result, a sympy dim for a symbolic int, or None for nodes with no
IR (asserts). One rule serves a family: all binary elementwise ops share ``_binary`` with the IR op
name bound, all ``.to``-style conversions share ``_convert``.

In-place overloads (``aten.div_.Tensor``) need no entry: the translator uses the functional twin's
rule and re-binds the mutated tensor. Result types are checked against torch's after every rule, so
rules may lean on ``t.out_type()`` (torch's recorded result type) for what torch already resolved:
``-1`` in view sizes, split sizes, the shape of ``empty_like``.
"""

from __future__ import annotations

import math
import operator
from functools import partial
from typing import Any, Callable, Optional, Sequence

import sympy
import torch

import membound.frontends.ssm  # noqa: F401  (registers torch.ops.membound.linear_scan)
from membound.frontends.translate import Args, DataScalar, Translator, symbolic_value
from membound.ir.graph import Value
from membound.ir.types import dims_equal, is_static

aten = torch.ops.aten
Rule = Callable[[Translator, Args], Any]
TABLE: dict[Any, Rule] = {}

_INT64_MAX = 2 ** 63 - 1


def rule(*targets: Any) -> Callable[[Rule], Rule]:
    """Register ``fn`` as the rule for every target given."""

    def register(fn: Rule) -> Rule:
        for target in targets:
            TABLE[target] = fn
        return fn

    return register


def family(targets: dict[Any, str], fn: Callable[..., Any]) -> None:
    """Register ``partial(fn, ir_op)`` for each ``target: ir_op``."""
    for target, ir_op in targets.items():
        TABLE[target] = partial(fn, ir_op)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def _operands(t: Translator, x: Any, y: Any) -> tuple[Value, Value]:
    """Both operands as IR values; a Python scalar becomes a constant typed against the other side."""
    if isinstance(x, Value):
        return x, t.tensor(y, like=x)
    if isinstance(y, Value):
        return t.tensor(x, like=y), y
    out = t.out_type().dtype
    return t.emit("constant", value=_as(x, out), dtype=out), t.emit("constant", value=_as(y, out), dtype=out)


def _as(v: Any, dtype: torch.dtype) -> Any:
    """A Python scalar converted to the Python type of ``dtype`` (a ``constant``/``full`` value)."""
    if isinstance(v, sympy.Basic):
        raise TypeError(f"symbolic value {v} cannot be a constant")
    if dtype == torch.bool:
        return bool(v)
    return float(v) if dtype.is_floating_point else int(v)


def _scaled(t: Translator, v: Value, factor: Any) -> Value:
    """``v * factor`` unless factor is 1 (``alpha``/``beta`` of add/addmm)."""
    if factor is None or factor == 1:
        return v
    return t.emit("mul", v, t.tensor(factor, like=v))


def _dtype_attr(t: Translator, x: Value) -> Optional[torch.dtype]:
    """The ``dtype`` attr of a reduction: torch's result dtype when it differs from the IR's default
    (the input's dtype for floats, i64 for integers: ``cumsum(i32, dtype=i32)`` keeps its i32)."""
    out = t.out_types()[0].dtype
    default = x.dtype if x.dtype.is_floating_point else torch.int64
    return out if out != default else None


def _dims(d: Any) -> tuple[int, ...]:
    if d is None:
        return ()
    return tuple(d) if isinstance(d, (list, tuple)) else (d,)


def _norm(dim: int, rank: int) -> int:
    return dim % rank if rank else 0


def _clamp_index(t: Translator, i: Any, size: sympy.Expr, default: sympy.Expr) -> sympy.Expr:
    """A slice bound normalised like Python: None -> default, negatives count from the end, clamped to
    [0, size] (symbolically with Min/Max only where torch's ranges cannot prove the bound in range)."""
    if i is None:
        return default
    if isinstance(i, int) and i >= _INT64_MAX // 2:
        return size
    e = t.dim(i)
    if is_static(e) and int(e) < 0:
        e = size + e
    if is_static(e) and is_static(size):
        return sympy.Integer(min(max(int(e), 0), int(size)))
    if not t.provably_nonneg(e):
        e = sympy.Max(0, e)
    if not t.provably_nonneg(size - e):
        e = sympy.Min(e, size)
    return e


# ---------------------------------------------------------------------------------------------
# elementwise
# ---------------------------------------------------------------------------------------------
def _binary(ir_op: str, t: Translator, a: Args) -> Value:
    """``a (op) b`` for Tensor and Scalar overloads; ``alpha`` scales the second operand (add/sub)."""
    x, y = _operands(t, a.self, a.other)
    if a.get("alpha") not in (None, 1):
        y = _scaled(t, y, a.alpha)
    return t.emit(ir_op, x, y)


family({aten.add.Tensor: "add", aten.add.Scalar: "add", aten.sub.Tensor: "sub", aten.sub.Scalar: "sub",
        aten.mul.Tensor: "mul", aten.mul.Scalar: "mul", aten.div.Tensor: "div", aten.div.Scalar: "div",
        aten.maximum.default: "maximum", aten.minimum.default: "minimum", aten.max.other: "maximum",
        aten.min.other: "minimum", aten.remainder.Tensor: "remainder", aten.remainder.Scalar: "remainder",
        aten.eq.Tensor: "eq", aten.eq.Scalar: "eq", aten.ne.Tensor: "ne", aten.ne.Scalar: "ne",
        aten.lt.Tensor: "lt", aten.lt.Scalar: "lt", aten.le.Tensor: "le", aten.le.Scalar: "le",
        aten.gt.Tensor: "gt", aten.gt.Scalar: "gt", aten.ge.Tensor: "ge", aten.ge.Scalar: "ge",
        # torch.greater & co. (aliases the exported graph keeps as written)
        aten.greater.Tensor: "gt", aten.greater.Scalar: "gt", aten.greater_equal.Tensor: "ge",
        aten.greater_equal.Scalar: "ge", aten.less.Tensor: "lt", aten.less.Scalar: "lt",
        aten.less_equal.Tensor: "le", aten.less_equal.Scalar: "le", aten.not_equal.Tensor: "ne",
        aten.not_equal.Scalar: "ne",
        # torch.multiply / subtract / divide / true_divide (Gemma 3n writes torch.multiply)
        aten.multiply.Tensor: "mul", aten.multiply.Scalar: "mul", aten.subtract.Tensor: "sub",
        aten.subtract.Scalar: "sub", aten.divide.Tensor: "div", aten.divide.Scalar: "div",
        aten.true_divide.Tensor: "div", aten.true_divide.Scalar: "div",
        aten.logical_and.default: "logical_and", aten.logical_or.default: "logical_or",
        aten.bitwise_and.Tensor: "bitwise_and", aten.bitwise_and.Scalar: "bitwise_and",
        aten.bitwise_or.Tensor: "bitwise_or", aten.bitwise_or.Scalar: "bitwise_or"}, _binary)


def _bitwise(logical: str, bitwise: str, t: Translator, a: Args) -> Value:
    """``&``/``|``: logical on bools, bitwise on integers (the IR keeps the two apart)."""
    x, y = _operands(t, a.self, a.other)
    return t.emit(logical if x.dtype == y.dtype == torch.bool else bitwise, x, y)


for _target in (aten.__and__.Tensor, aten.__and__.Scalar):
    TABLE[_target] = partial(_bitwise, "logical_and", "bitwise_and")
for _target in (aten.__or__.Tensor, aten.__or__.Scalar):
    TABLE[_target] = partial(_bitwise, "logical_or", "bitwise_or")


@rule(aten.rsub.Tensor, aten.rsub.Scalar)
def _rsub(t: Translator, a: Args) -> Value:
    """``other - alpha * self``."""
    x, y = _operands(t, a.self, a.other)
    return t.emit("sub", y, _scaled(t, x, a.alpha))


@rule(aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div_mode(t: Translator, a: Args) -> Value:
    x, y = _operands(t, a.self, a.other)
    return t.emit("div", x, y, rounding_mode=a.rounding_mode)


@rule(aten.floor_divide.default, aten.floor_divide.Scalar)
def _floor_divide(t: Translator, a: Args) -> Value:
    x, y = _operands(t, a.self, a.other)
    return t.emit("div", x, y, rounding_mode="floor")


@rule(aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor)
def _pow(t: Translator, a: Args) -> Value:
    x, y = _operands(t, a.self, a.exponent)
    return t.emit("pow", x, y)


@rule(aten.pow.Scalar)
def _pow_scalar_base(t: Translator, a: Args) -> Value:
    x, y = _operands(t, a.self, a.exponent)
    return t.emit("pow", x, y)


def _unary(ir_op: str, t: Translator, a: Args) -> Value:
    return t.emit(ir_op, a.self)


family({getattr(aten, n).default: n for n in (
    "neg", "exp", "log", "sqrt", "rsqrt", "abs", "sin", "cos", "tanh", "sigmoid", "relu", "silu", "erf",
    "reciprocal", "floor", "logical_not", "bitwise_not", "expm1", "log1p")}, _unary)
family({aten.negative.default: "neg", aten.absolute.default: "abs"}, _unary)  # torch.negative / absolute


@rule(aten.square.default)
def _square(t: Translator, a: Args) -> Value:
    """``x.square()`` -> ``mul(x, x)``: the same single rounding (Persimmon's and Nemotron's squared ReLU); a
    bool x counts as int64, as torch's result does."""
    x = a.self if a.self.dtype != torch.bool else t.cast(a.self, torch.int64)
    return t.emit("mul", x, x)


@rule(aten.gelu.default)
def _gelu(t: Translator, a: Args) -> Value:
    return t.emit("gelu", a.self, approximate=a.approximate)


@rule(aten.softplus.default)
def _softplus(t: Translator, a: Args) -> Value:
    """``F.softplus(x, beta, threshold)`` (Doge's and Apertus' activations, gated delta nets' step sizes)."""
    return t.emit("softplus", a.self, beta=float(a.beta), threshold=float(a.threshold))


@rule(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def _where(t: Translator, a: Args) -> Value:
    x, y = _operands(t, a.self, a.other)
    return t.emit("where", a.condition, x, y)


@rule(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(t: Translator, a: Args) -> Value:
    """``where(mask, value, self)``; the fill value takes self's dtype, as in torch."""
    x = a.self
    fill = t.cast(a.value, x.dtype) if isinstance(a.value, Value) else \
        t.emit("constant", value=_as(a.value, x.dtype), dtype=x.dtype)
    return t.emit("where", a.mask, fill, x)


@rule(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(t: Translator, a: Args) -> Value:
    x = t.cast(a.self, t.out_type().dtype)
    return t.emit("clamp", x, min=a.get("min"), max=a.get("max"))


@rule(aten.clamp.Tensor)
def _clamp_tensor(t: Translator, a: Args) -> Value:
    x = a.self
    if a.min is not None:
        x = t.emit("maximum", x, a.min)
    if a.max is not None:
        x = t.emit("minimum", x, a.max)
    return x


# ---------------------------------------------------------------------------------------------
# dtype / device conversions and no-ops
# ---------------------------------------------------------------------------------------------
@rule(aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten.to.other, aten._to_copy.default,
      aten.type_as.default)
def _convert(t: Translator, a: Args) -> Value:
    """A cast when the dtype changes, else nothing (device moves are the backend's business)."""
    return t.cast(a.self, t.out_type().dtype)


@rule(aten.contiguous.default, aten.clone.default, aten.alias.default, aten.detach.default,
      aten.lift_fresh_copy.default)
def _identity(t: Translator, a: Args) -> Value:
    return a.self


@rule(aten.dropout.default, aten.feature_dropout.default, aten.alpha_dropout.default)
def _dropout(t: Translator, a: Args) -> Value:
    if a.train and a.p:
        raise t.unsupported(f"dropout with p={a.p} in training mode; membound compiles for inference: call "
                            "model.eval() before capturing", fallback=False)
    return a.input


@rule(aten._assert_tensor_metadata.default, aten.sym_constrain_range.default,
      aten.sym_constrain_range_for_size.default, aten._assert_async.default, aten._assert_async.msg)
def _drop(t: Translator, a: Args) -> None:
    return None


_drop.ignores_args = True  # type: ignore[attr-defined]


@rule(aten._assert_scalar.default)
def _assert_scalar(t: Translator, a: Args) -> None:
    """A runtime assert over sizes: no IR, but the capture only matches calls where it holds."""
    cond = a.self
    if isinstance(cond, sympy.Basic) and cond is not sympy.true:
        t.guards.append(cond)
    return None


# ---------------------------------------------------------------------------------------------
# symbolic ints: expressions used in attrs, never IR values
# ---------------------------------------------------------------------------------------------
for _target in (aten.sym_size.int, aten.sym_numel.default, aten.sym_stride.int, operator.mul, operator.add,
                operator.sub, operator.floordiv, operator.truediv, operator.mod, operator.neg, operator.pow,
                operator.eq, operator.ne, operator.lt, operator.le, operator.gt, operator.ge, torch.sym_max,
                torch.sym_min, torch.sym_not, torch.sym_int, torch.sym_float, math.ceil, math.floor):
    TABLE[_target] = symbolic_value


@rule(aten.item.default, aten._local_scalar_dense.default)
def _item(t: Translator, a: Args) -> Any:
    """``x.item()``: the value itself when x is a constant (Dynamo passes Python floats as 0-d tensors and
    reads them back with ``.item()``), else a number only known at run time, an error if used."""
    x = a.self
    if isinstance(x, Value) and x.producer is not None and x.producer.op == "constant":
        return x.producer.attrs["value"]
    return DataScalar(f".item() at {t.source(t.node)}")


@rule(operator.getitem)
def _getitem(t: Translator, a: Args) -> Any:
    """One result of a multi-result op (``topk(...)[1]``, ``split(...)[0]``)."""
    return a.arg0[a.arg1]


# ---------------------------------------------------------------------------------------------
# reductions and normalisation
# ---------------------------------------------------------------------------------------------
def _reduce(ir_op: str, t: Translator, a: Args) -> Value:
    attrs: dict[str, Any] = {"dims": _dims(a.get("dim")), "keepdim": bool(a.get("keepdim") or False)}
    if ir_op in ("sum", "mean"):
        attrs["dtype"] = _dtype_attr(t, a.self)
    return t.emit(ir_op, a.self, **attrs)


family({aten.sum.dim_IntList: "sum", aten.sum.default: "sum", aten.mean.dim: "mean", aten.mean.default: "mean",
        aten.amax.default: "amax", aten.amin.default: "amin", aten.max.default: "amax", aten.min.default: "amin"},
       _reduce)


def _any_all(ir_op: str, t: Translator, a: Args) -> Value:
    """``any`` / ``all`` over dims (all of them when none are named): a count of the true (``any``: > 0) or false
    (``all``: == 0) elements, in int64."""
    x = a.self
    truth = x if x.dtype == torch.bool else t.emit("ne", *_operands(t, x, 0))
    if ir_op == "all":
        truth = t.emit("eq", *_operands(t, truth, False))
    dims = _dims(a.get("dim"))
    count = t.emit("sum", t.cast(truth, torch.int64), dims=dims, keepdim=bool(a.get("keepdim") or False))
    return t.emit("gt" if ir_op == "any" else "eq", *_operands(t, count, 0))


family({aten.any.dim: "any", aten.any.dims: "any", aten.any.default: "any", aten.all.dim: "all",
        aten.all.dims: "all", aten.all.default: "all"}, _any_all)


@rule(aten.argmax.default)
def _argmax(t: Translator, a: Args) -> Value:
    x = a.self
    if a.dim is None:  # over all elements, as a flat index
        flat = t.emit("argmax", t.emit("reshape", x, shape=(x.type.numel(),)), dim=0, keepdim=False)
        return t.emit("reshape", flat, shape=(1,) * x.rank) if a.keepdim else flat
    return t.emit("argmax", x, dim=a.dim, keepdim=a.keepdim)


@rule(aten.max.dim)
def _max_dim(t: Translator, a: Args) -> list[Value]:
    return [t.emit("amax", a.self, dims=(a.dim,), keepdim=a.keepdim),
            t.emit("argmax", a.self, dim=a.dim, keepdim=a.keepdim)]


def _softmax(ir_op: str, t: Translator, a: Args) -> Value:
    return t.emit(ir_op, a.self, dim=a.dim, dtype=_dtype_attr(t, a.self))


family({aten.softmax.int: "softmax", aten._softmax.default: "softmax", aten.log_softmax.int: "log_softmax",
        aten._log_softmax.default: "log_softmax"}, _softmax)


def _reduced_dims(dim: Any, rank: int) -> tuple[int, ...]:
    """A reduction's ``dim`` argument (an int, a list, or None for all) as non-negative dims."""
    return tuple(_norm(d, rank) for d in _dims(dim)) or tuple(range(rank))


@rule(aten.logsumexp.default)
def _logsumexp(t: Translator, a: Args) -> Value:
    """``log(sum(exp(x - m))) + m`` over ``dim``, ``m`` the max over it, taken as 0 where it is infinite (all
    -inf: -inf; +inf: inf, as torch). Granite-SWA scales its attention output by ``sigmoid(logsumexp(s) - sink)``."""
    x = t.cast(a.self, t.out_type().dtype)  # (integers promote to the default float, as torch's)
    dims = _reduced_dims(a.dim, x.rank)
    m = t.emit("amax", x, dims=dims, keepdim=True)
    infinite = t.emit("eq", *_operands(t, t.emit("abs", m), float("inf")))
    m = t.emit("where", infinite, t.tensor(0.0, like=m), m)
    total = t.emit("sum", t.emit("exp", t.emit("sub", x, m)), dims=dims, keepdim=bool(a.get("keepdim")),
                   dtype=None)
    return t.emit("add", t.emit("log", total), m if a.get("keepdim") else t.emit("squeeze", m, dims=dims))


@rule(aten.var.dim, aten.var.correction, aten.std.dim, aten.std.correction)
def _var_std(t: Translator, a: Args) -> Value:
    """``x.var`` / ``x.std`` over ``dim`` (all when None): the mean of the squared deviations from the mean, times
    ``N / (N - correction)`` (``unbiased``: correction 1), the square root for ``std``."""
    x = a.self
    dims = _reduced_dims(a.get("dim"), x.rank)
    keep = bool(a.get("keepdim") or False)
    correction = a.get("correction")
    if correction is None:
        correction = 1 if a.get("unbiased", True) is not False else 0
    centred = t.emit("sub", x, t.emit("mean", x, dims=dims, keepdim=True, dtype=None))
    var = t.emit("mean", t.emit("mul", centred, centred), dims=dims, keepdim=keep, dtype=None)
    if correction:
        n = sympy.Integer(1)
        for d in dims:
            n = n * x.shape[d]
        if is_static(n):
            var = t.emit("mul", *_operands(t, var, float(int(n)) / (int(n) - float(correction))))
        else:
            var = t.emit("div", t.emit("mul", var, t.cast(t.sym_scalar(n), var.dtype)),
                         t.cast(t.sym_scalar(n - correction), var.dtype))
    return t.emit("sqrt", var) if "std" in str(t.node.target) else var


@rule(torch.ops.membound.linear_scan.default)
def _linear_scan(t: Translator, a: Args) -> Value:
    """membound's own op (``frontends/ssm.py``: Mamba's scan while exporting): the IR's ``linear_scan``."""
    return t.emit("linear_scan", a.a, a.b, dim=a.dim)


@rule(torch.ops.membound.linear_attention.default)
def _linear_attention(t: Translator, a: Args) -> list[Value]:
    """membound's own op (``frontends/ssm.py``: Mamba-2's, a gated DeltaNet's or KDA's recurrence while exporting):
    the IR's ``linear_attention``, (y, last state)."""
    init = () if a.init is None else (a.init,)
    return t.emit_multi("linear_attention", a.q, a.a, a.k, a.v, a.beta, *init, dim=a.dim, delta=bool(a.delta))


@rule(aten.conv1d.default, aten.conv1d.padding)
def _conv1d(t: Translator, a: Args) -> Value:
    """A depthwise 1-d convolution (``groups`` = channels, weight ``[C, 1, k]``, stride and dilation 1; LFM2's and the
    state-space hybrids' short causal convolutions): ``bias + sum_j w[:, 0, j] * x_pad[..., j : j + L_out]`` over
    the ``k`` taps, ``x_pad`` the input with ``padding`` zeros on both sides (``"valid"``: none). Any other
    convolution is refused, naming what differs."""
    x, w, bias = a.input, a.weight, a.get("bias")
    stride, dilation, groups = _dims(a.get("stride") or 1), _dims(a.get("dilation") or 1), int(a.get("groups") or 1)
    padding = a.get("padding") or 0
    if isinstance(padding, str):
        if padding != "valid":
            raise t.unsupported(f"conv1d with padding={padding!r}: only 'valid' or a number is translated")
        padding = 0
    pad = _dims(padding)[0] if not isinstance(padding, int) else padding
    if x.rank not in (2, 3) or w.rank != 3 or not is_static(w.shape[2]):
        raise t.unsupported(f"conv1d of {x.type} by {w.type}: only [B, C, L] (or [C, L]) by a static [C, 1, k]")
    channels = x.shape[-2]
    if tuple(stride) != (1,) or tuple(dilation) != (1,) or not (dims_equal(w.shape[0], channels)
                                                                  and dims_equal(w.shape[1], 1)
                                                                  and is_static(channels) and groups == int(channels)):
        raise t.unsupported(f"conv1d with stride={list(stride)}, dilation={list(dilation)}, groups={groups} over "
                            f"{x.type} by {w.type}: only a depthwise convolution (groups = channels, weight [C, 1, k]) "
                            "with stride and dilation 1 is translated")
    k, dim = int(w.shape[2]), x.rank - 1
    x = _padded(t, x, dim, pad, pad, 0)
    length = x.shape[dim] - (k - 1)
    out = None
    for j in range(k):
        tap = t.emit("slice", w, dim=2, start=sympy.Integer(j), end=sympy.Integer(j + 1), step=1)  # [C, 1, 1]
        tap = t.emit("reshape", tap, shape=(channels, sympy.Integer(1)))
        term = t.emit("mul", t.emit("slice", x, dim=dim, start=sympy.Integer(j), end=length + j, step=1), tap)
        out = term if out is None else t.emit("add", out, term)
    if bias is not None:
        out = t.emit("add", out, t.emit("reshape", bias, shape=(channels, sympy.Integer(1))))
    return out


@rule(aten.linalg_vector_norm.default)
def _vector_norm(t: Translator, a: Args) -> Value:
    """``||x||_ord`` over ``dim`` (all dims when None): 2 as ``sqrt(sum(x * x))``, 1 as ``sum(|x|)``, +-inf as the
    max / min of ``|x|``, 0 as the count of non-zeros, any other ``ord`` as ``sum(|x| ** ord) ** (1 / ord)``;
    ``dtype`` casts x first, as torch's."""
    out = t.out_type().dtype
    x = t.cast(a.self, out)
    order = float(a.get("ord", 2) if a.get("ord") is not None else 2)
    dims = _reduced_dims(a.get("dim"), x.rank)
    keep = bool(a.get("keepdim") or False)
    if order == float("inf") or order == float("-inf"):
        return t.emit("amax" if order > 0 else "amin", t.emit("abs", x), dims=dims, keepdim=keep)
    if order == 0:
        return t.emit("sum", t.cast(t.emit("ne", *_operands(t, x, 0.0)), out), dims=dims, keepdim=keep, dtype=None)
    if order == 2:
        return t.emit("sqrt", t.emit("sum", t.emit("mul", x, x), dims=dims, keepdim=keep, dtype=None))
    if order == 1:
        return t.emit("sum", t.emit("abs", x), dims=dims, keepdim=keep, dtype=None)
    powered = t.emit("pow", *_operands(t, t.emit("abs", x), order))
    return t.emit("pow", *_operands(t, t.emit("sum", powered, dims=dims, keepdim=keep, dtype=None), 1.0 / order))


@rule(aten.constant_pad_nd.default, aten.pad.default)
def _constant_pad(t: Translator, a: Args) -> Value:
    """``F.pad(x, pad, value=v)``: ``pad`` pairs (before, after) from the last dim backwards; a positive amount
    joins a block of v (``full``), a negative one slices it off. Only ``mode="constant"`` is translated."""
    mode = a.get("mode", "constant") or "constant"
    if mode != "constant":
        raise t.unsupported(f"pad with mode={mode!r}: only mode='constant' is translated")
    x = a.self
    value = a.get("value")
    value = 0 if value is None else value
    pads = [t.dim(p) for p in a.pad]
    for amount in pads:
        if not is_static(amount) and not sympy.sympify(amount).is_nonnegative:
            raise t.unsupported(f"pad by a symbolic amount {amount} that may be negative: only static pads and "
                                "symbolic ones proven >= 0 (Mamba-2's Mod(-S, chunk)) are translated")
    for i in range(len(pads) // 2):
        x = _padded(t, x, x.rank - 1 - i, pads[2 * i], pads[2 * i + 1], value)
    return x


def _padded(t: Translator, x: Value, dim: int, before: Any, after: Any, value: Any) -> Value:
    """``x`` with ``before`` / ``after`` slots of ``value`` joined along ``dim`` (``full`` blocks, one ``cat``); a
    negative amount slices that many slots off instead. A symbolic amount (proven >= 0) joins a block of that size,
    empty where it is 0."""
    before, after = sympy.sympify(before), sympy.sympify(after)
    if (is_static(before) and before < 0) or (is_static(after) and after < 0):
        x = t.emit("slice", x, dim=dim, start=sympy.Integer(max(-int(before), 0)),
                   end=x.shape[dim] + min(int(after), 0), step=1)

    def block(n: Any) -> Value:
        shape = tuple(n if d == dim else x.shape[d] for d in range(x.rank))
        return t.emit("full", shape=shape, value=_as(value, x.dtype), dtype=x.dtype)

    def joins(n: Any) -> bool:
        return not is_static(n) or int(n) > 0

    parts = ([block(before)] if joins(before) else []) + [x] + ([block(after)] if joins(after) else [])
    return t.emit("cat", *parts, dim=dim) if len(parts) > 1 else x


@rule(aten.cumsum.default)
def _cumsum(t: Translator, a: Args) -> Value:
    return t.emit("cumsum", a.self, dim=a.dim, dtype=_dtype_attr(t, a.self))


@rule(aten.layer_norm.default)
def _layer_norm(t: Translator, a: Args) -> Value:
    x, w, b = a.input, a.weight, a.bias
    if w is None and b is not None:  # the IR takes weight before bias: an all-ones weight stands in
        w = t.emit("full", shape=tuple(b.shape), value=_as(1, b.dtype), dtype=b.dtype)
    inputs = [v for v in (w, b) if v is not None]
    return t.emit("layer_norm", x, *inputs, ndim=len(a.normalized_shape), eps=float(a.eps))


@rule(aten.rms_norm.default)
def _rms_norm(t: Translator, a: Args) -> Value:
    """torch's composite: upcast, ``x * rsqrt(mean(x^2) + eps)``, times weight, back to x's dtype."""
    x = a.input
    ndim = len(a.normalized_shape)
    up = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    eps = a.eps if a.eps is not None else torch.finfo(x.dtype).eps
    xf = t.cast(x, up)
    ms = t.emit("mean", t.emit("mul", xf, xf), dims=tuple(range(-ndim, 0)), keepdim=True)
    y = t.emit("mul", xf, t.emit("rsqrt", t.emit("add", ms, t.tensor(float(eps), like=ms))))
    if a.weight is not None:
        y = t.emit("mul", y, a.weight)
    return t.cast(y, t.out_type().dtype)


# ---------------------------------------------------------------------------------------------
# matmul and attention
# ---------------------------------------------------------------------------------------------
@rule(aten.linear.default)
def _linear(t: Translator, a: Args) -> Value:
    inputs = [a.input, a.weight] + ([a.bias] if a.bias is not None else [])
    return t.emit("linear", *inputs)


@rule(aten.matmul.default, aten.mm.default, aten.bmm.default)
def _matmul(t: Translator, a: Args) -> Value:
    """torch.matmul, with 1-d operands lifted to matrices and the extra dim dropped after."""
    x, y = a.self, a.get("other", a.get("mat2"))
    squeeze: list[int] = []
    if x.rank == 1:
        x = t.emit("unsqueeze", x, dim=0)
        squeeze.append(-2)
    if y.rank == 1:
        y = t.emit("unsqueeze", y, dim=1)
        squeeze.append(-1)
    out = t.emit("matmul", x, y)
    for d in sorted(squeeze):
        out = t.emit("squeeze", out, dims=(d,))
    return out


@rule(aten.addmm.default, aten.baddbmm.default)
def _addmm(t: Translator, a: Args) -> Value:
    """``beta * self + alpha * (m1 @ m2)`` -> ``add(matmul(m1, m2), self)`` (GPT-2's Conv1D)."""
    m1 = a.get("mat1", a.get("batch1"))
    m2 = a.get("mat2", a.get("batch2"))
    prod = _scaled(t, t.emit("matmul", m1, m2), a.alpha)
    return t.emit("add", prod, _scaled(t, a.self, a.beta))


def _grouped_mm(t: Translator, a: Args) -> Value:
    """``transformers.grouped_mm_fallback(x[N, K], w[E, K, M], offsets[E])`` -> ``grouped_mm``."""
    x, w, offsets = a.in_order()[:3]
    return t.emit("grouped_mm", x, w, offsets)


TABLE["transformers.grouped_mm_fallback.default"] = _grouped_mm


@rule(aten._grouped_mm.default)
def _aten_grouped_mm(t: Translator, a: Args) -> Value:
    """``torch._grouped_mm(x[N, K], w[E, K, M], offs[E])`` (what HF uses for bf16/fp16 experts)."""
    x, w, offs = a.self, a.mat2, a.offs
    if offs is None or a.bias is not None or (x.rank, w.rank) != (2, 3):
        raise t.unsupported("only the 2-d x 3-d form with offsets and no bias maps to grouped_mm")
    out = t.emit("grouped_mm", x, w, offs)
    return t.cast(out, a.out_dtype) if a.out_dtype is not None else out


def _prod(dims: Sequence[Any]) -> Any:
    out: Any = 1
    for d in dims:
        out = out * d
    return out


@rule(aten.einsum.default)
def _einsum(t: Translator, a: Args) -> Value:
    """Two-operand ``einsum`` (gpt-fast's MoE) -> permute, reshape, ``matmul``, reshape, permute.

    Letters of both operands and the output are batch dims, of both operands only contracted; a letter
    of one operand missing from the output is summed first. One operand: sum and permute. Repeated
    letters within an operand (diagonals), ellipses and three or more operands are not mapped.
    """
    eq = a.equation.replace(" ", "")
    ops = list(a.tensors)
    lhs, _, out = eq.partition("->")
    terms = lhs.split(",")
    if "." in eq or not _ or len(terms) != len(ops) or len(ops) > 2 or any(len(set(x)) != len(x) for x in terms):
        raise t.unsupported(f"einsum {a.equation!r}: only one or two operands, explicit '->', no '...' or diagonals")
    vals, letters = [], []
    for x, term in zip(ops, terms):
        other = "".join(terms).replace(term, "", 1)
        drop = [i for i, c in enumerate(term) if c not in out and c not in other]
        if drop:
            x = t.emit("sum", x, dims=tuple(drop), keepdim=False, dtype=None)
            term = "".join(c for c in term if c in out or c in other)
        vals.append(x)
        letters.append(term)
    size = {c: v.shape[i] for v, term in zip(vals, letters) for i, c in enumerate(term)}
    if len(vals) == 1:
        return t.emit("permute", vals[0], dims=tuple(letters[0].index(c) for c in out))
    (x, xs), (y, ys) = zip(vals, letters)
    batch = [c for c in xs if c in ys and c in out]
    contract = [c for c in xs if c in ys and c not in out]
    left = [c for c in xs if c not in ys]
    right = [c for c in ys if c not in xs]
    x = t.emit("permute", x, dims=tuple(xs.index(c) for c in batch + left + contract))
    y = t.emit("permute", y, dims=tuple(ys.index(c) for c in batch + contract + right))
    bshape = tuple(size[c] for c in batch)
    x = t.emit("reshape", x, shape=bshape + (_prod([size[c] for c in left]), _prod([size[c] for c in contract])))
    y = t.emit("reshape", y, shape=bshape + (_prod([size[c] for c in contract]), _prod([size[c] for c in right])))
    z = t.emit("reshape", t.emit("matmul", x, y), shape=tuple(size[c] for c in batch + left + right))
    return t.emit("permute", z, dims=tuple((batch + left + right).index(c) for c in out))


@rule(aten.scaled_dot_product_attention.default)
def _sdpa(t: Translator, a: Args) -> Value:
    """SDPA -> ``attention(q, k, v, mask?) {causal, scale}``; GQA (fewer kv heads) is implicit in the IR."""
    if a.dropout_p:
        raise t.unsupported(f"attention dropout_p={a.dropout_p}; membound compiles for inference (use 0.0)",
                            fallback=False)
    q, k, v, mask = a.query, a.key, a.value, a.attn_mask
    lifted = q.rank == 3
    if lifted:  # [H, S, D] -> [1, H, S, D]
        q, k, v = (t.emit("unsqueeze", x, dim=0) for x in (q, k, v))
        if mask is not None and mask.rank == 3:
            mask = t.emit("unsqueeze", mask, dim=0)
    elif q.rank != 4:
        raise t.unsupported(f"attention on rank-{q.rank} tensors (the IR takes [B, H, S, D])")
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    scale = float(a.scale) if a.scale is not None else None
    out = t.emit("attention", *inputs, causal=bool(a.is_causal), scale=scale)
    return t.emit("squeeze", out, dims=(0,)) if lifted else out


# ---------------------------------------------------------------------------------------------
# layout: views, cat, split
# ---------------------------------------------------------------------------------------------
@rule(aten.view.default, aten.reshape.default, aten._unsafe_view.default)
def _reshape(t: Translator, a: Args) -> Value:
    """``-1`` is resolved to the size torch computed for it."""
    sizes = a.get("size", a.get("shape"))
    out = t.out_type().shape
    shape = tuple(out[i] if (isinstance(s, int) and s == -1) else t.dim(s) for i, s in enumerate(sizes))
    return t.emit("reshape", a.self, shape=shape)


@rule(aten.flatten.using_ints, aten.unflatten.int, aten.view_as.default, aten.reshape_as.default)
def _reshape_to_result(t: Translator, a: Args) -> Value:
    return t.emit("reshape", a.self, shape=t.out_type().shape)


@rule(aten.expand.default)
def _expand(t: Translator, a: Args) -> Value:
    """``-1`` keeps the input's size."""
    x = a.self
    lead = len(a.size) - x.rank
    shape = tuple(x.shape[i - lead] if (isinstance(s, int) and s == -1) else t.dim(s) for i, s in enumerate(a.size))
    return t.emit("expand", x, shape=shape)


@rule(aten.repeat_interleave.self_int)
def _repeat_interleave(t: Translator, a: Args) -> Value:
    """``x.repeat_interleave(r, dim)`` with an int ``r`` -> each slice ``r`` times in a row:
    ``reshape(expand(unsqueeze(x, dim + 1)))`` (HF's batched_mm experts repeat each token top-k times)."""
    x = a.self
    if a.dim is None:
        x = t.emit("reshape", x, shape=(_prod(x.shape),))
    dim = 0 if a.dim is None else _norm(a.dim, x.rank)
    wide = t.emit("unsqueeze", x, dim=dim + 1)
    shape = list(wide.shape)
    shape[dim + 1] = t.dim(a.repeats)
    return t.emit("reshape", t.emit("expand", wide, shape=tuple(shape)), shape=t.out_type().shape)


@rule(aten.repeat.default)
def _repeat(t: Translator, a: Args) -> Value:
    """``x.repeat(r_0, ..., r_n)`` tiles x: ``out[.., k * s_i + j, ..] = x[.., j, ..]`` (new leading dims for the
    extra sizes) -> ``reshape(expand(reshape(x, [1, s_0, 1, s_1, ...]), [r_0, s_0, r_1, s_1, ...]))``: each copy
    index outside the dim it repeats (BLOOM's ALiBi bias, one row per head and batch row)."""
    x = a.self
    reps = [t.dim(r) for r in a.repeats]
    if len(reps) < x.rank:
        raise ValueError(f"repeat: {len(reps)} sizes for a rank-{x.rank} tensor (torch needs at least the rank)")
    shape = [1] * (len(reps) - x.rank) + list(x.shape)
    interleaved = tuple(d for s in shape for d in (1, s))
    wide = tuple(d for r, s in zip(reps, shape) for d in (r, s))
    tiled = t.emit("expand", t.emit("reshape", x, shape=interleaved), shape=wide)
    return t.emit("reshape", tiled, shape=t.out_type().shape)


@rule(aten.expand_as.default, aten.broadcast_to.default)
def _expand_as(t: Translator, a: Args) -> Value:
    """``expand_as`` / ``broadcast_to`` (Falcon's ALiBi in transformers 5.17): an expand to the result's shape."""
    return t.emit("expand", a.self, shape=t.out_type().shape)


@rule(aten.transpose.int)
def _transpose(t: Translator, a: Args) -> Value:
    return t.emit("transpose", a.self, dim0=a.dim0, dim1=a.dim1)


@rule(aten.t.default)
def _t(t: Translator, a: Args) -> Value:
    return t.emit("transpose", a.self, dim0=0, dim1=1) if a.self.rank == 2 else a.self


@rule(aten.mT.default, aten.adjoint.default)
def _matrix_transpose(t: Translator, a: Args) -> Value:
    return t.emit("transpose", a.self, dim0=-2, dim1=-1)


@rule(aten.numpy_T.default)
def _numpy_t(t: Translator, a: Args) -> Value:
    return t.emit("permute", a.self, dims=tuple(reversed(range(a.self.rank))))


@rule(aten.permute.default)
def _permute(t: Translator, a: Args) -> Value:
    return t.emit("permute", a.self, dims=tuple(a.dims))


@rule(aten.unsqueeze.default)
def _unsqueeze(t: Translator, a: Args) -> Value:
    return t.emit("unsqueeze", a.self, dim=a.dim)


@rule(aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims)
def _squeeze(t: Translator, a: Args) -> Value:
    """Only dims that are statically 1 go (torch keeps the others, silently)."""
    x = a.self
    wanted = range(x.rank) if a.get("dim") is None else [_norm(d, x.rank) for d in _dims(a.dim)]
    dims = tuple(d for d in wanted if x.rank and x.shape[d] == 1)
    return t.emit("squeeze", x, dims=dims) if dims else x


@rule(aten.slice.Tensor)
def _slice(t: Translator, a: Args) -> Value:
    """Bounds clamped to ``[0, size]``; ``end = INT64_MAX`` means the size. A full slice is no IR."""
    x = a.self
    dim = _norm(a.dim, x.rank)
    size = x.shape[dim]
    step = int(a.step or 1)
    start = _clamp_index(t, a.start, size, sympy.Integer(0))
    end = _clamp_index(t, a.end, size, size)
    if step == 1:
        length = t.out_type().shape[dim]
        if start == 0 and length == size:
            return x
        if end - start != length:  # torch proved a tighter bound (a guard): follow its length
            end = start + length
    return t.emit("slice", x, dim=dim, start=start, end=end, step=step)


def _spliced(t: Translator, x: Value, dim: int, start: sympy.Expr, middle: Value) -> Value:
    """``x`` with ``middle`` in place of its slots ``start .. start + middle.shape[dim]`` along ``dim``:
    ``cat(x[:start], middle, x[end:])``, empty ends left out."""
    size, end = x.shape[dim], start + middle.shape[dim]
    parts = []
    if not (is_static(start) and int(start) == 0):
        parts.append(t.emit("slice", x, dim=dim, start=sympy.Integer(0), end=start, step=1))
    parts.append(t.cast(middle, x.dtype))
    if not dims_equal(end, size):
        parts.append(t.emit("slice", x, dim=dim, start=end, end=size, step=1))
    return t.emit("cat", *parts, dim=dim) if len(parts) > 1 else parts[0]


@rule(aten.slice_scatter.default)
def _slice_scatter(t: Translator, a: Args) -> Value:
    """``x`` with ``x[..., start:end:step, ...] = src`` (the functional form of a write into a slice, as
    functionalization writes transformers 4.x's mask building, and Qwen3.5's interleaved multimodal rotary
    frequencies with step 3)."""
    x = a.self
    dim = _norm(a.dim, x.rank)
    start = _clamp_index(t, a.start, x.shape[dim], sympy.Integer(0))
    step = int(a.step or 1)
    if step == 1:
        return _spliced(t, x, dim, start, a.src)
    return _strided_splice(t, x, dim, start, step, a.src)


def _strided_splice(t: Translator, x: Value, dim: int, start: sympy.Expr, step: int, src: Value) -> Value:
    """``x`` with ``src``'s ``n`` slots in place of ``x``'s slots ``start, start + step, ...`` along ``dim``, from
    step-1 pieces: the first ``n - 1`` groups of ``step`` slots seen as ``[n - 1, step]`` with column 0 replaced
    (a reshape, a splice on the new axis, a reshape back), then the last slot alone (the group after it may run
    past the end of ``x``)."""
    n = src.shape[dim]
    if not is_static(n):
        raise t.unsupported(f"slice_scatter with step {step} over {n} (symbolic) slots: only a static count of "
                            "slots is translated with a step other than 1")
    n, src = int(n), t.cast(src, x.dtype)
    if n == 0:
        return x
    lead, tail = x.shape[:dim], x.shape[dim + 1:]
    pieces = []
    if n > 1:
        span = (n - 1) * step
        groups = t.emit("reshape", t.emit("slice", x, dim=dim, start=start, end=start + span, step=1),
                        shape=lead + (sympy.Integer(n - 1), sympy.Integer(step)) + tail)
        head = t.emit("reshape", t.emit("slice", src, dim=dim, start=sympy.Integer(0), end=sympy.Integer(n - 1),
                                        step=1), shape=lead + (sympy.Integer(n - 1), sympy.Integer(1)) + tail)
        groups = _spliced(t, groups, dim + 1, sympy.Integer(0), head)
        pieces.append(t.emit("reshape", groups, shape=lead + (sympy.Integer(span),) + tail))
    pieces.append(t.emit("slice", src, dim=dim, start=sympy.Integer(n - 1), end=sympy.Integer(n), step=1)
                  if n > 1 else src)
    return _spliced(t, x, dim, start, t.emit("cat", *pieces, dim=dim) if len(pieces) > 1 else pieces[0])


@rule(aten.select_scatter.default)
def _select_scatter(t: Translator, a: Args) -> Value:
    """``x`` with ``x.select(dim, index) = src``: ``src`` as a slot of size one spliced in."""
    x = a.self
    dim = _norm(a.dim, x.rank)
    return _spliced(t, x, dim, _index_along(t, x, dim, a.index), t.emit("unsqueeze", a.src, dim=dim))


@rule(aten.narrow.default)
def _narrow(t: Translator, a: Args) -> Value:
    x = a.self
    dim = _norm(a.dim, x.rank)
    start = _clamp_index(t, a.start, x.shape[dim], sympy.Integer(0))
    return t.emit("slice", x, dim=dim, start=start, end=start + t.dim(a.length), step=1)


@rule(aten.select.int)
def _select(t: Translator, a: Args) -> Value:
    x = a.self
    dim = _norm(a.dim, x.rank)
    return t.emit("select", x, dim=dim, index=_index_along(t, x, dim, a.index))


def _index_along(t: Translator, x: Value, dim: int, index: Any) -> sympy.Expr:
    """``index`` into ``x`` along ``dim`` as a size expression, a static negative one counted from the end."""
    i = t.dim(index)
    return x.shape[dim] + i if is_static(i) and int(i) < 0 else i


@rule(aten.cat.default, aten.concat.default, aten.concatenate.default)
def _cat(t: Translator, a: Args) -> Value:
    dtype = t.out_type().dtype
    # torch's legacy rule: a 1-D empty operand is skipped (an empty Hugging Face DynamicCache starts so)
    xs = [t.cast(x, dtype) for x in a.tensors if not (x.type.rank == 1 and x.type.shape[0] == 0)]
    return t.emit("cat", *xs, dim=a.dim) if len(xs) > 1 else xs[0]


@rule(aten.stack.default)
def _stack(t: Translator, a: Args) -> Value:
    dtype = t.out_type().dtype
    xs = [t.emit("unsqueeze", t.cast(x, dtype), dim=a.dim) for x in a.tensors]
    return t.emit("cat", *xs, dim=a.dim) if len(xs) > 1 else xs[0]


@rule(aten.split.Tensor, aten.split_with_sizes.default, aten.chunk.default, aten.tensor_split.indices,
      aten.tensor_split.sections)
def _split(t: Translator, a: Args) -> list[Value]:
    """Piece sizes are those torch computed (so symbolic sizes and ragged tails come out right). ``tensor_split`` at
    indices (Mamba's ``torch.split`` with sizes under export) is the same whenever its pieces tile the dim in order."""
    x = a.self
    dim = _norm(a.get("dim", 0), x.rank)
    sizes = tuple(o.shape[dim] for o in t.out_types())
    if not dims_equal(sum(sizes, sympy.Integer(0)), x.shape[dim]):
        raise t.unsupported(f"tensor_split of {x.type} along dim {dim} into pieces {list(sizes)} that do not tile it "
                            "(indices out of order or past the end)")
    if len(sizes) == 1:
        return [x]
    return t.emit_multi("split", x, dim=dim, sizes=sizes)


@rule(aten.unbind.int)
def _unbind(t: Translator, a: Args) -> list[Value]:
    x = a.self
    dim = _norm(a.dim, x.rank)
    return [t.emit("select", x, dim=dim, index=i) for i in range(len(t.out_types()))]


# ---------------------------------------------------------------------------------------------
# indexing
# ---------------------------------------------------------------------------------------------
def _index_list(t: Translator, indices: Sequence[Optional[Value]]) -> tuple[list[Value], tuple[int, ...]]:
    values, dims = [], []
    for d, idx in enumerate(indices):
        if idx is None:
            continue
        if idx.dtype == torch.bool:
            raise t.unsupported("boolean-mask indexing has a data-dependent result size; use torch.where",
                                fallback=False)
        values.append(idx)
        dims.append(d)
    return values, tuple(dims)


@rule(aten.embedding.default)
def _embedding(t: Translator, a: Args) -> Value:
    return t.emit("embedding", a.weight, a.indices)


@rule(aten.index.Tensor)
def _index(t: Translator, a: Args) -> Value:
    values, dims = _index_list(t, a.indices)
    return t.emit("index", a.self, *values, dims=dims)


@rule(aten.index_put.default)
def _index_put(t: Translator, a: Args) -> Value:
    values, dims = _index_list(t, a.indices)
    src = t.cast(a.values, a.self.dtype)
    return t.emit("index_put", a.self, src, *values, dims=dims, accumulate=bool(a.accumulate))


@rule(aten.gather.default)
def _gather(t: Translator, a: Args) -> Value:
    return t.emit("gather", a.self, a.index, dim=a.dim)


@rule(aten.index_select.default)
def _index_select(t: Translator, a: Args) -> Value:
    return t.emit("index_select", a.self, a.index, dim=a.dim)


@rule(aten.index_copy.default)
def _index_copy(t: Translator, a: Args) -> Value:
    return t.emit("index_copy", a.self, a.index, t.cast(a.source, a.self.dtype), dim=a.dim)


@rule(aten.scatter.src, aten.scatter.value, aten.scatter_add.default)
def _scatter(t: Translator, a: Args) -> Value:
    x = a.self
    src = a.get("src")
    if src is None and t.node.target is aten.scatter.value:
        every = _scatter_over_every_slot(t, x, a.index, _norm(a.dim, x.rank), a.value)
        if every is not None:
            return every
    if src is None:  # scatter.value: a scalar broadcast over the index
        src = t.emit("expand", t.emit("constant", value=_as(a.value, x.dtype), dtype=x.dtype),
                     shape=tuple(a.index.shape))
    reduce = "add" if t.node.target is aten.scatter_add.default else None
    return t.emit("scatter", x, a.index, t.cast(src, x.dtype), dim=a.dim, reduce=reduce)


def _scatter_over_every_slot(t: Translator, x: Value, index: Value, dim: int, value: Any) -> Optional[Value]:
    """``x.scatter(dim, topk(y, k).indices, value)`` with ``k`` every slot of ``x`` along ``dim`` and the index as
    large as ``x``: each row's indices are a permutation of its slots, so the result is ``full(value)``. DeepSeek
    Sparse Attention's index mask (DeepSeek-V3.2, HY-V4, GLM-MoE-DSA) while its top-k keeps every key: ``k =
    min(index_topk, L)``, taken on the captured branch ``L <= index_topk`` under that narrowed range and guard (a
    longer call captures again; ``generate`` decodes with the cache no further). None where it does not apply."""
    idx = index
    while idx.producer is not None and idx.producer.op == "cast" and not idx.producer.inputs[0].dtype.is_floating_point:
        idx = idx.producer.inputs[0]
    topk = idx.producer
    if topk is None or topk.op != "topk" or idx is not topk.results[1] or index.rank != x.rank \
            or _norm(topk.attrs["dim"], idx.rank) != dim:
        return None
    conds: list[sympy.Basic] = []
    shape = [t._hinted_branch(d, conds) for d in index.shape]
    k = t._hinted_branch(topk.attrs["k"], conds)
    ranked = t._hinted_branch(topk.inputs[0].shape[dim], conds)  # the slots the top-k chooses among
    if not (all(dims_equal(a, b) for a, b in zip(shape, x.shape)) and dims_equal(k, x.shape[dim])
            and dims_equal(ranked, x.shape[dim])):
        return None
    if t.take_branch(conds) is None:
        return None
    t.add_guards(conds)
    return t.emit("full", shape=tuple(x.shape), value=_as(value, x.dtype), dtype=x.dtype)


# ---------------------------------------------------------------------------------------------
# creation: shape and dtype are the ones torch computed
# ---------------------------------------------------------------------------------------------
def _full_of(value: Any, t: Translator, a: Args) -> Value:
    out = t.out_type()
    v = a.get("fill_value", a.get("value")) if value is None else value
    if isinstance(v, Value):
        return t.emit("expand", t.cast(v, out.dtype), shape=out.shape)
    if isinstance(v, sympy.Basic):
        return t.emit("expand", t.cast(t.sym_scalar(v), out.dtype), shape=out.shape)
    return t.emit("full", shape=out.shape, value=_as(v, out.dtype), dtype=out.dtype)


family({aten.empty_like.default: 0, aten.zeros_like.default: 0, aten.ones_like.default: 1,
        aten.full_like.default: None, aten.new_empty.default: 0, aten.new_zeros.default: 0,
        aten.new_ones.default: 1, aten.new_full.default: None, aten.empty.memory_format: 0,
        aten.zeros.default: 0, aten.ones.default: 1, aten.full.default: None, aten.fill.Scalar: None,
        aten.fill.Tensor: None, aten.zero.default: 0}, _full_of)


@rule(aten.tril.default, aten.triu.default)
def _triangle(t: Translator, a: Args) -> Value:
    """``tril``: keep ``x[..., i, j]`` where ``j - i <= diagonal`` (``triu``: ``>=``), else 0."""
    x = a.self
    rows = t.emit("unsqueeze", t.emit("arange", end=x.shape[-2]), dim=-1)  # [H, 1]
    cols = t.emit("unsqueeze", t.emit("arange", end=x.shape[-1]), dim=0)  # [1, W]
    offset = t.emit("sub", cols, rows)
    keep = t.emit("le" if t.node.target is aten.tril.default else "ge", offset, t.tensor(int(a.diagonal), like=offset))
    return t.emit("where", keep, x, t.emit("constant", value=_as(0, x.dtype), dtype=x.dtype))


@rule(aten.scalar_tensor.default)
def _scalar_tensor(t: Translator, a: Args) -> Value:
    dtype = t.out_type().dtype
    return t.emit("constant", value=_as(a.s, dtype), dtype=dtype)


@rule(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(t: Translator, a: Args) -> Value:
    dtype = t.out_type().dtype
    bound = [a.get("start", 0), a.end, a.get("step", 1)]
    if any(isinstance(b, float) for b in bound):
        raise t.unsupported("arange with float bounds (the IR's arange takes integer dims)")
    start, end, step = (t.dim(b) for b in bound)
    return t.emit("arange", start=start, end=end, step=step, dtype=dtype)


@rule(aten.one_hot.default)
def _one_hot(t: Translator, a: Args) -> Value:
    """``one_hot(ids, n)``: ``ids[..., None] == arange(n)`` as int64 (n given: the classes are a static dim; with
    ``num_classes=-1`` torch sizes them from the data, which a graph of fixed shape cannot)."""
    n = a.get("num_classes", -1)
    if not isinstance(n, int) or n < 0:
        raise t.unsupported("one_hot without num_classes (the class count would come from the data): pass "
                            "num_classes")
    classes = t.emit("arange", start=t.dim(0), end=t.dim(n), step=t.dim(1), dtype=a.self.dtype)
    hit = t.emit("eq", t.emit("unsqueeze", a.self, dim=-1), classes)
    return t.cast(hit, torch.int64)


@rule(aten.copy.default)
def _copy(t: Translator, a: Args) -> Value:
    """``self.copy_(src)``: src broadcast to self's shape, in self's dtype."""
    x = a.self
    src = t.cast(a.src, x.dtype)
    return src if src.type.equivalent(x.type) else t.emit("expand", src, shape=x.shape)


# ---------------------------------------------------------------------------------------------
# routing (MoE) and scans
# ---------------------------------------------------------------------------------------------
@rule(aten.topk.default)
def _topk(t: Translator, a: Args) -> list[Value]:
    return t.emit_multi("topk", a.self, k=t.dim(a.k), dim=a.dim, largest=bool(a.largest), sorted=bool(a.sorted))


@rule(aten.sort.default, aten.sort.stable)
def _sort(t: Translator, a: Args) -> list[Value]:
    return t.emit_multi("sort", a.self, dim=a.dim, descending=bool(a.descending), stable=bool(a.get("stable")))


@rule(aten.argsort.default, aten.argsort.stable)
def _argsort(t: Translator, a: Args) -> Value:
    return t.emit_multi("sort", a.self, dim=a.dim, descending=bool(a.descending), stable=bool(a.get("stable")))[1]


@rule(aten.histc.default)
def _histc(t: Translator, a: Args) -> Value:
    return t.emit("histc", a.self, bins=int(a.bins), min=float(a.min), max=float(a.max))


@rule(aten.diff.default)
def _diff(t: Translator, a: Args) -> Value:
    """``x[1:] - x[:-1]`` along dim, n times (``!=`` for bools), after prepend/append."""
    x = a.self
    dim = _norm(a.dim, x.rank)
    parts = [p for p in (a.prepend, x, a.append) if p is not None]
    if len(parts) > 1:
        x = t.emit("cat", *[t.cast(p, x.dtype) for p in parts], dim=dim)
    for _ in range(int(a.n)):
        size = x.shape[dim]
        hi = t.emit("slice", x, dim=dim, start=1, end=size, step=1)
        lo = t.emit("slice", x, dim=dim, start=0, end=size - 1, step=1)
        x = t.emit("ne" if x.dtype == torch.bool else "sub", hi, lo)
    return x
