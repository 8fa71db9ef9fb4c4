"""``benches/experiments/decode_warp_split.py`` on the CPU (Triton interpreter): the warp-split flash-decoding
layout equals a torch reference at odd sizes, one split and many (the merge launch), and its variant names parse."""

from __future__ import annotations

import os

import pytest
import torch
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

if not torch.cuda.is_available():  # the experiment imports triton: interpreter mode first
    os.environ.setdefault("TRITON_INTERPRET", "1")


ws = load_module("benches/experiments/decode_warp_split.py", "decode_warp_split")
DEV = "cuda" if torch.cuda.is_available() else "cpu"


# tolerances: fp32 1e-4, fp16 2e-2 of the output's largest value (ws.CASES: odd spans, GQA 1 and 4, one split and
# several, NaN past the span)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", ws.CASES)
def test_equals_reference(dtype: torch.dtype, case: tuple) -> None:
    bsz, hq, hkv, d, length, cap, warps, bt_w, splits = case
    y, err = ws.case_error(bsz, hq, hkv, d, length, cap, dtype, DEV, warps=warps, bt_w=bt_w, stages=2, splits=splits)
    assert y.shape == (bsz, hq, 1, d) and y.dtype == dtype
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
