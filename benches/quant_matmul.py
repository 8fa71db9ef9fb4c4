"""Do the quantized matmuls turn fewer weight bytes into less time? int8 / int4 / fp8 vs bf16, decode shapes.

    PYTHONPATH=. python benches/quant_matmul.py                 # CUDA GPU, ~3 minutes on an H200
    PYTHONPATH=. python benches/quant_matmul.py --quick         # two shapes, M = 1 and 16
    PYTHONPATH=. python benches/quant_matmul.py --sweep         # tile sweep per (scheme, shape, M), ~6 min
    PYTHONPATH=. python benches/quant_matmul.py --smoke         # CPU, Triton interpreter, tiny (checks the script)

Shapes (N x K, as issue 10 lists them): 4096x4096, 4096x14336, 14336x4096, 2048x8192, 128256x2048, at
M = 1, 4, 16, 32, 64 rows, bf16 activations. Contenders for each: cuBLAS bf16 (``F.linear``), our bf16
``linear`` (its own path choice: the GEMV kernel up to M = 16, cuBLAS above), and ``quant_linear`` with
int8 (per channel), int4 (group 128) and fp8 e4m3 (sm_89+ only); at M = 1 also the gated forms (our bf16
``gated_linear``, int8/int4 ``quant_gated_linear``: a down projection, x = silu(gate) * up formed as it
is loaded, one more x-sized read counted in the bytes); at M = 64 also both prefill paths of int8/int4
forced (``fused``: the kernel, ``dequant+cublas``: dequantize to a temporary, then cuBLAS), so the cost
rule's measured rates (``quant_matmul.measured_rates``, from the step priors) can be checked.

Method (``/work/shared/BENCHMARKS.md``, ``benches/gemv_sweep.py``): every contender is checked against
``F.linear(x, dequantize(...))`` first (bf16 tolerance); then the timed function runs the product over
``copies`` distinct copies of the weight (together >= 256 MB, five times the H200's L2) so every weight
streams from HBM, captured in a CUDA graph and replayed (``triton.testing.do_bench_cudagraph``, median),
time per product = replay / copies. Effective GB/s = bytes that must move (packed weight + scales + x +
out: ``quant_linear_bytes``; bf16: weight + x + out) / time, and % of the read bandwidth of ``x.sum()``
over 2 GiB measured in the same run. Speedups are over our bf16 ``linear`` and over cuBLAS in the same
run. Goals (issue 10) at M = 1: int8 >= 1.8x and int4 >= 3.2x our bf16 GEMV, >= 85% of read bandwidth
on effective bytes; at M = 16 int4 >= 2.5x: printed as a check list at the end.

``--sweep`` times a grid of ``QuantConfig`` s around the heuristic for each (scheme, shape, M) of
``--sweep-ms`` and prints the best three and the heuristic's time, so ``pick_config`` can be tuned
from one run. Writes ``benches/results/quant_matmul[-sweep]-<gpu>-<date>.json`` (and a copy under
``--out``) and prints the table last.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import itertools
import math
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug, write_record  # noqa: E402

SHAPES = [(4096, 4096), (4096, 14336), (14336, 4096), (2048, 8192), (128256, 2048)]
MS = (1, 4, 16, 32, 64)
SCHEMES = (("int8", 0), ("int4", 128), ("fp8", 0))
STREAM_BYTES = 256 << 20  # weight copies per timed replay: ~5x the H200's L2


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="4096x4096 and 4096x14336 at M = 1, 16 only")
    p.add_argument("--sweep", action="store_true", help="tile sweep instead of the contender table")
    p.add_argument("--sweep-ms", default="1,16", help="M values the sweep covers (default 1,16)")
    p.add_argument("--sweep-schemes", default="int8,int4", help="schemes the sweep covers (int8,int4,fp8)")
    p.add_argument("--shapes", default=None, help="NxK list, e.g. 4096x4096,128256x2048 (default: all five)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for a copy of the result file")
    p.add_argument("--smoke", action="store_true", help="CPU + Triton interpreter, tiny sizes (checks the script)")
    p.add_argument("--ms", default=None, help="M values of the contender table, e.g. 64 (default 1,4,16,32,64)")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
    import torch

    if not args.smoke and not torch.cuda.is_available():
        print("quant_matmul: needs a CUDA GPU (or --smoke for a CPU run at tiny sizes)", file=sys.stderr)
        return 2
    bench = Bench(args.smoke)
    bench.target = (args.out, "quant_matmul-sweep" if args.sweep else "quant_matmul")
    shapes = [(48, 80), (33, 77)] if args.smoke else SHAPES
    if args.shapes:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    ms = (1, 5, 40) if args.smoke else MS
    if args.quick and not args.shapes:
        shapes = shapes[:2]
    if args.quick:
        ms = (1, 16) if not args.smoke else (1, 5)
    if args.ms:
        ms = tuple(int(v) for v in args.ms.split(","))
    t0 = time.perf_counter()
    if args.sweep:
        sweep_ms = (1, 5) if args.smoke else tuple(int(v) for v in args.sweep_ms.split(","))
        bench.sweep(shapes, sweep_ms, args.sweep_schemes.split(","), quick=args.quick)
    else:
        bench.run(shapes, ms)
    bench.write(*bench.target)
    if args.sweep:
        bench.print_sweep()
    else:
        bench.print_table()
    print(f"[{time.perf_counter() - t0:.0f} s]")
    return 0


class Bench:
    def __init__(self, smoke: bool) -> None:
        import torch

        self.torch = torch
        self.smoke = smoke
        self.device = torch.device("cpu" if smoke else "cuda")
        self.dtype = torch.float16 if smoke else torch.bfloat16  # bf16 is broken in the interpreter
        self.gen = torch.Generator(device=self.device).manual_seed(0)
        self.rows: list[dict] = []
        self.target: tuple[Optional[str], str] = (None, "quant_matmul")
        self.fp8 = smoke or torch.cuda.get_device_capability() >= (8, 9)
        self.read_bw = self._read_bandwidth()

    # ---- measuring ---------------------------------------------------------------------------
    def _read_bandwidth(self) -> float:
        """Bytes per second of ``x.sum()`` over 2 GiB of bf16 (graph replay)."""
        n = (4 << 20) if self.smoke else (2 << 30)
        x = self.torch.randn(n // 2, device=self.device, generator=self.gen).to(self.torch.bfloat16)
        return x.nbytes / self.time_s(lambda: x.sum())

    def time_s(self, fn: Callable[[], Any], rep: int = 30) -> float:
        if self.smoke:
            fn()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        import statistics

        import torch

        # as triton.testing.do_bench_cudagraph, but warmed up and captured on one stream: split kernels'
        # arrival counters are made per stream before any capture on it (_launch.split_counters)
        stream = torch.cuda.Stream()
        with torch.cuda.stream(stream):
            fn()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(5):
                fn()
            end.record()
            torch.cuda.synchronize()
            n = max(1, int(rep / max(start.elapsed_time(end) / 5, 1e-3)))
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(n):
                    fn()
            torch.cuda.synchronize()
            times = []
            for _ in range(10):
                start.record()
                graph.replay()
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / n)
        return statistics.median(times) * 1e-3

    def copies(self, t: Any) -> list[Any]:
        """``t`` and clones of it, together >= STREAM_BYTES (so a replay streams them from HBM)."""
        n = 1 if self.smoke else max(1, math.ceil(STREAM_BYTES / (t.numel() * t.element_size())))
        return [t] + [t.clone() for _ in range(n - 1)]

    def measure(self, call: Callable[..., Any], argsets: list[tuple], want: Any, rep: int = 30) -> dict:
        """Check ``call(*argsets[0])`` against ``want``, then time ``call`` over every argument set (one per
        weight copy): {us per call, err}, or {us: None, err: why}."""
        try:
            got = call(*argsets[0]).float()
        except Exception as exc:  # noqa: BLE001 (a config Triton cannot compile: out of resources)
            return {"us": None, "err": str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}
        err = float((got - want).abs().max())
        scale = float(want.abs().max()) or 1.0
        if not err <= 3e-2 * scale + 3e-2:
            return {"us": None, "err": f"WRONG: max error {err:.3g} (output scale {scale:.3g})"}

        def run() -> None:
            for args in argsets:
                call(*args)

        return {"us": self.time_s(run, rep) / len(argsets) * 1e6, "err": err}

    def add(self, shape: tuple[int, int], m: int, contender: str, res: dict, nbytes: int, **extra: Any) -> None:
        row = dict(n=shape[0], k=shape[1], m=m, contender=contender, bytes=nbytes, **res, **extra)
        if res["us"]:
            row["gbps"] = nbytes / res["us"] / 1e3
            row["pct_read"] = 100 * nbytes / (res["us"] * 1e-6) / self.read_bw
        self.rows.append(row)

    # ---- the contender table -----------------------------------------------------------------
    def run(self, shapes: list[tuple[int, int]], ms: tuple[int, ...]) -> None:
        import torch
        import torch.nn.functional as F

        from membound.backends.triton.kernels.linear import linear_bytes
        from membound.backends.triton.kernels.quant_matmul import pick_config, quant_linear_bytes
        from membound.ir.ops.quant import dequantize, quantize

        for n, k in shapes:
            w = (torch.randn(n, k, device=self.device, generator=self.gen) * k ** -0.5).to(self.dtype)
            xs = {m: torch.randn(m, k, device=self.device, generator=self.gen).to(self.dtype) for m in ms}
            ups = {m: torch.randn(m, k, device=self.device, generator=self.gen).to(self.dtype) for m in ms}
            ws = self.copies(w)
            outs = {m: [torch.empty(m, n, device=self.device, dtype=self.dtype) for _ in ws] for m in ms}
            for m in ms:
                want = F.linear(xs[m].float(), w.float())
                argsets = [(xs[m], wi, oi) for wi, oi in zip(ws, outs[m])]
                nb = linear_bytes(m, n, k, self.dtype)
                self.add((n, k), m, "cublas bf16", self.measure(_mm, argsets, want), nb)
                self.add((n, k), m, "ours bf16", self.measure(_linear, argsets, want), nb)
                if m == 1:  # the gated form (a down projection: silu(gate) * up formed as x is loaded)
                    want_g = F.linear((F.silu(xs[m]) * ups[m]).float(), w.float())
                    gsets = [(xs[m], ups[m], wi, oi) for wi, oi in zip(ws, outs[m])]
                    self.add((n, k), m, "ours bf16 gated", self.measure(_gated_linear, gsets, want_g),
                             nb + m * k * w.element_size())
            ws.clear()
            outs.clear()
            for scheme, group in SCHEMES:
                if scheme == "fp8" and not self.fp8:
                    continue
                q, s = quantize(w, scheme, group or 128)
                wq = dequantize(q, s, scheme, group, k, torch.float32)
                qs = self.copies(q)
                ss = [s] + [s.clone() for _ in qs[1:]]
                attrs = dict(scheme=scheme, group_size=group, in_features=k)
                label = f"{scheme}" + (f" g{group}" if group else "")
                for m in ms:
                    want = F.linear(xs[m].float(), wq)
                    argsets = [(xs[m], qi, si, torch.empty(m, n, device=self.device, dtype=self.dtype))
                               for qi, si in zip(qs, ss)]  # one output per copy (more copies than bf16 had)
                    nb = quant_linear_bytes(m, n, k, scheme, group, self.dtype)
                    res = self.measure(functools.partial(_quant, **attrs), argsets, want)
                    self.add((n, k), m, label, res, nb, scheme=scheme)
                    if m == 1 and scheme != "fp8":
                        want_g = F.linear((F.silu(xs[m]) * ups[m]).float(), wq)
                        gsets = [(xs[m], ups[m]) + a[1:] for a in argsets]
                        res = self.measure(functools.partial(_quant_gated, **attrs), gsets, want_g)
                        self.add((n, k), m, label + " gated", res, nb + m * k * xs[m].element_size(), scheme=scheme)
                    if m > 32 and scheme != "fp8":
                        cfg = pick_config(m, n, k, scheme, group, self.dtype, self.device)
                        res = self.measure(functools.partial(_quant, config=cfg, **attrs), argsets, want)
                        self.add((n, k), m, label + " fused", res, nb, scheme=scheme)
                        res = self.measure(functools.partial(_dequant_mm, **attrs), argsets, want)
                        self.add((n, k), m, label + " dequant+cublas", res, nb, scheme=scheme)
                qs.clear()
                ss.clear()
            if not self.smoke:
                torch.cuda.empty_cache()
            self.write(*self.target)  # a run cut short keeps what it measured
            print(f"done {n}x{k}", flush=True)

    # ---- the sweep ---------------------------------------------------------------------------
    def sweep(self, shapes: list[tuple[int, int]], ms: tuple[int, ...], schemes: list[str], quick: bool) -> None:
        import torch
        import torch.nn.functional as F

        from membound.backends.triton.kernels.quant_matmul import pick_config, quant_linear_bytes
        from membound.ir.ops.quant import dequantize, quantize

        groups = {"int8": 0, "int4": 128, "fp8": 0}
        for n, k in shapes:
            w = (torch.randn(n, k, device=self.device, generator=self.gen) * k ** -0.5).to(self.dtype)
            for scheme in schemes:
                if scheme == "fp8" and not self.fp8:
                    continue
                group = groups[scheme]
                q, s = quantize(w, scheme, group or 128)
                wq = dequantize(q, s, scheme, group, k, torch.float32)
                qs = self.copies(q)
                ss = [s] + [s.clone() for _ in qs[1:]]
                attrs = dict(scheme=scheme, group_size=group, in_features=k)
                for m in ms:
                    x = torch.randn(m, k, device=self.device, generator=self.gen).to(self.dtype)
                    argsets = [(x, qi, si, torch.empty(m, n, device=self.device, dtype=self.dtype))
                               for qi, si in zip(qs, ss)]
                    want = F.linear(x.float(), wq)
                    nb = quant_linear_bytes(m, n, k, scheme, group, self.dtype)
                    heur = pick_config(m, n, k, scheme, group, self.dtype, self.device)
                    grid = sweep_grid(scheme, group, m, heur, quick, n, k, self.device)
                    configs = [heur] + [c for c in grid if c != heur]
                    for c in configs:
                        res = self.measure(functools.partial(_quant, config=c, **attrs), argsets, want, rep=20)
                        self.add((n, k), m, describe(c), res, nb, scheme=scheme, heuristic=c == heur,
                                 config=asdict(c))
                    print(sweep_line(self.rows, n, k, m, scheme), flush=True)
                qs.clear()
                ss.clear()
            if not self.smoke:
                torch.cuda.empty_cache()
            self.write(*self.target)  # a run cut short keeps what it measured

    # ---- reporting ---------------------------------------------------------------------------
    def device_name(self) -> str:
        return self.torch.cuda.get_device_name() if not self.smoke else "cpu-interpreter"

    def write(self, out: Optional[str], bench: str) -> None:
        import triton

        date = datetime.date.today().isoformat()
        name = self.device_name()
        record = {"bench": bench, "device": name, "date": date, "smoke": self.smoke,
                  "versions": {"torch": self.torch.__version__, "triton": triton.__version__},
                  "read_bandwidth_gbps": self.read_bw / 1e9, "stream_bytes": STREAM_BYTES,
                  "bytes_formula": "packed weight + scales + x + out (quant_linear_bytes); bf16: W + x + out",
                  "rows": self.rows}
        self.written = write_record(record, f"{bench}-{gpu_slug(name)}-{date}.json", out, self.smoke)

    def header(self) -> None:
        print(f"\n{self.device_name()}: read bandwidth {self.read_bw / 1e9:.0f} GB/s (x.sum() over 2 GiB, this run)")
        print(f"wrote {', '.join(str(t) for t in self.written) or '(nothing)'}")

    def print_table(self) -> None:
        self.header()
        print(f"\n{'N x K':13s} {'M':>3s} {'contender':26s} {'us':>9s} {'GB/s':>7s} {'% read':>7s} "
              f"{'vs ours bf16':>12s} {'vs cublas':>9s}")
        print("(gated rows: against our bf16 gated_linear)")
        for key in _keys(self.rows):
            rs = [r for r in self.rows if (r["n"], r["k"], r["m"]) == key]
            ours = next((r["us"] for r in rs if r["contender"] == "ours bf16"), None)
            ours_g = next((r["us"] for r in rs if r["contender"] == "ours bf16 gated"), None)
            cub = next((r["us"] for r in rs if r["contender"] == "cublas bf16"), None)
            for r in rs:
                if r["us"] is None:
                    print(f"{key[0]:>6d}x{key[1]:<6d} {key[2]:3d} {r['contender']:26s} FAILED: {r['err']}")
                    continue
                gated = r["contender"].endswith("gated")  # against our bf16 gated_linear; no cuBLAS twin
                vs = [f"{t / r['us']:.2f}x" if t else "-" for t in ((ours_g, None) if gated else (ours, cub))]
                print(f"{key[0]:>6d}x{key[1]:<6d} {key[2]:3d} {r['contender']:26s} {r['us']:9.2f} {r['gbps']:7.0f} "
                      f"{r['pct_read']:7.1f} {vs[0]:>12s} {vs[1]:>9s}")
        self.print_goals()
        if self.smoke:
            print("[smoke run on CPU under the Triton interpreter: the numbers mean nothing]")

    def print_goals(self) -> None:
        """Issue 10's goals, shape by shape: speedup over our bf16 GEMV and % of read bandwidth."""
        print("\ngoals (issue 10): M=1 int8 >= 1.8x, int4 >= 3.2x ours bf16 and >= 85% read; M=16 int4 >= 2.5x")
        for n, k, m in _keys(self.rows):
            rs = {r["contender"]: r for r in self.rows if (r["n"], r["k"], r["m"]) == (n, k, m) and r["us"]}
            ours = rs.get("ours bf16")
            if not ours or m not in (1, 16):
                continue
            goals = [("int8", 1.8, 85.0), ("int4 g128", 3.2, 85.0)] if m == 1 else [("int4 g128", 2.5, None)]
            for label, speedup, pct in goals:
                r = rs.get(label)
                if r is None:
                    continue
                got = ours["us"] / r["us"]
                ok = got >= speedup and (pct is None or r["pct_read"] >= pct)
                print(f"  {'PASS' if ok else 'MISS'} {n}x{k} M={m} {label}: {got:.2f}x (goal {speedup}x), "
                      f"{r['pct_read']:.0f}% read" + (f" (goal {pct:.0f}%)" if pct else ""))

    def print_sweep(self) -> None:
        self.header()
        for n, k, m in _keys(self.rows):
            for scheme in dict.fromkeys(r["scheme"] for r in self.rows if (r["n"], r["k"], r["m"]) == (n, k, m)):
                print(sweep_line(self.rows, n, k, m, scheme))


