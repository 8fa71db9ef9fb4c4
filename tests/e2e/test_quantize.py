"""membound.compile(model, quantize=...): built-in and Hugging Face models, equal to eager models holding
the dequantized weights, a real (bounded, non-zero) error against the float model, generate, save/load."""

from __future__ import annotations

import copy

import pytest
import torch

import membound
from membound.models import build_model
from membound.passes.quantize_weights import dequantized_weights

from .hf_models import VOCAB, build_hf

# relative logits error (Frobenius) against the unquantized model, measured on these tiny random models
# (hidden 32-64, K below one int4 group of 128): int8 ~0.01-0.03, fp8 ~0.05-0.12, int4 ~0.2-0.4
ERROR_BOUND = {"int8": 0.06, "fp8": 0.25, "int4": 0.6}


def _dequantized_copy(model: torch.nn.Module, compiled: membound.CompiledModel) -> torch.nn.Module:
    """``model`` with every quantized weight replaced by what its packed form stands for."""
    twin = copy.deepcopy(model)
    deq = dequantized_weights(compiled.ir)
    assert deq, "nothing was quantized"
    for name, w in deq.items():
        # a new Parameter, not a copy into the old one: a tied embedding table keeps its float values
        module, _, leaf = name.rpartition(".")
        setattr(twin.get_submodule(module), leaf, torch.nn.Parameter(w, requires_grad=False))
    return twin


def _logits(out):
    return out.logits if hasattr(out, "logits") else out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _build(name: str) -> tuple[torch.nn.Module, dict]:
    if name.startswith("hf-"):
        return build_hf(name[3:]).float(), {"use_cache": False}
    torch.manual_seed(0)
    return build_model(name).eval(), {}


@pytest.mark.parametrize("name,scheme", [("llama-tiny", "int8"), ("llama-tiny", "int4"), ("llama-tiny", "fp8"),
                                         ("hf-llama", "int4"), ("hf-qwen2", "int8"), ("hf-gpt2-eager", "int4")])
def test_compiled_quantized_model_equals_eager_with_dequantized_weights(name: str, scheme: str) -> None:
    model, kw = _build(name)
    ids = torch.randint(3, VOCAB, (2, 7), generator=torch.Generator().manual_seed(1))
    compiled = membound.compile(model, quantize=membound.QuantConfig(scheme, group_size=32), backend="reference")
    with torch.no_grad():
        got = _logits(compiled(ids, **kw))
        want = _logits(_dequantized_copy(model, compiled)(ids, **kw))
        exact = _logits(model(ids, **kw))
    assert _rel(got, want) <= 1e-4
    error = _rel(got, exact)
    assert 1e-4 < error < ERROR_BOUND[scheme], f"{scheme} logits error {error:.3g}"
    n_quant = sum(n.op.startswith("quant_") for n in compiled.ir.nodes)
    assert n_quant >= 4 and not any(n.op == "linear" for n in compiled.ir.nodes)


@pytest.mark.parametrize("name", ["llama-tiny", "hf-qwen2", "hf-gpt2-eager"])
def test_generate_runs_quantized_graphs(name: str) -> None:
    model, kw = _build(name)
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(2))
    compiled = membound.compile(model, quantize="int8", backend="reference")
    out = membound.generate(compiled, ids, 6)
    assert out.shape == (2, 11) and torch.equal(out[:, :5], ids)
    step = compiled._kv_program.prefill_graph
    assert any(n.op.startswith("quant_") for n in step.nodes)
    assert not any(n.op in ("linear", "gated_linear") for n in step.nodes)
    # greedy decoding picks the tokens an eager model holding the dequantized weights picks
    compiled(ids, **kw)  # the forward capture: its graph names the (unmerged) weights
    twin = _dequantized_copy(model, compiled)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            nxt = _logits(twin(seq, **kw))[:, -1].argmax(-1, keepdim=True)
            seq = torch.cat([seq, nxt], dim=1)
    assert torch.equal(out, seq)


