"""The Triton kernel library against each IR op's torch reference.

Without a GPU the kernels run under the Triton interpreter on CPU tensors, in fp32 and fp16 (bf16 is
broken in the interpreter): ``TRITON_INTERPRET=1`` is set below, before anything imports triton
(``triton.jit`` reads it at decoration time). With a GPU the same cases run compiled on CUDA, plus
the ``gpu``-marked bf16 tests. Every test checks, through ``trace()``, that the kernel ran and not
the fallback. Inputs are random and never zero; sizes are odd (K, N not multiples of the tiles, T
odd). Tolerances: fp32 1e-4 relative, fp16/bf16 1e-2 (outputs are rounded to the dtype once).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

from typing import Optional  # noqa: E402

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from membound.backends.triton.kernels import (  # noqa: E402
    LIBRARY,
    DecodeConfig,
    LinearConfig,
    add_rms_norm,
    cache_write,
    cached_attention,
    linear,
    trace,
)
from membound.ir import get_op  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=1e-2, atol=2e-2)}
CPU_DTYPES = [torch.float32, torch.float16]


def rand(*shape: int, dtype: torch.dtype = torch.float32, gen: Optional[torch.Generator] = None,
         device: str = DEVICE) -> torch.Tensor:
    """Random values away from zero: |x| in [0.5, 1.5) with a random sign."""
    gen = gen or torch.Generator().manual_seed(sum(shape) + len(shape))
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(device)


def close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype) -> None:
    """``got`` (in ``dtype``) against a reference computed in fp32 from the same rounded inputs."""
    assert got.dtype == dtype, f"result dtype {got.dtype}, expected {dtype}"
    torch.testing.assert_close(got.float(), want.float().to(got.device), **TOL[dtype])


def ran_kernel(calls: list[tuple[str, str]], op: str) -> None:
    assert calls and all(c == (op, "kernel") for c in calls), f"expected the {op} kernel, got {calls}"


# ---------------------------------------------------------------------------------------------
# linear
# ---------------------------------------------------------------------------------------------
LINEAR_CASES = [
    # (x shape, N, bias, config): M = product of the leading dims
    ((1, 1, 50), 37, True, None),                                      # batch 1 decode: the FMA path
    ((3, 1, 50), 37, False, None),                                     # batch 3: the tensor-core path
    ((2, 300), 19, True, LinearConfig(2, 16, 32, split_k=4)),          # FMA path, K split (odd tail)
    ((5, 300), 37, True, LinearConfig(16, 16, 32, split_k=3, use_dot=True)),  # dot path, K split
    ((1, 33), 21, False, LinearConfig(16, 16, 16, use_dot=True)),     # M=1 through the dot path
    ((5, 300), 37, True, LinearConfig(16, 16, 32, split_k=3, use_dot=True, swap=True)),  # W as the A operand, split
    ((9, 1, 77), 130, False, LinearConfig(16, 64, 32, use_dot=True, swap=True)),  # ... 64-row tiles, N tail
    ((2, 300), 37, True, LinearConfig(2, 8, 512, resident=True)),     # resident: K in one register tile
    ((1, 1, 300), 19, False, LinearConfig(1, 4, 128, split_k=3, resident=True)),  # ... K split, N tail
    ((1, 300), 37, True, LinearConfig(1, 8, 512, resident=True, row=True)),  # ... one row, x reduced as a vector
    ((1, 1, 300), 19, False, LinearConfig(1, 4, 128, split_k=3, resident=True, row=True)),  # ... split
    ((1, 1, 300), 37, True, LinearConfig(1, 4, 64, split_k=2, row=True)),  # the register loop's one-row form, split
    ((1, 300), 19, False, LinearConfig(1, 2, 128, row=True, prefetch=False)),  # ... not double-buffered, K tail
    ((16, 33), 13, True, None),                                        # M = 16, the kernel's limit (K < 3N: not cuBLAS)
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape,n,bias,config", LINEAR_CASES)
def test_linear(shape: tuple[int, ...], n: int, bias: bool, config: Optional[LinearConfig],
                dtype: torch.dtype) -> None:
    x, w = rand(*shape, dtype=dtype), rand(n, shape[-1], dtype=dtype)
    b = rand(n, dtype=dtype) if bias else None
    with trace() as calls:
        y = LIBRARY["linear"](x, w, b, config=config)
    ran_kernel(calls, "linear")
    close(y, F.linear(x.float(), w.float(), None if b is None else b.float()), dtype)
    assert y.shape == shape[:-1] + (n,)


def test_linear_out_and_strided_x() -> None:
    """``out=`` is written in place; a non-contiguous x (a transposed view) is read correctly."""
    x = rand(7, 3).t()  # [3, 7], strides (1, 3)
    w = rand(5, 7)
    out = torch.empty(3, 5, device=DEVICE)
    with trace() as calls:
        y = linear(x, w, out=out)
    ran_kernel(calls, "linear")
    assert y is out
    close(out, x @ w.t(), torch.float32)


def test_linear_large_m_uses_cublas_path() -> None:
    x, w = rand(17, 9), rand(4, 9)
    with trace() as calls:
        y = linear(x, w)
    assert calls == [("linear", "cublas")]
    close(y, x @ w.t(), torch.float32)


@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_long_k_linear_at_small_batch_runs_cublas_into_out_on_cuda(bias: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the swapped product: 3 <= M <= 16 with K >= 3N (a down projection at batch): cuBLAS on a GPU
    (kernels/linear.py's prefers_cublas), written into ``out`` itself; the interpreter runs the kernel; a given
    config forces it. With it (the default) the kernel runs everywhere."""
    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP", "0")
    x, w = rand(5, 1, 97), rand(9, 97)
    b = rand(9) if bias else None
    out = torch.empty(5, 1, 9, device=DEVICE)
    with trace() as calls:
        y = linear(x, w, b, out=out)
    assert y is out
    assert calls == [("linear", "cublas" if DEVICE == "cuda" else "kernel")]
    close(out, x @ w.t() + (b if bias else 0), torch.float32)
    with trace() as calls:
        linear(x, w, b, config=LinearConfig(16, 16, 32, use_dot=True))
    assert calls == [("linear", "kernel")]
    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP", "1")
    with trace() as calls:
        y = linear(x, w, b, out=out)
    assert calls == [("linear", "kernel")] and y is out
    close(out, x @ w.t() + (b if bias else 0), torch.float32)


