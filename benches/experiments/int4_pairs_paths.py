"""Experiment (one H200 run, ~2 minutes): the int4 pairs kernel against the previous int4 paths and bf16.

    PYTHONPATH=. python benches/experiments/int4_pairs_paths.py            # CUDA GPU; JSON into $OUT (or /tmp)
    PYTHONPATH=. python benches/experiments/int4_pairs_paths.py --quick    # M = 1 and the default tiles only

At the Llama-3-8B decode projections (qkv 6144x4096, gate_up 28672x4096, down 4096x14336 plain and gated,
lm head 128256x4096), M = 1 and 16, bf16 x, int4 group 128, per op in microseconds:

- ``bf16``: our ``linear`` / ``gated_linear`` on the bf16 weight;
- ``int4 old``: ``pick_config(..., pairs=False)``, the rule before the pairs kernel (FMA GEMV at M = 1
  except lm heads, tensor cores over ``_int4_dequant`` words otherwise);
- ``int4 pairs``: the default now (``pick_config(..., pairs=True)``), and at M = 1 a few other tiles of
  the same kernel (``pairs BNxBK wW sS``) so the default can be re-tuned from one run;
- ``int4 pair-codes``: the same tiles with ``pair_codes`` (the dot on the exact biased codes, the group's
  scale and offset on the fp32 tile product: sm_90 SASS 3.20 instructions a code against 3.31 with
  triton 3.9, 3.37 against 3.33 with triton 3.6, the GPU's).

Each op runs over enough distinct weight copies (>= 256 MB in all) to stream from HBM, not L2, inside one
CUDA graph (``static_weight=True``), median of 15 replays. Each path's output on the first copy is checked
against the reference (the weight dequantized to bf16, then an fp32 matmul): ``err`` is
``max|y - ref| / max|ref|``, pass at <= 1e-2 (bf16 output rounding is 2^-9 relative; the kernels
accumulate in fp32). ``GB/s`` counts the packed weight, scales, x and y once (``quant_linear_bytes``);
``%bw`` is against a read-bandwidth probe (a torch fp32 sum over 2 GiB) measured in the same run.
Goals (issue 10): int4 at M = 1 >= 3.2x our bf16 and >= 85% of read bandwidth; at M = 16 >= 2.5x.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from benches._timing import graph_time
from membound.backends.triton.kernels import quant_matmul as qm
from membound.backends.triton.kernels.linear import gated_linear, linear
from membound.ir.ops.quant import dequantize, quantize

GROUP = 128
SHAPES = {"qkv": (6144, 4096, False), "gate_up": (28672, 4096, False), "down": (4096, 14336, False),
          "down_gated": (4096, 14336, True), "head": (128256, 4096, False)}
STREAM_BYTES = 256 << 20
TILES_M1 = [(256, 128, 4, 3), (128, 128, 2, 3), (64, 128, 2, 4), (128, 64, 4, 4)]  # (BN, BK, warps, stages)


def time_graph(fn, replays: int = 15) -> float:
    """Median milliseconds of one replay of a CUDA graph of ``fn``."""
    return graph_time(fn, replays) * 1e3


def read_bandwidth() -> float:
    t = torch.empty(1 << 29, dtype=torch.float32, device="cuda").uniform_()
    ms = time_graph(lambda: t.sum())
    del t
    return (2 << 30) / (ms * 1e-3)


def main() -> int:
    if not torch.cuda.is_available():
        print("int4_pairs_paths: needs a CUDA GPU")
        return 0
    quick = "--quick" in sys.argv
    dev = torch.device("cuda")
    torch.manual_seed(0)
    t0 = time.time()
    bw = read_bandwidth()
    print(f"read bandwidth probe {bw / 1e9:.0f} GB/s", flush=True)
    rows = []
    for name, (n, k, gated) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) * 0.02
        q, s = quantize(w, "int4", GROUP)
        wd = dequantize(q, s, "int4", GROUP, k, torch.bfloat16)
        packed = qm.packed_bytes(n, k, "int4", GROUP, torch.bfloat16)
        copies_q = max(2, math.ceil(STREAM_BYTES / packed))
        copies_b = max(2, math.ceil(STREAM_BYTES / (2 * n * k)))
        qs = [(q, s)] + [(q.clone(), s.clone()) for _ in range(copies_q - 1)]
        for m in ((1,) if quick else (1, 16)):
            x = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            u = torch.randn(m, k, device=dev, dtype=torch.bfloat16)
            xe = (F.silu(x) * u) if gated else x  # eager rounding of the gated input, bf16
            ref = F.linear(xe.float(), wd.float())
            eff = qm.quant_linear_bytes(m, n, k, "int4", GROUP, torch.bfloat16)

            def record(path: str, y: torch.Tensor, ms: float, copies: int, nbytes: int, cfg=None) -> None:
                us = ms * 1e3 / copies
                err = float((y.float() - ref).abs().max() / ref.abs().max())
                gbs = nbytes / (us * 1e-6) / 1e9
                rows.append(dict(shape=name, n=n, k=k, m=m, gated=gated, path=path, us=us, err=err, ok=err <= 1e-2,
                                 GBs=gbs, pct_bw=100 * gbs * 1e9 / bw, config=None if cfg is None else str(cfg)))
                print(f"{name:10s} M={m:<2d} {path:26s} {us:9.2f} us {gbs:7.0f} GB/s {rows[-1]['pct_bw']:5.1f}%  "
                      f"err {err:.1e}{'' if err <= 1e-2 else '  FAIL'}", flush=True)

            # bf16: our linear / gated_linear over distinct copies of the bf16 weight
            wbs = [w] + [w.clone() for _ in range(copies_b - 1)]

            def run_bf16(wbs=wbs, x=x, u=u, gated=gated):
                for wi in wbs:
                    gated_linear(x, u, wi, static_weight=True) if gated else linear(x, wi, static_weight=True)

            y = gated_linear(x, u, wd, static_weight=True) if gated else linear(x, wd, static_weight=True)
            record("bf16", y, time_graph(run_bf16), copies_b, 2 * n * k + 2 * (m * k + m * n))
            del wbs
            pairs = qm.pick_config(m, n, k, "int4", GROUP, x.dtype, dev, pairs=True)
            configs = [("int4 old", qm.pick_config(m, n, k, "int4", GROUP, x.dtype, dev, pairs=False)),
                       ("int4 pairs", pairs), ("int4 pair-codes", replace(pairs, pair_codes=True))]
            if m == 1 and not quick:
                for bn, bk, nw, ns in TILES_M1:
                    c = qm._with_split(16, bn, bk, m, n, k, True, True, dev, pairs=True)
                    configs.append((f"int4 pairs {bn}x{bk} w{nw} s{ns}", replace(c, num_warps=nw, num_stages=ns)))
            for label, cfg in configs:
                def call(qi, si, cfg=cfg, x=x, u=u, gated=gated):
                    if gated:
                        return qm.quant_gated_linear(x, u, qi, si, scheme="int4", group_size=GROUP, in_features=k,
                                                     config=cfg, static_weight=True)
                    return qm.quant_linear(x, qi, si, scheme="int4", group_size=GROUP, in_features=k, config=cfg,
                                           static_weight=True)
                try:
                    y = call(q, s)
                    ms = time_graph(lambda call=call: [call(qi, si) for qi, si in qs])
                    record(label, y, ms, len(qs), eff, cfg)
                except Exception as e:  # a tile that does not compile or launch: recorded, the run goes on
                    rows.append(dict(shape=name, m=m, path=label, error=f"{type(e).__name__}: {e}"[:300]))
                    print(f"{name:10s} M={m:<2d} {label:26s} FAILED {rows[-1]['error']}", flush=True)
        del qs, w, wd
        torch.cuda.empty_cache()
    # speedups over bf16 per (shape, m)
    base = {(r["shape"], r["m"]): r["us"] for r in rows if r.get("path") == "bf16"}
    for r in rows:
        if "us" in r:
            r["speedup_vs_bf16"] = base[(r["shape"], r["m"])] / r["us"]
    print("\nspeedup over our bf16 (int4 old / pairs default / best pairs tile):")
    for (shape, m), t_bf in base.items():
        mine = [r for r in rows if r["shape"] == shape and r["m"] == m and "us" in r]
        old = next((r for r in mine if r["path"] == "int4 old"), None)
        new = next((r for r in mine if r["path"] == "int4 pairs"), None)
        best = min((r for r in mine if r["path"].startswith("int4 pair")), key=lambda r: r["us"], default=None)
        cells = [f"{r['speedup_vs_bf16']:.2f}x ({r['pct_bw']:.0f}%)" if r else "-" for r in (old, new, best)]
        print(f"  {shape:10s} M={m:<2d} {' / '.join(cells)}{'  best: ' + best['path'] if best else ''}")
    out = os.environ.get("OUT", "/tmp")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "int4_pairs_paths.json")
    with open(path, "w") as f:
        json.dump(dict(device=torch.cuda.get_device_name(), torch=torch.__version__,
                       triton=__import__("triton").__version__, read_bw_GBs=bw / 1e9, group=GROUP,
                       seconds=time.time() - t0, rows=rows), f, indent=1)
    print(f"wrote {path} ({time.time() - t0:.0f} s)")
    bad = [r for r in rows if r.get("ok") is False or "error" in r and r["path"] in ("int4 pairs", "int4 old")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
