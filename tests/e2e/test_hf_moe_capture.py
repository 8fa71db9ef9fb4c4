"""MoE capture on both of transformers' code paths: the CPU one (float ``histc``) and the CUDA one
(``histc`` on int32 expert ids, i32 offsets), forced on the CPU by ``cuda_moe_path``; fp32 experts go
through ``transformers.grouped_mm_fallback``, bf16 ones through ``torch._grouped_mm``.

Logits match eager within 1e-4 relative error in fp32, 2e-2 in bf16. The GPU test (skipped without
one) captures on a real CUDA device.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from membound.backends.reference import run_graph  # noqa: E402
from membound.frontends import Capture, capture_export  # noqa: E402
from membound.ir import verify  # noqa: E402

from .hf_moe import VOCAB, cuda_moe_path, make_moe  # noqa: E402


def _kwargs(*shape: int) -> dict[str, Any]:
    return {"input_ids": torch.randint(0, VOCAB, shape), "use_cache": False}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().float() - b.float()).norm() / b.float().norm())


def _check(model: Any, cap: Capture, tol: float) -> None:
    verify(cap.graph)
    kwargs = _kwargs(3, 5)  # not the capture's shape
    out = cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((), kwargs)))
    with torch.no_grad():
        ref = model(**kwargs)
    assert _rel(out.logits, ref.logits) < tol


@pytest.mark.parametrize("name,dtype", [("mixtral", torch.float32), ("qwen2-moe", torch.float32),
                                        ("mixtral", torch.bfloat16)], ids=["mixtral-f32", "qwen2-moe-f32", "mixtral-bf16"])
def test_cuda_code_path_captures_int_histc(name: str, dtype: torch.dtype) -> None:
    """What a GPU user hit: ``histc: x must be floating point, got i32[2*B*S]``."""
    model = make_moe(name).to(dtype)
    with cuda_moe_path():
        cap = capture_export(model, (), _kwargs(2, 7))
    histc = [n for n in cap.graph.nodes if n.op == "histc"]
    assert len(histc) == 2 and all(n.inputs[0].dtype == torch.int32 for n in histc)
    assert all(n.result.dtype == torch.int32 for n in histc)
    assert cap.graph.count("grouped_mm") == 4  # gate_up and down, two layers
    _check(model, cap, 1e-4 if dtype == torch.float32 else 2e-2)


def test_cpu_code_path_captures_float_histc() -> None:
    """(HF Mixtral on the CPU path is covered by tests/frontends/test_hf_models.py.)"""
    model = make_moe("qwen2-moe")
    cap = capture_export(model, (), _kwargs(2, 7))
    assert [n.inputs[0].dtype for n in cap.graph.nodes if n.op == "histc"] == [torch.float32] * 2
    _check(model, cap, 1e-4)


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_capture_on_cuda(name: str, dtype: torch.dtype) -> None:
    model = make_moe(name).to("cuda", dtype)
    kwargs = {"input_ids": torch.randint(0, VOCAB, (2, 7), device="cuda"), "use_cache": False}
    cap = capture_export(model, (), kwargs)
    assert any(n.op == "histc" and n.inputs[0].dtype == torch.int32 for n in cap.graph.nodes)
    out = cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((), kwargs)))
    with torch.no_grad():
        ref = model(**kwargs)
    assert _rel(out.logits, ref.logits) < (1e-4 if dtype == torch.float32 else 2e-2)
