"""How long will a compiled model's decode step take? The cost model's answer, launch by launch.

    pred = predict_decode_step(compiled, batch=1, cache_len=192, hardware="h200")
    print(pred.table())                  # launches, predicted ms, per-kernel-kind breakdown
    call = predict_generate(compiled, batch=8, prompt_len=128, new_tokens=128)
    call.seconds, call.tokens_per_s

The step is the Triton executable of ``generate``'s decode graph (the ``S = 1`` step over the KV cache),
as its partition launches it, costed by ``membound.cost.step`` at the batch and cache length: each
launch's work by its kernel kind's measured efficiency, plus the launch gaps of a replayed CUDA graph
(with programmatic dependent launch on Hopper), plus ``generate``'s per-token loop. A model that has not
been compiled for the Triton backend is compiled for it (on its own device; a model on the meta device
costs no memory), which captures it once more.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Optional, Union

import torch

from membound.cost.hardware import Hardware, match_gpu
from membound.cost.step import MODES, StepPrediction, predict_step

PDL_CARDS = ("h100-sxm", "h200")  # Hopper: programmatic dependent launch (kernels/_launch.pdl)


@dataclass
class GeneratePrediction:
    """A whole ``generate`` call: the prefill (run without a graph: host-bound at short prompts), then
    ``new_tokens - 1`` decode steps, costed at the mean cache length ``prompt_len + new_tokens / 2``
    (a step's attention cost is linear in the cache length)."""

    prefill: StepPrediction
    step: StepPrediction
    batch: int
    prompt_len: int
    new_tokens: int

    @property
    def seconds(self) -> float:
        return self.prefill.time_s + (self.new_tokens - 1) * self.step.time_s

    @property
    def tokens_per_s(self) -> float:
        return self.batch * self.new_tokens / self.seconds

    def summary(self) -> str:
        return (f"generate b{self.batch}, prompt {self.prompt_len}, {self.new_tokens} new tokens: predicted "
                f"{self.seconds * 1e3:.1f} ms ({self.tokens_per_s:.0f} tok/s) = prefill "
                f"{self.prefill.time_s * 1e3:.2f} ms + {self.new_tokens - 1} x step {self.step.time_s * 1e3:.3f} ms")


def default_mode(compiled: Any, hardware: Hardware) -> str:
    """How ``generate`` runs the step: a CUDA graph unless compiled with ``cuda_graphs=False``; with PDL on
    Hopper cards unless ``MEMBOUND_PDL=0``."""
    if getattr(getattr(compiled, "options", None), "cuda_graphs", None) is False:
        return "eager"
    card = match_gpu(hardware.name, hardware.memory_bytes) if hardware.device_type == "cuda" else None
    pdl = card in PDL_CARDS and os.environ.get("MEMBOUND_PDL", "1") != "0"
    return "graph+pdl" if pdl else "graph"


def triton_program(model_or_compiled: Any) -> Any:
    """The prefill/decode program (``KVProgram``) ``generate`` runs, compiled for the Triton backend.

    A ``CompiledModel`` whose program exists and was built by the Triton backend is used as it is; otherwise
    the model is compiled again with ``backend="triton"`` (its other options kept) and its program built
    with token ids on the model's device.
    """
    from membound.api import CompiledModel, build_kv_program

    compiled = model_or_compiled
    program = getattr(compiled, "kv_program", None)
    if program is not None and getattr(program.decode, "partition", None) is not None:
        return program
    if isinstance(compiled, CompiledModel):
        options = dataclasses.replace(compiled.options, backend="triton")
        compiled = CompiledModel(compiled.fn, options=options)
    elif isinstance(compiled, torch.nn.Module):
        compiled = CompiledModel(compiled, backend="triton")
    else:
        raise TypeError(f"predict_decode_step expects an nn.Module or a membound CompiledModel, got "
                        f"{type(model_or_compiled).__name__}")
    module = compiled._module
    param = next(iter(module.parameters()), None) if module is not None else None
    device = param.device if param is not None else torch.device("cpu")
    return build_kv_program(compiled, torch.zeros(1, 8, dtype=torch.long, device=device))


def _hardware(hardware: Union[Hardware, str, None]) -> Hardware:
    from membound.runtime.validate import resolve_hardware

    return resolve_hardware(hardware) or Hardware.detect()


def predict_decode_step(model_or_compiled: Any, batch: int, cache_len: int, *,
                        hardware: Union[Hardware, str, None] = None, mode: Optional[str] = None,
                        bandwidth: Optional[float] = None, loop: bool = True) -> StepPrediction:
    """The predicted time of one decode step of ``model_or_compiled`` at ``batch`` rows attending to
    ``cache_len`` cached positions, on ``hardware`` (a spec or its name; default: this machine's).

    ``mode``: "graph+pdl", "graph" or "eager" (default: how ``generate`` would run it, ``default_mode``);
    ``bandwidth``: a read bandwidth measured in the same run (bytes/s); ``loop``: include ``generate``'s
    per-token work outside the step.
    """
    if batch < 1 or cache_len < 1:
        raise ValueError(f"predict_decode_step: batch and cache_len must be >= 1, got {batch}, {cache_len}")
    hw = _hardware(hardware)
    mode = mode or default_mode(model_or_compiled, hw)
    if mode not in MODES:
        raise ValueError(f"predict_decode_step: mode must be one of {MODES}, got {mode!r}")
    return decode_prediction(triton_program(model_or_compiled), hw, batch, cache_len, mode, bandwidth, loop)


def predict_prefill(model_or_compiled: Any, batch: int, prompt_len: int, *,
                    hardware: Union[Hardware, str, None] = None, bandwidth: Optional[float] = None) -> StepPrediction:
    """The predicted time of ``generate``'s prefill (no CUDA graph: one Python launch per kernel)."""
    return prefill_prediction(triton_program(model_or_compiled), _hardware(hardware), batch, prompt_len, bandwidth)


def predict_generate(model_or_compiled: Any, batch: int, prompt_len: int, new_tokens: int, *,
                     hardware: Union[Hardware, str, None] = None, mode: Optional[str] = None,
                     bandwidth: Optional[float] = None) -> GeneratePrediction:
    """The predicted time of ``generate(compiled, ids[batch, prompt_len], new_tokens)`` (see
    :class:`GeneratePrediction`)."""
    if batch < 1 or prompt_len < 1 or new_tokens < 1:
        raise ValueError(f"predict_generate: batch, prompt_len and new_tokens must be >= 1, got {batch}, "
                         f"{prompt_len}, {new_tokens}")
    hw = _hardware(hardware)
    mode = mode or default_mode(model_or_compiled, hw)
    program = triton_program(model_or_compiled)
    prefill = prefill_prediction(program, hw, batch, prompt_len, bandwidth)
    step = decode_prediction(program, hw, batch, prompt_len + new_tokens // 2, mode, bandwidth, True)
    return GeneratePrediction(prefill, step, batch, prompt_len, new_tokens)


def decode_prediction(program: Any, hw: Hardware, batch: int, cache_len: int, mode: str,
                      bandwidth: Optional[float], loop: bool) -> StepPrediction:
    """``predict_decode_step`` on a built program."""
    from membound.backends.triton.step_plan import kernel_works

    works = kernel_works(program.decode.partition, {"B": batch, "T": cache_len}, hw)
    return predict_step(works, hw, mode=mode, loop=loop, bandwidth=bandwidth,
                        label=f"decode step b{batch} T={cache_len}")


def prefill_prediction(program: Any, hw: Hardware, batch: int, prompt_len: int,
                       bandwidth: Optional[float]) -> StepPrediction:
    """``predict_prefill`` on a built program: eager launches, the prompt filling the cache (T = S)."""
    from membound.backends.triton.step_plan import kernel_works

    works = kernel_works(program.prefill.partition, {"B": batch, "S": prompt_len, "T": prompt_len}, hw)
    return predict_step(works, hw, mode="eager", loop=False, bandwidth=bandwidth,
                        label=f"prefill b{batch} S={prompt_len}")


_SECOND_LAYER = re.compile(r"(^|\.)layers\.1\.")


def with_layers(partition: Any, layers: int) -> SimpleNamespace:
    """The launches of ``partition`` (built for a 2-layer model) stretched to ``layers`` decoder layers: the
    second layer's launches repeated ``layers - 2`` more times (a partition-like object for
    ``kernel_works``). Every decoder layer of a Llama compiles to the same launches, so a full-size step is
    costed without exporting the full model (an 8B export takes minutes on a CPU). The second layer runs
    from the first launch that reads a ``layers.1.`` weight (its attention norm, fused into the add after
    layer 0) to the last (its down projection)."""
    steps = [s for s in partition.steps if getattr(s, "impl", None) != "view"]
    touches = [i for i, s in enumerate(steps)
               if any(_SECOND_LAYER.search(v.name) for n in s.nodes for v in n.inputs if v.kind == "param")]
    if not touches or layers < 2:
        raise ValueError(f"with_layers: needs a partition of a 2-layer model (a launch reading a layers.1. weight) "
                         f"and layers >= 2, got {len(touches)} such launches and layers={layers}")
    first, last = touches[0], touches[-1] + 1
    return SimpleNamespace(steps=steps[:last] + steps[first:last] * (layers - 2) + steps[last:])


__all__ = ["GeneratePrediction", "decode_prediction", "default_mode", "predict_decode_step", "predict_generate",
           "predict_prefill", "prefill_prediction", "triton_program", "with_layers"]
