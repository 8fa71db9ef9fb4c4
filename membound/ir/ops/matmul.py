"""Matrix products: ``linear`` (x @ W.T + b), batched ``matmul`` and ``grouped_mm`` (MoE experts).

All operands of one product share a dtype (torch requires it; quantized weights are their own ops).
FLOPs count a multiply-add as 2: ``linear`` = 2*M*N*K (+ M*N for the bias).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sympy
import torch

from membound.ir.ops import REQUIRED, default_bytes, define_op, get_op
from membound.ir.ops._common import (
    fail,
    numel,
    require_float,
    require_index,
    require_same_dim,
    same_dtype,
    shape_str,
)
from membound.ir.types import TensorType, broadcast_shapes

# ---------------------------------------------------------------------------------------------
# linear: x[..., K] @ weight[N, K].T (+ bias[N]) -> [..., N]
# ---------------------------------------------------------------------------------------------


def _infer_linear(x: TensorType, weight: TensorType, bias: TensorType | None = None, *,
                  op: str = "linear") -> TensorType:
    named = [("x", x), ("weight", weight)] + ([("bias", bias)] if bias is not None else [])
    dtype = same_dtype(op, *named)
    require_float(op, x, "x")
    if x.rank < 1 or weight.rank != 2:
        fail(op, f"needs x[..., K] and weight[N, K], got x {x} and weight {weight}")
    n, k = weight.shape
    require_same_dim(op, x.shape[-1], k, f"x {x} and weight {weight} disagree on K")
    if bias is not None:
        if bias.rank != 1:
            fail(op, f"bias must be [N] = [{n}], got {bias}")
        require_same_dim(op, bias.shape[0], n, f"bias {bias} vs weight {weight} N")
    return TensorType(dtype, x.shape[:-1] + (n,))


def _linear_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    x, weight = ins[0], ins[1]
    m = numel(x.shape[:-1])
    n, k = weight.shape
    flops = 2 * m * n * k
    if len(ins) > 2:
        flops += m * n
    return flops


define_op("linear", inputs=("x", "weight", "bias?"), kind="matmul", infer=_infer_linear,
          reference=torch.nn.functional.linear, flops=_linear_flops,
          doc="x[..., K] @ weight[N, K].T (+ bias[N]) -> [..., N]", positionwise=True, eager_class="gemv")


# ---------------------------------------------------------------------------------------------
# matmul: a[..., M, K] @ b[..., K, N], batch dims broadcast (rank >= 2 each)
# ---------------------------------------------------------------------------------------------


def _infer_matmul(a: TensorType, b: TensorType) -> TensorType:
    dtype = same_dtype("matmul", ("a", a), ("b", b))
    if a.rank < 2 or b.rank < 2:
        fail("matmul", f"needs operands of rank >= 2 (reshape vectors first), got a {a} and b {b}")
    require_same_dim("matmul", a.shape[-1], b.shape[-2], f"a {a} and b {b} disagree on K")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError as e:
        fail("matmul", f"batch dims {shape_str(a.shape[:-2])} and {shape_str(b.shape[:-2])} do not broadcast ({e})")
    return TensorType(dtype, batch + (a.shape[-2], b.shape[-1]))


def _matmul_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    k = ins[0].shape[-1]
    return 2 * outs[0].numel() * k


define_op("matmul", inputs=("a", "b"), kind="matmul", infer=_infer_matmul, reference=torch.matmul,
          flops=_matmul_flops, doc="torch.matmul for rank >= 2: [..., M, K] @ [..., K, N], batch dims broadcast",
          eager_class="gemv")


# ---------------------------------------------------------------------------------------------
# grouped_mm: rows of x sorted by group; group e = rows [offsets[e-1], offsets[e]) times w[e]
# ---------------------------------------------------------------------------------------------


def _infer_grouped_mm(x: TensorType, w: TensorType, offsets: TensorType) -> TensorType:
    dtype = same_dtype("grouped_mm", ("x", x), ("w", w))
    require_float("grouped_mm", x, "x")
    if x.rank != 2 or w.rank != 3 or offsets.rank != 1:
        fail("grouped_mm", f"needs x[N, K], w[E, K, M], offsets[E]; got x {x}, w {w}, offsets {offsets}")
    require_index("grouped_mm", offsets, "offsets")
    require_same_dim("grouped_mm", x.shape[1], w.shape[1], f"x {x} and w {w} disagree on K")
    require_same_dim("grouped_mm", offsets.shape[0], w.shape[0], f"offsets {offsets} and w {w} disagree on E")
    return TensorType(dtype, (x.shape[0], w.shape[2]))


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Rows past ``offsets[-1]`` belong to no group and stay zero (as transformers' fallback)."""
    out = torch.zeros(x.shape[0], w.shape[2], dtype=x.dtype, device=x.device)
    start = 0
    for e, end in enumerate(offsets.tolist()):
        if end > start:
            out[start:end] = x[start:end] @ w[e]
        start = end
    return out


