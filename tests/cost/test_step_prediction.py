"""The compiled decode step's predicted time against the committed H200 measurements (issue 13).

The priors of ``membound.cost.step`` name the result files they were calibrated on; every membound
``triton+graphs`` bf16 row of those ``decode_e2e`` files (1.24B and 8B, batch 1 and 8) must be predicted
within 20%: the whole ``generate`` call (prefill + steps, what the file measured) and the decode step
derived from it (the call less the predicted prefill, over the steps).

The programs are built on the meta device for 2-layer models of the real shapes (a full 8B export takes
minutes on a CPU). Every decoder layer of a Llama compiles to the same launches, so the L-layer figure
is the 2-layer one plus ``L - 2`` times the second layer's launches: those from the first that reads a
``layers.1.`` weight (its attention norm, fused into the add after layer 0) to the last (its down
projection).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton (tests/backends/_triton_interp.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound.backends.triton.step_plan import kernel_works
from membound.cost import Hardware
from membound.cost.step import STEP_PRIORS, predict_step
from membound.models import get_config, model_from_config
from membound.step_prediction import triton_program

RESULTS = Path(__file__).resolve().parents[2] / "benches" / "results"
TOLERANCE = 0.20
SECOND_LAYER = re.compile(r"(^|\.)layers\.1\.")


def measured_rows() -> list[tuple[str, dict, dict]]:
    """(file, record, row) for each bf16 membound triton+graphs row of the H200 calibration files."""
    out = []
    for name in STEP_PRIORS["h200"].calibrated_on:
        if not name.startswith("decode_e2e"):
            continue
        record = json.loads((RESULTS / name).read_text())
        for row in record["rows"]:
            if row["contender"] == "membound triton+graphs" and row["status"] == "ok":
                out.append((name, record, row))
    return out


def second_layer(partition: object) -> SimpleNamespace:
    """The launches of the second decoder layer (a partition-like object over them)."""
    steps = [s for s in partition.steps if getattr(s, "impl", None) != "view"]
    touches = [i for i, s in enumerate(steps)
               if any(SECOND_LAYER.search(v.name) for n in s.nodes for v in n.inputs if v.kind == "param")]
    assert touches, "no launch reads a layers.1. weight"
    return SimpleNamespace(steps=steps[touches[0]:touches[-1] + 1])


@pytest.fixture(scope="module")
def programs() -> dict[str, object]:
    """model -> the Triton prefill/decode program of a 2-layer meta-device built-in Llama of its shape."""
    out = {}
    for model in ("llama-1b", "llama-8b"):
        config = dataclasses.replace(get_config(model), n_layers=2)
        with torch.device("meta"):
            module = model_from_config(config).to(torch.bfloat16).eval()
        out[model] = triton_program(module)
    return out


def predict(partition: object, dims: dict, layers: int, mode: str, bw: float, loop: bool) -> tuple[float, float, int]:
    """(GPU seconds, host seconds, launches) of the L-layer step: the 2-layer one + (L - 2) second layers."""
    hw = Hardware.named("h200")
    whole = predict_step(kernel_works(partition, dims, hw), hw, mode=mode, loop=loop, bandwidth=bw)
    layer = predict_step(kernel_works(second_layer(partition), dims, hw), hw, mode=mode, loop=False, bandwidth=bw)
    extra = layers - 2
    return (whole.gpu_s + extra * layer.gpu_s, whole.host_s + extra * layer.host_s,
            whole.launch_count + extra * layer.launch_count)


def test_the_calibration_files_hold_all_four_cases() -> None:
    cases = {(row["model"], row["batch"]) for _, _, row in measured_rows()}
    assert cases >= {("llama-1b", 1), ("llama-1b", 8), ("llama-8b", 1), ("llama-8b", 8)}


@pytest.mark.parametrize("model,batch", [("llama-1b", 1), ("llama-1b", 8), ("llama-8b", 1), ("llama-8b", 8)])
def test_predicted_decode_matches_the_committed_h200_run(programs: dict, model: str, batch: int) -> None:
    (name, record, row), = [r for r in measured_rows() if (r[2]["model"], r[2]["batch"]) == (model, batch)]
    bw = record["read_bandwidth_gbps"] * 1e9  # the efficiencies are fractions of the run's read bandwidth
    prompt, n = record["prompt"], record["new_tokens"]
    layers = get_config(model).n_layers
    program = programs[model]
    step, _, launches = predict(program.decode.partition, {"B": batch, "T": prompt + n // 2}, layers,
                                "graph+pdl", bw, True)
    gpu, host, _ = predict(program.prefill.partition, {"B": batch, "S": prompt, "T": prompt}, layers, "eager", bw,
                           False)
    prefill = max(gpu, host)
    call = prefill + (n - 1) * step
    measured_call = row["timed_s"]
    measured_step = (measured_call - prefill) / (n - 1)
    what = (f"{model} b{batch} ({name}): call predicted {call * 1e3:.1f} ms vs measured {measured_call * 1e3:.1f}; "
            f"step predicted {step * 1e3:.3f} ms vs {measured_step * 1e3:.3f} ({launches} launches)")
    assert abs(call / measured_call - 1) <= TOLERANCE, what
    assert abs(step / measured_step - 1) <= TOLERANCE, what


def test_pdl_and_graphs_order_the_predictions(programs: dict) -> None:
    hw = Hardware.named("h200")
    works = kernel_works(programs["llama-1b"].decode.partition, {"B": 1, "T": 256}, hw)
    preds = {mode: predict_step(works, hw, mode=mode) for mode in ("graph+pdl", "graph", "eager")}
    assert preds["graph+pdl"].time_s < preds["graph"].time_s < preds["eager"].time_s
    assert preds["eager"].host_s > preds["eager"].gpu_s  # without a graph the Python launches are the step
    # a longer cache only adds attention bytes
    longer = predict_step(kernel_works(programs["llama-1b"].decode.partition, {"B": 1, "T": 4096}, hw), hw)
    grown = {k: v["bytes"] for k, v in longer.by_kind().items()}
    base = {k: v["bytes"] for k, v in preds["graph+pdl"].by_kind().items()}
    assert grown["decode_attention"] > 10 * base["decode_attention"]
    assert grown["fused"] == base["fused"]  # cache writes store one slot, whatever the cache length


def test_explain_predicts_the_step_of_a_compiled_model_with_a_triton_program(programs: dict) -> None:
    from membound.explainer import _compiled_step

    owner = SimpleNamespace(kv_program=programs["llama-1b"], options=None)
    pred = _compiled_step(owner, Hardware.named("h200"), {"B": 8, "T": 300})
    assert pred.label == "decode step b8 T=300" and pred.mode == "graph+pdl"
    kinds = pred.by_kind()
    assert (kinds["gemv_dot"]["launches"], kinds["gemv_dot_gated"]["launches"]) == (2 * 3 + 1, 2)  # + the head
    assert "compiled" not in pred.table() and "launches" in pred.table()
    assert _compiled_step(SimpleNamespace(kv_program=None), Hardware.named("h200"), {"B": 1, "T": 8}) is None


def test_predict_generate_is_prefill_plus_steps_at_the_mean_cache_length(programs: dict) -> None:
    from membound.step_prediction import predict_decode_step, predict_generate

    owner = SimpleNamespace(kv_program=programs["llama-8b"], options=SimpleNamespace(cuda_graphs=True))
    call = predict_generate(owner, 8, 100, 50, hardware="h200")
    step = predict_decode_step(owner, 8, 125, hardware="h200")
    assert call.step.time_s == pytest.approx(step.time_s) and call.prefill.mode == "eager"
    assert call.seconds == pytest.approx(call.prefill.time_s + 49 * step.time_s)
    assert call.tokens_per_s == pytest.approx(8 * 50 / call.seconds)
    assert "generate b8, prompt 100, 50 new tokens" in call.summary()
    eager = predict_decode_step(SimpleNamespace(kv_program=programs["llama-8b"],
                                                options=SimpleNamespace(cuda_graphs=False)), 8, 125, hardware="h200")
    assert eager.mode == "eager" and eager.time_s > step.time_s
    with pytest.raises(ValueError, match="batch and cache_len must be >= 1"):
        predict_decode_step(owner, 0, 125, hardware="h200")
