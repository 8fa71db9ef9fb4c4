"""Where a compiled decode step's time goes: launches, time per kernel and the gaps between them, beside
the cost model's prediction of the same step.

    PYTHONPATH=. python benches/profile_step.py --quick              # GPU, < 2 min: HF Llama 1.24B and 8B
                                                                     # shapes, batch 1 and 8, context 256
    PYTHONPATH=. python benches/profile_step.py --models llama-8b --batches 8 --context 1024 --source builtin
    PYTHONPATH=. python benches/profile_step.py --source recurrent --models qwen3.5-0.8b-like --batches 1,8
    MEMBOUND_PDL=0 PYTHONPATH=. python benches/profile_step.py ...   # the same without programmatic dependent launch
    PYTHONPATH=. python benches/profile_step.py --skip _horizontal_mul_neg_cat_add   # the step without those launches
    MEMBOUND_DECODE_PIPELINE=decode-fused PYTHONPATH=. python benches/profile_step.py --quick   # the fused step
    PYTHONPATH=. python benches/profile_step.py --quick --quantize int8  # the quantized step (compile(quantize=))
    PYTHONPATH=. python benches/profile_step.py --smoke --out DIR    # CPU: formats a made-up profile (CI)

Per (model, batch): the model (``--source hf``: ``transformers.LlamaForCausalLM`` at the shape of the
built-in ``llama-1b`` / ``llama-8b`` config, random bf16 weights; ``builtin``: membound's own Llama) is
compiled with the Triton backend, its KV cache filled by a prefill of ``--context`` random tokens, and
its decode step (the S = 1 graph ``generate`` runs) captured in a CUDA graph as ``generate`` does. Then:

- **step**: ``--timed`` replays between CUDA events, median per replay (the graph alone: no input copies,
  no sampling; ``decode_e2e.py`` times whole ``generate`` calls);
- **kernels**: ``--replays`` replays under ``torch.profiler`` (CUDA activity); the chrome trace's kernel and
  memcpy events, in start order, split into replays (each starts with the graph's first kernel): launches
  per step, each kernel's median duration, the gap before it (start minus the previous kernel's end;
  negative where programmatic dependent launch overlaps them: a PDL kernel's duration then includes its
  wait for the previous one, so compare steps and gaps, not kernel sums), aggregated by kernel name;
- **predicted**: ``membound.step_prediction.predict_decode_step`` for the same step on this card (graph
  replay only, no per-token loop), per launch where its launch count equals the profile's.
- **path**: how far each launch moved the step's end (its end past the latest end before it: these add up to the
  span, PDL overlap counted once), per kernel name and, for the repeating block of launches (a decoder layer:
  ``per_layer``), per launch of the block as the median over the layers, labelled with the cost model's op.

``--skip PREFIX`` (experiments): the generated kernels whose names start with PREFIX are not launched, so the step
computes wrong values; its time is an upper bound on what fusing that kernel into its neighbours could save.

Writes ``benches/results/profile_step-<tag>-<gpu>-<date>.json`` (everything) and ``.txt`` (the tables),
copies under ``--out``, and prints the tables last.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benches._results import gpu_slug  # noqa: E402

QUICK_MODELS = ("llama-1b", "llama-8b")
QUICK_BATCHES = (1, 8)
TRACE_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")


# ---- the timeline: pure functions over (name, start_us, end_us) events, tested on the CPU ----------------

def split_replays(events: Sequence[tuple[str, float, float]], replays: int) -> list[list[tuple[str, float, float]]]:
    """The device events of ``replays`` replays of one graph, in start order, as one list per replay.

    Each replay starts with the graph's first kernel: the trace is cut where that name recurs, and the
    parts of the common length kept (a last replay the profiler caught only in part is dropped).
    When the name also recurs inside the step (the cuts are uneven in the middle), the trace is cut into
    ``replays`` equal parts, which holds whenever every replay was traced whole."""
    events = sorted(events, key=lambda e: e[1])
    if not events or replays < 1:
        return []
    first = events[0][0]
    starts = [i for i, e in enumerate(events) if e[0] == first]
    parts = [events[a:b] for a, b in zip(starts, starts[1:] + [len(events)])]
    middle = parts[1:-1] if len(parts) > 2 else parts
    if len({len(p) for p in middle}) == 1 and len(middle[0]) > 1:
        full = [p for p in parts if len(p) == len(middle[0])]
        if len(full) >= max(1, replays - 2) and all(len(p) <= len(middle[0]) for p in parts):
            return full
    if len(events) % replays:
        raise ValueError(f"profile: {len(events)} device events do not split into {replays} equal replays; "
                         f"was every replay traced whole?")
    n = len(events) // replays
    return [events[i * n:(i + 1) * n] for i in range(replays)]


def path_times(step: list[tuple[str, float, float]]) -> list[float]:
    """How far each launch moved the step's end: its end minus the latest end before it (0 when it ended
    earlier), the first launch its whole duration. They add up to the step's span. Under PDL a kernel starts
    while the one before it runs, so its own duration counts time its neighbours also count; this does not."""
    out, latest = [], None
    for _, start, end in step:
        out.append(end - start if latest is None else max(0.0, end - latest))
        latest = end if latest is None else max(latest, end)
    return out


def timeline(steps: list[list[tuple[str, float, float]]]) -> dict[str, Any]:
    """Launches, per-position medians (duration, gap before, time on the step's path), per-name aggregates and
    step totals, in µs."""
    n = len(steps[0])
    if any(len(s) != n for s in steps):
        raise ValueError(f"profile: replays hold different launch counts {sorted({len(s) for s in steps})}")
    paths = [path_times(s) for s in steps]
    positions = []
    for i in range(n):
        names = {s[i][0] for s in steps}
        durations = [s[i][2] - s[i][1] for s in steps]
        gaps = [s[i][1] - s[i - 1][2] for s in steps] if i else [0.0]
        positions.append({"i": i, "name": steps[0][i][0] if len(names) == 1 else "/".join(sorted(names)),
                          "us": statistics.median(durations), "gap_before_us": statistics.median(gaps),
                          "path_us": statistics.median(p[i] for p in paths)})
    spans = [s[-1][2] - s[0][1] for s in steps]
    busy = [sum(e[2] - e[1] for e in s) for s in steps]
    gap_totals = [sum(s[i][1] - s[i - 1][2] for i in range(1, n)) for s in steps]
    all_gaps = sorted(p["gap_before_us"] for p in positions[1:])
    kernels: dict[str, dict[str, Any]] = {}
    for p in positions:
        k = kernels.setdefault(p["name"], {"name": p["name"], "per_step": 0, "total_us": 0.0, "path_us": 0.0})
        k["per_step"] += 1
        k["total_us"] += p["us"]
        k["path_us"] += p["path_us"]
    busy_median = statistics.median(busy)
    span_median = statistics.median(spans)
    for k in kernels.values():
        k["mean_us"] = k["total_us"] / k["per_step"]
        k["share"] = k["total_us"] / busy_median if busy_median else 0.0
        k["path_share"] = k["path_us"] / span_median if span_median else 0.0
    return {
        "launches": n, "replays": len(steps),
        "span_us": span_median, "busy_us": busy_median, "gaps_us": statistics.median(gap_totals),
        "gap_stats_us": {"median": _pick(all_gaps, 0.5), "p10": _pick(all_gaps, 0.1), "p90": _pick(all_gaps, 0.9),
                         "min": all_gaps[0] if all_gaps else 0.0, "max": all_gaps[-1] if all_gaps else 0.0,
                         "negative": sum(1 for g in all_gaps if g < 0)},
        "kernels": sorted(kernels.values(), key=lambda k: -k["total_us"]),
        "positions": positions,
    }


def per_layer(positions: list[dict[str, Any]]) -> Optional[dict[str, Any]]:
    """The step's repeating block of launches (a decoder layer) and each launch's median time on the path within it.

    The period is the spacing of the kernel name that recurs most often at an even spacing (flash decoding: once a
    layer); the block starts as early as every layer still launches the same names there. Each row is one launch of
    the block: its name, the cost model's label for it (the first layer's, when the profile has per-launch
    predictions), the median over the layers whose launch there has that name of its time on the path, and of its
    duration. None when no name recurs evenly at least twice (a one-layer model)."""
    names = [p["name"] for p in positions]
    at: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        at.setdefault(n, []).append(i)
    best: Optional[tuple[int, int, int]] = None  # (count, first, period)
    for idx in at.values():
        gaps = {b - a for a, b in zip(idx, idx[1:])}
        if len(idx) >= 2 and len(gaps) == 1 and (best is None or len(idx) > best[0]):
            best = (len(idx), idx[0], gaps.pop())
    if best is None:
        return None
    layers, first, period = best
    start = first
    while (start - 1 >= 0 and start - 1 > first - period
           and all(names[start - 1 + k * period] == names[start - 1] for k in range(layers))):
        start -= 1
    rows = []
    for t in range(period):
        same = [start + k * period + t for k in range(layers)
                if start + k * period + t < len(names) and names[start + k * period + t] == names[start + t]]
        rows.append({"name": names[start + t], "predicted": positions[start + t].get("predicted", ""),
                     "layers": len(same), "path_us": statistics.median(positions[i]["path_us"] for i in same),
                     "us": statistics.median(positions[i]["us"] for i in same)})
    return {"period": period, "layers": layers, "start": start, "rows": rows,
            "path_us": sum(r["path_us"] for r in rows)}


def _pick(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def trace_events(path: Path) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of the device events (kernels, memcpy, memset) of a chrome trace."""
    data = json.loads(Path(path).read_text())
    out = []
    for e in data.get("traceEvents", []):
        if e.get("ph") == "X" and e.get("cat") in TRACE_CATEGORIES:
            out.append((str(e["name"]), float(e["ts"]), float(e["ts"]) + float(e.get("dur", 0.0))))
    return out


