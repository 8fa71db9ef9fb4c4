"""Scheduling: the order the steps run in, and horizontal fusion.

Steps run in a topological order of the *step graph* (an edge from each step to every step that reads
what it writes, plus the state-order edges that keep readers of a cache on the right side of its
in-place writes), each as early as graph order allows.

Horizontal fusion: pointwise kernels next to each other in the schedule (only torch views between
them) that do not depend on each other, directly or through state, become the sections of one launch:
one program-id range split into their flat iteration ranges. The cost model decides
(``Profitability.launch_saving``: the launch and latency it charges per kernel, saved once for every
kernel merged); a run it turns down is recorded as a refusal (``"schedule"``).

    %25 = add(...) : f32[B, 4, 1, 16]                         # q rope       } one launch:
    %35 = cache_write(%cache.k.0, %34, %positions) {dim=2}     # k rope+write } _horizontal_..._2
    %36 = cache_write(%cache.v.0, %16, %positions) {dim=2}     # v write      } (3 sections)

Row kernels side by side in the schedule, independent, over the same rows of the same length (the q and k
l2 norms of a gated DeltaNet layer, reading one convolution's output) become one row kernel: each program
reduces its row of every one of them. One launch for two, by the same cost-model test.
"""

from __future__ import annotations

from typing import Optional

import networkx as nx

from membound.backends.triton.facts import (
    Call,
    GraphFacts,
    Kernel,
    PartitionError,
    Refusal,
    Step,
    shapes_equal,
    state_order,
)
from membound.backends.triton.profitability import Profitability
from membound.ir.graph import Graph, Node, Value


def step_graph(graph: Graph, facts: GraphFacts, steps: list[Step], step_of: dict[int, Step]) -> nx.DiGraph:
    """Step indices, with an edge from each step to every step that must run after it."""
    dg = nx.DiGraph()
    index = {id(s): i for i, s in enumerate(steps)}
    dg.add_nodes_from(range(len(steps)))

    def depend(before: Optional[Step], after: Optional[Step]) -> None:
        if before is not None and after is not None and before is not after:
            dg.add_edge(index[id(before)], index[id(after)])

    for s in steps:
        for v in (s.inputs if isinstance(s, Kernel) else s.node.inputs):
            depend(step_of.get(id(v.producer)) if v.producer is not None else None, s)
    for u, w in state_order(graph, facts):
        depend(step_of.get(id(u)), step_of.get(id(w)))
    return dg


def schedule(graph: Graph, facts: GraphFacts, steps: list[Step], dg: nx.DiGraph) -> list[Step]:
    """Steps in a topological order of ``dg`` (their data dependencies, and state reads around state
    writes), each as early as graph order allows."""
    first = {i: min(facts.position[id(n)] for n in s.nodes) for i, s in enumerate(steps)}
    try:
        order = list(nx.lexicographical_topological_sort(dg, key=lambda i: first[i]))
    except nx.NetworkXUnfeasible:
        raise PartitionError(f"the steps of @{graph.name} depend on each other in a cycle; "
                             "a fusion decision was illegal (please report the graph)") from None
    return [steps[i] for i in order]


# ---------------------------------------------------------------------------------------------
# horizontal fusion
# ---------------------------------------------------------------------------------------------
def _independent_runs(order: list[Step], dg: nx.DiGraph, index: dict[int, int], profit: Profitability,
                      refusals: list[Refusal], layout: str, what: str) -> list[list[Kernel]]:
    """Runs of ``layout`` kernels (row kernels: over equal rows and lengths), in schedule order, with only torch
    views between them and no path from one to another in ``dg``: independent, so running them at once reorders
    nothing, and no cycle forms (a run of kernels the graph orders, by data or by a state buffer, is cut there).
    Each run of two or more saves ``len - 1`` launches; the cost model keeps the runs where that pays."""
    runs: list[list[Kernel]] = []
    run: list[Kernel] = []
    for s in order:
        if isinstance(s, Call) and s.impl == "view":
            continue  # a torch view (or creation op): the path test sees whether a kernel needs it
        if isinstance(s, Kernel) and s.layout == layout and run and (
                layout != "row" or shapes_equal(s.shape, run[0].shape)) and not any(
                nx.has_path(dg, index[id(k)], index[id(s)]) for k in run):
            run.append(s)
            continue
        if len(run) > 1:
            runs.append(run)
        run = [s] if isinstance(s, Kernel) and s.layout == layout else []
    if len(run) > 1:
        runs.append(run)
    kept = []
    for r in runs:
        saving = profit.launch_saving([k.members for k in r])
        if saving > 0:
            kept.append(r)
            continue
        refusals.append(Refusal(r[-1].members[-1], tuple(m for k in r[:-1] for m in k.members), "schedule",
                                f"{what} for {len(r)} independent kernels saves {saving * 1e6:.3g} us "
                                "by the cost model"))
    return kept


