"""Backends turn a (lowered) IR graph into a callable ``(inputs: list[Tensor]) -> list[Tensor]``.

``reference`` interprets the graph with torch ops on any device (the oracle). ``triton`` generates
fused Triton kernels (``membound.backends.triton``): compiled on CUDA, run by Triton's interpreter on
CPU when ``TRITON_INTERPRET=1`` is set before Triton is imported. ``"auto"`` picks ``triton`` for
graphs whose tensors live on a CUDA device (Triton installed) and ``reference`` otherwise; a graph
without tensors decides on its first call, from the inputs' device.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Protocol, Sequence

import torch

from membound.ir.graph import Graph

Executable = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]


class Backend(Protocol):
    """What the compile driver needs to know of a backend: how to build an executable for a graph and
    what the runtime may do with it (``supports_cuda_graphs``: its decode steps may be captured into
    CUDA graphs and replayed)."""

    name: str
    supports_cuda_graphs: bool

    def compile(self, graph: Graph) -> Executable: ...


@dataclass(frozen=True)
class _Reference:
    name: str = "reference"
    supports_cuda_graphs: bool = False

    def compile(self, graph: Graph) -> Executable:
        from membound.backends.reference import ReferenceExecutable

        return ReferenceExecutable(graph)


@dataclass(frozen=True)
class _Triton:
    name: str = "triton"
    supports_cuda_graphs: bool = True

    def compile(self, graph: Graph) -> Executable:
        from membound.backends.triton import TritonExecutable

        return TritonExecutable(graph)


@dataclass(frozen=True)
class _Auto:
    """Decided per graph (from its tensors' device) or, for a graph without tensors, per call."""

    name: str = "auto"
    supports_cuda_graphs: bool = False

    def compile(self, graph: Graph) -> Executable:
        return AutoExecutable(graph)


REGISTRY: dict[str, Backend] = {"auto": _Auto(), "reference": _Reference(), "triton": _Triton()}
BACKENDS = tuple(REGISTRY)


def get_backend(backend: str, graph: Optional[Graph] = None) -> Backend:
    """The backend called ``backend``, with ``"auto"`` resolved for ``graph`` where it can be."""
    return REGISTRY[resolve_backend(backend, graph)]


def compile_graph(graph: Graph, backend: str = "auto") -> Executable:
    """Lower ``graph`` with the named backend and return its executable.

    With ``MEMBOUND_DEBUG=compare`` a non-reference executable is wrapped so that every call is checked
    against the reference backend (``debug_compare.py``)."""
    exe = _compile_graph(graph, backend)
    from membound.backends.debug_compare import CompareExecutable, compare_enabled

    if compare_enabled() and resolve_backend(backend, graph) != "reference":
        return CompareExecutable(graph, exe, backend, _compile_graph)
    return exe


def _compile_graph(graph: Graph, backend: str) -> Executable:
    return get_backend(backend, graph).compile(graph)


def resolve_backend(backend: str, graph: Optional[Graph] = None) -> str:
    """Check ``backend`` and resolve ``"auto"`` for ``graph`` (``"auto"`` stays when the graph has no
    tensors to tell the device, or when no graph is given)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}")
    if backend == "triton" and not triton_available():
        raise ValueError("backend='triton' needs the triton package (pip install triton); use 'reference'")
    if backend != "auto" or graph is None:
        return backend
    device = graph_device(graph)
    if device is None:
        return "auto"
    return backend_for(device)


def backend_for(device: torch.device) -> str:
    """The backend ``"auto"`` picks for tensors on ``device``."""
    return "triton" if device.type == "cuda" and triton_available() else "reference"


def graph_device(graph: Graph) -> Optional[torch.device]:
    """The device of the graph's parameters and state, if it holds any tensor."""
    for t in graph.tensors.values():
        if isinstance(t, torch.Tensor):
            return t.device
    return None


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


class AutoExecutable:
    """``"auto"`` for a graph without tensors: the backend is chosen per input device, on first use."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self._by_device: dict[str, Executable] = {}

    def __call__(self, inputs: Sequence[torch.Tensor], tensors: Optional[dict[str, torch.Tensor]] = None
                 ) -> list[torch.Tensor]:
        device = inputs[0].device if inputs else torch.device("cpu")
        exe = self._by_device.get(device.type)
        if exe is None:
            exe = compile_graph(self.graph, backend_for(device))
            self._by_device[device.type] = exe
        return exe(inputs, tensors) if tensors is not None else exe(inputs)  # type: ignore[call-arg]

    @property
    def source(self) -> Any:
        """The generated source of the Triton executable, once one was built (else None)."""
        for exe in self._by_device.values():
            if hasattr(exe, "source"):
                return exe.source  # type: ignore[attr-defined]
        return None
