"""Where a decode step's time goes: torch profiler table of one membound decode step vs the cost model.

    python benches/profile_step.py [--model llama-1b] [--backend reference|triton] [--context 1024] [--out DIR]

Prints the top CUDA kernels and CPU ops of 20 decode steps (batch 1), the wall time per step, and the
cost model's predicted time for the same decode graph, so a miss can be attributed (launch-bound
Python, slow kernels, or bytes the model did not count).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from membound.api import CompiledModel, build_kv_program  # noqa: E402
from membound.cost import Hardware, RooflineCost, analyze  # noqa: E402
from membound.models import build_model  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="llama-1b")
    ap.add_argument("--backend", default="reference")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp"))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--graphs", action="store_true", help="time and profile the step replayed as a CUDA graph")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = build_model(args.model, dtype=dtype, device=device)
    program = build_kv_program(CompiledModel(model, backend=args.backend),
                               torch.zeros(1, 8, dtype=torch.long, device=device))
    b = args.batch
    program.cache.ensure(b, args.context + 64)
    state = program.cache.views(b)
    program.prefill_graph.tensors.update(state)
    program.decode_graph.tensors.update(state)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (b, args.context), device=device)
    program.prefill([ids, torch.arange(args.context, device=device).expand(b, -1).contiguous(),
                     torch.full((b,), args.context - 1, device=device)])
    tok = torch.randint(0, vocab, (b, 1), device=device)
    pos = torch.full((b, 1), args.context, device=device)
    zero = torch.zeros(b, dtype=torch.long, device=device)
    step_fn = program.decode
    if args.graphs and device == "cuda":
        from membound.backends.cuda_graphs import CapturedGraph

        step_fn = CapturedGraph(program.decode, [tok, pos, zero], copy_outputs=False)
    for _ in range(3):
        step_fn([tok, pos, zero])
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        step_fn([tok, pos, zero])
    if device == "cuda":
        torch.cuda.synchronize()
    step = (time.perf_counter() - t) / 20
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if device == "cuda" else [])
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(20):
            step_fn([tok, pos, zero])
        if device == "cuda":
            torch.cuda.synchronize()
    sort = "self_cuda_time_total" if device == "cuda" else "self_cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=40)
    if device == "cuda":
        kernels = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA]
        busy = sum(e.self_device_time_total for e in kernels) / 20
        launches = sum(e.count for e in kernels) / 20
        table += f"\nGPU busy per step: {busy:.0f} us over {launches:.0f} kernels (sum of kernel times)"
    cpu_table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    hw = Hardware.detect()
    cost = RooflineCost(hw)
    at = analyze(program.decode_graph, cost).decode.at({"B": b, "T": args.context})
    plan = plan_estimate(program.decode, cost, {"B": b, "T": args.context})
    Path(args.out).mkdir(parents=True, exist_ok=True)
    tag = f"{args.model}-b{b}-{args.backend}{'-graphs' if args.graphs else ''}"
    (Path(args.out) / f"profile_step-{tag}.txt").write_text(table + "\n\n" + cpu_table)
    print(cpu_table)
    print(table)
    print(f"{tag} decode step at context {args.context}: {step * 1e3:.2f} ms wall "
          f"({len(program.decode_graph.nodes)} IR nodes); cost model on {hw.name}: {at['time_s'] * 1e3:.3f} ms, "
          f"{at['bytes'] / 1e9:.2f} GB per step")
    if plan is not None:  # what was actually launched: one launch per kernel or library call
        launches, seconds, launch_s = plan
        print(f"cost model of the compiled step ({launches} launches): {seconds * 1e3:.3f} ms, of which "
              f"{launch_s * 1e3:.3f} ms is {hw.launch_overhead * 1e6:.1f} us per launch (an eager launch; a "
              f"CUDA graph with programmatic dependent launch pays less: compare {(seconds - launch_s) * 1e3:.3f} ms "
              f"too)")
    return 0


def plan_estimate(executable: object, cost: RooflineCost, dims: dict) -> "tuple[int, float, float] | None":
    """(launches, seconds, of which launch overhead) of the executable's partition, as the cost model
    sees it: one estimate per generated kernel or library call (views launch nothing). The node-level
    figure above charges every IR node a launch, which no backend does."""
    part = getattr(executable, "partition", None)
    if part is None:
        return None
    launches, seconds, launch_s = 0, 0.0, 0.0
    for step in part.steps:
        est = cost.estimate(step.node if hasattr(step, "impl") else step, dims)
        if est.bound == "free" or getattr(step, "impl", None) == "view":
            continue
        launches += 1
        seconds += est.time_s
        launch_s += est.launch_s
    return launches, seconds, launch_s


if __name__ == "__main__":
    sys.exit(main())
