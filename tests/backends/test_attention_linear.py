"""``attention_linear`` (kernels/linear.py): flash decoding stores its chunks' partials (``PARTIALS``) and the o
projection's GEMV merges them as it loads x (``MERGE_X``), against the two ops composed in torch
(``cached_attention``'s reference, the heads back into rows, ``F.linear``).

CPU: the Triton interpreter, fp32 and fp16 (tolerances 1e-4 / 2e-2 on outputs of magnitude ~1); odd sizes, splits
of one to many chunks, both launch paths (a known length; the CUDA-graph step's grid sized for the capacity, the
slots past each row's position NaN so that a read of one reaches the output), every GEMV form the rows pick
(one row: the resident register tile; 3 and 4 rows: tensor cores, the merge into the pre-gate scratch).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from membound.backends.triton.kernels import DecodeConfig, LinearConfig, attention_linear, trace  # noqa: E402
from membound.backends.triton.kernels._launch import cdiv  # noqa: E402
from membound.backends.triton.kernels.decode_attention import cached_attention, merge_partials  # noqa: E402
from membound.ir import get_op  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=2e-2, atol=2e-2)}


def rand(*shape: int, dtype: torch.dtype, gen: torch.Generator, scale: float = 1.0) -> torch.Tensor:
    """Random values away from zero: |x| in [0.5, 1.5) * scale with a random sign."""
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign * scale).to(dtype).to(DEVICE)


def inputs(b: int, g: int, hkv: int, s: int, filled: int, d: int, n: int, dtype: torch.dtype, path: str,
           bias: bool, seed: int) -> tuple:
    gen = torch.Generator().manual_seed(seed)
    cap = filled if path == "known" else max(64, 2 * filled)
    q = rand(b, hkv * g, s, d, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, cap, d, dtype=dtype, gen=gen), rand(b, hkv, cap, d, dtype=dtype, gen=gen)
    w = rand(n, hkv * g * d, dtype=dtype, gen=gen, scale=(hkv * g * d) ** -0.5)
    bb = rand(n, dtype=dtype, gen=gen) if bias else None
    # row 0's last token at the last filled slot, the other rows shorter; the S new tokens consecutive
    last = torch.tensor([filled - 1] + [max(s - 1, filled - 1 - 5 * i) for i in range(1, b)])
    pos = (last[:, None] - (s - 1) + torch.arange(s)[None, :]).to(DEVICE)
    if path == "capacity":
        for i in range(b):  # slots no row of batch i sees
            k[i, :, int(last[i]) + 1:], v[i, :, int(last[i]) + 1:] = float("nan"), float("nan")
    return q, k, v, pos, w, bb


def composed(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, w: torch.Tensor,
             bias: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """The two ops apart, in fp32 (the attention's output rounded to the dtype, as the op rounds it)."""
    b, hq, s, _ = q.shape
    k, v = k.nan_to_num(), v.nan_to_num()  # (the NaN slots are past every row's position: masked either way)
    o = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=scale).to(q.dtype)
    x = o.transpose(1, 2).reshape(b, s, hq * v.shape[3]).float()
    return F.linear(x, w.float(), None if bias is None else bias.float())


CASES = [
    # (B, G, Hkv, S, filled, D, N, dtype, path, bias, attention config)
    (1, 4, 2, 1, 130, 64, 48, torch.float32, "capacity", False, DecodeConfig(16, 16, 32, min_chunk=16)),  # 9 chunks
    (1, 4, 2, 1, 7, 64, 37, torch.float32, "known", True, None),  # the heuristic: one chunk
    (3, 4, 2, 1, 130, 80, 40, torch.float16, "capacity", False, DecodeConfig(16, 16, 64, min_chunk=16)),  # D = 80
    (2, 2, 3, 2, 45, 64, 33, torch.float32, "known", True, DecodeConfig(16, 16, 16)),  # 2 new tokens, 3 splits
    (1, 8, 1, 1, 300, 128, 24, torch.float16, "capacity", False, None),  # GQA 8, the heuristic's capacity split
    (4, 1, 3, 1, 61, 64, 50, torch.float32, "capacity", False, DecodeConfig(16, 16, 32, min_chunk=16)),  # MHA
]


