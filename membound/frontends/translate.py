"""Walk an ATen FX graph (from ``torch.export``) in order and build the membound IR graph.

Every ``call_function`` node goes through the one table in :mod:`membound.frontends.aten_table`.
A rule receives the :class:`Translator` (the builder API below) and the node's arguments bound by
name from the op's schema, with FX nodes already replaced by what they became: an IR ``Value`` for
a tensor, a sympy dim for a SymInt, a list of Values for a multi-result op.

After each rule the translator checks the IR result types against the types torch recorded on the
node (dtype exactly, dims symbolically or at the capture's example sizes), so a wrong rule fails at
the op that is wrong, naming it, instead of producing a silently different graph.

In-place ATen ops (``div_``, ``index_put_``) are translated to their functional IR op and the
mutated FX node is re-bound to the new value; the translator refuses (``UnsupportedOpError``) when
the mutated tensor is a graph input or parameter, or is viewed by another live tensor, because value
semantics would then differ from torch's aliasing.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import sympy
import torch
import torch.fx

from membound.frontends.capture import ConstOut, OutLeaf, SymOut, TensorOut
from membound.frontends.errors import CaptureError, UnsupportedOpError
from membound.frontends.symbols import SymbolTable
from membound.ir.graph import Graph, Value
from membound.ir.types import TensorType, dims_equal, eval_dim

Resolved = Any  # Value | sympy.Expr | list[Value] | python constant | None


# ---------------------------------------------------------------------------------------------
# placeholder roles: what each placeholder of the exported graph becomes
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AsInput:
    """A graph input (an activation the caller passes every time)."""

    name: str


@dataclass(frozen=True)
class AsParam:
    """A parameter, buffer or constant tensor, held by reference in ``graph.tensors[name]``."""

    name: str
    tensor: torch.Tensor
    constant: bool = False  # a tensor literal of the model's code (torch.export's CONSTANT_TENSOR), not a weight


@dataclass(frozen=True)
class AsConstant:
    """A value fixed at capture: a Python scalar (or a 0-d tensor standing for one) -> a ``constant``
    node; any other non-tensor leaf is simply unused by the graph."""

    value: Any


Role = Union[AsInput, AsParam, AsConstant]


@dataclass(frozen=True)
class DataScalar:
    """A Python number read out of tensor data (``x.sum().item()``): it has no IR form. Returning it
    or feeding it to another op is a ``CaptureError`` that names where it came from."""

    source: str


# ---------------------------------------------------------------------------------------------
# argument binding
# ---------------------------------------------------------------------------------------------
class Args:
    """A rule's arguments by schema name (``a.self``, ``a.dim``); missing optional ones are None."""

    def __init__(self, items: dict[str, Any]) -> None:
        object.__setattr__(self, "_items", dict(items))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._items[name]
        except KeyError:
            raise AttributeError(f"op has no argument {name!r} (has {sorted(self._items)})") from None

    def get(self, name: str, default: Any = None) -> Any:
        return self._items.get(name, default)

    def in_order(self) -> list[Any]:
        """The arguments in schema order."""
        return list(self._items.values())

    def __repr__(self) -> str:
        return f"Args({self._items})"


def bind_schema(target: Any, args: Sequence[Any], kwargs: dict[str, Any]) -> Args:
    """Positional and keyword arguments of an OpOverload call, by schema name, defaults filled in."""
    out: dict[str, Any] = {}
    for i, sa in enumerate(target._schema.arguments):
        if i < len(args) and not sa.kwarg_only:
            out[sa.name] = args[i]
        elif sa.name in kwargs:
            out[sa.name] = kwargs[sa.name]
        elif sa.has_default_value():
            out[sa.name] = sa.default_value
        else:
            out[sa.name] = None
    return Args(out)


def _mutated_arg(target: Any) -> Optional[str]:
    """Name of the argument an in-place/out op writes (``self`` of ``div_``), if any."""
    for sa in getattr(target, "_schema", None).arguments if hasattr(target, "_schema") else ():
        if sa.alias_info is not None and sa.alias_info.is_write:
            return sa.name
    return None


def _is_view(target: Any) -> bool:
    """A view op: its first argument aliases the result without being written (``view``, ``slice``)."""
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    a = schema.arguments[0].alias_info
    return a is not None and not a.is_write


def _moves_device(src: torch.fx.Node, n: torch.fx.Node) -> bool:
    """``t.to(device)`` onto another device: torch returns a new tensor there, not an alias of ``t``
    (HF's StaticCache moves its CPU length counter to the cache's device, then adds to the copy)."""
    a, b = src.meta.get("val"), n.meta.get("val")
    return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.device != b.device


def op_name(target: Any) -> str:
    """``aten.linear.default`` for an OpOverload, ``operator.getitem`` for a Python function."""
    if isinstance(target, torch._ops.OpOverload):
        return str(target)
    mod = getattr(target, "__module__", None) or ""
    return f"{mod.replace('_operator', 'operator')}.{getattr(target, '__name__', repr(target))}".lstrip(".")


