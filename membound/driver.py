"""The compile driver: capture -> named pipeline -> backend, one way for every entry point.

``membound.compile`` (forward graphs), ``generate``'s cached step graphs (prefill, decode) and the
``torch.compile(backend="membound")`` backend all call :func:`compile_graph_with` with one
:class:`CompileOptions`, so they run the same passes with the same cost model and decide alike.

    options = CompileOptions(backend="reference")
    compiled = compile_graph_with(capture.graph, options, "forward", name="LlamaForCausalLM")
    compiled.ir, compiled.executable(inputs)

A new compile option is one field of :class:`CompileOptions` (with its line in the docstring); every
entry point takes it from there (``membound.compile(m, quantize=...)``, ``torch.compile(m,
backend="membound", options={"quantize": ...})``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

from membound import logs, progress
from membound.backends import Backend, Executable, compile_graph, get_backend, resolve_backend
from membound.ir.graph import Graph
from membound.passes import DumpIR, Instrument, PassContext, PassManager, named_pipeline, pass_name
from membound.passes.manager import PassRecord
from membound.passes.pipeline import KV_CACHE_PASSES, QUANTIZE_BEFORE, decode_pipeline_name

PipelineLike = Sequence[Union[str, Callable[..., bool]]]
PathLike = Union[str, "os.PathLike[str]"]

_passes_log = logs.logger("passes")
_backend_log = logs.logger("backend")


@dataclass
class CompileOptions:
    """Everything that decides how a graph is compiled; one object for every entry point.

    Attributes:
        backend: ``"auto"`` (triton on a GPU, reference on the CPU), ``"reference"`` or ``"triton"``.
        pipeline: passes or registered pass names for forward graphs (default: the ``forward`` named
            pipeline, ``membound.default_pipeline()``); cached step graphs run it followed by the KV-cache
            passes.
        dump_ir: a folder; the IR is written there after every pass (default ``$MEMBOUND_DUMP_IR``).
        fallback: ``"torch"`` runs ATen ops membound cannot map as opaque torch calls instead of failing.
        dynamic: capture batch/sequence dims symbolically (default) or specialise to the first shapes.
        cuda_graphs: replay generate()'s decode steps as CUDA graphs (default: when the backend supports
            them and the tensors are on a GPU).
        quantize: weight-only quantization of the linears: ``"int8"``, ``"int4"`` (group 128), ``"fp8"``
            or a ``membound.QuantConfig`` (group size, layers to skip); None (default) keeps the weights.
            The ``quantize-weights`` pass runs after the other passes, where the cost model says it pays.
        quantized: a folder written by ``membound.save_quantized``: its packed weights are used instead
            of quantizing again (the scheme comes from the folder; ``quantize`` may be omitted).
    """

    backend: str = "auto"
    pipeline: Optional[PipelineLike] = None
    dump_ir: Optional[PathLike] = None
    fallback: Optional[str] = None
    dynamic: bool = True
    cuda_graphs: Optional[bool] = None
    quantize: Any = None
    quantized: Optional[PathLike] = None
    # derived from quantize / quantized in __post_init__: the QuantConfig the pipelines use, or None
    quant_config: Any = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        from membound.runtime.validate import check_compile, check_dump_dir

        resolve_backend(self.backend)  # fails early on a bad name
        check_compile(dynamic=self.dynamic, cuda_graphs=self.cuda_graphs, fallback=self.fallback,
                      pipeline=self.pipeline)
        if self.pipeline is not None:
            self.pipeline = list(self.pipeline)
        source = "dump_ir"
        if self.dump_ir is None:
            self.dump_ir = os.environ.get("MEMBOUND_DUMP_IR") or None
            source = "MEMBOUND_DUMP_IR"
        if self.dump_ir:  # an unusable folder fails here, once, naming it
            check_dump_dir(self.dump_ir, source)
        self.quant_config = _quant_config(self.quantize, self.quantized)

    @classmethod
    def from_mapping(cls, options: Optional[Mapping[str, Any]], where: str) -> "CompileOptions":
        """Options given as a dict (``torch.compile(..., options={...})``); an unknown key names the known ones."""
        options = dict(options or {})
        known = [f.name for f in dataclasses.fields(cls) if f.init]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise TypeError(f"{where}: unknown option(s) {', '.join(map(repr, unknown))}; membound's compile options "
                            f"are {', '.join(known)}")
        return cls(**options)

    def pipeline_for(self, kind: str) -> list[Any]:
        """The passes for a graph of ``kind``: ``forward``, ``prefill`` or ``decode`` (quantize-weights last,
        when asked for, on forward and prefill graphs: the decode graph inherits the prefill's weights)."""
        if kind == "decode":
            passes = named_pipeline(decode_pipeline_name())  # "decode" unless MEMBOUND_DECODE_PIPELINE says
        elif self.pipeline is None:
            passes = named_pipeline(kind)
        elif kind == "forward":
            passes = list(self.pipeline)
        elif kind == "prefill":
            passes = list(self.pipeline) + list(KV_CACHE_PASSES)
        else:
            raise KeyError(f"no pipeline for graphs of kind {kind!r}; kinds: forward, prefill, decode")
        if kind != "decode" and self.quant_config is not None:
            from membound.passes.quantize_weights import QuantizeWeights

            # before the passes that fold a linear's neighbours (or the gating) into it: it quantizes plain linears
            names = [pass_name(p) for p in passes]
            at = min([names.index(n) for n in QUANTIZE_BEFORE if n in names], default=len(passes))
            passes[at:at] = [QuantizeWeights(self.quant_config), "dead-code-elimination"]
        return passes


def _quant_config(quantize: Any, quantized: Optional[PathLike]) -> Any:
    """The ``QuantConfig`` of ``quantize=`` / ``quantized=``, or None."""
    if quantize is None and quantized is None:
        return None
    from membound.passes.quantize_weights import as_quant_config

    config = as_quant_config(quantize)
    if quantized is not None:
        from membound.quantized_io import load_quantized

        config = load_quantized(quantized, config)
    return config


@dataclass
class CompiledGraph:
    """One graph through the driver: before and after the pipeline, the backend's executable."""

    input_ir: Graph
    ir: Graph
    executable: Executable
    backend: Backend
    pass_records: list[PassRecord] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    dump_dir: Optional[Path] = None


GENERATED_MODULE = "triton-module.py"  # the generated Triton module, beside the .mir files of a dump
PARTITION_DUMP = "triton-partition.txt"  # its steps, the fusions not made and why, the memory plan


def dump_generated_source(executable: Any, dump_dir: Path) -> Optional[Path]:
    """Write the backend's generated module (the Triton kernels and their launcher) into the dump folder
    as ``triton-module.py``; a backend that generates no code (reference) leaves none (a stale one from an
    earlier run into the folder is removed). Beside it, ``triton-partition.txt``: what each kernel fuses,
    every fusion not made and why (``# not fused: ...``), and the memory plan."""
    path = dump_dir / GENERATED_MODULE
    source = getattr(executable, "source", None)
    if not isinstance(source, str):
        path.unlink(missing_ok=True)
        (dump_dir / PARTITION_DUMP).unlink(missing_ok=True)
        return None
    dump_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    describe = getattr(executable, "describe", None)
    if callable(describe):
        (dump_dir / PARTITION_DUMP).write_text(describe() + "\n")
    return path


def default_cost() -> Any:
    """The roofline model passes consult: datasheet specs of this machine's device (``Hardware.detect``)."""
    from membound.cost import Hardware, RooflineCost

    return RooflineCost(Hardware.detect())


class _LogPasses(Instrument):
    """Pipeline runs on ``membound.passes``: one INFO line per run, one DEBUG line per pass; a progress
    bar over the passes on a terminal."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.bar: Any = None

    def enter_pipeline(self, graph: Graph, ctx: PassContext, pass_names: Sequence[str]) -> None:
        self.start = time.perf_counter()
        self.nodes = len(graph.nodes)
        self.count = len(pass_names)
        self.bar = progress.bar(f"passes {self.what}", total=len(pass_names), unit="pass")

    def run_before_pass(self, graph: Graph, ctx: PassContext, name: str, index: int) -> None:
        self.bar.set_postfix_str(name)
        self.log_start = len(ctx.log)

    def run_after_pass(self, graph: Graph, ctx: PassContext, name: str, index: int, changed: bool,
                       seconds: float) -> None:
        self.bar.update(1)
        if _passes_log.isEnabledFor(10):
            notes = "".join(f"\n    {line}" for line in ctx.log[self.log_start:])
            _passes_log.debug("%s: %s %s, %d nodes, %.1f ms%s", self.what, name, "changed" if changed else "unchanged",
                              len(graph.nodes), seconds * 1e3, notes)

    def on_failure(self, graph: Graph, ctx: PassContext, name: str, index: int, error: BaseException) -> None:
        self.bar.close()

    def exit_pipeline(self, graph: Graph, ctx: PassContext) -> None:
        self.bar.close()
        _passes_log.info("%s: %d passes, %d -> %d nodes, %.2f s", self.what, self.count,
                         self.nodes, len(graph.nodes), time.perf_counter() - self.start)


def compile_graph_with(graph: Graph, options: CompileOptions, kind: str, *, name: str,
                       dump_dir: Optional[Path] = None, cost: Any = None,
                       pipeline: Optional[Sequence[Any]] = None) -> CompiledGraph:
    """Run the ``kind`` pipeline (or ``pipeline``) on ``graph`` (in place), then compile it with the backend.

    ``dump_dir`` receives the IR after every pass; ``cost`` defaults to :func:`default_cost`.
    """
    input_ir = graph.copy()
    passes = list(pipeline) if pipeline is not None else options.pipeline_for(kind)
    instruments: list[Instrument] = [_LogPasses(f"{name} ({kind})")]
    if dump_dir is not None:
        instruments.append(DumpIR(dump_dir))
    ctx = PassContext(cost=cost if cost is not None else default_cost())
    manager = PassManager(passes, instruments=instruments)
    graph = manager.run(graph, ctx)
    backend = get_backend(options.backend, graph)
    start = time.perf_counter()
    executable = compile_graph(graph, options.backend)  # (wrapped for MEMBOUND_DEBUG=compare)
    _backend_log.info("%s (%s): %s backend, %d nodes, %.2f s", name, kind, backend.name, len(graph.nodes),
                      time.perf_counter() - start)
    if dump_dir is not None:
        dump_generated_source(executable, Path(dump_dir))
    inner = getattr(executable, "executable", executable)  # (a MEMBOUND_DEBUG=compare wrapper's own)
    if hasattr(inner, "compile_watch"):
        inner.compile_watch = progress.kernel_compiles  # a bar over the kernels Triton compiles at first launch
    return CompiledGraph(input_ir, graph, executable, backend, list(manager.records), list(ctx.log), dump_dir)
