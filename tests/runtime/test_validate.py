"""Every public argument of generate / compile / explain is checked where it enters, on every path,
and the error names the argument, the value and what is allowed (membound/runtime/validate.py)."""

import copy
import warnings

import pytest
import torch

import membound
from membound.models import build_model

IDS = torch.randint(3, 256, (2, 5), generator=torch.Generator().manual_seed(0))
MODEL = build_model("llama-tiny")

BAD_GENERATE = [
    (dict(temperature=float("nan")), "temperature", "nan"),
    (dict(temperature=-1.0), "temperature", "-1.0"),
    (dict(temperature=float("inf")), "temperature", "inf"),
    (dict(temperature="hot"), "temperature", "'hot'"),
    (dict(top_k=2.5), "top_k", "2.5"),
    (dict(top_k=0), "top_k", "0"),
    (dict(top_k=-3), "top_k", "-3"),
    (dict(top_p=0.0), "top_p", "0.0"),
    (dict(top_p=1.5), "top_p", "1.5"),
    (dict(top_p=float("nan")), "top_p", "nan"),
    (dict(max_new_tokens="3"), "max_new_tokens", "'3'"),
    (dict(max_new_tokens=-1), "max_new_tokens", "-1"),
    (dict(max_new_tokens=2.0), "max_new_tokens", "2.0"),
    (dict(eos_token_id=torch.tensor([2])), "eos_token_id", "tensor"),
    (dict(eos_token_id=2.0), "eos_token_id", "2.0"),
    (dict(eos_token_id=[1, 2.5]), "eos_token_id", "2.5"),
    (dict(pad_token_id=-1), "pad_token_id", "-1"),
    (dict(max_cache_len=0), "max_cache_len", "0"),
    (dict(stream=3), "stream", "3"),
    (dict(input_ids=IDS[:0]), "input_ids", r"\(0, 5\)"),
    (dict(input_ids=IDS[:, :0]), "input_ids", r"\(2, 0\)"),
    (dict(input_ids=IDS[0]), "input_ids", r"\(5,\)"),
    (dict(input_ids=IDS.float()), "input_ids", "float32"),
    (dict(attention_mask=torch.ones(2, 4, dtype=torch.long)), "attention_mask", r"\(2, 4\)"),
]


@pytest.mark.parametrize("kv_cache", [True, False])
@pytest.mark.parametrize("kwargs, name, shown", BAD_GENERATE, ids=[f"{c[1]}={c[2]}" for c in BAD_GENERATE])
def test_generate_rejects_bad_arguments_naming_them(kwargs, name, shown, kv_cache):
    args = {**dict(input_ids=IDS, max_new_tokens=3, kv_cache=kv_cache, temperature=0.7), **kwargs}
    compiled = membound.compile(MODEL, backend="reference")
    with pytest.raises((TypeError, ValueError), match=rf"generate: {name}\b.*{shown}"):
        membound.generate(compiled, args.pop("input_ids"), args.pop("max_new_tokens"), **args)
    assert compiled.num_captures == 0 and getattr(compiled, "_kv_program", None) is None  # failed before any work


def test_compile_rejects_bad_options():
    model = build_model("llama-tiny")
    with pytest.raises(TypeError, match="compile: dynamic must be True or False, got 'yes'"):
        membound.compile(model, dynamic="yes")
    with pytest.raises(TypeError, match="compile: cuda_graphs"):
        membound.compile(model, cuda_graphs=1)
    with pytest.raises(ValueError, match="compile: fallback must be None or 'torch', got 'eager'"):
        membound.compile(model, fallback="eager")
    with pytest.raises(TypeError, match="compile: pipeline must be"):
        membound.compile(model, pipeline="canonicalize")
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        membound.compile(model, backend="cuda")


def test_unwritable_dump_dir_fails_once_at_compile_naming_the_path(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    bad = blocker / "dumps"
    with pytest.raises(ValueError, match=rf"compile: dump_ir = '{bad}' must be a folder"):
        membound.compile(build_model("llama-tiny"), dump_ir=bad)
    monkeypatch.setenv("MEMBOUND_DUMP_IR", str(bad))
    with pytest.raises(ValueError, match=rf"MEMBOUND_DUMP_IR = '{bad}'.*unset it"):
        membound.compile(build_model("llama-tiny"))
    good = tmp_path / "new" / "dumps"
    membound.compile(build_model("llama-tiny"), dump_ir=good)
    assert good.is_dir()


def test_deepcopy_of_a_compiled_model_is_a_working_independent_copy():
    torch.manual_seed(0)
    model = build_model("llama-tiny").eval()
    compiled = membound.compile(model, backend="reference")
    with torch.no_grad():
        out = compiled(IDS)
        clone = copy.deepcopy(compiled)
        assert clone.fn is not model and clone.num_captures == 0 and clone.backend == "reference"
        torch.testing.assert_close(clone(IDS), out)
    assert next(clone.fn.parameters()).data_ptr() != next(model.parameters()).data_ptr()


def test_recapture_of_a_changing_scalar_is_capped_with_a_warning_naming_it(monkeypatch):
    monkeypatch.setenv("MEMBOUND_RECAPTURE_LIMIT", "2")

    def scaled(x, scale):
        return torch.tanh(x) * scale

    compiled = membound.compile(scaled, backend="reference")
    x = torch.randn(3, 5)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        outs = [compiled(x, scale=0.5 + i) for i in range(5)]
    assert compiled.num_captures == 2
    for i, out in enumerate(outs):
        torch.testing.assert_close(out, scaled(x, 0.5 + i))
    limit = [w for w in seen if "recapture limit" in str(w.message)]
    assert len(limit) == 1 and "scale" in str(limit[0].message) and "2.5" in str(limit[0].message)


@pytest.fixture(scope="module")
def graph():
    compiled = membound.compile(lambda x, w: torch.relu(x @ w), backend="reference", dynamic=False,
                                example_inputs=(torch.randn(2, 8, 16), torch.randn(16, 16)))
    return compiled.ir


@pytest.mark.parametrize("kwargs, name", [(dict(batch=-3), "batch"), (dict(batch=0), "batch"),
                                          (dict(seq_len=0), "seq_len"), (dict(cache_len=-1), "cache_len"),
                                          (dict(batch=2.5), "batch"), (dict(dims={"S": -1}), "dims"),
                                          (dict(max_rows=0), "max_rows")])
def test_explain_rejects_bad_dims_naming_them(graph, kwargs, name):
    with pytest.raises((TypeError, ValueError), match=rf"explain: {name}"):
        membound.explain(graph, measure=False, **kwargs)


def test_explain_accepts_hardware_names_case_insensitively(graph):
    for name, expect in [("h100", "H100"), ("H200", "H200"), ("A100-80GB", "A100"), ("cpu", "")]:
        report = membound.explain(graph, hardware=name, measure=False, batch=2, seq_len=8)
        assert expect in report.hardware.name
    with pytest.raises(ValueError, match=r"explain: hardware must be .*h100-sxm.*, got 'tpu-v5'"):
        membound.explain(graph, hardware="tpu-v5", measure=False)
    with pytest.raises(ValueError, match="a100-40gb, a100-80gb"):   # ambiguous prefix: the list, not a guess
        membound.explain(graph, hardware="a100", measure=False)