# the timed calls: one product into a preallocated output
def _mm(x: Any, w: Any, out: Any) -> Any:
    import torch

    return torch.mm(x, w.t(), out=out)


def _linear(x: Any, w: Any, out: Any) -> Any:
    from membound.backends.triton.kernels.linear import linear

    return linear(x, w, out=out)


def _gated_linear(gate: Any, up: Any, w: Any, out: Any) -> Any:
    from membound.backends.triton.kernels.linear import gated_linear

    return gated_linear(gate, up, w, out=out)


def _quant_gated(gate: Any, up: Any, q: Any, s: Any, out: Any, **kw: Any) -> Any:
    from membound.backends.triton.kernels.quant_matmul import quant_gated_linear

    return quant_gated_linear(gate, up, q, s, out=out, **kw)


def _quant(x: Any, q: Any, s: Any, out: Any, **kw: Any) -> Any:
    from membound.backends.triton.kernels.quant_matmul import quant_linear

    return quant_linear(x, q, s, out=out, **kw)


def _dequant_mm(x: Any, q: Any, s: Any, out: Any, *, scheme: str, group_size: int, in_features: int) -> Any:
    """The prefill alternative as quant_linear runs it: dequantize to a temporary in x's dtype with
    ``quant_dequant.dequantize_weight`` (one kernel), then cuBLAS."""
    import torch

    from membound.backends.triton.kernels.quant_dequant import dequantize_weight

    return torch.mm(x, dequantize_weight(q, s, scheme, group_size, in_features, x.dtype).t(), out=out)


