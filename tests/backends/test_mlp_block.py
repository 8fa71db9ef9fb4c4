"""The one-launch MLP block (``kernels/mlp_block.py``, issue 13): the norm, the gate/up rows with the gating and the
down rows with the residual, as ordered work items of one grid.

Checked against ``eager_mlp`` (eager torch, rounded as HF's Llama MLP rounds: the norm as LlamaRMSNorm, each
product, the activation and the gating rounded to the dtype) at small odd sizes: K from 9 to 40 (padded to the
next power of two), I shorter and longer than K (a down row folded into 1 to 8 pieces), tiles of 2 to 64 rows
(items covering part of the pairs, a down row per item or several). The launch must leave the per-stream counters
zeroed (a second launch on the stream checks it). Several rows run the library's chain, saying why.

Tolerances: fp32 1e-4 (the GEMVs sum in another order); fp16 1e-2; bf16 (GPU only) 5e-2.
"""

from __future__ import annotations

from typing import Optional

import pytest
import torch
import torch.nn.functional as F
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

INTERP = Interpreted(__file__)
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def eager_mlp(x: torch.Tensor, norm_weight: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor,
              eps: float) -> torch.Tensor:
    """HF Llama's post-attention norm and MLP with the residual, written out (not membound's op references)."""
    xf = x.float()
    n = norm_weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    i = gate_up_weight.shape[0] // 2
    gate, up = F.linear(n, gate_up_weight[:i]), F.linear(n, gate_up_weight[i:])
    return x + F.linear(F.silu(gate) * up, down_weight)


def operands(k: int, i: int, dtype: torch.dtype, rows: int = 1, seed: int = 0, device: str = DEVICE) -> dict:
    gen = torch.Generator().manual_seed(seed)
    return dict(x=torch.randn(rows, 1, k, generator=gen).to(dtype).to(device),
                norm_weight=(1 + 0.1 * torch.randn(k, generator=gen)).to(dtype).to(device),
                gate_up_weight=(torch.randn(2 * i, k, generator=gen) * k ** -0.5).to(dtype).to(device),
                down_weight=(torch.randn(k, i, generator=gen) * i ** -0.5).to(dtype).to(device))


