"""The compiled decode step's predicted time against the committed H200 measurements (issue 13).

The priors of ``membound.cost.step`` name the result files they were calibrated on; every membound
``triton+graphs`` row (bf16, int8, int4) of the ``decode_e2e`` file among them (1.24B and 8B, batch 1
and 8) must be predicted within 20%: the decode step the bench measured (``step_s``: (call - a call of
half the tokens) / the tokens between) and the whole ``generate`` call (prefill + steps). The priors are
fitted to per-op measurements, never to these rows.

The programs are built on the meta device for 2-layer models of the real shapes (a full 8B export takes
minutes on a CPU) and stretched to full depth (``step_prediction.with_layers``: every decoder layer of a
Llama compiles to the same launches). ``benches/experiments/step_calibration.py`` prints the same table.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

if not torch.cuda.is_available():  # before anything imports triton (tests/backends/_triton_interp.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound.backends.triton.step_plan import kernel_works
from membound.cost import Hardware
from membound.cost.step import STEP_PRIORS, predict_step
from membound.step_prediction import with_layers

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benches" / "results"
TOLERANCE = 0.20
SCHEMES = (None, "int8", "int4")


def load_calibration() -> object:
    """``benches/experiments/step_calibration.py``: how the bench's programs are rebuilt offline."""
    return load_module("benches/experiments/step_calibration.py", "step_calibration")


CALIBRATION = load_calibration()
PROGRAMS = CALIBRATION.Programs()  # type: ignore[attr-defined]  # one capture per model, shared by its schemes


def program(model: str) -> object:
    """The bf16 Triton program of a 2-layer meta-device built-in Llama of ``model``'s shape."""
    return PROGRAMS.get(model)


def measured_rows() -> list[tuple[str, dict, dict]]:
    """(file, record, row) for each membound triton+graphs row with a measured step of the H200 decode_e2e
    calibration files; where several files measured one case (model, batch, scheme), the last listed (the
    newest build: the programs rebuilt here are this checkout's)."""
    out: dict[tuple, tuple[str, dict, dict]] = {}
    for name in STEP_PRIORS["h200"].calibrated_on:
        if not name.startswith("decode_e2e"):
            continue
        record = json.loads((RESULTS / name).read_text())
        for row in CALIBRATION.measured_rows(record):  # type: ignore[attr-defined]
            if row["contender"].startswith("membound triton+graphs"):
                out[(row["model"], row["batch"], row_scheme(row))] = (name, record, row)
    return list(out.values())


def row_scheme(row: dict) -> str | None:
    return CALIBRATION.compile_options(row).get("quantize")  # type: ignore[attr-defined]


def test_the_calibration_files_hold_every_case() -> None:
    cases = {(row["model"], row["batch"], row_scheme(row)) for _, _, row in measured_rows()}
    assert cases >= {(m, b, s) for m in ("llama-1b", "llama-8b") for b in (1, 8) for s in SCHEMES} - {
        ("llama-8b", 8, "int4")}  # the session-3 run measured no step there (out of budget)


# decode_e2e runs made before quantized prefill's dequantization became a kernel (quant_dequant.py)
PRE_DEQUANT_KERNEL = {"decode_e2e-nvidia-h200-2026-12-02-session3.json"}


# decode_e2e runs whose build streamed 64-slot flash-decoding tiles at head dim 128 (before session 10's wide tiles)
PRE_WIDE_TILES = {"decode_e2e-nvidia-h200-2026-12-02-session3.json",
                  "decode_e2e-nvidia-h200-2026-12-03-session9.json",
                  "decode_e2e-nvidia-h200-2026-12-02-llama-1b-ctx4096.json",
                  "decode_e2e-nvidia-h200-2026-12-02-session4-llama-8b-int8-contenders.json"}


def as_run(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Predict ``name``'s rows with the flash-decoding tiles its build streamed (``PRE_WIDE_TILES``: 64-slot tiles,
    ``decode_attention.WIDE_TILES`` off; any later run: wide tiles). The step model's latency chain counts that
    config's tiles."""
    from membound.backends.triton.kernels import decode_attention as da

    monkeypatch.setattr(da, "WIDE_TILES", name not in PRE_WIDE_TILES)