def test_linear_config_refuses_forms_of_the_other_path() -> None:
    """swap is a form of the tensor-core product, resident of the register one: a config that mixes them is
    refused when made (not silently run as the other form); a resident tile that does not cover a program's K
    range is refused at the launch, naming block_k and K."""
    with pytest.raises(ValueError, match="swap"):
        LinearConfig(2, 8, 32, swap=True)
    with pytest.raises(ValueError, match="resident"):
        LinearConfig(16, 16, 32, use_dot=True, resident=True)
    with pytest.raises(ValueError, match="row is a form of the register product at block_m=1"):
        LinearConfig(2, 8, 32, resident=True, row=True)
    with pytest.raises(ValueError, match="row is a form of the register product at block_m=1"):
        LinearConfig(1, 16, 32, use_dot=True, row=True)
    with pytest.raises(ValueError, match="block_k=64 does not cover K=300"):
        linear(rand(1, 300), rand(7, 300), config=LinearConfig(1, 4, 64, split_k=2, resident=True))


def test_linear_falls_back_for_a_transposed_weight() -> None:
    x, w = rand(2, 9), rand(9, 4).t()  # weight [4, 9] with K-stride 4
    with trace() as calls:
        y = linear(x, w)
    assert calls[0][1].startswith("fallback") and "weight strides" in calls[0][1]
    close(y, x @ w.t(), torch.float32)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("m,k,n,config", [
    (1, 300, 37, None),                                            # decode: one row, heuristic tiles
    (3, 300, 19, LinearConfig(4, 16, 32, split_k=4)),              # K split, last program reduces
    (5, 77, 21, LinearConfig(16, 16, 32, use_dot=True, pre_gate=False)),  # tensor cores: gate formed in the loop
    (5, 77, 21, LinearConfig(16, 16, 32, use_dot=True)),           # ... formed first (PRE_GATE, the default)
    (7, 600, 21, LinearConfig(16, 16, 64, split_k=2, use_dot=True, pre_gate=True)),  # ... per K range, 2 chunks
    (6, 77, 21, LinearConfig(16, 16, 32, use_dot=True, swap=True)),  # ... the swapped product (W as the A operand)
    (2, 300, 19, LinearConfig(2, 4, 128, split_k=3, resident=True)),  # resident register tiles, K split
    (1, 300, 19, LinearConfig(1, 4, 64, split_k=2, row=True)),      # the register loop's one-row form, K split
    (20, 33, 9, None),                                             # M > 16: torch forms the product, cuBLAS
])
def test_gated_linear(m: int, k: int, n: int, config: Optional[LinearConfig], dtype: torch.dtype) -> None:
    """gate and up as the two halves of one wider projection output (strided views, as after merge-linear)."""
    gu = rand(m, 1, 2 * k, dtype=dtype)
    gate, up = gu[..., :k], gu[..., k:]
    w = rand(n, k, dtype=dtype) * k ** -0.5
    with trace() as calls:
        y = LIBRARY["gated_linear"](gate, up, w, config=config)
    assert calls == [("gated_linear", "cublas" if m > 16 else "kernel")]
    assert y.shape == (m, 1, n)
    close(y, get_op("gated_linear").reference(gate.float(), up.float(), w.float()), dtype)


