"""``TritonExecutable``: partition, plan and generate once per graph; load the generated module once;
validate inputs and allocate the memory plan once per distinct input shapes; then every call is one
dictionary lookup and one ``launch``.

On CUDA the kernels are compiled by Triton (and cached by it per specialisation). On CPU the very same
module runs under ``TRITON_INTERPRET=1`` (Triton's interpreter, slow, but the code under test is the
code that runs on the GPU). The variable must be set before Triton is first imported (torch._dynamo
imports it early), so on CPU set it yourself; ``prepare_triton`` sets it when nothing imported Triton
yet and there is no CUDA.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, ContextManager, Optional, Sequence

import torch

from membound.backends.reference import bind_symbols
from membound.backends.triton.bounds import (
    GatherCheck,
    check_inputs,
    device_asserts,
    enable_interpreter_asserts,
    gather_checks,
)
from membound.backends.triton.codegen import LAUNCH_HINTS, GeneratedModule, generate
from membound.backends.triton.kernels._launch import pdl_options
from membound.backends.triton.memory_plan import MemoryPlan, plan_memory
from membound.backends.triton.partition import Partition, partition
from membound.cost import RooflineCost
from membound.ir.graph import Graph
from membound.ir.ops import get_op

# allocated memory plans kept per executable (one per distinct input shapes)
MAX_PLANS = 8
_MODULES: dict[tuple[str, str], ModuleType] = {}


def library_kernels() -> dict[str, Callable[..., Any]]:
    """membound's kernel library (``membound.backends.triton.kernels.LIBRARY``), or {} before it exists."""
    try:
        from membound.backends.triton.kernels import LIBRARY
    except ImportError:
        return {}
    return dict(LIBRARY)


def cache_dir() -> Path:
    """Where generated modules are written (Triton reads kernel source from files):
    ``$MEMBOUND_CACHE_DIR/triton`` or a per-user folder in the temp dir."""
    root = os.environ.get("MEMBOUND_CACHE_DIR")
    base = Path(root) if root else Path(tempfile.gettempdir()) / f"membound-{os.getuid()}"
    path = base / "triton"
    path.mkdir(parents=True, exist_ok=True)
    return path


