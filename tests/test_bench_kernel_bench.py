"""``benches/kernel_bench.py --smoke`` on the CPU (Triton interpreter, fp16, a tiny model): every library kernel
and both inner products of each linear (the heuristic's config and the other one) are checked against torch
before anything would be timed (the bench raises on a mismatch), and every kernel family has rows. It failed
before this test existed: the "other inner product" of a resident / one-row config kept those register forms on
a tensor-core config, which LinearConfig refuses."""

from __future__ import annotations

import json
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_checks_every_kernel(tmp_path: Path) -> None:
    proc = run_bench("kernel_bench", "--smoke", "--out", str(tmp_path), env={"TRITON_INTERPRET": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("kernels-*.json")
    rows = json.loads(path.read_text())["rows"]
    assert {r["kernel"] for r in rows} == {"linear", "rms_norm", "add_rms_norm", "cached_attention", "cache_write",
                                           "embedding"}
    ours = [r["contender"] for r in rows if r["kernel"] == "linear" and r["contender"].startswith("ours")]
    assert any(" row" in c for c in ours) and any(" dot" in c or " swap" in c for c in ours), ours
