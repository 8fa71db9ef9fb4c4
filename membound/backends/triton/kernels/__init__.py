"""The Triton kernel library: hand-written kernels for the ops that decode spends its time in.

``LIBRARY`` maps an IR op name to a launcher with the op's semantics (its torch reference,
``membound.ir.get_op(name).reference``):

    fn(*input_tensors, out: Optional[Tensor] = None, **attrs) -> Tensor

Every launcher checks shapes and dtypes (a mismatch raises, naming the op and the argument) and runs
the op's torch reference for the cases its kernel does not cover (each module's docstring lists
them; CPU tensors run the kernels only under ``TRITON_INTERPRET=1``). ``trace()`` records which path
each call took. Launchers that need more than the IR op gives take extra keyword arguments, all
optional: ``cached_attention(..., max_len=)`` (a host-known bound of the filled cache length),
``config=`` (tile overrides) on ``linear``, ``quant_linear``, ``attention`` and ``cached_attention``,
and ``attention(..., impl=)`` ("kernel" or "sdpa": overrides the per-shape cost rule).

Which op runs which launcher is one field of the op's entry in the lowering registry
(``membound.backends.triton.lowering``: ``library("moe", "moe:moe")``); ``LIBRARY`` is derived from it.
``add_rms_norm`` (the residual add fused into the norm, returning both) is not an IR op: the backend
generates that fusion as a row kernel, and benches/kernel_bench.py compares the two.
"""

from __future__ import annotations

import importlib
from typing import Callable

from membound.backends.triton.kernels._launch import trace
from membound.backends.triton.kernels.cache_write import cache_write, cache_write_bytes
from membound.backends.triton.kernels.decode_attention import DecodeConfig, cached_attention, cached_attention_bytes
from membound.backends.triton.kernels.embedding import embedding
from membound.backends.triton.kernels.flash_attention import FlashConfig, attention, flash_attention
from membound.backends.triton.kernels.linear import (
    SMALL_M,
    LinearConfig,
    gated_linear,
    gated_linear_add,
    gated_linear_add_sumsq,
    linear,
    linear_add,
    linear_add_sumsq,
    linear_bytes,
    linear_glu,
    linear_rope,
    rms_norm_linear,
    rms_norm_linear_glu_sumsq,
    rms_norm_linear_rope_sumsq,
    rms_norm_linear_sumsq,
)
from membound.backends.triton.kernels.moe import moe, moe_bytes, moe_experts, quant_moe, quant_moe_experts
from membound.backends.triton.kernels.norm import add_rms_norm, rms_norm, rms_norm_bytes
from membound.backends.triton.kernels.quant_matmul import (
    QuantConfig,
    quant_gated_linear,
    quant_linear,
    quant_linear_bytes,
)
from membound.backends.triton.lowering import library_launchers


def _launchers() -> dict[str, Callable]:
    """The launcher each lowering entry names (``library="module:function"``, in this package)."""
    out: dict[str, Callable] = {}
    for op, path in library_launchers().items():
        module, _, fn = path.partition(":")
        out[op] = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
    return out


# op -> launcher, from the lowering registry (``membound.backends.triton.lowering.TABLE``)
LIBRARY: dict[str, Callable] = _launchers()

__all__ = [
    "LIBRARY", "SMALL_M", "DecodeConfig", "FlashConfig", "LinearConfig", "QuantConfig", "add_rms_norm",
    "attention", "cache_write", "cache_write_bytes", "cached_attention", "cached_attention_bytes", "embedding",
    "flash_attention", "gated_linear", "gated_linear_add", "gated_linear_add_sumsq", "linear", "linear_add",
    "linear_add_sumsq", "linear_bytes", "linear_glu", "linear_rope", "moe",
    "moe_bytes", "moe_experts", "quant_gated_linear",
    "quant_linear", "quant_linear_bytes", "quant_moe", "quant_moe_experts", "rms_norm", "rms_norm_linear",
    "rms_norm_linear_glu_sumsq", "rms_norm_linear_rope_sumsq", "rms_norm_linear_sumsq", "rms_norm_bytes", "trace",
]