@pytest.mark.parametrize("model,batch,scheme", [(m, b, s) for m in ("llama-1b", "llama-8b") for b in (1, 8)
                                                for s in SCHEMES])
def test_predicted_decode_matches_the_committed_h200_run(model: str, batch: int, scheme: str | None,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [r for r in measured_rows() if (r[2]["model"], r[2]["batch"], row_scheme(r[2])) == (model, batch, scheme)]
    if not rows:
        pytest.skip(f"no measured {model} b{batch} {scheme or 'bf16'} row in the calibration files")
    (name, record, row), = rows
    as_run(name, monkeypatch)
    hw = Hardware.named("h200")
    step = CALIBRATION.predict_row(PROGRAMS, row, record, hw)  # type: ignore[attr-defined]
    call = CALIBRATION.predict_call(PROGRAMS, row, record, hw)  # type: ignore[attr-defined]
    what = (f"{model} b{batch} {scheme or 'bf16'} ({name}): step predicted {step.time_s * 1e3:.3f} ms vs measured "
            f"{row['step_s'] * 1e3:.3f} ({step.launch_count} launches); call {call * 1e3:.1f} ms vs "
            f"{row['timed_s'] * 1e3:.1f}\n{step.table()}")
    assert step.launch_count == row["predicted_launches"]  # what the full-depth compile on the GPU launched
    assert abs(step.time_s / row["step_s"] - 1) <= TOLERANCE, what
    if scheme is not None and name in PRE_DEQUANT_KERNEL:
        # that run's quantized prefill dequantized through the torch reference (10% / 2.4% of the bandwidth),
        # since replaced by quant_dequant.py's kernel and priced as [QD] measured it: the call it timed is not
        # the call this code makes (8B b8 int8: 476 ms predicted now against 611 then). The step is unchanged.
        return
    assert abs(call / row["timed_s"] - 1) <= TOLERANCE, what


def test_with_layers_repeats_the_second_layer() -> None:
    partition = program("llama-1b").decode.partition
    two = with_layers(partition, 2).steps
    assert two == [s for s in partition.steps if getattr(s, "impl", None) != "view"]
    four = with_layers(partition, 4).steps

    def count(steps: list, op: str) -> int:
        return sum(n.op == op for s in steps for n in s.nodes)

    for op, per_layer in (("linear_glu", 1), ("cached_attention", 1), ("embedding", 0)):
        assert count(four, op) == count(two, op) + 2 * per_layer, op
    with pytest.raises(ValueError, match="2-layer model"):
        with_layers(SimpleNamespace(steps=[]), 4)


def test_pdl_and_graphs_order_the_predictions() -> None:
    hw = Hardware.named("h200")
    works = kernel_works(program("llama-1b").decode.partition, {"B": 1, "T": 256}, hw)
    preds = {mode: predict_step(works, hw, mode=mode) for mode in ("graph+pdl", "graph", "eager")}
    assert preds["graph+pdl"].time_s < preds["graph"].time_s < preds["eager"].time_s
    assert preds["eager"].host_s > preds["eager"].gpu_s  # without a graph the Python launches are the step
    # a longer cache only adds attention bytes
    longer = predict_step(kernel_works(program("llama-1b").decode.partition, {"B": 1, "T": 4096}, hw), hw)
    grown = {k: v["bytes"] for k, v in longer.by_kind().items()}
    base = {k: v["bytes"] for k, v in preds["graph+pdl"].by_kind().items()}
    assert grown["decode_attention"] > 10 * base["decode_attention"]
    assert grown["fused"] == base["fused"]  # cache writes store one slot, whatever the cache length


def test_explain_predicts_the_step_of_a_compiled_model_with_a_triton_program() -> None:
    from membound.explainer import _compiled_step

    owner = SimpleNamespace(kv_program=program("llama-1b"), options=None)
    pred = _compiled_step(owner, Hardware.named("h200"), {"B": 8, "T": 300})
    assert pred.label == "decode step b8 T=300" and pred.mode == "graph+pdl"
    kinds = pred.by_kind()
    # per layer qkv, o, the gate/up linear_glu and the down projection by the swapped tensor-core GEMV; + the head
    assert kinds["gemv_swap"]["launches"] == 2 * 4 + 1 and "cublas_gemv" not in kinds
    assert "gemv_dot_gated" not in kinds
    assert "compiled" not in pred.table() and "launches" in pred.table()
    assert _compiled_step(SimpleNamespace(kv_program=None), Hardware.named("h200"), {"B": 1, "T": 8}) is None


def test_predict_generate_is_prefill_plus_steps_at_the_mean_cache_length() -> None:
    from membound.step_prediction import predict_decode_step, predict_generate

    owner = SimpleNamespace(kv_program=program("llama-8b"), options=SimpleNamespace(cuda_graphs=True))
    call = predict_generate(owner, 8, 100, 50, hardware="h200")
    step = predict_decode_step(owner, 8, 125, hardware="h200")
    assert call.step.time_s == pytest.approx(step.time_s) and call.prefill.mode == "eager"
    assert call.seconds == pytest.approx(call.prefill.time_s + 49 * step.time_s)
    assert call.tokens_per_s == pytest.approx(8 * 50 / call.seconds)
    assert "generate b8, prompt 100, 50 new tokens" in call.summary()
    eager = predict_decode_step(SimpleNamespace(kv_program=program("llama-8b"),
                                                options=SimpleNamespace(cuda_graphs=False)), 8, 125, hardware="h200")
    assert eager.mode == "eager" and eager.time_s > step.time_s
    with pytest.raises(ValueError, match="batch and cache_len must be >= 1"):
        predict_decode_step(owner, 0, 125, hardware="h200")


# H200 runs made after the priors were fitted (none of them fed a prior): long contexts, a batch-8 run, and the
# 8B b1 run with the int8 contenders, whose quantized prefill still used the torch dequantization
LATER_RUNS = ("decode_e2e-nvidia-h200-2026-12-02-llama-1b-ctx4096.json",
              # (the 2026-12-02 runs at 16k and 32k measured the prefill flash attention before session 9's
              # unmasked full tiles, 1.2x slower: the 32k call took 592 ms, today's 476; session 10's runs of the
              # same cases replace them)
              # (decode_e2e-nvidia-h200-2026-12-02-session4-llama-1b-b8.json measured a b8 step of 1.397 ms, before
              # linear-glu, the H200 GEMV tiles and cuBLAS for the down projections: today's build takes 1.054)
              "decode_e2e-nvidia-h200-2026-12-02-session4-llama-8b-int8-contenders.json",
              # session 10: 1B at 16k / 32k (the 4k run's file did not come back from the device; its log is
              # committed), 8B b1 / b8 with the wide flash-decoding tiles
              "decode_e2e-nvidia-h200-2026-12-03-session10-llama-1b-ctx16384.json",
              "decode_e2e-nvidia-h200-2026-12-03-session10-llama-1b-ctx32768.json",
              "decode_e2e-nvidia-h200-2026-12-03-session10-llama-8b.json")


@pytest.mark.parametrize("name", LATER_RUNS)
def test_the_priors_predict_later_runs(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    as_run(name, monkeypatch)
    record = json.loads((RESULTS / name).read_text())
    rows = [r for r in CALIBRATION.measured_rows(record)  # type: ignore[attr-defined]
            if r["contender"].startswith("membound triton+graphs")]
    assert rows, f"{name}: no membound row with a measured step"
    hw = Hardware.named("h200")
    for row in rows:
        step = CALIBRATION.predict_row(PROGRAMS, row, record, hw)  # type: ignore[attr-defined]
        what = f"{name} {row['contender']} b{row['batch']}: step {step.time_s * 1e3:.3f} ms vs {row['step_s'] * 1e3:.3f}"
        assert abs(step.time_s / row["step_s"] - 1) <= TOLERANCE, what
        if row_scheme(row) is None:  # quantized: that run's prefill predates quant_dequant (see above)
            call = CALIBRATION.predict_call(PROGRAMS, row, record, hw)  # type: ignore[attr-defined]
            assert abs(call / row["timed_s"] - 1) <= TOLERANCE, f"{what}; call {call * 1e3:.1f} vs {row['timed_s'] * 1e3:.1f}"
