"""Repeated stress of the split kernels on the GPU: split-K GEMV (``linear`` with ``split_k > 1``) and
multi-split flash-decoding (``cached_attention`` over many chunks), 200 launches each.

Each program of a split launch stores an fp32 partial and counts in on an arrival counter; the last
to arrive reduces, in a fixed order, and resets the counter. The interpreter runs programs one at a
time, so a missing barrier, a counter left set, or a partial read before it is written shows only on
a GPU, and only sometimes: hence many launches, interleaving shapes (a stale counter or partial of
one shape would corrupt the next), launches on two streams at once (each stream has its own
counters), and replays of a CUDA graph. Every launch must be bit-identical to the first launch of its
shape (the reduction order is fixed), the first must match torch in fp32 (fp16 tolerance 2e-2,
bf16 4e-2), and the counters must be zero afterwards.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from membound.backends.triton.kernels import DecodeConfig, cached_attention, linear
from membound.backends.triton.kernels._launch import split_counters
from membound.backends.triton.kernels.linear import pick_config
from membound.ir import get_op

LAUNCHES = 200
DTYPES = [torch.float16, torch.bfloat16]
TOL = {torch.float16: dict(atol=2e-2, rtol=2e-2), torch.bfloat16: dict(atol=4e-2, rtol=4e-2)}
pytestmark = pytest.mark.gpu


def rand(*shape: int, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Random, never zero: |x| in [0.5, 1.5) * scale, random signs."""
    mag = torch.rand(shape, generator=gen, device="cuda") + 0.5
    sign = torch.where(torch.rand(shape, generator=gen, device="cuda") < 0.5, -1.0, 1.0)
    return (mag * sign * scale).to(dtype)


def counters_zero() -> bool:
    return int(split_counters(torch.device("cuda"), 1).abs().sum()) == 0


# ---------------------------------------------------------------------------------------------
# split-K GEMV
# ---------------------------------------------------------------------------------------------
GEMV_SHAPES = [(1, 2048, 8192, 4), (3, 4096, 2048, 2), (8, 1000, 3001, 3), (16, 512, 14336, 8)]  # M, N, K, split


def _gemv_cases(dtype: torch.dtype) -> list[tuple]:
    gen = torch.Generator(device="cuda").manual_seed(0)
    cases = []
    for m, n, k, split in GEMV_SHAPES:
        x, w, b = rand(m, k, dtype=dtype, gen=gen), rand(n, k, dtype=dtype, gen=gen, scale=k**-0.5), \
            rand(n, dtype=dtype, gen=gen, scale=0.1)
        cfg = dataclasses.replace(pick_config(m, n, k, dtype, x.device), split_k=split)
        cases.append((x, w, b, cfg))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_gemv_repeated_launches(dtype: torch.dtype) -> None:
    cases = _gemv_cases(dtype)
    first = [linear(x, w, b, config=cfg) for x, w, b, cfg in cases]
    for (x, w, b, _), y in zip(cases, first):
        torch.testing.assert_close(y.float(), F.linear(x.float(), w.float(), b.float()), **TOL[dtype])
    for i in range(LAUNCHES):
        j = i % len(cases)
        x, w, b, cfg = cases[j]
        y = linear(x, w, b, config=cfg)
        assert torch.equal(y, first[j]), f"launch {i}, shape {GEMV_SHAPES[j]}: differs from the first launch"
    torch.cuda.synchronize()
    assert counters_zero()


