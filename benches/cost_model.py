"""Does the roofline cost model predict real op times? Predicted vs measured, on the GPU in hand.

    PYTHONPATH=. python benches/cost_model.py --out DIR        # CUDA GPU, < 3 minutes
    PYTHONPATH=. python benches/cost_model.py --smoke --out DIR   # CPU, tiny sizes: checks the script runs
    PYTHONPATH=. python benches/cost_model.py --replay results/cost_model-....json   # no GPU: re-predict

1. Calibrate in this run (``membound.cost.calibrate``): launch overhead (a one-element add), read
   bandwidth and memory latency (``x.sum()`` over 64 MiB and 2 GiB), copy bandwidth (2 GiB), bf16
   matmul 8192^3 on random data, and the kernel classes, each on shapes the cases below do not use
   (cuBLAS GEMV, SDPA decode, block softmax, broadcast multiply, layer_norm: ``membound/cost/classes.py``).
2. For every case build the one-op IR graph, check that the torch op gives the node's type, predict
   its time with the calibrated spec (``RooflineCost.estimate``), and time the op's torch reference
   implementation (the torch op itself: F.linear, F.silu, torch.softmax, SDPA, ...) with
   ``triton.testing.do_bench`` (median, L2 flushed, random bf16 inputs).
3. Guess the *measured* bound without the model's rates: time a probe variant of the case in which
   FLOPs and bytes change by different factors (twice the batch for a GEMM, fp32 instead of bf16 for
   a memory op, twice the sequence for prefill attention, twice the query heads for decode attention).
   If the time (less launch overhead) grew like the FLOPs, the op is compute-bound; like the bytes,
   memory-bound.

Writes ``benches/results/cost_model-<gpu>-<date>.json`` (and a copy under ``--out``) and prints the
table last: case, predicted us, measured us, error %, predicted bound, measured-bound guess, kernel
class, then the median absolute error and the share of cases whose bound was predicted right. CPU
(``--smoke``) times are not compared with anything and are written only under ``--out``.

``--replay FILE`` re-predicts a recorded run's cases with the current model and the spec rebuilt from
the file's calibration (``hardware_from_record``), against the recorded times and measured bounds:
what a model change does to a run, without a GPU. A file from before the kernel classes were
calibrated replays with latency 0 and no classes unless ``--assume`` supplies them (a JSON file of
``{"memory_latency": s, "kernel_classes": {name: {latency, efficiency, element_rate, source}}}``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from membound.cost import RooflineCost, calibrate
from membound.cost.hardware import SPECS, Hardware, KernelClass, cpu_spec, from_measurements, match_gpu
from membound.cost.measure import measure_node, random_tensor
from membound.ir.graph import Graph, Node
from membound.ir.ops import get_op
from membound.ir.types import TensorType

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug, write_record  # noqa: E402

bf16, f32 = torch.bfloat16, torch.float32


# ---------------------------------------------------------------------------------------------
# one-op graphs: each builder returns (graph, the node to cost and time)
# ---------------------------------------------------------------------------------------------
def gemm(m: int, k: int, n: int, dtype: torch.dtype = bf16) -> tuple[Graph, Node]:
    g = Graph("gemm")
    x = g.add_input("x", TensorType(dtype, [m, k]))  # [M, K] activations
    w = g.add_param("w", TensorType(dtype, [n, k]))  # [N, K] weight
    return g, g.call("linear", x, w).producer


def unary(op: str, shape: tuple[int, ...], dtype: torch.dtype = bf16) -> tuple[Graph, Node]:
    g = Graph(op)
    x = g.add_input("x", TensorType(dtype, shape))
    return g, g.call(op, x).producer


def binary(op: str, shape_a: tuple[int, ...], shape_b: tuple[int, ...], dtype: torch.dtype = bf16
           ) -> tuple[Graph, Node]:
    g = Graph(op)
    a = g.add_input("a", TensorType(dtype, shape_a))
    b = g.add_input("b", TensorType(dtype, shape_b))
    return g, g.call(op, a, b).producer


def softmax(rows: int, cols: int, dtype: torch.dtype = bf16) -> tuple[Graph, Node]:
    g = Graph("softmax")
    x = g.add_input("x", TensorType(dtype, [rows, cols]))
    return g, g.call("softmax", x, dim=-1).producer


def layer_norm(rows: int, cols: int, dtype: torch.dtype = bf16) -> tuple[Graph, Node]:
    g = Graph("layer_norm")
    x = g.add_input("x", TensorType(dtype, [rows, cols]))
    w = g.add_param("w", TensorType(dtype, [cols]))
    b = g.add_param("b", TensorType(dtype, [cols]))
    return g, g.call("layer_norm", x, w, b).producer


def attention(b: int, hq: int, hkv: int, s: int, kv_len: int, d: int, causal: bool, dtype: torch.dtype = bf16
              ) -> tuple[Graph, Node]:
    g = Graph("attention")
    q = g.add_input("q", TensorType(dtype, [b, hq, s, d]))
    k = g.add_input("k", TensorType(dtype, [b, hkv, kv_len, d]))
    v = g.add_input("v", TensorType(dtype, [b, hkv, kv_len, d]))
    return g, g.call("attention", q, k, v, causal=causal).producer


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[], tuple[Graph, Node]]
    probe: Callable[[], tuple[Graph, Node]]  # FLOPs and bytes change by different factors
    probe_note: str


def cases(smoke: bool) -> list[Case]:
    """The sweep: GEMV/GEMM over batch 1..512, elementwise, norms, softmax, SDPA prefill and decode."""
    s = 16 if smoke else 1  # --smoke divides every size
    out: list[Case] = []
    for k, n in ((4096 // s, 4096 // s), (4096 // s, 14336 // s)):
        for m in (1, 2, 4, 8, 16, 32, 64, 128, 256, 512):
            out.append(Case(f"linear {m}x{k} @ {n}x{k}", lambda m=m, k=k, n=n: gemm(m, k, n),
                            lambda m=m, k=k, n=n: gemm(2 * m, k, n), "2x batch"))
    big = (64 << 20) // s**2  # elements
    rows, cols = 16384 // s, 4097 // s
    out += [
        Case(f"add [{big}]", lambda: binary("add", (big,), (big,)),
             lambda: binary("add", (big,), (big,), f32), "fp32"),
        Case(f"add bias [{rows}, {cols}] + [{cols}]", lambda: binary("add", (rows, cols), (cols,)),
             lambda: binary("add", (rows, cols), (cols,), f32), "fp32"),
        Case(f"mul [{big}]", lambda: binary("mul", (big,), (big,)),
             lambda: binary("mul", (big,), (big,), f32), "fp32"),
        Case(f"silu [{big}]", lambda: unary("silu", (big,)), lambda: unary("silu", (big,), f32), "fp32"),
        Case(f"gelu [{rows}, {cols}]", lambda: unary("gelu", (rows, cols)),
             lambda: unary("gelu", (rows, cols), f32), "fp32"),
        Case(f"softmax [{65536 // s}, {4096 // s}]", lambda: softmax(65536 // s, 4096 // s),
             lambda: softmax(65536 // s, 4096 // s, f32), "fp32"),
        Case(f"softmax [{2048 // s}, {32000 // s}]", lambda: softmax(2048 // s, 32000 // s),
             lambda: softmax(2048 // s, 32000 // s, f32), "fp32"),
        Case(f"layer_norm [{rows}, {4096 // s}]", lambda: layer_norm(rows, 4096 // s),
             lambda: layer_norm(rows, 4096 // s, f32), "fp32"),
    ]
    d = 128 // (4 if smoke else 1)
    for b, hq, hkv, seq, causal in ((4, 32, 32, 4096, False), (4, 32, 32, 4096, True), (1, 32, 8, 2048, True)):
        seq //= s
        out.append(Case(f"sdpa prefill b{b} h{hq}/{hkv} s{seq} d{d}{' causal' if causal else ''}",
                        lambda b=b, hq=hq, hkv=hkv, seq=seq, causal=causal: attention(b, hq, hkv, seq, seq, d, causal),
                        lambda b=b, hq=hq, hkv=hkv, seq=seq, causal=causal: attention(b, hq, hkv, 2 * seq, 2 * seq, d,
                                                                                      causal), "2x seq"))
    for b, hq, hkv, kv_len in ((1, 32, 8, 4096), (1, 32, 8, 32768), (8, 32, 8, 4096), (32, 32, 8, 2048)):
        kv_len //= s
        out.append(Case(f"sdpa decode b{b} h{hq}/{hkv} kv{kv_len} d{d}",
                        lambda b=b, hq=hq, hkv=hkv, kv_len=kv_len: attention(b, hq, hkv, 1, kv_len, d, False),
                        lambda b=b, hq=hq, hkv=hkv, kv_len=kv_len: attention(b, 2 * hq, hkv, 1, kv_len, d, False),
                        "2x q heads"))
    return out


# ---------------------------------------------------------------------------------------------
# run
# ---------------------------------------------------------------------------------------------
@dataclass
class Result:
    case: str
    flops: float
    bytes: float
    predicted_us: float
    measured_us: float
    error_pct: float
    predicted_bound: str
    measured_bound: str
    probe: str
    probe_measured_us: float
    achieved_tflops: float
    achieved_gbps: float
    kernel_class: str = ""


def check_node(name: str, node: Node, device: str) -> None:
    """The torch op we time produces what the IR node says (so the prediction is for the op timed)."""
    inputs = [random_tensor(v.type, {}, device) for v in node.inputs]
    out = get_op(node.op).reference(*inputs, **node.attrs)
    want = node.type
    if tuple(out.shape) != want.concrete_shape({}) or out.dtype != want.dtype:
        raise AssertionError(f"{name}: torch gives {out.dtype} {tuple(out.shape)}, the IR node says {want}")


def run_case(case: Case, cost: RooflineCost, device: str, rep_ms: float) -> Result:
    _, node = case.build()
    _, probe_node = case.probe()
    check_node(case.name, node, device)
    check_node(f"{case.name} ({case.probe_note})", probe_node, device)
    est = cost.estimate(node)
    t = measure_node(node, {}, device, rep_ms=rep_ms)
    probe_est = cost.estimate(probe_node)
    t_probe = measure_node(probe_node, {}, device, rep_ms=rep_ms)
    guess = measured_bound(t, t_probe, est.flops, probe_est.flops, est.bytes, probe_est.bytes,
                           cost.hardware.launch_overhead)
    return Result(case.name, est.flops, est.bytes, est.time_s * 1e6, t * 1e6, (est.time_s - t) / t * 100,
                  est.bound, guess, case.probe_note, t_probe * 1e6, est.flops / t / 1e12, est.bytes / t / 1e9,
                  est.kernel_class)


def measured_bound(t: float, t_probe: float, flops: float, probe_flops: float, nbytes: float, probe_bytes: float,
                   launch: float) -> str:
    """Which count the measured time followed from the case to its probe: FLOPs ("compute") or bytes
    ("memory"); "launch" when the op is too short for the comparison to mean anything."""
    work, probe_work = t - launch, t_probe - launch
    if work < launch or probe_work <= 0:
        return "launch"
    ratio = math.log(probe_work / work)
    to_flops = abs(ratio - math.log(probe_flops / flops))
    to_bytes = abs(ratio - math.log(probe_bytes / nbytes))
    return "compute" if to_flops < to_bytes else "memory"




def summarize(results: list[Result]) -> dict[str, object]:
    errors = [abs(r.error_pct) for r in results]
    right = [r for r in results if r.predicted_bound == r.measured_bound]
    return {"cases": len(results), "median_abs_error_pct": statistics.median(errors),
            "bound_accuracy": len(right) / len(results),
            "misses_over_20pct": [r.case for r in results if abs(r.error_pct) > 20],
            "bound_misses": [r.case for r in results if r.predicted_bound != r.measured_bound]}


def calibration_record(hw: Hardware) -> dict[str, object]:
    """The spec's measured figures, its one-line description and its kernel classes, for the result file."""
    return {**hw.measured, "spec": hw.describe(),
            "kernel_classes": {name: asdict(k) for name, k in hw.kernel_classes.items()}}


