"""Emit the Triton source of one fused kernel.

Every value is computed at an index (see ``indexing``): the emitter starts from each stored output at
the kernel's own index and recurses through members (computed), views (index maps), sources (inline
expressions) down to loads of the kernel's inputs. ``(value, index)`` pairs are memoised, so a value
read twice at the same place is computed once, and a value read through two different views (RoPE's
``rotate_half``) is computed at both indices.

Pointwise kernels: ``offs = pid * BLOCK + arange(BLOCK)`` over the flattened iteration shape, whose
per-dim indices ``i0, i1...`` come from div/mod by the sizes. Row kernels: one program per row
(``r0, r1...`` from the program id), ``cols = arange(BLOCK_N)`` along the reduced dim, reductions with
``tl.sum``/``tl.max`` over the masked row.

A sink (``cache_write`` member) stores its values at the kernel's index into the cache, the written
dim's index replaced by the position read there (64-bit addresses: caches are the biggest tensors):

    t9 = tl.load(positions_ptr + i0 * positions_stride0, mask=mask, other=0)  # %positions
    tl.store(cache_k_0_ptr + i0.to(tl.int64) * cache_k_0_stride0 + ... + t9 * cache_k_0_stride2, t8,
             mask=mask & (t9 >= 0) & (t9 < T))  # %35 = cache_write into %cache.k.0

Parameter loads go before the PDL wait. A parameter is never written by a kernel, so a load of one (the
norm's weight of an add + RMSNorm row kernel, a convolution's taps) needs no earlier kernel's writes: the
generated kernel issues it, with the index lines it reads, ahead of ``gdc_wait`` (:func:`split_before_wait`),
and the round trip overlaps the previous kernel's tail instead of following the row's reduction. H100, HF Llama
decode step (graph replay, two runs each, ``profile_step-...-session29-{late,early}*``): 1.24B batch 1 1063.0 / 1064.2
against 1062.2 / 1051.7 us, batch 8 1239.2 / 1196.6 against 1237.4 / 1185.0; 8B 5397.5 -> 5380.7 (b1), 5768.5 ->
5752.4 (b8). Small: at batch 1 an add + RMSNorm kernel's time after the GEMV before it fell from 4.4 to 1.6 us, and
the GEMV after it took that time back (it streams its early weight slices meanwhile; the HBM was not idle). A row
kernel's PDL signal moved after its first store (so the next GEMV's early loads do not queue before the row's)
was slower (1.24B b1 1072.3 us) and was not kept.

Sections kernels (horizontal fusion) split the program ids: ``if pid < end0:`` runs section 0 as above,
``elif pid < end1:`` section 1 from ``(pid - end0) * BLOCK``, and so on; every temporary has a name of
its own across sections (Triton merges the branches' variables by name).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import sympy
import torch

from membound.backends.triton.bounds import device_asserts
from membound.backends.triton.facts import GraphFacts, Kernel, shapes_equal
from membound.backends.triton.indexing import (
    ZERO,
    Index,
    broadcast_index,
    contiguous_strides,
    expr_code,
    index_var,
    linear_offset,
    view_input_index,
)
from membound.backends.triton.lowering import Lowering, lowering_for, operand_dtype
from membound.backends.triton.values import TL_DTYPE, Val, compute_dtype, convert, literal_code
from membound.ir.graph import Node, Value
from membound.ir.printer import format_node
from membound.ir.types import numel

# the first lines of every generated kernel (see membound.backends.triton.kernels._launch.pdl)
PDL_PROLOGUE = ["if USE_PDL == 2:  # the next kernel may launch now; earlier writes are visible after the wait",
                "    gdc_launch_dependents()", "    gdc_wait()",
                "elif USE_PDL:  # earlier kernels' writes are visible after the wait", "    gdc_wait()",
                "    gdc_launch_dependents()"]


class CodegenError(RuntimeError):
    """A kernel could not be emitted (a partitioner/emitter mismatch: please report the graph)."""


@dataclass
class KernelSource:
    """A kernel's text and what its launch passes: pointers (inputs then outputs), the strides of the
    ``strided`` values (``*x.stride()``), the size symbols, and the block constexpr's name."""

    kernel: Kernel
    text: str
    pointers: list[Value]
    strided: list[Value]
    sizes: list[sympy.Symbol]
    block: str
    helpers: set[str] = field(default_factory=set)


