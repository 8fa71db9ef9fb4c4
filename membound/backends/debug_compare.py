"""``MEMBOUND_DEBUG=compare``: run the reference backend beside the compiled one and name the first IR
node whose output diverges.

The tool for "this number looks wrong". With the variable set, every executable ``compile_graph``
makes for a backend other than ``reference`` is wrapped: each call also interprets the graph with
the reference backend (on copies of the state, so a cache write happens once) and compares the
outputs. When one differs by more than its dtype's tolerance, the graph is compiled once more with
*every* node result as an output -- by the same backend, so each value is what the compiled code
computed -- and both backends run it on the inputs and state of the failing call. The first node in
program order whose value diverges is named in a ``DivergenceError``:

    DivergenceError: the triton backend diverges from the reference at node
      %12 = rms_norm(%11, %w) : f16[B, S, 64]
    max |error| 0.75 relative to max |reference| 3.2 = 0.23 > tolerance 0.01 (float16) ...

Tolerance: the largest absolute error relative to the largest reference magnitude, per dtype
(``TOLERANCES``); integers and booleans must be equal, and a NaN on one side only is a divergence.
Materialising every value changes how kernels fuse; when no single node diverges that way, the
error says so (suspect the fusion of the failing outputs' kernels). Slow, and meant for debugging:
calls during CUDA-graph capture are not compared.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import torch

from membound.ir.graph import Graph, Value

TOLERANCES = {torch.float32: 1e-3, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 3e-2}
DEFAULT_TOLERANCE = 3e-2  # fp8 and other low-precision floats


class DivergenceError(AssertionError):
    """The compiled backend's result differs from the reference backend's (``MEMBOUND_DEBUG=compare``)."""


def compare_enabled() -> bool:
    return "compare" in os.environ.get("MEMBOUND_DEBUG", "").lower().replace(",", " ").split()


def divergence(got: Any, want: Any) -> Optional[str]:
    """None when ``got`` matches ``want`` within the dtype's tolerance, else what differs (one line)."""
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor):
        return None
    if got.shape != want.shape:
        return f"shape {tuple(got.shape)} vs reference {tuple(want.shape)}"
    if got.dtype != want.dtype:
        return f"dtype {got.dtype} vs reference {want.dtype}"
    if not want.dtype.is_floating_point:
        bad = int((got != want).sum())
        return f"{bad} of {want.numel()} elements differ (exact dtype {want.dtype})" if bad else None
    g, w = got.detach().double().cpu(), want.detach().double().cpu()
    nan_g, nan_w = g.isnan(), w.isnan()
    if not torch.equal(nan_g, nan_w):
        return f"NaN in {int(nan_g.sum())} elements vs {int(nan_w.sum())} in the reference"
    finite = ~nan_w
    if not bool(finite.any()):
        return None
    g, w = g[finite], w[finite]
    inf = w.isinf() | g.isinf()
    if not torch.equal(g[inf], w[inf]):
        return "infinities differ from the reference"
    g, w = g[~inf], w[~inf]
    if w.numel() == 0:
        return None
    err = float((g - w).abs().max())
    scale = max(float(w.abs().max()), 1e-30)
    tol = TOLERANCES.get(want.dtype, DEFAULT_TOLERANCE)
    if err <= tol * max(scale, 1.0):
        return None
    return (f"max |error| {err:.4g} relative to max |reference| {scale:.4g} = {err / scale:.3g} > tolerance {tol} "
            f"({str(want.dtype).replace('torch.', '')})")


class CompareExecutable:
    """An executable that checks every call of ``executable`` (for ``graph``) against the reference."""

    def __init__(self, graph: Graph, executable: Callable[..., list[torch.Tensor]], backend: str,
                 compile_fn: Callable[[Graph, str], Callable[..., list[torch.Tensor]]]) -> None:
        from membound.backends.reference import ReferenceExecutable

        self.graph = graph
        self.executable = executable
        self.backend = backend
        self._compile = compile_fn
        self._reference = ReferenceExecutable(graph)
        self.calls_compared = 0

    @property
    def source(self) -> Any:
        return getattr(self.executable, "source", None)

    def __call__(self, inputs: Sequence[torch.Tensor], tensors: Optional[dict[str, torch.Tensor]] = None
                 ) -> list[torch.Tensor]:
        capturing = any(t.is_cuda for t in inputs) and torch.cuda.is_current_stream_capturing()
        if capturing:
            return self._run(self.executable, inputs, tensors)
        bound = self.graph.tensors if tensors is None else tensors
        snapshot = self._state_copy(bound)
        want = self._reference(list(inputs), {**bound, **self._state_copy(snapshot)})
        got = self._run(self.executable, inputs, tensors)
        self.calls_compared += 1
        for i, (g, w) in enumerate(zip(got, want)):
            why = divergence(g, w)
            if why is not None:
                where = f"output {i} (%{self.graph.outputs[i].name})"
                raise DivergenceError(self._locate(inputs, bound, snapshot, where, why))
        return got

    @staticmethod
    def _run(exe: Callable[..., list[torch.Tensor]], inputs: Sequence[torch.Tensor],
             tensors: Optional[dict[str, torch.Tensor]]) -> list[torch.Tensor]:
        return exe(inputs, tensors) if tensors is not None else exe(inputs)

    def _state_copy(self, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {v.name: tensors[v.name].clone() for v in self.graph.state if v.name in tensors}

    def _locate(self, inputs: Sequence[torch.Tensor], bound: dict[str, torch.Tensor],
                snapshot: dict[str, torch.Tensor], where: str, why: str) -> str:
        """The divergence report: the first node whose value differs, with every value materialised."""
        from membound.backends.reference import ReferenceExecutable

        head = f"the {self.backend} backend diverges from the reference backend at {where}: {why}"
        probe = self.graph.copy()
        values: list[Value] = [r for n in probe.nodes for r in n.results]
        probe.set_outputs(values)
        try:
            exe = self._compile(probe, self.backend)
            got = self._run(exe, inputs, {**bound, **self._state_copy(snapshot)})
            want = ReferenceExecutable(probe)(list(inputs), {**bound, **self._state_copy(snapshot)})
        except Exception as e:  # noqa: BLE001 - the report must still come out
            return (f"{head}\n  (could not localise it: compiling every value as an output failed: "
                    f"{type(e).__name__}: {e})")
        for v, g, w in zip(values, got, want):
            why_node = divergence(g, w)
            if why_node is not None:
                node = v.producer
                args = ", ".join(f"%{a.name}" for a in node.inputs) if node is not None else ""
                return (f"{head}\nfirst diverging node: %{v.name} = {node.op if node else '?'}({args}) : {v.type}\n"
                        f"  {why_node}\n  (every node before it in program order matches; MEMBOUND_DUMP_IR shows "
                        f"the graph)")
        return (f"{head}\nno single node diverges when every value is materialised: suspect how the kernels "
                f"computing {where} are fused")
