"""``benches/cost_model.py --smoke`` runs end to end on the CPU and writes its result file (times mean nothing)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
    assert any(line.startswith("case") and "pred us" in line and "meas us" in line for line in lines)


def load_bench() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("cost_model_bench", ROOT / "benches" / "cost_model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


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
