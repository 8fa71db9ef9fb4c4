"""MoE models end to end: HF Mixtral and Qwen2-MoE (CPU and forced-CUDA code paths) and the built-in
Mixtral compile to ``moe`` ops and ``membound.generate`` gives eager's greedy tokens (fp32, CPU).
The GPU tests (skipped without one) compile the HF models on CUDA with the default backend."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch

import membound
from membound.models import build_model

from .hf_moe import VOCAB, cuda_moe_path, make_moe, set_experts_form
from .test_generate import prompts, recompute

NEW = 6


def _generate_and_check(model: Any, vocab: int, device: str = "cpu", cuda_path: bool = False) -> Any:
    """Generate (captured under transformers' CUDA code path when ``cuda_path``), compare with eager."""
    ids, mask = prompts(vocab, [5, 9])
    model = model.to(device)
    ids, mask = ids.to(device), mask.to(device)
    compiled = membound.compile(model)
    with torch.no_grad():
        with cuda_moe_path() if cuda_path else contextlib.nullcontext():
            out = membound.generate(compiled, ids, NEW, attention_mask=mask)
        ref = recompute(model, ids, mask, NEW)
    assert torch.equal(out[:, ids.shape[1]:], ref), (out[:, ids.shape[1]:], ref)
    return compiled._kv_program


# path: transformers' CPU or (forced) CUDA code path; form: grouped_mm or batched_mm experts, "+" with
# transformers 5.17's sentinel masks (the GPU machine's version)
FORMS = [("qwen2-moe", "cpu", "grouped_mm"), ("mixtral", "cuda", "grouped_mm+"), ("qwen2-moe", "cpu", "batched_mm+")]


@pytest.mark.parametrize("name,path,form", FORMS, ids=["-".join(f) for f in FORMS])
def test_hf_moe_generate_fuses_and_matches_eager(name: str, path: str, form: str) -> None:
    model = set_experts_form(make_moe(name), form.rstrip("+"), sentinels=form.endswith("+"))
    program = _generate_and_check(model, VOCAB, cuda_path=path == "cuda")
    for g in (program.prefill_graph, program.decode_graph):
        assert g.count("moe") == 2 and g.count("topk") == 0 and g.count("grouped_mm") == 0
    if name == "qwen2-moe":  # the shared expert and its gate went into the op
        assert all(len(n.inputs) == 9 for n in program.decode_graph.nodes if n.op == "moe")


def test_builtin_mixtral_generate_fuses() -> None:
    program = _generate_and_check(build_model("mixtral-tiny"), 256)
    assert program.decode_graph.count("moe") == 2 and program.decode_graph.count("topk") == 0


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
@pytest.mark.parametrize("form", ["grouped_mm", "batched_mm"])
def test_hf_moe_generate_on_cuda(name: str, form: str) -> None:
    """transformers' CUDA code path, captured on the GPU (the installed transformers' own form: 5.17
    masks sentinels), fused in the prefill and decode graphs, eager's greedy tokens."""
    program = _generate_and_check(set_experts_form(make_moe(name), form), VOCAB, device="cuda")
    for g in (program.prefill_graph, program.decode_graph):
        assert g.count("moe") == 2 and g.count("topk") == 0 and g.count("grouped_mm") == 0
