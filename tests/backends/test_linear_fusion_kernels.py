"""The GEMV's norm prologue and residual epilogue (``rms_norm_linear``, ``linear_add``, ``gated_linear_add``)
against the unfused path (the library's norm / linear kernels and a torch add, same tile config) and eager
torch in fp32 from the same rounded inputs, at small odd sizes, on every path of the kernel (FMA, tensor
cores, split-K with the last program reducing, cuBLAS past 16 rows).

Tolerances: the residual epilogue adds to the rounded product exactly as the unfused add does, so in the
interpreter it must equal the unfused path bit for bit (``EXACT``); on a GPU two compiled kernels may order a
product's sums differently (another tl.dot tile, FMA contraction: the H200 run of session 11 differed by 1.4e-6
in fp32, one fp16 ulp), so there the unfused tolerance applies; the norm prologue sums the squares in another order than the norm
kernel (rstd differs in the last fp32 bits), so fp32 agrees to 1e-5 and fp16 to one fp16 ulp of O(1)
outputs (2e-3); against eager fp32: 1e-4 (fp32), 1e-2 (fp16, the rounded norm and products).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.ir.ops import get_op

INTERP = Interpreted(__file__)
# bit-for-bit equality of two kernels' sums holds where numpy runs them (the interpreter), not on a GPU
EXACT = {torch.float32: dict(rtol=0, atol=0), torch.float16: dict(rtol=0, atol=0)} if DEVICE == "cpu" else None
# ...when both kernels' tl.dot tiles have the same width. The rotary epilogue streams a head's column pairs as two
# tiles of block_n columns where the unfused linear takes one of 2 * block_n: numpy's BLAS may order such products'
# sums differently on some CPUs (session 24's machine: one fp16 value of 720 one ulp apart, 3.8e-6 at 7.2e-3), so
# those tests allow one fp16 ulp there (still 2x tighter than UNFUSED_TOL)
ULP = {torch.float16: dict(rtol=2.0 ** -10, atol=1e-6)} if DEVICE == "cpu" else None
DTYPES = [torch.float32, torch.float16]
EAGER_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2)}
UNFUSED_TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3)}


def rand(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """|x| in [0.5, 1.5) with a random sign: never zero."""
    gen = torch.Generator().manual_seed(seed)
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(DEVICE)


def configs(m: int) -> list[Optional[object]]:
    """The heuristic tiles, and a split-K config on the path M takes (FMA for M <= 2, else tensor cores: x
    formed into a scratch first, the default, and formed in the loop; unsplit; the swapped product)."""
    from membound.backends.triton.kernels import LinearConfig

    if m > 16:
        return [None]
    if m <= 2:
        # ... and the resident form (each program's K range one register tile), K split; at one row its vector form
        # and the register loop's
        row = [LinearConfig(1, 8, 64, split_k=3, resident=True, row=True), LinearConfig(1, 4, 32, split_k=2, row=True)
               ] if m == 1 else []
        return [None, LinearConfig(2, 8, 32, split_k=3), LinearConfig(2, 8, 64, split_k=3, resident=True)] + row
    return [None, LinearConfig(16, 16, 32, split_k=3, use_dot=True),
            LinearConfig(16, 16, 32, split_k=2, use_dot=True, pre_gate=False),
            LinearConfig(16, 16, 64, use_dot=True),  # unsplit: the whole K in the prologue (several steps at K = 1100)
            LinearConfig(16, 16, 32, split_k=2, use_dot=True, swap=True)]  # W as the MMA's A operand


# (M, K, N); M = 20: the cuBLAS path; M = 5, K = 1100: the tensor cores' prologue (8 rows x 512 columns a step) in
# several steps
CASES = [(1, 77, 19), (3, 300, 37), (2, 129, 9), (20, 33, 11), (5, 1100, 7)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,n", CASES)
def test_rms_norm_linear(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear, rms_norm, rms_norm_linear, trace

    x, nw = rand(m, 1, k, dtype=dtype, seed=1), rand(k, dtype=dtype, seed=2)
    w, b = rand(n, k, dtype=dtype, seed=3) * k ** -0.5, rand(n, dtype=dtype, seed=4)
    eager = get_op("rms_norm_linear").reference(x.float(), nw.float(), w.float(), b.float(), eps=1e-5)
    for cfg in configs(m):
        with trace() as calls:
            y = rms_norm_linear(x, nw, w, b, eps=1e-5, config=cfg)
        assert ("rms_norm_linear", "cublas" if m > 16 else "kernel") in calls
        assert y.dtype == dtype and y.shape == (m, 1, n)
        unfused = linear(rms_norm(x, nw, eps=1e-5), w, b, config=cfg)
        torch.testing.assert_close(y, unfused, **UNFUSED_TOL[dtype])
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,n", CASES)
def test_linear_add(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear, linear_add, trace

    x, r = rand(m, k, dtype=dtype, seed=5), rand(m, n, dtype=dtype, seed=6)
    w, b = rand(n, k, dtype=dtype, seed=7) * k ** -0.5, rand(n, dtype=dtype, seed=8)
    eager = get_op("linear_add").reference(x.float(), w.float(), r.float(), b.float())
    for cfg in configs(m):
        with trace() as calls:
            y = linear_add(x, w, r, b, config=cfg)
        assert ("linear_add", "cublas" if m > 16 else "kernel") in calls
        torch.testing.assert_close(y, r + linear(x, w, b, config=cfg), **(EXACT or UNFUSED_TOL)[dtype])
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,n", CASES)
def test_gated_linear_add(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import gated_linear, gated_linear_add, trace

    gu = rand(m, 1, 2 * k, dtype=dtype, seed=9)
    gate, up = gu[..., :k], gu[..., k:]  # the halves of one merged projection: strided views
    w, r = rand(n, k, dtype=dtype, seed=10) * k ** -0.5, rand(m, 1, n, dtype=dtype, seed=11)
    eager = get_op("gated_linear_add").reference(gate.float(), up.float(), w.float(), r.float())
    for cfg in configs(m):
        with trace() as calls:
            y = gated_linear_add(gate, up, w, r, config=cfg)
        assert ("gated_linear_add", "cublas" if m > 16 else "kernel") in calls
        torch.testing.assert_close(y, r + gated_linear(gate, up, w, config=cfg), **(EXACT or UNFUSED_TOL)[dtype])
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,n", CASES + [(5, 130, 33), (16, 17, 1), (2, 64, 7)])
def test_linear_glu(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """silu(g) * u over the halves of one [2N, K] projection, gated in the epilogue: equal to the unfused path
    (the same linear over all 2N rows, then silu and the product in torch, each rounded) bit for bit in fp16 at
    the default tiles in the interpreter (``EXACT``; the K order is the linear's at these sizes); within 1e-5 /
    one fp16 ulp with other tiles (split-K sums in another order) or on a GPU; against eager fp32 within
    EAGER_TOL."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LinearConfig, linear, linear_glu, trace

    x = rand(m, 1, k, dtype=dtype, seed=12)
    w = rand(2 * n, k, dtype=dtype, seed=13) * k ** -0.5
    eager = get_op("linear_glu").reference(x.float(), w.float())
    glu_configs = configs(m)
    if 1 < m <= 2:
        glu_configs += [LinearConfig(2, 1, 64)]  # one output column a program: two weight rows
    for cfg in glu_configs:
        with trace() as calls:
            y = linear_glu(x, w, config=cfg)
        assert ("linear_glu", "cublas" if m > 16 else "kernel") in calls
        assert y.dtype == dtype and y.shape == (m, 1, n)
        gu = linear(x, w, config=None if cfg is None else dataclasses.replace(cfg, block_n=2 * cfg.block_n))
        g, u = gu.chunk(2, dim=-1)
        unfused = torch.nn.functional.silu(g) * u
        tol = (EXACT or UNFUSED_TOL)[dtype] if cfg is None and dtype == torch.float16 else UNFUSED_TOL[dtype]
        torch.testing.assert_close(y, unfused, **tol)
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])
    with pytest.raises(ValueError, match="linear_glu: weight must be \\[2N, K\\]"):
        linear_glu(x, w[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,n", CASES + [(2, 64, 7)])
def test_rms_norm_linear_glu_sumsq(m: int, k: int, n: int, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """The post-attention norm from x's partials in the prologue and silu(g) * u in the epilogue, one launch: equal
    to the two parents one after the other (rms_norm_linear_sumsq over the 2N merged rows at the same tiles, then
    silu and the product in torch, each rounded) within the unfused tolerance (bit for bit in fp16 at the default
    tiles in the interpreter: EXACT); against eager fp32 (the norm, the merged projection, the gating) within
    EAGER_TOL. The register path (M = 1, 2: resident, its row form, the register loop's row form, split-K), the
    tensor cores (M = 3, 5: x normed into a scratch first, or in the loop; the swapped product); M = 20: torch."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import rms_norm_linear_glu_sumsq, rms_norm_linear_sumsq, trace
    from membound.ir.ops.matmul import sumsq_partials

    x, nw = rand(m, 1, k, dtype=dtype, seed=22), rand(k, dtype=dtype, seed=23)
    w = rand(2 * n, k, dtype=dtype, seed=24) * k ** -0.5
    ss = sumsq_partials(x)  # what the producer (linear_add_sumsq) writes
    eager = get_op("rms_norm_linear_glu_sumsq").reference(x.float(), sumsq_partials(x.float()), nw.float(), w.float(),
                                                         eps=1e-5)
    for cfg in configs(m):
        with trace() as calls:
            y = rms_norm_linear_glu_sumsq(x, ss, nw, w, eps=1e-5, config=cfg)
        assert ("rms_norm_linear_glu_sumsq", "cublas" if m > 16 else "kernel") in calls
        assert y.dtype == dtype and y.shape == (m, 1, n)
        plain = None if cfg is None else dataclasses.replace(cfg, block_n=2 * cfg.block_n)
        g, u = rms_norm_linear_sumsq(x, ss, nw, w, eps=1e-5, config=plain).chunk(2, dim=-1)
        unfused = torch.nn.functional.silu(g) * u
        tol = (EXACT or UNFUSED_TOL)[dtype] if cfg is None and dtype == torch.float16 else UNFUSED_TOL[dtype]
        torch.testing.assert_close(y, unfused, **tol)
        torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])
    with pytest.raises(ValueError, match="rms_norm_linear_glu_sumsq: sumsq must be fp32"):
        rms_norm_linear_glu_sumsq(x, ss[..., :1], nw, w, eps=1e-5)
    with pytest.raises(ValueError, match="rms_norm_linear_glu_sumsq: weight must be \\[2N, K\\]"):
        rms_norm_linear_glu_sumsq(x, ss, nw, w[1:], eps=1e-5)
    with pytest.raises(ValueError, match="rms_norm_linear_glu_sumsq: act='gelu' has no kernel"):
        rms_norm_linear_glu_sumsq(x, ss, nw, w, eps=1e-5, act="gelu")


def test_errors_name_the_argument(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear_add, rms_norm_linear

    x, w = rand(2, 8, dtype=torch.float32, seed=1), rand(4, 8, dtype=torch.float32, seed=2)
    with pytest.raises(ValueError, match="linear_add: residual must have the output's shape"):
        linear_add(x, w, rand(2, 5, dtype=torch.float32, seed=3))
    with pytest.raises(ValueError, match="rms_norm_linear: needs x.*norm_weight"):
        rms_norm_linear(x, rand(7, dtype=torch.float32, seed=4), w, eps=1e-5)
    with pytest.raises(TypeError, match="rms_norm_linear: inputs must share a dtype"):
        rms_norm_linear(x, rand(8, dtype=torch.float16, seed=4), w, eps=1e-5)


def test_launch_config_pairs_tiles_over_the_paired_rows() -> None:
    """linear_glu and linear_rope programs stream two W tiles: launch_config picks as a linear over all their rows
    (linear_glu: 2N merged rows) and halves block_n into output columns, never under one MMA tile (64 columns
    swapped, 16 on tensor cores) or one column; plain ops get pick_config's config; step_plan names the pairs."""
    from membound.backends.triton.kernels.linear import PAIRED_OPS, launch_config, pick_config

    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    assert launch_config(1, 3072, 2048, bf16, cpu) == pick_config(1, 3072, 2048, bf16, cpu)
    for m, n, k in ((1, 8192, 2048), (2, 14336, 4096), (8, 14336, 4096), (1, 37, 300)):
        whole = pick_config(m, 2 * n, k, bf16, cpu, glu=True)
        glu = launch_config(m, n, k, bf16, cpu, glu=True)
        floor = 64 if whole.swap else 16 if whole.use_dot else 1
        assert glu.block_n == max(whole.block_n // 2, floor) and glu.split_k == whole.split_k
        assert (glu.swap, glu.use_dot, glu.resident) == (whole.swap, whole.use_dot, whole.resident)
        rope, pairs = launch_config(m, n, k, bf16, cpu, rope=True), pick_config(m, n, k, bf16, cpu, glu=True)
        assert rope.block_n == max(pairs.block_n // 2, 64 if pairs.swap else 16 if pairs.use_dot else 1)
    assert set(PAIRED_OPS.values()) == {"glu", "rope"} and PAIRED_OPS["linear_glu"] == "glu"


def test_linear_glu_register_tiles_stay_narrow(monkeypatch: pytest.MonkeyPatch) -> None:
    """pick_config's glu rule: at M <= 2 a merged gate/up weight keeps the narrow register tile (four weight rows,
    512 bf16 of each a step: two output columns a program) where the plain linear over the same rows takes the
    wide one (eight rows, 256), as the H200 GLU sweep measured faster at the 8B shape; tensor cores unchanged.
    Without the swapped product and the resident tiles (which take these sizes by default)."""
    from membound.backends.triton.kernels.linear import pick_config

    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP", "0")
    monkeypatch.setenv("MEMBOUND_LINEAR_RESIDENT", "0")
    cpu, bf16 = torch.device("cpu"), torch.bfloat16
    for n2, k in ((16384, 2048), (28672, 4096)):  # the 1.24B and 8B merged gate/up projections
        plain, glu = pick_config(1, n2, k, bf16, cpu), pick_config(1, n2, k, bf16, cpu, glu=True)
        assert (plain.block_n, plain.block_k) == (8, 256) and (glu.block_n, glu.block_k, glu.split_k) == (4, 512, 1)
        assert pick_config(8, n2, k, bf16, cpu, glu=True) == pick_config(8, n2, k, bf16, cpu)


# (M, K, q heads, kv heads, head dim, bias): linear_rope over a merged q/k/v projection; M = 20: torch
ROPE_CASES = [(1, 77, 3, 1, 16, False), (2, 129, 4, 2, 8, True), (3, 300, 2, 1, 32, False), (5, 1100, 3, 3, 16, True),
              (20, 33, 2, 1, 8, False)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,hq,hkv,d,bias", ROPE_CASES)
def test_linear_rope(m: int, k: int, hq: int, hkv: int, d: int, bias: bool, dtype: torch.dtype,
                     request: pytest.FixtureRequest) -> None:
    """q and k rotated in the GEMV's epilogue (each program streams column pairs (j, j + D/2) of a head as two
    tiles; the value columns after them, two tiles of consecutive columns) equal the unfused path (the library's
    linear at the same tiles, then HF's rotation in torch, rounded as eager rounds it): within one fp16 ulp in
    the interpreter (ULP; the same K order, tiles of other widths), else within the unfused tolerance; against eager fp32 within
    EAGER_TOL. Also every column rotated (no value columns) and none."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import linear, linear_rope, trace
    from membound.ir.ops.matmul import _linear_rope, rope_columns

    n, rope_cols = (hq + 2 * hkv) * d, (hq + hkv) * d
    x = rand(m, 1, k, dtype=dtype, seed=14)
    w = rand(n, k, dtype=dtype, seed=15) * k ** -0.5
    b = rand(n, dtype=dtype, seed=16) if bias else None
    angle = torch.rand(m, 1, d // 2, generator=torch.Generator().manual_seed(17)) * 6.0
    angle = torch.cat((angle, angle), dim=-1)  # HF's tables: the frequencies twice
    cos, sin = angle.cos().to(dtype).to(DEVICE), angle.sin().to(dtype).to(DEVICE)
    for cols in (rope_cols, n, 0):
        eager = _linear_rope(x.float(), w.float(), cos.float(), sin.float(), None if b is None else b.float(),
                             head_dim=d, rope_cols=cols)
        for cfg in configs(m) if cols == rope_cols else [None]:
            with trace() as calls:
                y = linear_rope(x, w, cos, sin, b, head_dim=d, rope_cols=cols, config=cfg)
            assert ("linear_rope", "cublas" if m > 16 else "kernel") in calls
            assert y.dtype == dtype and y.shape == (m, 1, n)
            # the same rows a program (block_n counts column pairs: twice the columns), the same K order
            plain = None if cfg is None else dataclasses.replace(cfg, block_n=2 * cfg.block_n)
            unfused = rope_columns(linear(x, w, b, config=plain), cos, sin, head_dim=d, rope_cols=cols)
            tol = (ULP or UNFUSED_TOL)[dtype] if dtype == torch.float16 else UNFUSED_TOL[dtype]
            torch.testing.assert_close(y, unfused, **tol)
            torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


def _rope_tables(m: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """HF's cos / sin rows ``[m, 1, d]``: the frequencies twice."""
    angle = torch.rand(m, 1, d // 2, generator=torch.Generator().manual_seed(17)) * 6.0
    angle = torch.cat((angle, angle), dim=-1)
    return angle.cos().to(dtype).to(DEVICE), angle.sin().to(dtype).to(DEVICE)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("m,k,hq,hkv,d,bias", ROPE_CASES)
def test_rms_norm_linear_rope_sumsq(m: int, k: int, hq: int, hkv: int, d: int, bias: bool, dtype: torch.dtype,
                                    request: pytest.FixtureRequest) -> None:
    """The norm from x's partials in the prologue and q / k rotated in the epilogue, one launch: equal to the two
    parents one after the other (rms_norm_linear_sumsq at the same tiles, then HF's rotation in torch, rounded as
    eager rounds it): within one fp16 ulp in the interpreter (ULP), else within the unfused tolerance (fp32:
    the product's sums in another order); against eager fp32 (the norm, the linear, the rotation) within
    EAGER_TOL. FMA (M = 1, 2) and tensor cores (M = 3, 5: x normed into a scratch first, or in the loop; the
    swapped product), split-K and not, with and without a bias; every column rotated and none at the default
    tiles; M = 20: torch."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import rms_norm_linear_rope_sumsq, rms_norm_linear_sumsq, trace
    from membound.ir.ops.matmul import rope_columns, sumsq_partials

    n, rope_cols = (hq + 2 * hkv) * d, (hq + hkv) * d
    x, nw = rand(m, 1, k, dtype=dtype, seed=18), rand(k, dtype=dtype, seed=19)
    w = rand(n, k, dtype=dtype, seed=20) * k ** -0.5
    b = rand(n, dtype=dtype, seed=21) if bias else None
    cos, sin = _rope_tables(m, d, dtype)
    ss = sumsq_partials(x)  # what the producer (linear_add_sumsq) writes
    normed = get_op("rms_norm_linear").reference(x.float(), nw.float(), w.float(), None if b is None else b.float(),
                                                 eps=1e-5)
    for cols in (rope_cols, n, 0):
        eager = rope_columns(normed, cos.float(), sin.float(), head_dim=d, rope_cols=cols)
        for cfg in configs(m) if cols == rope_cols else [None]:
            with trace() as calls:
                y = rms_norm_linear_rope_sumsq(x, ss, nw, w, cos, sin, b, eps=1e-5, head_dim=d, rope_cols=cols,
                                               config=cfg)
            assert ("rms_norm_linear_rope_sumsq", "cublas" if m > 16 else "kernel") in calls
            assert y.dtype == dtype and y.shape == (m, 1, n)
            plain = None if cfg is None else dataclasses.replace(cfg, block_n=2 * cfg.block_n)
            unfused = rope_columns(rms_norm_linear_sumsq(x, ss, nw, w, b, eps=1e-5, config=plain), cos, sin,
                                   head_dim=d, rope_cols=cols)
            tol = (ULP or UNFUSED_TOL)[dtype] if dtype == torch.float16 else UNFUSED_TOL[dtype]
            torch.testing.assert_close(y, unfused, **tol)
            torch.testing.assert_close(y.float(), eager, **EAGER_TOL[dtype])


@pytest.mark.parametrize("m", [1, 3])
def test_rope_with_the_norm_prologue(m: int, request: pytest.FixtureRequest) -> None:
    """The kernel also takes ROPE with the plain norm prologue (NORM without SUMSQ_IN: every program re-reduces its
    rows of x; no IR op uses it yet): equal to rms_norm_linear at the same tiles, then the rotation, fp16."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import LinearConfig, rms_norm_linear
    from membound.backends.triton.kernels.linear import _small_m
    from membound.ir.ops.matmul import rope_columns

    dtype, k, d, n, cols = torch.float16, 129, 8, 40, 24
    x, nw = rand(m, 1, k, dtype=dtype, seed=22), rand(k, dtype=dtype, seed=23)
    w, b = rand(n, k, dtype=dtype, seed=24) * k ** -0.5, rand(n, dtype=dtype, seed=25)
    cos, sin = _rope_tables(m, d, dtype)
    cfg = LinearConfig(2, 4, 32, split_k=2) if m <= 2 else LinearConfig(16, 16, 32, split_k=2, use_dot=True)
    y = _small_m("rms_norm_linear_rope", x, None, w, b, None, cfg, lambda: None, False, norm=(nw, 1e-5),
                 rope=(cos.reshape(m, d), sin.reshape(m, d), d, cols))
    plain = dataclasses.replace(cfg, block_n=2 * cfg.block_n)
    unfused = rope_columns(rms_norm_linear(x, nw, w, b, eps=1e-5, config=plain), cos, sin, head_dim=d, rope_cols=cols)
    torch.testing.assert_close(y, unfused, **(EXACT or UNFUSED_TOL)[dtype])


def test_rms_norm_linear_rope_sumsq_checks_its_arguments() -> None:
    from membound.backends.triton.kernels import rms_norm_linear_rope_sumsq

    x, w, nw = torch.randn(1, 16), torch.randn(24, 16), torch.randn(16)
    ss, cos = torch.ones(1, 4), torch.randn(1, 8)
    with pytest.raises(ValueError, match="rms_norm_linear_rope_sumsq: sumsq must be fp32"):
        rms_norm_linear_rope_sumsq(x, ss[:, :3], nw, w, cos, cos, eps=1e-5, head_dim=8, rope_cols=16)
    with pytest.raises(ValueError, match="rms_norm_linear_rope_sumsq: needs x.*norm_weight"):
        rms_norm_linear_rope_sumsq(x, ss, nw[:9], w, cos, cos, eps=1e-5, head_dim=8, rope_cols=16)
    with pytest.raises(ValueError, match="rms_norm_linear_rope_sumsq: rope_cols=12 must be whole heads"):
        rms_norm_linear_rope_sumsq(x, ss, nw, w, cos, cos, eps=1e-5, head_dim=8, rope_cols=12)
    with pytest.raises(ValueError, match="rms_norm_linear_rope_sumsq: rope_cols=32 exceeds the weight's 24 rows"):
        rms_norm_linear_rope_sumsq(x, ss, nw, w, cos, cos, eps=1e-5, head_dim=8, rope_cols=32)
    with pytest.raises(ValueError, match="rms_norm_linear_rope_sumsq: cos .* must broadcast to x's rows"):
        rms_norm_linear_rope_sumsq(x, ss, nw, w, torch.randn(3, 8), cos, eps=1e-5, head_dim=8, rope_cols=16)


def test_linear_rope_checks_its_arguments() -> None:
    from membound.backends.triton.kernels import linear_rope

    x, w = torch.randn(1, 16), torch.randn(24, 16)
    cos = torch.randn(1, 8)
    with pytest.raises(ValueError, match="whole heads of an even head_dim"):
        linear_rope(x, w, cos, cos, head_dim=8, rope_cols=12)
    with pytest.raises(ValueError, match="exceeds the weight's 24 rows"):
        linear_rope(x, w, cos, cos, head_dim=8, rope_cols=32)
    with pytest.raises(ValueError, match="must broadcast to x's rows"):
        linear_rope(x, w, torch.randn(3, 8), cos, head_dim=8, rope_cols=16)


# the swapped product's tiles for the early first tile: several K tiles a program (split), one tile covering each
# split (the whole weight slice before the wait, the loop empty), one tile over all of K (unsplit)
EARLY_SWAP_CONFIGS = [(16, 16, 32, 2), (16, 16, 256, 2), (16, 16, 512, 1)]


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f16"])
@pytest.mark.parametrize("block", EARLY_SWAP_CONFIGS, ids=["tiles", "tile-a-split", "one-tile"])
def test_swap_early_first_tile_equals_the_loop(block: tuple[int, int, int, int], dtype: torch.dtype,
                                               request: pytest.FixtureRequest,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``MEMBOUND_LINEAR_SWAP_EARLY=1``: a swapped-product launch over a parameter weight (``static_weight``) loads
    its first W tile before the PDL wait and peels that K tile off the loop. Every form of x (plain, gated, normed
    from a prologue or from partials), every epilogue (bias, residual, sums of squares, glu, rope) and split-K
    give what the loop alone gives (static_weight=False, the same tiles): bit for bit in the interpreter (the same
    K order), else within the unfused tolerance. M = 5, K = 300 (a K tail in the last tile), odd N."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton import kernels as K
    from membound.backends.triton.kernels import LinearConfig
    from membound.ir.ops.matmul import sumsq_partials

    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP_EARLY", "1")
    bm, bn, bk, split = block
    cfg = LinearConfig(bm, bn, bk, split_k=split, use_dot=True, swap=True)
    m, k, n, d = 5, 300, 37, 8
    x, gu = rand(m, 1, k, dtype=dtype, seed=30), rand(m, 1, 2 * k, dtype=dtype, seed=31)
    w, w2 = rand(n, k, dtype=dtype, seed=32) * k ** -0.5, rand(2 * n, k, dtype=dtype, seed=33) * k ** -0.5
    b, r, nw = rand(n, dtype=dtype, seed=34), rand(m, 1, n, dtype=dtype, seed=35), rand(k, dtype=dtype, seed=36)
    wq = rand(5 * d, k, dtype=dtype, seed=37) * k ** -0.5  # 3 heads rotated, 2 not
    cos, sin = _rope_tables(m, d, dtype)
    ss = sumsq_partials(x)
    runs = {
        "linear": lambda **o: K.linear(x, w, b, config=cfg, **o),
        "gated_linear": lambda **o: K.gated_linear(gu[..., :k], gu[..., k:], w, config=cfg, **o),
        "linear_glu": lambda **o: K.linear_glu(x, w2, config=cfg, **o),
        "rms_norm_linear": lambda **o: K.rms_norm_linear(x, nw, w, b, eps=1e-5, config=cfg, **o),
        "linear_add": lambda **o: K.linear_add(x, w, r, b, config=cfg, **o),
        "gated_linear_add_sumsq": lambda **o: K.gated_linear_add_sumsq(gu[..., :k], gu[..., k:], w, r, config=cfg,
                                                                       **o),
        "rms_norm_linear_sumsq": lambda **o: K.rms_norm_linear_sumsq(x, ss, nw, w, b, eps=1e-5, config=cfg, **o),
        "rms_norm_linear_glu_sumsq": lambda **o: K.rms_norm_linear_glu_sumsq(x, ss, nw, w2, eps=1e-5, config=cfg,
                                                                             **o),
        "linear_rope": lambda **o: K.linear_rope(x, wq, cos, sin, head_dim=d, rope_cols=3 * d, config=cfg, **o),
    }
    tol = (EXACT or UNFUSED_TOL)[dtype]
    for name, run in runs.items():
        with K.trace() as calls:
            early, loop = run(static_weight=True), run(static_weight=False)
        assert calls == [(name, "kernel")] * 2, name
        for a, c in zip(early if isinstance(early, tuple) else (early,), loop if isinstance(loop, tuple) else (loop,)):
            torch.testing.assert_close(a, c, **tol, msg=lambda s, name=name: f"{name}: {s}")