@pytest.mark.parametrize("b,g,hkv,s,filled,d,n,dtype,path,bias,cfg", CASES)
def test_attention_linear_equals_the_ops_composed(b: int, g: int, hkv: int, s: int, filled: int, d: int, n: int,
                                                   dtype: torch.dtype, path: str, bias: bool,
                                                   cfg: Optional[DecodeConfig]) -> None:
    q, k, v, pos, w, bb = inputs(b, g, hkv, s, filled, d, n, dtype, path, bias, seed=filled * 7 + d + b)
    want = composed(q, k, v, pos, w, bb, 0.3)
    with trace() as calls:
        y = attention_linear(q, k, v, pos, w, bb, scale=0.3, attn_config=cfg,
                             max_len=filled if path == "known" else None)
    assert list(calls) == [("cached_attention", "kernel"), ("attention_linear", "kernel")], calls
    assert y.shape == (b, s, n) and y.dtype == dtype
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[dtype])


def test_partials_split_and_merge_to_the_output() -> None:
    """The partials mode splits a span the default would stream in one program (no direct span, one-tile chunks),
    every row block counts its chunks with slots, and their torch merge is the attention's output."""
    q, k, v, pos, _, _ = inputs(2, 4, 2, 1, 200, 64, 8, torch.float32, "capacity", False, seed=3)
    cfg = DecodeConfig(16, 16, 64, min_chunk=16)
    parts = cached_attention(q, k, v, pos, scale=0.3, config=cfg, partials=True)
    whole = cached_attention(q, k, v, pos, scale=0.3, config=cfg)
    counts = parts.counts.cpu().tolist()
    # row 0 sees 200 slots, row 1 195: chunks of cdiv(cdiv(span, splits), 16) * 16 slots
    chunk = [max(cdiv(cdiv(span, parts.n_splits), 16) * 16, 16) for span in (200, 195)]
    assert counts == [cdiv(200, chunk[0])] * 2 + [cdiv(195, chunk[1])] * 2, counts
    assert min(counts) > 1
    torch.testing.assert_close(merge_partials(parts, q.dtype), whole, rtol=1e-5, atol=1e-5)


def test_partials_default_split_ignores_the_direct_span() -> None:
    """Without a config, a 257-slot span at D = 64 (one program streams it by default: DIRECT_TILES) is split into
    one-tile chunks when the consumer merges."""
    q, k, v, pos, _, _ = inputs(1, 4, 2, 1, 257, 64, 8, torch.float16, "capacity", False, seed=5)
    parts = cached_attention(q, k, v, pos, scale=0.3, partials=True)
    assert parts.counts.cpu().tolist() == [3, 3]  # 128 + 128 + 1 slots


@pytest.mark.parametrize("m_rows,config", [(1, None), (3, LinearConfig(16, 16, 64, 2, True, pre_gate=False)),
                                           (4, LinearConfig(16, 32, 32, 1, True, swap=True))])
def test_every_gemv_form_merges(m_rows: int, config: Optional[LinearConfig]) -> None:
    """The merge in each x path: the register tile (one row), the tensor-core tile merging in its K loop with a
    split K (no pre-gate scratch), the swapped product (the pre-gate scratch)."""
    q, k, v, pos, w, _ = inputs(m_rows, 4, 2, 1, 90, 64, 40, torch.float32, "capacity", False, seed=m_rows)
    want = composed(q, k, v, pos, w, None, 0.3)
    y = attention_linear(q, k, v, pos, w, scale=0.3, attn_config=DecodeConfig(16, 16, 32, min_chunk=16),
                         config=config)
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[torch.float32])


