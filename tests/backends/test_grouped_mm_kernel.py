"""The ``grouped_mm`` library kernel (rows sorted by group, each group times its ``[K, M]`` weight, offsets read on
the device) against the IR op's torch reference: odd sizes, empty groups (first, middle, last), rows past the last
offset (zeros), one row, int32 and int64 offsets, strided operands, fp32 and fp16 under the interpreter (bf16 on a
GPU). Tolerances: fp32 1e-5, fp16 1e-2 relative to the result's scale, bf16 2e-2. Also: an HF gpt-oss decode step
(whose experts ran grouped_mm until fuse-moe took them in session 21) holds no host-syncing op on the triton backend
(so generate's decode step may be a CUDA graph)."""

from __future__ import annotations

import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from membound.backends.triton.kernels import trace  # noqa: E402
from membound.backends.triton.kernels.grouped_mm import GroupedConfig, grouped_mm  # noqa: E402
from membound.ir import get_op  # noqa: E402

TOL = {torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])

CASES = [
    # (rows, K, M, group sizes): the sum may be under rows (the rest belong to no group)
    (7, 13, 19, [2, 0, 5]),               # an empty middle group
    (40, 24, 33, [0, 10, 3, 0, 0, 20, 5]),  # empty first groups, rows spanning three row blocks
    (3, 16, 16, [0, 1, 0, 0]),            # one row in a group, two past the last offset
    (1, 9, 5, [0, 0, 1]),                 # one row (a decode step of top-1)
    (17, 8, 20, [4, 4, 4, 0]),            # an empty last group, five rows in no group
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("index", [torch.int32, torch.int64])
@pytest.mark.parametrize("n,k,m,sizes", CASES)
def test_grouped_mm_matches_the_reference(n: int, k: int, m: int, sizes: list, index: torch.dtype,
                                          dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(n * 31 + k)
    x = torch.randn(n, k, generator=gen).to(dtype).to(DEVICE)
    w = torch.randn(len(sizes), k, m, generator=gen).to(dtype).to(DEVICE)
    offsets = torch.tensor(sizes).cumsum(0).to(index).to(DEVICE)
    want = get_op("grouped_mm").reference(x.float(), w.float(), offsets)
    with trace() as calls:
        got = grouped_mm(x, w, offsets)
    assert calls == [("grouped_mm", "kernel")], calls
    assert got.dtype == dtype and got.shape == (n, m)
    scale = max(1.0, float(want.abs().max()))
    torch.testing.assert_close(got.float(), want, rtol=TOL[dtype], atol=TOL[dtype] * scale)
    assert torch.all(got[int(sum(sizes)):] == 0)  # rows in no group: zeros


def test_strided_operands_and_a_given_config() -> None:
    """A transposed weight view ([E, M, K] storage read as [E, K, M]) and an x slice; tiles forced to 16."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(11, 30, generator=gen).to(DEVICE)[:, 3:24]
    w = torch.randn(3, 18, 21, generator=gen).to(DEVICE).transpose(1, 2)
    offsets = torch.tensor([4, 4, 9], device=DEVICE)
    want = get_op("grouped_mm").reference(x, w, offsets)
    got = grouped_mm(x, w, offsets, config=GroupedConfig(16, 16, 16, 4, 1))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_bad_operands_name_the_op() -> None:
    x, w = torch.randn(4, 8, device=DEVICE), torch.randn(2, 8, 5, device=DEVICE)
    with pytest.raises(ValueError, match="grouped_mm: .* disagree on K or E"):
        grouped_mm(x, w, torch.tensor([1, 2, 4], device=DEVICE))
    with pytest.raises(TypeError, match="grouped_mm: offsets must be int32/int64"):
        grouped_mm(x, w, torch.tensor([1.0, 4.0], device=DEVICE))


def test_gpt_oss_decode_step_holds_no_host_sync() -> None:
    """gpt-oss's experts (interleaved gate/up columns, biases, a clamped SwiGLU), which ran as two grouped_mm a layer
    (this kernel) until session 21, are now one fused ``moe`` a layer: the decode graph holds no grouped_mm and
    nothing in the step reads device values on the host; greedy tokens equal eager's."""
    import transformers as T

    from tests.e2e.hf_moe import triton_decode_ops

    cfg = T.GptOssConfig(vocab_size=61, hidden_size=32, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=8, num_local_experts=3,
                         num_experts_per_tok=2, sliding_window=4, layer_types=["full_attention"],
                         max_position_embeddings=64)
    torch.manual_seed(0)
    model = T.GptOssForCausalLM(cfg).eval().to(DEVICE)
    ops = triton_decode_ops(model, torch.randint(3, 61, (1, 6), device=DEVICE), "moe")
    assert ops.count("moe") == 1 and ops.count("grouped_mm") == 0