def interpreted() -> bool:
    """Whether Triton runs kernels in its interpreter in this process (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def prepare_triton() -> None:
    """Choose the interpreter on a machine without a GPU, before Triton is first imported.

    Triton decides at import time whether its own ``@jit`` helpers (``tl.sum``...) are interpreted,
    so the choice has to be made first; without CUDA, compiled Triton cannot run anyway.
    """
    if "triton" not in sys.modules and not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


class TritonExecutable:
    """A graph compiled by the Triton backend. ``source`` is the generated module."""

    def __init__(self, graph: Graph, *, cost: Optional[RooflineCost] = None,
                 library: Optional[dict[str, Callable[..., Any]]] = None) -> None:
        prepare_triton()
        self.graph = graph
        self.library = library_kernels() if library is None else dict(library)
        self.input_symbols = sorted({s for v in graph.inputs for s in v.type.free_symbols()}, key=lambda s: s.name)
        self.partition: Partition = partition(graph, cost, library=self.library)
        self.plan: MemoryPlan = plan_memory(self.partition, set(self.input_symbols))
        self.generated: GeneratedModule = generate(self.partition, self.plan, self.input_symbols)
        self.source: str = self.generated.source
        self._module: Optional[ModuleType] = None
        self._launch: Callable[..., list[torch.Tensor]] = _not_loaded
        # set by the compile driver (membound.progress.kernel_compiles): wraps a launch at new shapes,
        # the one in which Triton compiles the kernels, to show their progress
        self.compile_watch: Optional[Callable[[str], ContextManager[Any]]] = None
        # per distinct input shapes/dtypes/devices: (sizes, the memory plan's buffers, device)
        self._ready: dict[tuple[Any, ...], tuple[dict[str, int], list[torch.Tensor], torch.device]] = {}
        self.gather_checks: list[GatherCheck] = gather_checks(graph)  # input ids checked on every call
        if device_asserts() and interpreted():
            enable_interpreter_asserts()

    # ---- loading ------------------------------------------------------------------------------
    def module(self) -> ModuleType:
        """The generated module with this executable's ``lib_*``/``ref_*`` functions bound, loaded once
        per process for each (source, functions) pair; Triton compiles its kernels lazily, per
        specialisation, and caches them itself."""
        if self._module is not None:
            return self._module
        functions: dict[str, Callable[..., Any]] = {}
        for fn_name, (impl, op) in self.generated.bindings.items():
            fn = self.library.get(op) if impl == "library" else None
            if fn is None:
                fn = _without_out(get_op(op).reference) if impl == "library" else get_op(op).reference
            functions[fn_name] = fn
        digest = hashlib.sha256(self.source.encode()).hexdigest()[:16]
        key = (digest,) + tuple(sorted((name, id(fn)) for name, fn in functions.items()))
        mod = _MODULES.get(key)
        if mod is None:
            path = cache_dir() / f"{_safe(self.graph.name)}_{digest}.py"
            if not path.exists():
                tmp = path.with_suffix(f".{os.getpid()}.tmp")
                tmp.write_text(self.source)
                tmp.replace(path)
            name = f"membound_generated_{digest}_{len(_MODULES)}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            mod = importlib.util.module_from_spec(spec)
            sys.modules[name] = mod
            spec.loader.exec_module(mod)
            for fn_name, fn in functions.items():
                setattr(mod, fn_name, fn)
            mod.launch_options = pdl_options  # type: ignore[attr-defined]
            _MODULES[key] = mod
        self._module = mod
        return mod

    # ---- running ------------------------------------------------------------------------------
    def __call__(self, inputs: Sequence[torch.Tensor], tensors: Optional[dict[str, torch.Tensor]] = None
                 ) -> list[torch.Tensor]:
        g = self.graph
        tensors = g.tensors if tensors is None else tensors
        # inputs seen before skip validation and planning: one dict lookup
        key = tuple((t.shape, t.dtype, t.device) for t in inputs)
        ready = self._ready.get(key)
        new_shapes = ready is None
        if ready is None:
            ready = self._prepare(inputs, tensors)
            if len(self._ready) >= MAX_PLANS:
                self._ready.pop(next(iter(self._ready)))
            self._ready[key] = ready
        sizes, bufs, device = ready
        if self.gather_checks:
            check_inputs(self.gather_checks, g, inputs, tensors, {s: sizes[s.name] for s in self.input_symbols})
        if new_shapes and self.compile_watch is not None:
            with self.compile_watch(g.name):
                return self._launch(*inputs, tensors=tensors, bufs=bufs, device=device, **sizes)
        return self._launch(*inputs, tensors=tensors, bufs=bufs, device=device, **sizes)

    def _prepare(self, inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor]
                 ) -> tuple[dict[str, int], list[torch.Tensor], torch.device]:
        """Check the inputs against the graph, bind the sizes, allocate the memory plan's buffers."""
        bindings = bind_symbols(self.graph.inputs, list(inputs))
        device = _device(inputs, tensors)
        if device.type != "cuda" and not interpreted():
            raise RuntimeError(f"backend='triton' got {device.type} tensors, but Triton was imported without "
                               "TRITON_INTERPRET=1; set it before anything imports triton, or use CUDA tensors "
                               "(or backend='reference')")
        mod = self.module()
        self._launch = mod.launch
        sizes = {s.name: bindings[s] for s in self.input_symbols}
        return sizes, mod.allocate(device, **sizes), device

    def describe(self) -> str:
        """The partition and the memory plan, as text."""
        return self.partition.describe() + "\n\n" + self.plan.describe()


def _not_loaded(*args: Any, **kwargs: Any) -> list[torch.Tensor]:
    raise AssertionError("the generated module is loaded by the first call")


def _without_out(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A torch reference standing in for a library kernel: accept ``out=`` and copy into it."""

    def call(*args: Any, out: Optional[torch.Tensor] = None, **attrs: Any) -> Any:
        for hint in LAUNCH_HINTS:  # for the kernel only (codegen.LAUNCH_HINTS)
            attrs.pop(hint, None)
        res = fn(*args, **attrs)
        if out is None:
            return res
        out.copy_(res)
        return out

    return call


def _device(inputs: Sequence[torch.Tensor], tensors: dict[str, torch.Tensor]) -> torch.device:
    """The device the graph runs on: the first CUDA tensor's (a CPU scalar among CUDA tensors does not
    decide it), else the CPU."""
    found = [t.device for t in list(inputs) + list(tensors.values()) if isinstance(t, torch.Tensor)]
    return next((d for d in found if d.type == "cuda"), found[0] if found else torch.device("cpu"))


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name) or "graph"


__all__ = ["TritonExecutable", "cache_dir", "interpreted", "library_kernels", "prepare_triton"]
