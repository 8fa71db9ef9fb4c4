"""How each pointwise IR op is written as a Triton expression (the ``expr`` of its lowering entry).

A writer takes the node and its operands, already emitted and converted to the operand dtype its
lowering entry names (``operands``), and returns ``(expression, helpers it calls)``. Writers whose
entry says ``operands="raw"`` get the :class:`~membound.backends.triton.values.Val` s unconverted
(``where`` and ``cast`` convert each operand themselves). Most entries need no writer of their own:
``template("tl.exp({0})")`` formats the operands into a string.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import torch

from membound.backends.triton.values import NARROW_FLOATS, TL_DTYPE, Val, compute_dtype, convert, literal_code
from membound.ir.graph import Node

Expr = tuple[str, frozenset[str]]
# (node, operands) -> (expression, helpers); operands are code strings, or Vals for operands="raw"
ExprWriter = Callable[[Node, list[Any]], Expr]
NO_HELPERS: frozenset[str] = frozenset()

# helpers some writers call; emitted into the generated module only when used
HELPERS: dict[str, str] = {
    "_tanh": '''@triton.jit
def _tanh(x):
    # tanh from exp (libdevice is not available under TRITON_INTERPRET); a short series near 0
    # avoids the cancellation in 1 - exp(-2|x|)
    ax = tl.abs(x)
    t = tl.exp(-2.0 * ax)
    big = (1.0 - t) / (1.0 + t)
    x2 = x * x
    small = ax * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    y = tl.where(ax < 0.1, small, big)
    return tl.where(x < 0, -y, y)
''',
    "_floordiv_int": '''@triton.jit
def _floordiv_int(a, b):
    # Triton's integer // truncates toward zero; torch's floor division rounds toward -inf
    q = a // b
    return tl.where((q * b != a) & ((a < 0) != (b < 0)), q - 1, q)
''',
    "_remainder": '''@triton.jit
def _remainder(a, b):
    # torch's remainder takes the sign of b; Triton's % (C fmod) takes the sign of a
    r = a % b
    return tl.where((r != 0) & ((r < 0) != (b < 0)), r + b, r)
''',
}


def template(text: str, *helpers: str) -> ExprWriter:
    """A writer that formats the operands into ``text`` (``"tl.exp({0})"``, ``"{0} + {1}"``)."""
    used = frozenset(helpers)

    def write(node: Node, a: list[Any]) -> Expr:
        return text.format(*a), used

    return write


def _is_float(dt: torch.dtype) -> bool:
    return dt.is_floating_point


def _out(node: Node) -> torch.dtype:
    return node.results[0].dtype


# integer-valued exponents written as products; 0.5 and -0.5 as sqrt and rsqrt
_POW = {1: "{0}", 2: "{0} * {0}", 3: "{0} * {0} * {0}",
        4: "({0} * {0}) * ({0} * {0})", -1: "1.0 / {0}", -2: "1.0 / ({0} * {0})", 0.5: "tl.sqrt({0})",
        -0.5: "tl.rsqrt({0})"}


def pow_exponent(node: Node) -> Optional[float]:
    """The exponent of ``pow(x, c)`` when c is a constant node with a value we write as products."""
    e = node.inputs[1].producer
    if e is None or e.op not in ("constant", "full"):
        return None
    v = float(e.attrs["value"])
    return v if v in _POW else None


def pow_refusal(node: Node) -> Optional[str]:
    """``pow`` is generated for the constant exponents ``_POW`` writes as products."""
    return None if pow_exponent(node) is not None else "the exponent is not a constant in (±0.5, ±1, ±2, 3, 4)"


# ---------------------------------------------------------------------------------------------
# writers of the ops that are more than a template
# ---------------------------------------------------------------------------------------------
def write_where(node: Node, v: list[Val]) -> Expr:
    out = _out(node)
    return f"tl.where({convert(v[0], torch.bool)}, {convert(v[1], out)}, {convert(v[2], out)})", NO_HELPERS


def write_cast(node: Node, v: list[Val]) -> Expr:
    """An explicit cast from IR dtype ``src`` to ``out``: narrow floats round here (the model asked for it)."""
    x, src, out = v[0], node.inputs[0].dtype, _out(node)
    if x.literal is not None:
        return literal_code(x.literal, out), NO_HELPERS
    if src == out:
        return x.code, NO_HELPERS
    if out == torch.bool:
        return f"{x.code} != 0", NO_HELPERS
    if out in NARROW_FLOATS:
        wide = x.code if x.dtype == torch.float32 else f"{x.code}.to(tl.float32)"
        return f"{wide}.to({TL_DTYPE[out]}).to(tl.float32)", NO_HELPERS
    target = compute_dtype(out)
    if x.dtype == target:
        return x.code, NO_HELPERS
    return f"{x.code}.to({TL_DTYPE[target]})", NO_HELPERS


def write_reciprocal(node: Node, a: list[str]) -> Expr:
    return true_div("1.0", a[0], _out(node)), NO_HELPERS


def write_gelu(node: Node, a: list[str]) -> Expr:
    x = a[0]
    if node.attrs["approximate"] == "tanh":
        return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))", \
            frozenset({"_tanh"})
    return f"0.5 * {x} * (1.0 + tl.erf({x} * 0.7071067811865476))", NO_HELPERS


def write_softplus(node: Node, a: list[str]) -> Expr:
    """``log(1 + e**(b x)) / b`` as ``max(b x, 0) + log(1 + e**-|b x|)`` (no overflow), ``x`` past the threshold."""
    x, beta, thr = a[0], repr(float(node.attrs["beta"])), repr(float(node.attrs["threshold"]))
    bx = f"({beta} * {x})"
    soft = f"(tl.maximum({bx}, 0.0) + tl.log(1.0 + tl.exp(-tl.abs({bx})))) / {beta}"
    return f"tl.where({bx} > {thr}, {x}, {soft})", NO_HELPERS


def write_pow(node: Node, a: list[str]) -> Expr:
    return _POW[pow_exponent(node)].format(a[0]), NO_HELPERS  # type: ignore[index]


def arith(symbol: str, on_bool: str) -> ExprWriter:
    """``a <symbol> b``; on bool results torch's ``bool + bool`` is logical or, ``bool * bool`` logical and."""

    def write(node: Node, a: list[str]) -> Expr:
        if _out(node) == torch.bool:
            return f"{a[0]} {on_bool} {a[1]}", NO_HELPERS
        return f"{a[0]} {symbol} {a[1]}", NO_HELPERS

    return write