def attach_prediction(case: dict[str, Any], pred: Any) -> None:
    """The prediction's totals, per kind, and per launch beside each profiled position when the counts agree."""
    case["predicted"] = {"mode": pred.mode, "card": pred.card, "launches": pred.launch_count,
                         "step_us": pred.time_s * 1e6, "work_us": pred.work_s * 1e6, "gaps_us": pred.gap_s * 1e6,
                         "bytes": pred.bytes,
                         "by_kind": {k: {"launches": int(v["launches"]), "bytes": v["bytes"], "us": v["time_s"] * 1e6}
                                     for k, v in pred.by_kind().items()}}
    if pred.launch_count == case.get("launches"):
        for p, launch in zip(case["positions"], pred.launches):
            p["predicted_us"] = launch.time_s * 1e6
            p["predicted"] = f"{launch.work.kind} {launch.work.name}"
    else:
        case.setdefault("notes", []).append(f"the cost model plans {pred.launch_count} launches, the profile shows "
                                            f"{case.get('launches')}: no per-launch comparison")


def format_case(case: dict[str, Any], top: int = 25) -> str:
    """The text report of one profiled step."""
    pred = case.get("predicted") or {}
    quant = f" {case['quantize']}" if case.get("quantize") else ""
    head = (f"== {case['source']} {case['model']}{quant} b{case['batch']} context {case['context']} "
            f"({'PDL' if case.get('pdl') else 'no PDL'}): {case['launches']} launches per step; step "
            f"{case['step_us']:.1f} us (graph replay, CUDA events); profiled span {case['span_us']:.1f} us, "
            f"kernel time {case['busy_us']:.1f} us, gaps {case['gaps_us']:+.1f} us")
    lines = [head]
    if pred:
        lines.append(f"   predicted ({pred['mode']}, {pred['card']}): {pred['step_us']:.1f} us over {pred['launches']} "
                     f"launches ({pred['step_us'] / case['step_us']:.2f}x measured); kernels {pred['work_us']:.1f} us, "
                     f"gaps {pred['gaps_us']:+.1f} us, {pred['bytes'] / 1e9:.3f} GB")
    g = case["gap_stats_us"]
    lines.append(f"   gap before a kernel (us): median {g['median']:.2f}, p10 {g['p10']:.2f}, p90 {g['p90']:.2f}, "
                 f"min {g['min']:.2f}, max {g['max']:.2f}; {g['negative']} negative (overlapped by PDL)")
    width = max([len(k["name"][:48]) for k in case["kernels"]] + [6])
    path = all("path_us" in k for k in case["kernels"])  # (result files from before the column have none)
    lines.append(f"   {'kernel':{width}s} {'/step':>5s} {'mean us':>8s} {'us/step':>8s} {'share':>6s}"
                 + (f" {'path us':>8s} {'path':>6s}" if path else ""))
    for k in case["kernels"][:top]:
        on_path = f" {k['path_us']:8.1f} {100 * k['path_share']:5.1f}%" if path else ""
        lines.append(f"   {k['name'][:48]:{width}s} {k['per_step']:5d} {k['mean_us']:8.2f} {k['total_us']:8.1f} "
                     f"{100 * k['share']:5.1f}%{on_path}")
    if path:
        lines.append("   (share: of the kernel time, which PDL overlap counts twice; path: of the profiled span, how "
                     "far each kernel moved the step's end past the latest end before it)")
    if len(case["kernels"]) > top:
        lines.append(f"   ... {len(case['kernels']) - top} more kernel names")
    if "per_layer" in case:  # (run's, in the result file)
        layer = case["per_layer"]
    else:  # (a made-up or older profile: from its positions, where they have path times)
        layer = per_layer(case["positions"]) if path and all("path_us" in p for p in case["positions"]) else None
    if layer is not None:
        lines.append(f"   a layer on the path ({layer['period']} launches x {layer['layers']} layers from "
                     f"#{layer['start']}; median us over the layers): {layer['path_us']:.1f} us")
        for r in layer["rows"]:
            label = f" ({r['predicted']})" if r["predicted"] else ""
            lines.append(f"     {r['path_us']:6.2f} path {r['us']:7.2f} kernel  {(r['name'] + label)[:90]}")
    if pred.get("by_kind"):
        lines.append("   predicted by kind: " + "; ".join(f"{k} {v['launches']}x {v['us']:.1f} us"
                                                         for k, v in sorted(pred["by_kind"].items(),
                                                                            key=lambda kv: -kv[1]["us"])))
    worst = sorted((p for p in case["positions"] if "predicted_us" in p),
                   key=lambda p: -abs(p["us"] + p["gap_before_us"] - p["predicted_us"]))[:8]
    if worst:
        lines.append("   largest per-launch misses (measured gap + kernel vs predicted, us): " + "; ".join(
            f"#{p['i']} {p['name'][:32]} {p['us'] + p['gap_before_us']:.1f} vs {p['predicted_us']:.1f}" for p in worst))
    lines += [f"   note: {n}" for n in case.get("notes", [])]
    return "\n".join(lines)


