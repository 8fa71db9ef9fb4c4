"""Acceptance: tiny Hugging Face decoders (random weights, fp32, eval) captured once with torch.export
at input_ids (2, 7) and run with the reference backend at (2, 7) and (3, 5) from the SAME capture.

Logits must match eager within 1e-4 relative error, ``(a - b).norm() / b.norm()``. Also: the Dynamo
frontend under ``torch.compile`` with a test backend, and parameters held by identity.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import torch

transformers = pytest.importorskip("transformers")

from membound.backends.reference import run_graph  # noqa: E402
from membound.frontends import Capture, capture_dynamo, capture_export  # noqa: E402
from membound.frontends.capture import SymLeaf  # noqa: E402
from membound.ir import verify  # noqa: E402

VOCAB = 97
COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2)


def _llama(attn: str) -> Any:
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**COMMON, attn_implementation=attn))


MODELS: dict[str, Callable[[], Any]] = {
    "llama-gqa": lambda: _llama("sdpa"),
    "mistral": lambda: transformers.MistralForCausalLM(transformers.MistralConfig(**COMMON, attn_implementation="sdpa")),
    "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**COMMON, attn_implementation="sdpa")),
    "gpt2-eager": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1,
        attn_implementation="eager")),
    "gpt2-sdpa": lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0, eos_token_id=1,
        attn_implementation="sdpa")),
    "mixtral": lambda: transformers.MixtralForCausalLM(transformers.MixtralConfig(
        **COMMON, num_local_experts=4, num_experts_per_tok=2, attn_implementation="sdpa")),
}


def _make(name: str) -> Any:
    torch.manual_seed(0)
    return MODELS[name]().eval()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _call(ids: torch.Tensor) -> dict[str, Any]:
    return {"input_ids": ids, "use_cache": False}


def _run(cap: Capture, kwargs: dict[str, Any]) -> Any:
    return cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs((), kwargs)))


@pytest.fixture(scope="module")
def captured() -> Callable[[str], tuple[Any, Capture]]:
    """``captured(name)``: the model and its export capture at input_ids (2, 7), made once per module (the
    tests below only read them)."""
    done: dict[str, tuple[Any, Capture]] = {}

    def get(name: str) -> tuple[Any, Capture]:
        if name not in done:
            model = _make(name)
            done[name] = model, capture_export(model, (), _call(torch.randint(0, VOCAB, (2, 7))))
        return done[name]

    return get


@pytest.mark.parametrize("name", list(MODELS))
def test_capture_once_run_at_two_shapes(name: str, captured: Callable[[str], tuple[Any, Capture]]) -> None:
    model, cap = captured(name)
    verify(cap.graph)
    assert [str(d) for d in cap.graph.inputs[0].shape] == ["B", "S"]
    for shape in [(2, 7), (3, 5)]:
        kwargs = _call(torch.randint(0, VOCAB, shape))
        assert cap.matches((), kwargs), cap.mismatch((), kwargs)
        out = _run(cap, kwargs)
        with torch.no_grad():
            ref = model(**kwargs)
        assert type(out) is type(ref)  # the model's own ModelOutput
        assert out.logits.shape == ref.logits.shape
        assert _rel(out.logits, ref.logits) < 1e-4
    # export specialises size-1 dims: a capture at S >= 2 must not serve S = 1
    assert not cap.matches((), _call(torch.randint(0, VOCAB, (2, 1))))


def test_params_and_buffers_are_the_models_tensors(captured: Callable[[str], tuple[Any, Capture]]) -> None:
    model, cap = captured("llama-gqa")
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    names = [p.name for p in cap.graph.params]
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.rotary_emb.inv_freq" in names
    for name in names:
        t = cap.graph.tensors[name]
        assert t is (model.get_parameter(name) if name in params else buffers[name]), name
    assert len(names) == len(params) + 1  # + inv_freq; original_inv_freq is never read and is dropped


def test_matches_rejects_what_the_capture_specialised_on(captured: Callable[[str], tuple[Any, Capture]]) -> None:
    _, cap = captured("gpt2-sdpa")  # captured at input_ids (2, 7)
    ids = torch.randint(0, VOCAB, (2, 7))
    assert cap.matches((), {"use_cache": False, "input_ids": ids[:1, :3].expand(4, 3)})  # kwargs order is free
    assert "use_cache" in cap.mismatch((), {"input_ids": ids, "use_cache": True})
    assert "dtype" in cap.mismatch((), _call(ids.to(torch.int32)))
    assert "rank" in cap.mismatch((), _call(ids[0]))
    assert "structure" in cap.mismatch((ids,), {})
    assert cap.mismatch((), _call(torch.randint(0, VOCAB, (1, 7)))) is not None  # B = 1 is specialised too


def test_dynamo_backend_runs_one_capture_at_two_shapes() -> None:
    model = _make("llama-gqa")
    captures: list[Capture] = []

    def backend(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Callable[..., Any]:
        cap = capture_dynamo(gm, example_inputs)
        verify(cap.graph)
        captures.append(cap)

        def run(*args: Any) -> Any:
            assert cap.matches(args), cap.mismatch(args)
            return cap.unflatten_outputs(run_graph(cap.graph, cap.flatten_inputs(args)))

        return run

    torch._dynamo.reset()
    try:
        compiled = torch.compile(model, backend=backend, dynamic=True)
        for shape in [(2, 7), (3, 5)]:
            kwargs = _call(torch.randint(0, VOCAB, shape))
            with torch.no_grad():
                out, ref = compiled(**kwargs), model(**kwargs)
            assert _rel(out.logits, ref.logits) < 1e-4
    finally:
        torch._dynamo.reset()
    assert len(captures) == 1  # no graph break, no recompile
    cap = captures[0]
    assert [v.name for v in cap.graph.inputs] == ["input_ids"]
    assert any(isinstance(leaf, SymLeaf) for leaf in cap.in_leaves)  # Dynamo's SymInt inputs, tied to B/S
    assert cap.graph.tensors["lm_head.weight"] is model.lm_head.weight


def test_bf16_mixtral_experts_map_aten_grouped_mm() -> None:
    """In bf16 HF calls torch._grouped_mm (not the transformers fallback op); both map to grouped_mm.
    Tolerance for bf16: 2e-2 relative."""
    model = _make("mixtral").to(torch.bfloat16)
    cap = capture_export(model, (), _call(torch.randint(0, VOCAB, (2, 7))))
    assert cap.graph.count("grouped_mm") == 4  # gate_up and down, two layers
    kwargs = _call(torch.randint(0, VOCAB, (3, 5)))
    with torch.no_grad():
        ref = model(**kwargs).logits.float()
    assert _rel(_run(cap, kwargs).logits.float(), ref) < 2e-2