def write_floor(node: Node, a: list[str]) -> Expr:
    return (f"tl.floor({a[0]})" if _is_float(_out(node)) else a[0]), NO_HELPERS


def extremum(fn: str) -> ExprWriter:
    """``tl.maximum``/``tl.minimum``; float operands propagate NaN as torch does."""

    def write(node: Node, a: list[str]) -> Expr:
        nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float(_out(node)) else ""
        return f"{fn}({a[0]}, {a[1]}{nan})", NO_HELPERS

    return write


def write_div(node: Node, a: list[str]) -> Expr:
    # tl.div_rn: IEEE division as torch does (Triton's `/` may be off by an ulp on the GPU, and
    # x / x must stay exactly 1 before a floor)
    mode, out = node.attrs["rounding_mode"], _out(node)
    if mode is None:
        return true_div(a[0], a[1], out), NO_HELPERS
    if _is_float(out):
        q = true_div(a[0], a[1], out)
        if mode == "floor":
            return f"tl.floor({q})", NO_HELPERS
        return f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))", NO_HELPERS
    if mode == "floor":
        return f"_floordiv_int({a[0]}, {a[1]})", frozenset({"_floordiv_int"})
    return f"{a[0]} // {a[1]}", NO_HELPERS  # Triton's integer // truncates, as rounding_mode="trunc" asks


def write_clamp(node: Node, a: list[str]) -> Expr:
    # torch.clamp(NaN) is NaN: the float bounds propagate it (tl.maximum alone returns the bound)
    x, out, attrs = a[0], _out(node), node.attrs
    nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float(out) else ""
    if attrs["min"] is not None:
        x = f"tl.maximum({x}, {literal_code(attrs['min'], out)}{nan})"
    if attrs["max"] is not None:
        x = f"tl.minimum({x}, {literal_code(attrs['max'], out)}{nan})"
    return x, NO_HELPERS


def write_bitwise_not(node: Node, a: list[str]) -> Expr:
    return (f"{a[0]} == 0" if _out(node) == torch.bool else f"~{a[0]}"), NO_HELPERS


def true_div(a: str, b: str, out: torch.dtype) -> str:
    return f"tl.div_rn({a}, {b})" if compute_dtype(out) == torch.float32 else f"{a} / {b}"
