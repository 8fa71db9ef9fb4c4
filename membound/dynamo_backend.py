"""``torch.compile(model, backend="membound")``: membound as a Dynamo backend (graph-break tolerant).

    compiled = torch.compile(model, backend="membound", options={"backend": "reference", "dump_ir": "ir/"})

Dynamo hands each captured subgraph (a torch-level FX GraphModule) to :func:`membound_backend`, which
converts it to membound IR through the same ATen table as ``membound.compile`` and then runs the same
compile driver (``membound.driver``): the ``forward`` pipeline with the cost model, then the backend.
``options=`` takes membound's compile options (the fields of ``CompileOptions``).

Hugging Face's own recipes work through it: ``m.forward = torch.compile(m.forward, backend="membound")``
then ``m.generate(ids, cache_implementation="static")`` (or the default dynamic cache). The cache's
tensors come in as graph inputs; the frontend makes them state (``frontends/dynamo.py``), and each call
binds that call's own tensors, so a new ``generate`` (a new StaticCache) reuses the compiled graphs. The name is
registered through the ``torch_dynamo_backends`` entry point (installed with the package) and again
when this module is imported.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional, Sequence

import torch

from membound import logs
from membound.driver import CompileOptions, compile_graph_with
from membound.frontends import CaptureError
from membound.frontends.dynamo import capture_dynamo, takes_hf_cache

_capture_log = logs.logger("capture")
_count = 0  # graphs compiled in this process (dump folders are numbered by it)


def membound_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *,
                     options: Optional[Mapping[str, Any]] = None, mode: Optional[str] = None,
                     **option_kwargs: Any) -> Callable[..., Any]:
    """Compile one Dynamo graph. ``options`` (``torch.compile(..., options={...})``) or keyword arguments
    are membound's compile options; ``mode`` must be left at its default (membound has no modes)."""
    global _count
    if mode not in (None, "default"):
        raise ValueError(f"torch.compile(backend='membound') has no mode {mode!r}; pass membound's options instead: "
                         f"options={{'backend': ..., 'cuda_graphs': ...}}")
    opts = CompileOptions.from_mapping({**dict(options or {}), **option_kwargs}, "torch.compile(backend='membound')")
    start = time.perf_counter()
    try:
        capture = capture_dynamo(gm, example_inputs, dynamic=opts.dynamic, fallback=opts.fallback)
    except Exception as e:
        if not takes_hf_cache(gm):
            raise
        raise CaptureError(
            "torch.compile(backend='membound') could not capture a forward that reads a Hugging Face KV cache "
            "(past_key_values). HF's cache recipes work when each cache write is index_copy_/index_put_/copy_ or an "
            "in-place elementwise op on the cache's tensors (StaticCache, DynamicCache); this model's cache does "
            "something else. membound's own static KV cache needs none of it: compiled = membound.compile(model); "
            "compiled.generate(input_ids, max_new_tokens=N) takes model.generate's arguments. (The capture failed "
            f"with {type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''})") from e
    call_state: dict[int, str] = dict(capture.graph.meta.get("call_state", {}))
    _capture_log.info("captured a Dynamo graph of %s: %d nodes, %.2f s", capture.name, len(capture.graph.nodes),
                      time.perf_counter() - start)
    dump_dir = None
    if opts.dump_ir:
        from pathlib import Path

        dump_dir = Path(opts.dump_ir) / f"dynamo-{_count}"
    _count += 1
    compiled = compile_graph_with(capture.graph, opts, "forward", name=capture.name, dump_dir=dump_dir)
    capture.graph = compiled.ir
    executable = compiled.executable
    graph = compiled.ir
    live = {pos: name for pos, name in call_state.items() if name in graph.tensors}

    written = {v.name for v in graph.state}
    # what _one_device needs of the graph's own tensors, found once: a call only adds its inputs and cache
    home = next((t.device for t in graph.tensors.values() if isinstance(t, torch.Tensor) and t.is_cuda), None)
    on_cpu = [name for name, t in graph.tensors.items() if isinstance(t, torch.Tensor) and t.device.type == "cpu"]

    def run(*args: Any) -> Any:
        inputs = capture.flatten_inputs(args, {})
        if not live:
            return capture.unflatten_outputs(executable(_one_device(inputs, {}, written, capture.name)), inputs)
        # the call's own cache tensors (a new generate call brings a new StaticCache), by reference
        own = {name: args[pos] for pos, name in live.items()}
        own.update({name: graph.tensors[name] for name in on_cpu if name not in own})
        moved = _one_device(inputs, own, written, capture.name, home)
        return capture.unflatten_outputs(executable(moved, {**graph.tensors, **own}), inputs)

    run.membound_graph = compiled.ir  # type: ignore[attr-defined]
    run.membound_input_graph = compiled.input_ir  # type: ignore[attr-defined]
    return run


def _one_device(inputs: list[Any], tensors: dict[str, Any], written: set[str], graph: str,
                home: Optional[torch.device] = None) -> list[Any]:
    """Move the CPU scalars of a call onto its CUDA device, as torch's CUDA kernels take them.

    Dynamo hands over whatever the model holds: HF's StaticCache keeps its length counter as a 0-dim
    CPU tensor until its first update, which is traced into the graph. A membound graph runs on one
    device, so a 0-dim CPU tensor that the graph only reads is copied there (``tensors`` is changed in
    place: it is this call's own dict). A larger CPU tensor, or one the graph writes, is an error that
    names it. Calls without CUDA tensors (``home``: the graph's own CUDA device, if any) are left alone.
    """
    everything = [t for t in list(inputs) + list(tensors.values()) if isinstance(t, torch.Tensor)]
    cuda = next((t.device for t in everything if t.device.type == "cuda"), home)
    if cuda is None or all(t.device.type == "cuda" for t in everything):
        return inputs

    def move(t: Any, what: str, writes: bool) -> Any:
        if not isinstance(t, torch.Tensor) or t.device.type == "cuda":
            return t
        if t.dim() != 0 or writes:
            raise RuntimeError(
                f"torch.compile(backend='membound'): the graph {graph} runs on {cuda} but {what} is a "
                f"{'buffer it writes' if writes else f'{tuple(t.shape)} tensor'} on {t.device}; membound "
                f"runs a graph on one device: move it to {cuda} before the call (model.to({str(cuda)!r}))")
        return t.to(cuda, non_blocking=True)

    for name, t in list(tensors.items()):
        tensors[name] = move(t, f"the tensor {name!r}", name in written)
    return [move(t, f"input {i}", False) for i, t in enumerate(inputs)]


def register() -> None:
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "membound" not in _BACKENDS or _BACKENDS["membound"] is None:
        register_backend(compiler_fn=membound_backend, name="membound")


register()
