"""64-bit index math in the library kernels (embedding, rms_norm, cache_write, flash-decoding, flash
attention, moe), at the 2**31-element boundary on the GPU.

Every offset derived from a program id is a 64-bit scalar; per-tile vector offsets stay 32-bit (a
tile's extent is small), so the tile base is advanced in 64 bits. The same check functions run on the
CPU at small odd sizes (``TRITON_INTERPRET=1``: the code path, not the overflow) and on the GPU at sizes
whose last elements lie past 2**31 (each test needs several GiB and skips without them). Inputs are
random (never zero); fp32 on the CPU (tolerance 1e-4), fp16 on the GPU (2e-2, fp32 accumulation).
Where a full reference would need the whole tensor in fp32, only the rows or tokens past 2**31 are
checked, against torch on exactly those slices.
"""

from __future__ import annotations

import math

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.backends.triton.kernels import (
    DecodeConfig,
    add_rms_norm,
    cache_write,
    cached_attention,
    embedding,
    flash_attention,
    moe,
    rms_norm,
    trace,
)
from membound.ir.ops.moe import route

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
GIB = 2**30
LIMIT = 2**31


def tol(dtype: torch.dtype) -> dict[str, float]:
    return dict(atol=1e-4, rtol=1e-4) if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)


def ran_kernel(calls: list, op: str) -> None:
    assert (op, "kernel") in calls, calls


def randn(*shape: int, dtype: torch.dtype, device: str, scale: float = 1.0) -> torch.Tensor:
    """Random, never zero: |x| in [0.25, 1.25] * scale with random signs, made on ``device`` in ``dtype``
    with one temporary of the same size (a 2**31-element tensor must not pass through fp32)."""
    x = torch.rand(shape, device=device, dtype=dtype).mul_(2).sub_(1)  # [-1, 1)
    x.add_(torch.full_like(x, 0.25).copysign_(x))  # away from 0 (copysign(0.25, +0.0) = 0.25)
    return x.mul_(scale)


# ---------------------------------------------------------------------------------------------
# the checks, one per kernel; sizes are parameters
# ---------------------------------------------------------------------------------------------
def check_embedding(v: int, d: int, dtype: torch.dtype, device: str) -> None:
    weight = randn(v, d, dtype=dtype, device=device)
    ids = torch.tensor([[0, v - 1, 3], [v - 2, 1, v - 1]], device=device)
    with trace() as calls:
        got = embedding(weight, ids)
    ran_kernel(calls, "embedding")
    assert torch.equal(got, weight[ids])


