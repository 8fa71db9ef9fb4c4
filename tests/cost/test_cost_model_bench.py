"""``benches/cost_model.py --smoke`` runs end to end on the CPU and writes its result file (times mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[2]


def test_bench_smoke_run_writes_results_and_prints_the_table(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(ROOT / "benches" / "cost_model.py"), "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (result,) = tmp_path.glob("cost_model-*.json")
    record = json.loads(result.read_text())
    names = [r["case"] for r in record["results"]]
    assert sum(n.startswith("linear 1x") for n in names) == 2 and any(n.startswith("linear 512x") for n in names)
    assert any("sdpa prefill" in n for n in names) and any("sdpa decode" in n for n in names)
    assert any(n.startswith("softmax") for n in names) and any(n.startswith("silu") for n in names)
    for r in record["results"]:
        assert r["predicted_us"] > 0 and r["measured_us"] > 0
        assert r["predicted_bound"] in ("memory", "compute")
        assert r["measured_bound"] in ("memory", "compute", "launch")
    assert set(record["calibration"]) >= {"read_bandwidth", "copy_bandwidth", "bf16_flops", "launch_overhead"}
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("median |error|") and "bound right in" in lines[-1]
    # the calibration in the file (kernel classes included) rebuilds the spec the run predicted with
    assert set(record["calibration"]["kernel_classes"]) == {"gemv", "decode_attention", "softmax", "broadcast",
                                                             "layer_norm"}
    bench = load_bench()
    again = bench.replay(record, bench.hardware_from_record(record))  # type: ignore[attr-defined]
    assert [r.predicted_us for r in again] == pytest.approx([r["predicted_us"] for r in record["results"]],
                                                            rel=1e-9)
    assert any(line.startswith("case") and "pred us" in line and "meas us" in line for line in lines)


def load_bench() -> object:
    return load_module("benches/cost_model.py", "cost_model_bench")


def test_measured_bound_follows_whichever_count_the_time_followed() -> None:
    guess = load_bench().measured_bound  # type: ignore[attr-defined]
    launch = 3e-6
    # a GEMV at twice the batch: FLOPs x2, bytes x1.001; the time barely moved -> memory
    assert guess(50e-6, 51e-6, 1e9, 2e9, 1e8, 1.001e8, launch) == "memory"
    # a big GEMM at twice the batch: the time doubled with the FLOPs -> compute
    assert guess(1e-3, 1.95e-3, 1e12, 2e12, 1e8, 1.3e8, launch) == "compute"
    # an op in fp32 instead of bf16: bytes x2, FLOPs x1, time x1.9 -> memory
    assert guess(100e-6, 190e-6, 1e7, 1e7, 1e8, 2e8, launch) == "memory"
    # a few microseconds: nothing to compare
    assert guess(4e-6, 4.2e-6, 1e3, 2e3, 1e3, 2e3, launch) == "launch"


# the first H200 run (before latency and kernel classes); the later run of the same day is the result file
RECORDED = ROOT / "benches" / "results" / "cost_model-nvidia-h200-2026-11-26-first-run.json"


def test_replay_of_a_recorded_run_reproduces_its_predictions() -> None:
    # the first H200 run predates latency and classes: rebuilt from its calibration, the current model
    # must give exactly what the run printed (so replays of model changes are comparable with it)
    bench = load_bench()
    record = json.loads(RECORDED.read_text())
    hw = bench.hardware_from_record(record)  # type: ignore[attr-defined]
    assert hw.memory_latency == 0 and hw.kernel_classes == {} and hw.bandwidth == record["calibration"]["read_bandwidth"]
    results = bench.replay(record, hw)  # type: ignore[attr-defined]
    assert len(results) == len(record["results"]) == 35
    for new, old in zip(results, record["results"]):
        assert new.case == old["case"] and new.predicted_bound == old["predicted_bound"]
        assert abs(new.predicted_us - old["predicted_us"]) < 1e-6 * old["predicted_us"]
    summary = bench.summarize(results)  # type: ignore[attr-defined]
    assert abs(summary["median_abs_error_pct"] - record["summary"]["median_abs_error_pct"]) < 1e-6


def test_replay_with_assumed_figures_uses_the_classes_and_writes_them_back(tmp_path: Path) -> None:
    bench = load_bench()
    record = json.loads(RECORDED.read_text())
    assume = {"memory_latency": 1e-6, "kernel_classes": {
        "gemv": {"latency": 5.5e-6, "efficiency": 0.9, "element_rate": 0.0, "source": "assumed"},
        "softmax": {"latency": 1e-6, "efficiency": 1.0, "element_rate": 3.7e11, "source": "assumed"}}}
    hw = bench.hardware_from_record(record, assume)  # type: ignore[attr-defined]
    # the steady-state bandwidth: the 2 GiB read's time less launch and latency
    t_big = 2 * (1 << 30) / record["calibration"]["read_bandwidth"]
    assert hw.bandwidth == pytest.approx(2 * (1 << 30) / (t_big - hw.launch_overhead - 1e-6))
    by_case = {r.case: r for r in bench.replay(record, hw)}  # type: ignore[attr-defined]
    assert by_case["linear 1x4096 @ 4096x4096"].kernel_class == "gemv"
    assert by_case["softmax [65536, 4096]"].predicted_bound == "compute"
    assert by_case["add [67108864]"].kernel_class == ""  # no broadcast: the plain roofline
    # the calibration written to a result file rebuilds the same spec
    again = bench.hardware_from_record(  # type: ignore[attr-defined]
        {**record, "calibration": bench.calibration_record(hw)})  # type: ignore[attr-defined]
    assert again.kernel_classes == hw.kernel_classes and again.bandwidth == hw.bandwidth
    assert again.memory_latency == hw.memory_latency
    proc = subprocess.run([sys.executable, str(ROOT / "benches" / "cost_model.py"), "--replay", str(RECORDED)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1].startswith("median |error| 24.2% over 35 cases; bound right in 31/35")
