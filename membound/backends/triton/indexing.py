"""Index arithmetic for generated kernels: views as index maps, broadcasting, and sympy -> source text.

A fused kernel computes every value at an *index*: a tuple of sympy expressions, one per dim of the
value's shape, over the kernel's index variables (``i0``, ``r0``, ``cols``...) and the graph's size
symbols (``B``, ``S``). A view never moves data: it maps the index its consumer asks for to an index
of its input, e.g. ``transpose(x) {dim0=1, dim1=2}`` at ``(b, h, s, d)`` reads ``x`` at ``(b, s, h, d)``
and ``reshape(x: [B, S, 64]) {shape=[B, S, 4, 16]}`` at ``(b, s, h, d)`` reads ``x`` at ``(b, s, 16*h + d)``.
"""

from __future__ import annotations

from typing import Sequence

import sympy

from membound.ir.graph import Node, Value
from membound.ir.ops import ops_with
from membound.ir.types import dims_equal

Index = tuple[sympy.Expr, ...]
ZERO = sympy.Integer(0)


def index_var(name: str) -> sympy.Symbol:
    """A kernel index variable: a non-negative integer (so sympy may simplify ``Mod``/``floor`` a little)."""
    return sympy.Symbol(name, integer=True, nonnegative=True)


def is_one(d: sympy.Expr) -> bool:
    return d == 1


def contiguous_strides(shape: Sequence[sympy.Expr]) -> tuple[sympy.Expr, ...]:
    """Row-major strides of ``shape`` (size-1 dims get whatever; they are always indexed at 0)."""
    strides: list[sympy.Expr] = []
    acc: sympy.Expr = sympy.Integer(1)
    for d in reversed(shape):
        strides.append(acc)
        acc = acc * d
    return tuple(reversed(strides))


def linear_offset(index: Index, strides: Sequence[sympy.Expr], shape: Sequence[sympy.Expr]) -> sympy.Expr:
    """``sum(index[d] * strides[d])`` skipping dims of static size 1 (their index is 0)."""
    total: sympy.Expr = ZERO
    for i, s, d in zip(index, strides, shape):
        if not is_one(d):
            total += i * s
    return total


def broadcast_index(in_shape: Sequence[sympy.Expr], out_shape: Sequence[sympy.Expr], index: Index) -> Index:
    """The index of an operand of shape ``in_shape`` broadcast to ``out_shape`` (trailing dims align)."""
    lead = len(out_shape) - len(in_shape)
    return tuple(ZERO if is_one(d) else index[lead + k] for k, d in enumerate(in_shape))


def view_input_index(node: Node, result: Value, index: Index) -> Index:
    """Map ``index`` of a view's ``result`` to the index of the view's input."""
    op, a = node.op, node.attrs
    src = node.inputs[0].shape
    rank = len(src)
    if op == "reshape":
        return reshape_index(src, result.shape, index)
    if op == "permute":
        dims = [d % rank for d in a["dims"]]
        out: list[sympy.Expr] = [ZERO] * rank
        for i, d in enumerate(dims):
            out[d] = index[i]
        return tuple(out)
    if op == "transpose":
        d0, d1 = a["dim0"] % rank, a["dim1"] % rank
        out = list(index)
        out[d0], out[d1] = out[d1], out[d0]
        return tuple(out)
    if op == "expand":
        return broadcast_index(src, result.shape, index)
    if op == "unsqueeze":
        at = a["dim"] % (rank + 1)
        return tuple(index[:at]) + tuple(index[at + 1:])
    if op == "squeeze":
        dims = {d % rank for d in a["dims"]} if rank else set()
        it = iter(index)
        return tuple(ZERO if k in dims else next(it) for k in range(rank))
    if op == "slice":
        d = a["dim"] % rank
        out = list(index)
        out[d] = sympy.sympify(a["start"]) + out[d] * int(a["step"])
        return tuple(out)
    if op == "select":
        d = a["dim"] % rank
        return tuple(index[:d]) + (sympy.sympify(a["index"]),) + tuple(index[d:])
    if op == "split":
        d = a["dim"] % rank
        start: sympy.Expr = sum((sympy.sympify(s) for s in a["sizes"][:result.index]), ZERO)
        out = list(index)
        out[d] = start + out[d]
        return tuple(out)
    raise ValueError(f"{op}: a view op without an index map here; add its case to view_input_index "
                     f"(the views: {sorted(ops_with('view'))})")


