"""The Triton backend's lowering registry: one entry per IR op saying how the backend runs it.

An entry names the op's *kind*, what it supports, and how it is emitted:

    ============ ====================================================================================
    pointwise    computed per element of a flat iteration space and fused with its neighbours; emitted
                 by ``expr`` (an expression over its operands, ``lower_pointwise``) or ``at`` (index
                 arithmetic: ``cat`` and the gathers, ``lower_index``)
    row          a reduction or scan along the last dim, one program per row (``row``: ``lower_row``),
                 with pointwise prologue and epilogue
    view         never a kernel: folded into the index arithmetic of the kernels that read through it
    source       computed inline from the index wherever it is read (``at``)
    sink         a store of a pointwise kernel into a graph state buffer, in place (``cache_write``)
    library      always a call: membound's kernel library (``library``), or the op's torch reference
    ============ ====================================================================================

What it supports: every dtype in ``values.TL_DTYPE`` unless ``dtypes="float"`` (a floating result),
and ``check``, a test on the node that returns why it is *not* supported (None when it is). A node its
entry does not support, and an op without an entry, runs as a call: ``library`` names the launcher in
``kernels/`` (``"norm:rms_norm"``: module ``kernels.norm``, function ``rms_norm``) that runs it then,
else the op's torch reference runs. ``static_weight`` is the input index of a library op's weight (the
launch may read a parameter there before the PDL wait).

Views and sources come from the op traits (``view``, ``source``) without an entry of their own; the
views listed here also keep a per-row value on its row (``keeps_row``). Adding a float unary op to the
backend is one line in ``TABLE``:

    pointwise("exp", template("tl.exp({0})"), dtypes="float"),

``classify(node)`` is what the partitioner asks; ``refusal(node)`` says why a node is a call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from membound.backends.triton.lower_index import AtWriter, emit_cat, emit_gather, emit_source
from membound.backends.triton.lower_pointwise import (
    ExprWriter,
    arith,
    extremum,
    pow_refusal,
    template,
    write_bitwise_not,
    write_cast,
    write_clamp,
    write_div,
    write_floor,
    write_gelu,
    write_pow,
    write_reciprocal,
    write_softplus,
    write_where,
)
from membound.backends.triton.lower_row import (
    RowWriter,
    extremum_refusal,
    write_cumsum,
    write_extremum,
    write_layer_norm,
    write_rms_norm,
    write_softmax,
    write_sum_mean,
)
from membound.backends.triton.values import TL_DTYPE
from membound.ir.graph import Node
from membound.ir.ops import get_op, has_op
from membound.ir.types import promote

KINDS = ("pointwise", "row", "view", "source", "sink", "library")
# what classify() returns: the generated kinds, and "call" for everything run by a library kernel or torch
CLASSES = ("pointwise", "row", "view", "source", "sink", "call")
# a row kernel keeps one whole row in registers: longer static rows go to a call
MAX_ROW = 32768

Check = Callable[[Node], Optional[str]]


@dataclass(frozen=True)
class Lowering:
    """How the Triton backend runs ``op`` (see the module docstring)."""

    op: str
    kind: str
    expr: Optional[ExprWriter] = None
    at: Optional[AtWriter] = None
    row: Optional[RowWriter] = None
    dtypes: str = "any"  # "any" (every dtype Triton has) or "float" (a floating-point result)
    check: Optional[Check] = None
    # pointwise: the dtype operands are converted to before ``expr``: "out" (the result's), "promote"
    # (the promoted operands', for comparisons), "bool", or "raw" (``expr`` gets the unconverted values)
    operands: str = "out"
    per_element: bool = False  # row: one result per element of the row (softmax), not one per row (sum)
    reindexes: bool = False  # pointwise: reads its inputs off its own position (cat, gathers)
    keeps_row: bool = False  # view: a per-row value stays on its row (allowed in row kernels)
    library: Optional[str] = None  # "module:function" in kernels/, the launcher when it runs as a call
    static_weight: Optional[int] = None  # library: the input index of the weight

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"lowering of {self.op}: kind {self.kind!r} is not one of {KINDS}")
        emitters = {"pointwise": self.expr or self.at, "row": self.row, "source": self.at}
        if self.kind in emitters and emitters[self.kind] is None:
            raise ValueError(f"lowering of {self.op}: a {self.kind} entry needs a writer (expr/at/row)")


def pointwise(op: str, expr: ExprWriter, *, dtypes: str = "any", operands: str = "out",
              check: Optional[Check] = None) -> Lowering:
    return Lowering(op, "pointwise", expr=expr, dtypes=dtypes, operands=operands, check=check)


def indexed(op: str, at: AtWriter, *, library: Optional[str] = None) -> Lowering:
    """A pointwise op emitted as index arithmetic that reads its inputs elsewhere (cat, gathers)."""
    return Lowering(op, "pointwise", at=at, check=_not_scalar, reindexes=True, library=library)


def row(op: str, writer: RowWriter, *, per_element: bool = False, check: Optional[Check] = None,
        library: Optional[str] = None) -> Lowering:
    return Lowering(op, "row", row=writer, per_element=per_element, check=check, library=library)


def library(op: str, launcher: str, *, static_weight: Optional[int] = None) -> Lowering:
    return Lowering(op, "library", library=launcher, static_weight=static_weight)


def _not_scalar(node: Node) -> Optional[str]:
    return "a 0-d result" if node.results[0].rank == 0 else None


def cache_sink_refusal(node: Node) -> Optional[str]:
    """Why a ``cache_write(cache, values, positions) {dim}`` is not a store a pointwise kernel over
    ``values`` can make, or None: ``cache[i with i[dim] = positions[i[dim]]] = values[i]`` (shared
    ``[S]`` positions, as ``index_copy_``) or ``positions[i[0], i[dim]]`` (per-row ``[B, S]``, as the
    reference's scatter, which means that only for dim > 0). The cache must be a graph state buffer:
    nothing else aliases it, and the schedule orders its readers around the write."""
    cache, values, positions = node.inputs
    if cache.kind != "state":
        return "the cache is not a graph state buffer"
    if values.rank == 0 or cache.rank != values.rank:
        return "the values do not have the cache's rank"
    if cache.dtype != values.dtype:
        return "the values do not have the cache's dtype"
    d = node.attrs["dim"] % cache.rank
    if not (positions.rank == 1 or (positions.rank == 2 and d != 0)):
        return "positions are neither [S] nor per-row [B, S] along a dim > 0"
    slots, entries = cache.shape[d], values.shape[d]
    if slots.is_Integer and not (entries.is_Integer and int(entries) <= int(slots)):
        # a ring cache of W slots in a prefill of S > W tokens: positions p and p + W share a slot, and
        # parallel stores would leave it to chance; the library kernel writes them in order
        return f"more new entries ({entries}) than cache slots ({slots}) may share a slot"
    return None


def row_refusal(node: Node) -> Optional[str]:
    """A reduction over the last dim only, with a row short enough to keep in registers."""
    x = node.inputs[0]
    if x.rank == 0:
        return "a 0-d input"
    reduces = get_op(node.op).reduces
    if reduces is None or reduces(node.attrs, x.rank) != (x.rank - 1,):
        return "it does not reduce the last dim alone"
    n = x.shape[-1]
    if n.is_Integer and int(n) > MAX_ROW:
        return f"rows of {n} > {MAX_ROW} elements"
    return None


def _both(*checks: Check) -> Check:
    def check(node: Node) -> Optional[str]:
        for c in checks:
            reason = c(node)
            if reason is not None:
                return reason
        return None

    return check


# ---------------------------------------------------------------------------------------------
# the table: one entry per op
# ---------------------------------------------------------------------------------------------
_EXTREMUM_ROW = _both(row_refusal, extremum_refusal)

TABLE: list[Lowering] = [
    # ---- pointwise: float math ----
    pointwise("exp", template("tl.exp({0})"), dtypes="float"),
    pointwise("log", template("tl.log({0})"), dtypes="float"),
    # near 0 by the series' first terms, where e**x - 1 and log(1 + x) would cancel
    # (|x| < 0.01: four terms, relative error < 1e-10; past it the cancellation costs < 1.2e-5 relative in fp32)
    pointwise("expm1", template("tl.where(tl.abs({0}) < 0.01, {0} * (1.0 + {0} * (0.5 + {0} * (1.0 / 6.0 + {0} / "
                                "24.0))), tl.exp({0}) - 1.0)"), dtypes="float"),
    pointwise("log1p", template("tl.where(tl.abs({0}) < 0.01, {0} * (1.0 - {0} * (0.5 - {0} * (1.0 / 3.0 - {0} / "
                                "4.0))), tl.log(1.0 + {0}))"), dtypes="float"),
    pointwise("sqrt", template("tl.sqrt({0})"), dtypes="float"),
    pointwise("rsqrt", template("tl.rsqrt({0})"), dtypes="float"),
    pointwise("sin", template("tl.sin({0})"), dtypes="float"),
    pointwise("cos", template("tl.cos({0})"), dtypes="float"),
    pointwise("erf", template("tl.erf({0})"), dtypes="float"),
    pointwise("sigmoid", template("tl.sigmoid({0})"), dtypes="float"),
    pointwise("silu", template("{0} * tl.sigmoid({0})"), dtypes="float"),
    pointwise("tanh", template("_tanh({0})", "_tanh"), dtypes="float"),
    pointwise("reciprocal", write_reciprocal, dtypes="float"),
    pointwise("gelu", write_gelu, dtypes="float"),
    pointwise("softplus", write_softplus, dtypes="float"),
    pointwise("pow", write_pow, dtypes="float", check=pow_refusal),
    # ---- pointwise: any dtype ----
    pointwise("neg", template("-{0}")),
    pointwise("abs", template("tl.abs({0})")),
    pointwise("relu", template("tl.where({0} < 0, 0, {0})")),
    pointwise("floor", write_floor),
    pointwise("clamp", write_clamp),
    pointwise("add", arith("+", on_bool="|")),
    pointwise("sub", arith("-", on_bool="&")),
    pointwise("mul", arith("*", on_bool="&")),
    pointwise("div", write_div),
    pointwise("remainder", template("_remainder({0}, {1})", "_remainder")),
    pointwise("maximum", extremum("tl.maximum")),
    pointwise("minimum", extremum("tl.minimum")),
    pointwise("eq", template("{0} == {1}"), operands="promote"),
    pointwise("ne", template("{0} != {1}"), operands="promote"),
    pointwise("lt", template("{0} < {1}"), operands="promote"),
    pointwise("le", template("{0} <= {1}"), operands="promote"),
    pointwise("gt", template("{0} > {1}"), operands="promote"),
    pointwise("ge", template("{0} >= {1}"), operands="promote"),
    pointwise("logical_not", template("{0} == 0"), operands="bool"),
    pointwise("logical_and", template("{0} & {1}"), operands="bool"),
    pointwise("logical_or", template("{0} | {1}"), operands="bool"),
    pointwise("bitwise_not", write_bitwise_not),
    pointwise("bitwise_and", template("{0} & {1}")),
    pointwise("bitwise_or", template("{0} | {1}")),
    pointwise("where", write_where, operands="raw"),
    pointwise("cast", write_cast, operands="raw"),
    # ---- pointwise, reading their inputs elsewhere ----
    indexed("cat", emit_cat),
    indexed("index", emit_gather),
    indexed("gather", emit_gather),
    indexed("embedding", emit_gather, library="embedding:embedding"),
    # ---- row reductions ----
    row("sum", write_sum_mean, check=row_refusal),
    row("mean", write_sum_mean, check=row_refusal),
    row("amax", write_extremum, check=_EXTREMUM_ROW),
    row("amin", write_extremum, check=_EXTREMUM_ROW),
    row("cumsum", write_cumsum, per_element=True, check=row_refusal),
    row("softmax", write_softmax, per_element=True, check=row_refusal),
    row("log_softmax", write_softmax, per_element=True, check=row_refusal),
    row("rms_norm", write_rms_norm, per_element=True, check=row_refusal, library="norm:rms_norm"),
    row("layer_norm", write_layer_norm, per_element=True, check=row_refusal),
    # ---- views that keep a per-row value on its row (the other views come from the op trait) ----
    Lowering("unsqueeze", "view", keeps_row=True),
    Lowering("squeeze", "view", keeps_row=True),
    Lowering("expand", "view", keeps_row=True),
    Lowering("reshape", "view", keeps_row=True),
    # ---- sinks ----
    Lowering("cache_write", "sink", check=cache_sink_refusal, library="cache_write:cache_write"),
    # ---- library kernels ----
    library("linear", "linear:linear", static_weight=1),
    library("gated_linear", "linear:gated_linear", static_weight=2),
    library("linear_glu", "linear:linear_glu", static_weight=1),
    library("linear_rope", "linear:linear_rope", static_weight=1),
    library("rms_norm_linear", "linear:rms_norm_linear", static_weight=2),
    library("linear_add", "linear:linear_add", static_weight=1),
    library("gated_linear_add", "linear:gated_linear_add", static_weight=2),
    library("rms_norm_linear_sumsq", "linear:rms_norm_linear_sumsq", static_weight=3),
    library("rms_norm_linear_rope_sumsq", "linear:rms_norm_linear_rope_sumsq", static_weight=3),
    library("rms_norm_linear_glu_sumsq", "linear:rms_norm_linear_glu_sumsq", static_weight=3),
    library("linear_add_sumsq", "linear:linear_add_sumsq", static_weight=1),
    library("gated_linear_add_sumsq", "linear:gated_linear_add_sumsq", static_weight=2),
    library("quant_linear", "quant_matmul:quant_linear", static_weight=1),
    library("quant_gated_linear", "quant_matmul:quant_gated_linear", static_weight=2),
    library("attention", "flash_attention:attention"),
    # (the group offsets read on the device: no host synchronisation, so a step holding one can be a CUDA graph)
    library("grouped_mm", "grouped_mm:grouped_mm"),
    library("linear_scan", "scan:linear_scan"),
    library("linear_attention", "scan:linear_attention"),
    # (writes the last state into its state buffer, in place)
    library("linear_attention_state", "scan:linear_attention_state"),
    library("cached_attention", "decode_attention:cached_attention"),
    # (its weights must be parameters: the kernel reads them before the PDL wait, fuse-attention-block checks)
    library("attention_block", "attn_block:attention_block"),
    # (the same: its weights must be parameters, fuse-mlp-block checks)
    library("mlp_block", "mlp_block:mlp_block"),
    library("moe", "moe:moe"),
    library("moe_experts", "moe:moe_experts"),
    library("quant_moe", "moe:quant_moe"),
    library("quant_moe_experts", "moe:quant_moe_experts"),
]

LOWERINGS: dict[str, Lowering] = {}
for _entry in TABLE:
    if _entry.op in LOWERINGS:
        raise ValueError(f"two Triton lowerings of {_entry.op}")
    LOWERINGS[_entry.op] = _entry


_FROM_TRAITS: dict[str, Optional[Lowering]] = {}


def lowering_for(op: str) -> Optional[Lowering]:
    """The entry of ``op``: its row in ``TABLE``, else a view or source from the op's traits, else None
    (the op runs as its torch reference)."""
    entry = LOWERINGS.get(op)
    if entry is not None or not has_op(op):
        return entry
    if op not in _FROM_TRAITS:
        od = get_op(op)
        _FROM_TRAITS[op] = Lowering(op, "view") if od.view else \
            Lowering(op, "source", at=emit_source) if od.source else None
    return _FROM_TRAITS[op]


def refusal(node: Node) -> Optional[str]:
    """Why the generated code does not compute ``node`` (it runs as a call), or None when it does."""
    entry = lowering_for(node.op)
    if entry is None:
        return "no Triton lowering"
    if entry.kind == "library":
        return "runs as a library kernel" if entry.library is not None else "runs as its torch reference"
    if entry.kind == "view":
        return None
    values = list(node.inputs) + ([] if entry.kind == "sink" else list(node.results))
    bad = [v for v in values if v.dtype not in TL_DTYPE]
    if bad:
        return f"dtype {bad[0].dtype} has no Triton type here"
    if entry.dtypes == "float" and not node.results[0].dtype.is_floating_point:
        return f"a {node.results[0].dtype} result (the lowering is for floats)"
    return entry.check(node) if entry.check is not None else None


def classify(node: Node) -> str:
    """One of ``CLASSES``: the entry's kind where it supports ``node``, else ``"call"``."""
    entry = lowering_for(node.op)
    if entry is None or entry.kind == "library" or refusal(node) is not None:
        return "call"
    return entry.kind


def operand_dtype(node: Node, entry: Lowering) -> torch.dtype:
    """The dtype the operands of a pointwise ``node`` are converted to before its expression."""
    if entry.operands == "promote":
        return promote(*[(v.dtype, v.rank) for v in node.inputs])
    if entry.operands == "bool":
        return torch.bool
    return node.results[0].dtype


def entries(kind: str) -> list[Lowering]:
    """The table's entries of one kind."""
    return [e for e in TABLE if e.kind == kind]


def library_launchers() -> dict[str, str]:
    """Op -> ``"module:function"`` of its launcher in ``kernels/``, for every op that has one."""
    return {e.op: e.library for e in TABLE if e.library is not None}


def static_weight_input(op: str) -> Optional[int]:
    entry = LOWERINGS.get(op)
    return entry.static_weight if entry is not None else None


# derived: what the partitioner asks about (never a list of op names of its own)
EMITTED_GATHERS = tuple(e.op for e in TABLE if e.reindexes and has_op(e.op) and get_op(e.op).gather is not None)
PER_ELEMENT_REDUCTIONS = tuple(e.op for e in entries("row") if e.per_element)
ROW_VIEWS = tuple(e.op for e in entries("view") if e.keeps_row)
REINDEXING = tuple(e.op for e in TABLE if e.reindexes)