def hardware_from_record(record: dict, assume: Optional[dict] = None) -> Hardware:
    """The calibrated spec a result file was predicted with (``assume`` fills figures the file lacks)."""
    cal = {**record["calibration"], **(assume or {})}
    # the datasheet entry supplies what calibration does not measure (fp32 rate, SMs); memory size is
    # not recorded, so an A100 replays as the 80 GB part (the two differ only in bandwidth, which is measured)
    key = match_gpu(record["device"], 80 << 30) or "h100-sxm"
    base = cpu_spec() if record.get("smoke") else SPECS[key]
    classes = {name: KernelClass(**fields) for name, fields in (cal.get("kernel_classes") or {}).items()}
    latency = float(cal.get("memory_latency", 0.0))
    stream = cal.get("stream_bandwidth")
    if stream is None and latency:  # the big read's time less launch and latency
        t_big = 2 * (1 << 30) / cal["read_bandwidth"]
        stream = 2 * (1 << 30) / (t_big - cal["launch_overhead"] - latency)
    return from_measurements(base, read_bandwidth=cal["read_bandwidth"], copy_bandwidth=cal["copy_bandwidth"],
                             bf16_flops=cal["bf16_flops"], launch_overhead=cal["launch_overhead"],
                             name=record["device"], memory_latency=latency, stream_bandwidth=stream,
                             kernel_classes=classes)


