"""The cost model's decode step against a ``decode_e2e`` result file, offline (CPU only, no GPU run).

    PYTHONPATH=. python benches/experiments/step_calibration.py                       # the session-3 H200 file
    PYTHONPATH=. python benches/experiments/step_calibration.py FILE.json --kinds     # + per-kind breakdowns

For every membound Triton row of the file that measured a decode step (``step_s``: (timed call - a call
of half the tokens) / the tokens between), the step is predicted again with the priors of this checkout
(``membound.cost.step``) and set beside the measurement and the prediction the bench recorded when it
ran. The programs are the ones the bench compiled: the built-in Llama of the row's model with the row's
``compile`` options (``quantize=...`` included), here on the meta device with 2 decoder layers and
stretched to the model's depth (``step_prediction.with_layers``: every layer compiles to the same
launches); costed at the row's cache length (``step at T=...``) and batch, in the mode it recorded, at the
read bandwidth of the run, on the card's spec. Nothing is fitted here: the priors come from per-op
measurements (their ``source``), and this checks them against whole steps.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Optional

import torch

if not torch.cuda.is_available():  # before anything imports triton: CPU-only programs
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound.api import CompiledModel  # noqa: E402
from membound.backends.triton.step_plan import kernel_works  # noqa: E402
from membound.cost import Hardware  # noqa: E402
from membound.cost.step import StepPrediction, predict_step  # noqa: E402
from membound.models import get_config, model_from_config  # noqa: E402
from membound.step_prediction import triton_program, with_layers  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"
DEFAULT = RESULTS / "decode_e2e-nvidia-h200-2026-12-02-session3.json"
TOLERANCE = 0.20
CARDS = {"NVIDIA H200": "h200", "NVIDIA H100 80GB HBM3": "h100-sxm"}


def compile_options(row: dict) -> dict[str, Any]:
    """The ``membound.compile`` keywords the bench used for ``row`` (its note: ``compile{...} generate{...}``)."""
    found = re.search(r"compile(\{.*?\})", row.get("note", ""))
    if not found:
        raise ValueError(f"row {row['model']} b{row['batch']} {row['contender']!r}: no compile{{...}} in its note")
    return ast.literal_eval(found.group(1))


def row_cache_len(row: dict, record: dict) -> int:
    """The cache length the bench predicted the step at (``step at T=...``; else its rule, P + 3N/4)."""
    found = re.search(r"T=(\d+)", row.get("prediction", ""))
    if found:
        return int(found.group(1))
    n = record["new_tokens"]
    return record["prompt"] + n // 2 + (n - n // 2) // 2


def row_mode(row: dict) -> str:
    found = re.match(r"(graph\+pdl|graph|eager) on", row.get("prediction", ""))
    return found.group(1) if found else "graph+pdl"


class Programs:
    """Triton programs of 2-layer meta-device models, one per (model, compile options)."""

    def __init__(self) -> None:
        self.cache: dict[tuple[str, str], Any] = {}

    def get(self, model: str, options: dict[str, Any]) -> Any:
        key = (model, repr(sorted(options.items())))
        if key not in self.cache:
            config = dataclasses.replace(get_config(model), n_layers=2)
            with torch.device("meta"):
                module = model_from_config(config).to(torch.bfloat16).eval()
            kwargs = {k: v for k, v in options.items() if k != "cuda_graphs"}
            kwargs["backend"] = "triton"
            self.cache[key] = triton_program(CompiledModel(module, **kwargs))
        return self.cache[key]


def predict_row(programs: Programs, row: dict, record: dict, hardware: Hardware) -> StepPrediction:
    """The decode step of ``row`` predicted with this checkout's priors (see the module docstring)."""
    program = programs.get(row["model"], compile_options(row))
    partition = with_layers(program.decode.partition, get_config(row["model"]).n_layers)
    works = kernel_works(partition, {"B": row["batch"], "T": row_cache_len(row, record)}, hardware)
    return predict_step(works, hardware, mode=row_mode(row), bandwidth=record["read_bandwidth_gbps"] * 1e9,
                        label=f"{row['model']} b{row['batch']} {row['contender']}")


def measured_rows(record: dict) -> list[dict]:
    return [r for r in record["rows"] if r.get("status") == "ok" and r.get("step_s")
            and "triton" in r["contender"]]


def table(record: dict, preds: list[tuple[dict, StepPrediction]]) -> str:
    """Measured step, the prediction the bench recorded, and this checkout's, per row."""
    lines = [f"{'model':9s} {'b':>2s} {'contender':30s} {'measured':>9s} {'recorded':>9s} {'ratio':>6s} "
             f"{'now':>9s} {'ratio':>6s}  (ms per decode step; ok = within {TOLERANCE:.0%})"]
    for row, pred in preds:
        measured, recorded = row["step_s"], row.get("predicted_step_s")
        old = f"{recorded * 1e3:9.3f} {recorded / measured:5.2f}x" if recorded else f"{'-':>9s} {'-':>6s}"
        ratio = pred.time_s / measured
        verdict = "ok" if abs(ratio - 1) <= TOLERANCE else "MISS"
        lines.append(f"{row['model']:9s} {row['batch']:2d} {row['contender']:30s} {measured * 1e3:9.3f} {old} "
                     f"{pred.time_s * 1e3:9.3f} {ratio:5.2f}x {verdict}")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("file", nargs="?", default=str(DEFAULT), help="a decode_e2e result JSON")
    p.add_argument("--kinds", action="store_true", help="print each row's per-kernel-kind breakdown")
    p.add_argument("--models", default="", help="comma-separated subset of the file's models")
    args = p.parse_args(argv)
    record = json.loads(Path(args.file).read_text())
    card = CARDS.get(record["device"])
    if card is None:
        raise SystemExit(f"step_calibration: no spec name for device {record['device']!r}; known: {sorted(CARDS)}")
    hardware = Hardware.named(card)
    wanted = set(filter(None, args.models.split(",")))
    programs = Programs()
    preds = []
    for row in measured_rows(record):
        if wanted and row["model"] not in wanted:
            continue
        pred = predict_row(programs, row, record, hardware)
        preds.append((row, pred))
        if args.kinds:
            print(pred.table(), flush=True)
    print(f"{Path(args.file).name}: {record['device']}, read bandwidth {record['read_bandwidth_gbps']:.0f} GB/s")
    print(table(record, preds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
