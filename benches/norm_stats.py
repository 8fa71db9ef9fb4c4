"""What a norm costs inside a decode layer, three ways: its own kernel, in every GEMV program's prologue, or
from the sums of squares the residual linear before it wrote (issue 13). One H200, < 1 minute.

    PYTHONPATH=. python benches/norm_stats.py --out DIR      # GPU
    PYTHONPATH=. python benches/norm_stats.py --smoke        # CPU (interpreter): tiny shapes, checks the script

Per pair of a residual linear (the o or down projection, ``[h, K]``) and the linear that reads the norm of
its sum (the next gate/up or qkv, ``[N, h]``) at the Llama-3.2-1B and Llama-3-8B shapes, bf16, M = 1 and
8 tokens, three chains of library kernels:

- ``unfused``: ``linear`` -> ``add_rms_norm`` -> ``linear`` (what the default decode step launches);
- ``prologue``: ``linear_add`` -> ``rms_norm_linear`` (each program of the second re-reduces x first);
- ``stats``: ``linear_add_sumsq`` -> ``rms_norm_linear_sumsq`` (each program sums the K / 4 partials);

and the consumer alone (``linear``, ``rms_norm_linear``, ``rms_norm_linear_sumsq`` on the same x), whose
difference is what a norm costs every program. Each chain runs over enough distinct weight copies that
every weight comes from HBM (>= 512 MB a replay), in a CUDA graph captured on the stream it was warmed
up on; time = median replay / copies. Checked first: the stats chain's output against the unfused
chain's (bf16, |diff| <= 0.02 * max|unfused|: one bf16 ulp of a normed value, through one GEMV).
Beside the consumer's extra time: what the cost model prices for it (``rms_norm_linear_sumsq``'s bytes
beyond the plain linear's, at the spec's bandwidth), so its pricing of the re-reads can be calibrated.
Writes ``norm_stats-<gpu>-<date>.json`` under ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import sys
from pathlib import Path
from typing import Any, Optional

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug  # noqa: E402
from benches._timing import graph_time  # noqa: E402

# (name, h, K of the residual linear, N of the norm's reader)
PAIRS = [("1b o->gate/up", 2048, 2048, 16384), ("1b down->qkv", 2048, 8192, 3072),
         ("8b o->gate/up", 4096, 4096, 28672), ("8b down->qkv", 4096, 14336, 6144)]
SMOKE_PAIRS = [("tiny o->gate/up", 24, 20, 44)]
EPS = 1e-5




def priced_reread_s(m: int, h: int, n: int) -> float:
    """The cost model's time for the consumer's partials re-reads: ``rms_norm_linear_sumsq``'s bytes beyond
    its operands', at the H200 datasheet bandwidth (the pass's model)."""
    from membound.cost import Hardware
    from membound.ir import TensorType
    from membound.ir.ops import default_bytes, get_op

    bf, f32 = torch.bfloat16, torch.float32
    ins = [TensorType(bf, (m, h)), TensorType(f32, (m, math.ceil(h / 4))), TensorType(bf, (h,)),
           TensorType(bf, (n, h))]
    outs = [TensorType(bf, (m, n))]
    extra = get_op("rms_norm_linear_sumsq").cost(ins, outs, {"eps": EPS})[1] - default_bytes(ins, outs, {})
    return float(extra) / Hardware.named("h200").bandwidth


def run_pair(name: str, h: int, kp: int, n: int, m: int, device: str, timed: bool) -> dict[str, Any]:
    from membound.backends.triton.kernels import (
        add_rms_norm,
        linear,
        linear_add,
        linear_add_sumsq,
        rms_norm_linear,
        rms_norm_linear_sumsq,
    )

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(shape, generator=gen, device=device) * scale).to(dtype)

    per_copy = (h * kp + n * h) * torch.empty((), dtype=dtype).element_size()
    copies = max(1, math.ceil((512 << 20) / per_copy)) if timed else 1
    wps = [rand(h, kp, scale=kp ** -0.5) for _ in range(copies)]
    wns = [rand(n, h, scale=h ** -0.5) for _ in range(copies)]
    a, r, nw = rand(m, kp), rand(m, h), rand(h, scale=0.1) + 1

    def unfused(i: int = 0) -> torch.Tensor:
        h2, normed = add_rms_norm(linear(a, wps[i], static_weight=True), r, nw, eps=EPS)
        return linear(normed, wns[i], static_weight=True)

    def prologue(i: int = 0) -> torch.Tensor:
        return rms_norm_linear(linear_add(a, wps[i], r, static_weight=True), nw, wns[i], eps=EPS, static_weight=True)

    def stats(i: int = 0) -> torch.Tensor:
        h2, ss = linear_add_sumsq(a, wps[i], r, static_weight=True)
        return rms_norm_linear_sumsq(h2, ss, nw, wns[i], eps=EPS, static_weight=True)

    ref = unfused()
    scale = ref.float().abs().max().item()
    errors = {f.__name__: (f().float() - ref.float()).abs().max().item() / scale for f in (prologue, stats)}
    row: dict[str, Any] = {"pair": name, "h": h, "K": kp, "N": n, "M": m, "copies": copies, "rel_err": errors,
                           "ok": all(e <= 0.02 for e in errors.values())}
    if not timed or not row["ok"]:
        return row
    x = linear_add(a, wps[0], r)
    xh, ss = linear_add_sumsq(a, wps[0], r)
    normed = add_rms_norm(linear(a, wps[0]), r, nw, eps=EPS)[1]
    times = {}
    for label, fn in (("unfused", unfused), ("prologue", prologue), ("stats", stats)):
        times[label] = graph_time(lambda fn=fn: [fn(i) for i in range(copies)]) / copies
    consumers = {"linear": lambda i: linear(normed, wns[i], static_weight=True),
                 "rms_norm_linear": lambda i: rms_norm_linear(x, nw, wns[i], eps=EPS, static_weight=True),
                 "rms_norm_linear_sumsq": lambda i: rms_norm_linear_sumsq(xh, ss, nw, wns[i], eps=EPS,
                                                                          static_weight=True)}
    for label, fn in consumers.items():
        times[label] = graph_time(lambda fn=fn: [fn(i) for i in range(copies)]) / copies
    row["seconds"] = times
    row["priced_reread_s"] = priced_reread_s(m, h, n)
    return row


def table(rows: list[dict[str, Any]]) -> str:
    us = 1e6
    lines = ["chain time per layer pair (us): unfused = linear, add_rms_norm, linear; prologue = linear_add, "
             "rms_norm_linear; stats = linear_add_sumsq, rms_norm_linear_sumsq. consumer alone (us): plain "
             "linear, +prologue, +stats (the norm's cost to every program), priced = the cost model's re-read time",
             f"{'pair':15s} {'M':>2s} {'unfused':>8s} {'prologue':>8s} {'stats':>8s} {'stats/unf':>9s} | "
             f"{'linear':>7s} {'+prolog':>7s} {'+stats':>7s} {'priced':>7s}  err"]
    for r in rows:
        err = " ".join(f"{k} {v:.1e}" for k, v in r["rel_err"].items())
        t = r.get("seconds")
        if t is None:
            lines.append(f"{r['pair']:15s} {r['M']:>2d} {'(not timed)':>36s}  {err}{'' if r['ok'] else ' FAIL'}")
            continue
        lin = t["linear"]
        lines.append(f"{r['pair']:15s} {r['M']:>2d} {t['unfused'] * us:8.1f} {t['prologue'] * us:8.1f} "
                     f"{t['stats'] * us:8.1f} {t['stats'] / t['unfused']:9.3f} | {lin * us:7.1f} "
                     f"{(t['rms_norm_linear'] - lin) * us:+7.1f} {(t['rms_norm_linear_sumsq'] - lin) * us:+7.1f} "
                     f"{r['priced_reread_s'] * us:7.2f}  {err}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for the result file")
    p.add_argument("--batches", default="1,8")
    p.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, one tiny pair, not timed")
    args = p.parse_args(argv)
    if args.smoke:
        import os

        os.environ.setdefault("TRITON_INTERPRET", "1")
        device, pairs, timed = "cpu", SMOKE_PAIRS, False
    elif torch.cuda.is_available():
        device, pairs, timed = "cuda", PAIRS, True
    else:
        print("norm_stats: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    rows = []
    for name, h, kp, n in pairs:
        for m in (int(b) for b in args.batches.split(",") if b):
            rows.append(run_pair(name, h, kp, n, m, device, timed))
            print(f"{name} M={m}: {'ok' if rows[-1]['ok'] else 'FAILED'}", flush=True)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    record = {"bench": "norm_stats", "device": gpu, "date": datetime.date.today().isoformat(), "rows": rows,
              "method": __doc__.split("\n\n", 2)[2].strip()}
    if args.out:
        path = Path(args.out) / f"norm_stats-{gpu_slug(gpu)}-{record['date']}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {path}")
    print(table(rows))
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
