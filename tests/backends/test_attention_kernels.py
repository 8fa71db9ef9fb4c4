"""Attention kernels against the IR ops' torch references: flash-decoding with sliding windows, attention chunks
and soft-capping, and the flash prefill kernel (``attention``) at odd sizes.

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
    check_decode(b, hq, hkv, s, t, config, dtype, b * 100 + hq * 10 + s + t, window=window, softcap=softcap)


def check_decode(b: int, hq: int, hkv: int, s: int, t: int, config: Optional[DecodeConfig], dtype: torch.dtype,
                 seed: int, **attrs: object) -> None:
    """flash-decoding against the op's reference (fp32 inputs) at rows of random positions, head dim 16."""
    gen = torch.Generator().manual_seed(seed)
    q = rand(b, hq, s, 16, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, t, 16, dtype=dtype, gen=gen), rand(b, hkv, t, 16, dtype=dtype, gen=gen)
    starts = torch.randint(0, t - s + 1, (b, 1), generator=gen)
    pos = (starts + torch.arange(s)[None, :]).to(DEVICE)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=0.3, config=config, **attrs)
    ran_kernel(calls, "cached_attention")
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=0.3, **attrs)
    close(y, want, dtype)


@pytest.mark.parametrize("attrs,first", [(dict(window=8), 43), (dict(chunk=16), 48)], ids=["window", "chunk"])
def test_cached_attention_reads_only_what_it_sees(attrs: dict, first: int) -> None:
    """Slots older than the window (position 50, window 8: 43..50) or before the position's chunk (chunks of 16:
    48..50) are never read: NaN there must not reach the output."""
    q, k, v = rand(1, 4, 1, 16), rand(1, 2, 64, 16), rand(1, 2, 64, 16)
    pos = torch.tensor([50], device=DEVICE)
    want = get_op("cached_attention").reference(q, k, v, pos, scale=None, **attrs)
    k[:, :, :first], v[:, :, :first] = float("nan"), float("nan")
    with trace() as calls:
        y = cached_attention(q, k, v, pos, config=DecodeConfig(16, 16, 16), **attrs)
    ran_kernel(calls, "cached_attention")
    close(y, want, torch.float32)


