"""The Triton backend: fused kernels generated per graph, library kernels for the rest.

    exe = TritonExecutable(graph)        # partition -> memory plan -> one generated module
    print(exe.source)                    # the generated kernels and launcher
    outputs = exe(inputs)                # CUDA: compiled by Triton; CPU: TRITON_INTERPRET

Files: ``lowering.py`` (the lowering registry: one entry per op, its kind, what it supports, how it is
emitted; writers in ``lower_pointwise.py``, ``lower_row.py``, ``lower_index.py``), ``partition.py`` (what
fuses: ``facts.py``, ``legality.py``, ``profitability.py``, ``schedule.py``), ``kernel.py`` +
``indexing.py`` + ``values.py`` (one kernel's source), ``memory_plan.py`` (buffer reuse by liveness),
``codegen.py`` (the module and its launcher), ``executable.py`` (loading, caching, running); ``kernels/``
holds the hand-written library kernels.
"""

from __future__ import annotations

from membound.backends.triton.executable import TritonExecutable, library_kernels
from membound.backends.triton.memory_plan import MemoryPlan, plan_memory
from membound.backends.triton.partition import Call, Kernel, Partition, classify, partition


def is_available() -> bool:
    """Whether Triton can be imported here."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


__all__ = ["Call", "Kernel", "MemoryPlan", "Partition", "TritonExecutable", "classify", "is_available",
           "library_kernels", "partition", "plan_memory"]