def reshape_index(src: Sequence[sympy.Expr], dst: Sequence[sympy.Expr], index: Index) -> Index:
    """Index of ``x: src`` read by ``reshape(x) {shape=dst}`` at ``index``.

    Size-1 dims are dropped, then the remaining dims are split into the shortest groups whose sizes
    multiply to the same number on both sides (``[B, S, 64] -> [B, S, 4, 16]`` gives groups ``B|B``,
    ``S|S``, ``64|4,16``): each group linearises its destination dims and unflattens them into its
    source dims. When groups cannot be proven (symbolic sizes that do not divide), everything is one group.
    """
    src_dims = [k for k, d in enumerate(src) if not is_one(d)]
    dst_dims = [k for k, d in enumerate(dst) if not is_one(d)]
    groups = _reshape_groups([src[k] for k in src_dims], [dst[k] for k in dst_dims])
    if groups is None:
        groups = [(list(range(len(src_dims))), list(range(len(dst_dims))))]
    out: list[sympy.Expr] = [ZERO] * len(src)
    for gs, gd in groups:
        sizes_d = [dst[dst_dims[k]] for k in gd]
        linear: sympy.Expr = ZERO
        for k, st in zip(gd, contiguous_strides(sizes_d)):
            linear += index[dst_dims[k]] * st
        sizes_s = [src[src_dims[k]] for k in gs]
        strides_s = contiguous_strides(sizes_s)
        for n, (k, st) in enumerate(zip(gs, strides_s)):
            e = linear if st == 1 else sympy.floor(linear / st)
            if n > 0:  # the leading dim of a group needs no wrap-around
                e = sympy.Mod(e, sizes_s[n])
            out[src_dims[k]] = e
    return tuple(out)


def _reshape_groups(src: list[sympy.Expr], dst: list[sympy.Expr]) -> list[tuple[list[int], list[int]]] | None:
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(dst):
        gs, gd = [i], [j]
        ps, pd = src[i], dst[j]
        i, j = i + 1, j + 1
        while not dims_equal(ps, pd):
            ratio = sympy.simplify(pd / ps)
            num, den = sympy.fraction(ratio)
            if den == 1 and i < len(src):  # the source side is the smaller: take one more source dim
                gs.append(i)
                ps, i = ps * src[i], i + 1
            elif num == 1 and j < len(dst):
                gd.append(j)
                pd, j = pd * dst[j], j + 1
            else:
                return None
        groups.append((gs, gd))
    if i != len(src) or j != len(dst):
        return None
    return groups


# ---------------------------------------------------------------------------------------------
# printing
# ---------------------------------------------------------------------------------------------
def expr_code(e: sympy.Expr, *, kernel: bool = True) -> str:
    """Source text of an integer expression: ``//`` and ``%`` for floor and Mod; ``tl.maximum`` (kernel)
    or ``max`` (launcher) for Max. Operands are non-negative, where Triton's truncating ``//`` and
    Python's flooring ``//`` agree."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return str(int(e))
    if e.is_Symbol:
        return e.name
    if isinstance(e, sympy.Add):
        terms = sorted(e.args, key=_term_order)
        out = expr_code(terms[0], kernel=kernel)
        for t in terms[1:]:
            coeff, rest = t.as_coeff_Mul()
            if coeff.is_negative:
                out += " - " + _term(-t, kernel)
            else:
                out += " + " + _term(t, kernel)
        return out
    if isinstance(e, sympy.Mul):
        coeff, rest = e.as_coeff_Mul()
        if coeff == -1:
            return "-" + _factor(rest, kernel)
        if not coeff.is_Integer:
            num, den = sympy.fraction(e)
            return f"{_factor(num, kernel)} // {_factor(den, kernel)}"
        return " * ".join(_factor(f, kernel) for f in sorted(e.args, key=_factor_order))
    if isinstance(e, sympy.Pow) and e.exp.is_Integer and e.exp > 0:
        return " * ".join([_factor(e.base, kernel)] * int(e.exp))
    if isinstance(e, sympy.floor):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return f"{_factor(num, kernel)} // {_factor(den, kernel)}"
    if isinstance(e, sympy.ceiling):
        num, den = sympy.fraction(sympy.together(e.args[0]))
        return f"({expr_code(num, kernel=kernel)} + {_factor(den, kernel)} - 1) // {_factor(den, kernel)}"
    if isinstance(e, sympy.Mod):
        return f"{_factor(e.args[0], kernel)} % {_factor(e.args[1], kernel)}"
    if isinstance(e, (sympy.Max, sympy.Min)):
        fn = ("tl.maximum" if isinstance(e, sympy.Max) else "tl.minimum") if kernel else (
            "max" if isinstance(e, sympy.Max) else "min")
        out = expr_code(e.args[0], kernel=kernel)
        for a in e.args[1:]:
            out = f"{fn}({out}, {expr_code(a, kernel=kernel)})"
        return out
    raise ValueError(f"cannot print the index expression {e} (a {type(e).__name__}) as code")


def _term(e: sympy.Expr, kernel: bool) -> str:
    """A term of a sum: products need no parentheses there."""
    return expr_code(e, kernel=kernel) if isinstance(e, sympy.Mul) else _factor(e, kernel)


def _factor(e: sympy.Expr, kernel: bool) -> str:
    text = expr_code(e, kernel=kernel)
    if e.is_Atom or isinstance(e, (sympy.Max, sympy.Min)):
        return text
    return f"({text})"


def _term_order(t: sympy.Expr) -> tuple[int, str]:
    # constants last, then by text: stable, readable output ("16*h + d + 8")
    return (1 if t.is_Number else 0, str(t))


def _factor_order(f: sympy.Expr) -> tuple[int, str]:
    return (0 if f.is_Number else 1, str(f))
