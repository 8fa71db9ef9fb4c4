"""The HF MoE decode benches' ``--smoke`` runs on the CPU (``benches/gpt_oss.py``: a tiny gpt-oss;
``benches/deepseek_moe.py``: a tiny DeepSeek-V3; fp32): membound's greedy tokens agree with HF eager's before
anything is timed, every contender gives a row, the roofline is computed; the numbers mean nothing on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _bench_run import run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("bench", ["gpt_oss", "deepseek_moe"])
def test_smoke_rows(bench: str, tmp_path: Path) -> None:
    proc = run_bench(bench, "--smoke", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob(f"{bench}-cpu-*-smoke.json")
    record = json.loads(path.read_text())
    rows = {(r["contender"], r["batch"]): r for r in record["rows"]}
    assert set(rows) == {("membound", 1), ("membound", 2), ("hf eager", 1)}, record["rows"]
    assert all("error" not in r for r in rows.values()), record["rows"]
    assert rows[("membound", 1)]["agree_first"] == 4  # every checked greedy token equals HF eager's
    assert all(r["roofline_tok_s"] > 0 and r["tok_s"] > 0 for r in rows.values())


def test_divergence_names_hf_margin_and_rank(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a contender's greedy token first differs from HF's, the row says how far HF's own logits put it."""
    monkeypatch.syspath_prepend(str(ROOT / "benches"))
    import torch
    from moe import divergence

    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0], [5.0, 0.0, 4.5, -9.0], [0.0, 0.0, 1.0, 0.0]])
    ref = (torch.zeros(1, 2, dtype=torch.long), torch.tensor([[1, 0, 2]]), logits)
    assert divergence(torch.tensor([[1, 0, 2]]), ref) == {"agree_first": 3}
    row = divergence(torch.tensor([[1, 2, 0]]), ref)  # step 1: ours 2, HF's 0 (5.0 against 4.5)
    assert row == {"agree_first": 1, "hf_margin": 0.5, "hf_rank": 1, "hf_logit_scale": 9.0}
    assert divergence(torch.tensor([[3, 0, 2]]), ref[:2]) == {"agree_first": 0}  # no logits: the count only


def test_decode_seconds_measures_again_through_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of load that makes the 1-token call look slower than the n-token one is measured through, in turns,
    not turned into an absurd rate; a decode that never shows up is an error naming both times."""
    monkeypatch.syspath_prepend(str(ROOT / "benches"))
    import moe

    # round 1: load inflates the 1-token calls; round 2: it has passed. Calls alternate n-token, 1-token.
    times = iter([0.020, 0.031, 0.019, 0.030, 0.021, 0.012, 0.020, 0.011])
    monkeypatch.setattr(moe, "seconds", lambda fn: next(times))
    assert moe.decode_seconds(lambda k: None, 4) == (0.019, 0.011)  # the minima over both rounds
    assert next(times, None) is None  # every measurement used, none after the good round
    monkeypatch.setattr(moe, "seconds", lambda fn: 0.01)
    with pytest.raises(RuntimeError, match="4-token call .* was not slower .* in 4 rounds"):
        moe.decode_seconds(lambda k: None, 4)
