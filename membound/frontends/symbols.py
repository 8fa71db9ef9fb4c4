"""Dim symbols: torch's shape-environment symbols (``s72``, ``u0``) renamed to membound's (``B``, ``S``...).

A captured graph's shapes are torch's sympy expressions with torch's symbols substituted: dim 0 of
the first tensor input becomes ``B``, dim 1 ``S``, every other input dim symbol ``D0, D1, ...`` and
data-dependent (unbacked) sizes ``U0, U1, ...``. torch's own sympy functions (``FloorDiv``,
``ModularIndexing``, its ``Max``) are rewritten into plain sympy so that the IR printer and parser
round-trip them.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import sympy
import torch

from membound.ir.types import TensorType, sym


class SymbolTable:
    """Maps torch's symbols to ours and converts SymInts, sizes and fake tensors to IR dims/types."""

    def __init__(self, shape_env: Any = None) -> None:
        self.shape_env = shape_env
        self.to_ours: dict[sympy.Symbol, sympy.Symbol] = {}
        self._next = {"D": 0, "U": 0}
        self._used: set[str] = set()

    # ---- naming -------------------------------------------------------------------------------
    def name_inputs(self, shapes: Sequence[Sequence[Any]]) -> None:
        """Name the symbols of the graph inputs' dims (in input order): B and S first, then D0..."""
        for i, shape in enumerate(shapes):
            for j, d in enumerate(shape):
                e = self._raw(d)
                if isinstance(e, sympy.Symbol) and e not in self.to_ours:
                    preferred = {(0, 0): "B", (0, 1): "S"}.get((i, j))
                    self._assign(e, preferred)
                for s in sorted(e.free_symbols, key=lambda s: s.name):
                    if s not in self.to_ours:
                        self._assign(s, None)

    def _assign(self, s: sympy.Symbol, preferred: Optional[str]) -> sympy.Symbol:
        if preferred is not None and preferred not in self._used:
            name = preferred
        else:
            prefix = "U" if s.name.startswith("u") else "D"
            while True:
                name = f"{prefix}{self._next[prefix]}"
                self._next[prefix] += 1
                if name not in self._used:
                    break
        self._used.add(name)
        self.to_ours[s] = sym(name)
        return self.to_ours[s]

    # ---- conversion ---------------------------------------------------------------------------
    def _raw(self, d: Any) -> sympy.Expr:
        """torch's expression for an int / SymInt / sympy expr, with the shape env's replacements applied."""
        if isinstance(d, (torch.SymInt, torch.SymBool, torch.SymFloat)):
            e = d.node.expr
        elif isinstance(d, sympy.Basic):
            e = d
        else:
            return sympy.Integer(int(d))
        if self.shape_env is not None and e.free_symbols:
            e = self.shape_env.replace(e)
        return _plain_sympy(e)

    def expr(self, d: Any) -> sympy.Expr:
        """An IR dim expression (over B, S, D0, U0...) for an int, SymInt or torch sympy expression."""
        e = self._raw(d)
        for s in sorted(e.free_symbols, key=lambda s: s.name):
            if s not in self.to_ours:
                self._assign(s, None)
        return e.xreplace(self.to_ours) if e.free_symbols else e

    def tensor_type(self, t: torch.Tensor) -> TensorType:
        return TensorType(t.dtype, [self.expr(d) for d in t.shape])

    def hints(self) -> dict[sympy.Symbol, int]:
        """The example value of each backed symbol (the sizes seen at capture), in our symbols."""
        if self.shape_env is None:
            return {}
        table = getattr(self.shape_env, "backed_var_to_val", None)
        if table is None:
            table = self.shape_env.var_to_val
        out = {}
        for s, v in table.items():
            ours = self.to_ours.get(s)
            if ours is not None and v.is_Integer:
                out[ours] = int(v)
        return out

    def ranges(self, constraints: dict[sympy.Symbol, Any]) -> dict[sympy.Symbol, tuple[int, Optional[int]]]:
        """Inclusive value ranges per our symbol from torch's ``range_constraints``."""
        out: dict[sympy.Symbol, tuple[int, Optional[int]]] = {}
        for s, vr in constraints.items():
            ours = self.to_ours.get(s)
            if ours is None:
                continue
            lo = int(vr.lower) if vr.lower.is_Integer else 0
            hi = int(vr.upper) if vr.upper.is_Integer else None
            out[ours] = (lo, hi)
        return out


_FUNCS: dict[str, Any] = {
    "FloorDiv": lambda a, b: sympy.floor(a / b),
    "CleanDiv": lambda a, b: sympy.floor(a / b),
    "CeilDiv": lambda a, b: sympy.ceiling(a / b),
    "IntTrueDiv": lambda a, b: a / b,
    "ModularIndexing": lambda x, d, m: sympy.Mod(sympy.floor(x / d), m),
    "PythonMod": sympy.Mod,
    "Mod": sympy.Mod,
    "Max": sympy.Max,
    "Min": sympy.Min,
    "PowByNatural": sympy.Pow,
    "CeilToInt": sympy.ceiling,
    "FloorToInt": sympy.floor,
    "TruncToInt": lambda a: sympy.sign(a) * sympy.floor(sympy.Abs(a)),
    "Identity": lambda a: a,
}


def _plain_sympy(e: sympy.Basic) -> sympy.Basic:
    """Rewrite torch's sympy functions (``torch.utils._sympy.functions``) into plain sympy."""
    if not e.args:
        return e
    args = [_plain_sympy(a) for a in e.args]
    fn = _FUNCS.get(type(e).__name__) if type(e).__module__.startswith("torch") else None
    if fn is not None:
        return fn(*args)
    if type(e).__module__.startswith("torch"):
        raise NotImplementedError(f"torch sympy function {type(e).__name__} in {e} has no plain-sympy form")
    return e.func(*args) if any(a is not b for a, b in zip(args, e.args)) else e