# ---- the GPU run ----------------------------------------------------------------------------------------

def build_model(source: str, name: str, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """The model to profile: HF ``LlamaForCausalLM`` at the built-in config's shape, the built-in Llama, or one
    of ``benches/recurrent_decode.py``'s hybrids (``--source recurrent``)."""
    from membound.models import build_model as build_builtin
    from membound.models import get_config

    if source == "builtin":
        return build_builtin(name, dtype=dtype, device=device)
    if source == "recurrent":  # a hybrid of benches/recurrent_decode.py (Qwen3.5-0.8B-like, Mamba-2-780M-like)
        from benches.recurrent_decode import MODELS, build

        if name not in MODELS:
            raise ValueError(f"--source recurrent: unknown model {name!r}; known: {', '.join(MODELS)}")
        return build(MODELS[name], device, dtype).requires_grad_(False)
    from transformers import AutoModelForCausalLM
    from transformers import LlamaConfig as HFLlamaConfig

    cfg = get_config(name)
    hf = HFLlamaConfig(vocab_size=cfg.vocab_size, hidden_size=cfg.dim, intermediate_size=cfg.intermediate_size,
                       num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads,
                       num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.norm_eps,
                       rope_theta=cfg.rope_theta, tie_word_embeddings=cfg.tie_embeddings,
                       max_position_embeddings=8192, attention_bias=False, mlp_bias=False,
                       bos_token_id=None, eos_token_id=None, pad_token_id=None)
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf, dtype=dtype)
    return model.eval().requires_grad_(False)