def _grouped_mm_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    x, w = ins[0], ins[1]
    return 2 * x.shape[0] * x.shape[1] * w.shape[2]  # each row meets one expert


def _grouped_mm_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """x, the offsets and the result once, and the weights of the groups that can have rows: at most one a row,
    ``min(E, N)`` of the E (a decode step's few routed rows read their experts only)."""
    x, w, offsets = ins
    per_group = w.nbytes() / w.shape[0]
    return x.nbytes() + offsets.nbytes() + outs[0].nbytes() + sympy.Min(w.shape[0], x.shape[0]) * per_group


define_op("grouped_mm", inputs=("x", "w", "offsets"), kind="matmul", infer=_infer_grouped_mm,
          reference=_grouped_mm, flops=_grouped_mm_flops, bytes=_grouped_mm_bytes, host_sync=True,
          doc="x[N, K] rows grouped by cumulative ends offsets[E]; group e times w[e][K, M] -> [N, M]")


# ---------------------------------------------------------------------------------------------
# gated_linear: linear(act(gate) * up, weight), the down projection of a gated MLP (SwiGLU)
# ---------------------------------------------------------------------------------------------
GATED_ACTIVATIONS = {"silu": torch.nn.functional.silu}


def _infer_gated_linear(gate: TensorType, up: TensorType, weight: TensorType, act: str = "silu", *,
                        op: str = "gated_linear") -> TensorType:
    dtype = same_dtype(op, ("gate", gate), ("up", up), ("weight", weight))
    require_float(op, gate, "gate")
    if act not in GATED_ACTIVATIONS:
        fail(op, f"act must be one of {sorted(GATED_ACTIVATIONS)}, got {act!r}")
    if gate.rank < 1 or weight.rank != 2 or up.rank != gate.rank:
        fail(op, f"needs gate[..., K], up[..., K] and weight[N, K], got gate {gate}, up {up}, "
                             f"weight {weight}")
    for a, b in zip(gate.shape, up.shape):
        require_same_dim(op, a, b, f"gate {gate} and up {up} must have one shape")
    n, k = weight.shape
    require_same_dim(op, gate.shape[-1], k, f"gate {gate} and weight {weight} disagree on K")
    return TensorType(dtype, gate.shape[:-1] + (n,))


