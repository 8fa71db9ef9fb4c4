"""``benches/norm_stats.py --smoke`` on the CPU (Triton interpreter, one tiny layer pair, M = 1 and 8): the
prologue and statistics chains agree with the unfused chain before anything would be timed."""

from __future__ import annotations

import json
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_checks_every_chain(tmp_path: Path) -> None:
    proc = run_bench("norm_stats", "--smoke", "--out", str(tmp_path), env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("norm_stats-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert [r["M"] for r in rows] == [1, 8] and all(r["ok"] for r in rows)
    assert all(set(r["rel_err"]) == {"prologue", "stats"} for r in rows)
