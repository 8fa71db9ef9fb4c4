"""Hugging Face's rotary embedding as some transformers versions spell it (5.17, the GPU machine's):
``inv_freq[None, :, None] @ position_ids[:, None, :]``, a matmul over a reduction of length one, which ran as a
cuBLAS GEMM launch per decode step beside the cast and cos / sin kernels around it (H200 profile,
``profile_step-quick-nopdl-...-session15``: ``cutlass_80_simt_sgemm`` 3.4 us). canonicalize's
``matmul-k1-to-mul`` makes it a broadcast ``mul`` (the same single product per output), which fuses: the triton
backend runs the whole table in one elementwise kernel. fp32 against eager: bit for bit through the reference
backend (the product is exact either way); within 1e-6 through triton, whose cos / sin (numpy's in the
interpreter, libdevice's on a GPU) may differ from torch's by an ulp.
"""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound

INTERP = Interpreted(__file__)


class Rotary(torch.nn.Module):
    """cos / sin tables from positions as transformers 5.17's LlamaRotaryEmbedding computes them."""

    def __init__(self, dim: int = 12, base: float = 10000.0) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = self.inv_freq[None, :, None].float().expand(position_ids.shape[0], -1, 1)
        freqs = (inv @ position_ids[:, None, :].float()).transpose(1, 2)
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(x.dtype), emb.sin().to(x.dtype)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_rotary_matmul_becomes_one_fused_kernel(backend: str, request: pytest.FixtureRequest) -> None:
    if backend == "triton" and not INTERP.runs_here(request):
        return
    dev = DEVICE if backend == "triton" else "cpu"
    model = Rotary().eval().to(dev)
    x = torch.randn(3, 5, 12, device=dev)
    pos = torch.tensor([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11], [2, 3, 5, 8, 13]], device=dev)
    compiled = membound.compile(model, backend=backend)
    with torch.no_grad():
        got, want = compiled(x, pos), model(x, pos)
    tol = 0.0 if backend == "reference" else 1e-6
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=tol, atol=tol)
    ops = [n.op for n in compiled.ir.nodes]
    assert "matmul" not in ops and "mul" in ops, ops
    if backend == "triton":
        # the whole table (cast, outer product, cat, cos, sin) in one generated kernel: no library (GEMM) launch
        steps = [s for s in compiled._last().executable.partition.steps if getattr(s, "impl", None) != "view"]
        assert [getattr(s, "impl", None) for s in steps] == [None], steps
