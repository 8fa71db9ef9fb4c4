"""``benches/decode_e2e.py`` on the CPU: the smoke run end to end, and the pieces the GPU run trusts.

The static-cache model and the Hugging Face weight mapping are checked against the built-in Llama
(fp32: logits within 1e-4 relative), since every contender's correctness is judged against them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest
import torch
from _bench_run import load_module, run_bench  # (tests/ is on sys.path: pytest's rootdir-less test folder)

from membound.models import Llama, LlamaConfig, build_model, init_weights

ROOT = Path(__file__).resolve().parents[1]
FP32_TOL = 1e-4  # relative to max |logit|


bench = load_module("benches/decode_e2e.py", "decode_e2e")
from static_cache_llama import StaticCacheLlama  # noqa: E402  (on sys.path once the bench is loaded)


def tiny_llama(tied: bool) -> Llama:
    config = LlamaConfig(vocab_size=97, dim=48, n_layers=2, n_heads=6, n_kv_heads=2, intermediate_size=80,
                         rope_theta=500000.0, tie_embeddings=tied)
    model = Llama(config)
    init_weights(model, seed=3)
    return model.eval().requires_grad_(False)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def test_smoke_run_writes_all_rows_and_prints_the_table_last(tmp_path: Path) -> None:
    t = time.perf_counter()
    proc = run_bench("decode_e2e", "--smoke", "--out", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert time.perf_counter() - t < 60
    (path,) = tmp_path.glob("decode_e2e-cpu-*.json")
    record = json.loads(path.read_text())
    rows = {(r["batch"], r["contender"]): r for r in record["rows"]}
    assert set(rows) == {(b, c) for b in (1, 2)
                         for c in ("eager", "membound reference", "membound reference hf-model", "hf", "roofline")}
    for (b, contender), r in rows.items():
        assert r["status"] == "ok", (b, contender, r["status"], r["error"])
        assert r["tokens_per_s"] > 0 and r["gbps"] > 0
        if contender != "roofline":  # fp32 tiny model: every contender's greedy tokens equal eager's
            assert (r["match_prefix"], r["compared"], r["first_divergence"]) == (8 * b, 8 * b, None)
            assert r["deterministic"] is True
            assert r["tokens_per_s"] < rows[(b, "roofline")]["tokens_per_s"]
    assert rows[(1, "membound reference")]["compile_s"] > 0 and rows[(1, "eager")]["compile_s"] is None
    assert "compile{'backend': 'reference'}" in rows[(1, "membound reference hf-model")]["note"]
    checks = record["models"]["llama-tiny"]["checks"]
    assert checks["static_vs_builtin_logits"]["ok"] and checks["hf_vs_builtin_logits"]["ok"]
    lines = proc.stdout.strip().splitlines()
    assert lines[-1].startswith("llama-tiny  2 roofline")
    assert any(line.startswith("model") and "tok/s" in line and "compile s" in line for line in lines)


@pytest.mark.parametrize("tied", [False, True])
def test_static_cache_model_matches_the_builtin_prefill_and_decode(tied: bool) -> None:
    model = tiny_llama(tied)
    static = StaticCacheLlama.from_builtin(model)
    assert static.tok_embeddings.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()  # shared, not copied
    B, P, steps = 3, 7, 5
    ids = torch.randint(1, 97, (B, P + steps), generator=torch.Generator().manual_seed(0))
    static.setup_caches(B, P + steps + 2)  # spare slots: masked, never read
    with torch.no_grad():
        full = model(ids)
        assert rel(static(ids[:, :P], torch.arange(P)), full[:, :P]) < FP32_TOL
        for t in range(P, P + steps):
            assert rel(static(ids[:, t:t + 1], torch.tensor([t]))[:, 0], full[:, t]) < FP32_TOL


def test_static_generate_is_greedy_decoding_of_the_builtin() -> None:
    model = build_model("llama-tiny")
    static = StaticCacheLlama.from_builtin(model)
    ids = torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(1))
    static.setup_caches(2, 11)
    out = bench.static_generate(static, bench.decode_one, ids, 6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):  # full recompute, one token at a time
            seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(out, seq)
    with pytest.raises(ValueError, match="setup_caches"):
        bench.static_generate(static, bench.decode_one, ids, 7)  # 5 + 7 > 11 positions


@pytest.mark.parametrize("tied", [False, True])
def test_hf_model_shares_the_builtin_weights_and_logits(tied: bool) -> None:
    model = tiny_llama(tied)
    hf = bench.build_hf(model, max_positions=64)
    assert hf.model.layers[1].mlp.up_proj.weight.data_ptr() == model.layers[1].feed_forward.w3.weight.data_ptr()
    assert (hf.lm_head.weight.data_ptr() == model.tok_embeddings.weight.data_ptr()) == tied
    ids = torch.randint(1, 97, (2, 9), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        check = bench.logits_check(hf(ids).logits, model(ids), torch.float32)
    assert check["ok"], check
    with torch.no_grad():  # and the check can fail: a swapped gate/up projection is caught
        w1, w3 = hf.model.layers[0].mlp.gate_proj.weight, hf.model.layers[0].mlp.up_proj.weight
        hf.model.layers[0].mlp.gate_proj.weight, hf.model.layers[0].mlp.up_proj.weight = w3, w1
        assert not bench.logits_check(hf(ids).logits, model(ids), torch.float32)["ok"]


def test_roofline_bytes_and_agreement() -> None:
    W, kv, B, P, N = 1000, 7, 3, 5, 4
    explicit = sum(W + B * kv * (P + t) for t in range(N))
    assert bench.step_bytes_total(W, kv, B, P, N) == explicit
    ref = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert bench.agreement(ref.clone(), ref) == (8, None)
    assert bench.agreement(torch.tensor([[1, 2, 9, 4], [5, 6, 7, 8]]), ref) == (6, 2)
    assert bench.agreement(torch.tensor([[1, 2, 3, 4, 0], [9, 6, 7, 8, 0]]), ref) == (4, 0)  # only the first 4


def make_bench(tmp_path: Path, budget: float = 0.0) -> object:
    args = argparse.Namespace(new_tokens=3, budget_s=budget)
    b = bench.Bench(args, "cpu", torch.float32, [tmp_path / "r.json"])
    b.record = {"read_bandwidth_gbps": 10.0}
    return b


def test_a_failing_contender_is_recorded_not_raised(tmp_path: Path) -> None:
    b = make_bench(tmp_path)
    ids = torch.randint(1, 9, (2, 4))
    info = {"weight_bytes": 100, "kv_bytes_per_token": 8}

    def boom(ids: torch.Tensor, n: int) -> torch.Tensor:
        raise RuntimeError("boom: the kernel\nsecond line")

    b.measure("m", 2, "membound triton", boom, ids, ids[:, :3], 1, True, info)
    good = lambda x, n: torch.cat([x, x[:, :n]], dim=1)  # noqa: E731
    b.measure("m", 2, "eager", good, ids, ids[:, :3], 0, False, info)
    failed, ok = b.rows
    assert failed.status == "failed: RuntimeError: boom: the kernel" and "Traceback" in failed.error
    assert ok.status == "ok" and ok.match_prefix == 6 and ok.first_divergence is None
    assert ok.gbps == pytest.approx(bench.step_bytes_total(100, 8, 2, 4, 3) / ok.timed_s / 1e9)
    saved = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["status"] for r in saved] == [failed.status, "ok"]
    late = make_bench(tmp_path, budget=1e-9)
    late.measure("m", 2, "eager", good, ids, ids[:, :3], 0, False, info)
    assert late.rows[0].status.startswith("skipped: time budget")


def test_triton_variants_switch_cuda_graphs_explicitly() -> None:
    variants = {v.label: v for v in bench.membound_variants(["triton", "triton+graphs"])}
    assert variants["membound triton"].compile_kwargs == {"backend": "triton", "cuda_graphs": False}
    assert variants["membound triton+graphs"].compile_kwargs == {"backend": "triton", "cuda_graphs": True}


def test_merge_joins_files_of_one_card_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bench, "ROOT", tmp_path)  # keep benches/results of the checkout untouched

    def record(device: str, model: str) -> Path:
        row = bench.Row(model, 1, "roofline", tokens_per_s=5.0, gbps=1.0, pct_roofline=100.0)
        data = {"device": device, "date": "2026-01-02", "read_bandwidth_gbps": 1.0, "prompt": 4, "new_tokens": 2,
                "dtype": "bf16", "args": {}, "models": {model: {}}, "notes": [], "rows": [bench.asdict(row)]}
        path = tmp_path / f"{device}-{model}.json"
        path.write_text(json.dumps(data))
        return path

    a, b = record("H", "llama-1b"), record("H", "llama-8b")
    assert bench.main(["--merge", str(a), str(b), "--out", str(tmp_path / "out")]) == 0
    merged = json.loads((tmp_path / "out" / "decode_e2e-h-2026-01-02-merged.json").read_text())
    assert [r["model"] for r in merged["rows"]] == ["llama-1b", "llama-8b"]
    assert not (tmp_path / "benches" / "results").exists()  # with --out, only there
    results = tmp_path / "benches" / "results"
    results.mkdir(parents=True)
    (results / "decode_e2e-h-2026-01-02-merged.json").write_text("another table\n")
    assert bench.main(["--merge", str(a), str(b)]) == 0  # never over an existing file
    assert (results / "decode_e2e-h-2026-01-02-merged.json").read_text() == "another table\n"
    assert json.loads((results / "decode_e2e-h-2026-01-02-merged-2.json").read_text())["rows"] == merged["rows"]
    assert bench.main(["--merge", str(a), str(record("G", "llama-8b"))]) == 2


def test_step_seconds_is_the_median_difference_per_token_between() -> None:
    """The decode step alone: interleaved pairs of a full and a half call, the median of their differences over
    the tokens between; a slow outlier in one call does not move it, and short calls are paired for at least
    ``min_s`` seconds."""
    calls: list[int] = []
    slow = {"left": 1}

    def call(k: int) -> None:
        calls.append(k)
        extra = 0.05 if k == 10 and slow["left"] else 0.0  # one half call hit by a hiccup
        if extra:
            slow["left"] -= 1
        time.sleep(0.01 + 0.002 * k + extra)

    step = bench.step_seconds(call, 20, reps=3, min_s=0.0)
    assert calls == [20, 10] * 3
    assert step == pytest.approx(0.002, rel=0.25)
    calls.clear()
    bench.step_seconds(call, 20, reps=3, min_s=0.5)  # ~0.09 s a pair: more than 3 pairs, in order
    assert len(calls) > 6 and calls == [20, 10] * (len(calls) // 2)


def test_result_names_keep_contexts_and_model_subsets_apart() -> None:
    """Runs of several prompt lengths (issue 12's 4k / 16k / 32k) into one folder got one file name: the last run
    overwrote the others. The prompt is in the name unless it is the default."""
    assert bench.result_name("h200", "2026-12-04", ["llama-8b", "llama-1b"], 128, False) == "decode_e2e-h200-2026-12-04.json"
    names = {bench.result_name("h200", "2026-12-04", ["llama-1b"], p, False) for p in (128, 4096, 16384)}
    assert names == {"decode_e2e-h200-2026-12-04-llama-1b.json", "decode_e2e-h200-2026-12-04-llama-1b-prompt4096.json",
                     "decode_e2e-h200-2026-12-04-llama-1b-prompt16384.json"}
    assert bench.result_name("cpu", "2026-12-04", ["llama-tiny"], 64, True) == "decode_e2e-cpu-2026-12-04.json"