def test_save_and_load_skip_quantizing_again(tmp_path, monkeypatch) -> None:
    model, kw = _build("hf-llama")
    ids = torch.randint(3, VOCAB, (2, 5), generator=torch.Generator().manual_seed(3))
    compiled = membound.compile(model, quantize=membound.QuantConfig("int4", group_size=16), backend="reference")
    first = _logits(compiled(ids, **kw))
    tokens = membound.generate(compiled, ids, 4)  # the merged q/k/v and gate/up weights of the step graph
    membound.save_quantized(compiled, tmp_path)
    assert (tmp_path / "quantized.safetensors").is_file() and (tmp_path / "quantization.json").is_file()

    import membound.passes.quantize_weights as qw

    def _no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again instead of loading")

    monkeypatch.setattr(qw, "quantize", _no_quantizing)
    loaded = membound.compile(model, quantized=tmp_path, backend="reference")
    assert loaded.quant_config.scheme == "int4" and loaded.quant_config.group_size == 16
    torch.testing.assert_close(_logits(loaded(ids, **kw)), first, rtol=0, atol=0)
    assert torch.equal(membound.generate(loaded, ids, 4), tokens)


def test_saved_int8_experts_load_without_quantizing_again(tmp_path, monkeypatch) -> None:
    """mixtral-tiny: the int8 experts of its quant_moe ops are saved beside the linears and loaded back."""
    model, kw = _build("mixtral-tiny")
    ids = torch.randint(3, VOCAB, (1, 5), generator=torch.Generator().manual_seed(4))
    compiled = membound.compile(model, quantize="int8", backend="reference")
    first = _logits(compiled(ids, **kw))
    assert any(n.op == "quant_moe" for e in compiled.entries for n in e.ir.nodes)
    membound.save_quantized(compiled, tmp_path)
    import json

    saved = json.loads((tmp_path / "quantization.json").read_text())["weights"]
    experts = {name: info for name, info in saved.items() if info.get("experts")}
    assert experts and all(len(info["shape"]) == 3 for info in experts.values())

    import membound.passes.quantize_weights as qw

    def _no_quantizing(*args, **kwargs):
        raise AssertionError("quantized again instead of loading")

    monkeypatch.setattr(qw, "quantize", _no_quantizing)
    loaded = membound.compile(model, quantized=tmp_path, backend="reference")
    torch.testing.assert_close(_logits(loaded(ids, **kw)), first, rtol=0, atol=0)


def test_save_and_load_errors_name_the_problem(tmp_path) -> None:
    model, kw = _build("llama-tiny")
    with pytest.raises(ValueError, match="compiled without quantize"):
        membound.save_quantized(membound.compile(model), tmp_path)
    with pytest.raises(RuntimeError, match="nothing compiled yet"):
        membound.save_quantized(membound.compile(model, quantize="int8"), tmp_path)
    with pytest.raises(FileNotFoundError, match="quantization.json"):
        membound.compile(model, quantized=tmp_path / "missing")
    ids = torch.randint(3, VOCAB, (1, 4))
    compiled = membound.compile(model, quantize="int8", example_inputs=(ids,))
    membound.save_quantized(compiled, tmp_path)
    with pytest.raises(ValueError, match="disagrees with the folder"):
        membound.compile(model, quantize="int4", quantized=tmp_path)


def test_explain_reports_bytes_and_per_layer_accuracy() -> None:
    model, _ = _build("llama-tiny")
    report = membound.explain(model, quantize="int8", measure=False)
    acc = report.quantization
    # the forward pipeline merges sibling linears first: per layer q/k/v as one, o, w1/w3 as one, w2 (in the
    # gated linear) = 4 quantized weights x 2 layers + the output head
    assert len(acc.layers) == 9
    assert all(0 < e.rel_error < 0.02 for e in acc.layers)
    assert 0 < acc.output_error < 0.06
    text = str(report)
    assert "quantization accuracy" in text and "output.weight" in text
    summary = report.summary()
    # int8 weights: the decode step moves fewer bytes after the pipeline than before it
    assert summary["after decode"]["bytes"] < 0.7 * summary["before decode"]["bytes"]