class KernelEmitter:
    def __init__(self, kernel: Kernel, facts: GraphFacts, name_of: Callable[[Value], str],
                 contiguous: Callable[[Value], bool]) -> None:
        self.k = kernel  # the kernel being emitted: the launched one, or one of its sections
        self.launched = kernel
        self.facts = facts
        self.name_of = name_of
        self.contiguous = contiguous
        self.members = {id(m) for m in kernel.members}
        self.lines: list[str] = []
        self.memo: dict[tuple[int, Index], Val] = {}
        self.vector_syms: set[sympy.Symbol] = set()
        self.index_syms: set[sympy.Symbol] = set()
        self.sizes: set[sympy.Symbol] = set()
        self.helpers: set[str] = set()
        self.strided: list[Value] = []
        self.counter = 0
        self.cols: Optional[sympy.Symbol] = None
        self.rows: tuple[sympy.Expr, ...] = ()
        self.canonical: Index = ()

    # ---- small helpers ------------------------------------------------------------------------
    def tmp(self, prefix: str = "t") -> str:
        name = f"{prefix}{self.counter}"
        self.counter += 1
        return name

    def code(self, e: sympy.Expr) -> str:
        e = sympy.sympify(e)
        self.sizes |= {s for s in e.free_symbols if s not in self.index_syms}
        return expr_code(e)

    def is_vector(self, e: sympy.Expr) -> bool:
        return bool(sympy.sympify(e).free_symbols & self.vector_syms)

    def new_index(self, prefix: str, code: str, vector: bool) -> sympy.Symbol:
        s = index_var(self.tmp(prefix))
        self.index_syms.add(s)
        if vector:
            self.vector_syms.add(s)
        self.lines.append(f"{s.name} = {code}")
        return s

    def assign(self, code: str, dtype: torch.dtype, vector: bool, comment: str = "") -> Val:
        name = self.tmp()
        self.lines.append(f"{name} = {code}" + (f"  # {comment}" if comment else ""))
        return Val(name, compute_dtype(dtype), vector)

    # ---- setup ----------------------------------------------------------------------------------
    def setup_pointwise(self, first: Optional[str] = None) -> Index:
        """``first``: the program id this kernel's range starts at (a section: ``pid`` is already read);
        None for a kernel of its own."""
        shape = self.k.shape
        if first is None:
            self.lines.append("pid = tl.program_id(0).to(INDEX_DTYPE)")
        start = "pid" if first in (None, "0") else f"(pid - {first})"
        self.lines.append(f"offs = {start} * BLOCK + tl.arange(0, BLOCK)")
        self.lines.append(f"mask = offs < {self.code(numel(shape)) if shape else '1'}")
        offs = index_var("offs")
        self.index_syms.add(offs)
        self.vector_syms.add(offs)
        return self.unflatten(offs, shape, "i", vector=True)

    def unflatten(self, flat: sympy.Symbol, shape: Sequence[sympy.Expr], prefix: str, vector: bool) -> Index:
        """Per-dim indices of a row-major flat index over ``shape`` (size-1 dims index 0)."""
        strides = contiguous_strides(shape)
        idx: list[sympy.Expr] = []
        live = [d for d in range(len(shape)) if shape[d] != 1]
        for d in range(len(shape)):
            if shape[d] == 1:
                idx.append(ZERO)
                continue
            e: sympy.Expr = flat if strides[d] == 1 else sympy.floor(flat / strides[d])
            if d != live[0]:
                e = sympy.Mod(e, shape[d])
            idx.append(self.new_index(prefix, self.code(e), vector) if len(live) > 1 else flat)
        return tuple(idx)

    def setup_row(self) -> Index:
        rows, n = self.k.shape[:-1], self.k.shape[-1]
        self.lines.append("row = tl.program_id(0).to(INDEX_DTYPE)")
        row = index_var("row")
        self.index_syms.add(row)
        ridx = self.unflatten(row, rows, "r", vector=False)
        self.lines += ["cols = tl.arange(0, BLOCK_N)", f"mask = cols < {self.code(n)}"]
        cols = index_var("cols")
        self.index_syms.add(cols)
        self.vector_syms.add(cols)
        self.cols = cols
        self.rows = tuple(ridx)
        return tuple(ridx) + (cols,)

    # ---- emission -------------------------------------------------------------------------------
    def emit(self, v: Value, idx: Index) -> Val:
        idx = tuple(sympy.sympify(i) for i in idx)
        key = (id(v), idx)
        if key in self.memo:
            return self.memo[key]
        node = v.producer
        if node is not None and self.facts.kind(node) == "view":
            val = self.emit(node.inputs[0], view_input_index(node, v, idx))
        elif node is not None and self.facts.kind(node) == "source":
            val = self.compute(node, idx)
        elif node is not None and id(node) in self.members:
            val = self.compute(node, idx)
        else:
            val = self.load(v, idx)
        self.memo[key] = val
        return val

    def load(self, v: Value, idx: Index) -> Val:
        if self.contiguous(v):
            strides = contiguous_strides(v.shape)
        else:
            if all(v is not x for x in self.strided):
                self.strided.append(v)
            base = self.name_of(v)
            strides = tuple(sympy.Symbol(f"{base}_stride{d}") for d in range(v.rank))
            self.index_syms.update(s for s in strides if isinstance(s, sympy.Symbol))
        off = linear_offset(idx, strides, v.shape)
        if self.contiguous(v) and shapes_equal(v.shape, self.k.shape) and tuple(idx) == self.canonical:
            # the kernel's own iteration order: the flat offset needs no div/mod
            off = index_var("offs") if self.k.layout == "pointwise" else (
                index_var("row") * self.k.shape[-1] + self.cols)  # type: ignore[operator]
        vector = self.is_vector(off)
        ptr = f"{self.name_of(v)}_ptr"
        addr = ptr if off == 0 else f"{ptr} + {self.code(off)}"
        text = f"tl.load({addr}, mask=mask, other=0)" if vector else f"tl.load({addr})"
        if v.dtype != compute_dtype(v.dtype):
            text += f".to({TL_DTYPE[compute_dtype(v.dtype)]})"
        return self.assign(text, v.dtype, vector, f"%{v.name}")

    def compute(self, node: Node, idx: Index) -> Val:
        """A member at ``idx``, as its lowering entry writes it."""
        entry = lowering_for(node.op)
        if entry is None:
            raise CodegenError(f"{self.k.name}: no Triton lowering for {node.op}; the partitioner should have "
                               "left it to a call")
        if entry.kind == "row":
            return self.reduction(node, entry, idx)
        if entry.at is not None:
            return entry.at(self, node, idx)
        assert entry.expr is not None
        out = node.results[0]
        args = [self.emit(v, broadcast_index(v.shape, out.shape, idx)) for v in node.inputs]
        operands = args if entry.operands == "raw" else [convert(x, operand_dtype(node, entry)) for x in args]
        text, helpers = entry.expr(node, operands)
        self.helpers |= helpers
        return self.assign(text, out.dtype, any(x.vector for x in args), _describe(node))

    def reduction(self, node: Node, entry: Lowering, idx: Index) -> Val:
        """A row reduction at ``idx``: on its row (one result per row), or on its lanes (``per_element``)."""
        out = node.results[0]
        if not entry.per_element:
            ok = [self.rows + ((ZERO,) if out.rank == len(self.rows) + 1 else ())]
            if out.rank == len(self.rows) + 1:
                ok.append(self.rows + (self.cols,))  # type: ignore[operator]
        else:
            ok = [self.rows + (self.cols,)]  # type: ignore[operator]
        want = ok[0]
        if tuple(idx) not in [tuple(w) for w in ok]:
            raise CodegenError(f"{self.k.name}: {node.op} %{out.name} read at {idx}, off its row {want}")
        x = self.emit(node.inputs[0], self.rows + (self.cols,))  # type: ignore[operator]
        assert entry.row is not None
        return entry.row(self, node, x, self.code(node.inputs[0].shape[-1]))

    # ---- stores and the whole kernel -------------------------------------------------------------
    def store(self, v: Value, idx: Index) -> None:
        val = self.emit(v, idx)
        ptr = f"{self.name_of(v)}_ptr"
        dt = TL_DTYPE[v.dtype]
        text = val.code if val.literal is None else literal_code(val.literal, v.dtype)
        if self.k.layout == "pointwise" or shapes_equal(v.shape, self.k.shape):
            block = "BLOCK" if self.k.layout == "pointwise" else "BLOCK_N"
            where = "offs" if self.k.layout == "pointwise" else f"row * {self.code(self.k.shape[-1])} + cols"
            if not val.vector:
                text = f"tl.full([{block}], {text}, {dt})" if val.literal is not None else \
                    f"tl.broadcast_to({text}, [{block}])"
            value = text if val.dtype == v.dtype and val.literal is None else f"({text}).to({dt})"
            self.lines.append(f"tl.store({ptr} + {where}, {value}, mask=mask)  # %{v.name}")
            return
        if val.vector:
            raise CodegenError(f"{self.k.name}: per-row value %{v.name} came out as a block")
        value = text if val.dtype == v.dtype and val.literal is None else f"tl.cast({text}, {dt})"
        self.lines.append(f"tl.store({ptr} + row, {value})  # %{v.name}")

    def store_sink(self, w: Node, idx: Index) -> None:
        """``cache_write(cache, values, positions) {dim}`` at ``idx`` of its values: the element goes to
        the cache at ``idx`` with the dim's index replaced by ``positions[idx[dim]]`` (``[S]``) or
        ``positions[idx[0], idx[dim]]`` (``[B, S]``). A slot outside the cache is skipped, as the
        library kernel does (the torch reference raises; checking would need a host sync)."""
        cache, values, positions = w.inputs
        d = w.attrs["dim"] % cache.rank
        pos = self.emit(positions, (idx[d],) if positions.rank == 1 else (idx[0], idx[d]))
        slot = convert(pos, positions.dtype)
        if not pos.vector:  # (a literal slot, a full() of positions: tl.full, which takes a python int)
            slot = self.assign(f"tl.full([BLOCK], {literal_code(pos.literal, positions.dtype)}, "
                               f"{TL_DTYPE[positions.dtype]})" if pos.literal is not None else
                               f"tl.broadcast_to({slot}, [BLOCK])", positions.dtype, True).code
        if positions.dtype != torch.int64:
            slot = self.assign(f"{slot}.to(tl.int64)", torch.int64, True).code
        if all(cache is not x for x in self.strided):
            self.strided.append(cache)
        base = self.name_of(cache)
        terms = []
        for k in range(cache.rank):
            stride = f"{base}_stride{k}"
            if k == d:
                terms.append(f"{slot} * {stride}")
            elif not sympy.sympify(idx[k]).is_zero:
                i = self.code(idx[k])
                terms.append(f"{i if sympy.sympify(idx[k]).is_Atom else f'({i})'}.to(tl.int64) * {stride}")
        val = self.emit(values, idx)
        dt = TL_DTYPE[values.dtype]
        text = val.code if val.literal is None else literal_code(val.literal, values.dtype)
        if not val.vector:
            text = f"tl.full([BLOCK], {text}, {dt})" if val.literal is not None else f"tl.broadcast_to({text}, [BLOCK])"
        value = text if val.dtype == values.dtype and val.literal is None else f"({text}).to({dt})"
        ok = f"mask & ({slot} >= 0) & ({slot} < {self.code(cache.shape[d])})"
        self.lines.append(f"tl.store({base}_ptr + {' + '.join(terms)}, {value}, mask={ok})"
                          f"  # %{w.results[0].name} = cache_write into %{cache.name}")

    def body(self, k: Kernel, first: Optional[str] = None) -> list[str]:
        """The lines of one pointwise or row kernel (a section starting at program ``first``)."""
        self.k, self.lines, self.memo = k, [], {}
        self.members = {id(m) for m in k.members}
        if k.layout == "pointwise":
            idx = self.setup_pointwise(first)
        else:
            idx = self.setup_row()
        self.canonical = idx
        for v in k.outputs:
            if k.layout == "row" and not shapes_equal(v.shape, k.shape):
                self.store(v, self.rows + ((ZERO,) if v.rank == len(self.rows) + 1 else ()))
            else:
                self.store(v, idx)
        for w in k.sinks:
            self.store_sink(w, idx)
        return self.lines

    def sections_body(self) -> list[str]:
        """``if pid < end0: <section 0> elif pid < end1: <section 1> ... else: <last section>``."""
        sections = self.launched.sections
        lines = ["pid = tl.program_id(0).to(INDEX_DTYPE)"]
        for j, sec in enumerate(sections[:-1]):
            n = f"({self.code(numel(sec.shape))} + BLOCK - 1) // BLOCK"
            lines.append(f"end{j} = {n}" if j == 0 else f"end{j} = end{j - 1} + {n}")
        for j, sec in enumerate(sections):
            head = "if" if j == 0 else "elif"
            lines.append(f"{head} pid < end{j}:" if j < len(sections) - 1 else "else:")
            lines.append(f"    # section {j}: {', '.join(_describe(m) for m in sec.members)}")
            lines += [f"    {line}" for line in self.body(sec, "0" if j == 0 else f"end{j - 1}")]
        self.k = self.launched
        return lines

    def generate(self) -> KernelSource:
        k = self.launched
        if k.layout == "sections":
            lines = self.sections_body()
            covers = "\n".join(f"    #   section {j}:\n" + "\n".join(f"    #     {format_node(m)}" for m in sec.members)
                               for j, sec in enumerate(k.sections))
            head = f"    # {len(k.sections)} pointwise kernels, one after the other along the program id:\n{covers}"
        else:
            lines = self.body(k)
            covers = "\n".join(f"    #   {format_node(m)}" for m in k.members)
            head = f"    # {k.layout} kernel covering:\n{covers}"
        block = "BLOCK_N" if k.layout == "row" else "BLOCK"
        pointers = list(k.inputs) + list(k.outputs)
        pointers += [c for c in (w.inputs[0] for w in k.sinks) if all(c is not x for x in pointers)]
        params = [f"{self.name_of(v)}_ptr" for v in pointers]
        params += [f"{self.name_of(v)}_stride{d}" for v in self.strided for d in range(v.rank)]
        sizes = sorted(self.sizes, key=lambda s: s.name)
        params += [s.name for s in sizes]
        params += [f"{block}: tl.constexpr", "INDEX_DTYPE: tl.constexpr", "USE_PDL: tl.constexpr"]
        # programmatic dependent launch (Hopper): this kernel may start before the previous one ends,
        # so it waits for the previous kernels' writes before its first load or store (of anything but a
        # parameter: those loads, and the index lines they read, go first)
        early: list[str] = []
        if k.layout != "sections":
            weights = {f"{self.name_of(v)}_ptr" for v in k.inputs if v.kind == "param"}
            early, lines = split_before_wait(lines, weights)
        lines = early + PDL_PROLOGUE + lines
        body = "\n".join(f"    {line}" for line in lines)
        jit = "@triton.jit(debug=True)" if device_asserts() else "@triton.jit"
        text = (f"{jit}\ndef {k.name}(\n    " + _wrap_params(params) + "\n):\n"
                f"{head}\n{body}\n")
        return KernelSource(k, text, pointers, list(self.strided), sizes, block, self.helpers)


