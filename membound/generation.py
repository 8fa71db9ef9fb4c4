"""``compiled.generate(...)`` for a Hugging Face model: membound's decode loop, HF's arguments.

    compiled = membound.compile(hf_model)
    out = compiled.generate(**tokenizer(prompt, return_tensors="pt"), max_new_tokens=50,
                            streamer=TextStreamer(tokenizer))          # same call as hf_model.generate

The effective ``GenerationConfig`` is built as HF builds it: the ``generation_config=`` argument (or an
empty one), completed by the model's ``generation_config``, then by HF's global defaults, then
overridden by keyword arguments. What membound's loop does with it:

* length: ``max_new_tokens``, else ``max_length`` minus the prompt; ``min_new_tokens`` / ``min_length``
  keep the EOS tokens' logits at -inf until reached;
* stopping: ``eos_token_id`` (an int or a list); finished rows emit ``pad_token_id`` (HF's fallback:
  the first EOS id);
* choosing: greedy unless ``do_sample``; then ``temperature``, ``top_k``, ``top_p``;
  ``repetition_penalty`` divides (or multiplies, when negative) the logits of every token already in
  the row, prompt included, as HF does;
* ``streamer``: an object with ``put(tensor)`` and ``end()`` (HF's ``TextStreamer`` and friends): the
  prompt is put first, then each step's tokens, then ``end()``.

Any other option that differs from HF's default (beam search, ``num_return_sequences``, ``stop_strings``,
``logits_processor``, ``return_dict_in_generate``, ...) raises :class:`UnsupportedGenerationOption`
naming it: membound never falls back to the uncompiled model.
"""

from __future__ import annotations

import copy
import time
from typing import Any, Optional

import torch

from membound import logs

_log = logs.logger("generate")

# options membound's loop implements (beyond these, a value other than HF's default is an error)
SUPPORTED = {"max_length", "max_new_tokens", "min_length", "min_new_tokens", "do_sample", "temperature", "top_k",
             "top_p", "repetition_penalty", "eos_token_id", "pad_token_id", "bos_token_id", "use_cache",
             "max_cache_len", "transformers_version", "_from_model_config", "decoder_start_token_id",
             # no effect on a decoder-only model decoding with membound's own static cache
             "cache_implementation", "cache_config", "compile_config", "disable_compile", "output_attentions",
             "output_hidden_states"}
# keyword arguments of HF's generate() that are not GenerationConfig fields
_CALL_ARGUMENTS = ("logits_processor", "stopping_criteria", "prefix_allowed_tokens_fn", "synced_gpus",
                   "assistant_model", "negative_prompt_ids", "negative_prompt_attention_mask", "custom_generate",
                   "tokenizer")


class UnsupportedGenerationOption(ValueError):
    """``compiled.generate`` was asked for something membound's decode loop does not do."""


def _hf_generation_config() -> Any:
    """transformers' ``GenerationConfig`` class, as installed (5.x, or 4.x: see :func:`resolve_config`)."""
    from transformers import GenerationConfig

    return GenerationConfig


