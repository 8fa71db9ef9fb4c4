"""Creation ops: ``constant`` (0-d scalar), ``full`` and ``arange``. They take no inputs.

``value`` attributes stay Python ``bool``/``int``/``float`` so the printed IR parses back to the same
value (``inf``/``nan`` included). References build their tensor on torch's default device: a backend
that runs elsewhere wraps the call in ``with torch.device(dev):``.
"""

from __future__ import annotations

import math
from typing import Any

import sympy
import torch

from membound.ir.ops import REQUIRED, define_op, zero_flops
from membound.ir.ops._common import attr_dtype, dim_attr, fail, ints, is_bool, is_float, shape_attr
from membound.ir.types import TensorType, is_static


def _check_value(op: str, value: Any, dtype: torch.dtype) -> None:
    """A python scalar that the dtype can hold without silently changing it."""
    if not isinstance(value, (bool, int, float)):
        fail(op, f"attribute value must be a python bool, int or float, got {value!r} ({type(value).__name__})",
             TypeError)
    if is_bool(dtype) and not isinstance(value, bool):
        fail(op, f"value {value!r} is not a bool but dtype is bool", TypeError)
    if not is_float(dtype) and isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        fail(op, f"value {value!r} does not fit integer dtype {dtype}", TypeError)


def _dtype(op: str, dtype: Any) -> torch.dtype:
    out = attr_dtype(op, dtype)
    if out is None:
        fail(op, "attribute dtype must be given", TypeError)
    return out


# ---------------------------------------------------------------------------------------------
# constant / full
# ---------------------------------------------------------------------------------------------


def _infer_constant(*, value: Any, dtype: Any) -> TensorType:
    dt = _dtype("constant", dtype)
    _check_value("constant", value, dt)
    return TensorType(dt, ())


def _in_range(value: Any, dtype: torch.dtype) -> Any:
    """``value`` as ``dtype`` rounds it: a finite float beyond the dtype's range (f32's ``finfo.min`` in fp16) becomes
    the infinity (or the max) a cast gives. ``torch.full`` refuses such values on CUDA ('cannot be converted ...
    without overflow') while the CPU rounds them; rounding here on the host makes both devices agree with a cast."""
    if (isinstance(value, float) and dtype.is_floating_point and math.isfinite(value)
            and abs(value) > torch.finfo(dtype).max):
        return float(torch.tensor(value, dtype=torch.float64).to(dtype))
    return value


def _constant(*, value: Any, dtype: Any) -> torch.Tensor:
    # torch.full, not torch.tensor: on a GPU torch.tensor copies from the host and stalls the stream
    dt = attr_dtype("constant", dtype)
    return torch.full((), _in_range(value, dt), dtype=dt)


define_op("constant", inputs=(), attrs={"value": REQUIRED, "dtype": REQUIRED}, kind="creation",
          infer=_infer_constant, reference=_constant, flops=zero_flops,
          doc="a 0-d tensor holding value (a python scalar; its dtype is chosen by the frontend)", source=True)


def _infer_full(*, shape: Any, value: Any, dtype: Any) -> TensorType:
    dt = _dtype("full", dtype)
    _check_value("full", value, dt)
    return TensorType(dt, shape_attr("full", shape))


def _full(*, shape: tuple[int, ...], value: Any, dtype: Any) -> torch.Tensor:
    dt = attr_dtype("full", dtype)
    return torch.full(ints(shape), _in_range(value, dt), dtype=dt)


define_op("full", inputs=(), attrs={"shape": REQUIRED, "value": REQUIRED, "dtype": REQUIRED}, kind="creation",
          infer=_infer_full, reference=_full, flops=zero_flops, doc="a tensor of shape filled with value",
          source=True)


# ---------------------------------------------------------------------------------------------
# arange: ceil((end - start) / step) elements
# ---------------------------------------------------------------------------------------------


def _bound(value: Any, attr: str) -> sympy.Expr:
    if isinstance(value, float):
        return sympy.Float(value)
    return dim_attr("arange", value, attr)


def _infer_arange(*, start: Any, end: Any, step: Any, dtype: Any) -> TensorType:
    dt = _dtype("arange", dtype)
    lo, hi, st = _bound(start, "start"), _bound(end, "end"), _bound(step, "step")
    if st.is_zero:
        fail("arange", "attribute step must not be 0")
    n = sympy.ceiling((hi - lo) / st)
    if n.is_number:
        if n < 0:
            fail("arange", f"start={start}, end={end}, step={step} give a negative length ({n})")
        n = sympy.Integer(int(n))
    elif not is_static(n) and n.is_negative:
        fail("arange", f"start={start}, end={end}, step={step} give a negative length ({n})")
    return TensorType(dt, (n,))


def _number(v: Any) -> Any:
    return v if isinstance(v, float) else int(v)


def _arange(*, start: Any, end: Any, step: Any, dtype: Any) -> torch.Tensor:
    return torch.arange(_number(start), _number(end), _number(step), dtype=attr_dtype("arange", dtype))


define_op("arange", inputs=(), attrs={"start": 0, "end": REQUIRED, "step": 1, "dtype": torch.int64},
          kind="creation", infer=_infer_arange, reference=_arange, flops=zero_flops,
          doc="start, start + step, ... below end: ceil((end - start) / step) elements", source=True)
