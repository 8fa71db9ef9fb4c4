"""Values inside a generated kernel and the dtype rules of generated code.

Values are held in a *compute dtype*: float16 and bfloat16 compute in float32 (loads upcast, stores
round), everything else in its own dtype. Only an explicit ``cast`` to a narrow float rounds in the
middle of a kernel (``x.to(tl.float16).to(tl.float32)``), so a cast the model wrote keeps its numerical
effect (RMSNorm's ``.to(x.dtype)`` before the weight).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Union

import torch

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
