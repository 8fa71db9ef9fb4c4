"""MoE prefill on one layer at the Mixtral-8x7B shape: the grouped-GEMM path against the decode walk and torch.

    PYTHONPATH=. python benches/moe_prefill.py                  # GPU: checks, timings, sweep (~2 min on an H200)
    PYTHONPATH=. python benches/moe_prefill.py --tokens 512     # one prefill length
    PYTHONPATH=. python benches/moe_prefill.py --smoke          # CPU interpreter, tiny shape (plumbing only)

One ``moe`` layer (hidden 4096, intermediate 14336, 8 experts, top-2; random weights, std 1/sqrt(K), router
included), the whole op timed (routing, sort, kernels, combine) with ``triton.testing.do_bench`` (median):

1. correctness first, on the GPU (bf16, fp16; both paths; int8 / int4 / fp8 experts on both paths at a
   smaller shape): against the op's torch reference, relative error norm below 1e-2 (bf16/fp16), 3e-2
   quantized; any failure stops the run before timing;
2. contenders at T = 128, 512, 2048 tokens: ``grouped`` (the prefill path, tiles from
   ``pick_grouped_config``), ``decode`` (the per-expert walk), ``torch grouped_mm`` (``torch._grouped_mm``
   over the expert-sorted rows, when this torch has it), ``torch loop`` (the op's reference: a cuBLAS
   matmul per expert). TFLOP/s count the useful expert FLOPs, ``2 * T * k * 3 * D * I``;
3. both paths at small T (the crossover ``moe_path`` prices) and the shares of bandwidth / tensor-core
   peak they imply (the constants of ``moe.py``'s pricing: ``DECODE_BW_SHARE``, ``GROUPED_*``);
4. a sweep of grouped tiles and launch orders (``SWEEP``) at T = 512 and 2048; int8 / int4 experts at T = 512,
   both paths.

JSON to ``--out`` (``moe_prefill-<gpu>-<date>.json``) and the last table to ``table.txt`` there.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import importlib  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from membound.backends.triton.kernels import moe, quant_moe  # noqa: E402
from membound.ir import get_op  # noqa: E402
from membound.ir.ops.moe import route  # noqa: E402
from membound.ir.ops.quant import quantize  # noqa: E402

MOE = importlib.import_module("membound.backends.triton.kernels.moe")
G = MOE.GroupedConfig
# (gate/up, down) tiles: the two defaults, then neighbours (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages). Compiled for
# sm_90 under Triton 3.9 (cuobjdump): none spills; registers a thread 118-230; shared memory 64-144 KB
# (down at 128 x 256 x 64 reached 255 registers and a stack: left out).
SWEEP: list[tuple[str, tuple[Any, Any]]] = [
    ("m64 default", (G(64, 128, 64, 8, 3), G(64, 128, 64, 4, 4))),
    ("m128 default", (G(128, 64, 64, 8, 4), G(128, 128, 64, 8, 3))),
    ("m128 n128", (G(128, 128, 64, 8, 3), G(128, 128, 64, 8, 4))),
    ("m64 n64 w4", (G(64, 64, 64, 4, 4), G(64, 64, 64, 4, 4))),
    ("m64 k128", (G(64, 64, 128, 4, 3), G(64, 128, 128, 8, 3))),
    # launch order in bands of m-blocks whose rows stay in L2 (GroupedConfig.group_m; same kernels)
    ("m64 bands 8/4", (G(64, 128, 64, 8, 3, group_m=8), G(64, 128, 64, 4, 4, group_m=4))),
    ("m128 bands 8/4", (G(128, 64, 64, 8, 4, group_m=8), G(128, 128, 64, 8, 3, group_m=4))),
]
ATTRS = dict(softmax_first=True, renormalize=True, act="silu")


def layer(e: int, d: int, i: int, dtype: torch.dtype, device: str, seed: int = 0) -> list[torch.Tensor]:
    """router [E, D], gate / up [E, I, D], down [E, D, I], std 1/sqrt(K)."""
    g = torch.Generator(device).manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g, device=device) / shape[-1] ** 0.5).to(dtype)

    return [r(e, d), r(e, i, d), r(e, i, d), r(e, d, i)]


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def torch_grouped_mm(x: torch.Tensor, router: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                     top_k: int) -> torch.Tensor:
    """The routed experts through ``torch._grouped_mm`` (cuBLAS / CUTLASS grouped GEMM) over the rows sorted by
    expert; routing and combine as ``moe`` does them."""
    weights, experts = route(x, router, top_k=top_k, **{k: ATTRS[k] for k in ("softmax_first", "renormalize")})
    order = torch.sort(experts.reshape(-1), stable=True).indices
    counts = (experts.reshape(-1, 1) == torch.arange(router.shape[0], device=x.device)).sum(dim=0)
    offs = torch.cumsum(counts, 0).to(torch.int32)
    tok = order // top_k
    xs = x[tok]  # [T * k, D] sorted by expert
    h = F.silu(torch._grouped_mm(xs, wg.transpose(1, 2), offs=offs)) * torch._grouped_mm(xs, wu.transpose(1, 2),
                                                                                          offs=offs)
    y = torch._grouped_mm(h, wd.transpose(1, 2), offs=offs).float() * weights.reshape(-1)[order, None]
    return torch.zeros(x.shape, dtype=torch.float32, device=x.device).index_add_(0, tok, y).to(x.dtype)


class Bench:
    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.rows: list[dict[str, Any]] = []
        self.failures: list[str] = []
        self.started = time.perf_counter()
        self.card = torch.cuda.get_device_name() if self.device == "cuda" else "cpu"
        self.shape = dict(E=4, D=64, I=96, top_k=2) if a.smoke else dict(E=8, D=4096, I=14336, top_k=2)
        if self.device == "cuda":
            from membound.backends.triton.kernels.quant_matmul import _device_spec

            self.hw = _device_spec(torch.device("cuda"))
        else:
            from membound.cost.hardware import Hardware

            self.hw = Hardware.named("h200")

    def time_ms(self, fn: Callable[[], Any]) -> float:
        if self.device != "cuda":
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1e3
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=self.a.rep_ms, return_mode="median"))

    def left_s(self) -> float:
        return self.a.budget_s - (time.perf_counter() - self.started)

    def save(self) -> None:
        """The JSON and the table so far (after every row: a run cut short by a timeout keeps what it measured)."""
        out = Path(self.a.out)
        out.mkdir(parents=True, exist_ok=True)
        slug = self.card.lower().replace(" ", "-")
        date = datetime.date.today().isoformat()
        record = {"bench": "moe_prefill", "card": self.card, "date": date, "torch": torch.__version__,
                  "args": vars(self.a), "shape": self.shape, "rows": self.rows}
        self.path = out / f"moe_prefill-{slug}-{date}.json"
        self.path.write_text(json.dumps(record, indent=1))
        (out / "table.txt").write_text(self.table() + "\n")

    def row(self, **kw: Any) -> None:
        self.rows.append(kw)
        self.save()
        if "ms" in kw:
            print(f"  {kw['part']:9s} T={kw['tokens']:<5d} {kw['name']:22s} {kw['ms']:9.3f} ms "
                  f"{kw.get('tflops', 0):7.1f} TFLOP/s  {kw.get('note', '')}", flush=True)
        else:
            print(f"  {kw['part']:9s} T={kw.get('tokens', 0):<5d} {kw['name']:22s} {kw.get('error', '')}", flush=True)

    # ---- 1. correctness -------------------------------------------------------------------------------------
    def check(self, name: str, got: torch.Tensor, want: torch.Tensor, limit: float) -> None:
        err = rel_err(got, want)
        ok = bool(torch.isfinite(got).all()) and err < limit
        print(f"  check {name:40s} rel err {err:.2e} (< {limit:g}) {'ok' if ok else 'FAIL'}", flush=True)
        self.rows.append(dict(part="check", name=name, rel_err=err, ok=ok))
        self.save()
        if not ok:
            self.failures.append(name)

    def correctness(self, e: int, d: int, i: int, k: int) -> None:
        t = 16 if self.a.smoke else 512
        for dtype in ([torch.float32] if self.a.smoke else [torch.bfloat16, torch.float16]):
            ws = layer(e, d, i, dtype, self.device, seed=1)
            x = torch.randn(t, d, device=self.device, generator=torch.Generator(self.device).manual_seed(2)).to(dtype)
            want = get_op("moe").reference(x, *ws, top_k=k, **ATTRS)
            for path in MOE.PATHS:
                self.check(f"moe {str(dtype)[6:]} {path} T={t}", moe(x, *ws, top_k=k, path=path, **ATTRS), want, 1e-2)
            for name, cfgs in SWEEP[:2]:  # both default tiles, whatever T picks
                self.check(f"moe {str(dtype)[6:]} grouped {name}", moe(x, *ws, top_k=k, configs=cfgs, **ATTRS),
                           want, 1e-2)
            del ws
        # quantized experts at a smaller shape (int4: groups of 128 along both K)
        qe, qd, qi = (4, 64, 96) if self.a.smoke else (8, 1024, 3584)
        ws = layer(qe, qd, qi, torch.bfloat16 if self.device == "cuda" else torch.float32, self.device, seed=3)
        x = torch.randn(t, qd, device=self.device).to(ws[0].dtype)
        for scheme, group in (("int8", 0), ("int4", 128 if not self.a.smoke else 32), ("fp8", 0)):
            packed = []
            for w in ws[1:4]:
                q, sc = quantize(w.reshape(-1, w.shape[-1]), scheme, group or 128)
                packed += [q.view(*w.shape[:2], *q.shape[1:]), sc.view(*w.shape[:2], *sc.shape[1:])]
            want = get_op("quant_moe").reference(x, ws[0], *packed, scheme=scheme, group_size=group, top_k=k,
                                                 **ATTRS)
            for path in MOE.PATHS:
                got = quant_moe(x, ws[0], *packed, scheme=scheme, group_size=group, top_k=k, path=path, **ATTRS)
                self.check(f"quant_moe {scheme} {path} T={t}", got, want, 1e-2)

    # ---- 2-4. timing ----------------------------------------------------------------------------------------
    def flops(self, t: int, k: int, d: int, i: int) -> float:
        return 2.0 * t * k * 3 * d * i

    def timed(self, part: str, name: str, t: int, fn: Callable[[], Any], flops: float, **extra: Any) -> Optional[float]:
        try:
            ms = self.time_ms(fn)
        except Exception as ex:  # a config that cannot launch (shared memory) is a row
            self.row(part=part, tokens=t, name=name, error=f"{type(ex).__name__}: {str(ex).splitlines()[0][:120]}")
            return None
        self.row(part=part, tokens=t, name=name, ms=ms, tflops=flops / ms / 1e9, **extra)
        return ms

    def timings(self, e: int, d: int, i: int, k: int) -> None:
        dtype = torch.bfloat16 if self.device == "cuda" else torch.float32
        ws = layer(e, d, i, dtype, self.device)
        has_grouped_mm = hasattr(torch, "_grouped_mm") and self.device == "cuda"
        item = torch.empty((), dtype=dtype).element_size()
        peak = self.hw.peak_flops("bf16")
        for t in self.a.tokens:
            x = torch.randn(t, d, device=self.device, generator=torch.Generator(self.device).manual_seed(t)).to(dtype)
            _, experts = route(x, ws[0], top_k=k, **{k_: ATTRS[k_] for k_ in ("softmax_first", "renormalize")})
            counts = torch.bincount(experts.reshape(-1), minlength=e).tolist()
            f = self.flops(t, k, d, i)
            picked = MOE.moe_path(t, e, k, d, i, dtype, x.device)
            for path in MOE.PATHS:
                cfg = MOE.pick_grouped_config(t * k, e, i, d, dtype, None, 0, True)
                note = f"BLOCK_M {cfg.block_m}" if path == "grouped" else ""
                note += " (moe_path's pick)" if path == picked else ""
                self.timed("contender", path, t, lambda path=path, x=x: moe(x, *ws, top_k=k, path=path, **ATTRS), f,
                           note=note, counts=counts)
            if has_grouped_mm:
                self.timed("contender", "torch grouped_mm", t, lambda x=x: torch_grouped_mm(x, *ws, k), f)
            self.timed("contender", "torch loop (reference)", t,
                       lambda x=x: get_op("moe").reference(x, *ws, top_k=k, **ATTRS), f)
        # small T: where moe_path switches, and the shares its constants stand for
        print("crossover (moe_path prices; measured both):", flush=True)
        for t in self.a.small_tokens:
            x = torch.randn(t, d, device=self.device).to(dtype)
            _, experts = route(x, ws[0], top_k=k, **{k_: ATTRS[k_] for k_ in ("softmax_first", "renormalize")})
            counts = torch.bincount(experts.reshape(-1), minlength=e).tolist()
            chosen = sum(c > 0 for c in counts)
            weights = chosen * 3 * d * i * item
            priced = MOE.path_times(t, e, k, d, i, dtype, x.device)
            for path in MOE.PATHS:
                ms = self.timed("crossover", path, t, lambda path=path, x=x: moe(x, *ws, top_k=k, path=path, **ATTRS),
                                self.flops(t, k, d, i), note=f"priced {priced[path] * 1e3:.3f} ms")
                if ms is None:
                    continue
                if path == "decode":  # the walk streams each chosen expert once per 16-pair chunk
                    chunks = sum(-(-c // MOE.BLOCK_M) for c in counts)
                    share = chunks * 3 * d * i * item / (ms * 1e-3) / self.hw.bandwidth
                    self.rows[-1].update(bw_share=share)
                    print(f"      -> DECODE_BW_SHARE {share:.3f} ({chunks} chunks of 16)", flush=True)
                else:
                    share = weights / (ms * 1e-3) / self.hw.bandwidth
                    self.rows[-1].update(bw_share=share)
                    print(f"      -> GROUPED_BW_SHARE {share:.3f} (if memory-bound)", flush=True)
        # the grouped path's tensor-core share at the longest prefill: padded rows' FLOPs over the time
        t = max(self.a.tokens)
        grouped = [r for r in self.rows if r.get("part") == "contender" and r["name"] == "grouped"
                   and r["tokens"] == t and "ms" in r]
        if grouped:
            cfg = MOE.pick_grouped_config(t * k, e, i, d, dtype, None, 0, True)
            rows = sum(-(-c // cfg.block_m) * cfg.block_m for c in grouped[0]["counts"])
            share = 2.0 * rows * 3 * d * i / (grouped[0]["ms"] * 1e-3) / peak
            print(f"  -> GROUPED_MMA_SHARE {share:.3f} at T={t} ({rows} padded rows, peak {peak / 1e12:.0f} TFLOP/s)",
                  flush=True)
            self.rows.append(dict(part="share", name="GROUPED_MMA_SHARE", tokens=t, value=share))
        # the tile sweep
        for t in self.a.sweep_tokens:
            if self.left_s() < 20:
                self.row(part="sweep", tokens=t, name="(skipped)", error="over --budget-s")
                break
            x = torch.randn(t, d, device=self.device).to(dtype)
            for name, cfgs in SWEEP:
                tiles = " / ".join(f"{c.block_m}x{c.block_n}x{c.block_k} w{c.num_warps} s{c.num_stages} g{c.group_m}"
                                   for c in cfgs)
                self.timed("sweep", name, t, lambda cfgs=cfgs, x=x: moe(x, *ws, top_k=k, configs=cfgs, **ATTRS),
                           self.flops(t, k, d, i), note=tiles)
        del ws
        # quantized experts at the same shape, T = 512
        if self.a.smoke or self.left_s() < 40:
            return
        ws = layer(e, d, i, dtype, self.device, seed=5)
        t = 512
        x = torch.randn(t, d, device=self.device).to(dtype)
        for scheme, group in (("int8", 0), ("int4", 128)):
            packed = []
            for w in ws[1:4]:
                q, sc = quantize(w.reshape(-1, w.shape[-1]), scheme, group or 128)
                packed += [q.view(*w.shape[:2], *q.shape[1:]), sc.view(*w.shape[:2], *sc.shape[1:])]
            for path in MOE.PATHS:
                if self.left_s() < 15:
                    break
                self.timed("quant", f"{scheme} {path}", t,
                           lambda path=path, packed=packed, scheme=scheme, group=group: quant_moe(
                               x, ws[0], *packed, scheme=scheme, group_size=group, top_k=k, path=path, **ATTRS),
                           self.flops(t, k, d, i))
            del packed

    def table(self) -> str:
        lines = ["MoE layer (Mixtral-8x7B shape) prefill, ms (TFLOP/s)"]
        names = []
        for r in self.rows:
            if r.get("part") == "contender" and r["name"] not in names:
                names.append(r["name"])
        lines.append(f"{'T':>6s} " + " ".join(f"{n[:22]:>24s}" for n in names))
        for t in self.a.tokens:
            cells = []
            for n in names:
                r = next((r for r in self.rows if r.get("part") == "contender" and r["name"] == n
                          and r["tokens"] == t), None)
                cells.append(f"{r['ms']:9.3f} ({r['tflops']:6.1f})" if r and "ms" in r else f"{'-':>18s}")
            lines.append(f"{t:6d} " + " ".join(f"{c:>24s}" for c in cells))
        best = {}
        for r in self.rows:
            if r.get("part") == "sweep" and "ms" in r and r["ms"] < best.get(r["tokens"], {}).get("ms", 1e30):
                best[r["tokens"]] = r
        for t, r in sorted(best.items()):
            lines.append(f"sweep best at T={t}: {r['name']} {r['ms']:.3f} ms ({r['tflops']:.1f} TFLOP/s) [{r['note']}]")
        return "\n".join(lines)


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", nargs="+", type=int, default=[128, 512, 2048])
    p.add_argument("--small-tokens", nargs="+", type=int, default=[1, 8, 24, 40, 64])
    p.add_argument("--sweep-tokens", nargs="+", type=int, default=[512, 2048])
    p.add_argument("--rep-ms", type=int, default=60, help="do_bench's rep (ms of repeats per timing)")
    p.add_argument("--budget-s", type=float, default=150.0, help="skip the sweep / quantized rows past this")
    p.add_argument("--smoke", action="store_true", help="CPU interpreter, tiny shape")
    p.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "benches" / "results"))
    a = p.parse_args(argv)
    if a.smoke:
        a.tokens, a.small_tokens, a.sweep_tokens = [16], [1, 4], []
    return a


def main(argv: Optional[list[str]] = None) -> int:
    a = parse_args(argv)
    bench = Bench(a)
    e, d, i, k = (bench.shape[n] for n in ("E", "D", "I", "top_k"))
    print(f"{bench.card}: E={e} D={d} I={i} top-{k}; pricing on {bench.hw.name}", flush=True)
    print("1. correctness (rel err vs the op's reference)", flush=True)
    with torch.no_grad():
        bench.correctness(e, d, i, k)
        if bench.failures:
            print(f"FAILED: {bench.failures}: no timing", flush=True)
        else:
            print("2-4. timings", flush=True)
            bench.timings(e, d, i, k)
    bench.save()
    print(f"wrote {bench.path}\n\n{bench.table()}", flush=True)
    return 1 if bench.failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