def test_resident_tiles_and_their_row_form_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The defaults: at M = 1 every weight with K <= 4096 runs the resident tiles' one-row form
    (MEMBOUND_LINEAR_RESIDENT_ROW), at M = 2 only the small ones (at most 8M values) the resident tiles, M = 3 neither; a longer K
    (the down projections) the register loop's one-row form at M = 1 (MEMBOUND_LINEAR_ROW_LOOP, default on);
    RESIDENT_ROW=0 gives M = 1 the two-row rule; RESIDENT=0 no resident tiles; and each launch equals torch."""
    from membound.backends.triton.kernels.linear import (
        RESIDENT_ENV,
        RESIDENT_ROW_ENV,
        ROW_LOOP_ENV,
        pick_config,
    )

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    for env in (RESIDENT_ENV, RESIDENT_ROW_ENV, ROW_LOOP_ENV):
        monkeypatch.delenv(env, raising=False)
    assert [pick_config(m, 3072, 2048, bf16, cpu).resident for m in (1, 2, 3)] == [True, True, False]
    one, two = pick_config(1, 3072, 2048, bf16, cpu), pick_config(2, 3072, 2048, bf16, cpu)
    assert one.row and not two.row
    big = [pick_config(m, 128256, 4096, bf16, cpu) for m in (1, 2)]  # the 8B head: 525M values
    assert big[0].resident and big[0].row and (big[0].block_n, big[0].block_k) == (4, 4096)
    assert not big[1].resident and big[1].swap
    down = pick_config(1, 2048, 8192, bf16, cpu)
    assert down.row and not down.resident and not down.use_dot and not pick_config(2, 2048, 8192, bf16, cpu).row
    monkeypatch.setenv(ROW_LOOP_ENV, "0")
    down = pick_config(1, 2048, 8192, bf16, cpu)
    assert not down.resident and not down.row and down.swap
    monkeypatch.setenv(ROW_LOOP_ENV, "1")
    monkeypatch.setenv(RESIDENT_ENV, "0")  # the loop's row form is not a resident tile: it stays
    assert pick_config(1, 2048, 8192, bf16, cpu).row and not pick_config(1, 3072, 2048, bf16, cpu).resident
    monkeypatch.setenv(RESIDENT_ENV, "1")
    monkeypatch.setenv(RESIDENT_ROW_ENV, "0")
    assert not pick_config(1, 2048, 8192, bf16, cpu).row  # the loop's row form goes with the resident one
    assert not pick_config(1, 3072, 2048, bf16, cpu).row and not pick_config(1, 4096, 4096, bf16, cpu).resident
    monkeypatch.setenv(RESIDENT_ENV, "0")
    assert not pick_config(1, 3072, 2048, bf16, cpu).resident
    x, w = rand(1, 1, 150), rand(70, 150)
    for cfg in (LinearConfig(1, 8, 256, resident=True, row=True), LinearConfig(1, 4, 32, split_k=2, row=True)):
        with trace() as calls:
            y = linear(x, w, config=cfg)
        assert calls == [("linear", "kernel")]
        close(y, x @ w.t(), torch.float32)


def test_swapped_product_is_chosen_by_the_environment_at_each_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """MEMBOUND_LINEAR_SWAP is read at each config choice (an A/B run sets it per compiled model): on, the
    tensor-core path (3 <= M <= 16) takes the swapped product with 64-row weight tiles (linear_glu's programs
    two of them: 128 rows over the merged weight); the register path (M <= 2) never does; and the launched
    kernel with it equals torch."""
    from membound.backends.triton.kernels.linear import SWAP_ENV, pick_config

    cpu, f32 = torch.device("cpu"), torch.float32
    monkeypatch.setenv(SWAP_ENV, "1")
    on, glu = pick_config(8, 4096, 14336, f32, cpu), pick_config(8, 28672, 4096, f32, cpu, glu=True)
    assert on.swap and on.use_dot and on.block_n == 64 and glu.swap and glu.block_n == 128
    assert not pick_config(1, 4096, 4096, f32, cpu).swap
    x, w = rand(6, 1, 150), rand(70, 150)
    with trace() as calls:
        y = linear(x, w)
    ran_kernel(calls, "linear")
    close(y, F.linear(x, w), torch.float32)
    monkeypatch.setenv(SWAP_ENV, "0")
    assert not pick_config(8, 4096, 14336, f32, cpu).swap


@pytest.mark.parametrize("static_weight", [True, False])
def test_linear_static_weight_loads_the_first_tile_either_side_of_the_wait(static_weight: bool) -> None:
    """``static_weight`` only moves the first W tile's load before the PDL wait: same result both ways."""
    x, w = rand(1, 300), rand(37, 300)
    gu, wd = rand(2, 1, 2 * 77), rand(19, 77)
    with trace() as calls:
        y = linear(x, w, static_weight=static_weight)
        g = LIBRARY["gated_linear"](gu[..., :77], gu[..., 77:], wd, static_weight=static_weight)
    assert calls == [("linear", "kernel"), ("gated_linear", "kernel")]
    close(y, F.linear(x, w), torch.float32)
    close(g, get_op("gated_linear").reference(gu[..., :77], gu[..., 77:], wd), torch.float32)