@pytest.mark.parametrize("dtype", DTYPES)
def test_split_k_gemv_on_two_streams_at_once(dtype: torch.dtype) -> None:
    cases = _gemv_cases(dtype)[:2]
    first = [linear(x, w, b, config=cfg) for x, w, b, cfg in cases]
    streams = [torch.cuda.Stream(), torch.cuda.Stream()]
    for s in streams:
        s.wait_stream(torch.cuda.current_stream())
    outs: list[list[torch.Tensor]] = [[], []]
    for _ in range(LAUNCHES // 2):
        for j, s in enumerate(streams):  # no synchronisation between the streams: the launches overlap
            with torch.cuda.stream(s):
                x, w, b, cfg = cases[j]
                outs[j].append(linear(x, w, b, config=cfg))
    torch.cuda.synchronize()
    for j in range(2):
        bad = [i for i, y in enumerate(outs[j]) if not torch.equal(y, first[j])]
        assert not bad, f"stream {j}: launches {bad[:10]} differ from the first launch"
    for s in streams:
        with torch.cuda.stream(s):
            assert counters_zero()


# ---------------------------------------------------------------------------------------------
# multi-split flash-decoding
# ---------------------------------------------------------------------------------------------
# (B, Hq, Hkv, T, D, per-row positions, window, config): the heuristic's split at batch 1 over a long
# cache, forced 64-slot chunks, GQA 4 with per-row lengths, a sliding window
DECODE_SHAPES = [(1, 32, 8, 4096, 128, False, None, None), (4, 8, 2, 777, 64, True, None, DecodeConfig(16, 64, 64)),
                 (2, 16, 4, 2049, 128, True, None, DecodeConfig(16, 32, 96)), (3, 8, 8, 1500, 64, True, 300, None)]


def _decode_cases(dtype: torch.dtype) -> list[tuple]:
    gen = torch.Generator(device="cuda").manual_seed(1)
    cases = []
    for b, hq, hkv, t, d, per_row, window, cfg in DECODE_SHAPES:
        q, k, v = rand(b, hq, 1, d, dtype=dtype, gen=gen), rand(b, hkv, t, d, dtype=dtype, gen=gen), \
            rand(b, hkv, t, d, dtype=dtype, gen=gen)
        if per_row:
            pos = torch.randint(t // 2, t, (b, 1), generator=gen, device="cuda")
        else:
            pos = torch.tensor([t - 1], device="cuda")
        cases.append((q, k, v, pos, dict(scale=d**-0.5, window=window, config=cfg, max_len=t)))
    return cases


def _decode_reference(q, k, v, pos, kw):  # type: ignore[no-untyped-def]
    return get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=kw["scale"],
                                                window=kw["window"])


@pytest.mark.parametrize("dtype", DTYPES)
def test_flash_decoding_splits_repeated_launches(dtype: torch.dtype) -> None:
    cases = _decode_cases(dtype)
    first = [cached_attention(q, k, v, pos, **kw) for q, k, v, pos, kw in cases]
    for case, y in zip(cases, first):
        torch.testing.assert_close(y.float(), _decode_reference(*case), **TOL[dtype])
    for i in range(LAUNCHES):
        j = i % len(cases)
        q, k, v, pos, kw = cases[j]
        y = cached_attention(q, k, v, pos, **kw)
        assert torch.equal(y, first[j]), f"launch {i}, shape {DECODE_SHAPES[j]}: differs from the first launch"
    torch.cuda.synchronize()
    assert counters_zero()


@pytest.mark.parametrize("dtype", DTYPES)
def test_flash_decoding_splits_replayed_in_a_cuda_graph(dtype: torch.dtype) -> None:
    """A decode step replays its graph every token: the counters must be reset by every replay, and new
    positions (the cache filling up) must be read on the device, replay after replay."""
    q, k, v, pos, kw = _decode_cases(dtype)[1]
    pos = pos.clone()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = cached_attention(q, k, v, pos, **kw)  # warm-up: compiles, makes this stream's counters
    stream.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        out = cached_attention(q, k, v, pos, **kw)
    start = pos.clone()
    for i in range(LAUNCHES):
        pos.copy_((start + i) % k.shape[2])  # every row moves one slot per replay, wrapping at the capacity
        graph.replay()
        if i % 20 == 0 or i == LAUNCHES - 1:
            torch.cuda.synchronize()
            torch.testing.assert_close(out.float(), _decode_reference(q, k, v, pos, kw), **TOL[dtype])
    torch.cuda.synchronize()
    with torch.cuda.stream(stream):
        assert counters_zero()


def test_a_plain_torch_cuda_graph_of_a_warmed_up_split_call_captures() -> None:
    """The usual recipe: warm up (here on the default stream), then ``with torch.cuda.graph(g):`` with
    no stream, which captures on torch's own capture stream; its counters were made with the first."""
    q, k, v, pos, kw = _decode_cases(torch.bfloat16)[1]
    want = cached_attention(q, k, v, pos, **kw)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = cached_attention(q, k, v, pos, **kw)
    for _ in range(3):
        graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, want)
