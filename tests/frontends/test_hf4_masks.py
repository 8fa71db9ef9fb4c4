"""transformers 4.5x builds attention masks by ``torch.vmap`` (export writes higher-order ops membound does not
translate); ``capture_export`` swaps its ``sdpa_mask`` for a broadcast builder while exporting. CI has transformers
5.x, so the 4.x module is stood in for by ``_Fake4x`` (its API: ``sdpa_mask_recent_torch``, the mask-function
helpers, ``ALL_MASK_ATTENTION_FUNCTIONS``), with the mask semantics written out here; the sweep under a real 4.57
is ``benches/hf_families.py`` with it on ``PYTHONPATH`` (every family but Mamba, session 16)."""

from __future__ import annotations

import sys
import types

import torch

from membound.frontends import export as ex


def _fake_4x() -> types.ModuleType:
    mu = types.ModuleType("transformers.masking_utils")

    def causal_mask_function(b, h, q, kv):  # type: ignore[no-untyped-def]
        return kv <= q

    def sliding_window_overlay(w):  # type: ignore[no-untyped-def]
        return lambda b, h, q, kv: kv > q - w

    def and_masks(*fns):  # type: ignore[no-untyped-def]
        def both(b, h, q, kv):  # type: ignore[no-untyped-def]
            out = q.new_ones((), dtype=torch.bool)
            for f in fns:
                out = out & f(b, h, q, kv)
            return out
        return both

    def padding_mask_function(pad):  # type: ignore[no-untyped-def]
        return lambda b, h, q, kv: pad[b, kv]

    def prepare_padding_mask(mask, kv_length, kv_offset, _slice=True):  # type: ignore[no-untyped-def]
        return None if mask is None else mask.bool()

    def _ignore_causal_mask_sdpa(pad, q_length, kv_length, kv_offset, local_size):  # type: ignore[no-untyped-def]
        return pad is None and local_size is None and q_length == kv_length

    def sdpa_mask_recent_torch(*a, **k):  # type: ignore[no-untyped-def]
        raise AssertionError("the vmap builder must not run while exporting")

    class Registry:
        _global_mapping = {"sdpa": sdpa_mask_recent_torch}

    for f in (causal_mask_function, sliding_window_overlay, and_masks, padding_mask_function, prepare_padding_mask,
              _ignore_causal_mask_sdpa, sdpa_mask_recent_torch):
        setattr(mu, f.__name__, f)
    mu.sdpa_mask = sdpa_mask_recent_torch
    mu.ALL_MASK_ATTENTION_FUNCTIONS = Registry()
    return mu


def test_the_4x_mask_builder_is_swapped_while_exporting_and_broadcasts_the_mask_function(monkeypatch) -> None:
    mu = _fake_4x()
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", mu)
    original = mu.sdpa_mask
    with ex._hf_masks_without_vmap():
        assert mu.sdpa_mask is ex._hf_mask_by_broadcast
        assert mu.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"] is ex._hf_mask_by_broadcast
        pad = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
        window = mu.and_masks(mu.causal_mask_function, mu.sliding_window_overlay(2))
        got = mu.sdpa_mask(2, torch.arange(5), 5, mask_function=window, attention_mask=pad)
        assert mu.sdpa_mask(2, torch.arange(5), 5) is None  # no padding, no window: causal by the is_causal flag
    assert mu.sdpa_mask is original and mu.ALL_MASK_ATTENTION_FUNCTIONS._global_mapping["sdpa"] is original
    q, kv = torch.arange(5)[:, None], torch.arange(5)[None, :]
    want = ((kv <= q) & (kv > q - 2))[None, None] & pad.bool()[:, None, None, :]
    assert got.shape == (2, 1, 5, 5) and torch.equal(got, want)


def test_transformers_5_is_left_alone(monkeypatch) -> None:
    mu = types.ModuleType("transformers.masking_utils")
    mu.sdpa_mask = object()
    monkeypatch.setitem(sys.modules, "transformers.masking_utils", mu)
    with ex._hf_masks_without_vmap():
        assert mu.sdpa_mask is not ex._hf_mask_by_broadcast
