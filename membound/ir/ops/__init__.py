"""The op registry: every IR op is declared exactly once, here or in a sibling module.

A declaration (:class:`OpDef`) holds the op's signature (inputs and attributes with defaults), its
type rule, its cost (FLOPs and bytes as sympy expressions of the dims) and a torch reference
implementation. The verifier, the reference backend and the cost model all read that one entry.

    define_op(
        "silu", inputs=("x",), kind="elementwise",
        infer=same_as_input,
        reference=lambda x: torch.nn.functional.silu(x),
        flops=per_output(4),
    )

Input names ending in ``?`` are optional (trailing); one input name starting with ``*`` takes any
number of values (``cat``). Attribute defaults of ``REQUIRED`` must be given.

An op also declares its *traits*: what passes, the cost model and the backends may assume about it
(xdsl-style, instead of private lists of op names in each of them). ``ops_with("commutative")`` lists
the ops that have one:

    ============== =============================================================================
    commutative    binary; swapping the operands changes neither the result nor its dtype
    positionwise   each position of the result (an index over every dim but the last) depends only
                   on the same position of input 0; the other inputs do not vary with position
                   (weights, broadcast scalars). A bool, or a test on the attributes
                   (``layer_norm`` only when it normalises the last dim alone). Default: elementwise
    row_reduction  reduces or scans input 0 along one axis, each row on its own (``sum``, ``softmax``,
                   ``rms_norm``...): what a row kernel computes
    gather         the input whose elements the op picks, at positions read from its other inputs
    source         reads no tensor: every element is computed from the attributes and its index
    sink           writes its values input into a state buffer, in place (``cache_write``)
    view           kind "view": the result is its input read through an index map (no data moves)
    tensor_core    runs on tensor cores in a low precision. Default: kinds matmul/attention/quant/moe
    eager_class    the measured library kernel class eager torch runs it with (``"gemv"``...)
    reduces        the dims of input 0 whose elements the op mixes into one result (a reduction,
                   scan, normalisation or sort): ``reduces(attrs, rank) -> sorted dims``
    lift           how the attributes change when every input gains a new leading (batch) dim:
                   ``lift(attrs, rank_in, lead) -> attrs``; None when a pass may not do that
    ============== =============================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence, Union

import sympy

from membound.ir.types import TensorType, as_dim

REQUIRED = object()

InferFn = Callable[..., Union[TensorType, Sequence[TensorType]]]
CostFn = Callable[[Sequence[TensorType], Sequence[TensorType], dict[str, Any]], sympy.Expr]
# (attrs, rank of input 0, size of the new leading dim) -> the attrs of the op on the lifted inputs
LiftFn = Callable[[dict[str, Any], int, sympy.Expr], dict[str, Any]]
AttrTest = Callable[[dict[str, Any]], bool]
# (attrs, rank of input 0) -> the dims of input 0 the op mixes, sorted
ReducesFn = Callable[[dict[str, Any], int], tuple[int, ...]]

KINDS = ("elementwise", "reduction", "view", "matmul", "attention", "memory", "index", "creation",
         "routing", "state", "quant", "moe", "opaque", "composite")
# the default of the ``tensor_core`` trait
_TENSOR_CORE_KINDS = ("matmul", "attention", "quant", "moe")
TRAITS = ("commutative", "positionwise", "row_reduction", "gather", "source", "sink", "view", "tensor_core",
          "eager_class", "reduces", "lift")


def default_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Each input read once and each output written once: the unfused lower bound."""
    total: sympy.Expr = sympy.Integer(0)
    for t in list(ins) + list(outs):
        total += t.nbytes()
    return total


def zero_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    return sympy.Integer(0)


def per_output(k: int) -> CostFn:
    """FLOPs = k per output element (elementwise ops)."""

    def flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
        return k * outs[0].numel()

    return flops


def per_input(k: int) -> CostFn:
    """FLOPs = k per element of the first input (reductions)."""

    def flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
        return k * ins[0].numel()

    return flops


MAX_INFER_MEMO = 4096  # memoised type-rule results per op


