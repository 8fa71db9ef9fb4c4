"""Reductions and row-wise normalisations: sum/mean/amax/amin, argmax, softmax/log_softmax, cumsum,
layer_norm and the composite rms_norm.

Result dtypes follow torch: ``sum``/``cumsum`` of integers or bools accumulate in i64, ``mean`` and
``softmax`` need a floating input (or a floating ``dtype`` attribute, which casts the input first).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sympy
import torch
import torch.nn.functional as F

from membound.ir.ops import REQUIRED, define_op, per_input
from membound.ir.ops._common import (
    attr_dtype,
    fail,
    is_float,
    lift_dim,
    lift_reduce_dims,
    norm_dim,
    norm_dims,
    promote_types,
    reduces_dim,
    reduces_dims,
    reduces_last,
    require_float,
    require_index,
    require_same_dim,
    same_dtype,
    shape_str,
)
from membound.ir.types import TensorType

# ---------------------------------------------------------------------------------------------
# sum / mean / amax / amin over a tuple of dims (empty = all)
# ---------------------------------------------------------------------------------------------


def _reduced_shape(op: str, x: TensorType, dims: Any, keepdim: bool, attr: str = "dims") -> tuple[sympy.Expr, ...]:
    axes = norm_dims(op, dims, x.rank, attr) or tuple(range(x.rank))
    if keepdim:
        return tuple(sympy.Integer(1) if i in axes else d for i, d in enumerate(x.shape))
    return tuple(d for i, d in enumerate(x.shape) if i not in axes)


def _all_dims(x: torch.Tensor, dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(dims) if dims else tuple(range(x.dim()))


def _accumulate_dtype(x: TensorType, dtype: torch.dtype | None) -> torch.dtype:
    """sum/cumsum: an explicit dtype wins; integers and bools accumulate in i64 (torch)."""
    if dtype is not None:
        return dtype
    return x.dtype if is_float(x.dtype) else torch.int64


def _infer_sum(x: TensorType, *, dims: Any, keepdim: bool, dtype: Any) -> TensorType:
    return TensorType(_accumulate_dtype(x, attr_dtype("sum", dtype)), _reduced_shape("sum", x, dims, keepdim))


def _sum(x: torch.Tensor, *, dims: tuple[int, ...], keepdim: bool, dtype: Any) -> torch.Tensor:
    return torch.sum(x, dim=_all_dims(x, dims), keepdim=keepdim, dtype=attr_dtype("sum", dtype))


def _infer_mean(x: TensorType, *, dims: Any, keepdim: bool, dtype: Any) -> TensorType:
    out = attr_dtype("mean", dtype) or x.dtype
    if not is_float(out):
        fail("mean", f"needs a floating input or a floating dtype attribute, got {x} (dtype={dtype})", TypeError)
    return TensorType(out, _reduced_shape("mean", x, dims, keepdim))


def _mean(x: torch.Tensor, *, dims: tuple[int, ...], keepdim: bool, dtype: Any) -> torch.Tensor:
    return torch.mean(x, dim=_all_dims(x, dims), keepdim=keepdim, dtype=attr_dtype("mean", dtype))


def _extreme_infer(op: str) -> Callable[..., TensorType]:
    def infer(x: TensorType, *, dims: Any, keepdim: bool) -> TensorType:
        return TensorType(x.dtype, _reduced_shape(op, x, dims, keepdim))

    return infer


def _extreme_ref(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    def reference(x: torch.Tensor, *, dims: tuple[int, ...], keepdim: bool) -> torch.Tensor:
        return fn(x, dim=_all_dims(x, dims), keepdim=keepdim)

    return reference


_RED = {"dims": (), "keepdim": False}
# traits of sum/mean/amax/amin (argmax has no row-kernel form: no row_reduction trait)
_ROW_RED: dict[str, Any] = {"row_reduction": True, "reduces": reduces_dims, "lift": lift_reduce_dims}
define_op("sum", inputs=("x",), attrs={**_RED, "dtype": None}, kind="reduction", infer=_infer_sum, reference=_sum,
          flops=per_input(1), doc="sum over dims (empty = all); ints/bools accumulate in i64", **_ROW_RED)
define_op("mean", inputs=("x",), attrs={**_RED, "dtype": None}, kind="reduction", infer=_infer_mean,
          reference=_mean, flops=per_input(1), doc="mean over dims (empty = all); floating only", **_ROW_RED)
define_op("amax", inputs=("x",), attrs=dict(_RED), kind="reduction", infer=_extreme_infer("amax"),
          reference=_extreme_ref(torch.amax), flops=per_input(1), doc="max over dims (empty = all)", **_ROW_RED)
define_op("amin", inputs=("x",), attrs=dict(_RED), kind="reduction", infer=_extreme_infer("amin"),
          reference=_extreme_ref(torch.amin), flops=per_input(1), doc="min over dims (empty = all)", **_ROW_RED)


# ---------------------------------------------------------------------------------------------
# argmax: one dim (None = over all elements, as torch)
# ---------------------------------------------------------------------------------------------


def _infer_argmax(x: TensorType, *, dim: int | None, keepdim: bool) -> TensorType:
    if dim is None:
        shape = (sympy.Integer(1),) * x.rank if keepdim else ()
        return TensorType(torch.int64, shape)
    return TensorType(torch.int64, _reduced_shape("argmax", x, (dim,), keepdim, "dim"))


def _argmax(x: torch.Tensor, *, dim: int | None, keepdim: bool) -> torch.Tensor:
    return torch.argmax(x, dim=dim, keepdim=keepdim)


define_op("argmax", inputs=("x",), attrs={"dim": REQUIRED, "keepdim": False}, kind="reduction",
          infer=_infer_argmax, reference=_argmax, flops=per_input(1),
          doc="index (i64) of the first maximum along dim; dim=None flattens", reduces=reduces_dim)


# ---------------------------------------------------------------------------------------------
# softmax / log_softmax / cumsum: one dim, shape preserved
# ---------------------------------------------------------------------------------------------


def _softmax_infer(op: str) -> Callable[..., TensorType]:
    def infer(x: TensorType, *, dim: int, dtype: Any) -> TensorType:
        norm_dim(op, dim, x.rank)
        out = attr_dtype(op, dtype) or x.dtype
        if not is_float(out):
            fail(op, f"needs a floating input or a floating dtype attribute, got {x} (dtype={dtype})", TypeError)
        return TensorType(out, x.shape)

    return infer


def _softmax_ref(fn: Callable[..., torch.Tensor], op: str) -> Callable[..., torch.Tensor]:
    def reference(x: torch.Tensor, *, dim: int, dtype: Any) -> torch.Tensor:
        return fn(x, dim, dtype=attr_dtype(op, dtype))

    return reference


define_op("softmax", inputs=("x",), attrs={"dim": REQUIRED, "dtype": None}, kind="reduction",
          infer=_softmax_infer("softmax"), reference=_softmax_ref(torch.softmax, "softmax"), flops=per_input(5),
          doc="exp(x - max) / sum(exp(x - max)) along dim (in dtype when given)", row_reduction=True, lift=lift_dim,
          reduces=reduces_dim,
          eager_class="softmax")
define_op("log_softmax", inputs=("x",), attrs={"dim": REQUIRED, "dtype": None}, kind="reduction",
          infer=_softmax_infer("log_softmax"), reference=_softmax_ref(torch.log_softmax, "log_softmax"),
          flops=per_input(5), doc="log(softmax(x)) along dim, computed stably", row_reduction=True, lift=lift_dim,
          reduces=reduces_dim,
          eager_class="softmax")


def _infer_cumsum(x: TensorType, *, dim: int, dtype: Any) -> TensorType:
    norm_dim("cumsum", dim, x.rank)
    return TensorType(_accumulate_dtype(x, attr_dtype("cumsum", dtype)), x.shape)


def _cumsum(x: torch.Tensor, *, dim: int, dtype: Any) -> torch.Tensor:
    return torch.cumsum(x, dim, dtype=attr_dtype("cumsum", dtype))


define_op("cumsum", inputs=("x",), attrs={"dim": REQUIRED, "dtype": None}, kind="reduction", infer=_infer_cumsum,
          reference=_cumsum, flops=per_input(1), doc="inclusive prefix sum along dim; ints/bools accumulate in i64",
          row_reduction=True, lift=lift_dim, reduces=reduces_dim)


# ---------------------------------------------------------------------------------------------
# linear_scan: h_t = a_t * h_{t-1} + b_t along one dim (a selective state-space model's recurrence)
# ---------------------------------------------------------------------------------------------
def _infer_linear_scan(a: TensorType, b: TensorType, *init: TensorType, dim: int) -> TensorType:
    op = "linear_scan"
    d = norm_dim(op, dim, a.rank)
    dtype = same_dtype(op, ("a", a), ("b", b))
    if not is_float(dtype):
        fail(op, f"needs floating a and b, got {a}, {b}", TypeError)
    if a.rank != b.rank:
        fail(op, f"a {a} and b {b} must have one shape")
    for i, (x, y) in enumerate(zip(a.shape, b.shape)):
        require_same_dim(op, x, y, f"a {a} vs b {b} at dim {i}")
    if len(init) > 1:
        fail(op, f"takes at most one initial state, got {len(init)}")
    if init:
        same_dtype(op, ("a", a), ("init", init[0]))
        want = tuple(sympy.Integer(1) if i == d else x for i, x in enumerate(a.shape))
        if init[0].rank != a.rank:
            fail(op, f"init {init[0]} must be a's shape with dim {d} of size 1 ({shape_str(want)})")
        for i, (x, y) in enumerate(zip(init[0].shape, want)):
            require_same_dim(op, x, y, f"init {init[0]} vs {shape_str(want)} at dim {i}")
    return TensorType(dtype, a.shape)


def _linear_scan(a: torch.Tensor, b: torch.Tensor, *init: torch.Tensor, dim: int) -> torch.Tensor:
    """Step by step along ``dim``, each state rounded to the dtype as the model's own loop rounds it."""
    d = dim % a.dim()
    out = torch.empty_like(b)
    h = init[0].select(d, 0) if init else torch.zeros_like(b.select(d, 0))
    for t in range(a.shape[d]):
        h = a.select(d, t) * h + b.select(d, t)
        out.select(d, t).copy_(h)
    return out


