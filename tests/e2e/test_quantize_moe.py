"""MoE models with quantized experts (``quant_moe``): the built-in Mixtral and HF ``MixtralForCausalLM``
compile with int8 / int4 / fp8, equal eager models holding the dequantized weights (experts included),
are measurably (bounded, non-zero) off the float model, generate, save and load, and ``explain`` reports
each moe op's expert error. Reference backend, fp32, CPU; the Triton kernels on the same models are in
tests/backends/test_moe_kernel.py."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
import torch

import membound
from membound.models import build_model
from membound.passes.quantize_weights import dequantized_experts, dequantized_weights

from .hf_moe import VOCAB, make_moe

# relative logits error (Frobenius) against the float model on [2, 7] prompts, measured (3 seeds): HF
# Mixtral (hidden 32) int8 0.006-0.007, fp8 0.03-0.035, int4 g32 0.09-0.10; mixtral-tiny (hidden 64) int8
# 0.017-0.12, fp8 0.08-0.17, int4 0.24-0.32: its random routers are near ties, so a quantized upstream
# linear flips some tokens' experts (whole-expert jumps, not rounding)
ERROR_BOUND = {"int8": 0.2, "fp8": 0.35, "int4": 0.6}


def build(name: str) -> tuple[torch.nn.Module, dict[str, Any]]:
    if name == "hf-mixtral":
        return make_moe("mixtral").float(), {"use_cache": False}
    torch.manual_seed(0)
    return build_model("mixtral-tiny").eval(), {}


def logits(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def dequantized_copy(model: torch.nn.Module, graph: membound.ir.Graph) -> torch.nn.Module:
    """``model`` with every quantized weight, experts included, replaced by what its packed form stands for.

    Expert names are the ``moe`` operands': a model parameter, or HF's ``gate_up_proj`` split by fuse-moe
    into ``<name>.gate`` / ``<name>.up`` views (put back side by side along N)."""
    twin = copy.deepcopy(model)
    deq = dequantized_weights(graph)
    experts = dequantized_experts(graph)
    assert deq and experts, "nothing was quantized"
    params = dict(twin.named_parameters())
    for name in [n for n in experts if n.endswith(".gate")]:
        base = name.removesuffix(".gate")
        deq[base] = torch.cat([experts.pop(name), experts.pop(f"{base}.up")], dim=1)
    deq.update(experts)
    for name, w in deq.items():
        assert name in params and params[name].shape == w.shape, f"{name}: no such parameter of that shape"
        module, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(module), leaf, torch.nn.Parameter(w, requires_grad=False))
    return twin


def config(scheme: str) -> membound.QuantConfig:
    return membound.QuantConfig(scheme, group_size=32)


# (mixtral-tiny int8 is tests/passes/test_quantize_moe.py's; HF int4 is the generate test's, token for token)
@pytest.mark.parametrize("name,scheme", [("mixtral-tiny", "int4"), ("mixtral-tiny", "fp8"), ("hf-mixtral", "int8")])
def test_compiled_quantized_moe_equals_eager_with_dequantized_experts(name: str, scheme: str) -> None:
    model, kw = build(name)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    compiled = membound.compile(model, quantize=config(scheme), backend="reference")
    with torch.no_grad():
        got = logits(compiled(ids, **kw))
        want = logits(dequantized_copy(model, compiled.ir)(ids, **kw))
        exact = logits(model(ids, **kw))
    assert compiled.ir.count("quant_moe") == 2 and compiled.ir.count("moe") == 0
    assert all(n.attrs["scheme"] == scheme for n in compiled.ir.nodes if n.op == "quant_moe")
    assert rel(got, want) <= 1e-4
    error = rel(got, exact)
    assert 1e-3 < error < ERROR_BOUND[scheme], f"{scheme} logits error {error:.3g}"


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_hf_mixtral_generates_with_quantized_experts(scheme: str) -> None:
    model, kw = build("hf-mixtral")
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    compiled = membound.compile(model, quantize=config(scheme), backend="reference")
    out = membound.generate(compiled, ids, 5)
    assert out.shape == (2, 10) and torch.equal(out[:, :5], ids)
    step = compiled._kv_program.prefill_graph
    assert step.count("quant_moe") == 2 and step.count("moe") == 0
    # greedy decoding picks the tokens an eager model holding the dequantized weights picks
    twin = dequantized_copy(model, step)
    seq = ids
    with torch.no_grad():
        for _ in range(5):
            seq = torch.cat([seq, logits(twin(seq, **kw))[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)


@pytest.mark.parametrize("scheme", ["int4", "fp8"])
def test_saved_experts_load_without_quantizing_again(scheme: str, tmp_path, monkeypatch) -> None:
    model, kw = build("mixtral-tiny")
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    compiled = membound.compile(model, quantize=config(scheme), backend="reference")
    first = logits(compiled(ids, **kw))
    membound.save_quantized(compiled, tmp_path)
    saved = json.loads((tmp_path / "quantization.json").read_text())["weights"]
    experts = {name: info for name, info in saved.items() if info.get("experts")}
    assert len(experts) == 6 and all(info["scheme"] == scheme for info in experts.values())
    assert all(info["shape"][0] == 4 and info["shape"][2] in (64, 96) for info in experts.values())

    import membound.passes.quantize_weights as qw

    def _no_quantizing(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("quantized again instead of loading")

    monkeypatch.setattr(qw, "quantize", _no_quantizing)
    loaded = membound.compile(model, quantized=tmp_path, backend="reference")
    assert loaded.quant_config.scheme == scheme
    torch.testing.assert_close(logits(loaded(ids, **kw)), first, rtol=0, atol=0)
    assert loaded.ir.count("quant_moe") == 2
    if scheme != "int4":
        return
    # a folder whose experts do not fit the model is refused, naming the weight
    from safetensors.torch import load_file, save_file

    flat = load_file(str(tmp_path / "quantized.safetensors"))
    name = next(k for k in flat if k.endswith("w1.qweight"))
    flat[name] = flat[name][:, :-1].contiguous()  # one row short per expert
    save_file(flat, str(tmp_path / "quantized.safetensors"))
    with pytest.raises(Exception, match="saved packed weight for .*w1.* from another model"):
        membound.compile(model, quantized=tmp_path, backend="reference")(ids, **kw)


def test_explain_reports_each_moe_ops_expert_error() -> None:
    """HF Qwen2-MoE: its experts are fuse-moe's views of gate_up_proj (float values from the float graph), and
    the shared expert (float on both sides) is left out of the row."""
    model = make_moe("qwen2-moe").float()
    report = membound.explain(model, quantize=config("int4"), measure=False)
    rows = [e for e in report.quantization.layers if e.weight.endswith("(experts)")]
    assert [e.weight for e in rows] == [f"model.layers.{i}.mlp.experts.* (experts)" for i in (0, 1)]
    assert all(e.shape == (4, 48, 32) and e.scheme == "int4" for e in rows)
    # int4 g32 of random weights: ~0.1 per moe op here (each linear's row ~0.06)
    assert all(0.02 < e.rel_error < 0.3 for e in rows), rows
    assert len(report.quantization.layers) > 2 and 0 < report.quantization.output_error < ERROR_BOUND["int4"]
    lines = [line.split() for line in str(report).splitlines() if "(experts)" in line]
    assert len(lines) == 2 and all(line[2:6] == ["int4", "[4,", "48,", "32]"] for line in lines), lines