@dataclass(frozen=True)
class OpDef:
    name: str
    inputs: tuple[str, ...]
    attrs: dict[str, Any]
    infer: InferFn
    reference: Callable[..., Any]
    kind: str
    flops: CostFn = zero_flops
    bytes: CostFn = default_bytes
    doc: str = ""
    # ops with effects (state writes) are never removed by DCE or merged by CSE
    side_effects: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    # ---- traits (see the module docstring) ----
    commutative: bool = False
    positionwise: Union[bool, AttrTest] = False
    row_reduction: bool = False
    gather: Optional[int] = None
    source: bool = False
    sink: bool = False
    tensor_core: bool = False
    eager_class: Optional[str] = None
    reduces: Optional[ReducesFn] = None
    lift: Optional[LiftFn] = None
    # type rules are pure: results memoised per (input types, attrs); verification re-asks every
    # node after every pass, and a 32-layer model asks the same few questions thousands of times
    _inferred: dict[Any, tuple[TensorType, ...]] = field(default_factory=dict, repr=False, compare=False)

    @property
    def view(self) -> bool:
        return self.kind == "view"

    def is_positionwise(self, attrs: dict[str, Any]) -> bool:
        """The ``positionwise`` trait for a node with these attributes."""
        p = self.positionwise
        return bool(p(attrs)) if callable(p) else bool(p)

    # ---- signature ----------------------------------------------------------------------------
    @property
    def variadic(self) -> bool:
        return any(n.startswith("*") for n in self.inputs)

    def arity(self) -> tuple[int, Optional[int]]:
        """(min, max) number of inputs; max None when variadic."""
        if self.variadic:
            fixed = [n for n in self.inputs if not n.startswith("*")]
            return len(fixed), None
        required = [n for n in self.inputs if not n.endswith("?")]
        return len(required), len(self.inputs)

    def check_arity(self, n: int) -> None:
        lo, hi = self.arity()
        if n < lo or (hi is not None and n > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{hi if hi is not None else 'n'}"
            raise TypeError(f"op {self.name} takes {want} inputs ({', '.join(self.inputs)}), got {n}")

    def normalize_attrs(self, attrs: dict[str, Any]) -> dict[str, Any]:
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise TypeError(f"op {self.name} has no attribute(s) {sorted(unknown)}; "
                            f"it takes {sorted(self.attrs) or 'none'}")
        out: dict[str, Any] = {}
        for k, default in self.attrs.items():
            if k in attrs:
                out[k] = freeze_attr(attrs[k])
            elif default is REQUIRED:
                raise TypeError(f"op {self.name} needs attribute {k!r}")
            else:
                out[k] = default
        return out

    def infer_types(self, in_types: Sequence[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        self.check_arity(len(in_types))
        try:
            # attrs by repr: True == 1 and 1.0 == 1 hash alike but are different attributes
            key: Any = (tuple(in_types), repr(sorted(attrs.items(), key=lambda kv: kv[0])))
            hit = self._inferred.get(key)
        except TypeError:  # an unhashable attribute value: no memo
            key, hit = None, None
        if hit is not None:
            return list(hit)
        res = self.infer(*in_types, **attrs)
        out = [res] if isinstance(res, TensorType) else list(res)
        if key is not None and len(self._inferred) < MAX_INFER_MEMO:
            self._inferred[key] = tuple(out)
        return out

    def cost(self, in_types: Sequence[TensorType], out_types: Sequence[TensorType],
             attrs: dict[str, Any]) -> tuple[sympy.Expr, sympy.Expr]:
        """(FLOPs, bytes) as sympy expressions of the dims."""
        return sympy.sympify(self.flops(in_types, out_types, attrs)), sympy.sympify(
            self.bytes(in_types, out_types, attrs))


def freeze_attr(v: Any) -> Any:
    """Attributes are immutable and printable: lists become tuples, SymInts/ints in dims stay ints."""
    if isinstance(v, list):
        return tuple(freeze_attr(x) for x in v)
    if isinstance(v, tuple):
        return tuple(freeze_attr(x) for x in v)
    if isinstance(v, sympy.Expr):
        return int(v) if v.is_Integer else as_dim(v)
    return v


_REGISTRY: dict[str, OpDef] = {}


def define_op(name: str, *, inputs: Sequence[str], infer: InferFn, reference: Callable[..., Any], kind: str,
              attrs: Optional[dict[str, Any]] = None, flops: CostFn = zero_flops, bytes: CostFn = default_bytes,
              doc: str = "", side_effects: bool = False, commutative: bool = False,
              positionwise: Union[bool, AttrTest, None] = None, row_reduction: bool = False,
              gather: Optional[int] = None, source: bool = False, sink: bool = False,
              tensor_core: Optional[bool] = None, eager_class: Optional[str] = None,
              reduces: Optional[ReducesFn] = None, lift: Optional[LiftFn] = None, **extra: Any) -> OpDef:
    """Declare an op. Declaring the same name twice is an error (one op, one place)."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already declared")
    if kind not in KINDS:
        raise ValueError(f"op {name!r}: unknown kind {kind!r}; expected one of {KINDS}")
    if commutative and len(inputs) != 2:
        raise ValueError(f"op {name!r}: only a binary op can be commutative (inputs {tuple(inputs)})")
    if gather is not None and not 0 <= gather < len(inputs):
        raise ValueError(f"op {name!r}: gather={gather} is not an input position of {tuple(inputs)}")
    od = OpDef(name, tuple(inputs), dict(attrs or {}), infer, reference, kind, flops, bytes, doc, side_effects,
               dict(extra), commutative=commutative,
               positionwise=kind == "elementwise" if positionwise is None else positionwise,
               row_reduction=row_reduction, gather=gather, source=source, sink=sink,
               tensor_core=kind in _TENSOR_CORE_KINDS if tensor_core is None else tensor_core,
               eager_class=eager_class, reduces=reduces, lift=lift)
    _REGISTRY[name] = od
    _TRAIT_SETS.clear()
    return od


def get_op(name: str) -> OpDef:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown IR op {name!r}") from None


def has_op(name: str) -> bool:
    _load_families()
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    _load_families()
    return dict(_REGISTRY)


_TRAIT_SETS: dict[str, frozenset[str]] = {}


def ops_with(trait: str) -> frozenset[str]:
    """The names of the ops that have ``trait`` (a truthy value; ``gather=0`` counts)."""
    if trait not in TRAITS:
        raise ValueError(f"unknown op trait {trait!r}; traits are {TRAITS}")
    _load_families()
    hit = _TRAIT_SETS.get(trait)
    if hit is None:
        hit = frozenset(n for n, od in _REGISTRY.items()
                        if getattr(od, trait) is not None and getattr(od, trait) is not False)
        _TRAIT_SETS[trait] = hit
    return hit


_loaded = False


def _load_families() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib

    for mod in _FAMILIES:
        importlib.import_module(f"membound.ir.ops.{mod}")


# one module per op family; each calls define_op at import time
_FAMILIES = ("elementwise", "reduce", "matmul", "attention", "memory", "creation", "index", "routing",
             "kv_cache", "opaque", "quant", "moe")