define_op("linear_scan", inputs=("a", "b", "*init"), attrs={"dim": REQUIRED}, kind="reduction",
          infer=_infer_linear_scan, reference=_linear_scan, flops=per_input(2),
          doc="h_t = a_t * h_(t-1) + b_t along dim (h_(-1) = init, [.., 1, ..] at dim, else 0), every h_t: the "
              "recurrence of a selective state-space model (Mamba's scan); insert-kv-cache keeps its last state",
          reduces=reduces_dim)


# ---------------------------------------------------------------------------------------------
# linear_attention: a recurrent matrix state per head, S_t = a_t S_(t-1) + k_t w_t^T, read out by q_t
# ---------------------------------------------------------------------------------------------
def _infer_linear_attention(q: TensorType, a: TensorType, k: TensorType, v: TensorType, beta: TensorType,
                            *init: TensorType, dim: int, delta: bool, op: str = "linear_attention") -> list[TensorType]:
    d = norm_dim(op, dim, beta.rank)
    if not isinstance(delta, bool):
        fail(op, f"attribute delta={delta!r} must be a bool", TypeError)
    dtype = same_dtype(op, ("q", q), ("a", a), ("k", k), ("v", v), ("beta", beta), *(("init", i) for i in init))
    if not is_float(dtype):
        fail(op, f"needs floating inputs, got {q}, {a}, {k}, {v}, {beta}", TypeError)
    lead = beta.shape
    if a.rank not in (beta.rank, beta.rank + 1) or any(t.rank != beta.rank + 1 for t in (q, k, v)):
        fail(op, f"beta {beta} must be [..], a {a} [..] or [.., K], q {q} and k {k} [.., K], v {v} [.., V] over "
                 f"the same [..]")
    if a.rank > beta.rank and dim < 0:
        fail(op, f"dim={dim}: with a decay per key channel (a {a}) give dim as an index into beta's dims, >= 0")
    for name, t in (("q", q), ("a", a), ("k", k), ("v", v)):
        for i, (x, y) in enumerate(zip(lead, t.shape)):
            require_same_dim(op, x, y, f"beta {beta} vs {name} {t} at dim {i}")
    require_same_dim(op, q.shape[-1], k.shape[-1], f"q {q} vs k {k}: one key width")
    if a.rank > beta.rank:
        require_same_dim(op, a.shape[-1], k.shape[-1], f"a {a} vs k {k}: one decay per key channel")
    state = tuple(sympy.Integer(1) if i == d else x for i, x in enumerate(lead)) + (k.shape[-1], v.shape[-1])
    if len(init) > 1:
        fail(op, f"takes at most one initial state, got {len(init)}")
    if init:
        if init[0].rank != len(state):
            fail(op, f"init {init[0]} must be the state's shape {shape_str(state)}")
        for i, (x, y) in enumerate(zip(init[0].shape, state)):
            require_same_dim(op, x, y, f"init {init[0]} vs {shape_str(state)} at dim {i}")
    return [TensorType(dtype, v.shape), TensorType(dtype, state)]


