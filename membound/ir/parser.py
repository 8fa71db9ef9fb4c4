"""Parse the IR text form (see ``printer.py``) back into a :class:`Graph`.

``parse(print_graph(g))`` is structurally equal to ``g`` (``structurally_equal``). Parameter tensors
are not part of the text: pass ``tensors={name: tensor}`` to bind them. ``//`` and ``#`` start comments;
a ``//`` comment ending a node's line (its source, as dumps print it) is kept in ``node.meta["loc"]``.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import torch

from membound.ir.graph import Graph, IRError, Value
from membound.ir.types import TensorType, is_dtype_name, parse_dim, parse_dtype

_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


class ParseError(IRError):
    pass


class _Cursor:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def error(self, msg: str) -> ParseError:
        line = self.text.count("\n", 0, self.pos) + 1
        start = self.text.rfind("\n", 0, self.pos) + 1
        end = self.text.find("\n", self.pos)
        src = self.text[start:end if end >= 0 else None]
        return ParseError(f"line {line}: {msg}\n  {src}\n  {' ' * (self.pos - start)}^")

    def skip_ws(self) -> None:
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c.isspace():
                self.pos += 1
            elif self.text.startswith("//", self.pos) or c == "#":
                nl = self.text.find("\n", self.pos)
                self.pos = len(self.text) if nl < 0 else nl + 1
            else:
                break

    def line_comment(self) -> Optional[str]:
        """The text of a ``// comment`` that ends the current line (spaces before it allowed), consumed;
        None (nothing consumed) when the line goes on with something else."""
        pos = self.pos
        while pos < len(self.text) and self.text[pos] in " \t":
            pos += 1
        if not self.text.startswith("//", pos):
            return None
        nl = self.text.find("\n", pos)
        end = len(self.text) if nl < 0 else nl
        self.pos = end
        return self.text[pos + 2:end].strip()

    def peek(self, s: str) -> bool:
        self.skip_ws()
        return self.text.startswith(s, self.pos)

    def accept(self, s: str) -> bool:
        if self.peek(s):
            self.pos += len(s)
            return True
        return False

    def expect(self, s: str) -> None:
        if not self.accept(s):
            raise self.error(f"expected {s!r}")

    def name(self) -> str:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] in _NAME_CHARS:
            self.pos += 1
        if start == self.pos:
            raise self.error("expected a name")
        return self.text[start:self.pos]

    def raw_until(self, stops: str) -> str:
        """Raw text up to a stop character at bracket depth 0 (for dim expressions and scalars)."""
        self.skip_ws()
        start, depth = self.pos, 0
        while self.pos < len(self.text):
            c = self.text[self.pos]
            if c == "(":
                depth += 1
            elif c == ")":
                if depth == 0:
                    break
                depth -= 1
            elif depth == 0 and c in stops:
                break
            self.pos += 1
        raw = self.text[start:self.pos].strip()
        if not raw:
            raise self.error("expected a value")
        return raw


def _type(c: _Cursor) -> TensorType:
    dt = c.name()
    if not is_dtype_name(dt):
        raise c.error(f"unknown dtype {dt!r}")
    c.expect("[")
    dims = []
    if not c.accept("]"):
        while True:
            raw = c.raw_until(",]")
            try:
                dims.append(parse_dim(raw))
            except ValueError as e:
                raise c.error(str(e)) from None
            if c.accept("]"):
                break
            c.expect(",")
    return TensorType(parse_dtype(dt), dims)


def _scalar(raw: str) -> Any:
    if raw == "none":
        return None
    if raw in ("true", "false"):
        return raw == "true"
    if raw in ("nan", "inf", "-inf"):
        return float(raw) if raw != "nan" else math.nan
    try:
        return int(raw)
    except ValueError:
        pass
    if any(ch.isdigit() for ch in raw) and all(ch in "0123456789.eE+-" for ch in raw):
        return float(raw)
    if is_dtype_name(raw):
        return parse_dtype(raw)
    return parse_dim(raw)


MAX_ATTR_DEPTH = 16  # attribute lists nest this deep at most (printed graphs use 2)


def _attr(c: _Cursor, depth: int = 0) -> Any:
    c.skip_ws()
    if c.accept("["):
        if depth >= MAX_ATTR_DEPTH:
            raise c.error(f"attribute lists nested deeper than {MAX_ATTR_DEPTH}")
        items = []
        if not c.accept("]"):
            while True:
                items.append(_attr(c, depth + 1))
                if c.accept("]"):
                    break
                c.expect(",")
        return tuple(items)
    if c.peek('"'):
        c.pos += 1
        out = []
        while c.pos < len(c.text) and c.text[c.pos] != '"':
            if c.text[c.pos] == "\\":
                c.pos += 1
            out.append(c.text[c.pos])
            c.pos += 1
        c.expect('"')
        return "".join(out)
    raw = c.raw_until(",]}")
    try:
        return _scalar(raw)
    except ValueError as e:
        raise c.error(f"bad attribute value {raw!r}: {e}") from None


def _decls(c: _Cursor) -> list[tuple[str, TensorType]]:
    c.expect("(")
    out = []
    if c.accept(")"):
        return out
    while True:
        c.expect("%")
        name = c.name()
        c.expect(":")
        out.append((name, _type(c)))
        if c.accept(")"):
            return out
        c.expect(",")


def parse(text: str, tensors: Optional[dict[str, torch.Tensor]] = None) -> Graph:
    """Parse one graph. Malformed text of any kind raises ``ParseError`` (unknown ops, undefined values,
    malformed types and attributes...); the result is not verified (call ``verify``)."""
    if not isinstance(text, str):
        raise ParseError(f"parse() takes the IR text as a str, got {type(text).__name__}")
    try:
        return _parse(text, tensors)
    except ParseError:
        raise
    except (RecursionError, MemoryError, ArithmeticError, LookupError, TypeError, ValueError, AttributeError,
            IRError) as e:  # a corner the checks above missed: still the text's fault, said as such
        raise ParseError(f"malformed IR text ({type(e).__name__}: {str(e)[:200]})") from e


def _parse(text: str, tensors: Optional[dict[str, torch.Tensor]]) -> Graph:
    from membound.ir.ops import has_op

    c = _Cursor(text)
    c.expect("graph")
    c.expect("@")
    g = Graph(c.name())
    env: dict[str, Value] = {}
    for name, t in _decls(c):
        if name in env:
            raise c.error(f"%{name} is declared twice")
        env[name] = g.add_input(name, t)
    for section, add in (("params", g.add_param), ("state", g.add_state)):
        if c.peek(section):
            c.expect(section)
            for name, t in _decls(c):
                if name in env:
                    raise c.error(f"%{name} is declared twice")
                env[name] = add(name, t, (tensors or {}).get(name))
    c.expect("{")

    def use(name: str) -> Value:
        try:
            return env[name]
        except KeyError:
            raise c.error(f"%{name} is used before it is defined") from None

    while not c.peek("return"):
        names = []
        while True:
            c.expect("%")
            names.append(c.name())
            if not c.accept(","):
                break
        c.expect("=")
        op = c.name()
        if not has_op(op):
            raise c.error(f"unknown op {op!r}")
        c.expect("(")
        args: list[Value] = []
        if not c.accept(")"):
            while True:
                c.expect("%")
                args.append(use(c.name()))
                if c.accept(")"):
                    break
                c.expect(",")
        attrs: dict[str, Any] = {}
        if c.accept("{"):
            if not c.accept("}"):
                while True:
                    key = c.name()
                    c.expect("=")
                    attrs[key] = _attr(c)
                    if c.accept("}"):
                        break
                    c.expect(",")
        c.expect(":")
        types = [_type(c)]
        loc = c.line_comment()
        while loc is None and c.accept(","):
            types.append(_type(c))
            loc = c.line_comment()
        if len(types) != len(names):
            raise c.error(f"{op}: {len(names)} results but {len(types)} types")
        for n in names:
            if n in env:
                raise c.error(f"%{n} is defined twice")
        try:
            node = g.create_node(op, args, attrs, types, names)
        except (TypeError, ValueError, IRError) as e:
            raise c.error(f"{op}: {e}") from None
        if loc:  # where the node came from, as a dump printed it: kept so it prints again
            node.meta["loc"] = loc
        g.append(node)
        for r in node.results:
            env[r.name] = r
    c.expect("return")
    outs: list[Value] = []
    if not c.peek("}"):
        while True:
            c.expect("%")
            outs.append(use(c.name()))
            if not c.accept(","):
                break
    c.expect("}")
    c.skip_ws()
    if c.pos != len(c.text):
        raise c.error("unexpected text after the graph")
    g.set_outputs(outs)
    return g
