"""``benches/cache_growth.py --smoke`` on the CPU: a call past the cache's bucket grows it (the record says
so, with capacities and allocation counts) and the growing call is timed against warm calls."""

from __future__ import annotations

import json
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_cache_growth_smoke_records_a_growth(tmp_path: Path) -> None:
    run = run_bench("cache_growth", "--smoke", "--out", str(tmp_path))
    assert run.returncode == 0, run.stderr[-2000:]
    (path,) = tmp_path.glob("cache_growth-cpu-*.json")
    (row,) = json.loads(path.read_text())["rows"]
    assert row["grew"] and row["capacity_before"] == 256 and row["capacity_after"] == 512
    assert row["allocations_after"] == row["allocations_before"] + 1
    assert row["growing_call_s"] > 0 and row["warm_call_s"] > 0 and row["ratio"] == row["growing_call_s"] / row["warm_call_s"]
