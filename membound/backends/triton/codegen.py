"""Generate one Python module per graph: its Triton kernels, ``allocate`` (the memory plan's buffers) and
``launch`` (every step in order).

    # %47 = add(%0, %46) ; %124 = rms_norm(%47, %layers.0.ffn_norm.weight)
    v47 = bufs[3]  # f32[B, S, 64], slot 1
    v124 = bufs[4]  # f32[B, S, 64], slot 2
    _fused_add_rms_norm_2[(B * S,)](v0, v46, layers_0_ffn_norm_weight, v47, v124, *v46.stride(), ..., B, S,
                                    BLOCK_N=64)

Calls name their implementation: ``lib_<op>`` (membound's kernel library) or ``ref_<op>`` (the op's
torch reference); the executable binds those names when it loads the module. A ``cache_write`` done by
a kernel (a sink) has no buffer: after the launch its result names the cache it wrote in place
(``v35 = cache_k_0``), and sizes only a state tensor has are read off it first (``T = cache_k_0.shape[2]``).
"""

from __future__ import annotations

import dataclasses
import keyword
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable, Optional

import sympy
import torch

from membound.backends.triton.facts import Call, GraphFacts, Kernel
from membound.backends.triton.indexing import expr_code
from membound.backends.triton.kernel import CodegenError, KernelEmitter, KernelSource
from membound.backends.triton.lower_pointwise import HELPERS
from membound.backends.triton.lowering import classify, static_weight_input
from membound.backends.triton.memory_plan import MemoryPlan, writes_into_buffer
from membound.backends.triton.partition import Partition
from membound.ir.graph import Graph, Value
from membound.ir.ops import get_op
from membound.ir.ops.kv_cache import cached_parts
from membound.ir.printer import float_literal, format_node
from membound.ir.types import numel

POINTWISE_BLOCK = 1024
INT32_LIMIT = 2**31  # elements: index math at or past this many needs int64 (read when generating)
# library ops are told when their weight (the lowering entry's ``static_weight`` input) is a parameter:
# ``static_weight=True`` (a launch hint; see kernels.linear). The torch reference standing in ignores it.
# cached_attention is told when the slots below its positions were written before the step
# (``static_past=True``: see past_is_static), and which parameter weight the linear after it streams
# (``prefetch=<weight>``: see next_weight)
LAUNCH_HINTS = ("static_weight", "static_past", "prefetch")
# "0": the linear that reads a cached_attention's output (the o projection) is not told its weight is static, so
# its GEMV streams the weight after its PDL wait instead of before it (read at each compile; A/B runs). Session 33
# (H100, HF 1.24B, batch 1, context 256, profile_step-...-session33-o-{base,olate}): the o projection's early load (8 MB
# of resident tiles while flash decoding runs) does slow attention, whose path fell from 7.84 to 5.60 us a layer
# without it, but the o GEMV's own path rose from 1.73 to 4.42 us: step 1052.2 -> 1061.2 us (batch 8, where the
# swapped product loads after its wait anyway: 1179.9 -> 1179.4). With flash decoding's early K/V too
# (MEMBOUND_DECODE_EARLY_KV=1) 1083.2 us. So "1", the default
O_EARLY_ENV = "MEMBOUND_LINEAR_O_EARLY"


def reads_attention(node: Any) -> bool:
    """Whether a node's first input is a ``cached_attention`` result through views only (transpose, reshape):
    the o projection of a decode layer."""
    value = node.inputs[0] if node.inputs else None
    while value is not None and value.producer is not None:
        producer = value.producer
        if producer.op == "cached_attention":
            return True
        if classify(producer) != "view" or not producer.inputs:
            return False
        value = producer.inputs[0]
    return False


def early_weight(node: Any) -> bool:
    """Whether a library op over a parameter weight may load it before its PDL wait: always, unless
    ``MEMBOUND_LINEAR_O_EARLY=0`` and the op is the o projection (:func:`reads_attention`)."""
    return os.environ.get(O_EARLY_ENV, "1") != "0" or not reads_attention(node)


def past_is_static(node: Any) -> bool:
    """Whether a ``cached_attention`` node reads caches this step wrote only at its own positions: positions a
    graph input (no kernel of the step writes them), k and v each the result of one ``cache_write`` at those
    positions into a state cache. The slots below the smallest position are then an earlier step's, and the
    kernel may load them before the PDL wait."""
    if node.op != "cached_attention":
        return False
    _, _, _, pos, k_new, _, _ = cached_parts(node)
    if k_new is not None:  # (a ring's new slot may be any slot)
        return False
    if pos.kind != "input":
        return False
    for cache in node.inputs[1:3]:
        w = cache.producer
        if w is None or w.op != "cache_write" or w.inputs[0].kind != "state" or w.inputs[2] is not pos:
            return False
    return True