def profile_case(compiled: Any, program: Any, vocab: int, batch: int, context: int, args: argparse.Namespace,
                 device: str) -> dict[str, Any]:
    """Prefill ``context`` tokens, capture the decode step, time it, profile it (see the module docstring)."""
    from membound.backends.cuda_graphs import CapturedGraph
    from membound.backends.triton.kernels._launch import pdl

    program.cache.ensure(batch, context + 64)
    state = program.cache.views(batch)
    program.prefill_graph.tensors.update(state)
    program.decode_graph.tensors.update(state)
    ids = torch.randint(1, vocab, (batch, context), device=device)
    positions = torch.arange(context, device=device).expand(batch, -1).contiguous()
    program.prefill([ids, positions, torch.full((batch,), context - 1, device=device)])
    inputs = [torch.randint(1, vocab, (batch, 1), device=device), torch.full((batch, 1), context, device=device),
              torch.zeros(batch, dtype=torch.long, device=device)]
    graph = CapturedGraph(program.decode, inputs, copy_outputs=False)
    static = graph.static_inputs  # replaying on its own buffers copies nothing
    for _ in range(5):
        graph(static)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(args.timed):
        start.record()
        graph(static)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(args.replays):
            graph(static)
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(path))
        events = trace_events(path)
    case = {"batch": batch, "context": context, "pdl": pdl(torch.device(device)), "step_us": statistics.median(times)}
    case.update(timeline(split_replays(events, args.replays)))
    return case


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import membound
    from membound.api import build_kv_program
    from membound.cost import Hardware
    from membound.step_prediction import predict_decode_step

    device, dtype = "cuda", torch.bfloat16
    hardware = Hardware.detect()
    cases = []
    for name in args.models:
        t0 = time.perf_counter()
        try:
            model = build_model(args.source, name, device, dtype)
            vocab = int(model.config.vocab_size)
            compiled = membound.compile(model, backend="triton", cuda_graphs=True,
                                        **({"quantize": args.quantize} if args.quantize else {}))
            program = build_kv_program(compiled, torch.zeros(1, 8, dtype=torch.long, device=device))
            skipped = skip_kernels(program.decode, args.skip) if args.skip else []
        except Exception as exc:  # noqa: BLE001 (a model that does not build keeps the others)
            why = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"[:300]
            cases += [{"model": name, "source": args.source, "batch": b, "error": f"build: {why}"}
                      for b in args.batches]
            print(f"{name}: build failed: {why}", flush=True)
            continue
        built = time.perf_counter() - t0
        for batch in args.batches:
            t1 = time.perf_counter()
            case = {"model": name, "source": args.source, "quantize": args.quantize}
            if args.skip:
                case["skipped"] = skipped
            try:
                case.update(profile_case(compiled, program, vocab, batch, args.context, args, device))
                case["per_layer"] = per_layer(case["positions"])  # (the text report's layer view, for the JSON)
                try:
                    pred = predict_decode_step(compiled, batch, args.context, hardware=hardware, loop=False)
                except Exception as exc:  # noqa: BLE001 (the measured profile stands without a prediction)
                    case.setdefault("notes", []).append(f"no prediction: {type(exc).__name__}: {exc}"[:300])
                else:
                    attach_prediction(case, pred)
            except Exception as exc:  # noqa: BLE001 (one case failing keeps the others)
                case["batch"] = batch
                case["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"[:300]
            case["build_s"], case["case_s"] = built, time.perf_counter() - t1
            cases.append(case)
            print(format_case(case) if "error" not in case else f"{name} b{batch}: failed: {case['error']}",
                  flush=True)
        del compiled, program, model
        torch.cuda.empty_cache()
    return cases


class _NoLaunch:
    """A generated kernel that is not launched (``--skip``): ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid: Any) -> Any:
        return lambda *args, **kwargs: None


def skip_kernels(executable: Any, prefix: str) -> list[str]:
    """Replace the generated Triton kernels of ``executable`` (the decode step) whose names start with ``prefix``
    by :class:`_NoLaunch`; returns their names. Raises when none matches (a typo must not time the full step)."""
    import triton

    mod = executable.module()
    kernels = sorted(n for n, v in vars(mod).items() if isinstance(v, triton.runtime.jit.KernelInterface))
    names = [n for n in kernels if n.startswith(prefix)]
    if not names:
        raise ValueError(f"--skip {prefix!r}: no generated kernel of the decode step starts with it; its kernels: "
                         f"{', '.join(kernels)}")
    for n in names:
        setattr(mod, n, _NoLaunch())
    return names


def smoke_cases() -> list[dict[str, Any]]:
    """A made-up two-replay profile (three kernels, the second overlapped by PDL) through the same code."""
    from membound.cost import Hardware
    from membound.cost.step import KernelWork, predict_step

    events = []
    for r in range(2):
        t = 100.0 * r
        events += [("_fused_embedding_rms_norm_0", t, t + 2), ("_linear_small_m", t + 1.5, t + 12),
                   ("_flash_decoding_split", t + 12.3, t + 19)]
    case = {"model": "llama-tiny", "source": "smoke", "batch": 1, "context": 16, "pdl": True, "step_us": 19.5}
    case.update(timeline(split_replays(events, 2)))
    works = [KernelWork("_fused_embedding_rms_norm_0", "fused", 0.0, 8e3),
             KernelWork("linear %1", "gemv", 0.0, 8e6), KernelWork("cached_attention %2", "decode_attention", 0.0, 1e5)]
    attach_prediction(case, predict_step(works, Hardware.named("h200"), loop=False))
    return [case]


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="llama-1b", help="built-in config names, comma-separated")
    p.add_argument("--batches", default="1", help="comma-separated")
    p.add_argument("--source", choices=("hf", "builtin", "recurrent"), default="hf",
                   help="hf: transformers LlamaForCausalLM at the config's shape; builtin: membound's Llama; "
                        "recurrent: a hybrid of benches/recurrent_decode.py (--models qwen3.5-0.8b-like,...)")
    p.add_argument("--context", type=int, default=256, help="cached positions when the step is profiled")
    p.add_argument("--replays", type=int, default=20, help="replays under the profiler")
    p.add_argument("--timed", type=int, default=100, help="replays timed with CUDA events")
    p.add_argument("--quick", action="store_true", help="llama-1b and llama-8b, batch 1 and 8 (< 2 min on one GPU)")
    p.add_argument("--smoke", action="store_true", help="CPU: a made-up profile through the tables (checks the script)")
    p.add_argument("--quantize", default=None, choices=("int8", "int4", "fp8"),
                   help="profile the step of membound.compile(..., quantize=SCHEME)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="folder for a copy of the result files")
    p.add_argument("--skip", default=None, metavar="PREFIX",
                   help="experiments: do not launch the generated kernels whose names start with PREFIX (wrong values; "
                        "the time bounds what fusing them away could save)")
    args = p.parse_args(argv)
    if args.quick:
        args.models, args.batches = ",".join(QUICK_MODELS), ",".join(map(str, QUICK_BATCHES))
    args.models = [m for m in args.models.split(",") if m]
    args.batches = [int(b) for b in args.batches.split(",") if b]
    if not args.models or not args.batches or min(args.batches) < 1:
        p.error("--models and --batches must name at least one model and positive batch sizes")
    if args.context < 1 or args.replays < 1 or args.timed < 1:
        p.error("--context, --replays and --timed must be >= 1")
    return args


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.smoke:
        cases, gpu = smoke_cases(), "cpu"
    elif not torch.cuda.is_available():
        print("profile_step: needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    else:
        gpu = torch.cuda.get_device_name()
        cases = run(args)
    date = datetime.date.today().isoformat()
    tag = "smoke" if args.smoke else ("quick" if args.quick else f"{args.source}-{'+'.join(args.models)}-b"
                                      f"{'+'.join(map(str, args.batches))}")
    pdl = "" if args.smoke or os.environ.get("MEMBOUND_PDL", "1") != "0" else "-nopdl"
    quant = f"-{args.quantize}" if args.quantize and not args.smoke else ""
    pipeline = os.environ.get("MEMBOUND_DECODE_PIPELINE", "").strip()  # an A/B run of another decode pipeline
    pipe = f"-{pipeline}" if pipeline and pipeline != "decode" and not args.smoke else ""
    skip = "-skip" if args.skip and not args.smoke else ""
    stem = f"profile_step-{tag}{quant}{pdl}{pipe}{skip}-{gpu_slug(gpu)}-{date}"
    record = {"bench": "profile_step", "device": gpu, "date": date, "args": vars(args), "versions": versions(),
              "method": __doc__.split("\n\n", 2)[2].strip(), "cases": cases}
    text = "\n\n".join(format_case(c) if "error" not in c else f"{c['model']} b{c['batch']}: failed: {c['error']}"
                       for c in cases)
    targets = ([] if args.smoke else [ROOT / "benches" / "results"]) + ([Path(args.out)] if args.out else [])
    for folder in targets:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{stem}.json").write_text(json.dumps(record, indent=1) + "\n")
        (folder / f"{stem}.txt").write_text(f"{gpu}, {date}\n\n{text}\n")
    print(f"wrote {', '.join(str(f / stem) + '.{json,txt}' for f in targets) or '(nothing)'}")
    print(text)
    return 0


def versions() -> dict[str, Optional[str]]:
    out: dict[str, Optional[str]] = {"torch": torch.__version__}
    for mod in ("triton", "transformers"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            out[mod] = None
    return out


if __name__ == "__main__":
    sys.exit(main())
