"""``membound.compile``: capture -> IR -> pass pipeline -> backend, behind a callable that looks like the model.

    compiled = membound.compile(model)              # captures lazily on the first call
    out = compiled(input_ids)                       # same arguments as the model, same output structure
    print(compiled.ir)                              # the graph after the pipeline
    tokens = compiled.generate(input_ids, max_new_tokens=20)   # membound's decode loop, HF's arguments

    @membound.compile(dump_ir="ir/")                # also a decorator, with or without arguments
    def f(x, w): ...

Batch and sequence dims are captured symbolically (``B``, ``S``); a call whose shapes the capture
covers reuses it, anything else (new dtypes, a specialised size, other keyword values) captures again,
and so does a replaced parameter or buffer (``model.lm_head.weight = nn.Parameter(...)``, ``.to()``):
every recapture is logged with its reason (``MEMBOUND_LOGS=recompiles``).

A Hugging Face model is captured without its KV cache (``use_cache=False`` is implied) and returns
what HF returns (a ``CausalLMOutputWithPast`` whose ``past_key_values`` is None); cached decoding is
``compiled.generate`` (membound's own static cache).
"""

from __future__ import annotations

import functools
import inspect
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch

from membound import logs, progress
from membound.driver import CompileOptions, PipelineLike, compile_graph_with, default_cost
from membound.frontends import Capture, capture_export
from membound.ir.graph import Graph
from membound.runtime.concurrency import CAPTURE_LOCK, exclusive, guard_module, serial
from membound.runtime.recapture import recapture_limit_hit
from membound.runtime.validate import check_generate

__all__ = ["CompileOptions", "CompiledModel", "KVCacheError", "PipelineLike", "build_kv_program", "compile",
           "default_cost", "generate"]

_recompiles = logs.logger("recompiles")
_capture_log = logs.logger("capture")

# Module methods that return the module itself: on a compiled model they return the compiled model
# (a changed dtype or device is noticed at the next call and recompiled, with a log line).
_RETURNS_SELF = ("eval", "train", "to", "cuda", "cpu", "half", "float", "double", "bfloat16", "type",
                 "requires_grad_", "zero_grad", "apply", "share_memory", "to_empty")


@dataclass
class CompiledEntry:
    """One specialisation: the capture, the graph before and after the pipeline, the executable."""

    capture: Capture
    input_ir: Graph
    ir: Graph
    executable: Any
    pass_records: list[Any] = field(default_factory=list)
    dump_dir: Optional[Path] = None


def _takes_keyword(fn: Any, name: str) -> bool:
    target = fn.forward if isinstance(fn, torch.nn.Module) else fn
    try:
        return name in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _state_key(module: torch.nn.Module) -> tuple[Any, ...]:
    """What the compiled graphs depend on in the module: each parameter and buffer object, its dtype,
    device, shape and storage, and the training flag. A change means the graphs read stale tensors."""
    items: list[Any] = [module.training]
    named = list(module.named_parameters(remove_duplicate=False)) + list(module.named_buffers(remove_duplicate=False))
    for name, t in named:
        ptr = t.data_ptr() if t.device.type != "meta" else 0
        items.append((name, id(t), t.dtype, t.device, tuple(t.shape), ptr))
    return tuple(items)


def _state_change(old: tuple[Any, ...], new: tuple[Any, ...]) -> str:
    """The first difference between two state keys, as a reason for the log."""
    if old[0] != new[0]:
        return f"the module was switched to {'training' if new[0] else 'eval'} mode"
    before = {item[0]: item for item in old[1:]}
    after = {item[0]: item for item in new[1:]}
    for name, item in after.items():
        was = before.get(name)
        if was is None:
            return f"{name} was added"
        if was[1] != item[1]:
            return f"{name} was replaced by another tensor"
        if was[2:5] != item[2:5]:
            return f"{name} changed from {was[2]} {list(was[4])} on {was[3]} to {item[2]} {list(item[4])} on {item[3]}"
        if was[5] != item[5]:
            return f"{name} now has other storage (.data was assigned)"
    missing = sorted(set(before) - set(after))
    return f"{missing[0]} was removed" if missing else "the module's parameters changed"