def test_gated_linear_errors() -> None:
    from membound.backends.triton.kernels import gated_linear

    with pytest.raises(ValueError, match="gated_linear: gate .* and up .* must have one shape"):
        gated_linear(rand(2, 8), rand(2, 9), rand(4, 8))
    with pytest.raises(ValueError, match="gated_linear: act='gelu' has no kernel"):
        gated_linear(rand(2, 8), rand(2, 8), rand(4, 8), act="gelu")
    with pytest.raises(TypeError, match="gated_linear: inputs must share a dtype"):
        gated_linear(rand(2, 8), rand(2, 8), rand(4, 8, dtype=torch.float16))


def test_linear_errors_name_the_argument() -> None:
    with pytest.raises(ValueError, match="linear: x .* disagree on K"):
        linear(rand(2, 8), rand(4, 9))
    with pytest.raises(TypeError, match="linear: .* share a dtype"):
        linear(rand(2, 9), rand(4, 9, dtype=torch.float16))
    with pytest.raises(ValueError, match="linear: out has shape"):
        linear(rand(2, 9), rand(4, 9), out=torch.empty(2, 5, device=DEVICE))


# ---------------------------------------------------------------------------------------------
# cached_attention (flash-decoding)
# ---------------------------------------------------------------------------------------------
def _positions(b: int, s: int, t: int, per_row: bool, gen: torch.Generator) -> torch.Tensor:
    """Consecutive positions for the S new tokens: shared [S], or a different length per row [B, S]."""
    if not per_row:
        return (torch.arange(s) + (t - s - 2)).to(DEVICE)
    starts = torch.randint(0, t - s + 1, (b, 1), generator=gen)
    return (starts + torch.arange(s)[None, :]).to(DEVICE)