CASES = [
    # (K, I, tile rows or None for pick_config)
    (24, 40, None),   # K pads to 32, I = 40 in 2 pieces of a down row
    (17, 70, None),   # I = 70 in 3 of 4 pieces; pick_config's 64-row tiles (more rows than pairs)
    (32, 16, 2),      # one gate/up pair an item, one down row an item (I < K: one piece)
    (20, 100, 8),     # 4 pieces: two down rows an item
    (40, 33, 4),      # K pads to 64
    (9, 72, 8),       # K = 9 pads to 16: a down row in 5 of 8 pieces, one down row an item
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("k,i,rows", CASES)
def test_mlp_block_matches_eager(k: int, i: int, rows: Optional[int], dtype: torch.dtype,
                                 request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import trace
    from membound.backends.triton.kernels.mlp_block import MlpBlockConfig, mlp_block

    ops = operands(k, i, dtype, seed=k + i)
    with trace() as calls:
        got = mlp_block(**ops, eps=1e-5, config=MlpBlockConfig(rows=rows) if rows else None)
    assert calls == [("mlp_block", "kernel")], calls
    assert got.dtype == dtype and got.shape == ops["x"].shape
    torch.testing.assert_close(got, eager_mlp(**ops, eps=1e-5), **TOL[dtype])


def test_mlp_block_runs_twice_on_one_stream_and_the_op_reference_agrees(request: pytest.FixtureRequest) -> None:
    """Two launches in a row (the counters the first leaves must be zero for the second), the second on the
    first's output; the IR op's reference (the composed op references) gives the same."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels.mlp_block import mlp_block
    from membound.ir.ops import get_op

    ops = operands(24, 40, torch.float32, seed=3)
    first = mlp_block(**ops, eps=1e-6)
    second = mlp_block(**dict(ops, x=first), eps=1e-6)
    want = eager_mlp(**dict(ops, x=eager_mlp(**ops, eps=1e-6)), eps=1e-6)
    torch.testing.assert_close(second, want, **TOL[torch.float32])
    ref = get_op("mlp_block").reference(*ops.values(), eps=1e-6)
    torch.testing.assert_close(first, ref, **TOL[torch.float32])


def test_mlp_block_scope_and_errors(request: pytest.FixtureRequest) -> None:
    """Several rows take the library's chain (named); malformed operands raise naming the operand; a grid of fewer
    programs than items is refused under the interpreter (it runs programs one after another)."""
    if not INTERP.runs_here(request):
        return
    from membound.backends.triton.kernels import trace
    from membound.backends.triton.kernels.mlp_block import MlpBlockConfig, mlp_block, pick_config

    ops = operands(24, 40, torch.float32, rows=3, seed=4)
    with trace() as calls:
        got = mlp_block(**ops, eps=1e-5)
    assert ("mlp_block", "fallback: 3 tokens (the one-launch kernel takes one: batch 1): the library's kernels in "
            "turn") in calls, calls
    torch.testing.assert_close(got, eager_mlp(**ops, eps=1e-5), **TOL[torch.float32])
    one = operands(24, 40, torch.float32, seed=5)
    with pytest.raises(ValueError, match=r"down_weight \(24, 39\) must be \[K, I\] = \[24, 40\]"):
        mlp_block(**dict(one, down_weight=one["down_weight"][:, :39]), eps=1e-5)
    with pytest.raises(ValueError, match=r"gate_up_weight \(79, 24\) must be \[2I, K\]"):
        mlp_block(**dict(one, gate_up_weight=one["gate_up_weight"][:79]), eps=1e-5)
    if DEVICE == "cpu":  # (on a GPU a persistent grid is the kernel's other form: session 20's H200 run raised nothing)
        with pytest.raises(ValueError, match="needs a GPU"):
            mlp_block(**one, eps=1e-5, config=MlpBlockConfig(rows=8, programs=4))
    few = operands(9, 72, torch.float32, seed=6)  # a down row in 8 pieces of 16 columns: 4-row tiles hold half
    with pytest.raises(ValueError, match="rows=4 is under the 8 pieces"):
        mlp_block(**few, eps=1e-5, config=MlpBlockConfig(rows=4))
    assert pick_config(2048, 8192, torch.bfloat16).rows == 8  # 32 KB tiles at K = 2048
    assert pick_config(4096, 14336, torch.bfloat16).rows == 4
    assert pick_config(16, 4096, torch.float32).rows == 256  # at least a whole down row (256 pieces of 16)
    with pytest.raises(ValueError, match="power of two"):
        MlpBlockConfig(rows=6)


@pytest.mark.gpu
@pytest.mark.parametrize("persistent", [False, True])
@pytest.mark.parametrize("shape", [(2048, 8192), (4096, 14336)])
def test_mlp_block_gpu_bf16(shape: tuple, persistent: bool) -> None:
    """bf16 at the Llama-3.2-1B and Llama-3-8B shapes, one program per item and the persistent form (two per SM,
    items striding); then replayed from a CUDA graph on a new input."""
    from membound.backends.triton.kernels._launch import sm_count
    from membound.backends.triton.kernels.mlp_block import MlpBlockConfig, mlp_block, pick_config

    k, i = shape
    dev = torch.device("cuda")
    ops = operands(k, i, torch.bfloat16, seed=7, device="cuda")
    cfg = pick_config(k, i, torch.bfloat16)
    cfg = MlpBlockConfig(rows=cfg.rows, programs=2 * sm_count(dev) if persistent else None)
    got = mlp_block(**ops, eps=1e-5, config=cfg)
    torch.testing.assert_close(got.float(), eager_mlp(**ops, eps=1e-5).float(), **TOL[torch.bfloat16])
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        out = mlp_block(**ops, eps=1e-5, config=cfg)
    ops["x"].copy_(torch.randn_like(ops["x"]))
    g.replay()
    torch.cuda.synchronize()
    torch.testing.assert_close(out.float(), eager_mlp(**ops, eps=1e-5).float(), **TOL[torch.bfloat16])


def test_mlp_block_fits_in_registers_on_hopper() -> None:
    """sm_90 (no GPU needed, in a process without TRITON_INTERPRET): at the 1.24B and 8B shapes the kernel
    assembles without spills and at most 128 registers a thread (two 8-warp programs an SM). Skipped when no
    bundled ptxas reads Triton's PTX."""
    from _triton_interp import hopper_registers

    info = hopper_registers("_mlp_block_cases", "")
    assert len(info) == 2, info
    for label, (regs, spill) in info.items():
        assert spill == 0 and regs <= 128, (label, regs, spill)
