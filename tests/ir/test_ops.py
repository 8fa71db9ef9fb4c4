"""OpInfo-style tests for every IR op declared in ``membound/ir/ops/``.

``SAMPLES`` lists, per op, cases at several shapes (odd sizes, size-1 dims, 0-d, broadcasting) and
dtypes, static and with the symbols B/S. Each case builds a graph, lets the op's type rule infer the
result type, runs the op's torch reference on random (never zero) tensors and checks

1. the real result's shape and dtype equal the inferred type evaluated at the concrete sizes;
2. the values equal an expected torch expression written here, independently of the op's reference;
3. the graph passes the verifier and its text form parses back to an equal graph (attrs round-trip).

Expected values are computed in float64 from the same inputs (unless a case says ``upcast=False``,
where the expression itself fixes the rounding, as for ``cast`` and ``rms_norm``) and compared with
a tolerance relative to the result dtype: rtol = TOL[dtype], atol = TOL[dtype] * max|expected|.
Integer and bool results must match exactly.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pytest
import sympy
import torch
import torch.nn.functional as F

from membound.ir.analysis import structurally_equal
from membound.ir.graph import Graph, Node
from membound.ir.ops import all_ops, get_op
from membound.ir.parser import parse
from membound.ir.printer import print_graph
from membound.ir.types import B, S, TensorType, eval_dim
from membound.ir.verify import verify

f64, f32, f16, bf16 = torch.float64, torch.float32, torch.float16, torch.bfloat16
i64, i32, boolean = torch.int64, torch.int32, torch.bool

# tolerance per result dtype (rtol; atol is this times the largest expected magnitude)
TOL = {f64: 1e-10, f32: 1e-5, f16: 1e-3, bf16: 1e-2}
SIZES = {B: 3, S: 5}
# ops with their own tests below instead of table rows
EXCLUDED = {"torch_call": "result types come from the capture; see test_torch_call_*",
            "linear_attention_state": "writes its state input in place; tests/backends/test_scan_kernel.py"}
# the family modules this table covers; others (kv_cache, quant, moe) have their own test files
OUR_MODULES = {f"membound.ir.ops.{m}" for m in (
    "elementwise", "reduce", "matmul", "attention", "memory", "creation", "index", "routing", "opaque")}
VIEW_KINDS = {"view"}
COMPUTE_KINDS = {"elementwise", "reduction", "matmul", "attention", "routing"}


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arg:
    """One input: type and how to fill it.

    gen: randn | pos (>= 0.5) | nonzero | small (ints 0..3) | bool | mask (bool, column 0 True) |
    index (ints in [0, hi)) | unique (distinct along dim 0, in [0, hi)) | perm (distinct values) |
    offsets (sorted cumulative group ends in [0, hi]) | range (uniform in [-1, hi + 1))
    """

    dtype: torch.dtype
    shape: tuple[Any, ...]
    gen: str = "randn"
    hi: Any = None


def A(dtype: torch.dtype, *shape: Any, gen: str = "randn", hi: Any = None) -> Arg:
    return Arg(dtype, tuple(shape), gen, hi)


@dataclass
class Sample:
    op: str
    args: tuple[Arg, ...]
    attrs: dict[str, Any]
    expect: Callable[..., Any]
    upcast: bool = True
    sizes: dict[sympy.Symbol, int] = field(default_factory=lambda: dict(SIZES))

    @property
    def symbolic(self) -> bool:
        dims = [d for a in self.args for d in a.shape] + list(_attr_dims(self.attrs))
        return any(isinstance(d, sympy.Expr) and d.free_symbols for d in dims)

    def __str__(self) -> str:
        ins = ",".join(f"{str(a.dtype).replace('torch.', '')}{list(a.shape)}" for a in self.args)
        attrs = ",".join(f"{k}={v}" for k, v in self.attrs.items())
        return f"{self.op}({ins}){{{attrs}}}".replace(" ", "")


def _attr_dims(v: Any) -> list[Any]:
    if isinstance(v, dict):
        return [d for x in v.values() for d in _attr_dims(x)]
    if isinstance(v, (tuple, list)):
        return [d for x in v for d in _attr_dims(x)]
    return [v] if isinstance(v, sympy.Expr) else []


SAMPLES: list[Sample] = []


def case(op: str, args: list[Arg], expect: Callable[..., Any], upcast: bool = True, **attrs: Any) -> None:
    SAMPLES.append(Sample(op, tuple(args), attrs, expect, upcast))


# ---- elementwise: unary ---------------------------------------------------------------------
def _floor(x: torch.Tensor) -> torch.Tensor:
    return x - torch.remainder(x, 1) if x.is_floating_point() else x


def _bitwise_not(x: torch.Tensor) -> torch.Tensor:
    return x == 0 if x.dtype == boolean else -x - 1


# name -> (expected expression, generator, dtype family)
UNARY: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], str, str]] = {
    "neg": (lambda x: 0 - x, "randn", "numeric"),
    "abs": (lambda x: torch.where(x < 0, -x, x), "randn", "numeric"),
    "relu": (lambda x: torch.where(x > 0, x, torch.zeros_like(x)), "randn", "numeric"),
    "floor": (_floor, "randn", "numeric"),
    "exp": (lambda x: math.e ** x, "randn", "float"),
    "log": (lambda x: torch.log(x), "pos", "float"),
    "sqrt": (lambda x: x ** 0.5, "pos", "float"),
    "rsqrt": (lambda x: 1 / x ** 0.5, "pos", "float"),
    "sin": (lambda x: torch.sin(x), "randn", "float"),
    "cos": (lambda x: torch.cos(x), "randn", "float"),
    "tanh": (lambda x: 1 - 2 / (torch.exp(2 * x) + 1), "randn", "float"),
    "sigmoid": (lambda x: 1 / (1 + torch.exp(-x)), "randn", "float"),
    "erf": (lambda x: torch.special.erf(x), "randn", "float"),
    "reciprocal": (lambda x: 1 / x, "nonzero", "float"),
    "silu": (lambda x: x / (1 + torch.exp(-x)), "randn", "float_only"),
    "expm1": (lambda x: torch.exp(x.double()).sub(1).to(x.dtype) if x.is_floating_point() else torch.exp(
        x.double()).sub(1).float(), "randn", "float"),
    "log1p": (lambda x: torch.log(1 + x.double()).to(x.dtype if x.is_floating_point() else torch.float32), "pos",
              "float"),
    "logical_not": (lambda x: x == 0, "randn", "any"),
    "bitwise_not": (_bitwise_not, "randn", "integral"),
}
UNARY_DTYPES = {
    "numeric": [f32, f16, i64, i32],
    "float": [f32, f16, bf16, i64],
    "float_only": [f32, f16, bf16],
    "any": [boolean, f32, i64],
    "integral": [boolean, i64, i32],
}
UNARY_SHAPES = [(7,), (3, 1, 5), (1,), ()]

for _op, (_expect, _gen, _family) in UNARY.items():
    _dtypes = UNARY_DTYPES[_family]
    for _i, _shape in enumerate(UNARY_SHAPES):
        case(_op, [A(_dtypes[0], *_shape, gen=_gen)], _expect)
    for _dt in _dtypes[1:]:
        case(_op, [A(_dt, 4, 3, gen="pos" if _dt in (i64, i32) and _gen != "randn" else _gen)], _expect)
    case(_op, [A(_dtypes[0], B, S, 3, gen=_gen)], _expect)

_SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
for _dt in (f32, f16, bf16):
    case("gelu", [A(_dt, 3, 1, 5)], lambda x: 0.5 * x * (1 + torch.special.erf(x / math.sqrt(2))))
    case("gelu", [A(_dt, 7)], lambda x: 0.5 * x * (1 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x ** 3))),
         approximate="tanh")
case("gelu", [A(f32, B, S)], lambda x: 0.5 * x * (1 + torch.special.erf(x / math.sqrt(2))))
for _dt in (f32, f16, bf16):  # softplus: log(1 + e**(b x)) / b, x past the threshold (wide inputs reach it)
    case("softplus", [A(_dt, 3, 1, 5)], lambda x: torch.log(1 + torch.exp(x.double())).to(x.dtype))
    case("softplus", [A(_dt, B, 3)], lambda x: torch.log(1 + torch.exp(x.double())).to(x.dtype))
    case("softplus", [A(_dt, 2, 9)], lambda x: torch.where(2 * x > 1.5, x.double(), torch.log(1 + torch.exp(
        2 * x.double())) / 2).to(x.dtype), beta=2.0, threshold=1.5)

# ---- elementwise: binary --------------------------------------------------------------------
# name -> (expected expression, generator of b, dtype pairs)
_ARITH_PAIRS = [(f32, f32), (f16, f16), (i64, i64), (i32, i64)]
_CMP_PAIRS = [(f32, f32), (i64, i64), (f16, f32)]
_BITS_PAIRS = [(i64, i64), (boolean, boolean), (i32, i64)]
BINARY: dict[str, tuple[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], str, str, list[tuple[Any, Any]]]] = {
    "add": (lambda a, b: a + b, "randn", "randn", _ARITH_PAIRS),
    "sub": (lambda a, b: a - b, "randn", "randn", _ARITH_PAIRS),
    "mul": (lambda a, b: a * b, "randn", "randn", _ARITH_PAIRS),
    "div": (lambda a, b: a.double() / b.double(), "randn", "nonzero", _ARITH_PAIRS),
    "pow": (lambda a, b: a ** b, "pos", "small", _ARITH_PAIRS),
    "maximum": (lambda a, b: torch.where(a >= b, a, b), "randn", "randn", _ARITH_PAIRS),
    "minimum": (lambda a, b: torch.where(a <= b, a, b), "randn", "randn", _ARITH_PAIRS),
    "remainder": (lambda a, b: a - b * torch.floor(a.double() / b.double()), "randn", "nonzero", _ARITH_PAIRS),
    "eq": (lambda a, b: a == b, "small", "small", _CMP_PAIRS),
    "ne": (lambda a, b: a != b, "small", "small", _CMP_PAIRS),
    "lt": (lambda a, b: a < b, "small", "small", _CMP_PAIRS),
    "le": (lambda a, b: a <= b, "small", "small", _CMP_PAIRS),
    "gt": (lambda a, b: a > b, "small", "small", _CMP_PAIRS),
    "ge": (lambda a, b: a >= b, "small", "small", _CMP_PAIRS),
    "logical_and": (lambda a, b: (a != 0) & (b != 0), "small", "small", _CMP_PAIRS + [(boolean, i64)]),
    "logical_or": (lambda a, b: (a != 0) | (b != 0), "small", "small", _CMP_PAIRS + [(boolean, i64)]),
    "bitwise_and": (lambda a, b: a & b, "randn", "randn", _BITS_PAIRS),
    "bitwise_or": (lambda a, b: a | b, "randn", "randn", _BITS_PAIRS),
}
BINARY_SHAPES = [((4, 5), (4, 5)), ((3, 1, 5), (4, 1)), ((7,), ()), ((1,), (2, 3)), ((), ())]
BINARY_SYMBOLIC = [((B, S, 3), (S, 1)), ((B, 1, 3), (1, S, 1))]

for _op, (_expect, _ga, _gb, _pairs) in BINARY.items():
    _da, _db = _pairs[0]
    for _sa, _sb in BINARY_SHAPES + BINARY_SYMBOLIC:
        case(_op, [A(_da, *_sa, gen=_ga), A(_db, *_sb, gen=_gb)], _expect)
    for _da, _db in _pairs[1:]:
        case(_op, [A(_da, 3, 1, gen=_ga), A(_db, 5, gen=_gb)], _expect)
    if _pairs[0][0].is_floating_point:
        # a 0-d operand is weaker: i64[5] (op) f16[] -> f16, f16[2, 3] (op) f32[] -> f16
        case(_op, [A(i64, 5, gen="pos"), A(f16, gen=_gb)], _expect)
        case(_op, [A(f16, 2, 3, gen=_ga), A(f32, gen=_gb)], _expect)

for _dt in (f32, i64, i32):
    case("div", [A(_dt, 3, 4), A(_dt, 4, gen="nonzero")], lambda a, b: torch.floor(a.double() / b.double()),
         rounding_mode="floor")
    case("div", [A(_dt, 2, 1, 3), A(_dt, 5, 1, gen="nonzero")], lambda a, b: torch.trunc(a.double() / b.double()),
         rounding_mode="trunc")
case("div", [A(i64, B, S), A(i64, S, gen="nonzero")], lambda a, b: torch.floor(a.double() / b.double()),
     rounding_mode="floor")

# ---- elementwise: where, clamp, cast ----------------------------------------------------------
_where = lambda c, a, b: a * c + b * ~c  # noqa: E731
case("where", [A(boolean, 4, 5, gen="bool"), A(f32, 4, 5), A(f32, 4, 5)], _where)
case("where", [A(boolean, 3, 1, gen="bool"), A(f16, 1, 4), A(f16)], _where)
case("where", [A(boolean, 7, gen="bool"), A(i64, 7), A(f32)], _where)
case("where", [A(boolean, 1, gen="bool"), A(i32, 2, 3), A(i64, 3)], _where)
case("where", [A(boolean, B, S, gen="bool"), A(f32, S), A(f32, B, 1)], _where)


def _clamp(lo: Any, hi: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor) -> torch.Tensor:
        y = x.double()
        if lo is not None:
            y = torch.where(y < lo, torch.full_like(y, lo), y)
        if hi is not None:
            y = torch.where(y > hi, torch.full_like(y, hi), y)
        return y

    return expect


case("clamp", [A(f32, 4, 5)], _clamp(-0.5, 0.5), min=-0.5, max=0.5)
case("clamp", [A(f16, 7)], _clamp(0.0, None), min=0.0)
case("clamp", [A(i64, 3, 1)], _clamp(None, 2), max=2)
case("clamp", [A(i64, 6)], _clamp(-1.5, None), min=-1.5)  # int clamped to a float bound -> f32
case("clamp", [A(f32)], _clamp(-0.1, 0.1), min=-0.1, max=0.1)
case("clamp", [A(f32, B, S)], _clamp(-1, 1), min=-1, max=1)

for _src, _dst in [(f32, f16), (f32, i64), (f16, f32), (i64, f32), (f32, f32), (boolean, f32), (f32, boolean),
                   (bf16, f16), (i32, i64)]:
    case("cast", [A(_src, 3, 1, 4, gen="bool" if _src == boolean else "randn")],
         lambda x, _d=_dst: x.type(_d), upcast=False, dtype=_dst)
case("cast", [A(f32, B, S)], lambda x: x.type(f16), upcast=False, dtype=f16)


# ---- reductions -------------------------------------------------------------------------------
def _reduce(fn: Callable[[torch.Tensor, int], torch.Tensor], dims: tuple[int, ...], keepdim: bool = False
            ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Reduce one dim at a time (keeping it), then drop the reduced dims: independent of multi-dim kernels."""

    def expect(x: torch.Tensor) -> torch.Tensor:
        axes = sorted({d % max(x.dim(), 1) for d in dims} if dims else range(x.dim()))
        y = x
        for d in axes:
            y = fn(y, d)
        if not keepdim:
            for d in reversed(axes):
                y = y.squeeze(d)
        return y

    return expect


