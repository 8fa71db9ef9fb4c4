"""One compile driver: membound.compile, generate's step graphs and the torch.compile backend run the same
named pipelines with the same CompileOptions and cost model."""

import pytest
import torch

import membound
import membound.dynamo_backend
from membound.driver import CompileOptions
from membound.ir import print_graph
from membound.models import build_model

from .hf_models import VOCAB, build_hf


def _dynamo_graphs(model, ids, **options):
    """Run ``torch.compile(model, backend=membound)`` and return the final IR of each Dynamo graph."""
    graphs = []

    def grab(gm, example_inputs):
        fn = membound.dynamo_backend.membound_backend(gm, example_inputs, options=options)
        graphs.append(fn.membound_graph)
        return fn

    torch._dynamo.reset()
    out = torch.compile(model, backend=grab, dynamic=True)(ids)
    return graphs, out


def _body(graph):
    """The printed graph without its name (Dynamo names the graph after its first module)."""
    return print_graph(graph).split("(", 1)[1]


def test_torch_compile_backend_and_membound_compile_give_the_same_final_ir():
    model = build_model("llama-tiny")
    ids = torch.randint(0, 256, (2, 7))
    compiled = membound.compile(model, backend="reference")
    with torch.no_grad():
        compiled(ids)
        graphs, _ = _dynamo_graphs(model, ids, backend="reference")
    assert len(graphs) == 1
    assert _body(graphs[0]) == _body(compiled.ir)
    assert any(n.op == "attention" for n in compiled.ir.nodes)


def test_gpt2_with_eager_attention_ends_with_an_attention_op():
    model = build_hf("gpt2-eager")
    compiled = membound.compile(model)
    ids = torch.randint(0, VOCAB, (2, 7))
    with torch.no_grad():
        out = compiled(ids).logits
        ref = model(ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    ops = [n.op for n in compiled.ir.nodes]
    assert "attention" in ops and "softmax" not in ops
    assert [r.name for r in compiled.pass_records][-7:] == ["fuse-attention", "fuse-moe", "merge-linear",
                                                             "fuse-gated-linear", "fuse-linear-glu", "canonicalize",
                                                             "dead-code-elimination"]


def test_torch_compile_takes_membound_options_and_rejects_unknown_ones(tmp_path):
    torch._dynamo.reset()
    f = torch.compile(lambda x: torch.relu(x) * 2, backend="membound",
                      options={"backend": "reference", "dump_ir": str(tmp_path)})
    x = torch.randn(3, 5)
    torch.testing.assert_close(f(x), torch.relu(x) * 2)
    assert list(tmp_path.glob("dynamo-*/000-input.mir"))
    torch._dynamo.reset()
    g = torch.compile(lambda x: x + 1, backend="membound", options={"fallbak": "torch"})
    with pytest.raises(Exception, match="unknown option.*'fallbak'.*backend, pipeline, dump_ir, fallback"):
        g(x)


def test_torch_compile_of_an_hf_model_needs_no_use_cache_false():
    model = build_hf("llama")
    ids = torch.randint(0, VOCAB, (2, 7))
    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend="membound", dynamic=True)(ids)
        ref = model(ids)
    torch.testing.assert_close(out.logits, ref.logits, rtol=1e-4, atol=1e-4)


def test_compile_options_are_one_dataclass():
    with pytest.raises(TypeError, match="unknown option.*'quantise'"):
        membound.compile(build_model("llama-tiny"), quantise="int8")
    opts = CompileOptions(backend="reference")
    compiled = membound.compile(build_model("llama-tiny"), options=opts)
    assert compiled.options is opts and compiled.backend == "reference"
    assert [len(opts.pipeline_for(k)) for k in ("forward", "prefill", "decode")] == [11, 13, 2]
    custom = CompileOptions(pipeline=["canonicalize"])
    assert len(custom.pipeline_for("prefill")) == 1 + 9  # the user's passes, then the KV-cache passes