def _keys(rows: list[dict]) -> list[tuple[int, int, int]]:
    return list(dict.fromkeys((r["n"], r["k"], r["m"]) for r in rows))


def describe(c: Any) -> str:
    kind = "dot" if c.use_dot else "fma"
    extra = ("" if c.prefetch or c.use_dot else " noprefetch") + ("" if c.magic else " cvt")
    extra += ("" if c.words else " bytes") + (" prefetch_x" if c.prefetch_x else "")
    return f"{kind} {c.block_m}x{c.block_n}x{c.block_k} s{c.split_k} w{c.num_warps} st{c.num_stages}{extra}"


def sweep_grid(scheme: str, group: int, m: int, heur: Any, quick: bool, shape_n: int = 4096, shape_k: int = 4096,
               device: Any = "cuda") -> list[Any]:
    """Configs around the heuristic: tile rows x tile width (int4 GEMV tiles of several groups), split 1/2
    (GEMV) or 1/4 (tensor cores); the heuristic with 8 warps, and without prefetch or with x prefetched too
    (GEMV) or with 4 stages."""
    from membound.backends.triton.kernels.quant_matmul import QuantConfig

    int4 = scheme == "int4"
    if m <= 2 and heur.use_dot:
        # M <= 2 on the tensor cores (int8/fp8 with M padded to 16, int4 pairs): tiles around the heuristic
        # (pairs keep a tile within one group), each with the split _with_split gives it and unsplit, at
        # 3 and 4 stages and 8 warps; the pairs flag and the rest of the heuristic kept
        from membound.backends.triton.kernels.quant_matmul import _with_split

        tiles = ([(64, 128), (128, 128), (256, 128), (128, 64), (256, 64)] if heur.pairs
                 else [(64, 256), (128, 256), (128, 128), (64, 512), (256, 128)])
        if quick:
            tiles = tiles[:3]
        grid = []
        for bn, bk in tiles:
            sp = _with_split(heur.block_m, bn, bk, 16, shape_n, shape_k, True, int4, device, pairs=heur.pairs).split_k
            base = replace(heur, block_n=bn, block_k=bk, split_k=sp)
            grid += [base, replace(base, num_stages=4), replace(base, num_warps=8)]
            if sp > 1:
                grid.append(replace(base, split_k=1))
            # more programs than _with_split's 1.5 waves: ncu on the H200 (int4 pairs, 4096 x 14336, M = 1) saw
            # 256 programs of 144 registers = 1.9 blocks and 7.7 warps an SM, 0.43 issues a scheduler-cycle
            for more in (2, 4):
                if shape_k >= bk * sp * more * 2:
                    grid.append(replace(base, split_k=sp * more))
        return grid
    if m <= 2:
        tiles = ([(8, 1024), (16, 512), (4, 1024), (16, 1024), (32, 256), (32, 128)] if int4
                 else [(8, 512), (16, 512), (4, 1024), (8, 1024), (16, 1024), (32, 256)])
        splits, warps, stages, dot, bm = (1, 2), (4,), (3,), False, m
    else:
        tiles = ([(32, 128), (64, 128), (64, 256), (128, 128), (32, 256), (128, 256)] if int4
                 else [(32, 128), (64, 128), (32, 256), (64, 256), (16, 256), (32, 512)])
        splits, warps, stages, dot, bm = (1, 4), (4,), (3,), True, 16 if m <= 16 else 32
    if quick:
        tiles = tiles[:3]
    grid = [QuantConfig(bm, bn, bk, sp, dot, w, st)
            for (bn, bk), sp, w, st in itertools.product(tiles, splits, warps, stages)]
    grid += [replace(heur, num_warps=8)]
    if heur.use_dot:
        grid.append(replace(heur, num_stages=4))
    else:
        grid.append(replace(heur, prefetch=False))
        if int4:
            grid.append(replace(heur, prefetch_x=True))
    return grid


def sweep_line(rows: list[dict], n: int, k: int, m: int, scheme: str) -> str:
    rs = [r for r in rows if (r["n"], r["k"], r["m"], r.get("scheme")) == (n, k, m, scheme)]
    ok = sorted((r for r in rs if r["us"]), key=lambda r: r["us"])
    heur = next((r for r in rs if r.get("heuristic")), None)
    line = f"{scheme:5s} {n}x{k} M={m}: "
    line += (f"heuristic {heur['contender']} {heur['us']:.2f}us ({heur['pct_read']:.0f}%)" if heur and heur["us"]
             else "heuristic FAILED")
    line += " | best " + "; ".join(f"{r['contender']} {r['us']:.2f}us ({r['pct_read']:.0f}%)" for r in ok[:3])
    failed = sum(1 for r in rs if not r["us"])
    return line + (f" | {failed} failed" if failed else "")


if __name__ == "__main__":
    sys.exit(main())
