"""``membound.compile``: capture -> IR -> pass pipeline -> backend, behind a callable that looks like the model.

    compiled = membound.compile(model)              # captures lazily on the first call
    out = compiled(input_ids, use_cache=False)      # same arguments as the model, same output structure
    print(compiled.ir)                              # the graph after the pipeline

    @membound.compile(dump_ir="ir/")                # also a decorator, with or without arguments
    def f(x, w): ...

Batch and sequence dims are captured symbolically (``B``, ``S``); a call whose shapes the capture
covers reuses it, anything else (new dtypes, a specialised size, other keyword values) captures again.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

import torch

from membound.backends import Executable, compile_graph, resolve_backend
from membound.frontends import Capture, capture_export
from membound.ir.graph import Graph
from membound.passes import PassContext, PassManager, default_pipeline
from membound.passes.instruments import DumpIR

PipelineLike = Sequence[Union[str, Callable[..., bool]]]


@dataclass
class CompiledEntry:
    """One specialisation: the capture, the graph before and after the pipeline, the executable."""

    capture: Capture
    input_ir: Graph
    ir: Graph
    executable: Executable
    pass_records: list[Any] = field(default_factory=list)
    dump_dir: Optional[Path] = None


class CompiledModel:
    """A compiled model or function. Call it exactly like the original."""

    def __init__(self, fn: Callable[..., Any], *, example_inputs: Optional[Sequence[Any]] = None,
                 backend: str = "auto", pipeline: Optional[PipelineLike] = None,
                 dump_ir: Optional[Union[str, os.PathLike[str]]] = None, fallback: Optional[str] = None,
                 dynamic: bool = True) -> None:
        if not callable(fn):
            raise TypeError(f"membound.compile expects an nn.Module or a function, got {type(fn).__name__}")
        resolve_backend(backend)  # fail early on a bad name
        self.fn = fn
        self.backend = backend
        self.pipeline = list(pipeline) if pipeline is not None else None
        self.dump_ir = dump_ir if dump_ir is not None else os.environ.get("MEMBOUND_DUMP_IR") or None
        self.fallback = fallback
        self.dynamic = dynamic
        self.entries: list[CompiledEntry] = []
        if isinstance(fn, torch.nn.Module):
            self._module = fn
        else:
            self._module = None
            functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        if example_inputs is not None:
            args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            self._compile(args, {})

    # ---- what users inspect -------------------------------------------------------------------
    @property
    def num_captures(self) -> int:
        return len(self.entries)

    def _last(self) -> CompiledEntry:
        if not self.entries:
            raise RuntimeError("nothing compiled yet: call the compiled model once, or pass example_inputs=")
        return self.entries[-1]

    @property
    def ir(self) -> Graph:
        """The graph after the pipeline (of the most recent capture)."""
        return self._last().ir

    @property
    def input_ir(self) -> Graph:
        """The captured graph before any pass ran."""
        return self._last().input_ir

    @property
    def pass_records(self) -> list[Any]:
        return self._last().pass_records

    @property
    def dump_dir(self) -> Optional[Path]:
        return self._last().dump_dir

    # ---- compile and call ---------------------------------------------------------------------
    def _compile(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CompiledEntry:
        capture = capture_export(self.fn, args, kwargs, dynamic=self.dynamic, fallback=self.fallback)
        input_ir = capture.graph.copy()
        dump_dir = None
        instruments = []
        if self.dump_ir:
            dump_dir = Path(self.dump_ir)
            if self.entries:
                dump_dir = dump_dir / f"capture-{len(self.entries)}"
            instruments.append(DumpIR(dump_dir))
        pipeline = self.pipeline if self.pipeline is not None else default_pipeline()
        manager = PassManager(pipeline, instruments=instruments)
        graph = manager.run(capture.graph, PassContext())
        capture.graph = graph
        entry = CompiledEntry(capture, input_ir, graph, compile_graph(graph, self.backend), list(manager.records),
                              dump_dir)
        self.entries.append(entry)
        return entry

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        for entry in reversed(self.entries):
            if entry.capture.matches(args, kwargs):
                break
        else:
            entry = self._compile(args, kwargs)
        outputs = entry.executable(entry.capture.flatten_inputs(args, kwargs))
        return entry.capture.unflatten_outputs(outputs)

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped module (config, generation_config, ...) stay reachable
        module = self.__dict__.get("_module")
        if module is not None:
            return getattr(module, name)
        raise AttributeError(name)

    def __repr__(self) -> str:
        what = type(self.fn).__name__ if self._module is not None else getattr(self.fn, "__name__", "fn")
        return f"<membound.CompiledModel of {what}: backend={self.backend}, {self.num_captures} capture(s)>"


def compile(model_or_fn: Optional[Callable[..., Any]] = None, *, example_inputs: Optional[Sequence[Any]] = None,
            backend: str = "auto", pipeline: Optional[PipelineLike] = None,
            dump_ir: Optional[Union[str, os.PathLike[str]]] = None, fallback: Optional[str] = None,
            dynamic: bool = True) -> Any:
    """Compile a model or function; usable as ``compile(m)``, ``@compile`` and ``@compile(dump_ir=...)``.

    Args:
        example_inputs: capture now with these positional inputs instead of on the first call.
        backend: ``"auto"`` (the best for the device) or ``"reference"``.
        pipeline: a list of passes or registered pass names; default ``membound.default_pipeline()``.
        dump_ir: a folder; the IR is written there after every pass (``MEMBOUND_DUMP_IR`` does the same).
        fallback: ``"torch"`` runs ATen ops membound cannot map as opaque torch calls instead of failing.
        dynamic: capture batch/sequence dims symbolically (default) or specialise to the first shapes.
    """
    options = dict(example_inputs=example_inputs, backend=backend, pipeline=pipeline, dump_ir=dump_ir,
                   fallback=fallback, dynamic=dynamic)
    if model_or_fn is None:
        return lambda fn: CompiledModel(fn, **options)
    return CompiledModel(model_or_fn, **options)
