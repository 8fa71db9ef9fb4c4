"""``benches/hf_families.py --smoke`` on the CPU: two families (HF Llama, and OPT, whose counted positions once
decoded wrong silently) compile and decode eager's greedy tokens on a left-padded batch; the record and the
table come out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


def test_smoke_families_decode_eager_tokens(tmp_path: Path) -> None:
    proc = run_bench("hf_families", "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("hf_families-cpu-*-smoke.json")
    rows = json.loads(path.read_text())["rows"]
    assert [(r["family"], r["backend"], r["status"]) for r in rows] == [("llama", "reference", "ok"),
                                                                       ("opt", "reference", "ok")], rows
    assert all(r["rows_ok"] == r["rows"] == 3 for r in rows)
    # which ops the decode graph kept: Llama's two layers attend through the KV cache, their MLP gated in the GEMV
    assert rows[0]["decode_ops"]["cached_attention"] == 2 and rows[0]["decode_ops"]["linear_glu"] == 2, rows[0]
    assert proc.stdout.strip().splitlines()[-1].startswith("2/2 ok")


def test_a_family_newer_than_the_installed_release_is_absent_not_an_error(monkeypatch) -> None:
    """LFM3 is in transformers 5.25, not in 5.17 (the GPU machine's): its row says so, apart from the failures."""
    sys.path.insert(0, str(ROOT / "benches"))
    try:
        import hf_families
    finally:
        sys.path.remove(str(ROOT / "benches"))
    monkeypatch.setitem(hf_families.FAMILIES, "future", ("NoSuchModelForCausalLM", "NoSuchConfig", {}))
    row = hf_families.check("future", "reference")
    assert row["status"] == "absent" and "has no NoSuchModelForCausalLM" in row["error"], row
