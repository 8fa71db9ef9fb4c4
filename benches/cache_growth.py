"""What a ``generate`` call costs when it needs a longer KV cache than any call before (issue #13).

    PYTHONPATH=. python benches/cache_growth.py            # GPU: llama-1b bf16, CUDA graphs
    PYTHONPATH=. python benches/cache_growth.py --smoke    # CPU, llama-tiny fp32 (checks the script)

The cache grows in power-of-two buckets (``runtime/kv_cache.py``); a call past the current bucket
reallocates the cache and captures the decode step's CUDA graph again, once, for that bucket. For each
growth (a prompt of ``--prompt`` tokens, then calls of ``--lengths`` new tokens, each longer than the
last) the bench times the *first* call of that length (the one that grows the cache and captures) and
the median of ``--reps`` warm calls of the same length right after, on the same compiled model. Goal:
a growing call costs at most 10% more than a warm call of the same length. The cache's allocation
count and the decode graphs captured are recorded, so a growth that did not happen cannot pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import membound  # noqa: E402
from benches._results import gpu_slug, write_record  # noqa: E402
from membound.models import build_model  # noqa: E402

GOAL = 1.10


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn: Any) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def program_of(compiled: Any) -> Any:
    """The compiled model's KV program (its cache and decode runner), once ``generate`` made it."""
    for holder in (compiled, getattr(compiled, "_membound", None)):
        for name in ("_kv_program", "kv_program", "_program"):
            prog = getattr(holder, name, None) if holder is not None else None
            if prog is not None:
                return prog
    return None


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = "cpu" if args.smoke else "cuda"
    dtype = torch.float32 if args.smoke else torch.bfloat16
    model = build_model(args.model, dtype=dtype, device=device)
    compiled = membound.compile(model, backend="reference" if args.smoke else "triton",
                                cuda_graphs=not args.smoke)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(1, model.config.vocab_size if hasattr(model, "config") else 100,
                        (args.batch, args.prompt), generator=gen).to(device)
    rows = []
    first = args.lengths[0]
    timed(lambda: membound.generate(compiled, ids, first))   # compiles, captures the first bucket
    timed(lambda: membound.generate(compiled, ids, first))
    for n in args.lengths[1:]:
        prog = program_of(compiled)
        before = (prog.cache.allocations, prog.cache.max_len) if prog is not None else (None, None)
        seen = len(getattr(prog, "captures", ())) if prog is not None else 0
        grow_s = timed(lambda n=n: membound.generate(compiled, ids, n))
        prog = program_of(compiled)
        captures = list(getattr(prog, "captures", ())[seen:]) if prog is not None else []
        after = (prog.cache.allocations, prog.cache.max_len) if prog is not None else (None, None)
        warm = [timed(lambda n=n: membound.generate(compiled, ids, n)) for _ in range(args.reps)]
        warm_s = statistics.median(warm)
        ratio = grow_s / warm_s
        rows.append(dict(new_tokens=n, needed=args.prompt + n, capacity_before=before[1], capacity_after=after[1],
                         allocations_before=before[0], allocations_after=after[0], grew=before != after,
                         growing_call_s=grow_s, warm_call_s=warm_s, warm_calls_s=warm, ratio=ratio,
                         captures=captures, goal_met=bool(ratio <= GOAL)))
        cap_ms = " + ".join(f"warm-up {1e3 * (c['warmup_s'] or 0):.1f} ms, capture {1e3 * (c['capture_s'] or 0):.1f} ms"
                            for c in captures) or "no capture"
        print(f"  {args.prompt} + {n:5d} tokens: capacity {before[1]} -> {after[1]}, growing call "
              f"{grow_s * 1e3:8.1f} ms, warm {warm_s * 1e3:8.1f} ms, ratio {ratio:5.3f} "
              f"({'ok' if ratio <= GOAL else 'MISS'}); {cap_ms}", flush=True)
    card = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    return dict(bench="cache_growth", device=card, model=args.model, batch=args.batch, prompt=args.prompt,
                dtype=str(dtype), goal=f"growing call <= {GOAL:.2f} x warm call of the same length",
                torch=torch.__version__, rows=rows)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--lengths", type=int, nargs="+", default=[8, 257, 1000])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="CPU, llama-tiny fp32, reference backend")
    p.add_argument("--out", default=os.environ.get("OUT"))
    args = p.parse_args(argv)
    if args.smoke:
        args.model, args.prompt, args.lengths, args.reps = "llama-tiny", 5, [2, 252], 1
    elif not torch.cuda.is_available():
        print("cache_growth: needs a CUDA GPU (or --smoke)")
        return 2
    record = run(args)
    fname = f"cache_growth-{gpu_slug(record['device'])}-{time.strftime('%Y-%m-%d')}.json"
    for path in write_record(record, fname, args.out, args.smoke):
        print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