ATTN_CASES = [
    # (B, Hq, Hkv, S, T, D, Dv, per-row positions, config, max_len)
    (1, 4, 4, 1, 37, 16, 16, False, None, None),                    # MHA (GQA ratio 1), batch 1
    (3, 4, 2, 1, 37, 24, 24, True, None, None),                     # GQA 2, per-row lengths, D not pow2
    (3, 8, 2, 1, 45, 16, 16, True, DecodeConfig(16, 16, 16), None),  # GQA 4, three-way split + combine
    (1, 8, 2, 3, 37, 16, 8, False, DecodeConfig(16, 16, 32), 36),    # S = 3 new tokens, Dv != D, max_len
    (3, 4, 1, 2, 29, 8, 8, True, DecodeConfig(16, 16, 16), None),   # GQA 4 with S = 2, tiny head dim
]


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,hq,hkv,s,t,d,dv,per_row,config,max_len", ATTN_CASES)
def test_cached_attention(b: int, hq: int, hkv: int, s: int, t: int, d: int, dv: int, per_row: bool,
                          config: Optional[DecodeConfig], max_len: Optional[int], dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(b * 100 + hq * 10 + s)
    q = rand(b, hq, s, d, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, t, d, dtype=dtype, gen=gen), rand(b, hkv, t, dv, dtype=dtype, gen=gen)
    pos = _positions(b, s, t, per_row, gen)
    with trace() as calls:
        y = LIBRARY["cached_attention"](q, k, v, pos, scale=0.3, max_len=max_len, config=config)
    ran_kernel(calls, "cached_attention")
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=0.3)
    close(y, want, dtype)


@pytest.mark.parametrize("case", range(len(ATTN_CASES) + 3))
def test_cached_attention_early_kv(case: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """static_past with MEMBOUND_DECODE_EARLY_KV=1: each chunk's first K/V tile loaded before the PDL wait (the
    slots below the step's first new position), the new slots after it; equal to torch on every case above
    (splits, per-row lengths, S > 1) and with a window, a soft cap and ALiBi; early_kv refuses a ring."""
    from membound.backends.triton.kernels.decode_attention import early_kv

    monkeypatch.setenv("MEMBOUND_DECODE_EARLY_KV", "1")
    assert early_kv(True, False) and not early_kv(True, True) and not early_kv(False, False)
    extra: dict = {}
    if case < len(ATTN_CASES):
        b, hq, hkv, s, t, d, dv, per_row, config, max_len = ATTN_CASES[case]
    else:  # a window, a cap, ALiBi (each over a three-way split)
        b, hq, hkv, s, t, d, dv, per_row, config, max_len = 2, 8, 2, 1, 45, 16, 16, True, DecodeConfig(16, 16, 16), None
        extra = [dict(window=7), dict(softcap=5.0), dict(alibi=tuple(0.5 ** (i + 1) for i in range(hq)))][
            case - len(ATTN_CASES)]
    gen = torch.Generator().manual_seed(case)
    q = rand(b, hq, s, d, gen=gen)
    k, v = rand(b, hkv, t, d, gen=gen), rand(b, hkv, t, dv, gen=gen)
    pos = _positions(b, s, t, per_row, gen)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=0.3, max_len=max_len, config=config, static_past=True, **extra)
    ran_kernel(calls, "cached_attention")
    close(y, get_op("cached_attention").reference(q, k, v, pos, scale=0.3, **extra), torch.float32)


def test_cached_attention_reads_only_the_filled_prefix() -> None:
    """Slots past max(position) are never read: NaN there must not reach the output."""
    q, k, v = rand(1, 4, 1, 16), rand(1, 2, 37, 16), rand(1, 2, 37, 16)
    pos = torch.tensor([20], device=DEVICE)
    want = get_op("cached_attention").reference(q, k, v, pos, scale=None)
    k[:, :, 21:], v[:, :, 21:] = float("nan"), float("nan")
    with trace() as calls:
        y = cached_attention(q, k, v, pos, config=DecodeConfig(16, 16, 16))
    ran_kernel(calls, "cached_attention")
    close(y, want, torch.float32)


def test_cached_attention_strided_q_and_out() -> None:
    """q as the transposed view a projection produces ([B, S, H, D] -> [B, H, S, D]); int32 positions;
    out= in place."""
    q = rand(3, 2, 4, 16).transpose(1, 2)
    k, v = rand(3, 2, 21, 16), rand(3, 2, 21, 16)
    pos = torch.tensor([[5, 6], [19, 20], [0, 1]], device=DEVICE, dtype=torch.int32)
    out = torch.empty(3, 4, 2, 16, device=DEVICE)
    with trace() as calls:
        y = cached_attention(q, k, v, pos, out=out, scale=0.25)
    ran_kernel(calls, "cached_attention")
    assert y is out
    close(out, get_op("cached_attention").reference(q, k, v, pos, scale=0.25), torch.float32)


