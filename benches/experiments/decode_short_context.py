"""Experiment (one H200 run, about a minute): flash-decoding at the short contexts of a decode step inside
``generate``'s CUDA graph, by the least number of key tiles one program streams (``decode_attention.MIN_TILES``) and the longest span
one program streams alone (``DIRECT_TILES``).

    PYTHONPATH=. python benches/experiments/decode_short_context.py --out DIR    # CUDA GPU
    PYTHONPATH=. python benches/experiments/decode_short_context.py --smoke      # CPU interpreter, tiny

The step's profile (``profile_step-quick-nvidia-h200-2026-12-03``) has flash-decoding at 6.5 us a launch at
head dim 64 but 13-17 us at 128 (context 256): with ``MIN_TILES = 4`` one program per kv head streams all
four 64-slot tiles of a 256-slot prefix in series (8 programs at batch 1). Fewer tiles a program split the
prefix over more programs, which then merge (the last to arrive); a direct span keeps a prefix of up to
``DIRECT_TILES`` tiles in one program (no merge). ``--long``: contexts 4k and 32k and the programs per SM
the grid is sized for (``PROGRAMS_PER_SM``), MIN_TILES 4 and 8. ``LEAST_TILES``: the device split's smallest chunk. Cases: 32 query heads over 8 kv heads,
head dim 64 and 128, bf16, batch 1 and 8, filled length 128 .. 2048 in a cache of the power-of-two capacity
above it, no known length (the graph-step path: the device splits the filled prefix). Contenders: SDPA
(``enable_gqa``) on the filled prefix, and ours at each ``(MIN_TILES, DIRECT_TILES)`` of ``VARIANTS``. Method: ``benches/attention.py``'s
``Bench`` (checked against SDPA first; a CUDA graph of several calls, median of replays; input copies cycled
past the L2). Prints a table of microseconds per call last; writes ``decode_short_context-<gpu>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from functools import partial
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# (PROGRAMS_PER_SM, MIN_TILES, DIRECT_TILES, LEAST_TILES) variants (MIN_TILES, DIRECT_TILES and LEAST_TILES count
# 32 KB tiles; at head dim 128 the wide tiles of session 10 take WIDE_PROGRAMS_PER_SM, so PROGRAMS_PER_SM moves only
# D = 64 there; MEMBOUND_DECODE_WIDE=0 for the 64-slot tiles): the first run (2026-12-03) timed MIN_TILES 1, 2, 4
# without a direct span, the second MIN_TILES 4 and 2 with DIRECT_TILES 0, 6, 8 (the -direct result file; LEAST_TILES
# was MIN_TILES then), session 11 the device split's least chunk (LEAST_TILES 4, 2, 1) under a grid sized by MIN_TILES
# and the Dv split (DV_SPLIT, session 16; 1 = none) as a fifth
VARIANTS = ((2, 4, 6, 4, 1), (2, 4, 6, 2, 1), (2, 4, 6, 1, 1), (2, 2, 6, 2, 1))
# --long: the programs per SM the grid is sized for, at long contexts
LONG_VARIANTS = ((1, 4, 6, 2, 1), (2, 4, 6, 2, 1), (3, 4, 6, 2, 1), (4, 4, 6, 2, 1), (2, 8, 6, 2, 1))
# --dv-split: the defaults with the output's columns over 1, 2 and 4 programs (short contexts; with --long, long)
DV_VARIANTS = ((2, 4, 6, 2, 1), (2, 4, 6, 2, 2), (2, 4, 6, 2, 4))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--out", default=os.environ.get("OUT"))
    p.add_argument("--long", action="store_true", help="contexts 4k and 32k, the programs-per-SM variants")
    p.add_argument("--dv-split", action="store_true", help="the Dv split variants (DV_SPLIT 1, 2, 4)")
    args = p.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch
    import torch.nn.functional as F

    from benches._results import gpu_slug
    from benches.attention import Bench
    from membound.backends.triton.kernels import cached_attention
    from membound.backends.triton.kernels import decode_attention as da

    bench = Bench("cpu" if args.smoke else "cuda", args.smoke)
    hq, hkv = (4, 2) if args.smoke else (32, 8)
    dims = (16,) if args.smoke else (64, 128)
    lengths = (40,) if args.smoke else (4096, 32768) if args.long else (128, 256, 384, 512, 1024, 2048, 4096)
    variants = DV_VARIANTS if args.dv_split else LONG_VARIANTS if args.long else VARIANTS
    batches = (1, 3) if args.smoke else (1, 8)
    default = (da.PROGRAMS_PER_SM, da.MIN_TILES, da.DIRECT_TILES, da.LEAST_TILES, da.DV_SPLIT)
    e = torch.empty((), dtype=bench.dtype).element_size()
    for d in dims:
        for length in lengths:
            for b in batches:
                cap = 1 << length.bit_length()
                pos = torch.full((b, 1), length - 1, dtype=torch.int64, device=bench.device)
                nbytes = e * (2 * b * hkv * length * d + 2 * b * hq * d)
                ours, theirs = [], []
                for _ in range(bench.copies(e * 2 * b * hkv * cap * d)):
                    q = bench.rand(b, hq, 1, d)
                    k = torch.zeros(b, hkv, cap, d, dtype=bench.dtype, device=bench.device)
                    v = torch.zeros_like(k)
                    k[:, :, :length], v[:, :, :length] = bench.rand(b, hkv, length, d), bench.rand(b, hkv, length, d)
                    ours.append((q, k, v, pos))
                    theirs.append((q, k[:, :, :length], v[:, :, :length]))
                case = f"d{d} b{b} ctx{length} cap{cap}"
                want = F.scaled_dot_product_attention(*theirs[0], enable_gqa=True)
                flops = 4.0 * b * hq * length * d
                bench.add("decode", case, "sdpa gqa", partial(F.scaled_dot_product_attention, enable_gqa=True), theirs,
                          want, flops, nbytes)
                for pps, m, direct, least, dv in variants:
                    da.PROGRAMS_PER_SM, da.MIN_TILES, da.DIRECT_TILES, da.LEAST_TILES, da.DV_SPLIT = (pps, m, direct,
                                                                                                      least, dv)
                    label = f"pps{pps} min{m} dir{direct} least{least}" + (f" dv{dv}" if dv != 1 or args.dv_split else "")
                    try:
                        bench.add("decode", case, label, cached_attention, ours, want, flops, nbytes)
                    finally:
                        da.PROGRAMS_PER_SM, da.MIN_TILES, da.DIRECT_TILES, da.LEAST_TILES, da.DV_SPLIT = default
                del ours, theirs
    rows = [r.__dict__ for r in bench.rows]
    gpu = "cpu" if args.smoke else gpu_slug(torch.cuda.get_device_name())
    if args.out:
        tag = ("-long" if args.long else "") + ("-dv-split" if args.dv_split else "")
        path = Path(args.out) / f"decode_short_context{tag}-{gpu}-{datetime.date.today()}.json"
        path.write_text(json.dumps({"gpu": gpu, "read_bw": bench.read_bw, "default_pps_min_direct_least_dv": default,
                                    "long": args.long,
                                    "rows": rows}, indent=1))
        print(f"wrote {path}")
    names = list(dict.fromkeys(r["contender"] for r in rows))
    print(f"{'case':26s}" + "".join(f"{n:>24s}" for n in names) + "   (us per call)")
    for c in dict.fromkeys(r["case"] for r in rows):
        rs = {r["contender"]: r for r in rows if r["case"] == c}
        print(f"{c:26s}" + "".join(f"{rs[n]['us']:24.2f}" if n in rs else f"{'-':>24s}" for n in names))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