def _linear_attention(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                      *init: torch.Tensor, dim: int, delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Step by step along ``dim`` in the order of Hugging Face's recurrent gated delta rule (decay, read, correct,
    write, read out), in the dtype."""
    d = dim % beta.dim()
    out = torch.empty_like(v)
    h = init[0].select(d, 0) if init else \
        torch.zeros((*beta.select(d, 0).shape, k.shape[-1], v.shape[-1]), dtype=v.dtype, device=v.device)
    per_channel = a.dim() > beta.dim()
    for t in range(beta.shape[d]):
        kt = k.select(d, t)[..., :, None]
        h = h * (a.select(d, t)[..., :, None] if per_channel else a.select(d, t)[..., None, None])
        w = v.select(d, t) - (h * kt).sum(-2) if delta else v.select(d, t)
        h = h + kt * (w * beta.select(d, t)[..., None])[..., None, :]
        out.select(d, t).copy_((h * q.select(d, t)[..., :, None]).sum(-2))
    return out, h.unsqueeze(d)


def _linear_attention_flops(ins: Any, outs: Any, attrs: dict[str, Any]) -> sympy.Expr:
    # per state entry [K, V] and token (beta's every entry): the decay, the write's multiply-add, the read-out's
    # multiply-add (and with the delta rule the correction's read, another)
    return (7 if attrs["delta"] else 5) * ins[4].numel() * ins[2].shape[-1] * ins[3].shape[-1]


define_op("linear_attention", inputs=("q", "a", "k", "v", "beta", "*init"), attrs={"dim": REQUIRED, "delta": False},
          kind="reduction", infer=_infer_linear_attention, reference=_linear_attention,
          flops=_linear_attention_flops,
          doc="(y, last state): a matrix state S [K, V] per row of beta [..] carried along dim, S = a_t S (a [..], "
              "or [.., K] one decay per key channel), then S += k_t (beta_t w_t)^T with w_t = v_t, or with "
              "delta=true the delta rule's correction v_t - k_t^T S; y_t = q_t^T S [.., V] (S_(-1) = init, else 0): "
              "Mamba-2's SSD, gated DeltaNet (Qwen3-Next, Qwen3.5, OLMo-Hybrid), Kimi's KDA; insert-kv-cache keeps "
              "the last state",
          reduces=reduces_dim)


def _infer_linear_attention_state(q: TensorType, a: TensorType, k: TensorType, v: TensorType, beta: TensorType,
                                  state: TensorType, start: TensorType, *, dim: int, delta: bool) -> TensorType:
    op = "linear_attention_state"
    y, _ = _infer_linear_attention(q, a, k, v, beta, state, dim=dim, delta=delta, op=op)
    require_index(op, start, "start")
    if start.rank != 2:
        fail(op, f"start {start} must be [B, 1]: each row's first position this step")
    require_same_dim(op, start.shape[0], state.shape[0], f"start {start} vs state {state}: one row each")
    require_same_dim(op, start.shape[1], sympy.Integer(1), f"start {start} must be [B, 1]")
    return y


def _linear_attention_state(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                            state: torch.Tensor, start: torch.Tensor, *, dim: int, delta: bool) -> torch.Tensor:
    """``linear_attention`` from ``state`` (zero for a row whose step starts at position 0), its last state written
    back into ``state`` in place; returns y."""
    fresh = (start[:, 0] == 0).reshape((-1,) + (1,) * (state.dim() - 1))
    y, last = _linear_attention(q, a, k, v, beta, torch.where(fresh, torch.zeros_like(state), state), dim=dim,
                                delta=delta)
    state.copy_(last)
    return y


def _linear_attention_state_bytes(ins: Any, outs: Any, attrs: dict[str, Any]) -> sympy.Expr:
    # the inputs once, y written, and the state read and written back (once each, in place)
    return sum((t.nbytes() for t in ins), sympy.Integer(0)) + outs[0].nbytes() + ins[5].nbytes()


define_op("linear_attention_state", inputs=("q", "a", "k", "v", "beta", "state", "start"),
          attrs={"dim": REQUIRED, "delta": False}, kind="state", infer=_infer_linear_attention_state,
          reference=_linear_attention_state,
          flops=_linear_attention_flops,
          bytes=_linear_attention_state_bytes, side_effects=True,
          doc="y of linear_attention started from the state buffer (zero for a row whose start, its first position "
              "this step, is 0), its last state written back into the buffer in place: a recurrent layer's decode "
              "step reading and writing its state once (made by insert-kv-cache; MEMBOUND_STATE_INPLACE=0: the "
              "unfused where / linear_attention / cache_write)",
          reduces=reduces_dim)


# ---------------------------------------------------------------------------------------------
# layer_norm, rms_norm
# ---------------------------------------------------------------------------------------------


def _check_affine(op: str, x: TensorType, p: TensorType | None, ndim: int, what: str) -> None:
    if p is None:
        return
    require_float(op, p, what)
    want = x.shape[x.rank - ndim:]
    if p.rank != ndim:
        fail(op, f"{what} must have the normalised shape {shape_str(want)}, got {p}")
    for a, b in zip(p.shape, want):
        require_same_dim(op, a, b, f"{what} shape {shape_str(p.shape)} vs normalised shape {shape_str(want)}")


def _infer_layer_norm(x: TensorType, weight: TensorType | None = None, bias: TensorType | None = None, *,
                      ndim: int, eps: float) -> TensorType:
    require_float("layer_norm", x, "x")
    if isinstance(ndim, bool) or not isinstance(ndim, int) or not 1 <= ndim <= x.rank:
        fail("layer_norm", f"attribute ndim={ndim!r} must be an int in [1, rank of x = {x.rank}]")
    _check_affine("layer_norm", x, weight, ndim, "weight")
    _check_affine("layer_norm", x, bias, ndim, "bias")
    return TensorType(x.dtype, x.shape)


def _layer_norm(x: torch.Tensor, weight: torch.Tensor | None = None, bias: torch.Tensor | None = None, *,
                ndim: int, eps: float) -> torch.Tensor:
    return F.layer_norm(x, x.shape[x.dim() - ndim:], weight, bias, eps)


define_op("layer_norm", inputs=("x", "weight?", "bias?"), attrs={"ndim": 1, "eps": 1e-5}, kind="reduction",
          infer=_infer_layer_norm, reference=_layer_norm, flops=per_input(5),
          doc="(x - mean) / sqrt(var + eps) * weight + bias over the trailing ndim dims; result dtype of x",
          row_reduction=True, positionwise=lambda attrs: attrs["ndim"] == 1, eager_class="layer_norm",
          reduces=reduces_last)


def _infer_rms_norm(x: TensorType, weight: TensorType | None = None, *, eps: float) -> TensorType:
    require_float("rms_norm", x, "x")
    if x.rank == 0:
        fail("rms_norm", f"needs an input of rank >= 1, got {x}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)):
        fail("rms_norm", f"attribute eps must be a float, got {eps!r}", TypeError)
    if weight is None:
        return TensorType(x.dtype, x.shape)
    _check_affine("rms_norm", x, weight, 1, "weight")
    return TensorType(promote_types(x, weight), x.shape)


def _rms_norm(x: torch.Tensor, weight: torch.Tensor | None = None, *, eps: float) -> torch.Tensor:
    xf = x.float()
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else y * weight


define_op("rms_norm", inputs=("x", "weight?"), attrs={"eps": REQUIRED}, kind="reduction", infer=_infer_rms_norm,
          reference=_rms_norm, flops=per_input(5), composite=True, row_reduction=True, positionwise=True,
          reduces=reduces_last,
          doc="(x.float() * rsqrt(mean(x.float()**2, -1) + eps)).to(x.dtype) * weight; formed by canonicalize")