def test_split_launches_leave_the_counters_zeroed_and_repeat_exactly() -> None:
    """Split launches (linear's split-K, attention's split over the cache) reduce in the program that
    arrives last and reset its counter: the shared buffer must be all zeros after every launch, and a
    second launch must give bit-identical results (the reduction order is fixed, not arrival order)."""
    from membound.backends.triton.kernels._launch import split_counters

    x, w, b = rand(3, 300), rand(37, 300), rand(37)
    cfg = LinearConfig(4, 16, 32, split_k=4)
    first = linear(x, w, b, config=cfg)
    assert int(split_counters(x.device, 1).abs().sum()) == 0
    torch.testing.assert_close(linear(x, w, b, config=cfg), first, rtol=0, atol=0)
    close(first, F.linear(x, w, b), torch.float32)
    q, k, v = rand(2, 8, 1, 16), rand(2, 2, 45, 16), rand(2, 2, 45, 16)
    pos = torch.tensor([[30], [44]], device=DEVICE)
    att = cached_attention(q, k, v, pos, config=DecodeConfig(16, 16, 16))  # 3 chunks, the last idle for row 0
    assert int(split_counters(q.device, 1).abs().sum()) == 0
    torch.testing.assert_close(cached_attention(q, k, v, pos, config=DecodeConfig(16, 16, 16)), att, rtol=0, atol=0)
    close(att, get_op("cached_attention").reference(q, k, v, pos, scale=None), torch.float32)