class CompiledModel:
    """A compiled model or function. Call it exactly like the original.

    Options are one :class:`~membound.driver.CompileOptions` (``compiled.options``), given as keyword
    arguments (``CompiledModel(m, backend="reference")``) or as ``options=``.
    """

    def __init__(self, fn: Callable[..., Any], *, example_inputs: Optional[Sequence[Any]] = None,
                 options: Optional[CompileOptions] = None, **option_kwargs: Any) -> None:
        if not callable(fn):
            raise TypeError(f"membound.compile expects an nn.Module or a function, got {type(fn).__name__}")
        if options is not None and option_kwargs:
            raise TypeError(f"pass compile options either as options= or as keywords, not both "
                            f"(got options= and {', '.join(option_kwargs)})")
        self.options = options if options is not None else _options(option_kwargs, "membound.compile")
        self.fn = fn
        self.entries: list[CompiledEntry] = []
        self.events: list[str] = []  # every capture made for this model and why: "forward: first call", ...
        self._kv_program: Any = None
        self._state: Optional[tuple[Any, ...]] = None
        if isinstance(fn, torch.nn.Module):
            self._module: Optional[torch.nn.Module] = fn
            self._no_cache_kw = _takes_keyword(fn, "use_cache")
        else:
            self._module = None
            self._no_cache_kw = False
            functools.update_wrapper(self, fn)  # type: ignore[arg-type]
        if example_inputs is not None:
            args = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
            self._check_state()
            self._compile(args, self._call_kwargs({}), "example_inputs")

    # ---- options, read-only views of self.options -------------------------------------------
    backend = property(lambda self: self.options.backend)
    pipeline = property(lambda self: self.options.pipeline)
    dump_ir = property(lambda self: self.options.dump_ir)
    fallback = property(lambda self: self.options.fallback)
    dynamic = property(lambda self: self.options.dynamic)
    cuda_graphs = property(lambda self: self.options.cuda_graphs)
    quant_config = property(lambda self: self.options.quant_config)

    # ---- what users inspect -------------------------------------------------------------------
    @property
    def num_captures(self) -> int:
        """Forward captures currently held (``events`` lists every capture ever made, KV steps included)."""
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

    @property
    def kv_program(self) -> Any:
        """The cached prefill/decode program ``generate`` built (None before the first ``generate``)."""
        return self._kv_program

    # ---- compile and call ---------------------------------------------------------------------
    def _name(self) -> str:
        return type(self.fn).__name__ if self._module is not None else getattr(self.fn, "__name__", "fn")

    def _event(self, kind: str, reason: str) -> None:
        """Record a capture; every recapture is logged with its reason (the limit: runtime/recapture.py)."""
        self.events.append(f"{kind}: {reason}")
        count = len(self.events)
        if count > 1:
            _recompiles.info("recapturing %s (%s, capture %d): %s", self._name(), kind, count, reason)

    def _check_state(self) -> None:
        """Drop every compiled graph when a parameter or buffer of the module was replaced (or moved)."""
        if self._module is None:
            return
        # under the capture lock: while another thread's torch.export traces this module its parameters are fake
        # tensors, whose data pointers cannot be read (a two-thread first call failed so, once in a CI run)
        with CAPTURE_LOCK:
            key = _state_key(self._module)
        if self._state is not None and key != self._state and (self.entries or self._kv_program is not None):
            why = _state_change(self._state, key)
            _recompiles.info("%s: %s; dropping %d compiled graph(s), the next call recaptures", self._name(), why,
                             len(self.entries) + (self._kv_program is not None))
            self._stale_reason = why
            self.entries = []
            self._kv_program = None
        self._state = key

    def _call_kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """A Hugging Face forward is captured without its cache: ``use_cache=False`` unless given."""
        if not self._no_cache_kw:
            return kwargs
        if kwargs.get("past_key_values") is not None:
            raise ValueError(f"{self._name()}: membound compiles the cache-less forward and cannot take "
                             f"past_key_values; for cached decoding call compiled.generate(...) (membound's own "
                             f"static KV cache)")
        if kwargs.get("use_cache"):
            raise ValueError(f"{self._name()}: use_cache=True is not supported by a membound-compiled forward "
                             f"(it returns no past_key_values); call it without use_cache, and use "
                             f"compiled.generate(...) for cached decoding")
        if "use_cache" not in kwargs:
            kwargs = {**kwargs, "use_cache": False}
        return kwargs

    def _compile(self, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str) -> CompiledEntry:
        with CAPTURE_LOCK, guard_module(self.fn):  # one capture at a time (runtime/concurrency.py)
            for entry in reversed(self.entries):  # made by another thread while this one waited
                if entry.capture.matches(args, kwargs):
                    return entry
            return self._capture_and_lower(args, kwargs, reason)

    def _capture_and_lower(self, args: tuple[Any, ...], kwargs: dict[str, Any], reason: str) -> CompiledEntry:
        name = self._name()
        with progress.bar(f"membound: capturing {name}", total=None, unit="step") as bar:
            start = time.perf_counter()
            capture = capture_export(self.fn, args, kwargs, dynamic=self.options.dynamic,
                                     fallback=self.options.fallback)
            bar.update(1)
        _capture_log.info("captured %s with torch.export: %d nodes, inputs %s, %.2f s", name,
                          len(capture.graph.nodes), ", ".join(str(v.type) for v in capture.graph.inputs),
                          time.perf_counter() - start)
        dump_dir = None
        if self.options.dump_ir:
            dump_dir = Path(self.options.dump_ir)
            if self.entries:
                dump_dir = dump_dir / f"capture-{len(self.entries)}"
        compiled = compile_graph_with(capture.graph, self.options, "forward", name=name, dump_dir=dump_dir)
        capture.graph = compiled.ir
        entry = CompiledEntry(capture, compiled.input_ir, compiled.ir, compiled.executable, compiled.pass_records,
                              dump_dir)
        self.entries.append(entry)
        self._event("forward", reason)
        return entry

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        kwargs = self._call_kwargs(kwargs)
        self._check_state()
        reasons: list[str] = []
        for entry in reversed(self.entries):
            why = entry.capture.mismatch(args, kwargs)
            if why is None:
                break
            reasons.append(why)
        else:  # the newest capture's reason is the one worth reading
            if recapture_limit_hit(self, args, kwargs):  # warned once; runs the original, as Dynamo does
                return self.fn(*args, **kwargs)
            reason = reasons[0] if reasons else self.__dict__.pop("_stale_reason", None) or "first call"
            entry = self._compile(args, kwargs, reason)
        inputs = entry.capture.flatten_inputs(args, kwargs)
        with serial(self):  # forward calls share the backend's buffers: one at a time
            outputs = entry.executable(inputs)
        return entry.capture.unflatten_outputs(outputs, inputs)

    def __deepcopy__(self, memo: dict[int, Any]) -> "CompiledModel":
        # a copy of the model (or function) with the same options, compiled afresh on its first call:
        # captures, executables and caches hold the original's tensors by reference
        import copy

        clone = CompiledModel(copy.deepcopy(self.fn, memo), options=copy.copy(self.options))
        memo[id(self)] = clone
        return clone

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Decode with membound's KV cache. For a Hugging Face model this speaks ``model.generate``'s
        language (``GenerationConfig``, ``max_new_tokens``, ``do_sample``, streamers, ...: see
        :func:`membound.generation.hf_generate`); otherwise it is :func:`membound.generate`."""
        if self._module is not None and hasattr(self._module, "generation_config"):
            from membound.generation import hf_generate

            return hf_generate(self, *args, **kwargs)
        return generate(self, *args, **kwargs)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The compiled forward (same as calling the compiled model)."""
        return self(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        # attributes of the wrapped module (config, generation_config, ...) stay reachable
        module = self.__dict__.get("_module")
        if module is None:
            raise AttributeError(name)
        value = getattr(module, name)
        if name in _RETURNS_SELF and callable(value):
            @functools.wraps(value)
            def keep_compiled(*args: Any, **kwargs: Any) -> Any:
                result = value(*args, **kwargs)
                return self if result is module else result

            return keep_compiled
        return value

    def __repr__(self) -> str:
        return f"<membound.CompiledModel of {self._name()}: backend={self.backend}, {self.num_captures} capture(s)>"


def _options(kwargs: dict[str, Any], where: str) -> CompileOptions:
    try:
        return CompileOptions(**kwargs)
    except TypeError:
        return CompileOptions.from_mapping(kwargs, where)  # names the unknown option and the known ones


def compile(model_or_fn: Optional[Callable[..., Any]] = None, *, example_inputs: Optional[Sequence[Any]] = None,
            options: Optional[CompileOptions] = None, **option_kwargs: Any) -> Any:
    """Compile a model or function; usable as ``compile(m)``, ``@compile`` and ``@compile(dump_ir=...)``.

    Args:
        example_inputs: capture now with these positional inputs instead of on the first call.
        options / keyword options: the fields of :class:`membound.driver.CompileOptions`: ``backend``
            (``"auto"``, ``"reference"``, ``"triton"``), ``pipeline``, ``dump_ir`` (a folder; also
            ``MEMBOUND_DUMP_IR``), ``fallback="torch"``, ``dynamic``, ``cuda_graphs``, ``quantize``
            (``"int8"``, ``"int4"``, ``"fp8"`` or a ``membound.QuantConfig``), ``quantized`` (a folder
            written by ``membound.save_quantized``).
    """
    if options is None:
        options = _options(option_kwargs, "membound.compile")
    elif option_kwargs:
        raise TypeError(f"pass compile options either as options= or as keywords, not both "
                        f"(got options= and {', '.join(option_kwargs)})")
    if model_or_fn is None:
        return lambda fn: CompiledModel(fn, example_inputs=example_inputs, options=options)
    return CompiledModel(model_or_fn, example_inputs=example_inputs, options=options)


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
    """Capture the model once more for decoding: the ``prefill`` pipeline (insert-kv-cache among it), its
    ``S = 1`` specialisation through the ``decode`` pipeline, both through the compile driver.

    The result (a ``KVProgram``: prefill step graph, its S=1 decode specialisation, their executables
    and a static cache) is kept on ``compiled`` and reused by later ``generate`` calls.
    """

    compiled._check_state()
    existing = compiled._kv_program
    if existing is not None and existing.cache.device == input_ids.device:
        return existing
    with CAPTURE_LOCK, guard_module(compiled.fn):  # one capture at a time (runtime/concurrency.py)
        existing = compiled._kv_program  # built by another thread while this one waited
        if existing is not None and existing.cache.device == input_ids.device:
            return existing
        return _build_kv_program(compiled, input_ids, existing)


def _build_kv_program(compiled: CompiledModel, input_ids: torch.Tensor, existing: Any) -> Any:
    from membound.ir.types import S
    from membound.runtime.generate import KVProgram
    from membound.runtime.kv_cache import StaticKVCache

    reason = "first generate" if existing is None else f"input_ids moved to {input_ids.device}"
    options = compiled.options
    name = compiled._name()
    # an example with batch and sequence >= 2 keeps both dims symbolic (export specialises size 1)
    example = torch.zeros(max(2, input_ids.shape[0]), max(2, input_ids.shape[1]), dtype=input_ids.dtype,
                          device=input_ids.device)
    kwargs = {"use_cache": False} if _accepts_kwarg(compiled.fn, "use_cache") else {}
    start = time.perf_counter()
    capture = capture_export(compiled.fn, (example,), kwargs, dynamic=True, fallback=options.fallback)
    _capture_log.info("captured %s for decoding: %d nodes, %.2f s", name, len(capture.graph.nodes),
                      time.perf_counter() - start)
    dump = Path(options.dump_ir) if options.dump_ir else None
    prefill = compile_graph_with(capture.graph, options, "prefill", name=name,
                                 dump_dir=dump / "kv-prefill" if dump else None)
    step = prefill.ir
    if "kv_cache" not in step.meta:
        reasons = "; ".join(line for line in prefill.log if "insert-kv-cache" in line or "left unchanged" in line)
        raise KVCacheError(f"cannot decode {name} with a KV cache: "
                           f"{reasons or 'insert-kv-cache did not fire'}. Use generate(..., kv_cache=False) to "
                           f"decode by full recomputation instead.")
    # a capture torch.export proved only for S <= N (a branch on the sequence length: DeepSeek-V4's compressor emits
    # its first entry at compress_rate tokens) is the model only up to N positions: no decode goes past them
    seq = next((hi for sym, (_, hi) in capture.ranges.items() if str(sym) == str(S)), None)
    if seq is not None:
        step.meta["kv_cache"]["captured_positions"] = int(seq)
    decode = compile_graph_with(step.specialized({S: 1}), options, "decode", name=name,
                                dump_dir=dump / "kv-decode" if dump else None)
    graphs = options.cuda_graphs if options.cuda_graphs is not None else decode.backend.supports_cuda_graphs
    syncing = host_syncing_ops(decode.executable) if graphs else []
    if syncing and options.cuda_graphs:
        raise KVCacheError(f"cannot replay {name}'s decode step as a CUDA graph: it runs {', '.join(syncing)} through "
                           f"its torch reference, which reads values on the host (not allowed while a graph is "
                           f"captured); compile with cuda_graphs=False or None")
    if syncing:
        _capture_log.info("%s: decode step not replayed as a CUDA graph: %s run through torch references that read "
                          "values on the host", name, ", ".join(syncing))
        graphs = False
    program = KVProgram(step, decode.ir, prefill.executable, decode.executable,
                        StaticKVCache(step, input_ids.device), cuda_graphs=bool(graphs))
    compiled._kv_program = program
    compiled._event("prefill+decode", reason)
    return program


def host_syncing_ops(executable: Any) -> list[str]:
    """Ops that ``executable`` runs through a torch reference that reads tensor values on the host (the op
    declares ``host_sync=True``: ``grouped_mm``'s group offsets, ``moe``'s routing, opaque ``torch_call``s);
    a CUDA graph cannot capture those."""
    from membound.ir.ops import get_op

    partition = getattr(executable, "partition", None)
    if partition is None:
        return []
    return sorted({s.node.op for s in partition.steps if getattr(s, "impl", None) == "torch"
                   and get_op(s.node.op).extra.get("host_sync")})


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
    A Hugging Face model's ``generation_config`` supplies ``eos_token_id`` and ``pad_token_id`` when they
    are not given; ``compiled.generate(...)`` takes every ``GenerationConfig`` option HF's generate does.
    """
    from membound.runtime.generate import carried_cache_loop, decode_loop, recompute_loop

    eos_token_id = check_generate(input_ids, max_new_tokens, attention_mask=attention_mask, temperature=temperature,
                                  top_k=top_k, top_p=top_p, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
                                  max_cache_len=max_cache_len, stream=stream, generator=generator,
                                  kv_cache=kv_cache)["eos_token_id"]
    compiled = model_or_compiled if isinstance(model_or_compiled, CompiledModel) else CompiledModel(model_or_compiled)
    own = getattr(compiled._module, "generation_config", None)  # a Hugging Face model's defaults
    if own is not None:
        eos_token_id = eos_token_id if eos_token_id is not None else own.eos_token_id
        pad_token_id = pad_token_id if pad_token_id is not None else own.pad_token_id
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