_ASSIGN = re.compile(r"^([A-Za-z_]\w*) = (.*)$")
_LOADED = re.compile(r"tl\.load\(([A-Za-z_]\w*)")
_NAME = re.compile(r"\b[A-Za-z_]\w*\b")


def split_before_wait(lines: list[str], params: set[str]) -> tuple[list[str], list[str]]:
    """``(early, rest)``: the loads of ``params`` (pointer names) that read only kernel arguments and lines
    before them, with the lines they read, in their order; the rest in theirs. Nothing moves unless such a
    load exists. Only one-line assignments move (a store, an assert or any line that is not ``name = ...``
    stays), and a line moves only when no line that stays defines a name it reads; a kernel that assigns a
    name twice (the emitter names every value once) is left as it is."""
    defs: dict[str, tuple[int, set[str]]] = {}  # name -> (line, names it reads)
    movable: set[str] = set()  # names whose line may move: it loads nothing but parameters, reads only movables
    wanted: list[str] = []  # the parameter loads that may move
    for i, line in enumerate(lines):
        m = _ASSIGN.match(line)
        if m is None:
            continue
        name, rhs = m.group(1), m.group(2).split("  #")[0]
        if name in defs:
            return [], lines
        reads = set(_NAME.findall(rhs)) & defs.keys()
        defs[name] = (i, reads)
        loads = _LOADED.findall(rhs)
        if all(p in params for p in loads) and reads <= movable:
            movable.add(name)
            if loads:
                wanted.append(name)
    if not wanted:
        return [], lines
    moved: set[int] = set()
    todo = list(wanted)
    while todo:
        i, reads = defs[todo.pop()]
        if i not in moved:
            moved.add(i)
            todo.extend(reads)
    return [ln for i, ln in enumerate(lines) if i in moved], [ln for i, ln in enumerate(lines) if i not in moved]


def _wrap_params(params: list[str], width: int = 100) -> str:
    lines, cur = [], ""
    for p in params:
        piece = p + ","
        if cur and len(cur) + 1 + len(piece) > width:
            lines.append(cur)
            cur = piece
        else:
            cur = f"{cur} {piece}" if cur else piece
    lines.append(cur)
    return "\n    ".join(lines)


def _describe(node: Node) -> str:
    return f"%{node.results[0].name} = {node.op}"
