"""Weight-only quantized matmuls: ``quant_linear`` and ``quant_gated_linear``, and the packed formats.

At decode a linear's time is the time to stream its weight, so storing the weight in fewer bits
speeds it up by the ratio of the bytes. Activations stay in their dtype (fp32/fp16/bf16, "A16");
only the weight is stored quantized, and dequantized in registers by the kernel that reads it.

Formats (``scheme`` attribute; ``N`` output features, ``K`` input features, both any size):

- ``int8``: per-output-channel symmetric. ``qweight`` i8 ``[N, K]``, ``scales`` ``[N]`` in the
  activation dtype; ``w[n, k] = qweight[n, k] * scales[n]``; ``scales[n] = max|w[n, :]| / 127``.
- ``int4``: group-wise asymmetric along K, groups of ``group_size`` (32/64/128...; the last group of a
  row may be partial, and K may be smaller than one group). ``qweight`` u8 ``[N, ceil(K / 2)]``: two
  4-bit values per byte, ``q[n, 2j]`` in the low nibble and ``q[n, 2j + 1]`` in the high nibble (an
  odd K pads the last high nibble with 0). ``scales`` ``[N, G, 2]`` in the activation dtype,
  ``G = ceil(K / group_size)``, holding ``(scale, offset)`` of each group:
  ``w[n, k] = q[n, k] * scales[n, k // group_size, 0] + scales[n, k // group_size, 1]``, with
  ``scale = (max - min) / 15`` and ``offset = min`` of the group (so q in 0..15 spans [min, max]).
- ``fp8``: e4m3 (``torch.float8_e4m3fn``) per-output-channel: ``qweight`` ``[N, K]``, ``scales``
  ``[N]`` in the activation dtype, ``w[n, k] = float(qweight[n, k]) * scales[n]``,
  ``scales[n] = max|w[n, :]| / 448``.

``quantize(w, scheme, group_size)`` packs a float weight; ``dequantize(qweight, scales, scheme,
group_size, in_features, dtype)`` unpacks it. Both are plain torch, so the reference
implementation of each op is exactly "dequantize, then the float op", and the kernels are checked
against it. Byte costs count the packed weight and the scales, which is what ``explain`` shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

import sympy
import torch

from membound.ir.ops import REQUIRED, define_op
from membound.ir.ops._common import fail, numel, require_float, require_same_dim, same_dtype
from membound.ir.types import TensorType

SCHEMES = ("int8", "int4", "fp8")
INT4_GROUP_SIZES = (16, 32, 64, 128, 256)
FP8_MAX = 448.0  # largest finite float8_e4m3fn
QWEIGHT_DTYPE = {"int8": torch.int8, "int4": torch.uint8, "fp8": torch.float8_e4m3fn}
BITS = {"int8": 8, "int4": 4, "fp8": 8}


# ---------------------------------------------------------------------------------------------
# packing (plain torch; used by the quantize-weights pass, the references and the tests)
# ---------------------------------------------------------------------------------------------


def check_scheme(scheme: Any, group_size: Any = None, where: str = "quantize") -> None:
    if scheme not in SCHEMES:
        raise ValueError(f"{where}: scheme must be one of {SCHEMES}, got {scheme!r}")
    if scheme == "int4" and group_size not in INT4_GROUP_SIZES:
        raise ValueError(f"{where}: int4 group_size must be one of {INT4_GROUP_SIZES}, got {group_size!r}")


def num_groups(k: int, group_size: int) -> int:
    return -(-k // group_size)


def quantize(w: torch.Tensor, scheme: str, group_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """``(qweight, scales)`` of a float weight ``w[N, K]`` in ``scheme`` (see the module docstring).

    Computed in fp32; scales are stored in ``w``'s dtype, and the integer codes are chosen against
    the stored (rounded) scales, so ``dequantize`` reproduces the nearest representable value.
    """
    check_scheme(scheme, group_size)
    if w.dim() != 2 or not w.dtype.is_floating_point:
        raise ValueError(f"quantize: expects a float weight [N, K], got {tuple(w.shape)} {w.dtype}")
    n, k = w.shape
    wf = w.detach().float()
    if scheme in ("int8", "fp8"):
        top = 127.0 if scheme == "int8" else FP8_MAX
        amax = wf.abs().amax(dim=1) if k else torch.zeros(n, device=w.device)
        scales = (amax / top).clamp(min=torch.finfo(torch.float16).tiny).to(w.dtype)
        s = scales.float()[:, None]
        if scheme == "int8":
            q = torch.clamp(torch.round(wf / s), -127, 127).to(torch.int8)
        else:
            q = torch.clamp(wf / s, -FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q, scales
    g = num_groups(k, group_size)
    pad = g * group_size - k
    wp = torch.nn.functional.pad(wf, (0, pad)) if pad else wf
    groups = wp.view(n, g, group_size)
    # the padded tail of a partial group must not widen its range: take min/max over real columns
    valid = (torch.arange(g * group_size, device=w.device) < k).view(1, g, group_size)
    lo = torch.where(valid, groups, torch.inf).amin(dim=2)
    hi = torch.where(valid, groups, -torch.inf).amax(dim=2)
    scale = ((hi - lo) / 15.0).clamp(min=1e-8).to(w.dtype)
    offset = lo.to(w.dtype)
    q = torch.clamp(torch.round((groups - offset.float()[..., None]) / scale.float()[..., None]), 0, 15)
    q = q.view(n, g * group_size)[:, :k].to(torch.uint8)
    if k % 2:
        q = torch.nn.functional.pad(q, (0, 1))
    packed = q[:, 0::2] | (q[:, 1::2] << 4)
    return packed.contiguous(), torch.stack([scale, offset], dim=-1).contiguous()


def unpack_int4(qweight: torch.Tensor, in_features: int) -> torch.Tensor:
    """u8 ``[N, ceil(K/2)]`` -> the 4-bit codes as u8 ``[N, K]``."""
    lo = qweight & 0xF
    hi = qweight >> 4
    return torch.stack([lo, hi], dim=-1).view(qweight.shape[0], -1)[:, :in_features]


def dequantize(qweight: torch.Tensor, scales: torch.Tensor, scheme: str, group_size: int, in_features: int,
               dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """The float weight ``[N, K]`` a packed weight stands for, in ``dtype`` (default: the scales' dtype).

    Dequantization is computed in fp32 and rounded once to ``dtype``.
    """
    dtype = dtype or scales.dtype
    if scheme in ("int8", "fp8"):
        return (qweight.float() * scales.float()[:, None]).to(dtype)
    if scheme != "int4":
        raise ValueError(f"dequantize: unknown scheme {scheme!r}; expected one of {SCHEMES}")
    q = unpack_int4(qweight, in_features).float()
    group = torch.arange(in_features, device=qweight.device) // group_size
    s = scales[:, group, 0].float()
    o = scales[:, group, 1].float()
    return (q * s + o).to(dtype)


# ---------------------------------------------------------------------------------------------
# type rules and costs
# ---------------------------------------------------------------------------------------------


def _check_packed(op: str, qweight: TensorType, scales: TensorType, dtype: torch.dtype, scheme: Any,
                  group_size: Any, in_features: Any) -> tuple[Any, Any]:
    """Check the packed operands against the attributes; returns (N, K)."""
    try:
        check_scheme(scheme, group_size, op)
    except ValueError as e:
        fail(op, str(e).split(": ", 1)[1], TypeError)
    if isinstance(in_features, bool) or not isinstance(in_features, int) or in_features < 1:
        fail(op, f"attribute in_features must be a positive int, got {in_features!r}", TypeError)
    if qweight.dtype != QWEIGHT_DTYPE[scheme]:
        fail(op, f"{scheme} qweight must be {QWEIGHT_DTYPE[scheme]}, got {qweight}", TypeError)
    if qweight.rank != 2:
        fail(op, f"qweight must be 2-D, got {qweight}")
    n = qweight.shape[0]
    k = in_features
    packed_k = (k + 1) // 2 if scheme == "int4" else k
    require_same_dim(op, qweight.shape[1], packed_k, f"{scheme} qweight {qweight} for in_features={k} "
                                                     f"must have {packed_k} columns")
    if scales.dtype != dtype:
        fail(op, f"scales must have the activation dtype {dtype}, got {scales}", TypeError)
    if scheme == "int4":
        if scales.rank != 3:
            fail(op, f"int4 scales must be [N, groups, 2], got {scales}")
        require_same_dim(op, scales.shape[1], num_groups(k, group_size),
                         f"int4 scales {scales} for K={k}, group_size={group_size}: groups")
        require_same_dim(op, scales.shape[2], 2, f"int4 scales {scales} must end in (scale, offset) pairs")
    elif scales.rank != 1:
        fail(op, f"{scheme} scales must be [N], got {scales}")
    require_same_dim(op, scales.shape[0], n, f"scales {scales} vs qweight {qweight} N")
    return n, k


def _infer_quant_linear(x: TensorType, qweight: TensorType, scales: TensorType, bias: Optional[TensorType] = None,
                        *, scheme: Any, group_size: Any, in_features: Any) -> TensorType:
    require_float("quant_linear", x, "x")
    named = [("x", x)] + ([("bias", bias)] if bias is not None else [])
    dtype = same_dtype("quant_linear", *named)
    if x.rank < 1:
        fail("quant_linear", f"needs x[..., K], got {x}")
    n, k = _check_packed("quant_linear", qweight, scales, dtype, scheme, group_size, in_features)
    require_same_dim("quant_linear", x.shape[-1], k, f"x {x} and in_features={k} disagree on K")
    if bias is not None:
        if bias.rank != 1:
            fail("quant_linear", f"bias must be [N] = [{n}], got {bias}")
        require_same_dim("quant_linear", bias.shape[0], n, f"bias {bias} vs qweight {qweight} N")
    return TensorType(dtype, x.shape[:-1] + (n,))


def _quant_linear(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, bias: Optional[torch.Tensor] = None,
                  *, scheme: str, group_size: int, in_features: int) -> torch.Tensor:
    """Dequantize to x's dtype, then ``F.linear``: what an eager model with the dequantized weight computes."""
    w = dequantize(qweight, scales, scheme, group_size, in_features, x.dtype)
    return torch.nn.functional.linear(x, w, bias)


def _quant_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """2*M*N*K for the product, plus 2 per weight element to dequantize it (once, however large M)."""
    x, qweight = ins[0], ins[1]
    m = numel(x.shape[:-1])
    n, k = qweight.shape[0], attrs["in_features"]
    flops = 2 * m * n * k + 2 * n * k
    if len(ins) > 3:
        flops += m * n
    return flops


define_op("quant_linear", inputs=("x", "qweight", "scales", "bias?"),
          attrs={"scheme": REQUIRED, "group_size": 0, "in_features": REQUIRED}, kind="quant",
          infer=_infer_quant_linear, reference=_quant_linear, flops=_quant_flops,
          doc="x[..., K] @ dequantize(qweight, scales).T (+ bias[N]) -> [..., N]; weight-only int8/int4/fp8")


def _infer_quant_gated_linear(gate: TensorType, up: TensorType, qweight: TensorType, scales: TensorType, *,
                              scheme: Any, group_size: Any, in_features: Any, act: str = "silu") -> TensorType:
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    require_float("quant_gated_linear", gate, "gate")
    dtype = same_dtype("quant_gated_linear", ("gate", gate), ("up", up))
    if act not in GATED_ACTIVATIONS:
        fail("quant_gated_linear", f"act must be one of {sorted(GATED_ACTIVATIONS)}, got {act!r}")
    if gate.rank < 1 or up.rank != gate.rank:
        fail("quant_gated_linear", f"needs gate[..., K] and up[..., K], got gate {gate}, up {up}")
    for a, b in zip(gate.shape, up.shape):
        require_same_dim("quant_gated_linear", a, b, f"gate {gate} and up {up} must have one shape")
    n, k = _check_packed("quant_gated_linear", qweight, scales, dtype, scheme, group_size, in_features)
    require_same_dim("quant_gated_linear", gate.shape[-1], k, f"gate {gate} and in_features={k} disagree on K")
    return TensorType(dtype, gate.shape[:-1] + (n,))


def _quant_gated_linear(gate: torch.Tensor, up: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, *,
                        scheme: str, group_size: int, in_features: int, act: str = "silu") -> torch.Tensor:
    from membound.ir.ops.matmul import GATED_ACTIVATIONS

    w = dequantize(qweight, scales, scheme, group_size, in_features, gate.dtype)
    return torch.nn.functional.linear(GATED_ACTIVATIONS[act](gate) * up, w)


def _quant_gated_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    gate, qweight = ins[0], ins[2]
    m = numel(gate.shape[:-1])
    n, k = qweight.shape[0], attrs["in_features"]
    return 2 * m * n * k + 2 * n * k + 5 * m * k


define_op("quant_gated_linear", inputs=("gate", "up", "qweight", "scales"),
          attrs={"scheme": REQUIRED, "group_size": 0, "in_features": REQUIRED, "act": "silu"}, kind="quant",
          infer=_infer_quant_gated_linear, reference=_quant_gated_linear, flops=_quant_gated_flops,
          doc="quant_linear(act(gate) * up, ...): a gated MLP's down projection over a quantized weight")
