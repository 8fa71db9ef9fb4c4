"""How each elementwise IR op is written in Triton, and the dtype rules of generated code.

Values inside a generated kernel are held in a *compute dtype*: float16 and bfloat16 compute in
float32 (loads upcast, stores round), everything else in its own dtype. Only an explicit ``cast`` to
a narrow float rounds in the middle of a kernel (``x.to(tl.float16).to(tl.float32)``), so a cast the
model wrote keeps its numerical effect (RMSNorm's ``.to(x.dtype)`` before the weight).

``can_lower(node)`` is what the partitioner asks; ``lower(node, args)`` returns the expression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Union

import torch

from membound.ir.graph import Node
from membound.ir.printer import float_literal

TL_DTYPE: dict[torch.dtype, str] = {
    torch.float32: "tl.float32",
    torch.float16: "tl.float16",
    torch.bfloat16: "tl.bfloat16",
    torch.float64: "tl.float64",
    torch.int64: "tl.int64",
    torch.int32: "tl.int32",
    torch.int16: "tl.int16",
    torch.int8: "tl.int8",
    torch.uint8: "tl.uint8",
    torch.bool: "tl.int1",
}
NARROW_FLOATS = (torch.float16, torch.bfloat16)

Scalar = Union[bool, int, float]


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a value of ``dtype`` is held in inside a kernel."""
    return torch.float32 if dtype in NARROW_FLOATS else dtype


def supported_dtype(dtype: torch.dtype) -> bool:
    return dtype in TL_DTYPE


@dataclass(frozen=True)
class Val:
    """An emitted value: a variable name (or a literal), its compute dtype, and whether it is a block
    (``vector``) or one number per program."""

    code: str
    dtype: torch.dtype
    vector: bool
    literal: Optional[Scalar] = None


def literal(value: Scalar, dtype: torch.dtype) -> Val:
    return Val(literal_code(value, dtype), compute_dtype(dtype), False, _as_python(value, dtype))


def literal_code(value: Scalar, dtype: torch.dtype) -> str:
    v = _as_python(value, dtype)
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, float):
        return float_literal(v, python=True)
    return str(v)


def _as_python(value: Scalar, dtype: torch.dtype) -> Scalar:
    if dtype == torch.bool:
        return bool(value)
    if dtype.is_floating_point:
        return float(value)
    return int(value)


def convert(v: Val, dtype: torch.dtype) -> str:
    """``v`` as code of compute dtype ``compute_dtype(dtype)``."""
    target = compute_dtype(dtype)
    if v.literal is not None:
        return literal_code(v.literal, target)
    if v.dtype == target:
        return v.code
    if target == torch.bool:
        return f"({v.code} != 0)"
    return f"{v.code}.to({TL_DTYPE[target]})"


# ---------------------------------------------------------------------------------------------
# op table: name -> (operand dtype rule, writer). Operand rule "out": operands converted to the
# result's compute dtype; "promote": to the promoted operand dtype (comparisons); "bool": to bool.
# ---------------------------------------------------------------------------------------------
Writer = Callable[[list[str], dict[str, Any], torch.dtype], str]


def _is_float(dt: torch.dtype) -> bool:
    return dt.is_floating_point


_UNARY_FLOAT = {"exp": "tl.exp({0})", "log": "tl.log({0})", "sqrt": "tl.sqrt({0})", "rsqrt": "tl.rsqrt({0})",
                "sin": "tl.sin({0})", "cos": "tl.cos({0})", "erf": "tl.erf({0})", "sigmoid": "tl.sigmoid({0})",
                "reciprocal": "1.0 / {0}", "silu": "{0} * tl.sigmoid({0})", "tanh": "_tanh({0})"}

_BINARY_ARITH = {"add": "{0} + {1}", "sub": "{0} - {1}", "mul": "{0} * {1}"}
_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}

# integer-valued exponents written as products; 0.5 and -0.5 as sqrt and rsqrt
_POW = {1: "{0}", 2: "{0} * {0}", 3: "{0} * {0} * {0}",
        4: "({0} * {0}) * ({0} * {0})", -1: "1.0 / {0}", -2: "1.0 / ({0} * {0})", 0.5: "tl.sqrt({0})",
        -0.5: "tl.rsqrt({0})"}

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


def pow_exponent(node: Node) -> Optional[float]:
    """The exponent of ``pow(x, c)`` when c is a constant node with a value we write as products."""
    e = node.inputs[1].producer
    if e is None or e.op not in ("constant", "full"):
        return None
    v = float(e.attrs["value"])
    return v if v in _POW else None


def can_lower(node: Node) -> bool:
    """Whether ``node`` (an elementwise op) has a Triton expression here, at its dtypes."""
    dtypes = [v.dtype for v in node.inputs] + [r.dtype for r in node.results]
    if not all(supported_dtype(d) for d in dtypes):
        return False
    op = node.op
    out = node.results[0].dtype
    if op in _UNARY_FLOAT or op == "gelu":
        return _is_float(out)
    if op == "pow":
        return _is_float(out) and pow_exponent(node) is not None
    if op in ("maximum", "minimum", "remainder", "div", "floor", "neg", "abs", "relu", "clamp", "cast", "where",
              "logical_not", "bitwise_not", "logical_and", "logical_or", "bitwise_and", "bitwise_or"):
        return True
    return op in _BINARY_ARITH or op in _COMPARE


