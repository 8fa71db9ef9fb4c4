"""A/B of how a decode step's kernels hand over to each other: the PDL order and the L2 prefetch of weights.

    PYTHONPATH=. python benches/experiments/pdl_prefetch_ab.py --models llama-1b,llama-8b --batches 1,8

Per model (HF ``LlamaForCausalLM`` at the built-in config's shape, random bf16 weights, built and compiled
once) and batch, the decode step is captured again under each setting and timed by graph replay (CUDA
events, median), as ``benches/profile_step.py`` does, with the same KV cache contents and inputs:

- ``pdl=1``: each kernel waits for the previous one, then lets the next launch (the default);
- ``pdl=2``: each kernel lets the next launch first, then waits (launches run ahead down the chain);
- ``l2=N``: each linear asks L2 for its first weight bytes before its wait, N bytes over the grid
  (``_launch.L2_PREFETCH_TOTAL``; 0 = off).

The settings change no arithmetic, so every step's logits must equal the first setting's bit for bit:
checked, and a mismatch is a row of its own. Writes JSON to ``--out`` (default ``$OUT``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SETTINGS = ((1, 0), (1, 16 << 20), (2, 0), (2, 16 << 20), (2, 32 << 20))


def step_time(program, vocab: int, batch: int, context: int, timed: int, device: str):
    from membound.backends.cuda_graphs import CapturedGraph

    torch.manual_seed(1)
    ids = torch.randint(1, vocab, (batch, context), device=device)
    positions = torch.arange(context, device=device).expand(batch, -1).contiguous()
    program.prefill([ids, positions, torch.full((batch,), context - 1, device=device)])
    inputs = [torch.randint(1, vocab, (batch, 1), device=device), torch.full((batch, 1), context, device=device),
              torch.zeros(batch, dtype=torch.long, device=device)]
    graph = CapturedGraph(program.decode, inputs, copy_outputs=False)
    static = graph.static_inputs
    out = None
    for _ in range(5):
        out = graph(static)
    torch.cuda.synchronize()
    logits = (out[0] if isinstance(out, (list, tuple)) else out).float().clone()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(timed):
        start.record()
        graph(static)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return statistics.median(times), min(times), logits


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama-1b,llama-8b")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--context", type=int, default=256)
    p.add_argument("--timed", type=int, default=200)
    p.add_argument("--quantize", default=None, choices=("int8", "int4", "fp8"))
    p.add_argument("--settings", default=",".join(f"{m}:{b >> 20}" for m, b in SETTINGS),
                   help="PDL mode:L2 MB pairs, comma-separated (the first is the reference)")
    p.add_argument("--out", default=os.environ.get("OUT", "."))
    args = p.parse_args()
    import membound
    from benches.profile_step import build_model
    from membound.api import build_kv_program
    from membound.backends.triton.kernels import _launch

    device = "cuda"
    settings = [(int(a), int(b) << 20) for a, b in (pair.split(":") for pair in args.settings.split(","))]
    rows = []
    for name in [m for m in args.models.split(",") if m]:
        model = build_model("hf", name, device, torch.bfloat16)
        vocab = int(model.config.vocab_size)
        compiled = membound.compile(model, backend="triton", cuda_graphs=True,
                                    **({"quantize": args.quantize} if args.quantize else {}))
        for batch in [int(b) for b in args.batches.split(",") if b]:
            ref = None
            for mode, l2 in settings:
                _launch.set_pdl_mode(mode)
                _launch.L2_PREFETCH_TOTAL = l2
                t0 = time.perf_counter()
                program = build_kv_program(compiled, torch.zeros(1, 8, dtype=torch.long, device=device))
                program.cache.ensure(batch, args.context + 64)
                state = program.cache.views(batch)
                program.prefill_graph.tensors.update(state)
                program.decode_graph.tensors.update(state)
                med, best, logits = step_time(program, vocab, batch, args.context, args.timed, device)
                if ref is None:
                    ref = logits
                diff = float((logits - ref).abs().max())
                row = dict(model=name, quantize=args.quantize, batch=batch, pdl=mode, l2_bytes=l2, step_us=med, best_us=best,
                           logits_max_diff=diff, setup_s=time.perf_counter() - t0)
                rows.append(row)
                print(f"{name} b{batch} pdl={mode} l2={l2 >> 20}MB: step {med:8.1f} us (best {best:8.1f})"
                      f"  logits diff {diff:.3g}", flush=True)
                del program
                torch.cuda.empty_cache()
        del compiled, model
        torch.cuda.empty_cache()
    _launch.set_pdl_mode(None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"pdl_prefetch_ab{'-' + args.quantize if args.quantize else ''}.json").write_text(json.dumps(
        {"device": torch.cuda.get_device_name(), "context": args.context, "rows": rows}, indent=1))
    print("\nmodel      b  pdl  l2MB   step us  vs first  logits diff")
    base = {}
    for r in rows:
        key = (r["model"], r["batch"])
        base.setdefault(key, r["step_us"])
        print(f"{r['model']:10s} {r['batch']:2d} {r['pdl']:4d} {r['l2_bytes'] >> 20:5d} {r['step_us']:9.1f} "
              f"{r['step_us'] / base[key]:8.3f}  {r['logits_max_diff']:.3g}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