def test_a_prefill_runs_the_two_ops_apart() -> None:
    """Many query rows (a prefill): the flash kernel writes the attention's output, the linear reads it."""
    q, k, v, pos, w, _ = inputs(1, 4, 2, 40, 40, 64, 24, torch.float32, "known", False, seed=11)
    want = composed(q, k, v, pos, w, None, 0.3)
    with trace() as calls:
        y = attention_linear(q, k, v, pos, w, scale=0.3)
    assert ("attention_linear", "kernel") not in calls, calls
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[torch.float32])


def test_a_wrong_weight_names_the_op() -> None:
    q, k, v, pos, w, _ = inputs(1, 4, 2, 1, 9, 64, 24, torch.float32, "known", False, seed=1)
    with pytest.raises(ValueError, match=r"attention_linear: weight must be \[N, Hq \* Dv\] = \[N, 512\]"):
        attention_linear(q, k, v, pos, w[:, :100], scale=0.3)


@pytest.mark.parametrize("filled", [20, 90])
def test_chunks_past_the_count_are_never_read_into_x(filled: int) -> None:
    """The GEMV loads a row block's first two chunks before it knows their count (one round trip): chunks past it
    hold whatever an earlier step left, NaN here, and must weigh nothing (20 slots: one chunk of 32; 90: three)."""
    import importlib

    lin = importlib.import_module("membound.backends.triton.kernels.linear")  # (the package's `linear` is the op)

    q, k, v, pos, w, _ = inputs(1, 4, 2, 1, filled, 64, 24, torch.float32, "capacity", False, seed=filled)
    want = composed(q, k, v, pos, w, None, 0.3)
    parts = cached_attention(q, k, v, pos, scale=0.3, config=DecodeConfig(16, 16, 32, min_chunk=32), partials=True)
    counts = parts.counts.cpu().tolist()
    assert parts.n_splits > max(counts) and counts == [cdiv(filled, 32)] * 2, (parts.n_splits, counts)
    for u, c in enumerate(counts):
        parts.part[u, c:] = float("nan")
        parts.lse[u, c:] = float("nan")
    rows = torch.empty((1,), dtype=q.dtype, device=q.device).expand(1, 1, w.shape[1])
    y = lin._small_m("attention_linear", rows, None, w, None, None, None, lambda: w, False, merge=parts)
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[torch.float32])


@pytest.mark.parametrize("most", [1, 3])
def test_a_long_span_is_merged_by_flash_decoding_into_one_partial(most: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past MEMBOUND_DECODE_PARTIALS_MAX chunks the last program merges them into chunk 0 and the count is 1: the
    GEMV reads one partial (its x equals the attention's output); a span within the limit keeps its chunks."""
    monkeypatch.setenv("MEMBOUND_DECODE_PARTIALS_MAX", str(most))
    q, k, v, pos, w, _ = inputs(3, 4, 2, 1, 130, 64, 24, torch.float16, "capacity", False, seed=most)
    cfg = DecodeConfig(16, 16, 32, min_chunk=32)
    parts = cached_attention(q, k, v, pos, scale=0.3, config=cfg, partials=True)
    whole = cached_attention(q, k, v, pos, scale=0.3, config=cfg)
    # rows 0-2 see 130, 125, 120 slots: 5, 4 and 4 chunks of 32
    assert parts.counts.cpu().tolist() == [1] * 6, parts.counts
    torch.testing.assert_close(merge_partials(parts, q.dtype), whole, **TOL[torch.float16])
    want = composed(q, k, v, pos, w, None, 0.3)
    y = attention_linear(q, k, v, pos, w, scale=0.3, attn_config=cfg)
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[torch.float16])
    monkeypatch.setenv("MEMBOUND_DECODE_PARTIALS_MAX", "4")
    mixed = cached_attention(q, k, v, pos, scale=0.3, config=cfg, partials=True)
    assert mixed.counts.cpu().tolist() == [1, 1, 4, 4, 4, 4], mixed.counts
    torch.testing.assert_close(merge_partials(mixed, q.dtype), whole, **TOL[torch.float16])
