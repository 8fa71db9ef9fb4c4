"""``torch.compile(model, backend="membound")``: membound as a Dynamo backend (graph-break tolerant).

Dynamo hands each captured subgraph (a torch-level FX GraphModule) to :func:`membound_backend`, which
converts it to membound IR through the same ATen table as ``membound.compile``, runs the pipeline and
returns the backend's executable. The name is registered through the ``torch_dynamo_backends`` entry
point (installed with the package) and again when this module is imported.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from membound.backends import compile_graph
from membound.frontends.dynamo import capture_dynamo
from membound.passes import PassContext, PassManager, default_pipeline


def membound_backend(gm: torch.fx.GraphModule, example_inputs: Sequence[Any], *, backend: str = "auto",
                     pipeline: Any = None) -> Callable[..., Any]:
    capture = capture_dynamo(gm, example_inputs)
    manager = PassManager(list(pipeline) if pipeline is not None else default_pipeline())
    graph = manager.run(capture.graph, PassContext())
    capture.graph = graph
    executable = compile_graph(graph, backend)

    def run(*args: Any) -> Any:
        return capture.unflatten_outputs(executable(capture.flatten_inputs(args, {})))

    run.membound_graph = graph  # type: ignore[attr-defined]
    return run


def register() -> None:
    from torch._dynamo.backends.registry import _BACKENDS, register_backend

    if "membound" not in _BACKENDS or _BACKENDS["membound"] is None:
        register_backend(compiler_fn=membound_backend, name="membound")


register()