_SUM = lambda y, d: y.sum(d, keepdim=True)  # noqa: E731
_MAX = lambda y, d: y.max(d, keepdim=True).values  # noqa: E731
_MIN = lambda y, d: y.min(d, keepdim=True).values  # noqa: E731
_MEAN = lambda y, d: y.sum(d, keepdim=True) / y.shape[d]  # noqa: E731

for _op, _fn, _int_ok in [("sum", _SUM, True), ("mean", _MEAN, False), ("amax", _MAX, True), ("amin", _MIN, True)]:
    case(_op, [A(f32, 3, 4, 5)], _reduce(_fn, (1,)), dims=(1,))
    case(_op, [A(f32, 3, 4, 5)], _reduce(_fn, (-1, 0)), dims=(-1, 0))
    case(_op, [A(f32, 3, 1, 5)], _reduce(_fn, (1, 2), keepdim=True), dims=(1, 2), keepdim=True)
    case(_op, [A(f32, 7)], _reduce(_fn, ()))
    case(_op, [A(f32)], _reduce(_fn, ()))
    case(_op, [A(f16, 2, 9)], _reduce(_fn, (-1,)), dims=(-1,))
    case(_op, [A(f32, B, S, 3)], _reduce(_fn, (1,)), dims=(1,))
    if _int_ok:
        case(_op, [A(i32, 4, 3)], _reduce(_fn, (0,)), dims=(0,))
case("sum", [A(boolean, 4, 3, gen="bool")], _reduce(_SUM, ()))  # bools count in i64
case("sum", [A(f16, 5, 3)], _reduce(_SUM, (0,)), dims=(0,), dtype=f32)
case("mean", [A(f16, 5, 3)], _reduce(_MEAN, (1,)), dims=(1,), dtype=f32)
case("mean", [A(i64, 5, 3)], lambda x: x.double().mean(1), dims=(1,), dtype=f32)
case("amax", [A(boolean, 4, 3, gen="bool")], lambda x: x.any(1), dims=(1,))


def _argmax(dim: Any, keepdim: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor) -> torch.Tensor:
        if dim is None:
            flat = x.reshape(-1)
            i = torch.nonzero(flat == flat.max())[0, 0]
            return i.reshape((1,) * x.dim()) if keepdim else i
        first = torch.sort(x, dim=dim, descending=True, stable=True).indices.narrow(dim, 0, 1)
        return first if keepdim else first.squeeze(dim)

    return expect


case("argmax", [A(f32, 4, 7, gen="perm")], _argmax(1), dim=1)
case("argmax", [A(f32, 4, 7, gen="perm")], _argmax(0, keepdim=True), dim=0, keepdim=True)
case("argmax", [A(i64, 3, 1, 5, gen="perm")], _argmax(-1), dim=-1)
case("argmax", [A(f32, 3, 5, gen="perm")], _argmax(None), dim=None)
case("argmax", [A(f16, B, S, gen="perm")], _argmax(-1), dim=-1)


def _softmax(dim: int, log: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor) -> torch.Tensor:
        z = x.double() - x.double().max(dim, keepdim=True).values
        total = z.exp().sum(dim, keepdim=True)
        return z - total.log() if log else z.exp() / total

    return expect


for _op, _log in (("softmax", False), ("log_softmax", True)):
    case(_op, [A(f32, 3, 7)], _softmax(-1, _log), dim=-1)
    case(_op, [A(f32, 3, 1, 5)], _softmax(1, _log), dim=1)
    case(_op, [A(f16, 2, 9)], _softmax(0, _log), dim=0)
    case(_op, [A(f16, 2, 9)], _softmax(1, _log), dim=1, dtype=f32)
    case(_op, [A(i64, 4)], _softmax(0, _log), dim=0, dtype=f32)
    case(_op, [A(f32, B, 2, S)], _softmax(-1, _log), dim=-1)


