"""``benches/moe_prefill.py --smoke`` on the CPU (Triton interpreter, a tiny layer): every check passes before
anything is timed, and both paths are timed as contenders and at the crossover lengths; the numbers mean nothing
on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_checks_then_times_both_paths(tmp_path: Path) -> None:
    proc = run_bench("moe_prefill", "--smoke", "--out", str(tmp_path), env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("moe_prefill-*.json")
    rows = json.loads(path.read_text())["rows"]
    checks = [r for r in rows if r["part"] == "check"]
    assert len(checks) == 10 and all(r["ok"] for r in checks)  # moe x 2 paths + 2 tiles, quant_moe x 3 x 2
    timed = {(r["part"], r["name"]) for r in rows if r.get("ms", 0) > 0}
    assert {("contender", "decode"), ("contender", "grouped"), ("crossover", "decode"),
            ("crossover", "grouped")} <= timed
    assert "grouped" in (tmp_path / "table.txt").read_text()
