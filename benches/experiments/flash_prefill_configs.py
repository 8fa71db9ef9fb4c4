"""Experiment (one H200 run, about 3 minutes): the prefill flash kernel's tile configs against SDPA, to
recalibrate ``flash_attention.pick_config`` and the efficiencies of its cost rule (``choose_impl``).

    PYTHONPATH=. python benches/experiments/flash_prefill_configs.py --out DIR       # CUDA GPU
    PYTHONPATH=. python benches/experiments/flash_prefill_configs.py --smoke         # CPU interpreter, tiny

Prefill (the ``attention`` op) with 32 query heads over 8 kv heads, bf16, head dim 64 and 128, causal and
not, B x S = 4 x 4096 and 16 x 1024. Contenders: ``sdpa gqa`` (``enable_gqa=True``), ``pick`` (our kernel
with ``pick_config``'s tiles) and each ``FlashConfig`` of ``CONFIGS`` (query rows, keys per tile, warps,
stages). Same method as ``benches/attention.py`` (its ``Bench``): every contender checked against SDPA on
K/V expanded to the query heads, then timed inside one CUDA graph of several calls (median of replays),
cycling through input copies past the L2. TFLOP/s = 4 B Hq S^2 D / time, halved for causal.

Prints, last: per shape SDPA, pick and the best config with their TFLOP/s and ratio to SDPA; per config its
geometric-mean ratio to SDPA per head dim. Writes ``flash_prefill_configs-<gpu>-<date>.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
from functools import partial
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (block_m, block_n, warps, stages)
CONFIGS = [(128, 64, 8, 3), (128, 128, 8, 3), (128, 64, 4, 3), (128, 128, 8, 2), (128, 64, 8, 4),
           (64, 64, 4, 3), (64, 128, 4, 3), (128, 32, 4, 4), (64, 64, 4, 4)]


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT"))
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import torch.nn.functional as F

    from benches._results import gpu_slug
    from benches.attention import Bench
    from membound.backends.triton.kernels import FlashConfig, flash_attention
    from membound.backends.triton.kernels.flash_attention import pick_config

    bench = Bench("cpu" if args.smoke else "cuda", args.smoke)
    hq, hkv = (4, 2) if args.smoke else (32, 8)
    shapes = [(1, 37, 16)] if args.smoke else [(4, 4096, 128), (16, 1024, 128), (4, 4096, 64), (16, 1024, 64)]
    configs = [(16, 16, 4, 2)] if args.smoke else CONFIGS
    sdpa = F.scaled_dot_product_attention
    for b, s, d in shapes:
        nbytes = torch.empty((), dtype=bench.dtype).element_size() * b * s * d * (2 * hq + 2 * hkv)
        gqa = [(bench.rand(b, hq, s, d), bench.rand(b, hkv, s, d), bench.rand(b, hkv, s, d))
               for _ in range(bench.copies(nbytes))]
        q0, k0, v0 = gqa[0]
        for causal in (False, True):
            flops = 4.0 * b * hq * s * s * d / (2 if causal else 1)
            case = f"b{b} s{s} d{d} {'causal' if causal else 'full'}"
            want = sdpa(q0, k0.repeat_interleave(hq // hkv, 1), v0.repeat_interleave(hq // hkv, 1), is_causal=causal)
            bench.add("prefill", case, "sdpa gqa", partial(sdpa, is_causal=causal, enable_gqa=True), gqa, want,
                      flops, nbytes)
            pick = pick_config(s, d, bench.dtype, args.smoke)
            bench.add("prefill", case, f"pick {pick.block_m}x{pick.block_n} w{pick.num_warps} s{pick.num_stages}",
                      partial(flash_attention, causal=causal), gqa, want, flops, nbytes)
            for bm, bn, w, st in configs:
                try:
                    bench.add("prefill", case, f"cfg {bm}x{bn} w{w} s{st}",
                              partial(flash_attention, causal=causal, config=FlashConfig(bm, bn, w, st)), gqa, want,
                              flops, nbytes)
                except Exception as e:  # noqa: BLE001 - a config that does not compile (shared memory) is reported
                    print(f"{case} cfg {bm}x{bn} w{w} s{st}: {type(e).__name__}: {str(e)[:160]}", flush=True)
        del gqa
        torch.cuda.empty_cache() if not args.smoke else None
    rows = [r.__dict__ for r in bench.rows]
    gpu = "cpu" if args.smoke else gpu_slug(torch.cuda.get_device_name())
    if args.out:
        path = Path(args.out) / f"flash_prefill_configs-{gpu}-{datetime.date.today()}.json"
        path.write_text(json.dumps({"gpu": gpu, "read_bw": bench.read_bw, "rows": rows}, indent=1))
        print(f"wrote {path}")
    cases = list(dict.fromkeys(r["case"] for r in rows))
    print(f"{'case':24s} {'sdpa':>7s} {'pick':>7s} {'x':>5s}  best config              {'TFLOP/s':>7s} {'x':>5s}")
    for c in cases:
        rs = [r for r in rows if r["case"] == c]
        ref = next(r for r in rs if r["contender"] == "sdpa gqa")
        pk = next(r for r in rs if r["contender"].startswith("pick"))
        best = max((r for r in rs if r["contender"].startswith("cfg")), key=lambda r: r["tflops"], default=pk)
        print(f"{c:24s} {ref['tflops']:7.1f} {pk['tflops']:7.1f} {pk['tflops'] / ref['tflops']:5.2f}  "
              f"{best['contender']:24s} {best['tflops']:7.1f} {best['tflops'] / ref['tflops']:5.2f}")
    for d in sorted({int(c.split(" d")[1].split()[0]) for c in cases}):
        for name in dict.fromkeys(r["contender"] for r in rows if r["contender"].startswith("cfg")):
            ratios = []
            for c in cases:
                if f" d{d} " not in c:
                    continue
                rs = {r["contender"]: r for r in rows if r["case"] == c}
                if name in rs:
                    ratios.append(rs[name]["tflops"] / rs["sdpa gqa"]["tflops"])
            if ratios:
                print(f"d{d} {name:24s} geomean x sdpa {math.exp(sum(map(math.log, ratios)) / len(ratios)):.3f} "
                      f"over {len(ratios)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