def next_weight(node: Any) -> Optional[Value]:
    """The parameter weight of the linear that reads a ``cached_attention`` node's output as its x, through views
    only (transpose, reshape: the heads back into rows), or None: what the decode attention may ask L2 for while
    it runs (the o projection's)."""
    if node.op != "cached_attention":
        return None
    frontier, seen = [node.results[0]], set()
    while frontier:
        value = frontier.pop()
        for user in value.users:
            if id(user) in seen:
                continue
            seen.add(id(user))
            w = static_weight_input(user.op)
            if w is not None and w < len(user.inputs) and user.inputs[0] is value and user.inputs[w].kind == "param":
                return user.inputs[w]
            if classify(user) == "view" and len(user.results) == 1:
                frontier.append(user.results[0])
    return None


def row_warps(block_n: int) -> int:
    """Warps for a row kernel holding ``block_n`` elements: enough threads that each keeps a few
    dozen values in registers (4 up to 1024 columns, 16 from 4096)."""
    return min(max(block_n // 256, 4), 16)

_RESERVED = {"torch", "triton", "tl", "launch", "allocate", "tensors", "bufs", "device", "slots", "BLOCK", "row_warps",
             "math", "float", "int", "max", "min", "range", "len", "list", "pdl", "launch_options", "gdc_wait",
             "gdc_launch_dependents", "USE_PDL"}


class Names:
    """Unique Python identifiers for the graph's values (``%47`` -> ``v47``, ``%lm_head.weight`` ->
    ``lm_head_weight``), never clashing with keywords, module names or size symbols."""

    def __init__(self, graph: Graph) -> None:
        self.taken = set(_RESERVED) | {s.name for s in graph.symbols()}
        self.names: dict[int, str] = {}

    def __call__(self, v: Value) -> str:
        name = self.names.get(id(v))
        if name is not None:
            return name
        base = re.sub(r"\W", "_", v.name)
        if not base or base[0].isdigit():
            base = "v" + base
        if keyword.iskeyword(base) or base.endswith(("_ptr",)) or re.search(r"_stride\d+$", base):
            base += "_"
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        self.names[id(v)] = name
        return name


@dataclass
class GeneratedModule:
    """The generated source and what the executable binds into it before running it."""

    source: str
    kernels: list[KernelSource]
    bindings: dict[str, tuple[str, str]] = field(default_factory=dict)  # "lib_linear" -> ("library", "linear")


def py_literal(v: Any) -> str:
    """An attribute value as Python source in the launcher (dims are expressions of the size locals)."""
    if v is None or isinstance(v, (bool, str)):
        return repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return float_literal(v, python=True)
    if isinstance(v, torch.dtype):
        return repr(v)
    if isinstance(v, sympy.Expr):
        return expr_code(v, kernel=False)
    if isinstance(v, (tuple, list)):
        inner = ", ".join(py_literal(x) for x in v)
        return f"({inner},)" if len(v) == 1 else f"({inner})"
    raise CodegenError(f"cannot write attribute value {v!r} ({type(v).__name__}) into the launcher")


def kernel_key(k: Kernel, facts: GraphFacts, contiguous: Callable[[Value], bool]) -> Hashable:
    """What a kernel's code is made from, with every name left out: two kernels with one key have the
    same code up to names, taking the same arguments in the same order (pointers, strides, sizes).

    The key walks what the emitter walks (``kernel.KernelEmitter.emit``) from each stored value and
    sink: computed members (op, attributes, types), views and sources folded in, and loads (which
    pointer, its type, whether it is contiguous), numbering values in the order first reached so that
    a value read twice is one entry.
    """
    if k.layout == "sections":
        return ("sections", tuple(kernel_key(s, facts, contiguous) for s in k.sections))
    pointers = list(k.inputs) + list(k.outputs)  # as KernelEmitter.generate orders them
    pointers += [c for c in (w.inputs[0] for w in k.sinks) if all(c is not x for x in pointers)]
    slot = {id(v): i for i, v in enumerate(pointers)}
    members = {id(m) for m in k.members}
    number: dict[int, int] = {}
    rows: list[Hashable] = []

    def value(v: Value) -> int:
        if id(v) in number:
            return number[id(v)]
        node = v.producer
        kind = facts.kind(node) if node is not None else "input"
        if node is not None and (kind in ("view", "source") or id(node) in members):
            ins = () if kind == "source" else tuple(value(x) for x in (node.inputs[:1] if kind == "view" else
                                                                         node.inputs))
            row: Hashable = (kind, node.op, repr(sorted(node.attrs.items())), tuple(str(x.type) for x in node.inputs),
                             tuple(str(r.type) for r in node.results), v.index, ins)
        else:
            row = ("load", slot.get(id(v)), str(v.type), contiguous(v))
        number[id(v)] = len(rows)
        rows.append(row)
        return number[id(v)]

    stored = tuple(value(v) for v in k.outputs)
    sinks = tuple((repr(sorted(w.attrs.items())), slot[id(w.inputs[0])], str(w.inputs[0].type),
                   value(w.inputs[1]), value(w.inputs[2])) for w in k.sinks)
    return (k.layout, tuple(map(str, k.shape)), len(pointers), stored, sinks, tuple(rows))


def shape_code(shape: tuple[sympy.Expr, ...]) -> str:
    return py_literal(tuple(shape))


class ModuleWriter:
    def __init__(self, part: Partition, plan: MemoryPlan, input_symbols: list[sympy.Symbol]) -> None:
        self.part = part
        self.graph = part.graph
        self.plan = plan
        self.facts = GraphFacts(part.graph)
        self.names = Names(part.graph)
        self.input_symbols = input_symbols
        produced_by_kernel = {id(v) for k in part.kernels for v in k.outputs}
        self.contiguous = lambda v: id(v) in produced_by_kernel
        self.bindings: dict[str, tuple[str, str]] = {}
        self.buf_index: dict[int, int] = {}
        self.launch_name: dict[int, str] = {}  # id(kernel) -> the kept twin it launches
        for i, b in enumerate(plan.planned()):
            self.buf_index[id(b.value)] = i

    # ---- pieces -----------------------------------------------------------------------------------
    def kernel_sources(self) -> list[KernelSource]:
        return [KernelEmitter(k, self.facts, self.names, self.contiguous).generate() for k in self.part.kernels]

    def allocate_fn(self) -> str:
        args = ", ".join(["device"] + [s.name for s in self.input_symbols])
        planned = self.plan.planned()
        lines = [f"def allocate({args}):",
                 f'    """{len(self.plan.slot_bytes)} byte slots shared by the {len(planned)} planned buffers."""',
                 "    slots = ["]
        for i, nbytes in enumerate(self.plan.slot_bytes):
            lines.append(f"        torch.empty({expr_code(nbytes, kernel=False)}, dtype=torch.uint8, device=device),"
                         f"  # slot {i}")
        lines += ["    ]", "    return ["]
        for b in planned:
            v = b.value
            n = expr_code(v.type.nbytes(), kernel=False)
            lines.append(f"        slots[{b.slot}][:{n}].view({v.dtype!r}).view({shape_code(v.shape)}),"
                         f"  # %{v.name}: {v.type}")
        lines += ["    ]", ""]
        return "\n".join(lines)

    def buffer_line(self, v: Value) -> str:
        b = self.plan.buffer(v)
        name = self.names(v)
        if b is not None and b.slot is not None:
            return f"{name} = bufs[{self.buf_index[id(v)]}]  # {v.type}, slot {b.slot}"
        return f"{name} = torch.empty({shape_code(v.shape)}, dtype={v.dtype!r}, device=device)  # {v.type}"

    def kernel_launch(self, ks: KernelSource, sizes: list[str]) -> list[str]:
        """The launch of ``ks``, after ``sizes`` (lines binding the sizes it needs first)."""
        k = ks.kernel
        lines = [f"# {format_node(m)}" for m in k.members] + sizes
        lines += [self.buffer_line(v) for v in k.outputs]
        args = [self.names(v) for v in ks.pointers]
        args += [f"*{self.names(v)}.stride()" for v in ks.strided]
        args += [s.name for s in ks.sizes]
        if k.layout in ("pointwise", "sections"):
            programs = [f"triton.cdiv({expr_code(numel(sec.shape), kernel=False)}, BLOCK)"
                        for sec in (k.sections or [k])]
            grid = f"({' + '.join(programs)},)"
            args.append("BLOCK=BLOCK")
        else:
            rows = sympy.Integer(1)
            for d in k.shape[:-1]:
                rows = rows * d
            grid = f"({expr_code(rows, kernel=False)},)"
            n = k.shape[-1]
            if n.is_Integer:
                block_n = 1 << max(int(n) - 1, 0).bit_length()
                block, warps = str(block_n), str(row_warps(block_n))
            else:
                block = f"triton.next_power_of_2({expr_code(n, kernel=False)})"
                warps = f"row_warps({block})"
            args += [f"BLOCK_N={block}", f"num_warps={warps}"]
        args.append(f"INDEX_DTYPE={self.index_dtype(ks)}")
        args.append("**pdl")
        lines.append(f"{self.launch_name.get(id(k), k.name)}[{grid}](" + ", ".join(args) + ")")
        for w in k.sinks:  # the write's result is the cache, updated in place
            lines.append(f"{self.names(w.results[0])} = {self.names(w.inputs[0])}  # %{w.results[0].name}: "
                         f"written in place")
        return lines

    def index_dtype(self, ks: KernelSource) -> str:
        """``tl.int32`` index math where no address of the kernel can reach 2**31 elements (faster),
        ``tl.int64`` where one can: decided here when every shape is static, else at launch by
        ``index_dtype(numel, *tensors)`` from the iteration size and the tensors' extents."""
        k = ks.kernel
        spaces = [numel(sec.shape) for sec in (k.sections or [k])]
        sizes = spaces + [numel(v.shape) for v in ks.pointers]
        if all(sympy.sympify(n).is_Integer for n in sizes):
            return "tl.int64" if max(int(n) for n in sizes) >= INT32_LIMIT else "tl.int32"
        total = " + ".join(f"({expr_code(n, kernel=False)})" for n in spaces)
        return f"index_dtype({total}, {', '.join(self.names(v) for v in ks.pointers)})"

    def sizes_from_tensors(self, missing: list[sympy.Symbol], known: set[sympy.Symbol]) -> list[str]:
        """Sizes a kernel needs that no input has, read off a param or state tensor (a cache's capacity)."""
        lines = []
        for s in missing:
            for v in list(self.graph.params) + list(self.graph.state):
                k = next((k for k, d in enumerate(v.shape) if d == s), None)
                if k is not None:
                    lines.append(f"{s.name} = {self.names(v)}.shape[{k}]")
                    known.add(s)
                    break
        return lines

    def call_lines(self, step: Call, known: set[sympy.Symbol]) -> list[str]:
        node = step.node
        prefix = "lib" if step.impl == "library" else "ref"
        fn = f"{prefix}_{node.op}"
        self.bindings[fn] = (step.impl if step.impl == "library" else "torch", node.op)
        args = [self.names(v) for v in node.inputs]
        args += [f"{k}={py_literal(a)}" for k, a in node.attrs.items()]
        w = static_weight_input(node.op)
        if (step.impl == "library" and w is not None and w < len(node.inputs) and node.inputs[w].kind == "param"
                and early_weight(node)):
            args.append("static_weight=True")  # no kernel writes a parameter: its loads may precede the PDL wait
        if step.impl == "library" and past_is_static(node):
            args.append("static_past=True")
        weight = next_weight(node) if step.impl == "library" else None
        if weight is not None:
            args.append(f"prefetch={self.names(weight)}")  # the next linear's weight, asked of L2 during attention
        lines = [f"# {format_node(node)}"]
        if writes_into_buffer(step) and self.plan.buffer(node.results[0]) is not None:
            lines.append(self.buffer_line(node.results[0]))
            args.append(f"out={self.names(node.results[0])}")
        lhs = ", ".join(self.names(r) for r in node.results)
        call = f"{lhs} = {fn}({', '.join(args)})"
        if step.impl == "view" and get_op(node.op).source:
            lines += ["with torch.device(device):", f"    {call}"]
        else:
            lines.append(call)
        for r in node.results:  # data-dependent sizes are learned from the tensors that have them
            for k, d in enumerate(r.shape):
                if isinstance(d, sympy.Symbol) and d not in known:
                    lines.append(f"{d.name} = {self.names(r)}.shape[{k}]")
                    known.add(d)
        return lines

    def share_identical(self, sources: list[KernelSource]) -> list[KernelSource]:
        """Keep one definition of kernels that differ only in names (every layer's add + rms_norm).

        Triton compiles each ``@triton.jit`` function separately, so a 32-layer model would otherwise
        compile the same few kernels a hundred times over. Launches of a dropped twin call the kept
        definition, whose parameters take the same arguments in the same order.
        """
        kept: dict[Hashable, KernelSource] = {}
        twins: dict[str, list[str]] = {}
        for ks in sources:
            key = (kernel_key(ks.kernel, self.facts, self.contiguous), ks.block, tuple(sorted(ks.helpers)))
            first = kept.setdefault(key, ks)
            if first is not ks:
                self.launch_name[id(ks.kernel)] = first.kernel.name
                twins.setdefault(first.kernel.name, []).append(ks.kernel.name)
        out = []
        for ks in kept.values():
            also = twins.get(ks.kernel.name)
            if also:
                note = f"# also launched in place of {len(also)} identical kernels: {', '.join(also)}\n"
                ks = dataclasses.replace(ks, text=note + ks.text)
            out.append(ks)
        return out

    def launch_fn(self, sources: dict[int, KernelSource]) -> str:
        g = self.graph
        ins = ", ".join(self.names(v) for v in g.inputs)
        sizes = ", ".join(s.name for s in self.input_symbols)
        head = ", ".join(x for x in (ins, "*", "tensors, bufs, device", sizes) if x)
        lines = [f"def launch({head}):"]
        body = [f'"""Run @{g.name}: {len(self.part.kernels)} generated kernels, {len(self.part.calls)} calls."""']
        body.append("pdl = launch_options(device)  # USE_PDL (+ launch_pdl on Hopper)")
        for v in list(g.params) + list(g.state):
            body.append(f"{self.names(v)} = tensors[{v.name!r}]")
        known = set(self.input_symbols)
        for step in self.part.steps:
            body.append("")
            if isinstance(step, Kernel):
                missing = [s for s in sources[id(step)].sizes if s not in known]
                sizes = self.sizes_from_tensors(missing, known)
                missing = [s for s in missing if s not in known]
                if missing:
                    raise CodegenError(f"{step.name} needs sizes {missing} before anything computes them")
                body += self.kernel_launch(sources[id(step)], sizes)
            else:
                body += self.call_lines(step, known)
        body += ["", "return [" + ", ".join(self.names(v) for v in g.outputs) + "]"]
        lines += [("    " + line) if line else "" for line in body]
        return "\n".join(lines) + "\n"

    def write(self) -> GeneratedModule:
        sources = self.kernel_sources()
        by_kernel = {id(ks.kernel): ks for ks in sources}
        sources = self.share_identical(sources)
        launch = self.launch_fn(by_kernel)
        helpers = sorted({h for ks in sources for h in ks.helpers})
        g = self.graph
        parts = [
            f'"""Generated by membound\'s Triton backend for @{g.name}: {len(sources)} fused kernels, '
            f'{len(self.part.calls)} calls.\n\n'
            "Regenerate instead of editing. `allocate` builds the memory plan's reusable buffers for one set\n"
            "of sizes; `launch` runs every step in order. `lib_*` (kernel library) and `ref_*` (torch\n"
            "reference) functions and `launch_options` (programmatic dependent launch on Hopper) are bound\n"
            'by the executable that loads this module.\n"""\n',
            "import torch\nimport triton\nimport triton.language as tl\n"
            "from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait\n",
            f"BLOCK = {POINTWISE_BLOCK}  # elements per program in pointwise kernels\n",
            "def index_dtype(numel, *tensors):\n"
            "    # int64 offsets when an address can reach 2**31 elements (the iteration range or a tensor's\n"
            "    # extent), int32 otherwise: the kernel is specialised on it\n"
            f"    limit = {INT32_LIMIT}\n"
            "    big = numel >= limit or any(1 + sum((n - 1) * abs(s) for n, s in zip(t.shape, t.stride())) >= limit\n"
            "                                for t in tensors if t.numel())\n"
            "    return tl.int64 if big else tl.int32\n",
            "def row_warps(block_n):\n    # warps for a row kernel of block_n columns: a few dozen values per thread\n"
            "    return min(max(block_n // 256, 4), 16)\n",
        ]
        parts += [HELPERS[h] for h in helpers]
        parts += [ks.text for ks in sources]
        parts += [self.allocate_fn(), launch]
        return GeneratedModule("\n\n".join(p.rstrip("\n") + "\n" for p in parts), sources, dict(self.bindings))



def generate(part: Partition, plan: MemoryPlan, input_symbols: list[sympy.Symbol]) -> GeneratedModule:
    """The module source for ``part`` (see the module docstring)."""
    return ModuleWriter(part, plan, input_symbols).write()
