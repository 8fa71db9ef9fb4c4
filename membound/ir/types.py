"""IR types: dtypes, symbolic dims and tensor types.

A dim is a sympy expression: an ``int`` literal (``sympy.Integer``), a named symbol (``B`` batch,
``S`` sequence, ``T`` cache length, ``U0``... data-dependent sizes) or an expression of them
(``S*32``, ``S - 1``). Symbols are positive integers.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence, Union

import sympy
import torch

DimLike = Union[int, sympy.Expr, str]

# ---------------------------------------------------------------------------------------------
# dtypes: the short printed name <-> torch dtype
# ---------------------------------------------------------------------------------------------
_DTYPE_NAMES: dict[str, torch.dtype] = {
    "f64": torch.float64,
    "f32": torch.float32,
    "f16": torch.float16,
    "bf16": torch.bfloat16,
    "f8e4m3": torch.float8_e4m3fn,
    "f8e5m2": torch.float8_e5m2,
    "i64": torch.int64,
    "i32": torch.int32,
    "i16": torch.int16,
    "i8": torch.int8,
    "u8": torch.uint8,
    "bool": torch.bool,
}
_TORCH_TO_NAME: dict[torch.dtype, str] = {v: k for k, v in _DTYPE_NAMES.items()}


def dtype_name(dtype: torch.dtype) -> str:
    """Short IR name of a torch dtype (``torch.bfloat16`` -> ``"bf16"``)."""
    try:
        return _TORCH_TO_NAME[dtype]
    except KeyError:
        raise TypeError(f"membound IR has no dtype for {dtype}; supported: {sorted(_DTYPE_NAMES)}") from None


def parse_dtype(name: str) -> torch.dtype:
    """torch dtype from its IR name (``"bf16"`` -> ``torch.bfloat16``)."""
    try:
        return _DTYPE_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; expected one of {sorted(_DTYPE_NAMES)}") from None


def is_dtype_name(name: str) -> bool:
    return name in _DTYPE_NAMES


def itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


# ---------------------------------------------------------------------------------------------
# symbolic dims
# ---------------------------------------------------------------------------------------------
_SYMBOLS: dict[str, sympy.Symbol] = {}


def sym(name: str) -> sympy.Symbol:
    """The one positive-integer symbol of this name (``sym("B")``)."""
    s = _SYMBOLS.get(name)
    if s is None:
        if is_dtype_name(name):
            raise ValueError(f"{name!r} is a dtype name and cannot name a dim")
        s = sympy.Symbol(name, integer=True, positive=True)
        _SYMBOLS[name] = s
    return s


B = sym("B")
S = sym("S")
T = sym("T")


def as_dim(d: DimLike) -> sympy.Expr:
    """Normalise an int, string or sympy expression to a dim expression over our symbols."""
    if isinstance(d, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(d, int):
        return sympy.Integer(d)
    if isinstance(d, str):
        return parse_dim(d)
    if isinstance(d, sympy.Expr):
        # re-home foreign symbols (e.g. sympy.Symbol("B") without assumptions) onto ours
        repl = {s: sym(s.name) for s in d.free_symbols if isinstance(s, sympy.Symbol) and s is not _SYMBOLS.get(s.name)}
        return d.xreplace(repl) if repl else d
    if hasattr(d, "__index__"):
        return sympy.Integer(int(d))
    raise TypeError(f"cannot use {d!r} ({type(d).__name__}) as a dim")


def parse_dim(text: str) -> sympy.Expr:
    """Parse a printed dim (``"S*32"``, ``"Max(1, S - 1)"``) into an expression over our symbols."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return sympy.Integer(int(text))
    if text.isidentifier() and text.isascii() and not text.startswith("_") and text not in _SYMPY_FUNCS:
        return sym(text)  # the common case, without sympify's tokenizer
    return _parse_dim_expr(text)