def check_rms_norm(rows: int, d: int, dtype: torch.dtype, device: str) -> None:
    x, r = randn(rows, d, dtype=dtype, device=device), randn(rows, d, dtype=dtype, device=device)
    w = randn(d, dtype=dtype, device=device)
    with trace() as calls:
        y = rms_norm(x, w, eps=1e-5)
        h, y2 = add_rms_norm(x, r, w, eps=1e-5)
    ran_kernel(calls, "rms_norm")
    ran_kernel(calls, "add_rms_norm")
    for lo, hi in ((0, 2), (rows - 3, rows)):  # the first rows and the last ones (past 2**31 on the GPU)
        xs, hs = x[lo:hi].float(), (x[lo:hi] + r[lo:hi]).float()
        want = (xs * torch.rsqrt(xs.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype).float() * w.float()
        torch.testing.assert_close(y[lo:hi].float(), want, **tol(dtype))
        assert torch.equal(h[lo:hi], x[lo:hi] + r[lo:hi])
        want2 = (hs * torch.rsqrt(hs.pow(2).mean(-1, keepdim=True) + 1e-5)).to(dtype).float() * w.float()
        torch.testing.assert_close(y2[lo:hi].float(), want2, **tol(dtype))


def check_cache_write(b: int, h: int, t: int, d: int, dtype: torch.dtype, device: str) -> None:
    cache = torch.full((b, h, t, d), 0.5, dtype=dtype, device=device)
    s = 3
    values = randn(b, s, h, d, dtype=dtype, device=device).transpose(1, 2)  # [B, H, S, D] strided view
    pos = torch.stack([torch.arange(t - s, t), torch.tensor([0, t // 2, t - 1])])[:b].to(device)
    pos = pos if b > 1 else pos[0]
    with trace() as calls:
        cache_write(cache, values, pos)
    ran_kernel(calls, "cache_write")
    for bi in range(b):
        p = (pos[bi] if pos.dim() == 2 else pos).tolist()
        assert torch.equal(cache[bi][:, p], values[bi]), f"row {bi}"  # every head, the last one too
        assert bool((cache[bi, :, t - s - 1] == 0.5).all()) or (t - s - 1) in p  # a slot not written


def _attention_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lengths: list[int], scale: float,
                   chunk: int = 2**22) -> torch.Tensor:
    """softmax(q k^T * scale) v over the first ``lengths[i]`` keys for query row i, batch 0, in fp32
    chunks of the keys (a 2**31-element cache never exists in fp32). q ``[Hq, S, D]``, k/v ``[Hkv, T, D]``."""
    hq, s, _ = q.shape
    g = hq // k.shape[0]
    out = torch.empty(hq, s, v.shape[-1], device=q.device)
    for hh in range(hq):
        for i in range(s):
            m, den, acc = -math.inf, 0.0, torch.zeros(v.shape[-1], device=q.device)
            qi = q[hh, i].float() * scale
            for c0 in range(0, lengths[i], chunk):
                c1 = min(c0 + chunk, lengths[i])
                sc = k[hh // g, c0:c1].float() @ qi
                m_new = max(m, float(sc.max()))
                p = torch.exp(sc - m_new)
                corr = math.exp(m - m_new)
                den = den * corr + float(p.sum())
                acc = acc * corr + p @ v[hh // g, c0:c1].float()
                m = m_new
            out[hh, i] = acc / den
    return out


def check_cached_attention(hkv: int, g: int, t: int, d: int, dtype: torch.dtype, device: str,
                           config: DecodeConfig | None = None, window: int | None = None) -> None:
    """One new token per row at the last slot: every chunk of the cache, the last past 2**31."""
    q = randn(1, hkv * g, 1, d, dtype=dtype, device=device)
    k, v = randn(1, hkv, t, d, dtype=dtype, device=device), randn(1, hkv, t, d, dtype=dtype, device=device)
    pos = torch.tensor([t - 1], device=device)
    scale = d**-0.5
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=scale, window=window, max_len=t, config=config)
    ran_kernel(calls, "cached_attention")
    lo = 0 if window is None else t - window
    want = _attention_ref(q[0], k[0, :, lo:], v[0, :, lo:], [t - lo], scale)
    torch.testing.assert_close(y[0].float(), want, **tol(dtype))


def check_flash_attention(s: int, big_l: int, d: int, dtype: torch.dtype, device: str, masked: bool) -> None:
    """Non-causal prefill with a bool mask ``[1, 1, S, L]`` (S * L past 2**31 on the GPU) or without one
    over a long K (L * D past 2**31); rows checked: the first and the last two."""
    q = randn(1, 2, s, d, dtype=dtype, device=device)
    k, v = randn(1, 1, big_l, d, dtype=dtype, device=device), randn(1, 1, big_l, d, dtype=dtype, device=device)
    mask = None
    if masked:
        mask = torch.randint(0, 10, (1, 1, s, big_l), device=device, dtype=torch.uint8) < 7  # bytes, not fp32
        mask[..., 0] = True
    y = flash_attention(q, k, v, mask, scale=0.5)  # the kernel itself (no cost choice, no fallback)
    for i in (0, s - 2, s - 1):
        if mask is None:
            want = _attention_ref(q[0, :, i:i + 1], k[0], v[0], [big_l], 0.5)[:, 0]
        else:
            keep = mask[0, 0, i]
            want = _attention_ref(q[0, :, i:i + 1], k[0][:, keep], v[0][:, keep], [int(keep.sum())], 0.5)[:, 0]
        torch.testing.assert_close(y[0, :, i].float(), want, **tol(dtype))


def check_moe(tokens: int, e: int, d: int, i: int, dtype: torch.dtype, device: str, favour_last: bool) -> None:
    """Top-2 routing; ``favour_last`` makes every token pick the last expert (its weights start past
    2**31 on the GPU); else many tokens make pairs * I past 2**31. The last tokens are checked."""
    x = randn(tokens, d, dtype=dtype, device=device)
    router = randn(e, d, dtype=dtype, device=device, scale=d**-0.5)
    if favour_last:
        router[-1] = (x.float().mean(0) * (8.0 / x.float().mean(0).norm())).to(dtype)
    ws = [randn(e, i, d, dtype=dtype, device=device, scale=d**-0.5), randn(e, i, d, dtype=dtype, device=device,
          scale=d**-0.5), randn(e, d, i, dtype=dtype, device=device, scale=i**-0.5)]
    with trace() as calls:
        got = moe(x, router, *ws, top_k=2)
    ran_kernel(calls, "moe")
    last = x[-4:]
    weights, experts = route(last, router, top_k=2, softmax_first=True, renormalize=True)
    if favour_last:
        assert bool((experts == e - 1).any(dim=1).all()), experts
    want = torch.zeros(last.shape, device=device)
    for t in range(last.shape[0]):
        for j in range(2):
            ex = int(experts[t, j])
            gate = (last[t] @ ws[0][ex].T).float()
            up = (last[t] @ ws[1][ex].T).float()
            hidden = (torch.nn.functional.silu(gate) * up).to(dtype)
            want[t] += weights[t, j] * (hidden @ ws[2][ex].T).float()
    torch.testing.assert_close(got[-4:].float(), want, **tol(dtype))


# ---------------------------------------------------------------------------------------------
# CPU: the same checks at small odd sizes, through the kernels under the interpreter
# ---------------------------------------------------------------------------------------------
def test_small_sizes_match_torch(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    f32 = torch.float32
    check_embedding(37, 24, f32, DEVICE)
    check_rms_norm(7, 37, f32, DEVICE)
    check_cache_write(2, 3, 11, 20, f32, DEVICE)
    check_cache_write(1, 2, 9, 16, f32, DEVICE)
    check_cached_attention(2, 2, 77, 16, f32, DEVICE, config=DecodeConfig(16, 16, 32))  # 3 splits, 2 tiles each
    check_cached_attention(1, 4, 77, 16, f32, DEVICE, window=20)
    check_flash_attention(19, 45, 16, f32, DEVICE, masked=True)
    check_flash_attention(5, 83, 8, f32, DEVICE, masked=False)
    check_moe(37, 3, 24, 40, f32, DEVICE, favour_last=False)  # several BLOCK_M tiles of pairs per expert
    check_moe(5, 4, 24, 20, f32, DEVICE, favour_last=True)


# ---------------------------------------------------------------------------------------------
# GPU: past 2**31 elements (fp16); each needs several GiB
# ---------------------------------------------------------------------------------------------
def need(gib: float) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    free = torch.cuda.mem_get_info()[0]
    if free < gib * GIB:
        pytest.skip(f"needs {gib:g} GiB of free GPU memory, {free / GIB:.1f} free")


@pytest.fixture
def gpu_memory():
    """One of these tests at a time across pytest-xdist's workers (an exclusive lock on a file in the temp
    folder), so ``need``'s free-memory check is not raced by another worker's multi-GiB allocations: under
    ``pytest -m gpu -n 8`` on an 80 GB H100 two of them once ran out of memory together (session 33); the
    cache is emptied before the lock is released."""
    import fcntl
    import tempfile
    from pathlib import Path

    with open(Path(tempfile.gettempdir()) / "membound-test-index64-gpu.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            fcntl.flock(lock, fcntl.LOCK_UN)


H = torch.float16


@pytest.mark.gpu
def test_gpu_embedding_table_past_2_31(gpu_memory) -> None:
    assert (2**16 + 5) * 2**15 > LIMIT
    need(10)  # the 4 GiB table and its random fill's temporary
    check_embedding(2**16 + 5, 2**15, H, "cuda")  # rows v - 1, v - 2 start past 2**31


@pytest.mark.gpu
def test_gpu_rms_norm_rows_past_2_31(gpu_memory) -> None:
    need(26)  # x, residual, y, h, y2: 4 GiB each
    check_rms_norm(2**16 + 3, 2**15, H, "cuda")


@pytest.mark.gpu
def test_gpu_cache_write_past_2_31_across_batch_and_heads(gpu_memory) -> None:
    # one batch row is 5 * 2**23 * 64 = 2.5 * 2**31 elements: heads 4.. and batch row 1 start past 2**31
    need(12)
    check_cache_write(2, 5, 2**23, 64, H, "cuda")


@pytest.mark.gpu
@pytest.mark.parametrize("window", [None, 1000])
def test_gpu_cached_attention_over_a_head_past_2_31(window: int | None, gpu_memory) -> None:
    # each kv head holds (2**25 + 77) * 64 > 2**31 elements: the slots near the end (and head 1) are past it
    need(28)  # k and v: 8 GiB each
    check_cached_attention(2, 2, 2**25 + 77, 64, H, "cuda", window=window)


@pytest.mark.gpu
def test_gpu_flash_attention_mask_past_2_31(gpu_memory) -> None:
    need(12)  # the [S, L] bool mask is 4 GiB, and its random bytes another 4
    check_flash_attention(2**16 + 19, 2**16 + 37, 16, H, "cuda", masked=True)


@pytest.mark.gpu
def test_gpu_flash_attention_keys_past_2_31(gpu_memory) -> None:
    need(20)
    check_flash_attention(33, 2**25 + 77, 64, H, "cuda", masked=False)


@pytest.mark.gpu
def test_gpu_moe_hidden_rows_past_2_31(gpu_memory) -> None:
    # (2**16 + 7) tokens * top 2 * I = 2**14: the hidden buffer passes 2**31 elements
    need(16)
    check_moe(2**16 + 7, 4, 64, 2**14, H, "cuda", favour_last=False)


@pytest.mark.gpu
def test_gpu_moe_expert_weights_past_2_31(gpu_memory) -> None:
    # 5 experts of 2**14 * 2**15: the last expert's gate/up/down start at 4 * 2**29 = 2**31
    need(24)
    check_moe(6, 5, 2**15, 2**14, H, "cuda", favour_last=True)