def replay(record: dict, hw: Hardware) -> list[Result]:
    """The recorded cases re-predicted on ``hw``, against the recorded times and measured bounds."""
    cost = RooflineCost(hw)
    by_name = {c.name: c for c in cases(bool(record.get("smoke")))}
    out: list[Result] = []
    for r in record["results"]:
        _, node = by_name[r["case"]].build()
        est = cost.estimate(node)
        t = r["measured_us"] * 1e-6
        out.append(Result(r["case"], est.flops, est.bytes, est.time_s * 1e6, r["measured_us"],
                          (est.time_s - t) / t * 100, est.bound, r["measured_bound"], r["probe"],
                          r["probe_measured_us"], est.flops / t / 1e12, est.bytes / t / 1e9, est.kernel_class))
    return out


def print_table(results: list[Result], summary: dict, note: str = "") -> None:
    width = max(len(r.case) for r in results)
    print(f"\n{'case':{width}s} {'pred us':>9s} {'meas us':>9s} {'err %':>7s} {'pred':>8s} {'measured':>8s}  class")
    for r in results:
        flag = "" if r.predicted_bound == r.measured_bound else "  <- bound"
        print(f"{r.case:{width}s} {r.predicted_us:9.1f} {r.measured_us:9.1f} {r.error_pct:7.1f} "
              f"{r.predicted_bound:>8s} {r.measured_bound:>8s}  {r.kernel_class or '-'}{flag}")
    right = round(summary["bound_accuracy"] * len(results))
    print(f"\nmedian |error| {summary['median_abs_error_pct']:.1f}% over {len(results)} cases; bound right in "
          f"{right}/{len(results)} ({summary['bound_accuracy'] * 100:.0f}%){note}")


