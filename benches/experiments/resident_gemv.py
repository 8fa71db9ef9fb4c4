"""Experiment (issue 13): does a GEMV whose programs load their whole weight slice before the PDL wait
shrink the fixed cost of a decode GEMV inside a CUDA-graph chain?

The step model fits every decode GEMV as ``3.35 us + bytes / (0.996 * read BW)`` (``gemv_swap``, H200): at
the Llama-3.2-1B shape four GEMVs a layer cost ~13 us of fixed time over ~30 us of streaming, which is most
of the gap between the 1.24B batch-1 step (0.89 ms) and its read-bandwidth bound (0.60 ms). The library's
GEMVs issue their weight loads after ``gdc_wait`` (the register path: one tile before it), so each kernel's
DRAM stream starts only once the kernel before it has completed and its writes are visible.

``_gemv_resident`` here is the opposite extreme: each program owns ``BLOCK_N`` rows x ``KC`` columns of the
weight, loads all of it into registers *before* the wait (a parameter weight: no kernel writes it), then
waits, reads its x rows and reduces. With few enough programs to be resident at once, the whole weight is
in flight as soon as the kernel launches, i.e. while the kernel before it (under programmatic dependent
launch) is still running. K longer than ``KC`` is split over programs; the last to arrive sums the fp32
partials (the library's arrival counters).

Timed: chains of dependent products (each reads the previous one's output) replayed from a CUDA graph, per
layer of the 1.24B and 8B decode shapes (q/k/v, o, gate/up, down), the library's ``linear`` against the
resident kernel where it applies, M = 1; plus single-shape chains. Checked against ``x @ w.T`` in fp32
(bf16 tolerance: atol 2e-2, rtol 2e-2). Writes ``$OUT/resident_gemv.json``.

Caveat of the committed run (``resident_gemv-nvidia-h200-2026-12-03-session13``): its "library" rows called
``linear`` without ``static_weight=True``, so the library's register tile loaded even its first weight tile after
the wait, which the decode step does not do (its parameters are static): the 1.24B q/k/v took 5.95 us there
against 5.4 in gemv_sweep. The library's resident tiles, swept (``gemv_sweep --resident``) and in the decode step,
gained ~0.4 us a GEMV on the small 1.24B weights, not this run's 1.4. Fixed since (``static_weight=True``).

    python benches/experiments/resident_gemv.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Callable, Optional

import torch
import triton
import triton.language as tl

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._timing import graph_time  # noqa: E402
from membound.backends.triton.kernels._launch import (  # noqa: E402
    arrive_last,
    cdiv,
    pdl_enter,
    pdl_options,
    reset_counter,
    split_counters,
)


@triton.jit
def _gemv_resident(x_ptr, w_ptr, out_ptr, part_ptr, lock_ptr, M, N, K, stride_xm, stride_wn, stride_split,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, KC: tl.constexpr, SPLIT: tl.constexpr,
                   USE_PDL: tl.constexpr):
    # BLOCK_M == M: the launcher passes the row count as the constexpr (a decode batch of 1-4 rows)
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    ks = pid_k * KC + tl.arange(0, KC)
    k_ok = ks < K
    # the program's whole weight slice, before the wait: in flight while the kernel before this one finishes
    w = tl.load(w_ptr + rows.to(tl.int64)[:, None] * stride_wn + ks[None, :], mask=row_ok[:, None] & k_ok[None, :],
                other=0.0)
    pdl_enter(USE_PDL)
    for m in tl.static_range(BLOCK_M):
        x = tl.load(x_ptr + m * stride_xm + ks, mask=k_ok, other=0.0)
        y = tl.sum(w.to(tl.float32) * x.to(tl.float32)[None, :], axis=1)
        if SPLIT == 1:
            tl.store(out_ptr + m * N + rows, y.to(out_ptr.dtype.element_ty), mask=row_ok)
        else:
            tl.store(part_ptr + pid_k * stride_split + m * N + rows, y, mask=row_ok)
    if SPLIT > 1:
        if arrive_last(lock_ptr, pid_n, SPLIT):
            for m in tl.static_range(BLOCK_M):
                total = tl.zeros((BLOCK_N,), dtype=tl.float32)
                for s in tl.static_range(SPLIT):
                    total += tl.load(part_ptr + s * stride_split + m * N + rows, mask=row_ok, other=0.0,
                                     cache_modifier=".cg")
                tl.store(out_ptr + m * N + rows, total.to(out_ptr.dtype.element_ty), mask=row_ok)
            reset_counter(lock_ptr, pid_n)


def resident_linear(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, part: Optional[torch.Tensor],
                    block_n: int, kc: int, num_warps: int = 4) -> torch.Tensor:
    """``out[M, N] = x[M, K] @ w[N, K].T`` with ``_gemv_resident`` (``part``: fp32 [splits, M, N] when K > kc)."""
    m, k = x.shape
    n = w.shape[0]
    split = cdiv(k, kc)
    locks = split_counters(x.device, cdiv(n, block_n)) if split > 1 else out
    part_arg = part if split > 1 else out
    grid = (cdiv(n, block_n), split)
    _gemv_resident[grid](x, w, out, part_arg, locks, m, n, k, x.stride(0), w.stride(0), m * n,
                         BLOCK_M=m, BLOCK_N=block_n, KC=kc, SPLIT=split, num_warps=num_warps,
                         **pdl_options(x.device))
    return out




SHAPES = {  # (name, N, K) of one decode layer, in order; each reads the previous output's first K columns
    "llama-1b": [("qkv", 3072, 2048), ("o", 2048, 2048), ("gate_up", 16384, 2048), ("down", 2048, 8192)],
    "llama-8b": [("qkv", 6144, 4096), ("o", 4096, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)],
}


class Chain:
    """``layers`` copies of a model's decode layer (distinct weights, so every byte streams from HBM), each
    product reading the previous one's output."""

    def __init__(self, model: str, layers: int, m: int, dev: torch.device):
        self.shapes = SHAPES[model]
        self.layers = layers
        self.m = m
        g = torch.Generator(device=dev).manual_seed(0)
        self.ws = [[torch.randn(n, k, device=dev, dtype=torch.bfloat16, generator=g) / k ** 0.5
                    for _, n, k in self.shapes] for _ in range(layers)]
        self.outs = [torch.zeros(m, n, device=dev, dtype=torch.bfloat16) for _, n, _ in self.shapes]
        width = max(k for _, _, k in self.shapes)
        self.x0 = torch.randn(m, width, device=dev, dtype=torch.bfloat16)
        self.parts = [torch.zeros(cdiv(k, 512), m, n, device=dev, dtype=torch.float32) for _, n, k in self.shapes]
        self.bytes = sum(w.nbytes for ws in self.ws for w in ws)

    def inputs(self, i: int, prev: torch.Tensor) -> torch.Tensor:
        k = self.shapes[i][2]
        if prev.shape[1] >= k:
            return prev[:, :k]
        return self.x0[:, :k]

    def run(self, pick: Callable[[int], Optional[tuple[int, int, int]]]) -> None:
        from membound.backends.triton.kernels.linear import linear
        prev = self.x0
        for layer in range(self.layers):
            for i, (_, n, k) in enumerate(self.shapes):
                x = self.inputs(i, prev)
                cfg = pick(i)
                if cfg is None:
                    linear(x, self.ws[layer][i], out=self.outs[i], static_weight=True)
                else:
                    resident_linear(x, self.ws[layer][i], self.outs[i], self.parts[i], cfg[0], cfg[1], cfg[2])
                prev = self.outs[i]