def qualified_target(target: Any) -> str:
    """``aten::linear.default``: the form ``torch_call`` resolves."""
    name = target.name()
    return name if "." in name else f"{name}.{target._overloadname}"


# ---------------------------------------------------------------------------------------------
# source locations
# ---------------------------------------------------------------------------------------------
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)\n\s*(?P<code>[^\n]*)')


def source_line(node: torch.fx.Node) -> str:
    """``modeling_llama.py:270 in forward: attn_output = self.o_proj(attn_output)``: the innermost frame
    of the node's stack trace outside torch and these frontends (the user's line), or ``""``."""
    trace = node.meta.get("stack_trace") or ""
    frames = list(_FRAME.finditer(trace))
    if not frames:
        return ""
    ours = (torch.__file__.rsplit("/", 1)[0], __file__.rsplit("/", 1)[0])  # torch and these frontends
    user = [f for f in frames if not f["file"].startswith(ours)]
    if not user:
        return ""
    f = user[-1]
    return f"{f['file']}:{f['line']} in {f['func']}: {f['code'].strip()}"


def module_path(node: torch.fx.Node) -> str:
    """``model.layers.0.mlp (MixtralSparseMoeBlock)``: the innermost module that ran the node."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path, cls = list(stack.values())[-1]
    path = re.sub(r"^[LG]\[[^\]]*\](\[\d+\])*\.?", "", path)  # Dynamo's L['self'].layers.0 -> layers.0
    cls_name = cls.rsplit(".", 1)[-1] if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
    return f"{path or '<root>'} ({cls_name})"


# ---------------------------------------------------------------------------------------------
# the translator
# ---------------------------------------------------------------------------------------------
Rule = Callable[["Translator", Args], Any]


class Translator:
    """Builds one IR graph from one exported FX graph. Rules use ``emit``, ``tensor``, ``dim``,
    ``out_type(s)``, ``cast`` and ``unsupported``; ``node`` is the FX node being translated."""

    def __init__(self, graph: Graph, symbols: SymbolTable, table: dict[Any, Rule], fallback: Optional[str],
                 default_source: str = "") -> None:
        self.graph = graph
        # where to point when torch recorded no line (export records lines only inside Module.forward)
        self.default_source = default_source
        # inclusive value ranges torch proved for the symbols (e.g. S >= 5 after a guard)
        self.ranges: dict[sympy.Symbol, tuple[int, Optional[int]]] = {}
        self.symbols = symbols
        self.table = table
        self.fallback = fallback
        self.env: dict[torch.fx.Node, Resolved] = {}
        # values fixed at capture: tensor literals of the model's code and what is computed from them alone
        self._known: dict[torch.fx.Node, Any] = {}
        self.node: Optional[torch.fx.Node] = None
        self.guards: list[sympy.Basic] = []
        self._alias_root: dict[torch.fx.Node, torch.fx.Node] = {}
        self._order: dict[torch.fx.Node, int] = {}
        self._hints: dict[sympy.Symbol, int] = {}

    # ---- builder API for rules ----------------------------------------------------------------
    def emit(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        """Append ``op(*inputs) {attrs}`` and return its single result."""
        node = self._append(op, inputs, attrs, None)
        if len(node.results) != 1:
            raise CaptureError(f"membound bug: {op} has {len(node.results)} results; the rule must use emit_multi")
        return node.results[0]

    def emit_multi(self, op: str, *inputs: Value, **attrs: Any) -> list[Value]:
        """Append a multi-result op (``topk``, ``sort``, ``split``) and return its results."""
        node = self._append(op, inputs, attrs, None)
        return list(node.results)

    def _append(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                types: Optional[Sequence[TensorType]]) -> Any:
        for v in inputs:
            if not isinstance(v, Value):
                raise CaptureError(f"membound bug: input {v!r} of IR op {op} is not an IR value")
        try:
            node = self.graph.create_node(op, list(inputs), attrs, types)
        except (TypeError, ValueError, IndexError) as e:
            node = self._on_the_hinted_branch(op, inputs, attrs, types)
            if node is None:
                raise _IRRejected(op_name(self.node.target), module_path(self.node), self.source(self.node),
                                  f"the IR op {op} rejects the translated operands: {e}") from e
        assert self.node is not None
        node.meta["aten"] = op_name(self.node.target)
        node.meta["source"] = self.source(self.node)
        node.meta["module"] = module_path(self.node)
        self.graph.append(node)
        return node

    def _on_the_hinted_branch(self, op: str, inputs: Sequence[Value], attrs: dict[str, Any],
                              types: Optional[Sequence[TensorType]]) -> Any:
        """The elementwise ``op`` whose operands do not broadcast because a dim holds a ``Max`` / ``Min`` of sizes,
        retried with each such dim on the branch the captured sizes take, under a narrowed range of its symbol
        (MPT slices its ALiBi table ``[max(0, 128 - S):]``, ``128 - Max(0, 128 - S)`` keys, added to scores over
        ``S`` keys: equal for ``S <= 128``, which the eager model needs too). The narrowed range is the capture's
        (a call outside it captures again), as torch guards on a branch it took; the operand is reshaped to the
        branch's shape. None when no branch is linear in one symbol or the retry fails too (ranges restored)."""
        from membound.ir import get_op

        if get_op(op).kind != "elementwise" or not self._hints:
            return None
        conds: list[sympy.Basic] = []
        shapes = [tuple(self._hinted_branch(d, conds) for d in v.shape) for v in inputs]
        saved = self.take_branch(conds) if conds else None
        if saved is None:
            return None
        try:
            new = [v if shape == tuple(v.shape) else self.emit("reshape", v, shape=shape)
                   for v, shape in zip(inputs, shapes)]
            node = self.graph.create_node(op, new, attrs, types)
        except (TypeError, ValueError, IndexError, _IRRejected):
            self.ranges = saved
            return None
        self.add_guards(conds)
        return node

    def take_branch(self, conds: Sequence[sympy.Basic]) -> Optional[dict[sympy.Symbol, tuple[int, Optional[int]]]]:
        """Narrow the symbols' ranges by every condition of a branch the captured sizes take (``_hinted_branch``):
        the ranges before (to restore if what follows fails), or None, the ranges unchanged, when one condition
        does not narrow (:meth:`_narrow`)."""
        saved = dict(self.ranges)
        if all(self._narrow(c) for c in conds):
            return saved
        self.ranges = saved
        return None

    def add_guards(self, conds: Sequence[sympy.Basic]) -> None:
        """Record the conditions of a branch taken as the capture's guards (each once)."""
        for c in conds:
            if c not in self.guards:
                self.guards.append(c)

    def _hinted_branch(self, e: sympy.Expr, conds: list[sympy.Basic]) -> sympy.Expr:
        """``e`` with every ``Max`` / ``Min`` replaced by the argument the captured sizes select; the conditions
        under which it is selected go to ``conds``."""
        if not isinstance(e, sympy.Basic) or not e.args:
            return e
        args = [self._hinted_branch(a, conds) for a in e.args]
        if isinstance(e, (sympy.Max, sympy.Min)):
            try:
                values = [eval_dim(a, self._hints) for a in args]
            except (TypeError, ValueError):
                return e.func(*args)
            pick = values.index(max(values) if isinstance(e, sympy.Max) else min(values))
            for i, a in enumerate(args):
                if i != pick:
                    conds.append(sympy.Ge(args[pick], a) if isinstance(e, sympy.Max) else sympy.Le(args[pick], a))
            return args[pick]
        return e.func(*args)

    def _narrow(self, cond: sympy.Basic) -> bool:
        """Fold ``cond`` (``a >= b`` / ``a <= b``, linear in one symbol with an integer coefficient) into that
        symbol's range; False when it is not of that form or excludes the captured size."""
        if cond is sympy.true:
            return True
        if not isinstance(cond, (sympy.Ge, sympy.Le)):
            return False
        diff = sympy.expand(cond.lhs - cond.rhs if isinstance(cond, sympy.Ge) else cond.rhs - cond.lhs)  # >= 0
        free = list(diff.free_symbols)
        if len(free) != 1 or free[0] not in self._hints:
            return False
        s = free[0]
        a, c = diff.coeff(s), diff.subs(s, 0)
        if not (a.is_Integer and c.is_Integer) or a == 0 or sympy.expand(a * s + c - diff) != 0:
            return False
        lo, hi = self.ranges.get(s, (1, None))
        if a > 0:   # s >= ceil(-c / a)
            lo = max(lo, -(int(c) // int(a)))
        else:       # s <= floor(c / -a)
            bound = int(c) // -int(a)
            hi = bound if hi is None else min(hi, bound)
        if not lo <= self._hints[s] <= (hi if hi is not None else self._hints[s]):
            return False
        self.ranges[s] = (lo, hi)
        return True

    def source(self, n: torch.fx.Node) -> str:
        """The user's source line for FX node ``n`` (see :func:`source_line`)."""
        return source_line(n) or self.default_source

    def tensor(self, x: Any, like: Optional[Value] = None) -> Value:
        """An IR value for a tensor operand: a Value as is, a Python scalar as a ``constant`` whose
        dtype makes ``op(like, constant)`` promote exactly like torch's ``op(like_tensor, scalar)``."""
        if isinstance(x, Value):
            return x
        if isinstance(x, sympy.Expr):
            return self.sym_scalar(x)
        if isinstance(x, (bool, int, float)):
            if like is not None:
                dtype = torch.result_type(torch.empty((), dtype=like.dtype), x)
            else:
                dtype = torch.result_type(torch.tensor(x), x) if not isinstance(x, float) else \
                    torch.get_default_dtype()
            if dtype == torch.bool:
                value: Any = bool(x)
            elif dtype.is_floating_point:
                value = float(x)
            else:  # torch casts the scalar to the tensor's integer type, wrapping (int8 + 300 adds 44)
                value = int(torch.tensor(x).to(dtype).item())
            return self.emit("constant", value=value, dtype=dtype)
        raise self._error(f"operand {x!r} ({type(x).__name__}) is not a tensor or a Python scalar")

    def sym_scalar(self, e: sympy.Expr) -> Value:
        """A 0-d i64 tensor holding a dim expression: ``arange(e, e+1)`` reshaped to ``[]``."""
        one = self.emit("arange", start=e, end=e + 1, step=1, dtype=torch.int64)
        return self.emit("reshape", one, shape=())

    def dim(self, x: Any) -> sympy.Expr:
        """A dim (int, SymInt already resolved to an expression) as a sympy expression."""
        if isinstance(x, sympy.Expr):
            return x
        if isinstance(x, bool) or not isinstance(x, int):
            raise self._error(f"expected an int size, got {x!r}")
        return sympy.Integer(x)

    def out_types(self) -> list[TensorType]:
        """The result types torch recorded for the current node (one per tensor result)."""
        val = self.node.meta.get("val") if self.node is not None else None
        vals = val if isinstance(val, (list, tuple)) else [val]
        if not all(isinstance(v, torch.Tensor) for v in vals):
            raise self._error("torch recorded no tensor result type for this node")
        try:
            return [self.symbols.tensor_type(v) for v in vals]
        except TypeError as e:  # complex results, exotic dtypes
            raise self._error(str(e), fallback=False) from None

    def out_type(self) -> TensorType:
        return self.out_types()[0]

    def provably_nonneg(self, e: sympy.Expr) -> bool:
        """Whether ``e >= 0`` for every size allowed by the ranges torch recorded (``S - 3`` is when
        ``S >= 5``): each symbol is written as its lower bound plus a non-negative offset."""
        e = sympy.sympify(e)
        if e.is_number:
            return bool(e >= 0)
        shift = {s: self.ranges.get(s, (1, None))[0] + sympy.Dummy(f"{s.name}_off", integer=True, nonnegative=True)
                 for s in e.free_symbols}
        return e.xreplace(shift).is_nonnegative is True

    def cast(self, v: Value, dtype: torch.dtype) -> Value:
        return v if v.dtype == dtype else self.emit("cast", v, dtype=dtype)

    def unsupported(self, reason: str, fallback: bool = True,
                    cls: type[UnsupportedOpError] = UnsupportedOpError) -> UnsupportedOpError:
        """The error to raise when a use of an op cannot be expressed (``raise t.unsupported(...)``)."""
        return cls(op_name(self.node.target), module_path(self.node), self.source(self.node), reason, fallback)

    def _error(self, msg: str, fallback: bool = False,
               cls: type[UnsupportedOpError] = UnsupportedOpError) -> UnsupportedOpError:
        return self.unsupported(msg, fallback, cls)

    # ---- the walk -------------------------------------------------------------------------------
    def run(self, fx_graph: torch.fx.Graph, roles: dict[torch.fx.Node, Role]) -> list[Any]:
        """Translate every node; returns the resolved output leaves (Values or constants)."""
        self._order = {n: i for i, n in enumerate(fx_graph.nodes)}
        self._hints = self.symbols.hints()
        return self._walk(fx_graph, lambda n: self._placeholder(n, roles[n]))

    def _walk(self, fx_graph: torch.fx.Graph, placeholder: Callable[[torch.fx.Node], Any]) -> list[Any]:
        """Translate ``fx_graph``'s nodes in order (the model's graph, or a region's body inlined into it), its
        placeholders bound by ``placeholder``; returns the resolved output leaves."""
        outputs: list[Any] = []
        for n in fx_graph.nodes:
            self.node = n
            if n.op == "placeholder":
                self.env[n] = placeholder(n)
            elif n.op == "call_function":
                self._call(n)
            elif n.op == "output":
                outputs = list(torch.fx.node.map_arg(n.args[0], lambda a: self.env[a]))  # type: ignore[arg-type]
            elif n.op == "get_attr":
                sub = getattr(fx_graph.owning_module, str(n.target), None)
                if not (isinstance(sub, torch.fx.GraphModule) and n.users and all(
                        u.op == "call_function" and _inlined_hop(u.target) for u in n.users)):
                    raise self._get_attr_error(n)
                self.env[n] = sub  # the body of a grad-mode / autocast-off region: translated inline at its call
            else:
                raise self._error(f"unexpected FX node kind {n.op}")
        return outputs

    def _inline_region(self, n: torch.fx.Node) -> None:
        """A region torch.export wrapped in a higher-order op that changes no value of an inference graph: a grad-mode
        switch (``wrap_with_set_grad_enabled``: transformers 4.x's rotary embedding under ``@torch.no_grad()``), or
        autocast turned off (``wrap_with_autocast`` with enabled=False). Its body is translated in place, its results
        the op's (a tuple, taken apart by getitem). Autocast turned on changes dtypes: refused."""
        name = n.target.name()  # type: ignore[union-attr]
        if name == "wrap_with_autocast":
            enabled, body, operands = n.args[2], n.args[4], n.args[5:]
            if enabled:
                raise self._error("an autocast region with autocast enabled (its ops change dtype): membound "
                                  "captures the model's own dtypes; run the model without autocast", fallback=False)
        else:
            body, operands = n.args[1], n.args[2:]
        gm = self.env[body]  # type: ignore[index]
        values = [self._resolve(a) for a in operands]
        nodes = list(gm.graph.nodes)
        places = [sn for sn in nodes if sn.op == "placeholder"]
        if len(places) != len(values):
            raise self._error(f"{name}: {len(values)} operands for a body of {len(places)} inputs", fallback=False)
        here = self._order[n]
        for i, sn in enumerate(nodes):  # (the in-place checks compare positions)
            self._order[sn] = here + (i + 1) / (len(nodes) + 1)
        bound = dict(zip(places, values))
        outputs = self._walk(gm.graph, bound.__getitem__)
        self.node = n
        self.env[n] = tuple(outputs)

    def _get_attr_error(self, n: torch.fx.Node) -> UnsupportedOpError:
        """A ``get_attr`` in an exported inference graph holds a subgraph or function of a higher-order op: name the
        op (at its user's source line) and what produces it, instead of the bare node."""
        hops = [u for u in n.users if u.op == "call_function" and isinstance(u.target, torch._ops.HigherOrderOperator)]
        if not hops:
            return self._error("get_attr nodes are not expected in an exported graph (is it a training graph?)")
        self.node = hops[0]
        name = getattr(hops[0].target, "name", lambda: str(hops[0].target))()
        why = {"flat_apply": "a function traced through torch.vmap (transformers 4.x builds its attention masks so)",
               "wrap_with_set_grad_enabled": "a torch.no_grad / set_grad_enabled region inside the model (transformers "
                                             "4.x wraps its rotary embedding so)",
               "wrap_with_autocast": "a torch.autocast region inside the model"}.get(name, "a higher-order op")
        return self._error(f"torch.export produced the higher-order op {name} ({why}); membound translates plain ATen "
                           f"graphs. With Hugging Face models use transformers >= 5 (its masks and rotary embeddings "
                           f"export as plain ops), or remove the region from the model's forward")

    def _placeholder(self, n: torch.fx.Node, role: Role) -> Resolved:
        val = n.meta.get("val")
        if isinstance(role, AsInput):
            return self.graph.add_input(role.name, self.symbols.tensor_type(val))
        if isinstance(role, AsParam):
            if role.constant and role.tensor.numel() <= _KNOWN_NUMEL:
                self._known[n] = role.tensor.detach().cpu()
            return self.graph.add_param(role.name, self.symbols.tensor_type(val), role.tensor)
        value = role.value
        if isinstance(value, torch.Tensor):  # a 0-d tensor standing for a Python float (Dynamo)
            return self.emit("constant", value=value.item(), dtype=value.dtype)
        return value

    def _call(self, n: torch.fx.Node) -> None:
        target = n.target
        if _inlined_hop(target):
            self._inline_region(n)
            return
        rule = self.table.get(target) or self.table.get(op_name(target))
        mutated = None
        if rule is None and isinstance(target, torch._ops.OpOverload):
            functional = _functional_twin(target)
            if functional is not None:
                rule = self.table.get(functional)
                mutated = _mutated_arg(target)
        if rule is None and isinstance(n.meta.get("val"), (torch.SymInt, torch.SymBool)) \
                and not isinstance(target, torch._ops.OpOverload):
            rule = symbolic_value  # a Python function on SymInts (math.ceil, torch.sym_max...)
        known = self._evaluate_known(n)
        if rule is None and known is not None:  # no IR mapping, but a value fixed at capture: that value
            self.env[n] = self._materialise_known(n, known)
            return
        if rule is None:
            self._fallback_or_raise(n)
            return
        if getattr(rule, "ignores_args", False):  # asserts: nothing to translate, not even their inputs
            self.env[n] = None
            return
        if isinstance(target, torch._ops.OpOverload):
            mutated = mutated or _mutated_arg(target)
            args = bind_schema(target, [self._resolve(a) for a in n.args],
                               {k: self._resolve(v) for k, v in n.kwargs.items()})
        else:
            args = Args({f"arg{i}": self._resolve(a) for i, a in enumerate(n.args)})
        if mutated is not None and self._writes_buffer(n, target, mutated):
            result = self._state_write(n, target, mutated, args)
            src = _arg_node(n, target, mutated)
            self.env[n] = result
            self.env[src] = result
            self.env[self._alias_root.get(src, src)] = result  # later reads of the buffer see the write
            return
        if mutated is not None:
            self._check_inplace(n, target, mutated)
        start = len(self.graph.nodes)
        try:
            result = rule(self, args)
        except _IRRejected:
            if self.fallback != "torch" or mutated is not None:
                raise
            for node in reversed(self.graph.nodes[start:]):  # undo the rule's partial work, then fall back
                self.graph.erase_node(node)
            self._fallback_or_raise(n)
            return
        self._check_result(n, result)
        self.env[n] = result
        if mutated is not None:
            self.env[_arg_node(n, target, mutated)] = result
        self._track_alias(n)

    def _track_alias(self, n: torch.fx.Node) -> None:
        """Remember which FX node's memory a view (or a piece of a split) shares."""
        src = n.args[0] if n.args and isinstance(n.args[0], torch.fx.Node) else None
        if src is None:
            return
        if n.target is operator.getitem:
            if src in self._alias_root:  # a piece of split/chunk/unbind, not a topk/sort result
                self._alias_root[n] = self._alias_root[src]
        elif _is_view(n.target) and not _moves_device(src, n):
            self._alias_root[n] = self._alias_root.get(src, src)

    def _resolve(self, a: Any) -> Any:
        if isinstance(a, torch.fx.Node):
            if a not in self.env:
                raise self._error(f"argument %{a.name} was never translated")
            r = self.env[a]
            if isinstance(r, DataScalar):
                raise self._error(f"it uses a Python number read from tensor data ({r.source}); the IR cannot "
                                  "depend on data values this way: keep it a tensor (drop .item()/float())",
                                  fallback=False)
            return r
        if isinstance(a, (list, tuple)):
            return type(a)(self._resolve(x) for x in a)
        return a

    # ---- checks ---------------------------------------------------------------------------------
    def _check_result(self, n: torch.fx.Node, result: Any) -> None:
        val = n.meta.get("val")
        if isinstance(val, torch.Tensor):
            if not isinstance(result, Value):
                raise CaptureError(f"membound bug: the rule for {op_name(n.target)} returned {result!r}, "
                                   f"expected one IR value (at {self.source(n)})")
            self._check_type(n, result.type, val)
        elif isinstance(val, (list, tuple)) and val and all(isinstance(v, torch.Tensor) for v in val):
            if not isinstance(result, (list, tuple)) or len(result) != len(val):
                raise CaptureError(f"membound bug: the rule for {op_name(n.target)} returned {result!r}, "
                                   f"expected {len(val)} IR values")
            for r, v in zip(result, val):
                self._check_type(n, r.type, v)

    def _check_type(self, n: torch.fx.Node, got: TensorType, val: torch.Tensor) -> None:
        want = self.symbols.tensor_type(val)
        ok = got.dtype == want.dtype and got.rank == want.rank and all(
            self._same_dim(a, b) for a, b in zip(got.shape, want.shape))
        if not ok:
            raise CaptureError(f"membound bug: translating {op_name(n.target)} (%{n.name}) gave {got}, but torch "
                               f"computes {want}\n  at: {self.source(n)}\n  module: {module_path(n)}")

    def _same_dim(self, a: sympy.Expr, b: sympy.Expr) -> bool:
        if a == b:
            return True
        try:
            if dims_equal(a, b):
                return True
        except (TypeError, ValueError):
            pass
        free = (a.free_symbols | b.free_symbols)
        if not free <= set(self._hints):
            return True  # data-dependent sizes: cannot check at capture time
        try:
            return eval_dim(a, self._hints) == eval_dim(b, self._hints)
        except (TypeError, ValueError):
            return False

    # ---- state: in-place writes into a model's buffers (static KV caches, counters) ---------------
    def _writes_buffer(self, n: torch.fx.Node, target: Any, arg: str) -> bool:
        """Whether the write goes into a buffer placeholder: directly, or through a no-op alias that
        translated to the very same value (``buf.to(device).add_(1)`` on HF's StaticCache length)."""
        src = _arg_node(n, target, arg)
        if src is None:
            return False
        root = self._alias_root.get(src, src)
        if root.op != "placeholder":
            return False
        cur = self.env.get(src)
        return isinstance(cur, Value) and cur.kind in ("param", "state") and self.env.get(root) is cur

    def _state_write(self, n: torch.fx.Node, target: Any, arg: str, a: Args) -> Value:
        """``buf.index_copy_(dim, idx, x)`` / ``buf[:, :, idx] = x`` / ``buf.copy_(x)`` on a model buffer.

        The buffer becomes graph *state* (it persists across calls, written in place by explicit ops)
        and the write becomes ``cache_write`` (one index tensor along one dim) or ``state_copy``.
        Later reads of the buffer see the written value: the FX node is re-bound to the op's result.
        """
        src = _arg_node(n, target, arg)
        cur = self.env[src]
        if cur.kind == "param":
            if isinstance(self.graph.tensors.get(cur.name), torch.nn.Parameter):
                raise self._error(f"it writes in place into the parameter %{cur.name}; only buffers can be state")
            self.graph.params.remove(cur)
            cur.kind = "state"
            self.graph.state.append(cur)
        name = op_name(target)
        if name == "aten.index_copy_.default":
            return self.emit("cache_write", cur, self.cast(a.source, cur.dtype), a.index, dim=a.dim)
        if name == "aten.index_put_.default":
            picked = [(d, ix) for d, ix in enumerate(a.indices) if ix is not None]
            if len(picked) != 1 or picked[0][1].rank not in (1, 2) or a.accumulate:
                raise self._error(f"it writes into the buffer %{cur.name} with {len(picked)} index tensors; "
                                  "state writes are supported along one dim with one index tensor")
            dim, index = picked[0]
            values = self.cast(a.values, cur.dtype)
            while values.rank < cur.rank:  # torch's setitem drops the value's leading size-1 dims
                values = self.emit("unsqueeze", values, dim=0)
            want = tuple(values.shape[d] if d == dim else cur.shape[d] for d in range(cur.rank))
            if tuple(values.shape) != want:
                values = self.emit("expand", values, shape=want)
            return self.emit("cache_write", cur, values, index, dim=dim)
        if name == "aten.copy_.default":
            return self.emit("state_copy", cur, a.src)
        functional = _functional_twin(target) if isinstance(target, torch._ops.OpOverload) else None
        rule = self.table.get(functional) if functional is not None else None
        if rule is not None:  # counter.add_(n) (HF's StaticCache length): the functional op, then a whole-buffer copy
            value = rule(self, a)
            if isinstance(value, Value) and value.rank <= cur.rank:
                return self.emit("state_copy", cur, value)
        raise self._error(f"it modifies the buffer %{cur.name} in place ({name}); membound supports buffer writes "
                          "through index_copy_, index_put_ along one dim, copy_, and in-place elementwise ops")

    def _check_inplace(self, n: torch.fx.Node, target: Any, arg: str) -> None:
        src = _arg_node(n, target, arg)
        if src is None:
            raise self._error(f"in-place write to a non-tensor argument {arg!r}", fallback=False)
        root = self._alias_root.get(src, src)
        if root.op == "placeholder":
            raise self._error(f"it writes in place into %{root.name}, a graph input or parameter; the IR mutates "
                              "state only through explicit ops", fallback=False)
        aliases = [m for m, r in self._alias_root.items() if r is root and m is not src]
        if root is not src:
            aliases.append(root)
        here = self._order[n]
        for m in aliases:
            if any(self._order.get(u, -1) > here for u in m.users):
                raise self._error(f"it writes in place through %{src.name}, which shares memory with %{m.name} "
                                  "that is used later; the IR has value semantics", cls=InPlaceAliasError)

    # ---- values fixed at capture ---------------------------------------------------------------------
    def _evaluate_known(self, n: torch.fx.Node) -> Any:
        """The value of ``n`` when it is computed from tensor literals of the model's code alone (Gemma 3n's
        ``Normal(0, 1).icdf(torch.tensor(0.95))``: broadcasts, ``erfinv``, its argument checks), evaluated with torch
        on the CPU and remembered for the nodes that read it; None otherwise. Only small tensors are followed, only
        ops without side effects (no random ops, no in-place writes but ``detach_``)."""
        target = n.target
        if not isinstance(target, torch._ops.OpOverload) and target is not operator.getitem:
            return None
        nodes = n.all_input_nodes
        if not nodes or not all(a in self._known for a in nodes):
            return None
        if isinstance(target, torch._ops.OpOverload):
            tags = getattr(target, "tags", ())
            if torch.Tag.nondeterministic_seeded in tags or (target._schema.is_mutable
                                                             and target not in _KNOWN_INPLACE):
                return None
        resolve = lambda a: self._known[a].clone() if isinstance(self._known[a], torch.Tensor) else self._known[a]  # noqa: E731
        args = torch.fx.node.map_arg(n.args, resolve)
        kwargs = torch.fx.node.map_arg(n.kwargs, resolve)
        kwargs = {k: ("cpu" if isinstance(v, torch.device) else v) for k, v in kwargs.items()}
        try:
            with torch.no_grad():
                value = target(*args, **kwargs)
        except Exception:  # noqa: BLE001 (not evaluable here: translated as usual)
            return None
        leaves = value if isinstance(value, (list, tuple)) else [value]
        if not all(isinstance(v, (torch.Tensor, bool, int, float)) and
                   (not isinstance(v, torch.Tensor) or v.numel() <= _KNOWN_NUMEL) for v in leaves):
            return None
        self._known[n] = value
        return value

    def _materialise_known(self, n: torch.fx.Node, value: Any, name: str = "") -> Any:
        """IR for a value fixed at capture: a 0-d tensor as a ``constant``, a larger one as a constant parameter
        named after the node (``folded.<node>[.<i>]``), a list element-wise; Python numbers stay numbers."""
        if isinstance(value, (list, tuple)):
            return [self._materialise_known(n, v, f"{name or n.name}.{i}") for i, v in enumerate(value)]
        if not isinstance(value, torch.Tensor):
            return value
        if value.dim() == 0:
            return self.emit("constant", value=value.item(), dtype=value.dtype)
        device = next((t.device for t in self.graph.tensors.values()), torch.device("cpu"))
        return self.graph.add_param(f"folded.{name or n.name}",
                                    TensorType(value.dtype, tuple(sympy.Integer(d) for d in value.shape)),
                                    value.to(device))

    # ---- fallback -------------------------------------------------------------------------------
    def _fallback_or_raise(self, n: torch.fx.Node) -> None:
        target = n.target
        if self.fallback != "torch" or not isinstance(target, torch._ops.OpOverload):
            raise UnsupportedOpError(op_name(target), module_path(n), self.source(n))
        if _mutated_arg(target) is not None:
            raise self._error("it writes in place and torch_call is functional", fallback=False)
        inputs: list[Value] = []

        def template(a: Any) -> Any:
            if isinstance(a, torch.fx.Node):
                r = self.env.get(a)
                if isinstance(r, Value):
                    inputs.append(r)
                    return f"%{len(inputs) - 1}"
                if isinstance(r, sympy.Expr):
                    if r.is_Integer:
                        return int(r)
                    raise self._error("torch_call cannot take a symbolic size argument")
                return r
            if isinstance(a, (list, tuple)):
                return tuple(template(x) for x in a)
            if isinstance(a, torch.dtype):
                return a
            if isinstance(a, torch.device):
                return str(a)
            return a

        args = tuple(template(a) for a in n.args)
        kwargs = tuple((k, template(v)) for k, v in n.kwargs.items() if k not in ("device", "pin_memory"))
        types = self.out_types()
        node = self._append("torch_call", inputs, {"target": qualified_target(target), "args": args,
                                                   "kwargs": kwargs}, types)
        self.env[n] = node.results[0] if not isinstance(n.meta.get("val"), (list, tuple)) else list(node.results)


# values fixed at capture (Translator._evaluate_known): the largest tensor followed, and the in-place ops allowed
_KNOWN_NUMEL = 4096
_KNOWN_INPLACE = (torch.ops.aten.detach_.default,)


def _inlined_hop(target: Any) -> bool:
    """Higher-order ops whose body translates in place (see ``Translator._inline_region``)."""
    return isinstance(target, torch._ops.HigherOrderOperator) and target.name() in (
        "wrap_with_set_grad_enabled", "wrap_with_autocast")


class InPlaceAliasError(UnsupportedOpError):
    """An in-place write through a view whose base (or another view of it) is read later: the IR has value
    semantics. ``capture_export`` retries such a program functionalized."""


class _IRRejected(UnsupportedOpError):
    """A rule's IR op refused its operands (a use of the ATen op the mapping does not cover)."""


def symbolic_value(t: Translator, a: Args) -> sympy.Basic:
    """A symbolic-int function (``sym_size``, ``operator.mul`` on SymInts): its value is the expression
    torch recorded, converted to our symbols; it feeds attrs, never an IR value."""
    return t.symbols.expr(t.node.meta["val"])


def _functional_twin(target: torch._ops.OpOverload) -> Optional[torch._ops.OpOverload]:
    """``aten.div.Tensor`` for ``aten.div_.Tensor`` (in-place ops end with an underscore)."""
    packet = target.name().split("::", 1)[-1].split(".", 1)[0]
    if not packet.endswith("_") or packet.startswith("_"):
        return None
    ns = getattr(torch.ops, target.namespace)
    fn = getattr(ns, packet[:-1], None)
    return getattr(fn, target._overloadname, None) if fn is not None else None


def _arg_node(n: torch.fx.Node, target: Any, arg: str) -> Optional[torch.fx.Node]:
    names = [sa.name for sa in target._schema.arguments]
    i = names.index(arg)
    a = n.args[i] if i < len(n.args) else n.kwargs.get(arg)
    return a if isinstance(a, torch.fx.Node) else None


def output_leaves(outputs: list[Any], paths: list[str], name: str) -> tuple[list[Value], list[OutLeaf]]:
    """Graph outputs and one leaf descriptor per output leaf; a non-tensor computed value is an error."""
    values: list[Value] = []
    leaves: list[OutLeaf] = []
    for path, r in zip(paths, outputs):
        if isinstance(r, Value):
            leaves.append(TensorOut(len(values)))
            values.append(r)
        elif isinstance(r, DataScalar):
            raise CaptureError(f"{name} returns a Python number computed from tensor data at output {path} "
                               f"({r.source}); the graph can only return tensors: return the tensor itself "
                               "(drop .item()/float()) or compute the number outside the model")
        elif isinstance(r, sympy.Expr):  # a size: computed from each call's input shapes (see bound_sizes)
            leaves.append(SymOut(r) if r.free_symbols else ConstOut(int(r)))
        elif r is None or isinstance(r, (bool, int, float, str, torch.dtype, torch.device)):
            leaves.append(ConstOut(r))
        else:
            raise CaptureError(f"{name} returns {type(r).__name__} at output {path}, which the IR cannot express")
    return values, leaves


def bound_sizes(leaves: Sequence[OutLeaf], paths: list[str], inputs: set[sympy.Symbol], name: str) -> None:
    """An int output must be a function of the sizes a call's input shapes bind (``inputs``): not of a size only
    the graph knows (a ``nonzero``'s count)."""
    for path, leaf in zip(paths, leaves):
        if isinstance(leaf, SymOut) and not leaf.expr.free_symbols <= inputs:
            raise CaptureError(f"{name} returns a Python number computed from tensor sizes or data at output "
                               f"{path} ({leaf.expr}); the graph can only return tensors and sizes of its "
                               f"inputs: return a tensor (e.g. torch.tensor(...)) or compute it outside the model")
