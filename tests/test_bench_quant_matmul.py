"""``benches/quant_matmul.py --smoke`` on the CPU (Triton interpreter, tiny sizes): the contender table at one
prefill M (both prefill paths: the fused kernel and the dequantization kernel + matmul) and the tile sweep at
M = 1 (the tensor-core grid that M <= 2 takes), each contender checked against dequantize-then-matmul
before it is timed; the numbers mean nothing on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def run(tmp_path: Path, *args: str) -> dict:
    proc = run_bench("quant_matmul", "--smoke", "--shapes", "33x77", "--out", str(tmp_path), *args,
                     env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("quant_matmul*.json")
    return json.loads(path.read_text())


def test_table_times_both_prefill_paths(tmp_path: Path) -> None:
    rows = run(tmp_path, "--ms", "40")["rows"]
    names = {r["contender"] for r in rows}
    assert {"int8 fused", "int8 dequant+cublas", "int4 g128 fused", "int4 g128 dequant+cublas"} <= names
    assert all(r["m"] == 40 for r in rows)
    assert all(r["us"] and r["us"] > 0 for r in rows if "dequant" in r["contender"])


def test_sweep_covers_the_tensor_core_grid_at_m1(tmp_path: Path) -> None:
    rows = run(tmp_path, "--sweep", "--quick", "--sweep-ms", "1", "--sweep-schemes", "int8")["rows"]
    m1 = [r for r in rows if r["m"] == 1]  # (the smoke run sweeps M = 1 and 5)
    dot = {r["contender"] for r in m1 if r["contender"].startswith("dot")}
    assert len(dot) >= 4, dot  # tiles around the heuristic, not only the heuristic
    assert sum(bool(r.get("heuristic")) for r in m1) == 1
