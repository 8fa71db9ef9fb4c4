"""Where a decode MoE layer's time goes, and which expert-kernel tiles stream fastest (GPU).

    PYTHONPATH=. python benches/experiments/moe_decode_tiles.py [--tokens 1,8] [--out DIR]

One ``moe`` op at the Mixtral-8x7B layer shape (D 4096, I 14336, 8 experts, top-2, bf16, random weights),
timed by CUDA-graph replay (median of 200): the whole op, then under ``torch.profiler`` its kernels
(routing, sort and counts in torch; the two expert kernels; the combine), then the expert kernels at other
``(BLOCK_N, BLOCK_K)`` tiles (the wrapper's ``_block`` choice replaced for the sweep). Active bytes: the
distinct experts' gate, up and down weights, ``E (1 - (1 - k/E)^T)`` of them for T tokens (expected under
uniform routing; the figure printed uses the experts this draw actually routed to).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._timing import graph_time as graph_time_s  # noqa: E402

# (gate/up BLOCK_N, gate/up BLOCK_K, down BLOCK_N, down BLOCK_K); None = the wrapper's own choice
# int4 experts (--scheme int4, group 128): wider tiles amortise the per-step x loads and address arithmetic
# (benches/experiments/moe_int4_sass.py: gate/up 6.81 instructions a code at 32 x 64, 5.02 at 64 x 64, 4.37 at 128 x 64
# with the pairs dequantization) at the price of registers and programs
INT4_PLANS = (None, (64, 64, 64, 64), (128, 64, 128, 64), (64, 128, 64, 128), (128, 64, 64, 128), (64, 64, 32, 64))
PLANS = (None, (32, 64, 32, 64), (16, 64, 16, 64), (32, 128, 16, 128), (64, 128, 32, 128), (16, 128, 16, 128),
         (32, 64, 16, 128), (64, 64, 16, 64))


def graph_time(fn, reps: int = 200) -> float:
    """Median microseconds of one replay of a CUDA graph of ``fn``."""
    return graph_time_s(fn, reps) * 1e6


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", default="1,8")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    p.add_argument("--plans", type=int, default=len(PLANS), help="time the first N tile plans (1: the default's)")
    p.add_argument("--tag", default="", help="suffix of the result file's name (A/B runs)")
    p.add_argument("--scheme", default="bf16", choices=("bf16", "int8", "int4"),
                   help="expert weights: bf16 (moe) or quantized (quant_moe, int4 group 128, its own tile plans)")
    args = p.parse_args()
    import importlib

    moe_mod = importlib.import_module("membound.backends.triton.kernels.moe")  # the package exports the function
    from membound.ir.ops import get_op

    torch.manual_seed(0)
    e, d, i, k = 8, 4096, 14336, 2
    dev, dt = "cuda", torch.bfloat16
    wg = torch.randn(e, i, d, device=dev, dtype=dt) * 0.02
    wu = torch.randn(e, i, d, device=dev, dtype=dt) * 0.02
    wd = torch.randn(e, d, i, device=dev, dtype=dt) * 0.02
    router = torch.randn(e, d, device=dev, dtype=dt) * 0.02
    x_probe = torch.randn(4 << 28, device=dev, dtype=torch.bfloat16)
    read_bw = x_probe.numel() * 2 / (graph_time(lambda: x_probe.sum(), 20) * 1e-6) / 1e9
    del x_probe
    op = moe_mod.moe
    plans = PLANS
    weights = (wg, wu, wd)
    if args.scheme != "bf16":
        from functools import partial

        from membound.ir.ops.quant import quantize

        group = 128 if args.scheme == "int4" else 0
        packed = []
        for w in (wg, wu, wd):
            q, sc = quantize(w.reshape(-1, w.shape[-1]), args.scheme, group or 128)
            packed += [q.view(*w.shape[:2], -1), sc.view(*w.shape[:2], *sc.shape[1:])]
        weights = tuple(packed)
        op = partial(moe_mod.quant_moe, scheme=args.scheme, group_size=group)
        plans = INT4_PLANS if args.scheme == "int4" else PLANS
        reference = get_op("quant_moe").reference
    else:
        reference = get_op("moe").reference
    rows = []
    real_block = moe_mod._block
    for t in [int(v) for v in args.tokens.split(",")]:
        x = torch.randn(t, d, device=dev, dtype=dt)
        ref = reference(x, router, *weights, top_k=k, softmax_first=True, renormalize=True, act="silu",
                        **({} if args.scheme == "bf16" else dict(scheme=args.scheme,
                                                                 group_size=128 if args.scheme == "int4" else 0))
                        ).float()
        logits = x.float() @ router.float().T
        active = len(set(torch.topk(logits, k, dim=-1).indices.flatten().tolist()))
        nbytes = active * 3 * i * d * {"bf16": 2, "int8": 1, "int4": 0.5}[args.scheme]  # codes; scales aside
        for plan in plans[:args.plans]:
            if plan is not None:
                def call(plan=plan):
                    # _block is asked for gate/up's BLOCK_N, BLOCK_K, then down's: the plan's four in turn
                    picks = iter(plan)
                    moe_mod._block = lambda n, cap: next(picks)  # noqa: E731
                    return op(x, router, *weights, top_k=k)
                out = call()
            else:
                moe_mod._block = real_block
                out = op(x, router, *weights, top_k=k)

                def call():
                    return op(x, router, *weights, top_k=k)
            err = float((out.float() - ref).abs().max() / ref.abs().max())
            us = graph_time(call)
            row = dict(tokens=t, plan=plan, us=us, active_experts=active, gbps=nbytes / us / 1e3,
                       pct_read=100 * nbytes / us / 1e3 / read_bw, rel_err=err)
            rows.append(row)
            print(f"T={t} plan={plan}: {us:8.1f} us  {row['gbps']:6.0f} GB/s  {row['pct_read']:5.1f}%  err {err:.2e}",
                  flush=True)
        moe_mod._block = real_block
        # the kernels of one call, default tiles
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(10):
                op(x, router, *weights, top_k=k)
            torch.cuda.synchronize()
        table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=25)
        print(f"T={t} kernels over 10 calls:\n{table}", flush=True)
        rows.append(dict(tokens=t, profile=table))
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"moe_decode_tiles{args.tag}.json").write_text(json.dumps(dict(read_bw_gbps=read_bw, env={k: v for k, v in os.environ.items() if k.startswith("MEMBOUND_")}, rows=rows), indent=1))
    print(f"\nread bandwidth {read_bw:.0f} GB/s")
    for r in rows:
        if "us" in r:
            print(f"T={r['tokens']:2d} {str(r['plan']):22s} {r['us']:8.1f} us {r['pct_read']:5.1f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