@functools.lru_cache(maxsize=4096)
def _parse_dim_expr(text: str) -> sympy.Expr:
    _check_dim_text(text)
    names = {n: sym(n) for n in _identifiers(text) if n not in _SYMPY_FUNCS}
    try:
        expr = sympy.sympify(text, locals={**names, **_SYMPY_FUNCS})
    except Exception as e:  # sympify reports bad text in many ways (TokenError, SyntaxError, TypeError...)
        raise ValueError(f"cannot parse dim {text!r}: {type(e).__name__}: {e}") from None
    if not isinstance(expr, sympy.Expr):
        raise ValueError(f"cannot parse dim {text!r}: not an expression")
    return as_dim(expr)


MAX_DIM_TEXT = 256  # characters of one printed dim expression
MAX_DIM_NESTING = 8  # parentheses


def _check_dim_text(text: str) -> None:
    """Only the grammar the printer writes reaches sympify (which evaluates text): names (each one a
    size symbol or a function of ``_SYMPY_FUNCS``), integers and ``+ - * / ( ) ,``; no dots or quotes,
    so nothing else of Python is reachable."""
    if len(text) > MAX_DIM_TEXT:
        raise ValueError(f"dim expression longer than {MAX_DIM_TEXT} characters")
    bad = sorted({ch for ch in text if not (ch.isascii() and (ch.isalnum() or ch in "_+-*/(), "))})
    if bad:
        raise ValueError(f"cannot parse dim {text!r}: unexpected character(s) {bad}")
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_DIM_NESTING or depth < 0:
            raise ValueError(f"cannot parse dim {text!r}: parentheses unbalanced or nested deeper than "
                             f"{MAX_DIM_NESTING}")
    for m in re.finditer(r"\*\*", text):  # S**2 is printed; 9**9**9 would take forever to evaluate
        if not re.match(r"\s*\d{1,2}\b(?!\s*\*\*)", text[m.end():]):
            raise ValueError(f"cannot parse dim {text!r}: only small integer powers")
    for name in _identifiers(text):  # every other name becomes a size symbol (no builtins reachable)
        if name.startswith("_"):
            raise ValueError(f"cannot parse dim {text!r}: {name!r} cannot name a size")


_SYMPY_FUNCS = {"Max": sympy.Max, "Min": sympy.Min, "floor": sympy.floor, "ceiling": sympy.ceiling,
                "Mod": sympy.Mod, "FloorDiv": lambda a, b: sympy.floor(a / b)}


def _identifiers(text: str) -> list[str]:
    out, cur = [], ""
    for ch in text + " ":
        if ch.isalnum() or ch == "_":
            cur += ch
        else:
            if cur and not cur[0].isdigit():
                out.append(cur)
            cur = ""
    return out


@functools.lru_cache(maxsize=65536)
def dim_str(d: sympy.Expr) -> str:
    """A dim as text. Cached: sympy's printer is slow, and verification and the printer ask for the
    same few dims (B, S, T, 2048...) hundreds of thousands of times per large model."""
    return str(d)


def is_static(d: sympy.Expr) -> bool:
    return isinstance(d, sympy.Integer) or (isinstance(d, sympy.Expr) and d.is_Integer is True)


def eval_dim(d: sympy.Expr, bindings: dict[sympy.Symbol, int]) -> int:
    """Concrete value of a dim under symbol bindings; raises if a symbol is unbound."""
    if isinstance(d, sympy.Integer):
        return int(d)
    v = d.xreplace({k: sympy.Integer(x) for k, x in bindings.items()})
    if not v.is_Integer:
        v = sympy.simplify(v)
        if not v.is_Integer:
            missing = sorted(s.name for s in d.free_symbols if s not in bindings)
            raise ValueError(f"dim {d} is not concrete; unbound symbols: {missing}")
    return int(v)


def concretize(value: Any, bindings: dict[sympy.Symbol, int]) -> Any:
    """An attribute value with every dim expression evaluated under ``bindings`` (tuples and dicts too)."""
    if isinstance(value, sympy.Expr):
        return eval_dim(value, bindings)
    if isinstance(value, tuple):
        return tuple(concretize(x, bindings) for x in value)
    if isinstance(value, dict):
        return {k: concretize(x, bindings) for k, x in value.items()}
    return value