def _cumsum(dim: int) -> Callable[[torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor) -> torch.Tensor:
        y = x.double() if x.is_floating_point() else x.long()
        parts = [y.narrow(dim, 0, i + 1).sum(dim) for i in range(y.shape[dim])]
        return torch.stack(parts, dim)

    return expect


case("cumsum", [A(f32, 3, 7)], _cumsum(1), dim=1)
case("cumsum", [A(f32, 5, 1)], _cumsum(0), dim=0)
case("cumsum", [A(f16, 2, 9)], _cumsum(-1), dim=-1)
case("cumsum", [A(i32, 2, 6)], _cumsum(-1), dim=-1)  # ints accumulate in i64
case("cumsum", [A(boolean, 11, gen="bool")], _cumsum(0), dim=0)
case("cumsum", [A(f16, 4, 3)], _cumsum(0), dim=0, dtype=f32)
case("cumsum", [A(i64, B, S)], _cumsum(1), dim=1)


def _linear_scan(dim: int) -> Callable[..., torch.Tensor]:
    """The closed form: h_t = sum_j (a_(j+1) ... a_t) b_j + (a_0 ... a_t) init, in float64."""
    def expect(a: torch.Tensor, b: torch.Tensor, init: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, b = a.double().movedim(dim, 0), b.double().movedim(dim, 0)
        h0 = torch.zeros_like(b[0]) if init is None else init.double().movedim(dim, 0)[0]
        out = []
        for t in range(a.shape[0]):
            h = h0 * a[:t + 1].prod(0)
            for j in range(t + 1):
                h = h + a[j + 1:t + 1].prod(0) * b[j]
            out.append(h)
        return torch.stack(out).movedim(0, dim)

    return expect


case("linear_scan", [A(f32, 2, 5, 3, gen="range", hi=-1), A(f32, 2, 5, 3)], _linear_scan(1), dim=1)
case("linear_scan", [A(f32, 2, 7, gen="range", hi=-1), A(f32, 2, 7), A(f32, 2, 1)], _linear_scan(-1), dim=-1)
case("linear_scan", [A(f16, 4, 3, gen="range", hi=-1), A(f16, 4, 3)], _linear_scan(0), dim=0)
case("linear_scan", [A(f32, B, S, 4, gen="range", hi=-1), A(f32, B, S, 4), A(f32, B, 1, 4)], _linear_scan(1), dim=1)


def _linear_attention(dim: int, delta: bool) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
    """The matrix form in float64: S_t = (I - beta_t k_t k_t^T) A_t S_(t-1) + beta_t k_t v_t^T with the delta rule,
    S_t = A_t S_(t-1) + beta_t k_t v_t^T without (A_t = a_t, or diag(a_t) per key channel); y_t = S_t^T q_t."""
    def expect(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
               init: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        d = dim % beta.dim()
        q, a, k, v, beta = (x.double().movedim(d, 0) for x in (q, a, k, v, beta))
        h = torch.zeros(*beta.shape[1:], k.shape[-1], v.shape[-1], dtype=torch.float64) if init is None \
            else init.double().movedim(d, 0)[0]
        eye = torch.eye(k.shape[-1], dtype=torch.float64)
        ys = []
        for t in range(beta.shape[0]):
            b = beta[t][..., None, None]
            decay = torch.diag_embed(a[t]) if a.dim() > beta.dim() else a[t][..., None, None] * eye
            keep = eye - b * (k[t][..., :, None] @ k[t][..., None, :]) if delta else eye
            h = keep @ decay @ h + b * (k[t][..., :, None] @ v[t][..., None, :])
            ys.append((h.transpose(-1, -2) @ q[t][..., :, None])[..., 0])
        return torch.stack(ys).movedim(0, d), h.unsqueeze(0).movedim(0, d)

    return expect


def _la(*lead: Any, kd: int, vd: int, dtype: torch.dtype = f32, per_k: bool = False, init: bool = False,
        dim: int = 1) -> list[Arg]:
    """q, a, k, v, beta (and init) over ``lead``: decays in [0, 1), betas in [-1, 1)."""
    state = tuple(1 if i == dim % len(lead) else n for i, n in enumerate(lead))
    return [A(dtype, *lead, kd), A(dtype, *lead, *((kd,) if per_k else ()), gen="range", hi=-1),
            A(dtype, *lead, kd), A(dtype, *lead, vd), A(dtype, *lead, gen="range", hi=0),
            *([A(dtype, *state, kd, vd)] if init else [])]


case("linear_attention", _la(2, 5, 3, kd=4, vd=6), _linear_attention(1, True), dim=1, delta=True)
case("linear_attention", _la(2, 5, 3, kd=4, vd=6, init=True), _linear_attention(1, False), dim=1, delta=False)
case("linear_attention", _la(7, 2, kd=3, vd=5, init=True, dim=0), _linear_attention(0, True), dim=0, delta=True)
case("linear_attention", _la(2, 5, 3, kd=4, vd=6, per_k=True, init=True), _linear_attention(1, True), dim=1,
     delta=True)
case("linear_attention", _la(2, 3, kd=2, vd=3, dtype=f16, dim=-1), _linear_attention(-1, True), dim=-1, delta=True)
case("linear_attention", _la(B, S, 2, kd=3, vd=4, init=True), _linear_attention(1, True), dim=1, delta=True)


def _layer_norm(ndim: int, eps: float = 1e-5) -> Callable[..., torch.Tensor]:
    def expect(x: torch.Tensor, w: Any = None, b: Any = None) -> torch.Tensor:
        dims = tuple(range(x.dim() - ndim, x.dim()))
        mu = x.mean(dims, keepdim=True)
        var = ((x - mu) ** 2).mean(dims, keepdim=True)
        y = (x - mu) / torch.sqrt(var + eps)
        y = y if w is None else y * w
        return y if b is None else y + b

    return expect


case("layer_norm", [A(f32, 3, 7), A(f32, 7), A(f32, 7)], _layer_norm(1))
case("layer_norm", [A(f32, 2, 3, 5), A(f32, 3, 5)], _layer_norm(2, 1e-3), ndim=2, eps=1e-3)
case("layer_norm", [A(f32, 1, 9)], _layer_norm(1))
case("layer_norm", [A(f16, 4, 5), A(f16, 5), A(f16, 5)], _layer_norm(1))
case("layer_norm", [A(f32, B, S, 6), A(f32, 6), A(f32, 6)], _layer_norm(1))


def _rms(eps: float) -> Callable[..., torch.Tensor]:
    """docs/ops.md: (x.float() * rsqrt(mean(x.float()**2, -1) + eps)).to(x.dtype) * weight."""

    def expect(x: torch.Tensor, w: Any = None) -> torch.Tensor:
        xf = x.float()
        y = (xf * torch.rsqrt((xf ** 2).mean(-1, keepdim=True) + eps)).to(x.dtype)
        return y if w is None else y * w

    return expect


case("rms_norm", [A(f32, 3, 7), A(f32, 7)], _rms(1e-6), upcast=False, eps=1e-6)
case("rms_norm", [A(f16, 2, 1, 5), A(f16, 5)], _rms(1e-5), upcast=False, eps=1e-5)
case("rms_norm", [A(f16, 4, 5), A(f32, 5)], _rms(1e-5), upcast=False, eps=1e-5)  # promotes to f32
case("rms_norm", [A(bf16, 3, 8), A(bf16, 8)], _rms(1e-6), upcast=False, eps=1e-6)
case("rms_norm", [A(f32, 5, 1)], _rms(1e-6), upcast=False, eps=1e-6)
case("rms_norm", [A(f32, B, S, 6), A(f32, 6)], _rms(1e-6), upcast=False, eps=1e-6)


# ---- matmul -----------------------------------------------------------------------------------
def _linear(x: torch.Tensor, w: torch.Tensor, b: Any = None) -> torch.Tensor:
    y = (x.unsqueeze(-2) * w).sum(-1)  # [..., 1, K] * [N, K] -> [..., N]
    return y if b is None else y + b


def _matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.unsqueeze(-1) * b.unsqueeze(-3)).sum(-2)  # [..., M, K, 1] * [..., 1, K, N]


case("linear", [A(f32, 7, 5), A(f32, 3, 5)], _linear)
case("linear", [A(f32, 7, 5), A(f32, 3, 5), A(f32, 3)], _linear)
case("linear", [A(f32, 2, 1, 5), A(f32, 1, 5)], _linear)
case("linear", [A(f32, 5), A(f32, 4, 5), A(f32, 4)], _linear)
case("linear", [A(f16, 3, 9), A(f16, 6, 9)], _linear)
case("linear", [A(f32, B, S, 5), A(f32, 3, 5), A(f32, 3)], _linear)



def _gated_linear(g: torch.Tensor, u: torch.Tensor, w: torch.Tensor, act: str = "silu") -> torch.Tensor:
    return _linear(g / (1 + torch.exp(-g)) * u, w)  # silu written out: x * sigmoid(x)


case("gated_linear", [A(f32, 7, 5), A(f32, 7, 5), A(f32, 3, 5)], _gated_linear)
case("gated_linear", [A(f32, B, S, 5), A(f32, B, S, 5), A(f32, 4, 5)], _gated_linear, act="silu")
case("gated_linear", [A(f16, 2, 1, 9), A(f16, 2, 1, 9), A(f16, 6, 9)], _gated_linear)


def _linear_glu(x: torch.Tensor, w: torch.Tensor, act: str = "silu") -> torch.Tensor:
    n = w.shape[0] // 2
    g, u = _linear(x, w[:n]), _linear(x, w[n:])
    return g / (1 + torch.exp(-g)) * u


case("linear_glu", [A(f32, 7, 5), A(f32, 6, 5)], _linear_glu)
case("linear_glu", [A(f32, B, S, 5), A(f32, 8, 5)], _linear_glu, act="silu")
case("linear_glu", [A(f16, 2, 1, 9), A(f16, 10, 9)], _linear_glu)

def _linear_rope(x: torch.Tensor, w: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, b: Any = None, *,
                 head_dim: int, rope_cols: int) -> torch.Tensor:
    """Column by column: rotated column j of a head = y_j cos_j - y_(j+D/2) sin_j (first half), y_j cos_j +
    y_(j-D/2) sin_j (second half); the columns past rope_cols unchanged."""
    return _rotated(_linear(x, w) if b is None else _linear(x, w) + b, cos, sin, head_dim=head_dim,
                    rope_cols=rope_cols)


def _rotated(y: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, head_dim: int, rope_cols: int) -> torch.Tensor:
    """``y``'s first rope_cols columns rotated column by column (see ``_linear_rope``)."""
    c, s = cos.expand(*y.shape[:-1], head_dim), sin.expand(*y.shape[:-1], head_dim)
    out, half = y.clone(), head_dim // 2
    for col in range(rope_cols):
        j = col % head_dim
        partner, sign = (col + half, -1.0) if j < half else (col - half, 1.0)
        out[..., col] = y[..., col] * c[..., j] + sign * y[..., partner] * s[..., j]
    return out


case("linear_rope", [A(f32, 3, 5), A(f32, 12, 5), A(f32, 3, 4), A(f32, 3, 4)],
     functools.partial(_linear_rope, head_dim=4, rope_cols=8), head_dim=4, rope_cols=8)
case("linear_rope", [A(f32, B, S, 5), A(f32, 12, 5), A(f32, B, S, 4), A(f32, B, S, 4), A(f32, 12)],
     functools.partial(_linear_rope, head_dim=4, rope_cols=12), head_dim=4, rope_cols=12)
case("linear_rope", [A(f16, 2, 1, 9), A(f16, 16, 9), A(f16, 1, 8), A(f16, 1, 8)],
     functools.partial(_linear_rope, head_dim=8, rope_cols=8), head_dim=8, rope_cols=8)

# the fused GEMV forms (fuse-linear-residual / fuse-norm-linear): eager's composition, rounded as eager does
case("linear_add", [A(f32, 7, 5), A(f32, 3, 5), A(f32, 7, 3)], lambda x, w, r: r + _linear(x, w))
case("linear_add", [A(f16, 2, 1, 9), A(f16, 6, 9), A(f16, 2, 1, 6)], lambda x, w, r: r + _linear(x, w))
case("linear_add", [A(f32, B, S, 5), A(f32, 4, 5), A(f32, B, S, 4)], lambda x, w, r: r + _linear(x, w))
# mlp_block: x + linear(linear_glu(rms_norm(x, nw), w_gate_up), w_down), written out
case("mlp_block", [A(f32, 3, 1, 5), A(f32, 5), A(f32, 8, 5), A(f32, 5, 4)],
     lambda x, nw, wgu, wd: x + _linear(_linear_glu(_rms(1e-6)(x, nw), wgu), wd), eps=1e-6)
case("mlp_block", [A(f16, 1, 1, 9), A(f16, 9), A(f16, 6, 9), A(f16, 9, 3)],
     lambda x, nw, wgu, wd: x + _linear(_linear_glu(_rms(1e-5)(x, nw), wgu), wd), eps=1e-5, act="silu")
case("mlp_block", [A(f32, B, 1, 6), A(f32, 6), A(f32, 4, 6), A(f32, 6, 2)],
     lambda x, nw, wgu, wd: x + _linear(_linear_glu(_rms(1e-6)(x, nw), wgu), wd), eps=1e-6)
case("rms_norm_linear", [A(f32, 7, 5), A(f32, 5), A(f32, 3, 5)],
     lambda x, nw, w: _linear(_rms(1e-6)(x, nw), w), eps=1e-6)
case("rms_norm_linear", [A(f32, B, S, 6), A(f32, 6), A(f32, 4, 6)],
     lambda x, nw, w: _linear(_rms(1e-5)(x, nw), w), eps=1e-5)
case("gated_linear_add", [A(f32, 7, 5), A(f32, 7, 5), A(f32, 3, 5), A(f32, 7, 3)],
     lambda g, u, w, r: r + _gated_linear(g, u, w))
case("gated_linear_add", [A(f32, B, S, 5), A(f32, B, S, 5), A(f32, 4, 5), A(f32, B, S, 4)],
     lambda g, u, w, r: r + _gated_linear(g, u, w))


# the norm's statistics from its producer: sums of squares per block of 4 output columns (the last block short)
def _sumsq_blocks(y: torch.Tensor) -> torch.Tensor:
    n = y.shape[-1]
    return torch.stack([(y[..., j:j + 4] ** 2).sum(-1) for j in range(0, n, 4)], dim=-1)


def _with_sumsq(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return y, _sumsq_blocks(y)


def _norm_from_sumsq(eps: float) -> Callable[..., torch.Tensor]:
    def f(x: torch.Tensor, ss: torch.Tensor, nw: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return _linear(x * (ss.sum(-1, keepdim=True) / x.shape[-1] + eps) ** -0.5 * nw, w)
    return f


case("linear_add_sumsq", [A(f32, 7, 5), A(f32, 9, 5), A(f32, 7, 9)], lambda x, w, r: _with_sumsq(r + _linear(x, w)))
case("linear_add_sumsq", [A(f32, B, S, 5), A(f32, 4, 5), A(f32, B, S, 4)],
     lambda x, w, r: _with_sumsq(r + _linear(x, w)))
case("gated_linear_add_sumsq", [A(f32, 7, 5), A(f32, 7, 5), A(f32, 6, 5), A(f32, 7, 6)],
     lambda g, u, w, r: _with_sumsq(r + _gated_linear(g, u, w)))
case("gated_linear_add_sumsq", [A(f32, B, 1, 5), A(f32, B, 1, 5), A(f32, 9, 5), A(f32, B, 1, 9)],
     lambda g, u, w, r: _with_sumsq(r + _gated_linear(g, u, w)))
case("rms_norm_linear_sumsq", [A(f32, 7, 9), A(f32, 7, 3, gen="pos"), A(f32, 9), A(f32, 5, 9)],
     _norm_from_sumsq(1e-6), eps=1e-6)
case("rms_norm_linear_sumsq", [A(f32, B, S, 8), A(f32, B, S, 2, gen="pos"), A(f32, 8), A(f32, 3, 8)],
     _norm_from_sumsq(1e-5), eps=1e-5)


def _norm_rope_from_sumsq(eps: float, head_dim: int, rope_cols: int) -> Callable[..., torch.Tensor]:
    """rms_norm_linear_rope_sumsq: the norm from the partials, the product (+ bias), then the columns rotated."""
    def f(x: torch.Tensor, ss: torch.Tensor, nw: torch.Tensor, w: torch.Tensor, cos: torch.Tensor,
          sin: torch.Tensor, b: Any = None) -> torch.Tensor:
        y = _norm_from_sumsq(eps)(x, ss, nw, w)
        return _rotated(y if b is None else y + b, cos, sin, head_dim=head_dim, rope_cols=rope_cols)
    return f


case("rms_norm_linear_rope_sumsq", [A(f32, 3, 9), A(f32, 3, 3, gen="pos"), A(f32, 9), A(f32, 12, 9), A(f32, 3, 4),
                                    A(f32, 3, 4), A(f32, 12)],
     _norm_rope_from_sumsq(1e-6, 4, 8), eps=1e-6, head_dim=4, rope_cols=8)
case("rms_norm_linear_rope_sumsq", [A(f32, B, S, 8), A(f32, B, S, 2, gen="pos"), A(f32, 8), A(f32, 24, 8),
                                    A(f32, B, S, 8), A(f32, B, S, 8)],
     _norm_rope_from_sumsq(1e-5, 8, 16), eps=1e-5, head_dim=8, rope_cols=16)
case("rms_norm_linear_rope_sumsq", [A(f16, 2, 1, 7), A(f32, 2, 1, 2, gen="pos"), A(f16, 7), A(f16, 16, 7),
                                    A(f16, 1, 8), A(f16, 1, 8)],
     _norm_rope_from_sumsq(1e-5, 8, 16), eps=1e-5, head_dim=8, rope_cols=16)



def _norm_glu_from_sumsq(eps: float) -> Callable[..., torch.Tensor]:
    """rms_norm_linear_glu_sumsq: the norm from the partials, the merged gate/up product, silu(g) * u."""
    def f(x: torch.Tensor, ss: torch.Tensor, nw: torch.Tensor, w: torch.Tensor, act: str = "silu") -> torch.Tensor:
        return _linear_glu(x * (ss.sum(-1, keepdim=True) / x.shape[-1] + eps) ** -0.5 * nw, w)
    return f


case("rms_norm_linear_glu_sumsq", [A(f32, 7, 9), A(f32, 7, 3, gen="pos"), A(f32, 9), A(f32, 10, 9)],
     _norm_glu_from_sumsq(1e-6), eps=1e-6)
case("rms_norm_linear_glu_sumsq", [A(f32, B, S, 8), A(f32, B, S, 2, gen="pos"), A(f32, 8), A(f32, 6, 8)],
     _norm_glu_from_sumsq(1e-5), eps=1e-5, act="silu")
case("rms_norm_linear_glu_sumsq", [A(f16, 2, 1, 7), A(f32, 2, 1, 2, gen="pos"), A(f16, 7), A(f16, 16, 7)],
     _norm_glu_from_sumsq(1e-5), eps=1e-5)

case("matmul", [A(f32, 3, 4), A(f32, 4, 5)], _matmul)
case("matmul", [A(f32, 2, 3, 4), A(f32, 4, 1)], _matmul)
case("matmul", [A(f32, 2, 1, 3, 4), A(f32, 5, 4, 6)], _matmul)
case("matmul", [A(f16, 1, 7, 3), A(f16, 2, 3, 7)], _matmul)
case("matmul", [A(f32, B, S, 4), A(f32, B, 4, S)], _matmul)


def _grouped_mm(x: torch.Tensor, w: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Row r belongs to the first group whose cumulative end exceeds r; rows past the last end are zero."""
    group = torch.searchsorted(offsets.long(), torch.arange(x.shape[0]), right=True)
    valid = group < w.shape[0]
    wr = w[group.clamp(max=w.shape[0] - 1)]  # [N, K, M]
    return torch.where(valid[:, None], (x.unsqueeze(-1) * wr).sum(1), torch.zeros(()))


case("grouped_mm", [A(f32, 7, 4), A(f32, 3, 4, 5), A(i64, 3, gen="offsets", hi=7)], _grouped_mm)
case("grouped_mm", [A(f32, 9, 3), A(f32, 4, 3, 2), A(i32, 4, gen="offsets", hi=6)], _grouped_mm)
case("grouped_mm", [A(f32, 1, 4), A(f32, 1, 4, 5), A(i32, 1, gen="offsets", hi=1)], _grouped_mm)
case("grouped_mm", [A(f16, 8, 6), A(f16, 2, 6, 3), A(i64, 2, gen="offsets", hi=8)], _grouped_mm)
case("grouped_mm", [A(f32, S, 4), A(f32, 3, 4, 5), A(i64, 3, gen="offsets", hi=S)], _grouped_mm)


# ---- attention --------------------------------------------------------------------------------
def _attention(causal: bool = False, scale: Any = None, chunk: Any = None) -> Callable[..., torch.Tensor]:
    def expect(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: Any = None) -> torch.Tensor:
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = q @ k.transpose(-1, -2) * (scale if scale is not None else q.shape[-1] ** -0.5)
        if causal:
            keep = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool).tril()
            if chunk is not None:  # and in the query's chunk: i // chunk == j // chunk
                i = torch.arange(q.shape[2])
                keep = keep & (i[:, None] // chunk == torch.arange(k.shape[2])[None, :] // chunk)
            s = s.masked_fill(~keep, -math.inf)
        if mask is not None:
            s = s.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else s + mask
        return torch.softmax(s, -1) @ v

    return expect


case("attention", [A(f32, 2, 4, 5, 8), A(f32, 2, 2, 7, 8), A(f32, 2, 2, 7, 8)], _attention())
case("attention", [A(f32, 1, 3, 6, 4), A(f32, 1, 3, 6, 4), A(f32, 1, 3, 6, 4)], _attention(True), causal=True)
case("attention", [A(f32, 2, 2, 3, 4), A(f32, 2, 1, 5, 4), A(f32, 2, 1, 5, 4)], _attention(True), causal=True)
case("attention", [A(f32, 2, 4, 5, 8), A(f32, 2, 2, 7, 8), A(f32, 2, 2, 7, 6), A(boolean, 5, 7, gen="mask")],
     _attention(scale=0.3), scale=0.3)
case("attention", [A(f32, 2, 2, 1, 4), A(f32, 2, 2, 9, 4), A(f32, 2, 2, 9, 4), A(f32, 2, 1, 1, 9)], _attention())
case("attention", [A(f16, 1, 8, 3, 16), A(f16, 1, 1, 3, 16), A(f16, 1, 1, 3, 16)], _attention())
case("attention", [A(f32, B, 4, S, 8), A(f32, B, 2, S, 8), A(f32, B, 2, S, 8)], _attention(True), causal=True)
case("attention", [A(f32, 1, 2, 9, 4), A(f32, 1, 1, 9, 4), A(f32, 1, 1, 9, 4)], _attention(True, chunk=4), causal=True,
     chunk=4)
case("attention", [A(f32, B, 2, S, 8), A(f32, B, 2, S, 8), A(f32, B, 2, S, 8), A(boolean, B, 1, S, S, gen="mask")],
     _attention())

# ---- memory / views -----------------------------------------------------------------------------
case("reshape", [A(f32, 2, 3, 4)], lambda x: x.contiguous().view(6, 4), shape=(6, 4))
case("reshape", [A(i64, 2, 3, 4)], lambda x: x.flatten(), shape=(24,))
case("reshape", [A(f16, 1)], lambda x: x.view(()), shape=())
case("reshape", [A(f32, 7)], lambda x: x.view(7, 1, 1), shape=(7, 1, 1))
case("reshape", [A(f32, B, S, 6)], lambda x: x.view(x.shape[0] * x.shape[1], 2, 3), shape=(B * S, 2, 3))
case("permute", [A(f32, 2, 3, 4)], lambda x: torch.einsum("abc->cab", x), dims=(2, 0, 1))
case("permute", [A(i64, 2, 1, 5)], lambda x: torch.einsum("abc->cab", x), dims=(-1, 0, 1))
case("permute", [A(f32, 3)], lambda x: x, dims=(0,))
case("permute", [A(f32, B, S, 2, 3)], lambda x: torch.einsum("abcd->acbd", x), dims=(0, 2, 1, 3))
case("transpose", [A(f32, 2, 3, 4)], lambda x: torch.einsum("abc->cba", x), dim0=0, dim1=2)
case("transpose", [A(f16, 5, 1)], lambda x: torch.einsum("ab->ba", x), dim0=-1, dim1=-2)
case("transpose", [A(f32, 4)], lambda x: x, dim0=0, dim1=-1)
case("transpose", [A(f32, B, S, 3)], lambda x: torch.einsum("abc->bac", x), dim0=0, dim1=1)
case("expand", [A(f32, 3, 1)], lambda x: x + torch.zeros(2, 3, 4), shape=(2, 3, 4))
case("expand", [A(i64, 1)], lambda x: x + torch.zeros(5, dtype=i64), shape=(5,))
case("expand", [A(f32)], lambda x: x + torch.zeros(2, 3), shape=(2, 3))
case("expand", [A(f32, 4, 3)], lambda x: x + torch.zeros(4, 3), shape=(4, 3))
case("expand", [A(f32, S, 1)], lambda x: x + torch.zeros(SIZES[B], x.shape[0], 4), shape=(B, S, 4))
case("unsqueeze", [A(f32, 3, 4)], lambda x: x[None], dim=0)
case("unsqueeze", [A(f32, 3, 4)], lambda x: x[..., None], dim=-1)
case("unsqueeze", [A(i64, 3, 4)], lambda x: x[:, None], dim=1)
case("unsqueeze", [A(f32)], lambda x: x[None], dim=0)
case("unsqueeze", [A(f32, B, S)], lambda x: x[:, :, None], dim=2)
case("squeeze", [A(f32, 3, 1, 4, 1)], lambda x: x[:, 0, :, 0], dims=(1, 3))
case("squeeze", [A(f32, 3, 1, 4, 1)], lambda x: x[..., 0], dims=(-1,))
case("squeeze", [A(f32, 1)], lambda x: x[0], dims=(0,))
case("squeeze", [A(f32, 2, 3)], lambda x: x, dims=())
case("squeeze", [A(f32, B, 1, S)], lambda x: x[:, 0], dims=(1,))
case("slice", [A(f32, 7, 5)], lambda x: x[1:6:2], dim=0, start=1, end=6, step=2)
case("slice", [A(f32, 7, 5)], lambda x: x[:, 0:5], dim=-1, start=0, end=5)
case("slice", [A(i64, 4, 9)], lambda x: x[:, 2:9:3], dim=1, start=2, end=9, step=3)
case("slice", [A(f32, 1, 3)], lambda x: x[0:1], dim=0, start=0, end=1)
case("slice", [A(f32, B, S, 4)], lambda x: x[:, 1:], dim=1, start=1, end=S)
case("slice", [A(f32, B, S, 4)], lambda x: x[:, 0:x.shape[1]:2], dim=1, start=0, end=S, step=2)
case("select", [A(f32, 4, 5)], lambda x: x[:, 3], dim=1, index=3)
case("select", [A(f32, 4, 5)], lambda x: x[0], dim=-2, index=0)
case("select", [A(i64, 1, 3, 2)], lambda x: x[:, :, 1], dim=2, index=1)
case("select", [A(f32, 7)], lambda x: x[6], dim=0, index=6)
case("select", [A(f32, B, S, 3)], lambda x: x[:, -1], dim=1, index=S - 1)
case("cat", [A(f32, 2, 3), A(f32, 4, 3)], lambda a, b: torch.vstack([a, b]), dim=0)
case("cat", [A(f16, 2, 3), A(f32, 2, 1)], lambda a, b: torch.hstack([a.double(), b.double()]), dim=-1)
case("cat", [A(i64, 1, 2), A(i64, 1, 3), A(i64, 1, 1)], lambda a, b, c: torch.hstack([a, b, c]), dim=1)
case("cat", [A(f32, 5)], lambda a: a, dim=0)
case("cat", [A(f32, B, S), A(f32, B, 1)], lambda a, b: torch.hstack([a, b]), dim=1)


def _split(dim: int, sizes: Any) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    def expect(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = [eval_dim(sympy.sympify(s), SIZES) for s in sizes]
        starts = [sum(n[:i]) for i in range(len(n))]
        return tuple(x.narrow(dim, st, ln) for st, ln in zip(starts, n))

    return expect


case("split", [A(f32, 7, 3)], _split(0, (2, 5)), dim=0, sizes=(2, 5))
case("split", [A(i64, 2, 7)], _split(1, (1, 1, 5)), dim=-1, sizes=(1, 1, 5))
case("split", [A(f32, 3)], _split(0, (3,)), dim=0, sizes=(3,))
case("split", [A(f32, B, S, 4)], _split(1, (S - 2, 2)), dim=1, sizes=(S - 2, 2))


# ---- creation -----------------------------------------------------------------------------------
for _v, _dt in [(0.5, f32), (2, i64), (True, boolean), (-math.inf, f32), (3, f16), (-1e-3, bf16)]:
    case("constant", [], lambda _v=_v, _dt=_dt: torch.full((), _v, dtype=_dt), upcast=False, value=_v, dtype=_dt)
case("full", [], lambda: torch.ones(2, 3) * 1.5, shape=(2, 3), value=1.5, dtype=f32)
case("full", [], lambda: torch.ones(1, dtype=boolean), shape=(1,), value=True, dtype=boolean)
case("full", [], lambda: torch.ones((), dtype=i32) * 7, shape=(), value=7, dtype=i32)
case("full", [], lambda: torch.zeros(SIZES[B], SIZES[S], dtype=i64), shape=(B, S), value=0, dtype=i64)
case("arange", [], lambda: torch.tensor(list(range(7))), end=7)
case("arange", [], lambda: torch.tensor(list(range(2, 11, 3)), dtype=i32), start=2, end=11, step=3, dtype=i32)
case("arange", [], lambda: torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0]), end=5, dtype=f32)
case("arange", [], lambda: torch.tensor([0.0, 0.5, 1.0]), start=0.0, end=1.5, step=0.5, dtype=f32)
case("arange", [], lambda: torch.tensor(list(range(1, SIZES[S]))), start=1, end=S)
case("arange", [], lambda: torch.tensor(list(range(SIZES[B] * SIZES[S]))), end=B * S)


# ---- index --------------------------------------------------------------------------------------
def _embedding(w: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    return F.one_hot(ids.long(), w.shape[0]).to(w.dtype) @ w  # one-hot matmul, not a gather


case("embedding", [A(f32, 11, 4), A(i64, 2, 3, gen="index", hi=11)], _embedding)
case("embedding", [A(f16, 5, 3), A(i32, 7, gen="index", hi=5)], _embedding)
case("embedding", [A(f32, 1, 6), A(i64, 1, 1, gen="index", hi=1)], _embedding)
case("embedding", [A(f32, 9, 4), A(i64, gen="index", hi=9)], _embedding)
case("embedding", [A(f32, 13, 4), A(i64, B, S, gen="index", hi=13)], _embedding)

case("index", [A(f32, 5, 6, 7), A(i64, 3, gen="index", hi=5)], lambda x, i: x[i], dims=(0,))
case("index", [A(f32, 5, 6, 7), A(i32, 2, 3, gen="index", hi=6)], lambda x, i: x[:, i.long()], dims=(1,))
case("index", [A(i64, 5, 6, 7), A(i64, 4, gen="index", hi=5), A(i64, 4, gen="index", hi=7)],
     lambda x, i, j: x[i, :, j], dims=(0, 2))  # non-adjacent: the index dims go first
case("index", [A(f32, 5, 6, 7), A(i64, 3, 1, gen="index", hi=6), A(i64, 4, gen="index", hi=7)],
     lambda x, i, j: x[:, i, j], dims=(1, 2))  # adjacent, broadcast [3, 1] x [4]
case("index", [A(f32, 5, 6), A(i64, gen="index", hi=6)], lambda x, i: x[:, i], dims=(-1,))
case("index", [A(f32, B, S, 4), A(i64, S, gen="index", hi=B)], lambda x, i: x[i], dims=(0,))


def _put(dims: tuple[int, ...], accumulate: bool = False) -> Callable[..., torch.Tensor]:
    def expect(x: torch.Tensor, v: torch.Tensor, *idx: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        key = [slice(None)] * x.dim()
        for d, i in zip(dims, idx):
            key[d] = i
        if not accumulate:
            y[tuple(key)] = v
            return y
        # duplicates accumulate: add one index element at a time
        pos = torch.broadcast_tensors(*idx)
        full = torch.zeros_like(x[tuple(key)]) + v
        for flat in range(pos[0].numel()):
            at = [slice(None)] * x.dim()
            for d, p in zip(dims, pos):
                at[d] = p.reshape(-1)[flat]
            y[tuple(at)] += full.reshape(pos[0].numel(), *full.shape[pos[0].dim():])[flat]
        return y

    return expect


case("index_put", [A(f32, 5, 4), A(f32, 3, 4), A(i64, 3, gen="unique", hi=5)], _put((0,)), dims=(0,))
case("index_put", [A(f32, 5, 4), A(f32, 1), A(i64, 2, gen="unique", hi=4)], _put((1,)), dims=(1,))
case("index_put", [A(f32, 5, 4), A(f32, 6, 4), A(i64, 6, gen="index", hi=5)], _put((0,), True), dims=(0,),
     accumulate=True)
case("index_put", [A(i64, 4, 3, 2), A(i64, 2), A(i64, 2, gen="unique", hi=4), A(i64, 2, gen="unique", hi=3)],
     _put((0, 1)), dims=(0, 1))
case("index_put", [A(f32, B, S), A(f32, B, 2), A(i64, 2, gen="unique", hi=S)], _put((1,)), dims=(1,))


def _gather2d(dim: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(i.shape[0])[:, None].expand_as(i)
        cols = torch.arange(i.shape[1])[None, :].expand_as(i)
        return x[i, cols] if dim == 0 else x[rows, i]

    return expect


case("gather", [A(f32, 4, 5), A(i64, 4, 3, gen="index", hi=5)], _gather2d(1), dim=1)
case("gather", [A(f32, 4, 5), A(i64, 2, 5, gen="index", hi=4)], _gather2d(0), dim=0)
case("gather", [A(i64, 3, 1), A(i32, 3, 4, gen="index", hi=1)], _gather2d(1), dim=-1)
case("gather", [A(f16, 1, 6), A(i64, 1, 1, gen="index", hi=6)], _gather2d(1), dim=1)
case("gather", [A(f32, B, S), A(i64, B, 2, gen="index", hi=S)], _gather2d(1), dim=1)


def _scatter(dim: int, add: bool = False) -> Callable[..., torch.Tensor]:
    def expect(x: torch.Tensor, index: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        for pos in itertools.product(*[range(n) for n in index.shape]):
            dst = list(pos)
            dst[dim] = int(index[pos])
            y[tuple(dst)] = y[tuple(dst)] + src[pos] if add else src[pos]
        return y

    return expect


case("scatter", [A(f32, 5, 4), A(i64, 3, 4, gen="unique", hi=5), A(f32, 3, 4)], _scatter(0), dim=0)
case("scatter", [A(f32, 5, 4), A(i64, 2, 3, gen="unique", hi=5), A(f32, 3, 4)], _scatter(0), dim=0)
case("scatter", [A(f32, 3, 6), A(i64, 3, 8, gen="index", hi=6), A(f32, 3, 8)], _scatter(1, True), dim=-1,
     reduce="add")
case("scatter", [A(i64, 1, 4), A(i64, 1, 4, gen="index", hi=1), A(i64, 1, 4)], _scatter(0, True), dim=0,
     reduce="add")
case("scatter", [A(f32, S, 3), A(i64, 2, 3, gen="unique", hi=S), A(f32, 2, 3)], _scatter(0), dim=0)

case("index_select", [A(f32, 5, 4), A(i64, 3, gen="index", hi=5)], lambda x, i: x[i], dim=0)
case("index_select", [A(f32, 5, 4), A(i32, 6, gen="index", hi=4)], lambda x, i: x[:, i.long()], dim=-1)
case("index_select", [A(f32, 5, 4), A(i64, gen="index", hi=4)], lambda x, i: x[:, i.reshape(1)], dim=1)
case("index_select", [A(i64, 1, 3), A(i64, 1, gen="index", hi=1)], lambda x, i: x[i], dim=0)
case("index_select", [A(f32, B, S), A(i64, S, gen="index", hi=B)], lambda x, i: x[i], dim=0)


def _copy(dim: int) -> Callable[..., torch.Tensor]:
    def expect(x: torch.Tensor, i: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        for n, at in enumerate(i.tolist()):
            y.select(dim, at).copy_(src.select(dim, n))
        return y

    return expect


case("index_copy", [A(f32, 5, 4), A(i64, 3, gen="unique", hi=5), A(f32, 3, 4)], _copy(0), dim=0)
case("index_copy", [A(f32, 5, 4), A(i64, 2, gen="unique", hi=4), A(f32, 5, 2)], _copy(1), dim=-1)
case("index_copy", [A(i64, 1, 3), A(i64, 1, gen="unique", hi=1), A(i64, 1, 3)], _copy(0), dim=0)
case("index_copy", [A(f32, B, 7, 2), A(i64, S, gen="unique", hi=7), A(f32, B, S, 2)], _copy(1), dim=1)


# ---- routing ------------------------------------------------------------------------------------
def _topk(k: int, dim: int = -1, largest: bool = True) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    def expect(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        order = torch.argsort(x, dim=dim, descending=largest)
        values = torch.take_along_dim(x, order, dim)
        return values.narrow(dim, 0, k), order.narrow(dim, 0, k)

    return expect


case("topk", [A(f32, 4, 9, gen="perm")], _topk(3), k=3)
case("topk", [A(f32, 4, 9, gen="perm")], _topk(2, 0, False), k=2, dim=0, largest=False)
case("topk", [A(i64, 1, 5, gen="perm")], _topk(5), k=5)
case("topk", [A(f16, 7, gen="perm")], _topk(1), k=1)
case("topk", [A(f32, B, S, gen="perm")], _topk(2), k=2)


def _sort(dim: int = -1, descending: bool = False) -> Callable[[torch.Tensor], tuple[torch.Tensor, ...]]:
    def expect(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        # rank of each element = how many elements come before it (ties broken by position)
        xm = x.movedim(dim, -1)
        n = xm.shape[-1]
        a, b = xm.unsqueeze(-1), xm.unsqueeze(-2)  # a[i] vs b[j]
        before = (b > a) if descending else (b < a)
        pos = torch.arange(n)
        before = before | ((b == a) & (pos[None, :] < pos[:, None]))
        rank = before.sum(-1)  # [..., n]: output slot of element i
        idx = torch.empty_like(rank).scatter_(-1, rank, pos.expand_as(rank).contiguous())
        return torch.take_along_dim(xm, idx, -1).movedim(-1, dim), idx.movedim(-1, dim)

    return expect


case("sort", [A(f32, 4, 9, gen="perm")], _sort())
case("sort", [A(f32, 4, 9, gen="perm")], _sort(0, True), dim=0, descending=True)
case("sort", [A(i64, 3, 8, gen="small")], _sort(), stable=True)  # ties: stable keeps input order
case("sort", [A(f16, 1, gen="perm")], _sort())
case("sort", [A(f32, B, S, gen="perm")], _sort(1, True), dim=1, descending=True)


def _histc(bins: int, lo: float, hi: float) -> Callable[[torch.Tensor], torch.Tensor]:
    def expect(x: torch.Tensor) -> torch.Tensor:
        inside = x[(x >= lo) & (x <= hi)].double()
        which = ((inside - lo) / (hi - lo) * bins).floor().clamp(max=bins - 1).long()
        return torch.bincount(which, minlength=bins).to(x.dtype)

    return expect


case("histc", [A(f32, 50, gen="range", hi=3)], _histc(4, 0, 3), bins=4, min=0, max=3)
case("histc", [A(f32, 3, 7, gen="range", hi=2)], _histc(5, -1.0, 2.5), bins=5, min=-1.0, max=2.5)
case("histc", [A(f32, 1, gen="range", hi=1)], _histc(1, 0, 1), bins=1, min=0, max=1)
case("histc", [A(f32, S, gen="range", hi=4)], _histc(3, 0, 4), bins=3, min=0, max=4)
# integer expert ids, as transformers' MoE passes them on CUDA: counts in the input's dtype
case("histc", [A(i32, 37, gen="range", hi=5)], _histc(5, 0, 4), bins=5, min=0, max=4)
case("histc", [A(i64, 2, S, gen="range", hi=3)], _histc(3, 0, 2), bins=3, min=0, max=2)


# ---------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------
def concrete(v: Any, sizes: dict[sympy.Symbol, int]) -> Any:
    """Attributes as the reference backend passes them: dims evaluated to ints."""
    if isinstance(v, sympy.Expr):
        return eval_dim(v, sizes)
    if isinstance(v, dict):
        return {k: concrete(x, sizes) for k, x in v.items()}
    if isinstance(v, tuple):
        return tuple(concrete(x, sizes) for x in v)
    return v


def make_tensor(arg: Arg, sizes: dict[sympy.Symbol, int], gen: torch.Generator) -> torch.Tensor:
    shape = tuple(eval_dim(sympy.sympify(d), sizes) for d in arg.shape)
    hi = eval_dim(sympy.sympify(arg.hi), sizes) if arg.hi is not None else None
    dt, kind = arg.dtype, arg.gen
    floating = dt.is_floating_point
    if kind == "mask":
        m = torch.rand(shape, generator=gen) < 0.6
        m[..., 0] = True  # every query attends to something
        return m
    if kind == "bool" or dt == boolean:
        return torch.rand(shape, generator=gen) < 0.5
    if kind == "index":
        return torch.randint(0, hi, shape, generator=gen, dtype=dt)
    if kind == "unique":
        return torch.argsort(torch.rand((hi, *shape[1:]), generator=gen), dim=0)[:shape[0]].to(dt)
    if kind == "offsets":
        ends = torch.sort(torch.randint(0, hi + 1, shape, generator=gen)).values
        if torch.rand((), generator=gen) < 0.5:
            ends[-1] = hi
        return ends.to(dt)
    if kind == "perm":
        n = math.prod(shape)
        return (torch.randperm(n, generator=gen).reshape(shape).to(f64) - n / 2).to(dt)
    if kind == "range":
        return (torch.rand(shape, generator=gen, dtype=f64) * (hi + 2) - 1).to(dt)
    if kind == "small":
        return torch.randint(0, 4, shape, generator=gen).to(dt)
    if kind == "pos":
        if floating:
            return (torch.rand(shape, generator=gen, dtype=f64) + 0.5).to(dt)
        return torch.randint(1, 10, shape, generator=gen, dtype=dt)
    if kind == "nonzero":
        sign = torch.where(torch.rand(shape, generator=gen) < 0.5, -1, 1)
        if floating:
            return ((torch.rand(shape, generator=gen, dtype=f64) + 0.5) * sign).to(dt)
        return (torch.randint(1, 10, shape, generator=gen) * sign).to(dt)
    assert kind == "randn", kind
    if floating:
        return torch.randn(shape, generator=gen, dtype=f64).to(dt)
    return torch.randint(-9, 10, shape, generator=gen, dtype=dt)


def build(sample: Sample) -> tuple[Graph, Node]:
    g = Graph(sample.op)
    ins = [g.add_input(f"x{i}", TensorType(a.dtype, a.shape)) for i, a in enumerate(sample.args)]
    node = g.append(g.create_node(sample.op, ins, sample.attrs))
    g.set_outputs(node.results)
    return g, node


def assert_values(real: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    expected = torch.as_tensor(expected)
    assert tuple(real.shape) == tuple(expected.shape), f"{what}: shape {tuple(real.shape)} vs {tuple(expected.shape)}"
    if not real.dtype.is_floating_point:
        assert torch.equal(real, expected.to(real.dtype)), f"{what}: {real} vs {expected}"
        return
    tol = TOL[real.dtype]
    exp = expected.double()
    finite = exp[torch.isfinite(exp)]
    scale = finite.abs().max().item() if finite.numel() else 1.0
    torch.testing.assert_close(real.double(), exp, rtol=tol, atol=tol * scale, equal_nan=True, msg=lambda m: f"{what}: {m}")


def _ids(samples: list[Sample]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        key = str(s)
        seen[key] = seen.get(key, 0) + 1
        out.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return out


@pytest.mark.parametrize("sample", SAMPLES, ids=_ids(SAMPLES))
def test_sample(sample: Sample) -> None:
    g, node = build(sample)
    verify(g)  # the verifier re-infers and agrees
    assert structurally_equal(g, parse(print_graph(g))), f"{sample}: attributes do not survive the text form"
    opdef = get_op(sample.op)
    gen = torch.Generator().manual_seed(zlib.crc32(str(sample).encode()))
    tensors = [make_tensor(a, sample.sizes, gen) for a in sample.args]
    attrs = concrete(node.attrs, sample.sizes)
    real = opdef.reference(*tensors, **attrs)
    reals = list(real) if isinstance(real, tuple) else [real]
    # (1) the inferred types, evaluated at the concrete sizes, describe the real results
    assert len(reals) == len(node.results), f"{sample}: {len(reals)} results, type rule says {len(node.results)}"
    for r, v in zip(reals, node.results):
        assert r.dtype == v.dtype, f"{sample}: reference gives {r.dtype}, type rule says {v.type}"
        assert tuple(r.shape) == v.type.concrete_shape(sample.sizes), f"{sample}: {tuple(r.shape)} vs {v.type}"
    # (2) the values equal the independent expression
    ins = [t.double() if sample.upcast and t.is_floating_point() else t for t in tensors]
    expected = sample.expect(*ins)
    expecteds = list(expected) if isinstance(expected, tuple) else [expected]
    for i, (r, e) in enumerate(zip(reals, expecteds)):
        assert_values(r, e, f"{sample} result {i}")


# ---------------------------------------------------------------------------------------------
# coverage: the table covers every op, the doc and the registry agree
# ---------------------------------------------------------------------------------------------
def _our_ops() -> set[str]:
    return {n for n, od in all_ops().items() if od.infer.__module__ in OUR_MODULES}


def test_table_covers_every_op() -> None:
    covered = {s.op for s in SAMPLES}
    missing = _our_ops() - covered - set(EXCLUDED)
    assert not missing, f"ops without samples: {sorted(missing)}"
    assert covered <= set(all_ops()), f"samples for unknown ops: {sorted(covered - set(all_ops()))}"


def test_every_op_has_a_symbolic_and_a_static_sample() -> None:
    no_dims = {"constant"}  # a 0-d scalar has no dims to make symbolic
    symbolic = {s.op for s in SAMPLES if s.symbolic}
    static = {s.op for s in SAMPLES if not s.symbolic}
    ops = {s.op for s in SAMPLES}
    assert ops - no_dims <= symbolic, f"no symbolic sample: {sorted(ops - no_dims - symbolic)}"
    assert ops <= static, f"no static sample: {sorted(ops - static)}"


def test_docs_and_registry_agree() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "ops.md").read_text()
    names: set[str] = set()
    for line in doc.splitlines():
        cells = line.split("|")
        if len(cells) > 3 and cells[1].strip() not in ("family (module)", "---"):
            names |= set(re.findall(r"[a-z_][a-z0-9_]*", cells[2].split("(")[0].replace("`", " ")))
    assert len(names) > 60, names
    assert names <= set(all_ops()), f"documented but not registered: {sorted(names - set(all_ops()))}"
    assert _our_ops() <= names, f"registered but not documented: {sorted(_our_ops() - names)}"


# ---------------------------------------------------------------------------------------------
# bad inputs: the error names the op
# ---------------------------------------------------------------------------------------------
def T(dtype: torch.dtype, *shape: Any) -> TensorType:
    return TensorType(dtype, shape)


BAD: list[tuple[str, list[TensorType], dict[str, Any], type[Exception]]] = [
    ("neg", [T(boolean, 3)], {}, TypeError),
    ("silu", [T(i64, 3)], {}, TypeError),
    ("gelu", [T(f32, 3)], {"approximate": "fast"}, ValueError),
    ("softplus", [T(i64, 3)], {}, TypeError),
    ("mlp_block", [T(f32, 1, 8), T(f32, 8), T(f32, 12, 8), T(f32, 8, 5)], {"eps": 1e-6}, ValueError),  # I = 6
    ("mlp_block", [T(f32, 1, 8), T(f32, 8), T(f32, 12, 8), T(f32, 8, 6)], {"eps": 1e-6, "act": "gelu"}, ValueError),
    ("softplus", [T(f32, 3)], {"beta": 0.0}, ValueError),
    ("add", [T(f32, 3, 4), T(f32, 5)], {}, ValueError),
    ("add", [T(f32, 3)], {}, TypeError),  # arity
    ("add", [T(f32, 3), T(f32, 3)], {"alpha": 2}, TypeError),  # unknown attribute
    ("mul", [T(f32, S, 4), T(f32, S + 1, 4)], {}, ValueError),
    ("sub", [T(boolean, 3), T(boolean, 3)], {}, TypeError),
    ("bitwise_and", [T(f32, 3), T(f32, 3)], {}, TypeError),
    ("div", [T(f32, 3), T(f32, 3)], {"rounding_mode": "round"}, ValueError),
    ("where", [T(f32, 3), T(f32, 3), T(f32, 3)], {}, TypeError),
    ("where", [T(boolean, 2), T(f32, 3), T(f32, 3)], {}, ValueError),
    ("clamp", [T(f32, 3)], {}, ValueError),
    ("clamp", [T(f32, 3)], {"min": "0"}, TypeError),
    ("cast", [T(f32, 3)], {"dtype": "f99"}, TypeError),
    ("cast", [T(f32, 3)], {}, TypeError),  # dtype is required
    ("sum", [T(f32, 3, 4)], {"dims": (2,)}, ValueError),
    ("sum", [T(f32, 3, 4)], {"dims": (0, -2)}, ValueError),
    ("mean", [T(i64, 3, 4)], {}, TypeError),
    ("amax", [T(f32, 3)], {"dims": ("0",)}, TypeError),
    ("argmax", [T(f32, 3, 4)], {"dim": 5}, ValueError),
    ("softmax", [T(i64, 3)], {"dim": 0}, TypeError),
    ("log_softmax", [T(f32, 3, 4)], {"dim": 2}, ValueError),
    ("cumsum", [T(f32, 3, 4)], {"dim": -3}, ValueError),
    ("linear_scan", [T(f32, 3, 4), T(f32, 3, 5)], {"dim": 0}, ValueError),
    ("linear_scan", [T(f32, 3, 4), T(f32, 3, 4), T(f32, 3, 4)], {"dim": 0}, ValueError),  # init not [1, 4]
    ("linear_scan", [T(i64, 3, 4), T(i64, 3, 4)], {"dim": 0}, TypeError),
    # q, a, k, v, beta (and init)
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 5, 2), T(f32, 3, 4)], {"dim": 1},
     ValueError),  # v's [..]
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4)], {"dim": 1},
     ValueError),  # k not [.., K]
    ("linear_attention", [T(f32, 3, 4, 3), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)], {"dim": 1},
     ValueError),  # q's K
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4),
                          T(f32, 3, 4, 2, 2)], {"dim": 1}, ValueError),  # init not [3, 1, 2, 2]
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f16, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)], {"dim": 1},
     TypeError),
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)], {"dim": 2},
     ValueError),
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4, 3), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)],
     {"dim": 1}, ValueError),  # a's K
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)],
     {"dim": -1}, ValueError),
    ("linear_attention", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4)],
     {"dim": 1, "delta": 1}, TypeError),
    # q, a, k, v, beta, state, start
    ("linear_attention_state", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4),
                                T(f32, 3, 1, 2, 2), T(f32, 3, 1)], {"dim": 1}, TypeError),  # start not an index
    ("linear_attention_state", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4),
                                T(f32, 3, 1, 2, 2), T(i64, 3, 2)], {"dim": 1}, ValueError),  # start not [B, 1]
    ("linear_attention_state", [T(f32, 3, 4, 2), T(f32, 3, 4), T(f32, 3, 4, 2), T(f32, 3, 4, 2), T(f32, 3, 4),
                                T(f32, 3, 4, 2, 2), T(i64, 3, 1)], {"dim": 1}, ValueError),  # state not [3, 1, 2, 2]
    ("layer_norm", [T(f32, 3, 4), T(f32, 5)], {}, ValueError),
    ("layer_norm", [T(f32, 3, 4)], {"ndim": 3}, ValueError),
    ("rms_norm", [T(f32, 3, 4), T(f32, 5)], {"eps": 1e-6}, ValueError),
    ("rms_norm", [T(i64, 3, 4)], {"eps": 1e-6}, TypeError),
    ("rms_norm", [T(f32, 3, 4)], {}, TypeError),  # eps is required
    ("linear", [T(f32, 3, 4), T(f32, 5, 6)], {}, ValueError),
    ("gated_linear", [T(f32, 3, 4), T(f32, 3, 5), T(f32, 6, 4)], {}, ValueError),
    ("gated_linear", [T(f32, 3, 4), T(f32, 3, 4), T(f16, 6, 4)], {}, TypeError),
    ("gated_linear", [T(f32, 3, 4), T(f32, 3, 4), T(f32, 6, 4)], {"act": "relu"}, ValueError),
    ("linear_glu", [T(f32, 3, 4), T(f32, 7, 4)], {}, ValueError),  # an odd number of rows
    ("linear_glu", [T(f32, 3, 4), T(f32, 6, 5)], {}, ValueError),
    ("linear_glu", [T(f32, 3, 4), T(f16, 6, 4)], {}, TypeError),
    ("linear_glu", [T(f32, 3, 4), T(f32, 6, 4)], {"act": "relu"}, ValueError),
    ("linear_rope", [T(f32, 3, 4), T(f32, 8, 4), T(f32, 3, 4), T(f32, 3, 4)], {"head_dim": 4, "rope_cols": 6},
     ValueError),  # not whole heads
    ("linear_rope", [T(f32, 3, 4), T(f32, 8, 4), T(f32, 3, 3), T(f32, 3, 3)], {"head_dim": 3, "rope_cols": 6},
     ValueError),  # an odd head dim
    ("linear_rope", [T(f32, 3, 4), T(f32, 8, 4), T(f32, 3, 4), T(f32, 3, 4)], {"head_dim": 4, "rope_cols": 12},
     ValueError),  # more rotated columns than the weight has
    ("linear_rope", [T(f32, 3, 4), T(f32, 8, 4), T(f32, 5, 4), T(f32, 5, 4)], {"head_dim": 4, "rope_cols": 8},
     ValueError),  # tables that do not broadcast to x's rows
    ("linear_rope", [T(f32, 3, 4), T(f32, 8, 4), T(f16, 3, 4), T(f16, 3, 4)], {"head_dim": 4, "rope_cols": 8},
     TypeError),
    ("linear_add", [T(f32, 3, 4), T(f32, 5, 4), T(f32, 3, 6)], {}, ValueError),    # residual of another shape
    ("rms_norm_linear", [T(f32, 3, 4), T(f32, 4), T(f32, 5, 6)], {"eps": 1e-6}, ValueError),
    ("gated_linear_add", [T(f32, 3, 4), T(f32, 3, 4), T(f32, 6, 4), T(f32, 3, 5)], {}, ValueError),
    ("linear_add_sumsq", [T(f32, 3, 4), T(f32, 5, 4), T(f32, 3, 6)], {}, ValueError),
    ("gated_linear_add_sumsq", [T(f32, 3, 4), T(f32, 3, 4), T(f32, 6, 4), T(f16, 3, 6)], {}, ValueError),
    ("rms_norm_linear_sumsq", [T(f32, 3, 9), T(f32, 3, 2), T(f32, 9), T(f32, 5, 9)], {"eps": 1e-6}, ValueError),
    ("rms_norm_linear_sumsq", [T(f32, 3, 9), T(f16, 3, 3), T(f32, 9), T(f32, 5, 9)], {"eps": 1e-6}, ValueError),
    ("rms_norm_linear_glu_sumsq", [T(f32, 3, 9), T(f32, 3, 2), T(f32, 9), T(f32, 8, 9)], {"eps": 1e-6},
     ValueError),  # sumsq: not x's partials
    ("rms_norm_linear_glu_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 9), T(f32, 7, 9)], {"eps": 1e-6},
     ValueError),  # an odd number of merged rows
    ("rms_norm_linear_glu_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 9), T(f32, 8, 9)], {"eps": 1e-6, "act": "relu"},
     ValueError),
    ("rms_norm_linear_glu_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f16, 9), T(f32, 8, 9)], {"eps": 1e-6}, TypeError),
    ("rms_norm_linear_rope_sumsq", [T(f32, 3, 9), T(f32, 3, 2), T(f32, 9), T(f32, 8, 9), T(f32, 3, 4), T(f32, 3, 4)],
     {"eps": 1e-6, "head_dim": 4, "rope_cols": 8}, ValueError),  # sumsq: not x's partials
    ("rms_norm_linear_rope_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 7), T(f32, 8, 9), T(f32, 3, 4), T(f32, 3, 4)],
     {"eps": 1e-6, "head_dim": 4, "rope_cols": 8}, ValueError),  # norm_weight of another K
    ("rms_norm_linear_rope_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 9), T(f32, 8, 9), T(f32, 3, 4), T(f32, 3, 4)],
     {"eps": 1e-6, "head_dim": 4, "rope_cols": 6}, ValueError),  # not whole heads
    ("rms_norm_linear_rope_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 9), T(f32, 8, 9), T(f32, 5, 4), T(f32, 5, 4)],
     {"eps": 1e-6, "head_dim": 4, "rope_cols": 8}, ValueError),  # tables that do not broadcast to x's rows
    ("rms_norm_linear_rope_sumsq", [T(f32, 3, 9), T(f32, 3, 3), T(f32, 9), T(f32, 8, 9), T(f16, 3, 4), T(f16, 3, 4)],
     {"eps": 1e-6, "head_dim": 4, "rope_cols": 8}, TypeError),
    ("linear", [T(f32, 3, 4), T(f16, 5, 4)], {}, TypeError),
    ("linear", [T(f32, 3, 4), T(f32, 5, 4), T(f32, 4)], {}, ValueError),
    ("linear", [T(f32, B, S, 4), T(f32, 5, 4, 1)], {}, ValueError),
    ("matmul", [T(f32, 3, 4), T(f32, 5, 6)], {}, ValueError),
    ("matmul", [T(f32, 4), T(f32, 4, 6)], {}, ValueError),
    ("matmul", [T(f32, 2, 3, 4), T(f32, 3, 4, 6)], {}, ValueError),
    ("grouped_mm", [T(f32, 7, 4), T(f32, 3, 4, 5), T(i64, 2)], {}, ValueError),
    ("grouped_mm", [T(f32, 7, 4), T(f32, 3, 4, 5), T(f32, 3)], {}, TypeError),
    ("grouped_mm", [T(f32, 7, 4), T(f32, 3, 5, 5), T(i64, 3)], {}, ValueError),
    ("attention", [T(f32, 1, 3, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8)], {}, ValueError),
    ("attention", [T(f32, 1, 4, 5, 8), T(f32, 1, 2, 5, 4), T(f32, 1, 2, 5, 8)], {}, ValueError),
    ("attention", [T(f32, 1, 4, 5, 8), T(f32, 1, 2, 6, 8), T(f32, 1, 2, 5, 8)], {}, ValueError),
    ("attention", [T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(boolean, 4, 5)], {}, ValueError),
    ("attention", [T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(i64, 5, 5)], {}, TypeError),
    ("attention", [T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(boolean, 5, 5)],
     {"causal": True}, ValueError),
    ("attention", [T(f32, 2, 5, 8), T(f32, 2, 5, 8), T(f32, 2, 5, 8)], {}, ValueError),
    ("attention", [T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8)], {"chunk": 4}, ValueError),
    ("attention", [T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8)], {"causal": True, "chunk": 2.5},
     TypeError),
    ("attention", [T(f16, 1, 2, 5, 8), T(f32, 1, 2, 5, 8), T(f32, 1, 2, 5, 8)], {}, TypeError),
    ("reshape", [T(f32, 2, 3)], {"shape": (7,)}, ValueError),
    ("reshape", [T(f32, S, 4)], {"shape": (S, 8)}, ValueError),
    ("reshape", [T(f32, 2, 3)], {"shape": (-1,)}, ValueError),
    ("expand", [T(f32, 3, 2)], {"shape": (3, 4)}, ValueError),
    ("expand", [T(f32, 3, 2)], {"shape": (2,)}, ValueError),
    ("permute", [T(f32, 3, 2)], {"dims": (0, 0)}, ValueError),
    ("permute", [T(f32, 3, 2, 1)], {"dims": (0, 1)}, ValueError),
    ("transpose", [T(f32, 3, 2)], {"dim0": 0, "dim1": 2}, ValueError),
    ("unsqueeze", [T(f32, 3, 2)], {"dim": 4}, ValueError),
    ("squeeze", [T(f32, 3, 2)], {"dims": (0,)}, ValueError),
    ("squeeze", [T(f32, S, 1)], {"dims": (0,)}, ValueError),
    ("slice", [T(f32, 3, 2)], {"dim": 0, "start": 0, "end": 4}, ValueError),
    ("slice", [T(f32, 3, 2)], {"dim": 0, "start": 0, "end": 2, "step": 0}, ValueError),
    ("slice", [T(f32, S, 2)], {"dim": 0, "start": 0, "end": S + 1}, ValueError),
    ("select", [T(f32, 3, 2)], {"dim": 1, "index": 2}, ValueError),
    ("select", [T(f32, S, 2)], {"dim": 0, "index": S}, ValueError),
    ("cat", [T(f32, 3, 2), T(f32, 3)], {"dim": 0}, ValueError),
    ("cat", [T(f32, 3, 2), T(f32, 3, 4)], {"dim": 0}, ValueError),
    ("cat", [], {"dim": 0}, ValueError),
    ("split", [T(f32, 7, 2)], {"dim": 0, "sizes": (3, 3)}, ValueError),
    ("constant", [], {"value": "1", "dtype": f32}, TypeError),
    ("constant", [], {"value": 0.5, "dtype": i64}, TypeError),
    ("constant", [], {"value": 1, "dtype": boolean}, TypeError),
    ("full", [], {"shape": (-1, 2), "value": 0, "dtype": f32}, ValueError),
    ("arange", [], {"end": 5, "step": 0}, ValueError),
    ("arange", [], {"start": 5, "end": 0}, ValueError),
    ("embedding", [T(f32, 10, 4), T(f32, 3)], {}, TypeError),
    ("embedding", [T(f32, 10, 4, 2), T(i64, 3)], {}, ValueError),
    ("index", [T(f32, 5, 6), T(i64, 3), T(i64, 3)], {"dims": (1, 0)}, ValueError),
    ("index", [T(f32, 5, 6), T(i64, 3)], {"dims": (0, 1)}, TypeError),
    ("index", [T(f32, 5, 6), T(f32, 3)], {"dims": (0,)}, TypeError),
    ("index", [T(f32, 5, 6), T(i64, 3), T(i64, 4)], {"dims": (0, 1)}, ValueError),
    ("index_put", [T(f32, 5, 6), T(f16, 3, 6), T(i64, 3)], {"dims": (0,)}, TypeError),
    ("index_put", [T(f32, 5, 6), T(f32, 4, 6), T(i64, 3)], {"dims": (0,)}, ValueError),
    ("gather", [T(f32, 5, 6), T(i64, 5)], {"dim": 0}, ValueError),
    ("gather", [T(f32, 5, 6), T(i64, 5, 7)], {"dim": 0}, ValueError),
    ("scatter", [T(f32, 5, 6), T(i64, 2, 6), T(f32, 2, 6)], {"dim": 0, "reduce": "mul"}, ValueError),
    ("scatter", [T(f32, 5, 6), T(i64, 2, 6), T(f16, 2, 6)], {"dim": 0}, TypeError),
    ("index_select", [T(f32, 5, 6), T(i64, 2, 2)], {"dim": 0}, ValueError),
    ("index_copy", [T(f32, 5, 6), T(i64, 2), T(f32, 3, 6)], {"dim": 0}, ValueError),
    ("index_copy", [T(f32, 5, 6), T(i32, 2), T(f32, 2, 6)], {"dim": 0}, TypeError),
    ("topk", [T(f32, 5, 6)], {"k": 7}, ValueError),
    ("topk", [T(f32, 5, S)], {"k": S + 1}, ValueError),
    ("sort", [T(f32)], {}, ValueError),
    ("histc", [T(boolean, 5)], {"bins": 4, "min": 0, "max": 3}, TypeError),
    ("histc", [T(f32, 5)], {"bins": 0, "min": 0, "max": 3}, ValueError),
    ("histc", [T(f32, 5)], {"bins": 4, "min": 3, "max": 0}, ValueError),
]


@pytest.mark.parametrize("op,types,attrs,exc", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_inputs_raise_naming_the_op(op: str, types: list[TensorType], attrs: dict[str, Any],
                                        exc: type[Exception]) -> None:
    g = Graph("bad")
    ins = [g.add_input(f"x{i}", t) for i, t in enumerate(types)]
    with pytest.raises(exc, match=rf"\b{op}\b"):
        g.create_node(op, ins, attrs)


def test_every_op_has_a_bad_input_case() -> None:
    lacking = {s.op for s in SAMPLES} - {b[0] for b in BAD}
    # ops whose only failure modes are shared with a tested sibling (same type rule from one table row)
    shared = set(UNARY) | set(BINARY) - {"add", "mul", "sub", "bitwise_and"} | {"amin"}
    assert lacking <= shared, f"no bad-input case: {sorted(lacking - shared)}"


# ---------------------------------------------------------------------------------------------
# costs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", SAMPLES, ids=_ids(SAMPLES))
def test_costs_are_sympy_and_sensible(sample: Sample) -> None:
    g, node = build(sample)
    opdef = get_op(sample.op)
    flops, nbytes = opdef.cost([v.type for v in node.inputs], [r.type for r in node.results], node.attrs)
    assert isinstance(flops, sympy.Expr) and isinstance(nbytes, sympy.Expr)
    subs = {k: sympy.Integer(v) for k, v in sample.sizes.items()}
    f, b = flops.xreplace(subs), nbytes.xreplace(subs)
    assert f.is_number and b.is_number, f"{sample}: cost not concrete at the sizes: {f}, {b}"
    out_elems = sum(int(r.type.numel().xreplace(subs)) for r in node.results)
    if opdef.kind in VIEW_KINDS:
        assert f == 0 and b == 0, f"{sample}: a view must cost nothing, got {f} FLOPs, {b} bytes"
    elif out_elems > 0:
        assert b > 0, f"{sample}: {b} bytes"
        if opdef.kind in COMPUTE_KINDS:
            assert f > 0, f"{sample}: {f} FLOPs"


def test_linear_flops_are_2mnk_plus_bias() -> None:
    x, w, bias = T(f32, B, S, 64), T(f32, 96, 64), T(f32, 96)
    out = [T(f32, B, S, 96)]
    flops, nbytes = get_op("linear").cost([x, w], out, {})
    assert sympy.simplify(flops - 2 * B * S * 96 * 64) == 0
    flops_b, _ = get_op("linear").cost([x, w, bias], out, {})
    assert sympy.simplify(flops_b - (2 * B * S * 96 * 64 + B * S * 96)) == 0
    assert sympy.simplify(nbytes - 4 * (B * S * 64 + 96 * 64 + B * S * 96)) == 0


def test_attention_cost_reads_qkv_once_and_halves_causal_square() -> None:
    q, kv = T(f16, B, 32, S, 128), T(f16, B, 8, S, 128)
    out = [T(f16, B, 32, S, 128)]
    full, nbytes = get_op("attention").cost([q, kv, kv], out, {"causal": False, "scale": None})
    half, _ = get_op("attention").cost([q, kv, kv], out, {"causal": True, "scale": None})
    assert sympy.simplify(full - 4 * B * 32 * S * S * 128) == 0
    assert sympy.simplify(full - 2 * half) == 0
    # k and v are read at their 8 heads, not expanded to 32
    assert sympy.simplify(nbytes - 2 * (2 * B * 32 * S * 128 + 2 * B * 8 * S * 128)) == 0


def test_gathers_read_only_the_gathered_rows() -> None:
    table, ids = T(bf16, 32000, 4096), T(i64, B, S)
    out = [T(bf16, B, S, 4096)]
    _, nbytes = get_op("embedding").cost([table, ids], out, {})
    assert sympy.simplify(nbytes - (8 * B * S + 2 * 2 * B * S * 4096)) == 0  # no 32000 in it
    assert sympy.Integer(32000) not in sympy.preorder_traversal(nbytes)


# ---------------------------------------------------------------------------------------------
# torch_call (excluded from the table: its types come from the capture)
# ---------------------------------------------------------------------------------------------
def _torch_call_graph(target: str, args: Any, kwargs: Any, inputs: list[TensorType],
                      results: list[TensorType]) -> tuple[Graph, Node]:
    g = Graph("opaque")
    ins = [g.add_input(f"x{i}", t) for i, t in enumerate(inputs)]
    node = g.append(g.create_node("torch_call", ins, {"target": target, "args": args, "kwargs": kwargs},
                                  types=results))
    g.set_outputs(node.results)
    return g, node


def test_torch_call_needs_explicit_types() -> None:
    g = Graph("opaque")
    x = g.add_input("x", T(f32, 3))
    with pytest.raises(TypeError, match="torch_call.*explicit result types"):
        g.call("torch_call", x, target="aten::erfinv.default", args=("%0",))
    assert get_op("torch_call").extra["infer_from_capture"] is True


def test_torch_call_reference_fills_the_template() -> None:
    a, b = torch.randn(3, 4), torch.randn(4)
    g, node = _torch_call_graph("aten::add.Tensor", ("%0", "%1"), (("alpha", 2),), [T(f32, 3, 4), T(f32, 4)],
                                [T(f32, 3, 4)])
    verify(g)  # the verifier trusts the captured types
    assert structurally_equal(g, parse(print_graph(g)))
    ref = get_op("torch_call").reference
    torch.testing.assert_close(ref(a, b, **node.attrs), a + 2 * b, rtol=1e-6, atol=1e-6)
    # nested templates, a packet without overload, several results
    cat = ref(a, a, target="aten::cat.default", args=(("%1", "%0"), 1), kwargs=())
    assert torch.equal(cat, torch.hstack([a, a]))
    assert torch.equal(ref(a, target="aten::mul", args=("%0", 3), kwargs=()), a * 3)
    values, indices = ref(a, target="aten::topk.default", args=("%0", 2), kwargs=())
    assert torch.equal(values, a.sort(-1, descending=True).values[:, :2]) and indices.dtype == i64


@pytest.mark.parametrize("target", ["aten::no_such_op.default", "add", "nosuchns::x.default"])
def test_torch_call_bad_target_names_the_op(target: str) -> None:
    with pytest.raises(ValueError, match="torch_call"):
        get_op("torch_call").reference(torch.ones(2), target=target, args=("%0",), kwargs=())


def test_torch_call_slot_past_inputs() -> None:
    with pytest.raises(ValueError, match="torch_call.*%1"):
        get_op("torch_call").reference(torch.ones(2), target="aten::add.Tensor", args=("%0", "%1"), kwargs=())
