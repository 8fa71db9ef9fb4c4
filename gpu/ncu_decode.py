"""Nsight Compute view of flash decoding against SDPA's split-KV kernel at batch 1 (issue 12: why SDPA is faster at
batch 1 on long caches, and what the 1.24B step's short-cache attention spends its 5-8 us on).

    ncu --profile-from-start off --clock-control none --set full python gpu/ncu_decode.py

Cases (GQA 32/8, bf16, batch 1): head dim 64 at caches 256 (capacity 512, generate's graph path: no length) and
32768 (known length), head dim 128 at 32768 (known), and head dim 64 at 32768 in the 128-slot form (added after
session 34's run; the last case, so the first three keep their order). Every call runs twice before the
profiled range, so nothing in it compiles; inside it each contender runs once (ncu replays each kernel for its
counters). Prints each case's label before its kernels (stdout, between ncu's own lines).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from membound.backends.triton.kernels import cached_attention

HQ, HKV = 32, 8


def narrow_config(d: int, length: int, cap: int, known: bool):
    """pick_config's choice with wide tiles off at head dim 64 (``MEMBOUND_DECODE_WIDE_FROM=0``): 128-slot tiles,
    4 warps, two programs an SM -- the form below WIDE_FROM, which lost to the wide one in the e2e rows."""
    from membound.backends.triton.kernels import decode_attention as da

    old = os.environ.get(da.WIDE_FROM_ENV)
    os.environ[da.WIDE_FROM_ENV] = "0"
    try:
        return da.pick_config(HQ // HKV, HKV, length if known else cap, known, d, torch.bfloat16, torch.device("cuda"))
    finally:
        if old is None:
            del os.environ[da.WIDE_FROM_ENV]
        else:
            os.environ[da.WIDE_FROM_ENV] = old


def case(d: int, length: int, cap: int, known: bool, narrow: bool = False):
    dev = torch.device("cuda")
    q = torch.randn(1, HQ, 1, d, device=dev, dtype=torch.bfloat16)
    k = torch.randn(1, HKV, cap, d, device=dev, dtype=torch.bfloat16)
    v = torch.randn_like(k)
    pos = torch.full((1, 1), length - 1, dtype=torch.int64, device=dev)
    kw = dict(max_len=length) if known else {}
    if narrow:
        kw["config"] = narrow_config(d, length, cap, known)
    ks, vs = k[:, :, :length], v[:, :, :length]

    def ours():
        return cached_attention(q, k, v, pos, **kw)

    def sdpa():
        return F.scaled_dot_product_attention(q, ks, vs, enable_gqa=True)

    err = (ours().float() - sdpa().float()).abs().max().item()
    form = " narrow (128-slot tiles, 4 warps)" if narrow else ""
    return (f"d{d} b1 cache{length} cap{cap} {'known' if known else 'capacity'}{form} (max err vs sdpa {err:.2e})",
            ours, sdpa)


def main() -> None:
    cases = [case(64, 256, 512, False), case(64, 32768, 32768, True), case(128, 32768, 32768, True),
             case(64, 32768, 32768, True, narrow=True)]
    for _, ours, sdpa in cases:
        for _ in range(2):
            ours(), sdpa()
    torch.cuda.synchronize()
    torch.cuda.profiler.start()
    for label, ours, sdpa in cases:
        print(f"=== {label}: membound then sdpa", flush=True)
        ours()
        torch.cuda.synchronize()
        sdpa()
        torch.cuda.synchronize()
    torch.cuda.profiler.stop()


if __name__ == "__main__":
    main()
