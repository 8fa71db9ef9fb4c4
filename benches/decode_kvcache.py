"""Per-token decode latency: eager full recompute vs membound's KV-cache decode (reference backend).

    python benches/decode_kvcache.py [--model llama-1b] [--contexts 128,1024,4096] [--out DIR]

For each context length C: eager recomputes the whole sequence for one new token (what a cache-less
model costs per token); membound prefills C tokens once through the step graph, then times decode
steps (S = 1 over a KV cache of C positions). Also reported: the roofline, the bytes a decode step
must move (every weight once + K/V of C positions) over the read bandwidth measured in this run.
Correctness is checked first: the cached decode's greedy tokens equal full recomputation's.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import membound  # noqa: E402
from membound.api import CompiledModel, build_kv_program  # noqa: E402
from membound.models import build_model  # noqa: E402
from membound.models.configs import get_config  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def read_bandwidth(device: str) -> float:
    """GB/s of a large reduction (the decode ceiling: weights and cache are read, not copied)."""
    n = (2 << 30) // 2 if device == "cuda" else (64 << 20) // 2
    x = torch.randn(n, dtype=torch.bfloat16, device=device)
    x.sum()
    sync()
    times = []
    for _ in range(10):
        t = time.perf_counter()
        x.sum()
        sync()
        times.append(time.perf_counter() - t)
    return x.numel() * 2 / statistics.median(times) / 1e9


def timed(fn, reps: int) -> float:
    fn()
    sync()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--contexts", default="128,1024,4096")
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--out", default=os.environ.get("OUT", "benches/results"))
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    model = build_model(args.model, dtype=dtype, device=device)
    cfg = get_config(args.model)
    vocab = cfg.vocab_size
    contexts = [int(c) for c in args.contexts.split(",")]
    bw = read_bandwidth(device)
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())

    # correctness first: cached greedy decode == full recompute (short prompt, 8 tokens)
    compiled = CompiledModel(model, backend="reference")
    prompt = torch.randint(0, vocab, (1, 16), device=device)
    with torch.no_grad():
        a = membound.generate(compiled, prompt, 8)
        b = membound.generate(compiled, prompt, 8, kv_cache=False)
    same = bool(torch.equal(a, b))

    t0 = time.perf_counter()
    with torch.no_grad():
        program = build_kv_program(CompiledModel(model, backend="reference"), prompt)  # a fresh one: cold compile time
    compile_s = time.perf_counter() - t0
    rows = []
    for ctx_len in contexts:
        ids = torch.randint(0, vocab, (1, ctx_len), device=device)
        with torch.no_grad():
            eager_s = timed(lambda ids=ids: model(ids), reps=5)
            program.cache.ensure(1, ctx_len + args.steps + 1)
            state = program.cache.views(1)
            program.prefill_graph.tensors.update(state)
            program.decode_graph.tensors.update(state)
            pos = torch.arange(ctx_len, device=device)[None]
            program.prefill([ids, pos, torch.tensor([ctx_len - 1], device=device)])
            tok = torch.randint(0, vocab, (1, 1), device=device)
            zero = torch.zeros(1, dtype=torch.long, device=device)
            step_times = []
            for i in range(args.steps):
                p = torch.tensor([[ctx_len + i]], device=device)
                sync()
                t = time.perf_counter()
                program.decode([tok, p, zero])
                sync()
                step_times.append(time.perf_counter() - t)
        itemsize = torch.empty((), dtype=dtype).element_size()
        kv_bytes = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * ctx_len * itemsize
        step_bytes = weight_bytes + kv_bytes
        decode_s = statistics.median(step_times[2:])
        rows.append(dict(context=ctx_len, eager_full_recompute_ms=eager_s * 1e3, membound_decode_ms=decode_s * 1e3,
                         speedup=eager_s / decode_s, roofline_ms=step_bytes / (bw * 1e9) * 1e3,
                         decode_gbps=step_bytes / decode_s / 1e9,
                         pct_of_read_bw=100 * step_bytes / decode_s / 1e9 / bw))
    result = dict(bench="decode_kvcache", model=args.model, dtype=str(dtype), device=gpu,
                  date=str(datetime.date.today()),
                  torch=torch.__version__, read_bandwidth_gbps=bw, weight_bytes=weight_bytes, greedy_tokens_match=same,
                  backend="reference", kv_program_compile_s=compile_s, rows=rows)
    tag = gpu.replace(" ", "-").replace("/", "-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"decode_kvcache-{tag}-{result['date']}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"\n{args.model} {dtype} on {gpu}; read bandwidth {bw:.0f} GB/s; cached == recompute tokens: {same}; "
          f"kv program compile {compile_s:.1f} s")
    print(f"{'context':>8} {'eager recompute ms':>19} {'membound decode ms':>19} {'speedup':>8} {'roofline ms':>12} "
          f"{'% read bw':>9}")
    for r in rows:
        print(f"{r['context']:>8} {r['eager_full_recompute_ms']:>19.2f} {r['membound_decode_ms']:>19.2f} "
              f"{r['speedup']:>7.1f}x {r['roofline_ms']:>12.3f} {r['pct_of_read_bw']:>8.1f}%")
    print(f"wrote {path}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
