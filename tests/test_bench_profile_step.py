"""``benches/profile_step.py`` on the CPU: arguments, the trace -> timeline arithmetic, the tables."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

bench = load_module("benches/profile_step.py", "profile_step")


def replays(n: int, gap: float = 0.5) -> list[tuple[str, float, float]]:
    """``n`` replays of a 3-kernel step: a (2 us), b (5 us), a (1 us), ``gap`` between kernels."""
    out, t = [], 0.0
    for _ in range(n):
        for name, dur in (("a", 2.0), ("b", 5.0), ("a", 1.0)):
            out.append((name, t, t + dur))
            t += dur + gap
        t += 20.0  # host time between replays
    return out


def test_quick_covers_both_shapes_and_batches() -> None:
    args = bench.parse_args(["--quick"])
    assert args.models == ["llama-1b", "llama-8b"] and args.batches == [1, 8] and args.source == "hf"
    assert bench.parse_args(["--models", "llama-8b", "--batches", "8", "--source", "builtin"]).batches == [8]
    with pytest.raises(SystemExit):
        bench.parse_args(["--batches", "0"])


def test_replays_split_where_the_first_kernel_recurs_else_evenly() -> None:
    events = replays(3)
    parts = bench.split_replays(list(reversed(events)), 3)  # any order: sorted by start
    assert [len(p) for p in parts] == [3, 3, 3]
    assert [e[0] for e in parts[1]] == ["a", "b", "a"]  # "a" recurs inside the step: cut evenly
    with pytest.raises(ValueError, match="do not split into 2 equal replays"):
        bench.split_replays(events, 2)
    # a unique first kernel: cut by name, and a last replay caught only in part is dropped
    unique = [(n.replace("a", "c", 1) if i % 3 == 0 else n, s, e) for i, (n, s, e) in enumerate(replays(4))]
    cut = bench.split_replays(unique[:-1], 4)
    assert len(cut) == 3 and all([e[0] for e in p] == ["c", "b", "a"] for p in cut)


def test_timeline_launches_gaps_and_names() -> None:
    t = bench.timeline(bench.split_replays(replays(4, gap=0.5), 4))
    assert t["launches"] == 3 and t["replays"] == 4
    assert t["busy_us"] == pytest.approx(8.0)
    assert t["gaps_us"] == pytest.approx(1.0)  # two gaps inside a step; the time between replays is not a gap
    assert t["span_us"] == pytest.approx(9.0)
    assert [p["gap_before_us"] for p in t["positions"]] == pytest.approx([0.0, 0.5, 0.5])
    a = next(k for k in t["kernels"] if k["name"] == "a")
    assert (a["per_step"], a["total_us"], a["mean_us"]) == (2, pytest.approx(3.0), pytest.approx(1.5))
    overlapped = bench.timeline(bench.split_replays(replays(2, gap=-0.5), 2))
    assert overlapped["gap_stats_us"]["negative"] == 2 and overlapped["gaps_us"] == pytest.approx(-1.0)


def test_path_times_add_up_to_the_span_and_count_overlap_once() -> None:
    """A kernel's time on the step's path is its end past the latest end before it: under PDL overlap (b starts
    before a ends) the kernel times add up to more than the span, the path times exactly to it; a kernel that ends
    inside another's time adds nothing."""
    step = [("a", 0.0, 4.0), ("b", 3.0, 10.0), ("c", 5.0, 8.0), ("d", 9.0, 12.0)]
    assert bench.path_times(step) == pytest.approx([4.0, 6.0, 0.0, 2.0])
    t = bench.timeline([step, [(n, s + 50.0, e + 50.0) for n, s, e in step]])
    assert t["busy_us"] == pytest.approx(17.0) and t["span_us"] == pytest.approx(12.0)
    assert sum(k["path_us"] for k in t["kernels"]) == pytest.approx(t["span_us"])
    assert {k["name"]: k["path_share"] for k in t["kernels"]} == pytest.approx({"a": 4 / 12, "b": 0.5, "c": 0.0,
                                                                                 "d": 2 / 12})


