"""Which tiles make the small-M linear stream at HBM bandwidth? A config sweep against cuBLAS.

    PYTHONPATH=. python benches/gemv_sweep.py [--models llama-1b,llama-8b] [--batches 1,8] --out DIR

Each decode projection of the Llama-3.2-1B and Llama-3-8B shapes (merged q/k/v, o, merged gate/up,
down, lm head), bf16, is run by cuBLAS (``F.linear``), by ``linear``'s own heuristic config and by
every config of a small grid (tile rows ``BLOCK_N``, tile width ``BLOCK_K``, split-K, warps, stages).

Method: the timed function runs the projection over ``copies`` distinct weight tensors (together at
least 512 MB, ten times the H200's 50 MB L2), so every weight comes from HBM as in a real decode step,
where a layer's weights are long evicted when the next token needs them. It is captured once in a CUDA
graph and replayed (``triton.testing.do_bench_cudagraph``), so launch overhead inside a graph is in
the number, Python's is not: that is how a decode step runs. Every config is checked against cuBLAS
(bf16 tolerance) before it is timed. Prints, per shape, cuBLAS, the heuristic, and the best three.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from membound.backends.triton.kernels.linear import LinearConfig, linear, linear_bytes, pick_config  # noqa: E402

SHAPES = {
    "llama-1b": {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192),
                 "lm_head": (128256, 2048)},
    "llama-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
                 "lm_head": (128256, 4096)},
}


def grid(m: int) -> list[LinearConfig]:
    if m <= 2:  # register FMA: accumulator [BLOCK_N, BLOCK_K] fp32 kept at 16..64 per thread
        tiles = ((4, 512), (8, 256), (8, 512), (16, 256), (16, 512), (32, 256))
        return [LinearConfig(1 if m == 1 else 2, bn, bk, split, False, warps, 3)
                for (bn, bk), split, warps in itertools.product(tiles, (1, 2, 4, 8), (4, 8))]
    tiles = ((16, 128), (32, 128), (32, 256), (64, 128))
    return [LinearConfig(16, bn, bk, split, True, 4, stages)
            for (bn, bk), split, stages in itertools.product(tiles, (1, 2, 4), (3, 4))]


def describe(c: LinearConfig) -> str:
    return (f"{'dot' if c.use_dot else 'fma'} {c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} "
            f"w{c.num_warps} st{c.num_stages}{'' if c.prefetch or c.use_dot else ' noprefetch'}")


def read_bandwidth(dev: torch.device) -> float:
    """Bytes per second of ``x.sum()`` over 2 GiB of bf16, by CUDA-graph replay."""
    from triton.testing import do_bench_cudagraph

    big = torch.randn(1 << 30, dtype=torch.bfloat16, device=dev)
    return big.nbytes / (do_bench_cudagraph(big.sum, rep=50, return_mode="median") * 1e-3)


class Case:
    """One projection shape at one M: checks then times cuBLAS, the heuristic and the sweep's configs."""

    def __init__(self, model: str, shape: str, m: int, ws: list[torch.Tensor], read_bw: float,
                 rows: list[dict]) -> None:
        self.model, self.shape, self.m, self.ws, self.read_bw, self.rows = model, shape, m, ws, read_bw, rows
        n, k = ws[0].shape
        self.x = torch.randn(m, k, device=ws[0].device, dtype=torch.bfloat16)
        self.outs = [torch.empty(m, n, device=ws[0].device, dtype=torch.bfloat16) for _ in ws]
        self.want = F.linear(self.x, ws[0]).float()
        self.nbytes = linear_bytes(m, n, k, torch.bfloat16)

    def row(self, config: str, **fields: object) -> None:
        self.rows.append(dict(model=self.model, shape=self.shape, m=self.m, config=config, **fields))

    def timed(self, label: str, fn_one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> None:
        from triton.testing import do_bench_cudagraph

        got = fn_one(self.ws[0], self.outs[0]).float()
        err = float((got - self.want).abs().max())
        if not err <= 2e-2 * float(self.want.abs().max()) + 1e-2:
            self.row(label, us=None, err=err)
            return

        def run() -> None:
            for w, o in zip(self.ws, self.outs):
                fn_one(w, o)

        t = do_bench_cudagraph(run, rep=30, return_mode="median") * 1e-3 / len(self.ws)
        self.row(label, us=t * 1e6, err=err, gbps=self.nbytes / t / 1e9, pct=100 * self.nbytes / t / self.read_bw)

    def run_all(self, quick: bool) -> None:
        x = self.x
        n, k = self.ws[0].shape
        self.timed("cublas", lambda w, o: torch.mm(x, w.t(), out=o))
        heur = pick_config(self.m, n, k, torch.bfloat16, x.device)
        self.timed("heuristic " + describe(heur), lambda w, o: linear(x, w, out=o))
        configs = grid(self.m)
        if quick:
            configs = [replace(heur, prefetch=False), replace(heur, block_n=8),
                       replace(heur, block_n=8, prefetch=False)]
        for cfg in configs:
            try:
                self.timed(describe(cfg), lambda w, o, c=cfg: linear(x, w, out=o, config=c))
            except Exception as exc:  # noqa: BLE001 (a config Triton cannot compile: out of resources)
                self.row(describe(cfg), us=None, err=str(exc).splitlines()[0][:120])


def summary(rows: list[dict], key: tuple) -> str:
    rs = [r for r in rows if (r["model"], r["shape"], r["m"]) == key]
    ok = sorted((r for r in rs if r["us"] is not None), key=lambda r: r["us"])
    cub = next(r for r in rs if r["config"] == "cublas")
    heur = next(r for r in rs if r["config"].startswith("heuristic"))
    best = [r for r in ok if r["config"] != "cublas" and not r["config"].startswith("heuristic")][:3]
    line = f"{key[0]} {key[1]:8s} m{key[2]}: cublas {cub['us']:.1f}us ({cub['pct']:.0f}%)"
    line += f" | heur {heur['us']:.1f}us ({heur['pct']:.0f}%)" if heur["us"] else " | heur FAIL"
    return line + " | best " + "; ".join(f"{r['config']} {r['us']:.1f}us ({r['pct']:.0f}%)" for r in best)


def report(rows: list[dict], read_bw: float, out: str | None, done: tuple) -> None:
    """Write every row so far (a run cut short keeps what it measured) and print the finished shape."""
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gemv_sweep.json").write_text(json.dumps({"read_bw": read_bw, "rows": rows}, indent=1))
    for key in sorted({(r["model"], r["shape"], r["m"]) for r in rows if (r["model"], r["shape"]) == done}):
        print(summary(rows, key), flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="llama-1b,llama-8b")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--shapes", default="qkv,o,gate_up,down,lm_head")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--quick", action="store_true",
                    help="only the heuristic's tiles with and without the register double-buffer, and 8 rows")
    args = ap.parse_args()
    dev = torch.device("cuda")
    torch.manual_seed(0)
    read_bw = read_bandwidth(dev)
    rows: list[dict] = []
    for model in args.models.split(","):
        for name in args.shapes.split(","):
            n, k = SHAPES[model][name]
            copies = max(1, math.ceil((512 << 20) / (n * k * 2)))
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5 for _ in range(copies)]
            for m in map(int, args.batches.split(",")):
                Case(model, name, m, ws, read_bw, rows).run_all(args.quick)
            del ws
            torch.cuda.empty_cache()
            report(rows, read_bw, args.out, (model, name))
    print(f"{torch.cuda.get_device_name()}: read bandwidth {read_bw / 1e9:.0f} GB/s (x.sum(), graph replay)")
    for key in sorted({(r["model"], r["shape"], r["m"]) for r in rows}, key=lambda t: (t[0], t[2], t[1])):
        print(summary(rows, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