def check(dev: torch.device, results: list[dict]) -> bool:
    ok = True
    for m in (1, 2):
        for n, k, bn, kc in ((3072, 2048, 8, 2048), (2048, 8192, 8, 2048), (4096, 4096, 4, 4096),
                             (4096, 14336, 4, 2048), (1000, 1000, 8, 1024)):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k ** 0.5
            out = torch.empty(m, n, device=dev, dtype=torch.bfloat16)
            part = torch.empty(cdiv(k, kc), m, n, device=dev, dtype=torch.float32)
            resident_linear(x, w, out, part, bn, kc)
            ref = x.float() @ w.float().T
            err = (out.float() - ref).abs().max().item()
            good = torch.allclose(out.float(), ref, atol=2e-2, rtol=2e-2)
            ok &= good
            results.append(dict(kind="check", m=m, n=n, k=k, block_n=bn, kc=kc, max_err=err, ok=good))
            print(f"check m{m} {n}x{k} bn{bn} kc{kc}: max err {err:.3g} {'ok' if good else 'FAIL'}")
    return ok


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    args = p.parse_args(argv)
    dev = torch.device("cuda")
    results: list[dict] = []
    big = torch.randn(1 << 30, dtype=torch.bfloat16, device=dev)
    read_bw = big.nbytes / graph_time(big.sum)
    del big
    print(f"{torch.cuda.get_device_name(dev)}: read BW {read_bw / 1e9:.0f} GB/s")
    if not check(dev, results):
        print("correctness FAILED: no timings")
    else:
        # variants: which products take the resident kernel, with (BLOCK_N, KC, warps)
        for model, layers in (("llama-1b", 16), ("llama-8b", 8)):
            chain = Chain(model, layers, 1, dev)
            kmax = 2048 if model == "llama-1b" else 4096
            variants: dict[str, Callable[[int], Optional[tuple[int, int, int]]]] = {
                "library": lambda i: None,
                "resident qkv,o bn8": lambda i: (8, kmax, 4) if i < 2 else None,
                "resident qkv,o bn4": lambda i: (4, kmax, 4) if i < 2 else None,
                "resident qkv,o bn16 w8": lambda i: (16, kmax, 8) if i < 2 else None,
                "resident all bn8": lambda i: (8, kmax, 4),
                "resident all bn4 kc2048": lambda i: (4, 2048, 4),
                "resident all bn8 kc1024": lambda i: (8, 1024, 4),
            }
            if args.quick:
                variants = dict(list(variants.items())[:3])
            for name, pick in variants.items():
                try:
                    t = graph_time(lambda: chain.run(pick))
                except Exception as e:  # a variant that does not compile: say so, go on
                    print(f"{model} {name}: {type(e).__name__}: {str(e)[:200]}")
                    results.append(dict(kind="chain", model=model, variant=name, error=str(e)[:500]))
                    continue
                frac = chain.bytes / t / read_bw
                results.append(dict(kind="chain", model=model, variant=name, layers=layers, seconds=t,
                                    us_per_layer=t / layers * 1e6, bytes=chain.bytes, frac_read_bw=frac))
                print(f"{model} {name:28s} {t / layers * 1e6:8.2f} us/layer  {frac * 100:5.1f}% of read BW")
            # single products in a chain of 32 (one shape): the fixed cost per kernel
            for i, (sname, n, k) in enumerate(chain.shapes):
                ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) for _ in range(24)]
                x = torch.randn(1, k, device=dev, dtype=torch.bfloat16)
                # two output buffers in turn: each product reads the one before's output where N >= K
                bufs = [torch.zeros(1, n, device=dev, dtype=torch.bfloat16) for _ in range(2)]
                part = torch.empty(cdiv(k, 512), 1, n, device=dev, dtype=torch.float32)

                def src(j: int) -> torch.Tensor:
                    return x if n < k else bufs[j % 2][:, :k]

                from membound.backends.triton.kernels.linear import linear
                single = {"library": lambda j, w: linear(src(j), w, out=bufs[(j + 1) % 2], static_weight=True)}
                for bn, kc, nw in ((8, min(k, kmax), 4), (4, min(k, kmax), 4), (8, 1024, 4), (16, min(k, kmax), 8)):
                    single[f"resident bn{bn} kc{kc} w{nw}"] = (
                        lambda j, w, bn=bn, kc=kc, nw=nw: resident_linear(src(j), w, bufs[(j + 1) % 2], part, bn,
                                                                          kc, nw))
                for name, fn in single.items():
                    try:
                        t = graph_time(lambda: [fn(j, w) for j, w in enumerate(ws)]) / len(ws)
                    except Exception as e:
                        print(f"{model} {sname} {name}: {type(e).__name__}: {str(e)[:200]}")
                        continue
                    nbytes = n * k * 2
                    ideal = nbytes / read_bw
                    results.append(dict(kind="single", model=model, shape=sname, variant=name, seconds=t,
                                        ideal_s=ideal, fixed_us=(t - ideal) * 1e6))
                    print(f"{model} {sname:8s} {name:28s} {t * 1e6:8.2f} us  ideal {ideal * 1e6:7.2f}  "
                          f"fixed {(t - ideal) * 1e6:6.2f}")
                del ws
            del chain
            torch.cuda.empty_cache()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "resident_gemv.json").write_text(json.dumps(dict(device=torch.cuda.get_device_name(dev),
                                                            read_bw=read_bw, results=results), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
