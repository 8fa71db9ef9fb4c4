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
from membound.runtime.concurrency import CAPTURE_LOCK, exclusive, guard_module, serial
from membound.runtime.recapture import recapture_limit_hit
from membound.runtime.validate import check_compile, check_dump_dir, check_generate

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


def default_cost() -> Any:
    """The roofline model passes consult: datasheet specs of this machine's device (``Hardware.detect``)."""
    from membound.cost import Hardware, RooflineCost

    return RooflineCost(Hardware.detect())


class CompiledModel:
    """A compiled model or function. Call it exactly like the original."""

    def __init__(self, fn: Callable[..., Any], *, example_inputs: Optional[Sequence[Any]] = None,
                 backend: str = "auto", pipeline: Optional[PipelineLike] = None,
                 dump_ir: Optional[Union[str, os.PathLike[str]]] = None, fallback: Optional[str] = None,
                 dynamic: bool = True, cuda_graphs: Optional[bool] = None, quantize: Any = None,
                 quantized: Optional[Union[str, os.PathLike[str]]] = None) -> None:
        if not callable(fn):
            raise TypeError(f"membound.compile expects an nn.Module or a function, got {type(fn).__name__}")
        resolve_backend(backend)  # fail early on a bad name
        check_compile(dynamic=dynamic, cuda_graphs=cuda_graphs, fallback=fallback, pipeline=pipeline)
        self.fn = fn
        self.backend = backend
        self.pipeline = list(pipeline) if pipeline is not None else None
        self.dump_ir = dump_ir if dump_ir is not None else os.environ.get("MEMBOUND_DUMP_IR") or None
        if self.dump_ir:  # an unusable folder fails here, once, naming it
            check_dump_dir(self.dump_ir, "dump_ir" if dump_ir is not None else "MEMBOUND_DUMP_IR")
        self.fallback = fallback
        self.dynamic = dynamic
        self.cuda_graphs = cuda_graphs
        self.quant_config = _quant_config(quantize, quantized)
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
    def source(self) -> Optional[str]:
        """The generated code of the most recent capture (triton backend), else None."""
        return getattr(self._last().executable, "source", None)

    @property
    def pass_records(self) -> list[Any]:
        return self._last().pass_records

    @property
    def dump_dir(self) -> Optional[Path]:
        return self._last().dump_dir

    # ---- compile and call ---------------------------------------------------------------------
    def _compile(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CompiledEntry:
        with CAPTURE_LOCK, guard_module(self.fn):  # one capture at a time (runtime/concurrency.py)
            for entry in reversed(self.entries):  # made by another thread while this one waited
                if entry.capture.matches(args, kwargs):
                    return entry
            return self._capture_and_lower(args, kwargs)

    def _capture_and_lower(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> CompiledEntry:
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
        manager = PassManager(with_quantization(pipeline, self.quant_config), instruments=instruments)
        graph = manager.run(capture.graph, PassContext(cost=default_cost()))
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
            if recapture_limit_hit(self, args, kwargs):
                return self.fn(*args, **kwargs)
            entry = self._compile(args, kwargs)
        with serial(self):  # forward calls share the backend's buffers: one at a time
            outputs = entry.executable(entry.capture.flatten_inputs(args, kwargs))
        return entry.capture.unflatten_outputs(outputs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "CompiledModel":
        # a copy of the model (or function) with the same options, compiled afresh on its first call:
        # captures, executables and caches hold the original's tensors by reference
        import copy

        clone = CompiledModel(copy.deepcopy(self.fn, memo), backend=self.backend, pipeline=self.pipeline,
                              dump_ir=self.dump_ir, fallback=self.fallback, dynamic=self.dynamic,
                              cuda_graphs=self.cuda_graphs)
        clone.quant_config = copy.deepcopy(self.quant_config, memo)
        memo[id(self)] = clone
        return clone

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
            dynamic: bool = True, cuda_graphs: Optional[bool] = None, quantize: Any = None,
            quantized: Optional[Union[str, os.PathLike[str]]] = None) -> Any:
    """Compile a model or function; usable as ``compile(m)``, ``@compile`` and ``@compile(dump_ir=...)``.

    Args:
        example_inputs: capture now with these positional inputs instead of on the first call.
        backend: ``"auto"`` (triton on a GPU, reference on the CPU), ``"reference"`` or ``"triton"``.
        pipeline: a list of passes or registered pass names; default ``membound.default_pipeline()``.
        dump_ir: a folder; the IR is written there after every pass (``MEMBOUND_DUMP_IR`` does the same).
        fallback: ``"torch"`` runs ATen ops membound cannot map as opaque torch calls instead of failing.
        dynamic: capture batch/sequence dims symbolically (default) or specialise to the first shapes.
        cuda_graphs: replay generate()'s decode steps as CUDA graphs (default: on with the triton
            backend on a GPU, off otherwise).
        quantize: weight-only quantization of the linears: ``"int8"``, ``"int4"`` (group 128), ``"fp8"``
            or a ``membound.QuantConfig`` (group size, layers to skip); None (default) keeps the weights.
            The ``quantize-weights`` pass runs after the other passes, where the cost model says it pays.
        quantized: a folder written by ``membound.save_quantized``: its packed weights are used instead
            of quantizing again (the scheme comes from the folder; ``quantize`` may be omitted).
    """
    options = dict(example_inputs=example_inputs, backend=backend, pipeline=pipeline, dump_ir=dump_ir,
                   fallback=fallback, dynamic=dynamic, cuda_graphs=cuda_graphs, quantize=quantize,
                   quantized=quantized)
    if model_or_fn is None:
        return lambda fn: CompiledModel(fn, **options)
    return CompiledModel(model_or_fn, **options)


def _quant_config(quantize: Any, quantized: Optional[Union[str, os.PathLike[str]]]) -> Any:
    """The ``QuantConfig`` of ``compile(quantize=..., quantized=...)``, or None."""
    from membound.passes.quantize_weights import as_quant_config

    config = as_quant_config(quantize)
    if quantized is not None:
        from membound.quantized_io import load_quantized

        config = load_quantized(quantized, config)
    return config


def with_quantization(pipeline: PipelineLike, config: Any) -> list[Any]:
    """``pipeline`` followed by ``quantize-weights`` (and a dead-code sweep) when ``config`` asks for it."""
    if config is None:
        return list(pipeline)
    from membound.passes.quantize_weights import QuantizeWeights

    return list(pipeline) + [QuantizeWeights(config), "dead-code-elimination"]


class KVCacheError(RuntimeError):
    """generate() could not turn the model into a cached step graph; the message says why."""


def _accepts_kwarg(fn: Callable[..., Any], name: str, explicit: bool = False) -> bool:
    """Whether ``fn`` (or a module's forward) takes keyword ``name`` (by name, or through ``**kwargs``)."""
    import inspect

    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    if name in params:
        return True
    return not explicit and any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _carried_cache_position_kw(fn: Callable[..., Any]) -> Optional[str]:
    """The position argument of a model that carries its own KV cache, else None.

    Such models (Hugging Face's exportable static-cache module, gpt-fast-style code) take the cache
    slots of the new tokens as ``cache_position`` or ``input_pos`` and have no ``use_cache`` switch;
    membound compiles their in-place cache writes into state ops and calls them step by step.
    """
    if _accepts_kwarg(fn, "use_cache"):
        return None
    for name in ("cache_position", "input_pos"):
        if _accepts_kwarg(fn, name, explicit=True):
            return name
    return None


def build_kv_program(compiled: CompiledModel, input_ids: torch.Tensor) -> Any:
    """Capture the model once more for decoding: pipeline + fuse-attention + insert-kv-cache.

    The result (a ``KVProgram``: prefill step graph, its S=1 decode specialisation, their executables
    and a static cache) is kept on ``compiled`` and reused by later ``generate`` calls.
    """
    existing = getattr(compiled, "_kv_program", None)
    if existing is not None and existing.cache.device == input_ids.device:
        return existing
    with CAPTURE_LOCK, guard_module(compiled.fn):  # one capture at a time (runtime/concurrency.py)
        existing = getattr(compiled, "_kv_program", None)  # built by another thread while this one waited
        if existing is not None and existing.cache.device == input_ids.device:
            return existing
        return _build_kv_program(compiled, input_ids)


def _build_kv_program(compiled: CompiledModel, input_ids: torch.Tensor) -> Any:
    from membound.ir.types import S
    from membound.runtime.generate import KVProgram
    from membound.runtime.kv_cache import StaticKVCache

    # an example with batch and sequence >= 2 keeps both dims symbolic (export specialises size 1)
    example = torch.zeros(max(2, input_ids.shape[0]), max(2, input_ids.shape[1]), dtype=input_ids.dtype,
                          device=input_ids.device)
    kwargs = {"use_cache": False} if _accepts_kwarg(compiled.fn, "use_cache") else {}
    capture = capture_export(compiled.fn, (example,), kwargs, dynamic=True, fallback=compiled.fallback)
    base = compiled.pipeline if compiled.pipeline is not None else default_pipeline()
    pipeline = with_quantization(list(base) + ["fuse-attention", "insert-kv-cache", "fuse-moe", "merge-linear",
                                                "fuse-gated-linear", "canonicalize", "dead-code-elimination"],
                                 compiled.quant_config)
    instruments = [DumpIR(Path(compiled.dump_ir) / "kv-prefill")] if compiled.dump_ir else []
    ctx = PassContext(cost=default_cost())
    manager = PassManager(pipeline, instruments=instruments)
    step = manager.run(capture.graph, ctx)
    if "kv_cache" not in step.meta:
        reasons = "; ".join(line for line in ctx.log if "insert-kv-cache" in line or "left unchanged" in line)
        raise KVCacheError(f"cannot decode {type(compiled.fn).__name__} with a KV cache: "
                           f"{reasons or 'insert-kv-cache did not fire'}. Use generate(..., kv_cache=False) to "
                           f"decode by full recomputation instead.")
    decode = step.specialized({S: 1})
    decode = PassManager(["canonicalize", "dead-code-elimination"]).run(decode, PassContext())
    decode_exe = compile_graph(decode, compiled.backend)
    graphs = compiled.cuda_graphs if compiled.cuda_graphs is not None else type(decode_exe).__name__ == \
        "TritonExecutable"
    program = KVProgram(step, decode, compile_graph(step, compiled.backend), decode_exe,
                        StaticKVCache(step, input_ids.device), cuda_graphs=bool(graphs))
    compiled._kv_program = program
    return program


def generate(model_or_compiled: Any, input_ids: torch.Tensor, max_new_tokens: int = 32, *,
             attention_mask: Optional[torch.Tensor] = None, temperature: float = 0.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None, eos_token_id: Any = None, pad_token_id: Optional[int] = None,
             max_cache_len: Optional[int] = None, stream: Optional[Callable[[torch.Tensor], None]] = None,
             generator: Optional[torch.Generator] = None, kv_cache: bool = True) -> torch.Tensor:
    """Decode ``max_new_tokens`` after ``input_ids``; returns the prompt followed by the new tokens.

    A cache-less model is turned into a prefill graph and an S=1 decode graph over a static KV cache
    (the ``insert-kv-cache`` pass), compiled once and reused across calls. Greedy when ``temperature``
    is 0 (default), else sampled with ``top_k`` / ``top_p``. Rows may have different prompt lengths:
    pass ``attention_mask`` (left or right padding). ``stream(tokens[B])`` is called for every step.
    ``kv_cache=False`` recomputes the whole sequence for each token (a baseline; O(S) per token).
    """
    from membound.runtime.generate import carried_cache_loop, decode_loop, recompute_loop

    eos_token_id = check_generate(input_ids, max_new_tokens, attention_mask=attention_mask, temperature=temperature,
                                  top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                  max_cache_len=max_cache_len, stream=stream, generator=generator,
                                  kv_cache=kv_cache)["eos_token_id"]
    compiled = model_or_compiled if isinstance(model_or_compiled, CompiledModel) else CompiledModel(model_or_compiled)
    options = dict(attention_mask=attention_mask, temperature=temperature, top_k=top_k, top_p=top_p,
                   eos_token_id=eos_token_id, pad_token_id=pad_token_id, stream=stream, generator=generator)
    with torch.no_grad(), exclusive(compiled, "generate"):
        if not kv_cache:
            return recompute_loop(compiled, input_ids, max_new_tokens, **options)
        position_kw = _carried_cache_position_kw(compiled.fn)
        if position_kw is not None:
            return carried_cache_loop(compiled, position_kw, input_ids, max_new_tokens, **options)
        program = build_kv_program(compiled, input_ids)
        return decode_loop(program, input_ids, max_new_tokens, max_cache_len=max_cache_len, **options)
