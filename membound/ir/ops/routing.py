"""Routing ops used by MoE layers and sampling: ``topk`` and ``sort`` (two results: values, i64
indices) and ``histc`` (tokens per expert).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy
import torch

from membound.ir.ops import REQUIRED, define_op, per_input
from membound.ir.ops._common import dim_attr, fail, norm_dim, reduces_dim
from membound.ir.types import TensorType


def _check_bool(op: str, value: Any, attr: str) -> None:
    if not isinstance(value, bool):
        fail(op, f"attribute {attr} must be a bool, got {value!r}", TypeError)


def _values_and_indices(x: TensorType, shape: Sequence[sympy.Expr]) -> list[TensorType]:
    return [TensorType(x.dtype, shape), TensorType(torch.int64, shape)]


def _sort_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """A comparison sort: about n * (1 + log2 n) comparisons per row."""
    x = ins[0]
    n = x.shape[norm_dim("sort", attrs.get("dim", -1), x.rank)] if x.rank else sympy.Integer(1)
    return x.numel() * (1 + sympy.ceiling(sympy.log(n, 2)))


# ---------------------------------------------------------------------------------------------
# topk / sort
# ---------------------------------------------------------------------------------------------


def _infer_topk(x: TensorType, *, k: Any, dim: int, largest: bool, sorted: bool) -> list[TensorType]:
    if x.rank == 0:
        fail("topk", f"needs an input of rank >= 1, got {x}")
    axis = norm_dim("topk", dim, x.rank)
    kk = dim_attr("topk", k, "k")
    if kk.is_negative or (kk - x.shape[axis]).is_positive:
        fail("topk", f"attribute k={kk} is outside [0, {x.shape[axis]}] for dim {axis} of {x}")
    _check_bool("topk", largest, "largest")
    _check_bool("topk", sorted, "sorted")
    shape = list(x.shape)
    shape[axis] = kk
    return _values_and_indices(x, shape)


def _topk(x: torch.Tensor, *, k: int, dim: int, largest: bool, sorted: bool) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.topk(x, int(k), dim=dim, largest=largest, sorted=sorted)
    return values, indices


define_op("topk", inputs=("x",), attrs={"k": REQUIRED, "dim": -1, "largest": True, "sorted": True},
          kind="routing", infer=_infer_topk, reference=_topk, flops=per_input(2),
          doc="(values, i64 indices) of the k largest (or smallest) entries along dim", reduces=reduces_dim)


def _infer_sort(x: TensorType, *, dim: int, descending: bool, stable: bool) -> list[TensorType]:
    if x.rank == 0:
        fail("sort", f"needs an input of rank >= 1, got {x}")
    norm_dim("sort", dim, x.rank)
    _check_bool("sort", descending, "descending")
    _check_bool("sort", stable, "stable")
    return _values_and_indices(x, x.shape)


def _sort(x: torch.Tensor, *, dim: int, descending: bool, stable: bool) -> tuple[torch.Tensor, torch.Tensor]:
    values, indices = torch.sort(x, dim=dim, descending=descending, stable=stable)
    return values, indices


define_op("sort", inputs=("x",), attrs={"dim": -1, "descending": False, "stable": False}, kind="routing",
          infer=_infer_sort, reference=_sort, flops=_sort_flops,
          doc="(values, i64 indices) sorted along dim; stable keeps the order of equal entries", reduces=reduces_dim)


# ---------------------------------------------------------------------------------------------
# histc
# ---------------------------------------------------------------------------------------------


def _infer_histc(x: TensorType, *, bins: Any, min: Any, max: Any) -> TensorType:
    if x.dtype == torch.bool:
        fail("histc", f"x must be a float or integer tensor, got {x}", TypeError)
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        fail("histc", f"attribute bins must be a positive int, got {bins!r}")
    for attr, v in (("min", min), ("max", max)):
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            fail("histc", f"attribute {attr} must be a python int/float, got {v!r}", TypeError)
    if min > max:
        fail("histc", f"attribute min={min} is larger than max={max}")
    return TensorType(x.dtype, (bins,))


def _histc(x: torch.Tensor, *, bins: int, min: Any, max: Any) -> torch.Tensor:
    """torch.histc; integer x (what transformers passes on CUDA) is counted in fp64 on devices whose
    histc takes only floats (the CPU), and the counts come back in x's dtype as torch's CUDA kernel gives."""
    if x.dtype.is_floating_point or x.device.type == "cuda":
        return torch.histc(x, bins=bins, min=min, max=max)
    return torch.histc(x.double(), bins=bins, min=min, max=max).to(x.dtype)


define_op("histc", inputs=("x",), attrs={"bins": REQUIRED, "min": REQUIRED, "max": REQUIRED}, kind="routing",
          infer=_infer_histc, reference=_histc, flops=per_input(1),
          doc="counts of x in bins equal-width bins over [min, max] (min == max: the data's range); "
              "float or integer x, counts in x's dtype")