def operand_dtype(node: Node) -> torch.dtype:
    """The dtype operands are converted to before ``node``'s expression is applied."""
    if node.op in _COMPARE:
        from membound.ir.types import promote

        return promote(*[(v.dtype, v.rank) for v in node.inputs])
    if node.op in ("logical_and", "logical_or", "logical_not"):
        return torch.bool
    if node.op == "cast":
        return node.inputs[0].dtype
    if node.op == "where":
        return node.results[0].dtype
    return node.results[0].dtype


def lower(node: Node, args: list[Val]) -> tuple[str, set[str]]:
    """The Triton expression of ``node`` over ``args`` (already emitted), and the helpers it calls.

    Operands are converted to ``operand_dtype(node)``; the expression's compute dtype is that of
    ``node``'s result.
    """
    op, attrs = node.op, node.attrs
    out = node.results[0].dtype
    if op == "where":
        c = convert(args[0], torch.bool)
        return f"tl.where({c}, {convert(args[1], out)}, {convert(args[2], out)})", set()
    if op == "cast":
        return _cast(args[0], node.inputs[0].dtype, out), set()
    od = operand_dtype(node)
    a = [convert(x, od) for x in args]
    if op == "reciprocal":
        return _true_div("1.0", a[0], out), set()
    if op in _UNARY_FLOAT:
        return _UNARY_FLOAT[op].format(*a), ({"_tanh"} if op == "tanh" else set())
    if op == "gelu":
        if attrs["approximate"] == "tanh":
            x = a[0]
            return f"0.5 * {x} * (1.0 + _tanh(0.7978845608028654 * ({x} + 0.044715 * {x} * {x} * {x})))", {"_tanh"}
        return f"0.5 * {a[0]} * (1.0 + tl.erf({a[0]} * 0.7071067811865476))", set()
    if op == "pow":
        return _POW[pow_exponent(node)].format(a[0]), set()  # type: ignore[index]
    if op in _BINARY_ARITH:
        if out == torch.bool:  # torch: bool + bool is logical or, bool * bool logical and
            return (f"{a[0]} | {a[1]}" if op == "add" else f"{a[0]} & {a[1]}"), set()
        return _BINARY_ARITH[op].format(*a), set()
    if op in _COMPARE:
        return f"{a[0]} {_COMPARE[op]} {a[1]}", set()
    if op == "neg":
        return f"-{a[0]}", set()
    if op == "abs":
        return f"tl.abs({a[0]})", set()
    if op == "relu":
        return f"tl.where({a[0]} < 0, 0, {a[0]})", set()
    if op == "floor":
        return (f"tl.floor({a[0]})" if _is_float(out) else a[0]), set()
    if op in ("maximum", "minimum"):
        fn = "tl.maximum" if op == "maximum" else "tl.minimum"
        nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float(out) else ""
        return f"{fn}({a[0]}, {a[1]}{nan})", set()
    if op == "remainder":
        return f"_remainder({a[0]}, {a[1]})", {"_remainder"}
    if op == "div":
        return _div(a, attrs["rounding_mode"], out)
    if op == "clamp":
        # torch.clamp(NaN) is NaN: the float bounds propagate it (tl.maximum alone returns the bound)
        x = a[0]
        nan = ", propagate_nan=tl.PropagateNan.ALL" if _is_float(out) else ""
        if attrs["min"] is not None:
            x = f"tl.maximum({x}, {literal_code(attrs['min'], out)}{nan})"
        if attrs["max"] is not None:
            x = f"tl.minimum({x}, {literal_code(attrs['max'], out)}{nan})"
        return x, set()
    if op == "logical_not":
        return f"{a[0]} == 0", set()
    if op == "bitwise_not":
        return (f"{a[0]} == 0" if out == torch.bool else f"~{a[0]}"), set()
    if op in ("logical_and", "bitwise_and"):
        return f"{a[0]} & {a[1]}", set()
    if op in ("logical_or", "bitwise_or"):
        return f"{a[0]} | {a[1]}", set()
    raise NotImplementedError(f"no Triton lowering for op {op!r}; the partitioner should have left it to torch")


def _div(a: list[str], mode: Optional[str], out: torch.dtype) -> tuple[str, set[str]]:
    # tl.div_rn: IEEE division as torch does (Triton's `/` may be off by an ulp on the GPU, and
    # x / x must stay exactly 1 before a floor)
    if mode is None:
        return _true_div(a[0], a[1], out), set()
    if _is_float(out):
        q = _true_div(a[0], a[1], out)
        if mode == "floor":
            return f"tl.floor({q})", set()
        return f"tl.where({q} < 0, tl.ceil({q}), tl.floor({q}))", set()
    if mode == "floor":
        return f"_floordiv_int({a[0]}, {a[1]})", {"_floordiv_int"}
    return f"{a[0]} // {a[1]}", set()  # Triton's integer // truncates, as rounding_mode="trunc" asks


def _true_div(a: str, b: str, out: torch.dtype) -> str:
    return f"tl.div_rn({a}, {b})" if compute_dtype(out) == torch.float32 else f"{a} / {b}"


def _cast(x: Val, src: torch.dtype, out: torch.dtype) -> str:
    """An explicit cast from IR dtype ``src`` to ``out``: narrow floats round here (the model asked for it)."""
    if x.literal is not None:
        return literal_code(x.literal, out)
    if src == out:
        return x.code
    if out == torch.bool:
        return f"{x.code} != 0"
    if out in NARROW_FLOATS:
        wide = x.code if x.dtype == torch.float32 else f"{x.code}.to(tl.float32)"
        return f"{wide}.to({TL_DTYPE[out]}).to(tl.float32)"
    target = compute_dtype(out)
    if x.dtype == target:
        return x.code
    return f"{x.code}.to({TL_DTYPE[target]})"
