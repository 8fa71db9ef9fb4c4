"""A capture: one model call turned into an IR graph, plus what is needed to call that graph again.

The graph only sees tensors. The user's call, though, is a tree (``model(input_ids=ids,
use_cache=False)``) and its result is a tree too (a ``ModelOutput`` with ``.logits``). A
:class:`Capture` keeps the two pytree specs and one descriptor per leaf so that

* ``flatten_inputs(args, kwargs)`` picks the tensors the graph takes, in order,
* ``unflatten_outputs(tensors)`` rebuilds the model's own return value, and
* ``matches(args, kwargs)`` says whether a new call may reuse this graph: same tree, same
  non-tensor leaves, same dtypes/ranks/devices, equal static dims, and every dim symbol bound to one
  value that lies in the range the capture was valid for (export specialises size-1 dims, so a
  graph captured with ``S >= 2`` must not serve ``S == 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

import sympy
import torch
import torch.utils._pytree as pytree

from membound.ir.graph import Graph
from membound.ir.types import TensorType, is_static

# ---------------------------------------------------------------------------------------------
# input leaves: what each flattened leaf of the user's call is to the graph
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorLeaf:
    """A tensor the graph takes: ``graph.inputs[index]``."""

    index: int


@dataclass(frozen=True)
class ConstLeaf:
    """A non-tensor leaf the capture specialised on (``use_cache=False``); a new call must pass an equal
    value. A 0-d tensor standing for a Python float (Dynamo passes those) compares by value."""

    value: Any


@dataclass(frozen=True)
class ParamLeaf:
    """A parameter or buffer passed as an argument (Dynamo lifts them); the graph reads it from
    ``graph.tensors[name]`` instead."""

    name: str


@dataclass(frozen=True)
class SymLeaf:
    """An int argument that must equal this dim expression of the tensor inputs (Dynamo's SymInts)."""

    expr: sympy.Expr


InLeaf = Union[TensorLeaf, ConstLeaf, ParamLeaf, SymLeaf]


@dataclass(frozen=True)
class TensorOut:
    """The output leaf is ``graph.outputs[index]``."""

    index: int


@dataclass(frozen=True)
class ConstOut:
    """The output leaf is a constant the model returned (``None`` fields, a fixed int)."""

    value: Any


@dataclass(frozen=True)
class SymOut:
    """The output leaf is an int the graph computes from its inputs' sizes (a Dynamo subgraph hands the code after
    its graph break a size so): ``expr`` over the dim symbols, evaluated from each call's input shapes."""

    expr: sympy.Expr


OutLeaf = Union[TensorOut, ConstOut, SymOut]

Range = tuple[int, Optional[int]]


def flatten_call(args: Sequence[Any], kwargs: Optional[dict[str, Any]]) -> tuple[list[Any], pytree.TreeSpec]:
    """Flatten a call the way every frontend does: the tree ``(tuple(args), dict(kwargs))``."""
    return pytree.tree_flatten((tuple(args), dict(kwargs or {})))


@dataclass
class Capture:
    """The result of capturing a callable for one specialisation (see the module docstring)."""

    graph: Graph
    in_spec: pytree.TreeSpec
    in_leaves: tuple[InLeaf, ...]
    out_spec: pytree.TreeSpec
    out_leaves: tuple[OutLeaf, ...]
    # the device of each graph input when captured
    devices: tuple[torch.device, ...]
    # inclusive value range of each dim symbol (upper None = unbounded)
    ranges: dict[sympy.Symbol, Range] = field(default_factory=dict)
    # extra conditions over the symbols that the capture assumed (export's runtime asserts)
    guards: tuple[sympy.Basic, ...] = ()
    frontend: str = "export"
    # the captured callable's name, for messages
    name: str = ""
    # the graph inputs' types at capture: reuse checks keep working after passes rewrite ``graph``
    input_types: tuple[TensorType, ...] = ()

    def __post_init__(self) -> None:
        if not self.input_types:
            self.input_types = tuple(v.type for v in self.graph.inputs)

    # ---- the call's leaves --------------------------------------------------------------------
    @property
    def constants(self) -> dict[int, Any]:
        """The non-tensor leaves of the captured call, by flat leaf position."""
        return {i: leaf.value for i, leaf in enumerate(self.in_leaves) if isinstance(leaf, ConstLeaf)}

    def _leaves(self, args: Sequence[Any], kwargs: Optional[dict[str, Any]]) -> tuple[list[Any], pytree.TreeSpec]:
        kwargs = _reorder_like(dict(kwargs or {}), self.in_spec)
        return flatten_call(args, kwargs)

    def flatten_inputs(self, args: Sequence[Any], kwargs: Optional[dict[str, Any]] = None) -> list[torch.Tensor]:
        """The tensors of this call that the graph takes, in ``graph.inputs`` order."""
        leaves, spec = self._leaves(args, kwargs)
        if spec != self.in_spec:
            raise ValueError(f"the call's structure {spec} differs from the captured one {self.in_spec}")
        out: list[Optional[torch.Tensor]] = [None] * len(self.input_types)
        for leaf, x in zip(self.in_leaves, leaves):
            if isinstance(leaf, TensorLeaf):
                out[leaf.index] = x
        return out  # type: ignore[return-value]

    def unflatten_outputs(self, outputs: Sequence[torch.Tensor],
                          inputs: Optional[Sequence[torch.Tensor]] = None) -> Any:
        """The model's own return value (e.g. a ``ModelOutput``) from the graph's output tensors; ``inputs`` (the
        call's graph inputs, ``flatten_inputs``) give the sizes an int output (``SymOut``) is computed from."""
        expected = sum(isinstance(leaf, TensorOut) for leaf in self.out_leaves)
        if len(outputs) != expected:
            raise ValueError(f"expected {expected} output tensors, got {len(outputs)}")
        sizes: Optional[dict[sympy.Symbol, int]] = None
        leaves = []
        for leaf in self.out_leaves:
            if isinstance(leaf, TensorOut):
                leaves.append(outputs[leaf.index])
            elif isinstance(leaf, SymOut):
                if sizes is None:
                    if inputs is None:
                        raise ValueError(f"{self.name or 'the graph'} returns sizes ({leaf.expr}): pass the call's "
                                         "graph inputs to unflatten_outputs")
                    sizes = self.input_sizes(inputs)
                leaves.append(int(leaf.expr.xreplace(sizes)))
            else:
                leaves.append(leaf.value)
        return pytree.tree_unflatten(leaves, self.out_spec)

    def input_sizes(self, inputs: Sequence[torch.Tensor]) -> dict[sympy.Symbol, int]:
        """Each dim symbol of the captured input types, bound to the size it has in ``inputs``."""
        sizes: dict[sympy.Symbol, int] = {}
        for t, x in zip(self.input_types, inputs):
            for d, n in zip(t.shape, x.shape):
                if isinstance(d, sympy.Symbol):
                    sizes[d] = int(n)
        return sizes

    def input_symbols(self) -> set[sympy.Symbol]:
        """The dim symbols a call's input shapes bind."""
        return {d for t in self.input_types for d in t.shape if isinstance(d, sympy.Symbol)}

    # ---- reuse ----------------------------------------------------------------------------------
    def matches(self, args: Sequence[Any], kwargs: Optional[dict[str, Any]] = None) -> bool:
        """True iff this capture is valid for the call ``fn(*args, **kwargs)``."""
        return self.mismatch(args, kwargs) is None

    def mismatch(self, args: Sequence[Any], kwargs: Optional[dict[str, Any]] = None) -> Optional[str]:
        """Why the call cannot reuse this capture (a sentence naming the leaf), or None when it can."""
        leaves, spec = self._leaves(args, kwargs)
        if spec != self.in_spec:
            return f"the call's structure differs from the captured one ({spec} vs {self.in_spec})"
        bindings: dict[sympy.Symbol, int] = {}
        pending: list[tuple[str, sympy.Expr, int]] = []
        paths = leaf_paths(self.in_spec)
        for path, leaf, x in zip(paths, self.in_leaves, leaves):
            why = self._check_leaf(path, leaf, x, bindings, pending)
            if why is not None:
                return why
        return self._check_symbols(bindings, pending)

    def bindings(self, args: Sequence[Any], kwargs: Optional[dict[str, Any]] = None) -> dict[sympy.Symbol, int]:
        """The value of every dim symbol for this call; raises ``ValueError`` when the call does not match."""
        why = self.mismatch(args, kwargs)
        if why is not None:
            raise ValueError(why)
        bindings: dict[sympy.Symbol, int] = {}
        leaves, _ = self._leaves(args, kwargs)
        for leaf, x in zip(self.in_leaves, leaves):
            if isinstance(leaf, TensorLeaf):
                for d, n in zip(self.input_types[leaf.index].shape, x.shape):
                    if isinstance(d, sympy.Symbol):
                        bindings[d] = int(n)
        return bindings

    def _check_leaf(self, path: str, leaf: InLeaf, x: Any, bindings: dict[sympy.Symbol, int],
                    pending: list[tuple[str, sympy.Expr, int]]) -> Optional[str]:
        if isinstance(leaf, ConstLeaf):
            if not _same_constant(leaf.value, x):
                return f"{path} is {x!r}, but the capture specialised on {leaf.value!r}"
            return None
        if isinstance(leaf, ParamLeaf):
            return None if isinstance(x, torch.Tensor) else f"{path} should be the tensor {leaf.name}, got {x!r}"
        if isinstance(leaf, SymLeaf):
            if not isinstance(x, int):
                return f"{path} should be an int (the size {leaf.expr}), got {type(x).__name__}"
            pending.append((path, leaf.expr, x))
            return None
        v = self.input_types[leaf.index]
        if not isinstance(x, torch.Tensor):
            return f"{path} should be a tensor like {v}, got {type(x).__name__}"
        if x.dtype != v.dtype:
            return f"{path} has dtype {x.dtype}, the capture has {v}"
        if x.dim() != v.rank:
            return f"{path} has shape {tuple(x.shape)}, the capture has rank {v.rank} ({v})"
        if x.device != self.devices[leaf.index]:
            return f"{path} is on {x.device}, the capture was made on {self.devices[leaf.index]}"
        for i, (d, n) in enumerate(zip(v.shape, x.shape)):
            n = int(n)
            if is_static(d):
                if int(d) != n:
                    return f"{path} has size {n} at dim {i}, the capture is static there ({v})"
            elif isinstance(d, sympy.Symbol):
                if bindings.setdefault(d, n) != n:
                    return f"{path} dim {i} is {d}={n}, but {d}={bindings[d]} elsewhere in the call"
            else:
                pending.append((f"{path} dim {i}", d, n))
        return None

    def _check_symbols(self, bindings: dict[sympy.Symbol, int], pending: list[tuple[str, sympy.Expr, int]]
                       ) -> Optional[str]:
        for s, n in bindings.items():
            lo, hi = self.ranges.get(s, (1, None))
            if n < lo or (hi is not None and n > hi):
                upper = "" if hi is None else f" and <= {hi}"
                return f"{s}={n} is outside the range the capture is valid for (>= {lo}{upper})"
        for where, d, n in pending:
            free = [s for s in d.free_symbols if s not in bindings]
            if len(free) == 1:
                sol = [r for r in sympy.solve(sympy.Eq(d, n), free[0]) if r.is_integer and r > 0]
                if len(sol) == 1:
                    bindings[free[0]] = int(sol[0])
            value = d.xreplace({s: sympy.Integer(v) for s, v in bindings.items()})
            if not value.is_Integer or int(value) != n:
                return f"{where} is {n}, but the capture needs {d} = {value}"
        for g in self.guards:
            if not g.free_symbols <= set(bindings):
                continue  # involves data-dependent sizes: checked when the graph runs
            if g.xreplace({s: sympy.Integer(v) for s, v in bindings.items()}) is not sympy.true:
                return f"the capture assumed {g}, which does not hold for {_fmt_bindings(bindings)}"
        return None


def _same_constant(captured: Any, x: Any) -> bool:
    if isinstance(x, torch.Tensor):
        if x.dim() != 0 or isinstance(captured, torch.Tensor):
            return False
        return bool(x.item() == captured)
    return type(x) is type(captured) and x == captured


def _reorder_like(kwargs: dict[str, Any], in_spec: pytree.TreeSpec) -> dict[str, Any]:
    """The same kwargs in the order the capture saw them (dict order is part of a pytree spec)."""
    try:
        kw_spec = in_spec.child(1)
        keys = list(kw_spec.context)
    except (AttributeError, IndexError, TypeError):
        return kwargs
    if set(keys) != set(kwargs):
        return kwargs
    return {k: kwargs[k] for k in keys}


def leaf_paths(spec: pytree.TreeSpec, call: bool = True) -> list[str]:
    """Readable names of the leaves for messages: ``kwargs['input_ids']`` for a call's ``(args, kwargs)``
    tree, ``output.logits`` for anything else (``call=False``)."""
    try:
        tree = pytree.tree_unflatten(list(range(spec.num_leaves)), spec)
        with_path, _ = pytree.tree_flatten_with_path(tree)
        out = []
        for path, _leaf in with_path:
            text = pytree.keystr(path)
            if not call:
                text = "output" + text
            elif text.startswith("[0]"):
                text = "args" + text[3:]
            elif text.startswith("[1]"):
                text = "kwargs" + text[3:]
            out.append(text)
        return out
    except Exception:  # an exotic node type that cannot be rebuilt from ints: fall back to positions
        return [f"leaf {i}" for i in range(spec.num_leaves)]


def _fmt_bindings(bindings: dict[sympy.Symbol, int]) -> str:
    return ", ".join(f"{s}={v}" for s, v in sorted(bindings.items(), key=lambda kv: kv[0].name))
