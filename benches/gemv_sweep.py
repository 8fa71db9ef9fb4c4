"""Which tiles make the small-M linear stream at HBM bandwidth? A config sweep against cuBLAS.

    PYTHONPATH=. python benches/gemv_sweep.py --batches 1 --out DIR      # register path, ~100 configs per shape
    PYTHONPATH=. python benches/gemv_sweep.py --batches 1 --quick        # the heuristic +- double buffer
    PYTHONPATH=. python benches/gemv_sweep.py --tensor-cores --out DIR   # M = 8/16/32 tensor-core path, < 3 min
    PYTHONPATH=. python benches/gemv_sweep.py --smoke                    # CPU: the grids and tables (CI)

Each decode projection of the Llama-3.2-1B and Llama-3-8B shapes (merged q/k/v, o, merged gate/up,
down, lm head), bf16, is run by cuBLAS (``F.linear``), by ``linear``'s own choice (its heuristic config,
or cuBLAS above ``SMALL_M`` rows) and by every config of a grid: for M <= 2 the register-FMA path
(tile rows ``BLOCK_N``, tile width ``BLOCK_K``, split-K, warps); with ``--tensor-cores`` the ``tl.dot``
path at M = 8, 16, 32 (``--tc-batches``; ``BLOCK_M`` = 16, or 32 for M > 16, which the library itself
never runs: the sweep says whether it should) over ``BLOCK_N`` x ``BLOCK_K`` tiles, split-K 1..8, warps
and stages. The down projection is timed as the decode step runs it, ``gated_linear`` (x = silu(gate) *
up formed as it is loaded), against ``F.linear(F.silu(g) * u, w)``.

Method: the timed function runs the projection over ``copies`` distinct weight tensors (together at
least ``--stream-mb``, default 512 MB, ten times the H200's 50 MB L2; 256 with ``--tensor-cores``), so
every weight comes from HBM as in a real decode step, where a layer's weights are long evicted when the
next token needs them. It is warmed up, captured in a CUDA graph *on the stream it was warmed up on*
(split launches count into per-stream arrival counters that must exist before a capture on that stream:
``kernels/_launch.split_counters``; ``triton.testing.do_bench_cudagraph`` captures on another stream)
and replayed; time per product = median replay / copies, so launch gaps inside a graph are in the number,
Python's are not. Every config is checked against the torch result (bf16 tolerance) before it is timed.
Prints per shape and M: cuBLAS, the library's choice, the best three; then per M the config with the best
geometric-mean time over all shapes (a candidate for one ``pick_config`` rule). Writes
``benches/results/gemv_sweep[-tc]-<gpu>-<date>.json`` and a copy under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug, write_record  # noqa: E402
from benches._timing import graph_time  # noqa: E402
from membound.backends.triton.kernels._launch import cdiv, next_pow2  # noqa: E402
from membound.backends.triton.kernels.linear import (  # noqa: E402
    RESIDENT_ENV,
    SMALL_M,
    LinearConfig,
    gated_linear,
    launch_config,
    linear,
    linear_bytes,
    linear_glu,
    pick_config,
)

SHAPES = {
    "llama-1b": {"qkv": (3072, 2048), "o": (2048, 2048), "gate_up": (16384, 2048), "down": (2048, 8192),
                 "lm_head": (128256, 2048), "gate_up_glu": (16384, 2048), "down_plain": (2048, 8192)},
    "llama-8b": {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
                 "lm_head": (128256, 4096), "gate_up_glu": (28672, 4096), "down_plain": (4096, 14336)},
}
GATED = ("down",)  # the step ran these as gated_linear before fuse-linear-glu; down_plain: as it runs it now
# the merged gate/up weight [2N, K] as the step runs it since fuse-linear-glu: linear_glu (silu(gate) * up in the
# GEMV's epilogue, an [M, N] output; BLOCK_N counts output columns, each program streams twice as many weight rows),
# against cuBLAS's [M, 2N] product followed by torch's silu and multiply; not in the default --shapes
GLU = ("gate_up_glu",)
LIBRARY = "library"  # the row of linear's own config choice (its description in the row's "chosen")
TC_TILES = ((16, 128), (32, 64), (32, 128), (32, 256), (64, 128))  # (BLOCK_N, BLOCK_K)
TC_SPLITS = (1, 2, 4, 8)
SWAP_TILES = ((64, 64), (64, 128), (128, 64), (128, 128))  # (BLOCK_N, BLOCK_K) of the swapped product


def grid(m: int, glu: bool = False) -> list[LinearConfig]:
    """The register-FMA grid (M <= 2); ``glu``: the same weight rows per program (half the output columns)."""
    tiles = ((4, 512), (8, 256), (8, 512), (16, 256), (16, 512), (32, 256))
    if glu:
        tiles = ((2, 512), (2, 1024), (4, 256), (4, 512), (8, 256), (8, 512), (16, 256))
    return [LinearConfig(1 if m == 1 else 2, bn, bk, split, False, warps, 3)
            for (bn, bk), split, warps in itertools.product(tiles, (1, 2, 4, 8), (4, 8))]


def tc_grid(m: int, swap: bool = False) -> list[LinearConfig]:
    """The tensor-core grid at M rows: tiles x split-K at 4 warps / 4 stages (the library's), and the two
    widest tiles at 8 warps / 3 stages unsplit; BLOCK_M = 16 up to 16 rows, else 32. 22 configs, each a
    Triton compile per BLOCK_M and gated-or-not: most of the run's time. ``swap``: the swapped product (W as
    the MMA's A operand, 64 or 128 rows a tile: a Hopper warpgroup MMA) over tiles x split-K x stages."""
    block_m = 16 if m <= 16 else 32
    if swap:
        out = [LinearConfig(block_m, bn, bk, split, True, 4, 4, swap=True)
               for (bn, bk), split in itertools.product(SWAP_TILES, (1, 2, 4))]
        return out + [LinearConfig(block_m, bn, bk, split, True, 4, stages, swap=True)
                      for (bn, bk, stages), split in itertools.product(((64, 128, 6), (128, 64, 8)), (2, 4))]
    out = [LinearConfig(block_m, bn, bk, split, True, 4, 4) for (bn, bk), split in itertools.product(TC_TILES,
                                                                                                     TC_SPLITS)]
    return out + [LinearConfig(block_m, bn, bk, 1, True, 8, 3) for bn, bk in ((64, 128), (32, 256))]


def describe(c: LinearConfig) -> str:
    kind = ('swap' if c.swap else 'dot' if c.use_dot else ('row' if c.row else 'res') if c.resident
            else 'rowloop' if c.row else 'fma')
    return (f"{kind} {c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} "
            f"w{c.num_warps} st{c.num_stages}{'' if c.prefetch or c.use_dot else ' noprefetch'}")


def read_bandwidth(dev: torch.device) -> float:
    """Bytes per second of ``x.sum()`` over 2 GiB of bf16, by CUDA-graph replay."""
    big = torch.randn(1 << 30, dtype=torch.bfloat16, device=dev)
    return big.nbytes / graph_time(big.sum)


class Case:
    """One projection shape at one M: checks then times cuBLAS, the library's choice and a grid's configs."""

    def __init__(self, model: str, shape: str, m: int, ws: list[torch.Tensor], read_bw: float,
                 rows: list[dict]) -> None:
        self.model, self.shape, self.m, self.ws, self.read_bw, self.rows = model, shape, m, ws, read_bw, rows
        n, k = ws[0].shape
        self.gated = shape in GATED
        self.glu = shape in GLU
        dev = ws[0].device
        self.x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
        self.up = torch.randn(m, k, device=dev, dtype=torch.bfloat16) if self.gated else None
        self.outs = [torch.empty(m, n // 2 if self.glu else n, device=dev, dtype=torch.bfloat16) for _ in ws]
        self.want = self.reference(ws[0]).float()
        # a gated product reads x twice (gate and up): one more x-sized read
        self.nbytes = linear_bytes(m, n, k, torch.bfloat16) + (m * k * 2 if self.gated else 0)

    def reference(self, w: torch.Tensor) -> torch.Tensor:
        if self.glu:
            g, u = F.linear(self.x, w).chunk(2, dim=-1)
            return F.silu(g) * u
        x = F.silu(self.x) * self.up if self.gated else self.x
        return F.linear(x, w)

    def ours(self, w: torch.Tensor, o: torch.Tensor, config: Optional[LinearConfig]) -> torch.Tensor:
        if self.glu:
            return linear_glu(self.x, w, out=o, config=config, static_weight=True)
        if self.gated:
            return gated_linear(self.x, self.up, w, out=o, config=config, static_weight=True)
        return linear(self.x, w, out=o, config=config, static_weight=True)

    @staticmethod
    def _silu_halves(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        g, u = y.chunk(2, dim=-1)
        return F.silu(g), u

    def row(self, config: str, **fields: object) -> None:
        self.rows.append(dict(model=self.model, shape=self.shape, m=self.m, gated=self.gated, config=config,
                              **fields))

    def timed(self, label: str, fn_one: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **extra: object) -> None:
        try:
            got = fn_one(self.ws[0], self.outs[0]).float()
        except Exception as exc:  # noqa: BLE001 (a config Triton cannot compile: out of resources)
            self.row(label, us=None, err=str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__, **extra)
            return
        err = float((got - self.want).abs().max())
        if not err <= 2e-2 * float(self.want.abs().max()) + 1e-2:
            self.row(label, us=None, err=err, **extra)
            return

        def run() -> None:
            for w, o in zip(self.ws, self.outs):
                fn_one(w, o)

        t = graph_time(run) / len(self.ws)
        self.row(label, us=t * 1e6, err=err, gbps=self.nbytes / t / 1e9, pct=100 * self.nbytes / t / self.read_bw,
                 **extra)

    def run_all(self, configs: list[LinearConfig], quick: bool) -> None:
        n, k = self.ws[0].shape
        if self.glu:
            self.timed("cublas", lambda w, o: torch.mul(*self._silu_halves(torch.mm(self.x, w.t())), out=o))
        else:
            self.timed("cublas", lambda w, o: torch.mm(F.silu(self.x) * self.up if self.gated else self.x, w.t(),
                                                       out=o))
        # "library": linear's own choice at this shape (its heuristic config, or cuBLAS above SMALL_M rows)
        # (linear_glu: the paired tiles over its n = 2N merged rows, block_n in output columns)
        chosen = "cublas" if self.m > SMALL_M else describe(
            launch_config(self.m, n // 2 if self.glu else n, k, torch.bfloat16, self.x.device, glu=self.glu))
        self.timed(LIBRARY, lambda w, o: self.ours(w, o, None), chosen=chosen)
        if quick:  # a few neighbours of the heuristic's config
            heur = pick_config(min(self.m, SMALL_M), n, k, torch.bfloat16, self.x.device)
            heur = replace(heur, block_m=max(heur.block_m, configs[0].block_m)) if configs else heur
            if self.m <= 2:
                configs = [replace(heur, prefetch=False), replace(heur, block_n=8),
                           replace(heur, block_n=8, prefetch=False)]
            else:
                configs = [heur, replace(heur, split_k=1), replace(heur, block_n=64), replace(heur, num_stages=3)]
        for cfg in configs:
            if cfg.block_m < self.m:
                continue
            self.timed(describe(cfg), lambda w, o, c=cfg: self.ours(w, o, c))


# ---- reports: pure functions of the rows -----------------------------------------------------------------

def summary(rows: list[dict], key: tuple) -> str:
    """cuBLAS, the library's choice and the best three configs of one (model, shape, M)."""
    rs = [r for r in rows if (r["model"], r["shape"], r["m"]) == key]
    ok = sorted((r for r in rs if r["us"] is not None), key=lambda r: r["us"])
    cub = next((r for r in rs if r["config"] == "cublas"), None)
    lib = next((r for r in rs if r["config"] == LIBRARY), None)
    best = [r for r in ok if r["config"] not in ("cublas", LIBRARY)][:3]
    line = f"{key[0]} {key[1]:8s} m{key[2]}: "
    line += f"cublas {cub['us']:.1f}us ({cub['pct']:.0f}%)" if cub and cub["us"] else "cublas FAIL"
    line += (f" | library ({lib.get('chosen')}) {lib['us']:.1f}us ({lib['pct']:.0f}%)" if lib and lib["us"]
             else " | library FAIL")
    return line + " | best " + "; ".join(f"{r['config']} {r['us']:.1f}us ({r['pct']:.0f}%)" for r in best)


def best_overall(rows: list[dict], m: int) -> list[tuple[str, float, int]]:
    """Configs timed on every shape at ``m``, by the geometric mean of their time over the best time per
    shape: (config, geomean ratio, shapes), best first."""
    keys = sorted({(r["model"], r["shape"]) for r in rows if r["m"] == m})
    best = {}
    for key in keys:
        times = [r["us"] for r in rows if (r["model"], r["shape"], r["m"]) == (*key, m) and r["us"]]
        if times:
            best[key] = min(times)
    ratios: dict[str, list[float]] = {}
    for r in rows:
        key = (r["model"], r["shape"])
        if r["m"] == m and r["us"] and key in best and r["config"] != "cublas":
            ratios.setdefault(r["config"], []).append(r["us"] / best[key])
    full = [(c, math.exp(sum(map(math.log, v)) / len(v)), len(v)) for c, v in ratios.items() if len(v) == len(best)]
    return sorted(full, key=lambda t: t[1])


def report(rows: list[dict], ms: list[int]) -> str:
    lines = [summary(rows, key) for key in sorted({(r["model"], r["shape"], r["m"]) for r in rows},
                                                  key=lambda t: (t[0], t[2], t[1]))]
    for m in ms:
        ranked = best_overall(rows, m)
        if ranked:
            lines.append(f"m{m}: best over all shapes (geomean time / best per shape): " + "; ".join(
                f"{c} {g:.3f}" for c, g, _ in ranked[:3]))
            lib = next((g for c, g, _ in ranked if c == LIBRARY), None)
            if lib is not None:
                lines.append(f"m{m}: the library's own choice: {lib:.3f}")
    return "\n".join(lines)


def write(record: dict, stem: str, out: Optional[str], smoke: bool) -> list[Path]:
    return write_record(record, f"{stem}.json", out, smoke)


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="llama-1b,llama-8b")
    ap.add_argument("--batches", default="1,8", help="M values of the default sweep (M <= 2: register grid)")
    ap.add_argument("--shapes", default="qkv,o,gate_up,down,lm_head")
    ap.add_argument("--out", default=os.environ.get("OUT"))
    ap.add_argument("--quick", action="store_true",
                    help="only neighbours of the heuristic's config (M <= 2: without the register double-buffer, "
                         "8 rows; tensor cores: unsplit, 64 rows, 3 stages)")
    ap.add_argument("--tensor-cores", action="store_true", help="the tl.dot path at --tc-batches over its grid")
    ap.add_argument("--tc-batches", default="8,16,32")
    ap.add_argument("--swap", action="store_true", help="with --tensor-cores: the swapped product's grid (W as "
                                                        "the MMA's A operand) instead of the plain one")
    ap.add_argument("--resident", action="store_true", help="the resident register tiles' grid at each M (each "
                                                           "program's K range loaded whole before the PDL wait)")
    ap.add_argument("--stream-mb", type=int, default=None, help="weight copies per replay (default 512; 256 with "
                                                                   "--tensor-cores)")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="start no new (shape, M) case after this many seconds (default 170 with --tensor-cores: "
                         "Triton compiles a kernel per config, the run's main cost)")
    ap.add_argument("--smoke", action="store_true", help="CPU: build the grids and the report from made-up rows")
    args = ap.parse_args(argv)
    if args.budget_s is None and args.tensor_cores:
        args.budget_s = 170.0
    args.ms = [int(b) for b in (args.tc_batches if args.tensor_cores else args.batches).split(",") if b]
    if args.stream_mb is None:
        args.stream_mb = 256 if args.tensor_cores else 512
    unknown = [s for s in args.shapes.split(",") if s not in SHAPES["llama-1b"]]
    if unknown or not args.ms or min(args.ms) < 1:
        ap.error(f"--shapes from {list(SHAPES['llama-1b'])}, positive batches (got shapes {unknown}, ms {args.ms})")
    return args


# the register loop's one-row form in the resident grid at M = 1 (rows, columns a step, split): the tiles for a K
# longer than one resident tile (the down projections), timed beside the resident ones everywhere
ROW_LOOP_TILES = ((2, 2048, 1), (4, 1024, 1), (4, 2048, 1), (8, 1024, 1), (8, 512, 1), (4, 1024, 2))


def resident_grid(m: int, k: int, glu: bool = False) -> list[LinearConfig]:
    """The resident register tiles (``LinearConfig.resident``: each program's K range one tile, loaded before the
    PDL wait) at M rows (``BLOCK_M`` its power of two; the library runs them at M <= 2) and reduction K: K unsplit
    (8K, 16K or 32K weight elements a program) or split in two (8K or 16K), ``BLOCK_K`` the split's width as a
    power of two, at most 8192; ``glu``: half of a program's rows are output columns' gate rows, half up rows;
    4 warps; at M = 1 each in its one-row form instead, and the register loop's one-row form (ROW_LOOP_TILES)."""
    out = []
    for split in (1, 2):
        bk = max(16, next_pow2(cdiv(k, split)))
        if bk > 8192 or (split > 1 and cdiv(k, bk) < split):
            continue
        for elems, warps in ((8192, 4), (16384, 4), (32768, 4))[:3 if split == 1 else 2]:
            bn = elems // bk // (2 if glu else 1)
            if bn >= 1:
                out.append(LinearConfig(next_pow2(m), bn, bk, split, False, warps, 3, resident=True))
    if m == 1:  # the one-row form of each (x reduced as a vector: LinearConfig.row), and the register loop's
        out = [replace(c, row=True) for c in out]  # (the 2-D tiles lost to it on every shape: session 14)
        out += [LinearConfig(1, bn // (2 if glu else 1) or 1, bk, split, False, 4, 3, row=True)
                for bn, bk, split in ROW_LOOP_TILES if bk <= max(16, next_pow2(k))]
    return out


def configs_for(m: int, glu: bool = False, swap: bool = False, resident_k: Optional[int] = None) -> list[LinearConfig]:
    """The grid at M rows: the register path up to 2 rows, the tensor-core path above (``glu``: a linear_glu
    shape, whose register tiles count output columns); ``swap``: the swapped product's grid at every M;
    ``resident_k``: the resident register tiles at that K (at any M)."""
    if resident_k is not None:
        return resident_grid(m, resident_k, glu)
    return tc_grid(m, swap) if swap or m > 2 else grid(m, glu)


def without_resident(m: int, n: int, k: int, glu: bool, dev: torch.device) -> LinearConfig:
    """The config ``linear`` (or ``linear_glu``, its output-column tiles) picks with the resident tiles off."""
    saved = os.environ.get(RESIDENT_ENV)
    os.environ[RESIDENT_ENV] = "0"
    try:
        return launch_config(m, n // 2 if glu else n, k, torch.bfloat16, dev, glu=glu)
    finally:
        if saved is None:
            del os.environ[RESIDENT_ENV]
        else:
            os.environ[RESIDENT_ENV] = saved


def smoke(args: argparse.Namespace) -> int:
    """Made-up timings through the grids, the summaries and the writer (no GPU)."""
    rows: list[dict] = []
    for i, (model, shape) in enumerate([("llama-1b", "o"), ("llama-8b", "down")]):
        for m in args.ms:
            rows.append(dict(model=model, shape=shape, m=m, gated=shape in GATED, config="cublas", us=10.0 + i,
                             pct=50.0))
            rows.append(dict(model=model, shape=shape, m=m, gated=shape in GATED, config=LIBRARY, chosen="x",
                             us=9.0 + i, pct=55.0))
            for j, cfg in enumerate(configs_for(m)[:4]):
                rows.append(dict(model=model, shape=shape, m=m, gated=shape in GATED, config=describe(cfg),
                                 us=8.0 + i + j, pct=60.0))
    record = {"bench": "gemv_sweep", "device": "cpu", "rows": rows, "args": vars(args)}
    write(record, "gemv_sweep-smoke", args.out, True)
    print(report(rows, args.ms))
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        return smoke(args)
    if not torch.cuda.is_available():
        print("gemv_sweep: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    dev = torch.device("cuda")
    torch.manual_seed(0)
    read_bw = read_bandwidth(dev)
    rows: list[dict] = []
    gpu, date = torch.cuda.get_device_name(), datetime.date.today().isoformat()
    kind = ("-tc" if args.tensor_cores else "") + ("-swap" if args.swap else "") + ("-quick" if args.quick else "")
    kind += "-resident" if args.resident else ""
    stem = f"gemv_sweep{kind}-{gpu_slug(gpu)}-{date}"
    record = {"bench": "gemv_sweep", "device": gpu, "date": date, "read_bw": read_bw, "args": vars(args),
              "method": __doc__.split("\n\n", 2)[2].strip(), "rows": rows,
              "grid": {m: [asdict(c) for c in configs_for(m, swap=args.swap)] for m in args.ms}}
    start = time.perf_counter()
    for model in args.models.split(","):
        for name in args.shapes.split(","):
            if args.budget_s and time.perf_counter() - start > args.budget_s:
                record.setdefault("skipped", []).append(f"{model} {name}: time budget ({args.budget_s:.0f} s) spent")
                print(record["skipped"][-1], flush=True)
                continue
            n, k = SHAPES[model][name]
            copies = max(1, math.ceil((args.stream_mb << 20) / (n * k * 2)))
            ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) * k ** -0.5 for _ in range(copies)]
            for m in args.ms:
                grid_m = configs_for(m, name in GLU, args.swap, k if args.resident else None)
                if args.resident and m <= SMALL_M:  # beside the resident grid: what the library picks without it
                    grid_m = [without_resident(m, n, k, name in GLU, dev)] + grid_m
                Case(model, name, m, ws, read_bw, rows).run_all(grid_m, args.quick)
                print(summary(rows, (model, name, m)), flush=True)
            del ws
            torch.cuda.empty_cache()
            write(record, stem, args.out, False)  # a run cut short keeps what it measured
    paths = write(record, stem, args.out, False)
    print(f"{gpu}: read bandwidth {read_bw / 1e9:.0f} GB/s (x.sum(), graph replay); wrote "
          f"{', '.join(map(str, paths))}")
    print(report(rows, args.ms))
    return 0


if __name__ == "__main__":
    sys.exit(main())