def test_cached_attention_variant_does_not_depend_on_the_capacity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a known length (the decode step inside a CUDA graph) the grid covers the capacity, which
    grows bucket by bucket (256, 512, ... slots): every compile-time argument must stay the same, or each
    growth compiles the kernel again inside the call that grows the cache (0.6-0.8 s on an H200). The grid
    grows; the constexprs, warps and stages do not -- a single split too takes the split-and-merge variant."""
    import membound.backends.triton.kernels.decode_attention as da

    seen: list[tuple[tuple[int, int], dict]] = []

    class Recorder:
        def __getitem__(self, grid: tuple[int, int]):  # kernel[grid](...): record, launch nothing
            return lambda *args, **kw: seen.append((grid, kw))

    monkeypatch.setattr(da, "launchable", lambda kernel, device: Recorder())
    q = rand(1, 8, 1, 16)
    for cap in (64, 256, 512, 2048, 4096):
        k = torch.zeros(1, 2, cap, 16, device=DEVICE)
        cached_attention(q, k, k, torch.tensor([3], device=DEVICE))
    grids = [g for g, _ in seen]
    assert [g[0] for g in grids] == sorted(g[0] for g in grids) and grids[0][0] < grids[-1][0]  # the grid grows
    first = seen[0][1]
    assert first["ONE_SPLIT"] is False and first["SPLIT_BLOCK"] == da.MERGE_LANES
    for _, kw in seen[1:]:
        assert kw == first
    # a known length (max_len, the bench's direct calls) still gets the one-split variant
    seen.clear()
    cached_attention(q, torch.zeros(1, 2, 64, 16, device=DEVICE), torch.zeros(1, 2, 64, 16, device=DEVICE),
                     torch.tensor([3], device=DEVICE), max_len=4)
    assert seen[0][1]["ONE_SPLIT"] is True


def test_cached_attention_errors() -> None:
    with pytest.raises(ValueError, match="cached_attention: query heads 3 must be a multiple of kv heads 2"):
        cached_attention(rand(1, 3, 1, 8), rand(1, 2, 9, 8), rand(1, 2, 9, 8), torch.tensor([3]))
    with pytest.raises(ValueError, match=r"cached_attention: positions must be \[S\]"):
        cached_attention(rand(1, 2, 1, 8), rand(1, 2, 9, 8), rand(1, 2, 9, 8), torch.tensor([3, 4]))


# ---------------------------------------------------------------------------------------------
# cache_write
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("b,h,t,s,d,per_row", [(1, 2, 9, 1, 16, False), (3, 3, 11, 3, 24, True),
                                               (3, 1, 7, 2, 5, False)])
def test_cache_write(b: int, h: int, t: int, s: int, d: int, per_row: bool, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(t + s)
    cache = rand(b, h, t, d, dtype=dtype, gen=gen)
    values = rand(b, s, h, d, dtype=dtype, gen=gen).transpose(1, 2)  # the strided view attention produces
    pos = torch.stack([torch.randperm(t, generator=gen)[:s] for _ in range(b)]) if per_row else \
        torch.randperm(t, generator=gen)[:s]
    pos = pos.to(DEVICE)
    want = get_op("cache_write").reference(cache.clone(), values, pos, dim=2)
    with trace() as calls:
        got = LIBRARY["cache_write"](cache, values, pos, dim=-2)
    ran_kernel(calls, "cache_write")
    assert got is cache and torch.equal(cache, want)


def test_cache_write_other_dims_fall_back_and_out_must_be_the_cache() -> None:
    cache, values = rand(2, 5, 3), rand(2, 2, 3)
    pos = torch.tensor([4, 0], device=DEVICE)
    want = get_op("cache_write").reference(cache.clone(), values, pos, dim=1)
    with trace() as calls:
        cache_write(cache, values, pos, dim=1)
    assert calls[0][1].startswith("fallback") and torch.equal(cache, want)
    with pytest.raises(ValueError, match="cache_write: the result is the cache itself"):
        cache_write(rand(1, 1, 4, 2), rand(1, 1, 1, 2), torch.tensor([0], device=DEVICE), out=rand(1, 1, 4, 2))


# ---------------------------------------------------------------------------------------------
# rms_norm, add_rms_norm, embedding
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("shape,weight", [((3, 5, 37), "same"), ((1, 1, 16), "f32"), ((7, 100), None)])
def test_rms_norm(shape: tuple[int, ...], weight: Optional[str], dtype: torch.dtype) -> None:
    x = rand(*shape, dtype=dtype)
    w = None if weight is None else rand(shape[-1], dtype=dtype if weight == "same" else torch.float32)
    want = get_op("rms_norm").reference(x, w, eps=1e-5)
    with trace() as calls:
        y = LIBRARY["rms_norm"](x, w, eps=1e-5)
    ran_kernel(calls, "rms_norm")
    close(y, want, want.dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_add_rms_norm(dtype: torch.dtype) -> None:
    x, r, w = rand(3, 1, 37, dtype=dtype), rand(3, 1, 37, dtype=dtype).flip(0), rand(37, dtype=dtype)
    with trace() as calls:
        h, y = add_rms_norm(x, r, w, eps=1e-6)
    ran_kernel(calls, "add_rms_norm")
    assert torch.equal(h, x + r)
    close(y, get_op("rms_norm").reference(x + r, w, eps=1e-6), dtype)


@pytest.mark.parametrize("dtype", CPU_DTYPES)
@pytest.mark.parametrize("ids_shape,index_dtype", [((3, 5), torch.int64), ((1,), torch.int32)])
def test_embedding(ids_shape: tuple[int, ...], index_dtype: torch.dtype, dtype: torch.dtype) -> None:
    w = rand(11, 37, dtype=dtype)
    ids = torch.randint(0, 11, ids_shape, generator=torch.Generator().manual_seed(1)).to(DEVICE, index_dtype)
    with trace() as calls:
        y = LIBRARY["embedding"](w, ids)
    ran_kernel(calls, "embedding")
    assert torch.equal(y, F.embedding(ids, w))


# ---------------------------------------------------------------------------------------------
# the registry and the fallback
# ---------------------------------------------------------------------------------------------
def test_library_names_are_ir_ops() -> None:
    for name in LIBRARY:
        assert get_op(name).reference is not None


def test_cpu_without_interpreter_runs_the_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x, w = rand(2, 9, device="cpu"), rand(4, 9, device="cpu")
    with trace() as calls:
        y = linear(x, w)
    assert calls == [("linear", "fallback: tensors on cpu: Triton kernels need a CUDA device (or "
                                "TRITON_INTERPRET=1 for CPU tensors)")]
    close(y, x @ w.t(), torch.float32)


def test_kernels_compile_for_hopper_with_vector_loads() -> None:
    """The interpreter never meets the compiler: compile every kernel for sm_90 (no GPU needed, in a
    process without TRITON_INTERPRET) and check that the streaming kernels load 16-byte vectors or
    cp.async copies, not 2-byte scalars."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "membound.backends.triton.kernels.compile_check", "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"] for r in results}
    assert kernels == {"_linear_small_m", "_flash_decoding_split", "_cache_write", "_rms_norm", "_embedding",
                       "_flash_attention_fwd", "_attn_block", "_grouped_mm", "_mlp_block"}
    for r in results:
        if r["kernel"] in ("_linear_small_m", "_flash_decoding_split", "_rms_norm", "_attn_block", "_grouped_mm",
                           "_mlp_block"):
            assert r["vectorised"], f"{r['kernel']} {r['config']}: loads {r['loads']}, cp.async {r['cp_async']}"
    assert all(r["mma"] > 0 for r in results
               if r["kernel"] in ("_flash_decoding_split", "_flash_attention_fwd", "_attn_block", "_grouped_mm"))
    # flash-decoding's 64-row blocks at 4 warps: every tl.dot one Hopper wgmma (16 rows per warp)
    assert all(r["wgmma"] > 0 for r in results if r["kernel"] == "_flash_decoding_split" and "q64" in r["config"])
    # the GEMV's swapped tensor-core product: W's 64-row tile is a warpgroup MMA's A operand (plain, glu, and the
    # decode-fused forms: a norm prologue with a residual, the norm from partials, a residual writing partials;
    # each also with its first W tile loaded before the PDL wait: 16-byte register loads beside the loop's cp.async)
    swapped = [r for r in results if r["kernel"] == "_linear_small_m" and "swap" in r["config"]]
    assert len(swapped) == 12 and all(r["wgmma"] > 0 and r["cp_async"] > 0 for r in swapped), swapped
    early = [r for r in swapped if r["config"].endswith(" early")]
    assert len(early) == 6 and all(r["loads"].get("ld.global.v4.b32", 0) > 0 for r in early), early
    # launched with programmatic dependent launch on Hopper, so each must wait before reading earlier writes
    assert all(r["pdl_wait"] for r in results), [r["kernel"] for r in results if not r["pdl_wait"]]