def _gated_linear(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """Exactly eager's ``down(act(gate) * up)``: the activation and the product each rounded to the dtype."""
    return torch.nn.functional.linear(GATED_ACTIVATIONS[act](gate) * up, weight)


def _gated_linear_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    gate, weight = ins[0], ins[2]
    m = numel(gate.shape[:-1])
    n, k = weight.shape
    return 2 * m * n * k + 5 * m * k  # the product, plus silu (4) and the gating multiply per input element


define_op("gated_linear", inputs=("gate", "up", "weight"), attrs={"act": "silu"}, kind="matmul",
          infer=_infer_gated_linear, reference=_gated_linear, flops=_gated_linear_flops,
          doc="linear(act(gate) * up, weight): a gated MLP's down projection with its gating fused in "
              "(the product act(gate) * up is never written)", positionwise=True)


# ---------------------------------------------------------------------------------------------
# linear_glu: act(g) * u where g, u are the halves of linear(x, weight[2N, K]): a gated MLP's merged
# gate/up projection with its gating in the epilogue (fuse-linear-glu)
# ---------------------------------------------------------------------------------------------


def _infer_linear_glu(x: TensorType, weight: TensorType, act: str = "silu", *, op: str = "linear_glu") -> TensorType:
    dtype = same_dtype(op, ("x", x), ("weight", weight))
    require_float(op, x, "x")
    if act not in GATED_ACTIVATIONS:
        fail(op, f"act must be one of {sorted(GATED_ACTIVATIONS)}, got {act!r}")
    if x.rank < 1 or weight.rank != 2:
        fail(op, f"needs x[..., K] and weight[2N, K], got x {x}, weight {weight}")
    rows, k = weight.shape
    require_same_dim(op, x.shape[-1], k, f"x {x} and weight {weight} disagree on K")
    half = rows / 2
    if isinstance(half, sympy.Expr) and half.is_number and not half.is_Integer:
        fail(op, f"weight {weight} must have an even number of rows (the gate rows, then the up rows)")
    return TensorType(dtype, x.shape[:-1] + (sympy.simplify(half),))


def _linear_glu(x: torch.Tensor, weight: torch.Tensor, act: str = "silu") -> torch.Tensor:
    """Exactly eager's ``act(g) * u`` after ``g, u = linear(x, weight).chunk(2, -1)``: the projection, the
    activation and the product each rounded to the dtype."""
    g, u = torch.nn.functional.linear(x, weight).chunk(2, dim=-1)
    return GATED_ACTIVATIONS[act](g) * u


def _linear_glu_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    x, weight = ins[0], ins[1]
    m = numel(x.shape[:-1])
    rows, k = weight.shape
    return 2 * m * rows * k + 5 * outs[0].numel()  # the product, plus silu (4) and the gating multiply


define_op("linear_glu", inputs=("x", "weight"), attrs={"act": "silu"}, kind="matmul",
          infer=_infer_linear_glu, reference=_linear_glu, flops=_linear_glu_flops,
          doc="act(g) * u where g, u = linear(x, weight).chunk(2, -1): a gated MLP's merged gate/up "
              "projection with the gating in its epilogue (the [.., 2N] projection is never written)",
          positionwise=True)


# ---------------------------------------------------------------------------------------------
# linear_rope: linear(x, weight, bias) whose first rope_cols columns (whole heads of head_dim) are rotated
# as HF's apply_rotary_pos_emb rotates q and k (fuse-rope-linear): a merged q/k/v projection at decode
# ---------------------------------------------------------------------------------------------


def _infer_linear_rope(x: TensorType, weight: TensorType, cos: TensorType, sin: TensorType,
                       bias: TensorType | None = None, *, head_dim: int, rope_cols: int) -> TensorType:
    op = "linear_rope"
    return _check_rope(op, _infer_linear(x, weight, bias, op=op), x, weight, cos, sin, head_dim, rope_cols)


def _check_rope(op: str, out: TensorType, x: TensorType, weight: TensorType, cos: TensorType, sin: TensorType,
                head_dim: int, rope_cols: int) -> TensorType:
    """``out`` (the product's type) once the rotation's operands and attributes check out: cos / sin of x's dtype,
    broadcast to x's rows ``[..., head_dim]``; ``rope_cols`` whole heads of an even ``head_dim`` within the weight's
    rows."""
    same_dtype(op, ("x", x), ("cos", cos), ("sin", sin))
    if not isinstance(head_dim, int) or head_dim <= 0 or head_dim % 2:
        fail(op, f"head_dim must be a positive even int, got {head_dim!r}")
    if not isinstance(rope_cols, int) or rope_cols < 0 or rope_cols % head_dim:
        fail(op, f"rope_cols must be whole heads of head_dim={head_dim}, got {rope_cols!r}")
    n = weight.shape[0]
    if n.is_Integer and rope_cols > int(n):
        fail(op, f"rope_cols={rope_cols} exceeds the weight's {n} rows")
    want = x.shape[:-1] + (sympy.Integer(head_dim),)
    for name, t in (("cos", cos), ("sin", sin)):
        try:
            if broadcast_shapes(t.shape, want) != want:
                raise ValueError("it would widen the rows")
        except ValueError as e:
            fail(op, f"{name} {t} must broadcast to x's rows {shape_str(want)} ({e})")
    return out


def rope_rows(t: torch.Tensor, lead: tuple, head_dim: int, name: str = "cos") -> torch.Tensor:
    """``t`` (cos or sin) broadcast to ``lead + (head_dim,)``: one ``[head_dim]`` table per row of x."""
    want = tuple(lead) + (head_dim,)
    try:
        return torch.broadcast_to(t, want)
    except RuntimeError as e:
        raise ValueError(f"linear_rope: {name} {tuple(t.shape)} must broadcast to x's rows {want}") from e


def _linear_rope(x: torch.Tensor, weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                 bias: torch.Tensor | None = None, *, head_dim: int, rope_cols: int) -> torch.Tensor:
    """Exactly eager's rounding: the projection, then per rotated head ``t * cos + rotate_half(t) * sin`` (each
    product and the sum rounded to the dtype; rotate_half(t) = cat(-t[D/2:], t[:D/2]))."""
    return rope_columns(torch.nn.functional.linear(x, weight, bias), cos, sin, head_dim=head_dim, rope_cols=rope_cols)


def rope_columns(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, head_dim: int, rope_cols: int
                 ) -> torch.Tensor:
    """``y`` (a projection's output) with its first ``rope_cols`` columns rotated per head as eager rotates
    them (``linear_rope``'s epilogue)."""
    if rope_cols == 0:
        return y
    lead = tuple(y.shape[:-1])
    t = y[..., :rope_cols].unflatten(-1, (rope_cols // head_dim, head_dim))
    c = rope_rows(cos, lead, head_dim, "cos").unsqueeze(-2)
    s = rope_rows(sin, lead, head_dim, "sin").unsqueeze(-2)
    half = head_dim // 2
    rotated = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
    roped = (t * c + rotated * s).flatten(-2)
    return torch.cat((roped, y[..., rope_cols:]), dim=-1)


def _linear_rope_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    m = numel(ins[0].shape[:-1])
    bias = [ins[4]] if len(ins) > 4 else []
    return _linear_flops([ins[0], ins[1], *bias], outs, attrs) + 3 * m * attrs["rope_cols"]


define_op("linear_rope", inputs=("x", "weight", "cos", "sin", "bias?"),
          attrs={"head_dim": REQUIRED, "rope_cols": REQUIRED}, kind="matmul", infer=_infer_linear_rope,
          reference=_linear_rope, flops=_linear_rope_flops,
          doc="linear(x, weight, bias) with its first rope_cols columns (whole heads of head_dim) rotated as "
              "HF's apply_rotary_pos_emb rotates q and k (cos/sin: [..., head_dim] per row of x)")


# ---------------------------------------------------------------------------------------------
# linears with a prologue or an epilogue (fuse-norm-linear, fuse-linear-residual): at decode each one
# is a launch less per use, the GEMV forming its input or finishing its output in registers
# ---------------------------------------------------------------------------------------------


def _infer_rms_norm_linear(x: TensorType, norm_weight: TensorType, weight: TensorType,
                           bias: TensorType | None = None, *, eps: float) -> TensorType:
    op = "rms_norm_linear"
    named = [("x", x), ("norm_weight", norm_weight), ("weight", weight)]
    same_dtype(op, *named, *([("bias", bias)] if bias is not None else []))
    if not isinstance(eps, float):
        fail(op, f"attribute eps must be a float, got {eps!r}", TypeError)
    if norm_weight.rank != 1:
        fail(op, f"norm_weight must be [K], got {norm_weight}")
    require_same_dim(op, norm_weight.shape[0], x.shape[-1] if x.rank else 0, f"norm_weight {norm_weight} vs x {x}")
    return _infer_linear(x, weight, bias, op=op)


def _rms_norm_linear(x: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                     bias: torch.Tensor | None = None, *, eps: float) -> torch.Tensor:
    """Exactly eager's ``linear(rms_norm(x, norm_weight), weight, bias)``."""
    return torch.nn.functional.linear(get_op("rms_norm").reference(x, norm_weight, eps=eps), weight, bias)


def _rms_norm_linear_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    x = ins[0]
    return _linear_flops([x, ins[2]] + list(ins[3:]), outs, attrs) + 5 * x.numel()  # the norm: 5 per element


def _rms_norm_linear_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Its operands once, plus every program's re-read of its rows of x for their rms (the prologue)."""
    x, weight = ins[0], ins[2]
    return default_bytes(ins, outs, attrs) + _reread_bytes(x, weight.shape[0], x.shape[-1] * x.dtype.itemsize)


define_op("rms_norm_linear", inputs=("x", "norm_weight", "weight", "bias?"), attrs={"eps": REQUIRED},
          kind="matmul", infer=_infer_rms_norm_linear, reference=_rms_norm_linear, flops=_rms_norm_linear_flops,
          bytes=_rms_norm_linear_bytes,
          doc="linear(rms_norm(x, norm_weight, eps), weight, bias): the norm formed as the GEMV loads x "
              "(the normed row is never written)", positionwise=True)


def _check_residual(op: str, out: TensorType, residual: TensorType) -> TensorType:
    if residual.dtype != out.dtype or residual.rank != out.rank:
        fail(op, f"residual {residual} must have the product's dtype and shape {out}")
    for a, b in zip(out.shape, residual.shape):
        require_same_dim(op, a, b, f"residual {residual} and the product {out} must have one shape")
    return out


def _infer_linear_add(x: TensorType, weight: TensorType, residual: TensorType,
                      bias: TensorType | None = None) -> TensorType:
    return _check_residual("linear_add", _infer_linear(x, weight, bias, op="linear_add"), residual)


def _linear_add(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """Exactly eager's ``residual + linear(x, weight, bias)``: the product rounded, then the sum."""
    return residual + torch.nn.functional.linear(x, weight, bias)


def _linear_add_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    return _linear_flops([ins[0], ins[1]] + list(ins[3:]), outs, attrs) + outs[0].numel()


define_op("linear_add", inputs=("x", "weight", "residual", "bias?"), kind="matmul", infer=_infer_linear_add,
          reference=_linear_add, flops=_linear_add_flops,
          doc="residual + linear(x, weight, bias): the residual add done as the GEMV stores its output",
          positionwise=True)


def _infer_gated_linear_add(gate: TensorType, up: TensorType, weight: TensorType, residual: TensorType,
                            act: str = "silu") -> TensorType:
    return _check_residual("gated_linear_add", _infer_gated_linear(gate, up, weight, act, op="gated_linear_add"),
                           residual)


def _gated_linear_add(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                      act: str = "silu") -> torch.Tensor:
    """Exactly eager's ``residual + down(act(gate) * up)``."""
    return residual + _gated_linear(gate, up, weight, act)


def _gated_linear_add_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    return _gated_linear_flops(ins[:3], outs, attrs) + outs[0].numel()


define_op("gated_linear_add", inputs=("gate", "up", "weight", "residual"), attrs={"act": "silu"}, kind="matmul",
          infer=_infer_gated_linear_add, reference=_gated_linear_add, flops=_gated_linear_add_flops,
          doc="residual + gated_linear(gate, up, weight): a gated MLP's down projection and the residual add "
              "after it in one GEMV", positionwise=True)


# ---------------------------------------------------------------------------------------------
# the norm's statistics from its producer (issue 13): the linear whose residual epilogue forms the row a
# norm reads also writes that row's sum of squares, in partial sums over fixed blocks of SUMSQ_COLUMNS
# output columns; the linear that consumes the normed row sums those few partials for its 1 / rms instead
# of re-reducing the row in every program
# ---------------------------------------------------------------------------------------------
SUMSQ_COLUMNS = 4  # output columns per partial sum: the decode GEMV's narrowest program owns 4 columns
# output columns per program of the decode GEMV (kernels/linear.py: 4 on the register path, M <= 2; 32 on
# the tensor-core path): how many programs each re-read the per-row data a norm needs (x for the norm
# prologue, the partials for the statistics form)
GEMV_COLUMNS = ((2, 4), (16, 32))


def sumsq_type(out: TensorType) -> TensorType:
    """The partials of ``out[..., N]``: fp32 ``[..., ceil(N / SUMSQ_COLUMNS)]``, block ``j`` the sum of the
    squares of columns ``[SUMSQ_COLUMNS * j, SUMSQ_COLUMNS * (j + 1))`` of the rounded output."""
    n = out.shape[-1]
    return TensorType(torch.float32, out.shape[:-1] + ((n + SUMSQ_COLUMNS - 1) // SUMSQ_COLUMNS,))


def sumsq_partials(y: torch.Tensor) -> torch.Tensor:
    """:func:`sumsq_type`'s partials of ``y`` (its values upcast to fp32, as eager's RMSNorm reduces them)."""
    n = y.shape[-1]
    blocks = -(-n // SUMSQ_COLUMNS)
    yf = torch.nn.functional.pad(y.float(), (0, blocks * SUMSQ_COLUMNS - n))
    return yf.pow(2).reshape(*y.shape[:-1], blocks, SUMSQ_COLUMNS).sum(-1)


def _reread_bytes(x: TensorType, n: sympy.Expr, row_bytes: sympy.Expr) -> sympy.Expr:
    """What every GEMV program of an ``[..., N]`` product re-reads before its main loop: ``row_bytes`` per
    token, ``ceil(N / columns)`` programs (:data:`GEMV_COLUMNS` at that token count). L2 traffic, priced as
    memory traffic: a prologue's loads sit in front of the weight stream (the H200 measured the norm
    prologue, which re-reads 4-8 KB a row, at 55 us for the fused GEMVs against 39 unfused, issue 13)."""
    m = numel(x.shape[:-1])
    pieces = [(m * ((n + cols - 1) // cols) * row_bytes, sympy.Le(m, rows)) for rows, cols in GEMV_COLUMNS]
    if all(c in (sympy.true, sympy.false) for _, c in pieces):
        return next((b for b, c in pieces if c == sympy.true), sympy.Integer(0))
    return sympy.Piecewise(*pieces, (sympy.Integer(0), True))  # past 16 rows: cuBLAS, the norm apart


def _infer_linear_add_sumsq(x: TensorType, weight: TensorType, residual: TensorType,
                            bias: TensorType | None = None) -> list[TensorType]:
    out = _check_residual("linear_add_sumsq", _infer_linear(x, weight, bias, op="linear_add_sumsq"), residual)
    return [out, sumsq_type(out)]


def _linear_add_sumsq(x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                      bias: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``linear_add``'s sum and the partial sums of its squares."""
    y = _linear_add(x, weight, residual, bias)
    return y, sumsq_partials(y)


def _linear_add_sumsq_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                            attrs: dict[str, Any]) -> sympy.Expr:
    return _linear_add_flops(ins, outs, attrs) + 2 * outs[0].numel()  # a square and an add per output


def _gated_linear_add_sumsq_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                                  attrs: dict[str, Any]) -> sympy.Expr:
    return _gated_linear_add_flops(ins, outs, attrs) + 2 * outs[0].numel()


define_op("linear_add_sumsq", inputs=("x", "weight", "residual", "bias?"), kind="matmul",
          infer=_infer_linear_add_sumsq, reference=_linear_add_sumsq,
          flops=_linear_add_sumsq_flops,
          doc="(residual + linear(x, weight, bias), fp32 sums of its squares per block of SUMSQ_COLUMNS "
              "columns): linear_add that also writes the statistics of the next rms_norm", positionwise=True)


def _infer_gated_linear_add_sumsq(gate: TensorType, up: TensorType, weight: TensorType, residual: TensorType,
                                  act: str = "silu") -> list[TensorType]:
    out = _check_residual("gated_linear_add_sumsq",
                          _infer_gated_linear(gate, up, weight, act, op="gated_linear_add_sumsq"), residual)
    return [out, sumsq_type(out)]


def _gated_linear_add_sumsq(gate: torch.Tensor, up: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor,
                            act: str = "silu") -> tuple[torch.Tensor, torch.Tensor]:
    """``gated_linear_add``'s sum and the partial sums of its squares."""
    y = _gated_linear_add(gate, up, weight, residual, act)
    return y, sumsq_partials(y)


define_op("gated_linear_add_sumsq", inputs=("gate", "up", "weight", "residual"), attrs={"act": "silu"},
          kind="matmul", infer=_infer_gated_linear_add_sumsq, reference=_gated_linear_add_sumsq,
          flops=_gated_linear_add_sumsq_flops,
          doc="(residual + gated_linear(gate, up, weight), fp32 sums of its squares per block of "
              "SUMSQ_COLUMNS columns): gated_linear_add that also writes the statistics of the next rms_norm",
          positionwise=True)


def _infer_rms_norm_linear_sumsq(x: TensorType, sumsq: TensorType, norm_weight: TensorType, weight: TensorType,
                                 bias: TensorType | None = None, *, eps: float,
                                 op: str = "rms_norm_linear_sumsq") -> TensorType:
    want = sumsq_type(x)
    if sumsq.dtype != torch.float32 or sumsq.rank != want.rank:
        fail(op, f"sumsq must be the partials {want} of x {x}, got {sumsq}")
    for a, b in zip(sumsq.shape, want.shape):
        require_same_dim(op, a, b, f"sumsq {sumsq} must be the partials {want} of x {x}")
    named = [("x", x), ("norm_weight", norm_weight), ("weight", weight)]
    same_dtype(op, *named, *([("bias", bias)] if bias is not None else []))
    if not isinstance(eps, float):
        fail(op, f"attribute eps must be a float, got {eps!r}", TypeError)
    if norm_weight.rank != 1:
        fail(op, f"norm_weight must be [K], got {norm_weight}")
    require_same_dim(op, norm_weight.shape[0], x.shape[-1] if x.rank else 0, f"norm_weight {norm_weight} vs x {x}")
    return _infer_linear(x, weight, bias, op=op)


def _rms_norm_linear_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor, weight: torch.Tensor,
                           bias: torch.Tensor | None = None, *, eps: float) -> torch.Tensor:
    """``linear(rms_norm(x, norm_weight), weight, bias)`` with the mean square taken from the partials
    ``sumsq`` of x (rounded as eager's RMSNorm: the normed value, then the product with the weight)."""
    return torch.nn.functional.linear(_normed_from_sumsq(x, sumsq, norm_weight, eps), weight, bias)


def _normed_from_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``rms_norm(x, norm_weight, eps)`` with the mean square from x's partial sums of squares ``sumsq``, rounded
    as eager's RMSNorm rounds it (the normed value, then the product with the weight)."""
    ms = sumsq.sum(-1, keepdim=True) / x.shape[-1]
    return (x.float() * torch.rsqrt(ms + eps)).to(x.dtype) * norm_weight


def _rms_norm_linear_sumsq_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                                 attrs: dict[str, Any]) -> sympy.Expr:
    x = ins[0]
    return _linear_flops([x, ins[3]] + list(ins[4:]), outs, attrs) + 3 * x.numel() + ins[1].numel()


def _rms_norm_linear_sumsq_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType],
                                 attrs: dict[str, Any]) -> sympy.Expr:
    x, sumsq, weight = ins[0], ins[1], ins[3]
    return default_bytes(ins, outs, attrs) + _reread_bytes(x, weight.shape[0], sumsq.shape[-1] * 4)


define_op("rms_norm_linear_sumsq", inputs=("x", "sumsq", "norm_weight", "weight", "bias?"),
          attrs={"eps": REQUIRED}, kind="matmul", infer=_infer_rms_norm_linear_sumsq,
          reference=_rms_norm_linear_sumsq, flops=_rms_norm_linear_sumsq_flops, bytes=_rms_norm_linear_sumsq_bytes,
          doc="linear(rms_norm(x, norm_weight, eps), weight, bias) with x's mean square from the partial sums "
              "of squares its producer wrote (sumsq): each GEMV program sums those, then norms x as it loads it",
          positionwise=True)


# ---------------------------------------------------------------------------------------------
# both at once (fuse-norm-linear over fuse-rope-linear's linear_rope): the q/k/v projection of a Llama layer
# after the first, its norm formed from the statistics the previous down projection wrote and q and k rotated
# in its epilogue
# ---------------------------------------------------------------------------------------------


def _infer_rms_norm_linear_rope_sumsq(x: TensorType, sumsq: TensorType, norm_weight: TensorType, weight: TensorType,
                                      cos: TensorType, sin: TensorType, bias: TensorType | None = None, *, eps: float,
                                      head_dim: int, rope_cols: int) -> TensorType:
    op = "rms_norm_linear_rope_sumsq"
    out = _infer_rms_norm_linear_sumsq(x, sumsq, norm_weight, weight, bias, eps=eps, op=op)
    return _check_rope(op, out, x, weight, cos, sin, head_dim, rope_cols)


def _rms_norm_linear_rope_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor,
                                weight: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                                bias: torch.Tensor | None = None, *, eps: float, head_dim: int,
                                rope_cols: int) -> torch.Tensor:
    """Its two parents composed: ``rms_norm_linear_sumsq``'s product (rounded), then ``linear_rope``'s rotation
    of its first ``rope_cols`` columns, each rounded as eager rounds them."""
    y = _rms_norm_linear_sumsq(x, sumsq, norm_weight, weight, bias, eps=eps)
    return rope_columns(y, cos, sin, head_dim=head_dim, rope_cols=rope_cols)


def _rms_norm_linear_rope_sumsq_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                                      attrs: dict[str, Any]) -> sympy.Expr:
    m = numel(ins[0].shape[:-1])
    bias = [ins[6]] if len(ins) > 6 else []
    return _rms_norm_linear_sumsq_flops(list(ins[:4]) + bias, outs, attrs) + 3 * m * attrs["rope_cols"]


define_op("rms_norm_linear_rope_sumsq", inputs=("x", "sumsq", "norm_weight", "weight", "cos", "sin", "bias?"),
          attrs={"eps": REQUIRED, "head_dim": REQUIRED, "rope_cols": REQUIRED}, kind="matmul",
          infer=_infer_rms_norm_linear_rope_sumsq, reference=_rms_norm_linear_rope_sumsq,
          flops=_rms_norm_linear_rope_sumsq_flops, bytes=_rms_norm_linear_sumsq_bytes,
          doc="rms_norm_linear_sumsq(x, sumsq, norm_weight, weight, bias) with its first rope_cols columns (whole "
              "heads of head_dim) rotated as linear_rope rotates them: the norm from the producer's partials in "
              "the GEMV's prologue, q and k's rotary embedding in its epilogue")


# ---------------------------------------------------------------------------------------------
# the gated MLP's merged gate/up projection with its norm (fuse-norm-linear over fuse-linear-glu's linear_glu):
# the post-attention RMSNorm from the statistics the o projection wrote, the gating in the epilogue
# ---------------------------------------------------------------------------------------------


def _infer_rms_norm_linear_glu_sumsq(x: TensorType, sumsq: TensorType, norm_weight: TensorType, weight: TensorType,
                                     *, eps: float, act: str = "silu") -> TensorType:
    op = "rms_norm_linear_glu_sumsq"
    _infer_rms_norm_linear_sumsq(x, sumsq, norm_weight, weight, eps=eps, op=op)  # the norm's operands
    return _infer_linear_glu(x, weight, act, op=op)


def _rms_norm_linear_glu_sumsq(x: torch.Tensor, sumsq: torch.Tensor, norm_weight: torch.Tensor,
                               weight: torch.Tensor, *, eps: float, act: str = "silu") -> torch.Tensor:
    """Its two parents composed: x normed from its partials as ``rms_norm_linear_sumsq`` norms it (rounded as
    eager rounds it), then ``linear_glu``'s ``act(g) * u`` over the merged projection."""
    return _linear_glu(_normed_from_sumsq(x, sumsq, norm_weight, eps), weight, act)


def _rms_norm_linear_glu_sumsq_flops(ins: Sequence[TensorType], outs: Sequence[TensorType],
                                     attrs: dict[str, Any]) -> sympy.Expr:
    x = ins[0]
    return _linear_glu_flops([x, ins[3]], outs, attrs) + 3 * x.numel() + ins[1].numel()


define_op("rms_norm_linear_glu_sumsq", inputs=("x", "sumsq", "norm_weight", "weight"),
          attrs={"eps": REQUIRED, "act": "silu"}, kind="matmul", infer=_infer_rms_norm_linear_glu_sumsq,
          reference=_rms_norm_linear_glu_sumsq, flops=_rms_norm_linear_glu_sumsq_flops,
          bytes=_rms_norm_linear_sumsq_bytes,
          doc="linear_glu(rms_norm(x, norm_weight, eps), weight) with x's mean square from the partial sums of "
              "squares its producer wrote (sumsq): the norm in the GEMV's prologue, act(g) * u in its epilogue",
          positionwise=True)


# ---------------------------------------------------------------------------------------------
# mlp_block(x[..., K], norm_weight[K], gate_up_weight[2I, K], down_weight[K, I]) -> [..., K]: a decode layer's gated
# MLP with its norm and residual, one op (fuse-mlp-block); one launch at batch 1 (kernels/mlp_block.py)
# ---------------------------------------------------------------------------------------------


def _infer_mlp_block(x: TensorType, norm_weight: TensorType, gate_up_weight: TensorType, down_weight: TensorType, *,
                     eps: Any, act: str = "silu") -> TensorType:
    op = "mlp_block"
    dtype = same_dtype(op, ("x", x), ("norm_weight", norm_weight), ("gate_up_weight", gate_up_weight),
                       ("down_weight", down_weight))
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
        fail(op, f"attribute eps must be a non-negative float, got {eps!r}", TypeError)
    h = _infer_linear_glu(TensorType(dtype, x.shape), gate_up_weight, act, op=op)
    if norm_weight.rank != 1 or down_weight.rank != 2:
        fail(op, f"needs norm_weight[K] and down_weight[K, I], got {norm_weight}, {down_weight}")
    require_same_dim(op, norm_weight.shape[0], x.shape[-1], f"norm_weight {norm_weight} vs x {x}")
    require_same_dim(op, down_weight.shape[0], x.shape[-1], f"down_weight {down_weight} rows vs x {x}")
    require_same_dim(op, down_weight.shape[1], h.shape[-1], f"down_weight {down_weight} columns vs I = "
                     f"{h.shape[-1]}")
    return TensorType(dtype, x.shape)


def _mlp_block(x: torch.Tensor, norm_weight: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor,
               *, eps: float, act: str = "silu") -> torch.Tensor:
    """The ops it stands for, each by its own reference (so the reference backend rounds as the unfused graph):
    ``linear_add(linear_glu(rms_norm(x, norm_weight), gate_up_weight), down_weight, x)``."""
    n = get_op("rms_norm").reference(x, norm_weight, eps=eps)
    return _linear_add(_linear_glu(n, gate_up_weight, act), down_weight, x)


def _mlp_block_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """The norm (5 a value), the gate/up product and its gating, the down product and the residual add."""
    x, _, gate_up, down = ins
    m = numel(x.shape[:-1])
    k = x.shape[-1]
    i = down.shape[1]
    return 5 * m * k + 2 * m * 2 * i * k + 5 * m * i + 2 * m * k * i + m * k


define_op("mlp_block", inputs=("x", "norm_weight", "gate_up_weight", "down_weight"),
          attrs={"eps": REQUIRED, "act": "silu"}, kind="matmul", infer=_infer_mlp_block, reference=_mlp_block,
          flops=_mlp_block_flops, positionwise=True,
          doc="x + linear(linear_glu(rms_norm(x, norm_weight, eps), gate_up_weight, act), down_weight): a decode "
              "layer's gated MLP with its norm and residual (fuse-mlp-block); one launch at batch 1")