def _sections(order: list[Step], dg: nx.DiGraph, index: dict[int, int], profit: Profitability,
              refusals: list[Refusal]) -> list[list[Kernel]]:
    """Runs of independent pointwise kernels: the sections of one launch each."""
    return _independent_runs(order, dg, index, profit, refusals, "pointwise", "one launch")


def _row_siblings(order: list[Step], dg: nx.DiGraph, index: dict[int, int], profit: Profitability,
                  refusals: list[Refusal]) -> list[list[Kernel]]:
    """Runs of independent row kernels over the same rows: one row kernel reduces a row of each."""
    return _independent_runs(order, dg, index, profit, refusals, "row", "one row kernel")


def merge_sections(graph: Graph, facts: GraphFacts, steps: list[Step], dg: nx.DiGraph, profit: Profitability,
                   refusals: list[Refusal]) -> tuple[list[Step], nx.DiGraph]:
    """Replace each run of ``_sections`` by one ``"sections"`` kernel and each run of ``_row_siblings`` by one row
    kernel; the step graph contracted to match."""
    order = schedule(graph, facts, steps, dg)
    index = {id(s): i for i, s in enumerate(steps)}
    runs = _sections(order, dg, index, profit, refusals) + _row_siblings(order, dg, index, profit, refusals)
    if not runs:
        return steps, dg
    merged_into: dict[int, Kernel] = {}
    for run in runs:
        h = _merged_kernel(run)
        for k in run:
            merged_into[id(k)] = h
    new_steps: list[Step] = []
    for s in steps:
        h = merged_into.get(id(s), s)  # type: ignore[arg-type]
        if all(h is not x for x in new_steps):
            new_steps.append(h)
    new_index = {id(s): i for i, s in enumerate(new_steps)}
    new_dg = nx.DiGraph()
    new_dg.add_nodes_from(range(len(new_steps)))
    for a, b in dg.edges:
        na, nb = new_index[id(merged_into.get(id(steps[a]), steps[a]))], \
            new_index[id(merged_into.get(id(steps[b]), steps[b]))]
        if na != nb:
            new_dg.add_edge(na, nb)
    return new_steps, new_dg


def _merged_kernel(kernels: list[Kernel]) -> Kernel:
    """One launch for independent ``kernels``: pointwise ones as the ``"sections"`` of one kernel, row kernels over
    the same rows as one row kernel (each program reduces its row of every one); their members in order."""
    members = [m for k in kernels for m in k.members]
    inputs: list[Value] = []
    for k in kernels:
        inputs += [v for v in k.inputs if all(v is not x for x in inputs)]
    rows = kernels[0].layout == "row"
    name = ("_fused_" if rows else "_horizontal_") + "_".join(op_names(members)[:4]) + "_0"
    return Kernel(name, "row" if rows else "sections", members, kernels[0].shape if rows else (),
                  [v for k in kernels for v in k.outputs], inputs, [n for k in kernels for n in k.views],
                  [n for k in kernels for n in k.sinks], [] if rows else list(kernels))


def op_names(members: list[Node]) -> list[str]:
    """The members' ops, each once, in order (kernel names)."""
    names: list[str] = []
    for m in members:
        if m.op not in names:
            names.append(m.op)
    return names
