"""Experiment (one H200 run, < 4 minutes): flash-decoding's variants against SDPA, to recalibrate
``decode_attention.pick_config``.

    PYTHONPATH=. python benches/experiments/decode_attn_variants.py --out DIR     # CUDA GPU (gpu/decode_attn.sh)
    PYTHONPATH=. python benches/experiments/decode_attn_variants.py --quick       # fewer shapes and variants

Decode (one new token) with 32 query heads over 8 kv heads (GQA 4), head dim 64 and 128, bf16, batch
1/4/16/64, cache 4k/16k/32k/128k (a case whose inputs pass 48 GB is skipped). Contenders:

- ``sdpa``: ``F.scaled_dot_product_attention(enable_gqa=True)`` on the filled cache;
- ``pick``: ``cached_attention`` as the library calls it, ``pick_config``'s choice (``known``: with
  ``max_len`` = the filled length; ``capacity``: as ``generate``'s CUDA-graph step, no length, a cache of
  twice the filled length, the device splitting the prefix over a grid sized for the capacity);
- each variant of ``VARIANTS`` (rows per block, warps, key tile bytes, stages, evict-first) with
  pick_config's split (for the variant's own programs per SM where it names one), on both paths;
  ``pick pps=N``: the default variant with the split for N programs per SM (known path).

sm_90 compile facts with triton 3.6 (the GPU's; compile_ptx + ptxas -v, bf16, D = 128): q64 w4 32K s3 = 112 KB
shared, 248 registers, no spill (2 programs per SM fit, exactly), wgmma; q64 w4 16K s5 = 96 KB, 243
registers; q16 w4 32K s3 = 70 KB, 255 registers + 12 B spilled, mma.sync with 9 barriers per tile (q64: 2);
q64 w4 64K s2 spills 420 B (one split); q32 w2 20-152 B; q16 w1 32-52 B.

1. Correctness first, in worker processes (which also compile every variant into Triton's disk cache):
   each variant and ``pick`` on both paths, bf16 and fp16, D 64 and 128, batch 3 with per-row lengths
   (1000, 601, 77 slots) and NaN in every slot past a row's position (a read of one would show), plus a
   window + soft-cap case; error = max|y - ref| / max|ref| against the fp32 reference, pass at 2e-2.
   A variant that fails is reported and not timed; a failure of ``pick`` stops the run.
2. Timing: each contender inside one CUDA graph of several calls, median of 10 replays, cycling through
   enough input copies (>= 256 MB) that K/V come from HBM. GB/s = (K and V of the filled slots + q +
   out) / time; ``%read`` against ``x.sum()`` over 2 GiB measured in the same run.

Prints, last: per shape SDPA, pick and the best variant per path; per variant its geometric-mean speed
over SDPA and wins; and the constants of ``decode_attention`` that would select the best variant.
Writes ``decode_attn_variants-<gpu>-<date>.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

HQ, HKV = 32, 8
MAX_SET_BYTES = 48 << 30  # one path's input copies at most
ROTATE_BYTES = 256 << 20  # cycled per case: 5x the H200's L2
TOL = 2e-2
DEVICE = "cuda"  # "cpu" with --smoke (the Triton interpreter, tiny sizes: checks the script)
SMOKE_SIZES = dict(b=2, length=100, cap=160)
BUDGET_S = 200  # default --budget: timing takes no new shape past this many seconds from the start

# name -> DecodeConfig fields, the key tile as K + V bytes (``tile``: 32K = 64 slots at D = 128, 128 at D = 64);
# the split comes from pick_config's rule (for ``pps`` programs per SM when given). "q64 w4" = 64 query rows (G = 4 padded), 4 warps: 16 rows per warp,
# wgmma; "q16 w4": the kernel before 2026-12-02 (its 4 warps split the key tile: barriers per tile)
VARIANTS: dict[str, dict[str, Any]] = {
    "q16 w4 32K s3": dict(block_q=16, num_warps=4, tile=32768, num_stages=3),
    "q64 w4 32K s3": dict(block_q=64, num_warps=4, tile=32768, num_stages=3),
    "q64 w4 32K s2": dict(block_q=64, num_warps=4, tile=32768, num_stages=2),
    "q64 w4 32K s4": dict(block_q=64, num_warps=4, tile=32768, num_stages=4),
    "q64 w4 16K s5": dict(block_q=64, num_warps=4, tile=16384, num_stages=5),
    "q64 w4 64K s2": dict(block_q=64, num_warps=4, tile=65536, num_stages=2),
    "q64 w4 32K s3 evict": dict(block_q=64, num_warps=4, tile=32768, num_stages=3, evict_first=True),
    "q32 w2 32K s3": dict(block_q=32, num_warps=2, tile=32768, num_stages=3),
    "q16 w1 16K s4": dict(block_q=16, num_warps=1, tile=16384, num_stages=4),
    "q16 w1 16K s4 pps4": dict(block_q=16, num_warps=1, tile=16384, num_stages=4, pps=4),  # 51 KB shared: 4 fit
    "q128 w8 32K s3": dict(block_q=128, num_warps=8, tile=32768, num_stages=3),
    # session 10: more bytes in flight per SM at batch 1 (one program per SM: 4 or 5 stages of 32 KB, or 64 KB
    # tiles, fit in the 227 KB of shared memory only alone)
    "q16 w4 32K s3 pps1": dict(block_q=16, num_warps=4, tile=32768, num_stages=3, pps=1),
    "q16 w4 32K s4 pps1": dict(block_q=16, num_warps=4, tile=32768, num_stages=4, pps=1),
    "q16 w4 32K s5 pps1": dict(block_q=16, num_warps=4, tile=32768, num_stages=5, pps=1),
    "q16 w4 64K s3 pps1": dict(block_q=16, num_warps=4, tile=65536, num_stages=3, pps=1),
    "q16 w8 64K s3 pps1": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=1),
    "q16 w4 16K s6": dict(block_q=16, num_warps=4, tile=16384, num_stages=6),
    "q16 w8 32K s3": dict(block_q=16, num_warps=8, tile=32768, num_stages=3),
    # 256-slot tiles at D = 64 (64 KB; the library caps tiles at 128 slots)
    "q16 w8 64K s3 pps1 t256": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=1, max_slots=256),
    "q16 w4 64K s3 pps1 t256": dict(block_q=16, num_warps=4, tile=65536, num_stages=3, pps=1, max_slots=256),
    "q16 w4 64K s2 t256": dict(block_q=16, num_warps=4, tile=65536, num_stages=2, max_slots=256),
    # session 34 (ncu, H100: the wide programs' SMs were active 72-78% of the kernel's elapsed cycles at batch 1 and
    # 32k, cuDNN's 84-88%): the wide tiles' split sized for 2 or 3 programs per SM, though one fits, so the grid runs
    # in waves of smaller chunks and an SM whose program ends early takes the next (load balance against ramp-up)
    "q16 w8 64K s3 pps2 t256": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=2, max_slots=256),
    "q16 w8 64K s3 pps3 t256": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=3, max_slots=256),
    "q16 w8 64K s3 pps2": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=2),
    "q16 w8 64K s3 pps3": dict(block_q=16, num_warps=8, tile=65536, num_stages=3, pps=3),
}
QUICK_VARIANTS = ("q16 w4 32K s3", "q64 w4 32K s3", "q64 w4 32K s4", "q64 w4 32K s3 evict", "q32 w2 32K s3")


def config_for(variant: Optional[str], rows: int, groups: int, length: int, known: bool, d: int, dtype: Any,
               device: Any, pps: Optional[int] = None) -> Any:
    """pick_config's choice, with a variant's tiles and (``pps``) the split for that many programs per SM."""
    from membound.backends.triton.kernels import decode_attention as da
    from membound.backends.triton.kernels._launch import cdiv, sm_count

    cfg = da.pick_config(rows, groups, length, known, d, dtype, device)
    if variant is not None:
        fields = {"evict_first": False, **VARIANTS[variant]}
        pps = pps or fields.pop("pps", None)
        fields.pop("pps", None)
        per_slot = 2 * d * dtype.itemsize  # K + V bytes of one slot
        fields["block_t"] = max(16, min(fields.pop("max_slots", 128), fields.pop("tile") // per_slot))
        cfg = dataclasses.replace(cfg, **fields)
    bt = cfg.block_t
    tiles = cdiv(length, bt)
    programs = groups * cdiv(rows, cfg.block_q)
    slots = (pps or da.PROGRAMS_PER_SM) * sm_count(device)
    splits = da._best_split(programs, tiles, slots)
    return dataclasses.replace(cfg, chunk=cdiv(tiles, splits) * bt, min_chunk=da.MIN_TILES * bt)


# ---- 1. correctness (worker processes) --------------------------------------------------------
def check_variant(variant: Optional[str], d: int, dtype_name: str, device: str = "cuda") -> list[dict[str, Any]]:
    """One variant (None: pick) at head dim ``d``: both paths, batch 3 with per-row lengths; also compiles its
    one-split variant (the known path at batch 64 takes it) so that the timing phase finds it cached."""
    import torch

    from membound.backends.triton.kernels import cached_attention
    from membound.ir import get_op

    dtype = getattr(torch, dtype_name)
    dev = torch.device(device)
    gen = torch.Generator(device=dev).manual_seed(d + len(variant or ""))
    b, length, cap = (3, 1000, 2048) if device == "cuda" else tuple(SMOKE_SIZES.values())
    q = torch.randn(b, HQ, 1, d, device=dev, dtype=dtype, generator=gen)
    k = torch.randn(b, HKV, cap, d, device=dev, dtype=dtype, generator=gen)
    v = torch.randn(b, HKV, cap, d, device=dev, dtype=dtype, generator=gen)
    last = [length - 1, 600, 76][:b] if b == 3 else [length - 1, length // 3][:b]
    pos = torch.tensor(last, device=dev)[:, None]
    extra = [dict(window=None, softcap=None)] + ([dict(window=300, softcap=30.0)] if variant is None else [])
    out = []
    for kw in extra:
        want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=None, **kw)
        kn, vn = k.clone(), v.clone()
        for i, p in enumerate(last):  # slots no row of batch i may read
            kn[i, :, p + 1:], vn[i, :, p + 1:] = float("nan"), float("nan")
            if kw["window"]:
                kn[i, :, :max(0, p - kw["window"] + 1)] = float("nan")
                vn[i, :, :max(0, p - kw["window"] + 1)] = float("nan")
        for path in ("known", "capacity"):
            known = path == "known"
            kk, vv = (kn[:, :, :length], vn[:, :, :length]) if known else (kn, vn)
            cfg = None if variant is None else config_for(variant, HQ // HKV, b * HKV, length if known else cap,
                                                          known, d, dtype, dev)
            error = None
            try:
                y = cached_attention(q, kk, vv, pos, max_len=length if known else None, config=cfg, **kw)
                sync(dev)
                err = float((y.float() - want).abs().max()) / float(want.abs().max())
            except Exception as e:  # noqa: BLE001 -- a variant that does not compile (e.g. out of shared memory)
                err, error = float("inf"), f"{type(e).__name__}: {str(e)[:300]}"
            ok = bool(math.isfinite(err) and err <= TOL)
            out.append(dict(variant=variant or "pick", d=d, dtype=dtype_name, path=path, err=err, ok=ok,
                            error=error, config=dataclasses.asdict(cfg) if cfg else None, **kw))
    if dtype_name == "bfloat16" and all(r["ok"] for r in out):  # warm the one-split variant: one chunk
        cfg = config_for(variant, HQ // HKV, b * HKV, length, True, d, dtype, dev)
        cfg = dataclasses.replace(cfg, chunk=-(-length // cfg.block_t) * cfg.block_t)
        cached_attention(q, k[:, :, :length], v[:, :, :length], pos, max_len=length, config=cfg)
        sync(dev)
    return out


def sync(dev: Any) -> None:
    import torch

    if dev.type == "cuda":
        torch.cuda.synchronize()


def run_checks(variants: list[Optional[str]], workers: int) -> list[dict[str, Any]]:
    if DEVICE == "cpu":  # bf16 is broken in the interpreter
        return [r for v in variants for dt in ("float32", "float16") for r in check_variant(v, 64, dt, "cpu")]
    jobs = [(v, d, dt) for v in variants for d in (64, 128) for dt in ("bfloat16", "float16")]
    if workers <= 1:
        return [r for job in jobs for r in check_variant(*job)]
    out = []
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(check_variant, *job) for job in jobs]
        for (variant, d, dt), f in zip(jobs, futures):
            try:
                out += f.result()
            except Exception as e:  # noqa: BLE001 -- a worker that died (e.g. an illegal memory access)
                out.append(dict(variant=variant or "pick", d=d, dtype=dt, path="both", err=float("inf"), ok=False,
                                error=f"{type(e).__name__}: {str(e)[:300]}", config=None, window=None))
    return out


# ---- 2. timing -------------------------------------------------------------------------------
class Timer:
    def __init__(self) -> None:
        import torch

        self.torch = torch
        x = torch.randn(((1 << 30) if DEVICE == "cuda" else (1 << 20),), device=DEVICE, dtype=torch.bfloat16)
        self.read_bw = x.nbytes / self.time_s(lambda: x.sum(), 1e-3)
        del x

    def time_s(self, fn: Callable[[], Any], estimate_s: float, replays: int = 10) -> float:
        """Median seconds per call of ``fn`` from one CUDA graph of enough calls to last ~2 ms. Captured on
        the stream that ran the warm-up (the split kernels' arrival counters are made per stream)."""
        torch = self.torch
        if DEVICE == "cpu":  # smoke: one call, the numbers mean nothing
            fn()
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0
        calls = max(1, min(20, int(2e-3 / max(estimate_s, 1e-7))))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            fn()
            stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):
                for _ in range(calls):
                    fn()
            graph.replay()
            times = []
            for _ in range(replays):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                graph.replay()
                end.record(stream)
                end.synchronize()
                times.append(start.elapsed_time(end) * 1e-3 / calls)
        torch.cuda.current_stream().wait_stream(stream)
        del graph
        return sorted(times)[len(times) // 2]


def time_case(timer: Timer, b: int, length: int, d: int, variants: list[str], rows: list[dict[str, Any]],
              warp_split: tuple[str, ...] = ()) -> None:
    import torch
    import torch.nn.functional as F

    from membound.backends.triton.kernels import cached_attention

    dev = torch.device(DEVICE)
    dtype, e = (torch.bfloat16, 2) if DEVICE == "cuda" else (torch.float16, 2)
    g, groups = HQ // HKV, b * HKV
    nbytes = e * (2 * groups * length * d + 2 * b * HQ * d)
    est = nbytes / 3.5e12 + 4e-6
    case = dict(b=b, cache=length, d=d, bytes=nbytes)
    pos = torch.full((b, 1), length - 1, dtype=torch.int64, device=dev)

    def add(path: str, contender: str, fn: Callable[[Any], Any], sets: list[tuple], cfg: Any = None) -> None:
        turn = [0]

        def call() -> Any:
            turn[0] += 1
            return fn(*sets[turn[0] % len(sets)])

        try:
            t = timer.time_s(call, est)
        except Exception as e:  # noqa: BLE001 -- recorded in the JSON and printed, the sweep goes on
            print(f"   {contender} {path} d{d} b{b} cache{length}: {type(e).__name__}: {str(e)[:200]}")
            return
        rows.append(dict(case, path=path, contender=contender, us=t * 1e6, gbps=nbytes / t / 1e9,
                         pct_read=100 * nbytes / t / timer.read_bw,
                         config=dataclasses.asdict(cfg) if cfg is not None else None))

    for path in ("known", "capacity"):
        cap = length if path == "known" else 2 * length
        one = e * 2 * groups * cap * d
        copies = max(1, min(64, -(-ROTATE_BYTES // max(1, nbytes))))
        if one * copies > MAX_SET_BYTES:
            copies = MAX_SET_BYTES // one
            if copies < 1:
                continue
        src = torch.randn(b, HKV, length, d, device=dev, dtype=dtype)
        sets = []
        for _ in range(copies):
            k = torch.empty(b, HKV, cap, d, device=dev, dtype=dtype)
            v = torch.empty_like(k)
            k[:, :, :length].copy_(src)
            v[:, :, :length].copy_(src.flip(-1))
            sets.append((torch.randn(b, HQ, 1, d, device=dev, dtype=dtype), k, v, pos))
        del src
        known = path == "known"
        kw = dict(max_len=length) if known else {}
        if known:
            add(path, "sdpa", lambda q, k, v, p: F.scaled_dot_product_attention(q, k, v, enable_gqa=True), sets)
        add(path, "pick", lambda q, k, v, p: cached_attention(q, k, v, p, **kw), sets,
            config_for(None, g, groups, cap, known, d, dtype, dev))
        for name in variants:
            cfg = config_for(name, g, groups, cap, known, d, dtype, dev)
            add(path, name, lambda q, k, v, p, cfg=cfg: cached_attention(q, k, v, p, config=cfg, **kw), sets, cfg)
        if known:
            for name in warp_split:  # decode_warp_split.py's layout (known length only)
                from benches.experiments.decode_warp_split import parse, ws_attention

                opts = parse(name)
                add(path, f"ws {name}", lambda q, k, v, p, kw=opts: ws_attention(q, k, v, length, **kw), sets)
            for pps in (1, 4):
                cfg = config_for(None, g, groups, cap, known, d, dtype, dev, pps=pps)
                add(path, f"pick pps={pps}", lambda q, k, v, p, cfg=cfg: cached_attention(q, k, v, p, config=cfg,
                                                                                           **kw), sets, cfg)
        del sets
        if DEVICE == "cuda":
            torch.cuda.empty_cache()


# ---- reporting -------------------------------------------------------------------------------
def report(rows: list[dict[str, Any]], variants: list[str], others: tuple[str, ...] = ()) -> list[str]:
    lines = []
    shapes = sorted({(r["d"], r["b"], r["cache"]) for r in rows})

    def get(d: int, b: int, c: int, path: str, who: str) -> Optional[dict[str, Any]]:
        for r in rows:
            if (r["d"], r["b"], r["cache"], r["path"], r["contender"]) == (d, b, c, path, who):
                return r
        return None

    lines.append(f"{'shape':18s} {'sdpa us':>8s} {'%rd':>5s} | {'pick known':>10s} {'%rd':>5s} {'best known':>22s} "
                 f"{'us':>8s} {'%rd':>5s} | {'pick cap':>9s} {'%rd':>5s} {'best capacity':>22s} {'us':>8s} {'%rd':>5s}")
    for d, b, c in shapes:
        sd = get(d, b, c, "known", "sdpa")
        size = f"{c // 1024}k" if c >= 1024 else str(c)
        cols = [f"d{d} b{b} cache{size}".ljust(18), f"{sd['us']:8.1f} {sd['pct_read']:5.1f}" if sd else " " * 14]
        for path in ("known", "capacity"):
            pk = get(d, b, c, path, "pick")
            cand = [r for r in rows if (r["d"], r["b"], r["cache"], r["path"]) == (d, b, c, path)
                    and r["contender"] != "sdpa"]
            best = min(cand, key=lambda r: r["us"]) if cand else None
            w = 10 if path == "known" else 9
            cols.append(f"{pk['us']:{w}.1f} {pk['pct_read']:5.1f}" if pk else " " * (w + 6))
            cols.append(f"{best['contender']:>22s} {best['us']:8.1f} {best['pct_read']:5.1f}" if best else "")
        lines.append(" ".join(cols[:2]) + " | " + cols[2] + " " + cols[3] + " | " + cols[4] + " " + cols[5])
    lines.append("")

    def geomean(who: str, path: str, keep: Callable[[int, int, int], bool] = lambda d, b, c: True) -> tuple:
        """(geometric-mean speed over sdpa, shapes won, shapes) of ``who`` on ``path`` over the kept shapes."""
        ratios, wins = [], 0
        for d, b, c in shapes:
            sd, r = get(d, b, c, "known", "sdpa"), get(d, b, c, path, who)
            if keep(d, b, c) and sd and r:
                ratios.append(sd["us"] / r["us"])
                cand = [x for x in rows if (x["d"], x["b"], x["cache"], x["path"]) == (d, b, c, path)
                        and x["contender"] != "sdpa"]
                wins += min(cand, key=lambda x: x["us"]) is r
        gm = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else 0.0
        return gm, wins, len(ratios)

    lines.append("geometric-mean speed over sdpa (>1 = faster), shapes won / timed; per path, then per head dim "
                 "(both paths)")
    dims = sorted({d for d, _, _ in shapes})
    for who in ["pick", "pick pps=1", "pick pps=4"] + variants + list(others):
        parts = []
        for path in ("known", "capacity"):
            gm, wins, n = geomean(who, path)
            if n:
                parts.append(f"{path} {gm:5.3f} ({wins:2d}/{n})")
        for d in dims:
            gms = [geomean(who, path, lambda dd, b, c, d=d: dd == d)[0] for path in ("known", "capacity")]
            if all(gms):
                parts.append(f"d{d} {math.sqrt(gms[0] * gms[1]):5.3f}")
        lines.append(f"  {who:22s} " + "   ".join(parts))

    def best(keep: Callable[[int, int, int], bool]) -> str:
        scores = {v: geomean(v, "known", keep)[0] * geomean(v, "capacity", keep)[0] for v in variants}
        return max(scores, key=lambda v: scores[v])

    if variants:
        lines.append("")
        lines.append("best variant per head dim and batch (both paths, every cache length):")
        for d in dims:
            per_b = [f"b{b}: {best(lambda dd, bb, c, d=d, b=b: (dd, bb) == (d, b))}"
                     for b in sorted({b for dd, b, _ in shapes if dd == d})]
            lines.append(f"  d{d}  " + "   ".join(per_b))
        top = best(lambda d, b, c: True)
        f = VARIANTS[top]
        lines.append("")
        lines.append(f"best variant over every shape and both paths: {top!r}; the decode_attention constants "
                     f"that select it:")
        lines.append(f"  DECODE_WARPS = {f['num_warps']}; ROWS_PER_WARP = {f['block_q'] // f['num_warps']}; "
                     f"DECODE_TILE_BYTES = {f['tile']}; DECODE_STAGES = {f['num_stages']}; "
                     f"EVICT_FIRST = {f.get('evict_first', False)}")
        pps = {p: geomean(f"pick pps={p}", "known")[0] for p in (1, 4)}
        pps[2] = geomean("pick", "known")[0]
        lines.append(f"  PROGRAMS_PER_SM = {f.get('pps', 'the best of pick pps: ')}"
                     + ("" if "pps" in f else f"{max(pps, key=lambda p: pps[p])} (pick's known-path geomeans by "
                        "programs per SM: " + ", ".join(f"{p}: {pps[p]:.3f}" for p in sorted(pps)) + ")"))
    return lines


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp"), help="folder for the JSON")
    p.add_argument("--quick", action="store_true", help="fewer shapes and variants")
    p.add_argument("--workers", type=int, default=8, help="processes for the correctness phase (compiles)")
    p.add_argument("--budget", type=float, default=BUDGET_S, help="seconds; no new shape is timed past it")
    p.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, tiny sizes: checks the script")
    p.add_argument("--variants", help="comma-separated names of VARIANTS to run (default: all, or --quick's)")
    p.add_argument("--batches", help="comma-separated batch sizes (default 1,4,16,64; --quick 1,16)")
    p.add_argument("--lengths", help="comma-separated cache lengths (default 4096,16384,32768,131072)")
    p.add_argument("--warp-split", default="", help="comma-separated decode_warp_split.py variants ('w4 t32 s3 pps2': "
                   "warps, keys a warp, stages, programs an SM), timed on the known path as 'ws <name>'")
    args = p.parse_args(argv)
    global DEVICE
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before anything imports triton
        DEVICE = "cpu"
    import torch
    import triton

    if not args.smoke and not torch.cuda.is_available():
        print("decode_attn_variants: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    t0 = time.time()
    variants = list(QUICK_VARIANTS if args.quick else VARIANTS)
    if args.variants:
        variants = [v.strip() for v in args.variants.split(",")]
        unknown = [v for v in variants if v not in VARIANTS]
        if unknown:
            p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    checks = run_checks([None] + (variants[:2] if args.smoke else variants), args.workers)
    bad = [c for c in checks if not c["ok"]]
    print(f"1. correctness: {len(checks) - len(bad)}/{len(checks)} pass (max err "
          f"{max(c['err'] for c in checks):.3g}, {time.time() - t0:.0f} s)")
    for c in bad:
        print(f"   FAIL {c['variant']} d{c['d']} {c['dtype']} {c['path']} window={c['window']}: err {c['err']:.3g}"
              + (f" ({c['error']})" if c.get("error") else ""))
    warp_split = tuple(w.strip() for w in args.warp_split.split(",") if w.strip())
    if warp_split:
        from benches.experiments.decode_warp_split import check_variant as check_ws

        ws_checks = [check_ws(w, DEVICE) for w in warp_split]
        for c in ws_checks:
            print(f"   ws {c['variant']}: max err {c['err']:.3g} {'ok' if c['ok'] else 'FAIL'}"
                  + (f" ({c['error']})" if c.get("error") else ""))
        checks += ws_checks
        warp_split = tuple(c["variant"] for c in ws_checks if c["ok"])
    failed = {c["variant"] for c in bad}
    variants = [v for v in variants if v not in failed]  # a failing variant is reported, never timed
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu-interpreter"
    record: dict[str, Any] = dict(bench="decode_attn_variants", device=name, date=datetime.date.today().isoformat(),
                                  versions=dict(torch=torch.__version__, triton=triton.__version__),
                                  variants=VARIANTS, checks=checks, rows=[])
    slug = "".join(ch if ch.isalnum() else "-" for ch in name.lower()).strip("-")
    path = Path(args.out) / f"decode_attn_variants-{slug}-{record['date']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if "pick" in failed:  # the library's own choice is wrong: nothing to time
        path.write_text(json.dumps(record, indent=1) + "\n")
        print("pick_config's choice failed its check: no timing")
        return 1
    timer = Timer()
    record["read_bandwidth_gbps"] = timer.read_bw / 1e9
    print(f"2. timing; read bandwidth {timer.read_bw / 1e9:.0f} GB/s (x.sum over 2 GiB)")
    lengths = (4096, 32768) if args.quick else (4096, 16384, 32768, 131072)
    batches = (1, 16) if args.quick else (1, 4, 16, 64)
    dims = (128, 64)
    if args.batches:
        batches = tuple(int(x) for x in args.batches.split(","))
    if args.lengths:
        lengths = tuple(int(x) for x in args.lengths.split(","))
    if args.smoke:
        lengths, batches, dims, variants = (45,), (1, 3), (64,), variants[:2]
    skipped = []
    for d in dims:
        for length in lengths:
            for b in batches:
                if time.time() - t0 > args.budget:
                    skipped.append(f"d{d} b{b} cache{length}")
                    continue
                time_case(timer, b, length, d, variants, record["rows"], warp_split)
        path.write_text(json.dumps(record, indent=1) + "\n")
    record["skipped_for_time"] = skipped
    lines = report(record["rows"], variants, tuple(f"ws {w}" for w in warp_split))
    record["report"] = lines
    path.write_text(json.dumps(record, indent=1) + "\n")
    if skipped:
        print(f"   skipped for time: {', '.join(skipped)}")
    print(f"wrote {path} ({time.time() - t0:.0f} s)\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