CHUNK_CASES = [
    # (B, Hq, Hkv, S, T, chunk, config): Llama 4's chunked layers (the query at p sees slots p - p % C .. p)
    (2, 4, 2, 1, 45, 8, DecodeConfig(16, 16, 16)),     # one token a row, rows in different chunks
    (3, 4, 1, 5, 40, 4, None),                         # S = 5 rows crossing chunk edges (per-row first slot)
    (1, 8, 2, 1, 70, 48, DecodeConfig(16, 16, 16)),    # a chunk over several splits: split merge
    (2, 4, 4, 2, 29, 100, None),                       # chunk larger than the cache: plain causal
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,hq,hkv,s,t,chunk,config", CHUNK_CASES)
def test_cached_attention_chunks(b: int, hq: int, hkv: int, s: int, t: int, chunk: int,
                                 config: Optional[DecodeConfig], dtype: torch.dtype) -> None:
    check_decode(b, hq, hkv, s, t, config, dtype, b * 100 + hq * 10 + s + t + chunk, chunk=chunk)


def test_cached_attention_chunk_and_window_do_not_combine() -> None:
    q, k, v = rand(1, 4, 1, 16), rand(1, 2, 64, 16), rand(1, 2, 64, 16)
    pos = torch.tensor([50], device=DEVICE)
    with pytest.raises(ValueError, match="chunk does not combine with a window"):
        cached_attention(q, k, v, pos, chunk=16, window=4)


# ---------------------------------------------------------------------------------------------
# attention (flash prefill)
# ---------------------------------------------------------------------------------------------
from membound.backends.triton.kernels import FlashConfig, attention, flash_attention  # noqa: E402
from membound.backends.triton.kernels.flash_attention import choose_impl  # noqa: E402

PREFILL_CASES = [
    # (B, Hq, Hkv, S, L, D, causal, window, softcap)
    (1, 2, 2, 1, 1, 64, True, None, None),        # S = 1
    (2, 4, 1, 7, 7, 80, True, None, None),        # GQA 4, D = 80 padded to 128
    (1, 8, 1, 37, 37, 64, False, None, None),     # GQA 8, non-causal, several key tiles
    (2, 4, 4, 37, 37, 128, True, 5, None),        # window smaller than S
    (1, 4, 2, 21, 21, 96, True, 64, None),        # window larger than S
    (1, 2, 1, 19, 19, 64, True, 6, 3.0),          # window and soft-cap
    (2, 2, 2, 9, 23, 64, False, None, 2.0),       # S != L, soft-cap
    # long enough for the unmasked loop over whole tiles (16-key tiles in the interpreter) beside the masked ones
    (1, 4, 2, 70, 70, 64, True, None, None),      # causal: full tiles below the diagonal, masked diagonal
    (1, 2, 1, 50, 50, 80, True, None, 3.0),       # D = 80 (padded loads in the unmasked loop), soft-cap
    (1, 2, 2, 40, 64, 64, True, 20, None),        # window: masked front edge, full middle, masked diagonal
    (2, 4, 2, 45, 61, 64, False, None, None),     # non-causal S != L: full tiles and a masked tail
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,hq,hkv,s,length,d,causal,window,softcap", PREFILL_CASES)
def test_flash_attention(b: int, hq: int, hkv: int, s: int, length: int, d: int, causal: bool,
                         window: Optional[int], softcap: Optional[float], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(b + hq + s + d)
    q = rand(b, hq, s, d, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, length, d, dtype=dtype, gen=gen), rand(b, hkv, length, d, dtype=dtype, gen=gen)
    attrs = dict(causal=causal, scale=0.2, window=window, softcap=softcap)
    with trace() as calls:
        y = attention(q, k, v, impl="kernel", **attrs)
    ran_kernel(calls, "attention")
    want = get_op("attention").reference(q.float(), k.float(), v.float(), **attrs)
    close(y, want, dtype)


@pytest.mark.parametrize("kind", ["bool", "additive"])
def test_flash_attention_padding_mask(kind: str) -> None:
    """A padding mask [B, 1, 1, L] (HF's attention_mask) and a full [B, 1, S, L] one, read by broadcast strides."""
    q, k, v = rand(2, 4, 13, 64), rand(2, 2, 13, 64), rand(2, 2, 13, 64)
    keep = torch.ones(2, 1, 13, 13, dtype=torch.bool).tril()
    keep[1, :, :, 9:] = False  # row 1 has 9 tokens
    keep = keep.to(DEVICE)
    mask = keep if kind == "bool" else torch.zeros(keep.shape, device=DEVICE).masked_fill(~keep, float("-inf"))
    with trace() as calls:
        y = attention(q, k, v, mask, impl="kernel", causal=False, scale=None)
    ran_kernel(calls, "attention")
    close(y, get_op("attention").reference(q, k, v, mask, causal=False, scale=None), torch.float32)


def test_flash_attention_as_cached_prefill() -> None:
    """Right-padded prefill over a cache: per-row positions, keys = cache slots <= position (window 5)."""
    q, k, v = rand(2, 4, 11, 64), rand(2, 2, 29, 64), rand(2, 2, 29, 64)
    pos = torch.stack([torch.arange(11), torch.arange(11) + 7]).to(DEVICE)
    y = flash_attention(q, k, v, positions=pos, scale=0.3, window=5, config=FlashConfig(16, 16))
    want = get_op("cached_attention").reference(q, k, v, pos, scale=0.3, window=5)
    close(y, want, torch.float32)


CHUNK_PREFILL_CASES = [
    # (B, Hq, Hkv, S, D, chunk): causal within chunks, row blocks spanning chunk edges (16-row blocks in the
    # interpreter), whole chunks of unmasked tiles
    (1, 4, 2, 13, 64, 4),
    (2, 4, 1, 37, 80, 8),
    (1, 2, 2, 70, 64, 32),     # 32-key chunks: two full 16-key tiles each, masked diagonals
    (1, 2, 1, 21, 64, 64),     # chunk larger than S: plain causal
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,hq,hkv,s,d,chunk", CHUNK_PREFILL_CASES)
def test_flash_attention_chunks(b: int, hq: int, hkv: int, s: int, d: int, chunk: int, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(b + hq + s + d + chunk)
    q = rand(b, hq, s, d, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, s, d, dtype=dtype, gen=gen), rand(b, hkv, s, d, dtype=dtype, gen=gen)
    attrs = dict(causal=True, scale=0.2, chunk=chunk)
    with trace() as calls:
        y = attention(q, k, v, impl="kernel", **attrs)
    ran_kernel(calls, "attention")
    want = get_op("attention").reference(q.float(), k.float(), v.float(), **attrs)
    close(y, want, dtype)


def test_flash_attention_chunks_as_cached_prefill() -> None:
    """Right-padded prefill over a cache with chunks of 8: row 1 starts at slot 7, so its row blocks straddle
    chunk edges at other rows than row 0's."""
    q, k, v = rand(2, 4, 11, 64), rand(2, 2, 29, 64), rand(2, 2, 29, 64)
    pos = torch.stack([torch.arange(11), torch.arange(11) + 7]).to(DEVICE)
    y = flash_attention(q, k, v, positions=pos, scale=0.3, chunk=8, config=FlashConfig(16, 16))
    want = get_op("cached_attention").reference(q, k, v, pos, scale=0.3, chunk=8)
    close(y, want, torch.float32)


def test_choose_impl_rule() -> None:
    """Plain causal attention goes to SDPA (its measured efficiency is higher); soft-capping and windows much
    shorter than the sequence go to the kernel (SDPA would materialise a mask and visit every key)."""
    shape = dict(b=1, hq=32, s=8192, length=8192, d=128, dv=128, has_mask=False, dtype=torch.bfloat16)
    assert choose_impl(**shape, causal=True, window=None, softcap=None) == "sdpa"
    assert choose_impl(**shape, causal=True, window=None, softcap=50.0) == "kernel"
    assert choose_impl(**shape, causal=True, window=1024, softcap=None) == "kernel"
    # attention sinks and ALiBi slopes: SDPA takes neither (it would need them materialised)
    assert choose_impl(**shape, causal=True, window=None, softcap=None, score_terms=True) == "kernel"


@pytest.mark.gpu
@pytest.mark.parametrize("d", [64, 128, 256])
@pytest.mark.parametrize("causal", [False, True])
def test_flash_attention_bf16_gpu(d: int, causal: bool) -> None:
    q = rand(2, 8, 300, d, dtype=torch.bfloat16)
    k, v = rand(2, 2, 300, d, dtype=torch.bfloat16), rand(2, 2, 300, d, dtype=torch.bfloat16)
    with trace() as calls:
        y = attention(q, k, v, impl="kernel", causal=causal, scale=None, window=100 if causal else None)
    ran_kernel(calls, "attention")
    want = get_op("attention").reference(q.float(), k.float(), v.float(), causal=causal, scale=None,
                                         window=100 if causal else None)
    close(y, want, torch.bfloat16)


def test_cached_attention_prefill_runs_the_flash_kernel() -> None:
    """Many new tokens (G * S > PREFILL_ROWS): cached_attention hands the prefill to the flash kernel, which
    skips the tiles above each row block's diagonal; per-row (right-padded) positions, fp16."""
    from membound.backends.triton.kernels.decode_attention import PREFILL_ROWS

    g, s = 4, PREFILL_ROWS // 4 + 5
    q = rand(2, 2 * g, s, 16, dtype=torch.float16)
    k, v = rand(2, 2, s + 9, 16, dtype=torch.float16), rand(2, 2, s + 9, 16, dtype=torch.float16)
    pos = torch.stack([torch.arange(s), torch.arange(s) + 9]).to(DEVICE)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=0.3, window=11)
    ran_kernel(calls, "cached_attention")
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=0.3, window=11)
    close(y, want, torch.float16)


# the odd sizes of issue 12: S = 1, 7, 130; D = 64, 80, 128; GQA 1, 4, 8; splits past the merge's lanes
ODD_CASES = [
    # (S, D, GQA, T, config)
    (1, 64, 1, 301, DecodeConfig(16, 16, 16)),    # 19 splits: the merge folds two loads of 16 partials
    (1, 80, 4, 301, None),                       # the heuristic's config
    (1, 128, 8, 301, DecodeConfig(16, 32, 32)),  # 10 splits
    (7, 80, 8, 150, DecodeConfig(64, 16, 16)),   # 56 rows: one row block, 10 splits
    (7, 128, 1, 150, DecodeConfig(16, 16, 48)),  # 4 splits of 3 tiles each
    (130, 64, 1, 140, DecodeConfig(64, 16, 48)),  # 130 rows in 3 row blocks (the last one partial), 3 splits
]


@pytest.mark.parametrize("s,d,g,t,config", ODD_CASES)
def test_cached_attention_odd_sizes(s: int, d: int, g: int, t: int, config: Optional[DecodeConfig]) -> None:
    gen = torch.Generator().manual_seed(s * 1000 + d + g)
    b, hkv = 2, 2
    q = rand(b, hkv * g, s, d, gen=gen)
    k, v = rand(b, hkv, t, d, gen=gen), rand(b, hkv, t, d, gen=gen)
    starts = torch.tensor([[t - s - 5], [t - s]])  # rows at different lengths
    pos = (starts + torch.arange(s)[None, :]).to(DEVICE)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, config=config)
    assert calls and all(c[1] == "kernel" for c in calls if c[0] == "cached_attention"), calls
    close(y, get_op("cached_attention").reference(q, k, v, pos, scale=None), torch.float32)
