"""Hugging Face models used the HF way: called without use_cache=False, compiled.generate with the model's
GenerationConfig (token-equal to HF's greedy generate), module methods, replaced parameters."""

import logging

import pytest
import torch

import membound
from membound.generation import UnsupportedGenerationOption

from .hf_models import VOCAB, build_hf

NEW = 8


def _ids(batch=2, seq=6, seed=0):
    return torch.randint(3, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(seed))


def _with_eos_on_the_path(model, ids):
    """Set the model's EOS to a list holding a token its greedy path emits early, so stopping is exercised."""
    model.generation_config.eos_token_id = None
    free = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    early = int(free[0, ids.shape[1] + 2])  # row 0 stops after its third new token; row 1 may go on
    model.generation_config.eos_token_id = [early, 2]
    model.generation_config.pad_token_id = 0
    return early


@pytest.mark.parametrize("name", ["llama", "gpt2-sdpa", "qwen2", "mixtral"])
def test_compiled_generate_equals_hf_greedy_with_the_models_generation_config(name):
    model = build_hf(name)
    ids = _ids()
    early = _with_eos_on_the_path(model, ids)
    ref = model.generate(ids, max_new_tokens=NEW, do_sample=False)
    compiled = membound.compile(model)
    assert compiled.generate.__self__ is compiled          # not the uncompiled module's method
    out = compiled.generate(ids, max_new_tokens=NEW, do_sample=False)
    assert compiled.events == ["prefill+decode: first generate"]   # the tokens came from membound's graphs
    assert torch.equal(out, ref), (out, ref)
    assert early in out[0, ids.shape[1]:].tolist()           # the EOS list stopped row 0, then pad
    again = compiled.generate(ids, max_new_tokens=NEW, do_sample=False)
    assert torch.equal(again, ref) and len(compiled.events) == 1  # reused


@pytest.fixture(scope="module")
def llama():
    model = build_hf("llama")
    return model, membound.compile(model)


def test_hf_options_equal_hf_generate(llama):
    model, compiled = llama
    ids = _ids(seed=3)
    for options in [dict(max_length=11), dict(max_new_tokens=6, min_new_tokens=4, eos_token_id=[int(ids[0, 1])]),
                    dict(max_new_tokens=7, repetition_penalty=1.7)]:
        ref = model.generate(ids, do_sample=False, **options)
        out = compiled.generate(ids, do_sample=False, **options)
        assert torch.equal(out, ref), options


def test_generation_config_object_and_left_padding(llama):
    from transformers import GenerationConfig

    model, compiled = llama
    ids = _ids(seed=4)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 0, 0       # row 1 left-padded
    config = GenerationConfig(max_new_tokens=5, do_sample=False, pad_token_id=0, eos_token_id=2)
    ref = model.generate(ids, attention_mask=mask, generation_config=config)
    out = compiled.generate(ids, attention_mask=mask, generation_config=config)
    assert torch.equal(out, ref)


def test_sampling_with_top_k_1_is_greedy_and_streamer_sees_every_token(llama):
    model, compiled = llama
    ids = _ids(seed=5)

    class Recorder:
        def __init__(self):
            self.puts, self.ended = [], False

        def put(self, value):
            self.puts.append(value.clone())

        def end(self):
            self.ended = True

    rec = Recorder()
    greedy = compiled.generate(ids, max_new_tokens=5, do_sample=False)
    sampled = compiled.generate(ids, max_new_tokens=5, do_sample=True, top_k=1, temperature=0.7, streamer=rec)
    assert torch.equal(sampled, greedy)
    assert torch.equal(rec.puts[0], ids) and rec.ended       # the prompt first, as HF's streamers expect
    assert torch.equal(torch.stack(rec.puts[1:], dim=1), greedy[:, ids.shape[1]:])


@pytest.mark.parametrize("options, match", [
    (dict(num_beams=2), "num_beams=2"),
    (dict(stop_strings=["x"]), "stop_strings"),
    (dict(return_dict_in_generate=True), "return_dict_in_generate"),
    (dict(logits_processor=[lambda ids, scores: scores]), "logits_processor"),
    (dict(token_type_ids=torch.zeros(2, 6, dtype=torch.long)), "token_type_ids"),
])
def test_unsupported_generate_options_are_clear_errors(llama, options, match):
    _, compiled = llama
    with pytest.raises(UnsupportedGenerationOption, match=match):
        compiled.generate(_ids(), max_new_tokens=3, **options)


def test_module_methods_keep_the_compiled_model(llama):
    model, compiled = llama
    assert compiled.eval() is compiled
    assert compiled.to(torch.float32) is compiled
    assert compiled.requires_grad_(False) is compiled
    assert compiled.config is model.config                   # other attributes still reach the module


def test_use_cache_true_and_past_key_values_are_clear_errors(llama):
    _, compiled = llama
    with pytest.raises(ValueError, match="use_cache=True is not supported.*compiled.generate"):
        compiled(_ids(), use_cache=True)


def test_a_replaced_parameter_is_picked_up_with_a_log_line(caplog):
    model = build_hf("gpt2-sdpa")
    compiled = membound.compile(model)
    ids = _ids(seed=6)
    with torch.no_grad():
        before = compiled(ids).logits
        torch.manual_seed(1)
        model.lm_head.weight = torch.nn.Parameter(torch.randn_like(model.lm_head.weight))
        with caplog.at_level(logging.INFO, logger="membound.recompiles"):
            after = compiled(ids).logits
        ref = model(ids).logits
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, ref, rtol=1e-4, atol=1e-4)
    assert any("lm_head.weight was replaced" in r.getMessage() for r in caplog.records), caplog.text
    assert compiled.events == ["forward: first call", "forward: lm_head.weight was replaced by another tensor"]


def test_explain_takes_an_hf_model_as_is():
    report = membound.explain(build_hf("qwen2"), measure=False, seq_len=32)
    assert report.summary()["after decode"]["bytes"] > 0
