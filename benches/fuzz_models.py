"""Differential model fuzzing for as long as asked: ``PYTHONPATH=. python benches/fuzz_models.py --minutes 30``.

Draws random small models (``membound.testing.model_fuzz``: HF Llama / Mistral / Qwen2 / GPT-2 and
membound's own Llama / GPT-2 / Mixtral, random shapes, options and left-padded prompts), runs each
through the reference and triton backends, forward and greedy ``membound.generate``, and compares
with eager PyTorch. On the CPU the triton kernels run in the interpreter (``TRITON_INTERPRET=1``) in
fp32; ``--device cuda`` draws fp32 / fp16 / bf16 per case (or ``--dtype``). The counts (cases,
mismatches, exception types per stage, greedy tokens compared and skipped at near ties) and every
failing case's description go to ``--out`` (JSON), rewritten after each case so a crash keeps them.
Rerun one case with ``--seeds N``. The exit status is 1 when any case failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=1.0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                    help="every case in this dtype (default: float32 on the CPU, a random one per case on cuda)")
    ap.add_argument("--seed", type=int, default=0, help="the first case's seed; cases take seed, seed+1, ...")
    ap.add_argument("--seeds", type=int, nargs="*", default=None, help="run exactly these cases, then stop")
    ap.add_argument("--families", nargs="*", default=None,
                    help="limit the draw to these families (also the opt-in ones, model_fuzz.EXTRA_FAMILIES: "
                         "hf-opt hf-gptj hf-bloom hf-gptneo)")
    ap.add_argument("--backends", nargs="*", default=["reference", "triton"])
    ap.add_argument("--max-layers", type=int, default=2)
    ap.add_argument("--cuda-graphs", action="store_true", help="triton decode steps replay CUDA graphs (cuda)")
    ap.add_argument("--force-splits", action="store_true",
                    help="flash-decoding in 16-slot chunks and split-K GEMVs in every decode step")
    ap.add_argument("--out", default=None, help="result file (JSON); default benches/results/fuzz_models-DEV-DATE.json")
    args = ap.parse_args()
    if args.device == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton
    import torch

    from membound.testing.model_fuzz import FAMILIES, draw_case, forced_splits, run_case, summarize

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    name = "cpu" if args.device == "cpu" else torch.cuda.get_device_name().lower().replace(" ", "-")
    out = Path(args.out or Path(__file__).parent / "results" /
               f"fuzz_models-{name}-{datetime.date.today().isoformat()}.json")
    families = tuple(args.families or FAMILIES)
    pick = random.Random(args.seed)
    seeds = iter(args.seeds) if args.seeds is not None else iter(range(args.seed, args.seed + 10**9))
    results, failures = [], []
    start = time.monotonic()
    end = start + args.minutes * 60
    while args.seeds is not None or time.monotonic() < end:
        seed = next(seeds, None)
        if seed is None:
            break
        dtype = args.dtype or ("float32" if args.device == "cpu" else pick.choice(["float32", "float16", "bfloat16"]))
        case = draw_case(seed, families=families, dtype=dtype, max_layers=args.max_layers)
        t = time.monotonic()
        with forced_splits() if args.force_splits else contextlib.nullcontext():
            result = run_case(case, backends=tuple(args.backends), device=args.device, cuda_graphs=args.cuda_graphs)
        results.append(result)
        status = "ok" if result.ok else "FAILED"
        took = time.monotonic() - t
        print(f"[{time.monotonic() - start:7.1f}s] {status} ({took:.1f}s) {case.describe()}", flush=True)
        for line in result.arbitrated:  # (eager in the half dtype strays as far: not a failure)
            print(f"    arbitrated: {line}", flush=True)
        if not result.ok:
            failures.append(dict(case=case.describe(), mismatches=result.mismatches, errors=result.errors))
            for line in result.mismatches + [f"{k}: {v}" for k, v in result.errors.items()]:
                print(f"    {line}", flush=True)
        summary = summarize(results, dict(
            device=name, minutes=round((time.monotonic() - start) / 60, 1), first_seed=args.seed,
            backends=args.backends, cuda_graphs=args.cuda_graphs, force_splits=args.force_splits,
            triton_interpret=os.environ.get("TRITON_INTERPRET") == "1",
            torch=torch.__version__, python=platform.python_version(),
            tolerance="fp32 atol=rtol=1e-4, fp16 2e-2, bf16 6e-2 on logits at non-padded positions",
            greedy="tokens compared while eager's top-2 logit margin >= 1e-3 (fp32) / 5e-2 (fp16) / 0.25 (bf16)"))
        summary["failures"] = failures
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(summary, indent=2) + "\n")
    summary_line = {k: v for k, v in summary.items() if k != "failures"} if results else {"cases": 0}
    print(json.dumps(summary_line, indent=2))
    print(f"wrote {out}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