def print_calibration(hw: Hardware) -> None:
    m = hw.measured
    print(f"{hw.name}: read {m['read_bandwidth'] / 1e9:.0f} GB/s (steady {hw.bandwidth / 1e9:.0f}), copy "
          f"{m['copy_bandwidth'] / 1e9:.0f} GB/s, bf16 matmul {m['bf16_flops'] / 1e12:.0f} TFLOP/s, launch "
          f"{m['launch_overhead'] * 1e6:.1f} us, memory latency {hw.memory_latency * 1e6:.1f} us")
    for name, k in hw.kernel_classes.items():
        print(f"  class {name}: {k.describe()}")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=None, help="folder for a copy of the result file")
    p.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (checks the script, measures nothing)")
    p.add_argument("--replay", default=None, help="a result file to re-predict with the current model (no GPU)")
    p.add_argument("--assume", default=None, help="with --replay: a JSON file of calibration figures the file lacks")
    args = p.parse_args(argv)
    if args.replay:
        record = json.loads(Path(args.replay).read_text())
        assume = json.loads(Path(args.assume).read_text()) if args.assume else None
        hw = hardware_from_record(record, assume)
        print_calibration(hw)
        results = replay(record, hw)
        print_table(results, summarize(results), f" [replay of {Path(args.replay).name}]")
        return 0
    if args.smoke:
        device = "cpu"
    elif torch.cuda.is_available():
        device = "cuda"
    else:
        print("cost_model: needs a CUDA GPU (or --smoke for a CPU run at tiny sizes, --replay FILE)", file=sys.stderr)
        return 2
    if args.smoke:
        hw = calibrate(device, nbytes=4 << 20, matmul_n=128, scale=16)
    else:
        hw = calibrate(device)
    cost = RooflineCost(hw)
    rep_ms = 5.0 if args.smoke else 50.0
    results = [run_case(c, cost, device, rep_ms) for c in cases(args.smoke)]

    summary = summarize(results)
    device_name = torch.cuda.get_device_name() if device == "cuda" else hw.name
    date = datetime.date.today().isoformat()
    record = {"bench": "cost_model", "device": device_name, "date": date, "smoke": args.smoke,
              "versions": {"torch": torch.__version__, "triton": _triton_version()},
              "calibration": calibration_record(hw), "summary": summary,
              "results": [asdict(r) for r in results]}
    targets = write_record(record, f"cost_model-{gpu_slug(device_name)}-{date}.json", args.out, args.smoke)

    print_calibration(hw)
    print(f"wrote {', '.join(str(t) for t in targets) or '(nothing)'}")
    print_table(results, summary, " [smoke run on CPU: numbers mean nothing]" if args.smoke else "")
    return 0


def _triton_version() -> str:
    try:
        import triton

        return str(triton.__version__)
    except ImportError:
        return "none"


if __name__ == "__main__":
    sys.exit(main())
