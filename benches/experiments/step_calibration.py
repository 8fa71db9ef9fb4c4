"""The cost model's decode step against a ``decode_e2e`` result file, offline (CPU only, no GPU run).

    PYTHONPATH=. python benches/experiments/step_calibration.py                       # the session-3 H200 file
    PYTHONPATH=. python benches/experiments/step_calibration.py FILE.json --kinds     # + per-kind breakdowns
    PYTHONPATH=. python benches/experiments/step_calibration.py --fit                 # the per-op fits

For every membound Triton row of the file that measured a decode step (``step_s``: (timed call - a call
of half the tokens) / the tokens between), the step is predicted again with the priors of this checkout
(``membound.cost.step``) and set beside the measurement and the prediction the bench recorded when it
ran. The programs are the ones the bench compiled: the built-in Llama of the row's model with the row's
``compile`` options (``quantize=...`` included), here on the meta device with 2 decoder layers and
stretched to the model's depth (``step_prediction.with_layers``: every layer compiles to the same
launches); costed at the row's cache length (``step at T=...``) and batch, in the mode it recorded, at the
read bandwidth of the run, on the card's spec. Nothing is fitted here: the priors come from per-op
measurements (their ``source``), and this checks them against whole steps.

``--fit`` prints the fits the priors of ``membound/cost/step.py`` quote, from committed H200 results: the
per-launch profile of whole decode steps (our GEMVs and decode attention as they run inside the step); the
fused quantized prefill kernel as a fraction of the FLOP rate; and for each quantized decode path (and the
prefill's dequantization), per-op times (microseconds per op inside a replayed CUDA graph, weights
streamed from HBM) against the bytes the op moves (``quant_linear_bytes``: packed weight and scales, x, y;
the gated op's two inputs). Lines are ``time = fixed + bytes / (read_bw * efficiency)``, fitted by least
squares on the relative residuals (shapes from 9 MB to 0.5 GB weigh alike), ``read_bw`` being the run's
read-bandwidth probe (the typical 4168 GB/s where the run recorded none).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import statistics
import sys
from pathlib import Path
from typing import Any, Optional
from unittest import mock

import torch

if not torch.cuda.is_available():  # before anything imports triton: CPU-only programs
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound import api as membound_api  # noqa: E402
from membound.api import CompiledModel  # noqa: E402
from membound.backends.triton.step_plan import kernel_works  # noqa: E402
from membound.cost import Hardware  # noqa: E402
from membound.cost.step import StepPrediction, predict_step  # noqa: E402
from membound.models import get_config, model_from_config  # noqa: E402
from membound.step_prediction import triton_program, with_layers  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT = RESULTS / "decode_e2e-nvidia-h200-2026-12-02-session3.json"
TOLERANCE = 0.20
CARDS = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100-sxm"}


def compile_options(row: dict) -> dict[str, Any]:
    """The ``membound.compile`` keywords the bench used for ``row`` (its note: ``compile{...} generate{...}``)."""
    found = re.search(r"compile(\{.*?\})", row.get("note", ""))
    if not found:
        raise ValueError(f"row {row['model']} b{row['batch']} {row['contender']!r}: no compile{{...}} in its note")
    return ast.literal_eval(found.group(1))


def row_cache_len(row: dict, record: dict) -> int:
    """The cache length the bench predicted the step at (``step at T=...``; else its rule, P + 3N/4)."""
    found = re.search(r"T=(\d+)", row.get("prediction", ""))
    if found:
        return int(found.group(1))
    n = record["new_tokens"]
    return record["prompt"] + n // 2 + (n - n // 2) // 2


def row_mode(row: dict) -> str:
    found = re.match(r"(graph\+pdl|graph|eager) on", row.get("prediction", ""))
    return found.group(1) if found else "graph+pdl"


class Programs:
    """Triton programs of 2-layer meta-device models, one per (model, compile options). One capture per model
    serves all its options, each compile on a copy of its graph (the export is most of a build's time)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], Any] = {}
        self.captures: dict[str, Any] = {}

    def get(self, model: str, options: Optional[dict[str, Any]] = None) -> Any:
        options = options or {}
        key = (model, repr(sorted(options.items())))
        if key not in self.cache:
            config = dataclasses.replace(get_config(model), n_layers=2)
            with torch.device("meta"):
                module = model_from_config(config).to(torch.bfloat16).eval()
            kwargs = {k: v for k, v in options.items() if k != "cuda_graphs"}
            kwargs["backend"] = "triton"
            real = membound_api.capture_export

            def capture(*args: Any, **kw: Any) -> Any:
                if model not in self.captures:
                    self.captures[model] = real(*args, **kw)
                # the pipeline rewrites the graph it is given in place: each compile gets a structural copy
                return dataclasses.replace(self.captures[model], graph=self.captures[model].graph.copy())

            with mock.patch.object(membound_api, "capture_export", capture):
                self.cache[key] = triton_program(CompiledModel(module, **kwargs))
        return self.cache[key]


def predict_row(programs: Programs, row: dict, record: dict, hardware: Hardware) -> StepPrediction:
    """The decode step of ``row`` predicted with this checkout's priors (see the module docstring)."""
    program = programs.get(row["model"], compile_options(row))
    partition = with_layers(program.decode.partition, get_config(row["model"]).n_layers)
    works = kernel_works(partition, {"B": row["batch"], "T": row_cache_len(row, record)}, hardware)
    return predict_step(works, hardware, mode=row_mode(row), bandwidth=record["read_bandwidth_gbps"] * 1e9,
                        label=f"{row['model']} b{row['batch']} {row['contender']}")


def predict_call(programs: Programs, row: dict, record: dict, hardware: Hardware) -> float:
    """Seconds of ``row``'s whole ``generate`` call as ``predict_generate`` prices it: the prefill (eager)
    and ``new_tokens - 1`` steps at the mean cache length."""
    program = programs.get(row["model"], compile_options(row))
    layers = get_config(row["model"]).n_layers
    prompt, n, bw = record["prompt"], record["new_tokens"], record["read_bandwidth_gbps"] * 1e9
    dims = {"B": row["batch"], "S": prompt, "T": prompt}
    prefill = predict_step(kernel_works(with_layers(program.prefill.partition, layers), dims, hardware), hardware,
                           mode="eager", loop=False, bandwidth=bw)
    dims = {"B": row["batch"], "T": prompt + n // 2}
    step = predict_step(kernel_works(with_layers(program.decode.partition, layers), dims, hardware), hardware,
                        mode=row_mode(row), bandwidth=bw)
    return prefill.time_s + (n - 1) * step.time_s


def measured_rows(record: dict) -> list[dict]:
    return [r for r in record["rows"] if r.get("status") == "ok" and r.get("step_s")
            and "triton" in r["contender"]]


def table(record: dict, preds: list[tuple[dict, StepPrediction, float]]) -> str:
    """Measured step, the prediction the bench recorded, and this checkout's, per row; then the whole call."""
    lines = [f"{'model':9s} {'b':>2s} {'contender':30s} {'measured':>9s} {'recorded':>9s} {'ratio':>6s} "
             f"{'now':>9s} {'ratio':>6s}       {'call':>7s} {'now':>7s} {'ratio':>6s}  (decode step ms, ok = "
             f"within {TOLERANCE:.0%}; whole call ms)"]
    for row, pred, call in preds:
        measured, recorded = row["step_s"], row.get("predicted_step_s")
        old = f"{recorded * 1e3:9.3f} {recorded / measured:5.2f}x" if recorded else f"{'-':>9s} {'-':>6s}"
        ratio = pred.time_s / measured
        verdict = "ok" if abs(ratio - 1) <= TOLERANCE else "MISS"
        lines.append(f"{row['model']:9s} {row['batch']:2d} {row['contender']:30s} {measured * 1e3:9.3f} {old} "
                     f"{pred.time_s * 1e3:9.3f} {ratio:5.2f}x {verdict:4s}  {row['timed_s'] * 1e3:7.1f} "
                     f"{call * 1e3:7.1f} {call / row['timed_s']:5.2f}x")
    return "\n".join(lines)


# ---- per-op fits (--fit) ---------------------------------------------------------------------------

SHAPES_8B = {"qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (28672, 4096), "down": (4096, 14336),
             "down_gated": (4096, 14336), "head": (128256, 4096)}
TYPICAL_READ_BW = 4168e9  # membound.cost.step's H200 figure, for runs that recorded no probe


def op_bytes(m: int, n: int, k: int, scheme: str, gated: bool, group: int = 128) -> int:
    """What a quantized (or bf16) GEMV op moves, as the cost model counts it (2-byte activations)."""
    from membound.backends.triton.kernels.quant_matmul import quant_linear_bytes

    extra = 2 * m * k if gated else 0  # the gated op reads gate and up
    if scheme == "bf16":
        return 2 * (n * k + m * k + m * n) + extra
    return quant_linear_bytes(m, n, k, scheme, group if scheme == "int4" else 0, torch.bfloat16) + extra


def fit_line(points: list[tuple[float, float]]) -> tuple[float, float]:
    """(fixed s, seconds per byte) minimising sum((fixed + b * slope) / t - 1)^2 over (bytes, seconds)."""
    rows = [(1 / t, b / t) for b, t in points]
    s11 = sum(a * a for a, _ in rows)
    s12 = sum(a * c for a, c in rows)
    s22 = sum(c * c for _, c in rows)
    r1 = sum(a for a, _ in rows)
    r2 = sum(c for _, c in rows)
    det = s11 * s22 - s12 * s12
    return (r1 * s22 - r2 * s12) / det, (s11 * r2 - s12 * r1) / det


def layer_rows(name: str, scheme: str, mode: str, m: int, skip: tuple[str, ...] = ()) -> list[tuple[str, int, float]]:
    """(label, bytes, seconds) of ``quant_gemv_paths-...-layer*.json`` rows of ``scheme`` and ``mode``."""
    record = json.loads((RESULTS / name).read_text())
    out = []
    for s, md, op, us in record["rows [scheme, mode, op, us]"]:
        if s == scheme and md == mode and op not in skip:
            n, k = SHAPES_8B[op]
            out.append((f"{op} M={m}", op_bytes(m, n, k, scheme, op == "down_gated"), us * 1e-6))
    return out


def quant_matmul_rows(scheme: str, ms: tuple[int, ...]) -> list[tuple[str, int, float]]:
    """(label, bytes, seconds) of ``quant_matmul-nvidia-h200-2026-12-01.json``: the contender ``scheme`` (or
    ``scheme g128``) at ``ms`` rows."""
    record = json.loads((RESULTS / "quant_matmul-nvidia-h200-2026-12-01.json").read_text())
    return [(f"{r['n']}x{r['k']} M={r['m']}", r["bytes"], r["us"] * 1e-6) for r in record["rows"]
            if r["contender"] in (scheme, f"{scheme} g128") and r["m"] in ms]


def sweep_rows(scheme: str) -> list[tuple[str, int, float]]:
    """(label, bytes, seconds) of ``quant_matmul-sweep-nvidia-h200-2026-12-02.json``: ``scheme`` at M = 1 with
    the tiles ``pick_config`` picks (its ``heuristic`` rows: int8 on tensor cores, int4 the pairs kernel)."""
    record = json.loads((RESULTS / "quant_matmul-sweep-nvidia-h200-2026-12-02.json").read_text())
    return [(f"{r['n']}x{r['k']} M={r['m']} sweep", r["bytes"], r["us"] * 1e-6) for r in record["rows"]
            if r.get("heuristic") and r["scheme"] == scheme]


def pairs_rows() -> list[tuple[str, int, float]]:
    record = json.loads((RESULTS / "int4_pairs_paths-nvidia-h200-2026-12-02.json").read_text())
    return [(f"{r['shape']} M={r['m']}", op_bytes(r["m"], r["n"], r["k"], "int4", r["gated"]), r["us"] * 1e-6)
            for r in record["rows"] if r["path"] == "int4 pairs"]


def per_op_fits() -> list[tuple[str, str, float, list[tuple[str, int, float]]]]:
    """(kind, source, read bandwidth, rows) of each quantized prior's fit."""
    layer2 = "quant_gemv_paths-nvidia-h200-2026-12-02-layer2.json"
    qm_bw = float(json.loads((RESULTS / "quant_matmul-nvidia-h200-2026-12-01.json").read_text())
                  ["read_bandwidth_gbps"]) * 1e9
    return [
        ("quant_dot_int8", "[QG] int8 tc (M=1) + m16 (M=16, down_gated of the old gating left out) + [QS] int8",
         TYPICAL_READ_BW, layer_rows(layer2, "int8", "tc", 1) + layer_rows(layer2, "int8", "m16", 16, skip=("down_gated",))
         + sweep_rows("int8")),
        ("quant_pairs_int4", "[IP] int4 pairs, M=1 + [QS] int4", TYPICAL_READ_BW, pairs_rows() + sweep_rows("int4")),
        ("quant_dot_fp8", "[QM] fp8 M=4, 16 (tensor cores then too)", qm_bw, quant_matmul_rows("fp8", (4, 16))),
        ("quant_gemv_int8", "[QG] int8 gemv (M=1)", TYPICAL_READ_BW, layer_rows(layer2, "int8", "gemv", 1)),
        ("quant_gemv_int4", "[QG] int4 gemv (M=1)", TYPICAL_READ_BW, layer_rows(layer2, "int4", "gemv", 1)),
        ("quant_gemv_fp8", "[QM] fp8 M=1 (the FMA GEMV then)", qm_bw, quant_matmul_rows("fp8", (1,))),
        ("quant_dot_int4", "[QG] int4 m16-old (M=16, down_gated of the old gating left out)", TYPICAL_READ_BW,
         layer_rows(layer2, "int4", "m16-old", 16, skip=("down_gated",))),
        ("quant_dequant_int8", "[QM] int8 dequant+cublas - cublas bf16, M=64, by packed bytes", qm_bw,
         dequant_rows("int8", 0)),
        ("quant_dequant_int4", "[QM] int4 g128 dequant+cublas - cublas bf16, M=64, by packed bytes", qm_bw,
         dequant_rows("int4", 128)),
    ]


def dequant_rows(scheme: str, group: int) -> list[tuple[str, int, float]]:
    """(label, packed bytes, seconds) of the dequantization alone: ``quant_matmul-...-12-01.json``'s
    dequantize + cuBLAS time less cuBLAS's bf16 time at the same shape, M = 64."""
    from membound.backends.triton.kernels.quant_matmul import packed_bytes

    record = json.loads((RESULTS / "quant_matmul-nvidia-h200-2026-12-01.json").read_text())
    label = f"{scheme} g{group} dequant+cublas" if group else f"{scheme} dequant+cublas"
    cublas = {(r["n"], r["k"]): r["us"] for r in record["rows"] if r["contender"] == "cublas bf16" and r["m"] == 64}
    return [(f"{r['n']}x{r['k']} M=64", packed_bytes(r["n"], r["k"], scheme, group, torch.bfloat16),
             (r["us"] - cublas[r["n"], r["k"]]) * 1e-6) for r in record["rows"]
            if r["contender"] == label and r["m"] == 64]


def compute_fit(rows: list[tuple[str, float, float]], peak: float) -> float:
    """The fraction of ``peak`` FLOP/s minimising sum(flops / (peak * e) / t - 1)^2 over (label, flops, s)."""
    a = sum(f / t for _, f, t in rows) / sum((f / t) ** 2 for _, f, t in rows)
    return 1 / (a * peak)


def prefill_fits() -> list[tuple[str, str, list[tuple[str, float, float]]]]:
    """(kind, source, (label, flops, seconds) rows) of the fused prefill kernels' compute-bound fits:
    ``quant_matmul-nvidia-h200-2026-12-01.json`` at M = 64 (its time grows with M: the weight is dequantized
    again for every 64-row block)."""
    record = json.loads((RESULTS / "quant_matmul-nvidia-h200-2026-12-01.json").read_text())
    out = []
    for kind, contender in (("quant_mma_int8", "int8 fused"), ("quant_mma_int4", "int4 g128 fused"),
                            ("quant_mma_fp8", "fp8")):
        rows = [(f"{r['n']}x{r['k']} M=64", 2.0 * r["m"] * r["n"] * r["k"], r["us"] * 1e-6) for r in record["rows"]
                if r["contender"] == contender and r["m"] == 64]
        out.append((kind, f"[QM] {contender} M=64", rows))
    return out


PROFILE = "profile_step-quick-nvidia-h200-2026-12-03.json"
PROFILE_KINDS = ("gemv", "gemv_gated", "gemv_dot", "gemv_dot_gated", "decode_attention")
# the kinds whose kernel has a name of its own, for a profile whose launches the model's plan does not match
# one for one (a cuBLAS matmul that launches a split-K reduce beside it)
KERNEL_OF_KIND = {"decode_attention": "_flash_decoding_split"}
GAP_PDL = 0.51e-6  # what PDL takes off a launch's gap (membound.cost.step: graph gap - PDL overlap)


def profile_rows(programs: Programs) -> dict[str, list[tuple[str, float, float, int]]]:
    """kind -> (label, bytes, seconds, launches) of the per-launch H200 profile of whole decode steps
    (``benches/profile_step.py``: HF Llama at the 1.24B / 8B shapes, context 256, CUDA graph with PDL): each
    launch's time is its gap plus its duration (its share of the step's span, PDL overlap included), plus the
    0.51 us PDL takes off the gap (the priors' work), medians over the launches of one shape. Bytes are the
    cost model's, from the built-in Llama's launches of the same kind in the same order."""
    record = json.loads((RESULTS / PROFILE).read_text())
    hardware = Hardware.named("h200")
    out: dict[str, list[tuple[str, float, float, int]]] = {}
    for case in record["cases"]:
        layers = get_config(case["model"]).n_layers
        partition = with_layers(programs.get(case["model"]).decode.partition, layers)
        works = kernel_works(partition, {"B": case["batch"], "T": case["context"]}, hardware)
        for kind in PROFILE_KINDS:
            ours = [w for w in works if w.kind == kind]
            if not ours:
                continue
            if all("predicted" in p for p in case["positions"]):
                theirs = [p for p in case["positions"] if p["predicted"].split(" ")[0] == kind]
            elif kind in KERNEL_OF_KIND:  # launch counts differ (cuBLAS's split-K reduce): match by kernel name
                theirs = [p for p in case["positions"] if p["name"] == KERNEL_OF_KIND[kind]]
            else:
                continue
            if len(ours) != len(theirs):
                raise ValueError(f"{PROFILE}: {case['model']} b{case['batch']}: {len(theirs)} {kind} launches "
                                 f"profiled, {len(ours)} built")
            shapes: dict[float, list[float]] = {}
            for w, p in zip(ours, theirs):
                shapes.setdefault(w.bytes, []).append((p["gap_before_us"] + p["us"]) * 1e-6 + GAP_PDL)
            for nbytes, times in sorted(shapes.items()):
                out.setdefault(kind, []).append((f"{case['model']} b{case['batch']}", nbytes,
                                                 statistics.median(times), len(times)))
    return out


def print_fits(programs: Optional[Programs] = None) -> None:
    for kind, rows in profile_rows(programs or Programs()).items():
        fixed, slope = fit_line([(b, t) for _, b, t, _ in rows])
        print(f"{kind}: [PS] {PROFILE}: fixed {fixed * 1e6:.2f} us + bytes / ({TYPICAL_READ_BW / 1e9:.0f} GB/s * "
              f"{1 / (slope * TYPICAL_READ_BW):.3g})")
        for label, b, t, n in rows:
            fit = fixed + b * slope
            print(f"    {label:14s} x{n:<3d} {b / 1e6:9.2f} MB {t * 1e6:8.2f} us  fit {fit * 1e6:8.2f} ({fit / t - 1:+.0%})")
    peak = Hardware.named("h200").peak_flops("bf16")
    for kind, source, rows in prefill_fits():
        e = compute_fit(rows, peak)
        print(f"{kind}: {source}: 2MNK / ({peak / 1e12:.0f} TFLOP/s * {e:.3f})")
        for label, f, t in rows:
            fit = f / (peak * e)
            print(f"    {label:22s} {f / 1e9:8.2f} GF {t * 1e6:8.2f} us  fit {fit * 1e6:8.2f} ({fit / t - 1:+.0%})")
    for kind, source, bw, rows in per_op_fits():
        fixed, slope = fit_line([(b, t) for _, b, t in rows])
        print(f"{kind}: {source}: fixed {fixed * 1e6:.2f} us + bytes / ({bw / 1e9:.0f} GB/s * "
              f"{1 / (slope * bw):.3g})")
        for label, b, t in rows:
            fit = fixed + b * slope
            print(f"    {label:22s} {b / 1e6:8.1f} MB {t * 1e6:8.2f} us  fit {fit * 1e6:8.2f} ({fit / t - 1:+.0%})")


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", default=str(DEFAULT), help="a decode_e2e result JSON")
    p.add_argument("--kinds", action="store_true", help="print each row's per-kernel-kind breakdown")
    p.add_argument("--models", default="", help="comma-separated subset of the file's models")
    p.add_argument("--fit", action="store_true", help="print the per-op fits of the quantized priors and stop")
    args = p.parse_args(argv)
    if args.fit:
        print_fits()
        return 0
    record = json.loads(Path(args.file).read_text())
    card = CARDS.get(record["device"])
    if card is None:
        raise SystemExit(f"step_calibration: no spec name for device {record['device']!r}; known: {sorted(CARDS)}")
    hardware = Hardware.named(card)
    wanted = set(filter(None, args.models.split(",")))
    programs = Programs()
    preds = []
    for row in measured_rows(record):
        if wanted and row["model"] not in wanted:
            continue
        pred = predict_row(programs, row, record, hardware)
        preds.append((row, pred, predict_call(programs, row, record, hardware)))
        if args.kinds:
            print(pred.table(), flush=True)
    print(f"{Path(args.file).name}: {record['device']}, read bandwidth {record['read_bandwidth_gbps']:.0f} GB/s")
    print(table(record, preds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