# ---------------------------------------------------------------------------------------------
# GPU: bf16 (broken in the interpreter) and the default configs at model-like sizes
# ---------------------------------------------------------------------------------------------
@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("m", [1, 3, 8, 16])
def test_linear_gpu(m: int, dtype: torch.dtype) -> None:
    x, b = rand(m, 1000, dtype=dtype, device="cuda"), rand(777, dtype=dtype, device="cuda")
    w = rand(777, 1000, dtype=dtype, device="cuda") * 0.05  # keeps outputs O(1), so 1e-2 is a fair tolerance
    with trace() as calls:
        y = linear(x, w, b)
    ran_kernel(calls, "linear")
    close(y, F.linear(x.float(), w.float(), b.float()), dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("b,hq,hkv,s,per_row", [(1, 32, 8, 1, False), (3, 8, 8, 1, True), (2, 16, 4, 3, True)])
def test_cached_attention_gpu(b: int, hq: int, hkv: int, s: int, per_row: bool) -> None:
    gen = torch.Generator().manual_seed(7)
    dtype, t, d = torch.bfloat16, 1001, 128
    q = rand(b, hq, s, d, dtype=dtype, gen=gen, device="cuda")
    k, v = rand(b, hkv, t, d, dtype=dtype, gen=gen, device="cuda"), rand(b, hkv, t, d, dtype=dtype, gen=gen,
                                                                         device="cuda")
    pos = _positions(b, s, t, per_row, gen).cuda()
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=None)
    for max_len in (None, t):
        with trace() as calls:
            y = cached_attention(q, k, v, pos, max_len=max_len)
        ran_kernel(calls, "cached_attention")
        close(y, want, dtype)


@pytest.mark.gpu
def test_small_kernels_gpu_bf16() -> None:
    dtype = torch.bfloat16
    cache, values = rand(2, 4, 33, 64, dtype=dtype, device="cuda"), rand(2, 4, 1, 64, dtype=dtype, device="cuda")
    pos = torch.tensor([[7], [31]], device="cuda")
    want = get_op("cache_write").reference(cache.clone(), values, pos, dim=2)
    assert torch.equal(cache_write(cache, values, pos), want)
    x, w = rand(3, 1, 2048, dtype=dtype, device="cuda"), rand(2048, dtype=dtype, device="cuda")
    close(LIBRARY["rms_norm"](x, w, eps=1e-5), get_op("rms_norm").reference(x, w, eps=1e-5), dtype)
    table, ids = rand(97, 64, dtype=dtype, device="cuda"), torch.tensor([[3, 96, 0]], device="cuda")
    assert torch.equal(LIBRARY["embedding"](table, ids), F.embedding(ids, table))