def test_per_layer_finds_the_repeating_block_and_takes_medians_over_its_layers() -> None:
    """The block is the period of the evenly recurring name that recurs most (a, the first of a and b: spacing 3),
    started as early as every layer launches the same name there (a, not the prologue's e); a launch whose name
    differs in one layer (the last layer's c2) is left out of that row's median; a model without a repeat gives
    None."""
    names = ["e", "a", "b", "c", "a", "b", "c", "a", "b", "c2", "h"]
    paths = [9.0, 1.0, 2.0, 3.0, 1.5, 2.5, 5.0, 0.5, 2.0, 7.0, 4.0]
    positions = [{"i": i, "name": n, "us": 2 * p, "path_us": p} for i, (n, p) in enumerate(zip(names, paths))]
    positions[1]["predicted"] = "gemv linear %1"
    layer = bench.per_layer(positions)
    assert layer is not None and (layer["period"], layer["layers"], layer["start"]) == (3, 3, 1)
    assert [(r["name"], r["layers"], r["path_us"]) for r in layer["rows"]] == [
        ("a", 3, 1.0), ("b", 3, 2.0), ("c", 2, 4.0)]
    assert layer["rows"][0]["predicted"] == "gemv linear %1" and layer["rows"][2]["us"] == pytest.approx(8.0)
    assert layer["path_us"] == pytest.approx(7.0)
    assert bench.per_layer([{"i": 0, "name": "a", "us": 1.0, "path_us": 1.0},
                            {"i": 1, "name": "b", "us": 1.0, "path_us": 1.0}]) is None


def test_chrome_trace_device_events(tmp_path: Path) -> None:
    trace = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "_linear_small_m", "ts": 10.0, "dur": 4.0},
        {"ph": "X", "cat": "gpu_memcpy", "name": "Memcpy DtoD", "ts": 15.0, "dur": 1.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 1.0, "dur": 9.0},
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 2.0}]}
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(trace))
    assert bench.trace_events(path) == [("_linear_small_m", 10.0, 14.0), ("Memcpy DtoD", 15.0, 16.0)]


def test_smoke_writes_json_and_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--smoke", "--out", str(tmp_path)]) == 0
    (path,) = tmp_path.glob("profile_step-smoke-cpu-*.json")
    record = json.loads(path.read_text())
    (case,) = record["cases"]
    assert case["launches"] == 3 and case["predicted"]["launches"] == 3
    assert all("predicted_us" in p for p in case["positions"])  # counts agree: compared launch by launch
    text = path.with_suffix(".txt").read_text()
    assert "3 launches per step" in text and "gap before a kernel" in text and "predicted by kind" in text
    assert capsys.readouterr().out.rstrip().endswith(text.rstrip().splitlines()[-1])


def test_skip_replaces_the_named_generated_kernels_and_refuses_a_name_that_matches_none(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``--skip PREFIX``: the decode step's generated kernels named so (an HF Llama step's rope / cache write) are
    replaced by a launcher that does nothing (``kernel[grid](...)``), the others are kept; a prefix that matches no
    kernel is an error naming the step's kernels, not a full-step timing. The generated module is shared by every
    executable of the same source in the process, so its kernels are put back afterwards."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    import membound
    from membound.api import build_kv_program

    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=97)
    torch.manual_seed(0)
    program = build_kv_program(membound.compile(LlamaForCausalLM(cfg).eval(), backend="triton"),
                               torch.zeros(1, 8, dtype=torch.long))
    mod = program.decode.module()
    for name, value in list(vars(mod).items()):
        if name.startswith("_"):
            monkeypatch.setattr(mod, name, value)  # (restored at teardown, after skip_kernels replaced some)
    kept = [n for n in vars(mod) if n.startswith("_fused_add_rms_norm")]
    names = bench.skip_kernels(program.decode, "_horizontal_mul_neg_cat_add")
    assert names and all(isinstance(getattr(mod, n), bench._NoLaunch) for n in names)
    assert getattr(mod, names[0])[(4,)](1, 2, key=3) is None
    assert kept and not any(isinstance(getattr(mod, n), bench._NoLaunch) for n in kept)
    with pytest.raises(ValueError, match="no generated kernel.*_fused_add_rms_norm"):
        bench.skip_kernels(program.decode, "_no_such_kernel")
    assert bench.parse_args(["--skip", "_x"]).skip == "_x"
