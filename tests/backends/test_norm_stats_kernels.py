"""The norm's statistics from its producer (issue 13): ``linear_add_sumsq`` / ``gated_linear_add_sumsq``
write their output's partial sums of squares, ``rms_norm_linear_sumsq`` norms x from them. Checked against
the unfused path (the library's residual linear, norm and linear kernels, same tile config) and eager torch
in fp32 from the same rounded inputs, at small odd sizes (N and K no multiple of any tile), M = 1, 2, 3, 5
and 20 (cuBLAS), split-K forced on and off, on every path of the kernel.

Tolerances: the producer's output is the residual linear's exactly (the same roundings); its partials are
fp32 sums of 4 squares in another order than torch's: 1e-6 relative. The consumer's mean square sums the
partials in another order than the norm kernel sums the squares (rstd differs in the last fp32 bits), so as
for the norm prologue: fp32 1e-5, fp16 one fp16 ulp of O(1) outputs (2e-3); against eager fp32 1e-4 (fp32),
1e-2 (fp16); bf16 (GPU only) one bf16 ulp of O(1) outputs against the unfused path (1.6e-2), 5e-2 against
eager fp32.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.ir.ops import get_op
from membound.ir.ops.matmul import SUMSQ_COLUMNS, sumsq_partials

INTERP = Interpreted(__file__)
# bf16 on a GPU only (the Triton interpreter's bf16 is broken)
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
EAGER_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
             torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}
UNFUSED_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
               torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}
CASES = [(1, 77, 19), (2, 129, 9), (3, 40, 37), (5, 33, 21), (20, 33, 11)]  # (M, K, N); M = 20: cuBLAS


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """|x| in [0.5, 1.5) with a random sign: never zero."""
    gen = torch.Generator().manual_seed(seed)
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(DEVICE)


def configs(m: int) -> list[Optional[object]]:
    """The heuristic tiles (split-K off at these sizes), and split-K forced on for the path M takes (FMA
    for M <= 2, else tensor cores, x formed into a scratch first or in the loop)."""
    from membound.backends.triton.kernels import LinearConfig

    if m > 16:
        return [None]
    if m <= 2:
        return [None, LinearConfig(2, 8, 32, split_k=3), LinearConfig(2, 8, 64, split_k=3, resident=True)]
    return [None, LinearConfig(16, 16, 32, split_k=3, use_dot=True),
            LinearConfig(16, 16, 32, split_k=2, use_dot=True, pre_gate=False)]


def test_one_granularity() -> None:
    """The kernel library and the IR agree on the partials' layout."""
    import importlib

    assert importlib.import_module("membound.backends.triton.kernels.linear").SUMSQ_COLUMNS == SUMSQ_COLUMNS


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"][:len(DTYPES)])
@pytest.mark.parametrize("m,k,n", CASES)
def test_linear_add_sumsq(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear_add, linear_add_sumsq, trace

    x, r = rand(m, 1, k, dtype=dtype, seed=5), rand(m, 1, n, dtype=dtype, seed=6)
    w, b = rand(n, k, dtype=dtype, seed=7) * k ** -0.5, rand(n, dtype=dtype, seed=8)
    for cfg in configs(m):
        with trace() as calls:
            y, ss = linear_add_sumsq(x, w, r, b, config=cfg)
        assert ("linear_add_sumsq", "cublas" if m > 16 else "kernel") in calls
        assert ss.shape == (m, 1, -(-n // SUMSQ_COLUMNS)) and ss.dtype == torch.float32
        torch.testing.assert_close(y, linear_add(x, w, r, b, config=cfg), rtol=0, atol=0)
        torch.testing.assert_close(ss, sumsq_partials(y), rtol=1e-6, atol=1e-6)
        ref_y, ref_ss = get_op("linear_add_sumsq").reference(x, w, r, b)
        torch.testing.assert_close(ss, ref_ss, **EAGER_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"][:len(DTYPES)])
@pytest.mark.parametrize("m,k,n", CASES[:4])
def test_gated_linear_add_sumsq(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import gated_linear_add, gated_linear_add_sumsq

    gu = rand(m, 2 * k, dtype=dtype, seed=9)
    gate, up = gu[..., :k], gu[..., k:]  # the halves of one merged projection: strided views
    w, r = rand(n, k, dtype=dtype, seed=10) * k ** -0.5, rand(m, n, dtype=dtype, seed=11)
    for cfg in configs(m):
        y, ss = gated_linear_add_sumsq(gate, up, w, r, config=cfg)
        torch.testing.assert_close(y, gated_linear_add(gate, up, w, r, config=cfg), rtol=0, atol=0)
        torch.testing.assert_close(ss, sumsq_partials(y), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"][:len(DTYPES)])
@pytest.mark.parametrize("m,k,n", CASES)
def test_rms_norm_linear_sumsq(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """The consumer from exact partials of x: the unfused norm + linear, and eager."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear, rms_norm, rms_norm_linear_sumsq, trace

    x, nw = rand(m, 1, k, dtype=dtype, seed=1), rand(k, dtype=dtype, seed=2)
    w, b = rand(n, k, dtype=dtype, seed=3) * k ** -0.5, rand(n, dtype=dtype, seed=4)
    ss = sumsq_partials(x)
    eager = get_op("rms_norm_linear").reference(x.float(), nw.float(), w.float(), b.float(), eps=1e-5)
    for cfg in configs(m):
        with trace() as calls:
            y = rms_norm_linear_sumsq(x, ss, nw, w, b, eps=1e-5, config=cfg)
        assert ("rms_norm_linear_sumsq", "cublas" if m > 16 else "kernel") in calls
        assert y.dtype == dtype and y.shape == (m, 1, n)
        unfused = linear(rms_norm(x, nw, eps=1e-5), w, b, config=cfg)
        torch.testing.assert_close(y, unfused, **UNFUSED_TOL[dtype])
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16", "bf16"][:len(DTYPES)])
@pytest.mark.parametrize("m", [1, 3])
def test_producer_to_consumer(m: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """A residual linear's partials feed the next norm-linear (the Llama o projection into gate/up): the
    chain equals linear_add -> rms_norm -> linear, with split-K on in one of the two launches."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import (
        LinearConfig,
        linear,
        linear_add,
        linear_add_sumsq,
        rms_norm,
        rms_norm_linear_sumsq,
    )

    k, h, n = 45, 70, 23  # o: [h, k], next: [n, h]
    a, r = rand(m, k, dtype=dtype, seed=12), rand(m, h, dtype=dtype, seed=13)
    wo, nw, wn = rand(h, k, dtype=dtype, seed=14) * k ** -0.5, rand(h, dtype=dtype, seed=15), \
        rand(n, h, dtype=dtype, seed=16) * h ** -0.5
    split = LinearConfig(2, 8, 16, split_k=2) if m <= 2 else LinearConfig(16, 16, 16, split_k=2, use_dot=True)
    for cfg_p, cfg_c in ((split, None), (None, split)):
        y, ss = linear_add_sumsq(a, wo, r, config=cfg_p)
        out = rms_norm_linear_sumsq(y, ss, nw, wn, eps=1e-6, config=cfg_c)
        h2 = linear_add(a, wo, r, config=cfg_p)
        torch.testing.assert_close(y, h2, rtol=0, atol=0)
        torch.testing.assert_close(out, linear(rms_norm(h2, nw, eps=1e-6), wn, config=cfg_c), **UNFUSED_TOL[dtype])


def test_errors_name_the_argument(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LinearConfig, linear_add_sumsq, rms_norm_linear_sumsq

    x, w = rand(2, 8, dtype=torch.float32, seed=1), rand(4, 8, dtype=torch.float32, seed=2)
    with pytest.raises(ValueError, match="rms_norm_linear_sumsq: sumsq must be fp32"):
        rms_norm_linear_sumsq(x, torch.ones(2, 3, device=DEVICE), rand(8, dtype=torch.float32, seed=3), w, eps=1e-5)
    with pytest.raises(ValueError, match="linear_add_sumsq: config block_n=2 must be a multiple of 4"):
        linear_add_sumsq(x, w, rand(2, 4, dtype=torch.float32, seed=3), config=LinearConfig(2, 2, 32))