def dims_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
    if a == b:
        return True
    return sympy.simplify(a - b) == 0


def numel(shape: Sequence[sympy.Expr]) -> sympy.Expr:
    """The number of elements of ``shape``: the product of its dims (1 for a 0-d shape)."""
    n: sympy.Expr = sympy.Integer(1)
    for d in shape:
        n = n * d
    return n


# ---------------------------------------------------------------------------------------------
# tensor type
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorType:
    """``dtype[d0, d1, ...]``; a 0-d tensor (scalar) has an empty shape."""

    dtype: torch.dtype
    shape: tuple[sympy.Expr, ...]

    def __init__(self, dtype: torch.dtype, shape: Iterable[DimLike]) -> None:
        object.__setattr__(self, "dtype", dtype)
        object.__setattr__(self, "shape", tuple(as_dim(d) for d in shape))
        dtype_name(dtype)  # validate

    @property
    def rank(self) -> int:
        return len(self.shape)

    def numel(self) -> sympy.Expr:
        return numel(self.shape)

    def nbytes(self) -> sympy.Expr:
        return self.numel() * itemsize(self.dtype)

    @property
    def is_static(self) -> bool:
        return all(is_static(d) for d in self.shape)

    def free_symbols(self) -> set[sympy.Symbol]:
        out: set[sympy.Symbol] = set()
        for d in self.shape:
            out |= d.free_symbols
        return out

    def with_shape(self, shape: Sequence[DimLike]) -> "TensorType":
        return TensorType(self.dtype, shape)

    def with_dtype(self, dtype: torch.dtype) -> "TensorType":
        return TensorType(dtype, self.shape)

    def concrete_shape(self, bindings: dict[sympy.Symbol, int]) -> tuple[int, ...]:
        return tuple(eval_dim(d, bindings) for d in self.shape)

    def equivalent(self, other: "TensorType") -> bool:
        return (self.dtype == other.dtype and self.rank == other.rank
                and all(dims_equal(a, b) for a, b in zip(self.shape, other.shape)))

    def __str__(self) -> str:
        return f"{dtype_name(self.dtype)}[{', '.join(dim_str(d) for d in self.shape)}]"

    __repr__ = __str__


def normalize_dim_index(dim: int, rank: int) -> int:
    """Python-style negative dim -> non-negative index, with a clear error when out of range."""
    if rank == 0 and dim in (0, -1):
        return 0
    if not -rank <= dim < rank:
        raise IndexError(f"dim {dim} out of range for a rank-{rank} tensor")
    return dim % rank


def broadcast_shapes(*shapes: Sequence[sympy.Expr]) -> tuple[sympy.Expr, ...]:
    """numpy/torch broadcasting over symbolic dims."""
    rank = max((len(s) for s in shapes), default=0)
    out: list[sympy.Expr] = []
    for i in range(rank):
        cur: sympy.Expr = sympy.Integer(1)
        for s in shapes:
            j = i - (rank - len(s))
            if j < 0:
                continue
            d = s[j]
            if d == 1:
                continue
            if cur == 1:
                cur = d
            elif not dims_equal(cur, d):
                raise ValueError(f"shapes {[list(map(str, s)) for s in shapes]} do not broadcast at dim {i}: "
                                 f"{cur} vs {d}")
        out.append(cur)
    return tuple(out)


def promote(*dtypes_and_ranks: tuple[torch.dtype, int]) -> torch.dtype:
    """torch's type promotion, where 0-d operands are 'weaker' than dimensioned ones."""
    metas = [torch.empty((1,) * r if r else (), dtype=d, device="meta") for d, r in dtypes_and_ranks]
    out = metas[0].dtype
    if len(metas) == 1:
        return out
    res = metas[0]
    for m in metas[1:]:
        dt = torch.result_type(res, m)
        res = torch.empty((1,) * max(res.dim(), m.dim()), dtype=dt, device="meta")
    return res.dtype
