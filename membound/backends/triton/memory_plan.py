"""The memory plan: which intermediate tensors share a buffer, decided once per graph from liveness.

Kernel outputs (and library-kernel results, written through ``out=``) are *planned*: each gets a
*slot*, a byte buffer allocated once per set of sizes and reused across calls. Walking the steps in
order, a value takes a free slot when it is produced, and its slot is freed after the last step that
reads it or anything that may alias it (a torch view of it, a call that may return its input). A
value is written only after the step's inputs are read, so a slot is never shared by a step's input
and output. Values that may reach a graph output, and values whose size is only known at run time
(data-dependent symbols), are allocated fresh on every call instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import sympy

from membound.backends.triton.partition import Call, Kernel, Partition, Step
from membound.ir.graph import Value
from membound.ir.ops import get_op


@dataclass
class Buffer:
    """Where ``value`` lives: ``slot`` (None = fresh each call) and its live range in step indices."""

    value: Value
    slot: Optional[int]
    start: int
    end: int


@dataclass
class MemoryPlan:
    buffers: dict[int, Buffer] = field(default_factory=dict)
    slot_bytes: list[sympy.Expr] = field(default_factory=list)

    def buffer(self, v: Value) -> Optional[Buffer]:
        return self.buffers.get(id(v))

    def planned(self) -> list[Buffer]:
        """Buffers that live in a slot, in order of production."""
        return sorted((b for b in self.buffers.values() if b.slot is not None), key=lambda b: b.start)

    def describe(self) -> str:
        lines = []
        for i, nbytes in enumerate(self.slot_bytes):
            users = [f"%{b.value.name}[{b.start}..{b.end}]" for b in self.planned() if b.slot == i]
            lines.append(f"slot {i} ({nbytes} bytes): {', '.join(users)}")
        return "\n".join(lines)


def reads(step: Step) -> list[Value]:
    """The values a step reads (a kernel reads the origins of the views it folds)."""
    return list(step.inputs) if isinstance(step, Kernel) else list(step.node.inputs)


def writes(step: Step) -> list[Value]:
    """The values a step produces."""
    return list(step.outputs) if isinstance(step, Kernel) else list(step.node.results)


def writes_into_buffer(step: Step) -> bool:
    """Whether the step writes its results into buffers we hand it (kernels; library calls via out=)."""
    if isinstance(step, Kernel):
        return True
    node = step.node
    return step.impl == "library" and len(node.results) == 1 and not get_op(node.op).side_effects


def may_alias_inputs(step: Call) -> bool:
    """Whether a call's results may share memory with its inputs (torch views, opaque ops, state ops)."""
    if step.impl == "view":
        return True
    opdef = get_op(step.node.op)
    return opdef.kind in ("opaque", "state", "view") or opdef.side_effects


def plan_memory(part: Partition, input_symbols: set[sympy.Symbol]) -> MemoryPlan:
    """Assign slots to the buffers of ``part`` (see the module docstring)."""
    roots: dict[int, set[int]] = {}  # id(value) -> ids of the planned candidates it may share memory with
    candidates: dict[int, tuple[Value, int]] = {}
    for i, step in enumerate(part.steps):
        if writes_into_buffer(step):
            for v in writes(step):
                candidates[id(v)] = (v, i)
                roots[id(v)] = {id(v)}
        elif isinstance(step, Call) and may_alias_inputs(step):
            shared: set[int] = set()
            for v in step.node.inputs:
                shared |= roots.get(id(v), set())
            for v in step.node.results:
                roots[id(v)] = shared
    end = {vid: start for vid, (_, start) in candidates.items()}
    for i, step in enumerate(part.steps):
        for v in reads(step):
            for r in roots.get(id(v), ()):
                end[r] = max(end[r], i)
    escaping: set[int] = set()
    for v in part.graph.outputs:
        escaping |= roots.get(id(v), set())
    plan = MemoryPlan()
    free_at: list[int] = []  # per slot: the step after which it is free again
    for vid, (v, start) in sorted(candidates.items(), key=lambda kv: kv[1][1]):
        fresh = vid in escaping or not v.type.free_symbols() <= input_symbols
        if fresh:
            plan.buffers[vid] = Buffer(v, None, start, end[vid])
            continue
        slot = _pick_slot(plan, free_at, v, start)
        plan.buffers[vid] = Buffer(v, slot, start, end[vid])
        free_at[slot] = end[vid]
    return plan


def _pick_slot(plan: MemoryPlan, free_at: list[int], v: Value, start: int) -> int:
    nbytes = v.type.nbytes()
    free = [s for s, e in enumerate(free_at) if e < start]
    for s in free:  # a slot of exactly this size first
        if plan.slot_bytes[s] == nbytes:
            return s
    if free:
        s = free[0]
        plan.slot_bytes[s] = sympy.Max(plan.slot_bytes[s], nbytes)
        return s
    plan.slot_bytes.append(nbytes)
    free_at.append(start)
    return len(plan.slot_bytes) - 1