def resolve_config(model: Any, generation_config: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """The effective GenerationConfig (HF's precedence) and the keyword arguments that are not its fields."""
    GenerationConfig = _hf_generation_config()
    own = getattr(model, "generation_config", None)
    if not hasattr(GenerationConfig, "_get_default_generation_params"):
        # transformers 4.x: fields hold their defaults, and a given config replaces the model's whole
        config = copy.deepcopy(generation_config if generation_config is not None else own or GenerationConfig())
        return config, config.update(**kwargs)
    config = copy.deepcopy(generation_config) if generation_config is not None else GenerationConfig()
    if own is not None:
        config.update(**own.to_dict(), defaults_only=True, allow_custom_entries=True)
    config.update(**config._get_default_generation_params(), defaults_only=True)
    rest = config.update(**kwargs)
    return config, rest


def check_supported(config: Any) -> None:
    """Raise for every option that is set to something other than HF's default and that membound lacks."""
    GenerationConfig = _hf_generation_config()
    if hasattr(GenerationConfig, "_get_default_generation_params"):
        defaults = GenerationConfig._get_default_generation_params()
    else:  # transformers 4.x: a fresh config holds the defaults
        defaults = GenerationConfig().to_dict()
    bad = []
    for key, value in config.to_dict().items():
        if key in SUPPORTED or value is None:
            continue
        default = defaults.get(key)
        if value == default or (default is None and value in (False, 0, [], {})):
            continue
        bad.append(f"{key}={value!r}")
    if config.cache_implementation not in (None, "static", "dynamic"):
        bad.append(f"cache_implementation={config.cache_implementation!r}")
    if bad:
        raise UnsupportedGenerationOption(
            f"compiled.generate does not support {', '.join(bad)}: membound's decode loop does greedy or sampled "
            f"decoding (do_sample, temperature, top_k, top_p), repetition_penalty, min/max length, EOS lists and "
            f"streamers. Drop the option, or call the uncompiled model's generate() for it")


class HFLogits:
    """The logits processing HF applies before choosing a token: repetition penalty, minimum length.

    Sees every emitted step through :meth:`observe` (chained into the loop's ``stream``) so it knows
    each row's tokens, as HF's processors see ``input_ids``."""

    def __init__(self, input_ids: torch.Tensor, eos: list[int], repetition_penalty: float, min_new_tokens: int,
                 min_length: int) -> None:
        self.tokens = input_ids.clone()
        self.eos = torch.tensor(eos, device=input_ids.device, dtype=torch.long) if eos else None
        self.penalty = float(repetition_penalty)
        self.min_new = min_new_tokens
        self.min_length = min_length
        self.steps = 0

    def active(self) -> bool:
        return self.penalty != 1.0 or (self.eos is not None and (self.min_new > 0 or self.min_length > 0))

    def observe(self, tokens: torch.Tensor) -> None:
        self.tokens = torch.cat([self.tokens, tokens[:, None].to(self.tokens.dtype)], dim=1)
        self.steps += 1

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        logits = logits.float().clone()  # [B, V]; HF processes fp32 copies too
        if self.penalty != 1.0:
            seen = logits.gather(1, self.tokens)
            seen = torch.where(seen < 0, seen * self.penalty, seen / self.penalty)
            logits.scatter_(1, self.tokens, seen)
        short = self.steps < self.min_new or self.tokens.shape[1] < self.min_length
        if self.eos is not None and short:
            logits[:, self.eos] = float("-inf")
        return logits


def _eos_list(value: Any) -> list[int]:
    if value is None:
        return []
    if isinstance(value, torch.Tensor):
        return [int(v) for v in value.flatten().tolist()]
    return [int(value)] if isinstance(value, int) else [int(v) for v in value]


def hf_generate(compiled: Any, inputs: Optional[torch.Tensor] = None, generation_config: Any = None,
                **kwargs: Any) -> torch.Tensor:
    """``model.generate``'s call, decoded by membound (see the module docstring); returns ``[B, L + n]`` ids."""
    from membound.api import _carried_cache_position_kw, build_kv_program
    from membound.runtime.concurrency import exclusive
    from membound.runtime.generate import carried_cache_loop, decode_loop

    for name in _CALL_ARGUMENTS:
        value = kwargs.pop(name, None)
        if value is not None and not (name in ("logits_processor", "stopping_criteria") and len(value) == 0):
            raise UnsupportedGenerationOption(f"compiled.generate does not support {name}=; membound's decode loop "
                                              f"builds its own (see membound.generation)")
    streamer = kwargs.pop("streamer", None)
    attention_mask = kwargs.pop("attention_mask", None)
    generator = kwargs.pop("generator", None)
    input_ids = kwargs.pop("input_ids", None)
    if inputs is not None and input_ids is not None:
        raise ValueError("compiled.generate: pass the prompt as inputs or input_ids, not both")
    input_ids = inputs if inputs is not None else input_ids
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"compiled.generate needs input_ids [batch, seq] (a LongTensor); got "
                         f"{type(input_ids).__name__ if not isinstance(input_ids, torch.Tensor) else input_ids.shape}")
    module = compiled._module
    config, rest = resolve_config(module, generation_config, kwargs)
    if rest:
        raise UnsupportedGenerationOption(f"compiled.generate does not take {', '.join(sorted(rest))}: membound "
                                          f"decodes from input_ids (and attention_mask) only")
    check_supported(config)
    if config.num_beams != 1 or config.num_return_sequences != 1:  # defaults are 1; guard anyway
        raise UnsupportedGenerationOption("compiled.generate does greedy or sampled decoding: num_beams and "
                                          "num_return_sequences must be 1")

    length = input_ids.shape[1]
    if config.max_new_tokens is not None:
        new = int(config.max_new_tokens)
    else:
        new = int(config.max_length) - length
        if new <= 0:
            raise ValueError(f"compiled.generate: the prompt has {length} tokens and max_length={config.max_length} "
                             f"leaves no room; pass max_new_tokens=N")
    min_new = int(config.min_new_tokens or 0)
    eos = _eos_list(config.eos_token_id)
    pad = config.pad_token_id if config.pad_token_id is not None else (eos[0] if eos else None)
    if attention_mask is None and pad is not None and pad not in eos and bool((input_ids == pad).any()):
        attention_mask = (input_ids != pad).long()  # as HF infers it for a padded batch
    sampling = bool(config.do_sample)
    processor = HFLogits(input_ids, eos, config.repetition_penalty or 1.0, min_new, int(config.min_length or 0))
    _log.info("%s: %d new tokens max (min %d), %s, eos %s, pad %s, repetition_penalty %s", compiled._name(), new,
              min_new, f"sampling (temperature {config.temperature}, top_k {config.top_k}, top_p {config.top_p})"
              if sampling else "greedy", eos, pad, config.repetition_penalty)

    def stream(tokens: torch.Tensor) -> None:
        processor.observe(tokens)
        if streamer is not None:
            streamer.put(tokens.cpu())

    # without a streamer the loop may run a step or two past the last EOS (all-pad steps, cut from the result) rather
    # than wait for the device each token (runtime.generate.AllFinished)
    stream.pads_ok = streamer is None  # type: ignore[attr-defined]

    options = dict(attention_mask=attention_mask, temperature=float(config.temperature) if sampling else 0.0,
                   top_k=config.top_k if sampling else None, top_p=config.top_p if sampling else None,
                   eos_token_id=eos, pad_token_id=pad, stream=stream, generator=generator,
                   process=processor if processor.active() else None)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    start = time.perf_counter()
    with torch.no_grad(), exclusive(compiled, "generate"):
        position_kw = _carried_cache_position_kw(compiled.fn)
        if position_kw is not None:
            out = carried_cache_loop(compiled, position_kw, input_ids, new, **options)
        else:
            program = build_kv_program(compiled, input_ids)
            out = decode_loop(program, input_ids, new, max_cache_len=getattr(config, "max_cache_len", None), **options)
    if streamer is not None:
        streamer.end()
    seconds = time.perf_counter() - start
    made = (out.shape[1] - length) * out.shape[0]
    _log.info("%s: %d tokens in %.2f s (%.1f tokens/s)", compiled._name(), made, seconds, made / max(seconds, 1e-9))
    return out
