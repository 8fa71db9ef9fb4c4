"""Backends turn a (lowered) IR graph into a callable ``(inputs: list[Tensor]) -> list[Tensor]``.

``reference`` interprets the graph with torch ops on any device (the oracle). ``get_backend(name)``
resolves ``"auto"`` to the best backend available for the device.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from membound.ir.graph import Graph

Executable = Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]

BACKENDS = ("auto", "reference")


def compile_graph(graph: Graph, backend: str = "auto") -> Executable:
    """Lower ``graph`` with the named backend and return its executable."""
    name = resolve_backend(backend)
    if name == "reference":
        from membound.backends.reference import ReferenceExecutable

        return ReferenceExecutable(graph)
    raise AssertionError(name)


def resolve_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {', '.join(BACKENDS)}. "
                         f"(The Triton backend is not part of this build yet; use 'reference'.)")
    if backend == "auto":
        return "reference"
    return backend
