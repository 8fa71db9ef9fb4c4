"""``compiled.generate`` reads HF's GenerationConfig as the installed transformers defines it. 5.x leaves unset
fields ``None`` and fills them from ``_get_default_generation_params`` (a given config merged over the model's);
4.x keeps the defaults in the fields and has neither that method nor ``update(defaults_only=...)`` (a given config
replaces the model's). CI has 5.x: the 4.x class is stood in for by ``_Config4x``, the API 4.57 has, through
``membound.generation._hf_generation_config`` (patching the attribute on transformers' lazy module did not reach
``resolve_config`` in one CI worker)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from membound import generation
from membound.generation import UnsupportedGenerationOption, check_supported, resolve_config


class _Config4x:
    """transformers 4.57's GenerationConfig, as far as membound uses it: defaults held in the fields, ``update``
    setting known keys and returning the rest, ``to_dict``."""

    def __init__(self, **kwargs: Any) -> None:
        self.max_length, self.max_new_tokens, self.min_length, self.min_new_tokens = 20, None, 0, None
        self.do_sample, self.num_beams, self.num_return_sequences = False, 1, 1
        self.temperature, self.top_k, self.top_p, self.repetition_penalty = 1.0, 50, 1.0, 1.0
        self.pad_token_id = self.eos_token_id = None
        self.cache_implementation, self.no_repeat_ngram_size = None, 0
        self.update(**kwargs)

    def update(self, **kwargs: Any) -> dict[str, Any]:
        used = [k for k in kwargs if hasattr(self, k)]
        for k in used:
            setattr(self, k, kwargs[k])
        return {k: v for k, v in kwargs.items() if k not in used}

    def to_dict(self) -> dict[str, Any]:
        return dict(vars(self))


@pytest.fixture
def hf4(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(generation, "_hf_generation_config", lambda: _Config4x)


def test_the_models_config_then_the_keywords(hf4: None) -> None:
    model = SimpleNamespace(generation_config=_Config4x(eos_token_id=7, top_k=10))
    config, rest = resolve_config(model, None, {"max_new_tokens": 3, "streamer_like": 1})
    assert (config.eos_token_id, config.top_k, config.max_new_tokens) == (7, 10, 3)
    assert rest == {"streamer_like": 1}
    assert model.generation_config.max_new_tokens is None  # a copy: the model's config is left as it was


def test_a_given_config_replaces_the_models(hf4: None) -> None:
    model = SimpleNamespace(generation_config=_Config4x(eos_token_id=7, top_k=10))
    config, _ = resolve_config(model, _Config4x(do_sample=True), {})
    assert (config.eos_token_id, config.top_k, config.do_sample) == (None, 50, True)
    config, _ = resolve_config(SimpleNamespace(), None, {})  # a model without one: the defaults
    assert config.max_length == 20


def test_unsupported_options_against_4x_defaults(hf4: None) -> None:
    check_supported(_Config4x(max_new_tokens=5, do_sample=True, top_k=5))  # supported, or at their defaults
    with pytest.raises(UnsupportedGenerationOption, match="num_beams=4"):
        check_supported(_Config4x(num_beams=4))
    with pytest.raises(UnsupportedGenerationOption, match="no_repeat_ngram_size=3"):
        check_supported(_Config4x(no_repeat_ngram_size=3))
