"""``benches/experiments/decode_warp_split.py`` on the CPU (Triton interpreter): the warp-split flash-decoding
layout equals a torch reference at odd sizes, one split and many (the merge launch), and its variant names parse."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

if not torch.cuda.is_available():  # the experiment imports triton: interpreter mode first
    os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "decode_warp_split", ROOT / "benches" / "experiments" / "decode_warp_split.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["decode_warp_split"] = module
    spec.loader.exec_module(module)
    return module


ws = load()
DEV = "cuda" if torch.cuda.is_available() else "cpu"


# (batch, q heads, kv heads, head dim, span, capacity, warps, keys a warp, splits); tolerances: fp32 1e-4, fp16 2e-2
# of the output's largest value
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", [(1, 4, 1, 16, 1, 5, 2, 16, None), (2, 12, 3, 32, 77, 97, 2, 16, 3),
                                  (1, 8, 8, 64, 130, 131, 4, 16, 1), (3, 8, 2, 64, 7, 40, 4, 16, 2)])
def test_equals_reference(dtype: torch.dtype, case: tuple) -> None:
    bsz, hq, hkv, d, length, cap, warps, bt_w, splits = case
    gen = torch.Generator(device=DEV).manual_seed(length)
    q = torch.randn(bsz, hq, 1, d, device=DEV, dtype=dtype, generator=gen)
    k = torch.randn(bsz, hkv, cap, d, device=DEV, dtype=dtype, generator=gen)
    v = torch.randn(bsz, hkv, cap, d, device=DEV, dtype=dtype, generator=gen)
    k[:, :, length:], v[:, :, length:] = float("nan"), float("nan")  # a read past the span would show
    y = ws.ws_attention(q, k, v, length, warps=warps, bt_w=bt_w, stages=2, splits=splits)
    want = ws.reference(q, k, v, length)
    assert y.shape == q.shape and y.dtype == dtype
    err = float((y.float() - want).abs().max() / want.abs().max())
    assert err <= (1e-4 if dtype == torch.float32 else 2e-2)


def test_variant_names() -> None:
    assert ws.parse("w4 t32 s3 pps2") == dict(warps=4, bt_w=32, stages=3, pps=2)
    with pytest.raises(ValueError, match="'x7'"):
        ws.parse("w4 x7")


def test_rejects_what_it_does_not_cover() -> None:
    q = torch.zeros(1, 4, 2, 16)  # two query positions
    k = torch.zeros(1, 1, 8, 16)
    with pytest.raises(ValueError, match="one query position"):
        ws.ws_attention(q, k, k, 8)
