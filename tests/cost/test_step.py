"""The launch-cost terms of ``membound.cost.step`` on made-up priors (the arithmetic, not the figures)."""

from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():  # before anything imports triton (tests/backends/_triton_interp.py)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound.backends.triton.step_plan import QUANT_OPS, linear_kind, quant_kind
from membound.cost import Hardware
from membound.cost.step import (
    STEP_PRIORS,
    KernelPrior,
    KernelWork,
    LaunchPrior,
    StepPriors,
    host_time,
    launch_gap,
    loop_time,
    predict_step,
    read_bandwidth,
    step_priors,
    work_time,
)

US = 1e-6
LAUNCH = LaunchPrior(graph_gap=0.5 * US, pdl_overlap=1.0 * US, eager_launch=40 * US, eager_gap=2 * US,
                     graph_launch=3 * US, loop_kernels=4, loop_kernel=1 * US)
OURS = KernelPrior(fixed=2 * US, efficiency=0.5, compute_efficiency=0.5)
TINY = KernelPrior(fixed=0.2 * US)  # PDL can hide at most gap + fixed = 0.7 us of it
CUBLAS = KernelPrior(fixed=4 * US, pdl=False)
PRIORS = StepPriors("test card", LAUNCH, {"ours": OURS, "tiny": TINY, "cublas": CUBLAS}, read_bandwidth=1e12)
HW = Hardware.named("h200")


def test_graph_gap_and_what_pdl_hides() -> None:
    assert launch_gap("graph", LAUNCH, OURS) == pytest.approx(0.5 * US)
    assert launch_gap("graph+pdl", LAUNCH, OURS) == pytest.approx(-0.5 * US)  # part of its fixed time hides
    assert launch_gap("graph+pdl", LAUNCH, TINY) == pytest.approx(-0.2 * US)  # never more than gap + fixed
    assert launch_gap("graph+pdl", LAUNCH, CUBLAS) == pytest.approx(0.5 * US)  # no PDL in cuBLAS kernels
    assert launch_gap("eager", LAUNCH, OURS) == pytest.approx(2 * US)
    with pytest.raises(ValueError, match="graph\\+pdl"):
        launch_gap("graphs", LAUNCH, OURS)


def test_loop_and_host_terms() -> None:
    assert loop_time("eager", LAUNCH) == pytest.approx(4 * 3 * US)
    assert loop_time("graph", LAUNCH) == pytest.approx(4 * 3 * US + 3 * US)  # + the replay's own start
    assert host_time("graph+pdl", LAUNCH, 100) == 0.0
    assert host_time("eager", LAUNCH, 100) == pytest.approx(104 * 40 * US)
    assert host_time("eager", LAUNCH, 100, loop=False) == pytest.approx(100 * 40 * US)


def test_work_is_fixed_plus_bytes_or_flops() -> None:
    seconds, bound = work_time(KernelWork("w", "ours", flops=0.0, bytes=1e6), OURS, HW, 1e12)
    assert (seconds, bound) == (pytest.approx(2 * US + 1e6 / 0.5e12), "memory")
    flops = 1e12
    seconds, bound = work_time(KernelWork("w", "ours", flops=flops, bytes=1e6), OURS, HW, 1e12)
    assert (seconds, bound) == (pytest.approx(flops / (HW.peak_flops("bf16") * 0.5)), "compute")


def test_predict_step_sums_launches_gaps_and_loop() -> None:
    works = [KernelWork("a", "ours", 0.0, 1e6), KernelWork("b", "tiny", 0.0, 0.0), KernelWork("c", "cublas", 0.0, 1e6)]
    pred = predict_step(works, HW, PRIORS, mode="graph+pdl")
    assert pred.launch_count == 3
    assert pred.work_s == pytest.approx(4 * US + 0.2 * US + 5 * US)
    assert pred.gap_s == pytest.approx(-0.5 * US - 0.2 * US + 0.5 * US)
    assert pred.time_s == pytest.approx(pred.work_s + pred.gap_s + loop_time("graph+pdl", LAUNCH))
    assert pred.by_kind()["ours"] == {"launches": 1, "bytes": 1e6, "time_s": pytest.approx(3.5 * US)}
    no_pdl = predict_step(works, HW, PRIORS, mode="graph", loop=False)
    assert no_pdl.time_s == pytest.approx(pred.work_s + 3 * 0.5 * US)
    eager = predict_step(works, HW, PRIORS, mode="eager")
    assert eager.time_s == eager.host_s == pytest.approx(7 * 40 * US)  # host-bound: 3 launches + 4 loop kernels
    assert "3 launches" in pred.table() and "ours" in pred.table()
    with pytest.raises(KeyError, match="known: \\['cublas', 'ours', 'tiny'\\]"):
        predict_step([KernelWork("d", "moe", 0.0, 1.0)], HW, PRIORS)


def test_a_measured_read_bandwidth_is_what_efficiencies_multiply() -> None:
    calibrated = HW.replace(source="calibrated", measured={"read_bandwidth": 2e12})
    assert read_bandwidth(calibrated, PRIORS) == 2e12
    assert read_bandwidth(HW, PRIORS) == 1e12
    one = predict_step([KernelWork("a", "ours", 0.0, 1e9)], HW, PRIORS, loop=False, bandwidth=4e12)
    assert one.work_s == pytest.approx(2 * US + 1e9 / 2e12)


def test_priors_per_card() -> None:
    assert step_priors(HW) is STEP_PRIORS["h200"]
    assert all(name.endswith(".json") for name in STEP_PRIORS["h200"].calibrated_on)
    h100 = step_priors(Hardware.named("h100-sxm"))
    assert h100.card == "NVIDIA H100 80GB HBM3" and "no step priors" in h100.note
    assert h100.read_bandwidth == pytest.approx(3.35e12 * 4168 / 4800)  # the H200's read/datasheet ratio
    assert step_priors(Hardware.named("cpu")).note


@pytest.mark.parametrize("op,m,kind", [("linear", 1, "gemv"), ("linear", 2, "gemv"), ("gated_linear", 1, "gemv_gated"),
                                       ("linear", 3, "gemv_dot"), ("linear", 16, "gemv_dot"),
                                       ("gated_linear", 8, "gemv_dot_gated"), ("linear", 17, "cublas"),
                                       ("gated_linear", 1024, "cublas")])
def test_linear_kind_follows_the_library_path(op: str, m: int, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP", "0")  # the paths before the swapped product (see the test below)
    monkeypatch.setenv("MEMBOUND_LINEAR_RESIDENT", "0")  # ... and the resident tiles
    assert linear_kind(op, m) == kind


@pytest.mark.parametrize("op,m,n,k,kind", [("linear", 3, 64, 64, "gemv_swap"), ("linear", 16, 64, 64, "gemv_swap"),
                                           ("linear", 1, 2048, 2048, "gemv"), ("linear", 1, 4096, 4096, "gemv"),
                                           ("linear", 1, 6144, 4096, "gemv_swap"), ("linear", 2, 2048, 8192, "gemv_swap"),
                                           ("linear_glu", 1, 8192, 2048, "gemv_swap"),
                                           ("linear_add", 1, 4096, 14336, "gemv_swap"),
                                           ("linear", 8, 4096, 14336, "gemv_swap"),
                                           ("gated_linear", 8, 4096, 14336, "gemv_dot_gated"),
                                           ("linear", 17, 4096, 14336, "cublas")])
def test_linear_kind_with_the_swapped_product(op: str, m: int, n: int, k: int, kind: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """MEMBOUND_LINEAR_SWAP on (the default), the resident tiles off: every 3 <= M <= 16 GEMV, and at M <= 2 the
    weights of N x K >= 24M values or K >= 3N (linear_glu's weight: 2N rows), run the swapped product; the down
    projection at batch leaves cuBLAS; M > 16 is cuBLAS still."""
    monkeypatch.setenv("MEMBOUND_LINEAR_RESIDENT", "0")
    monkeypatch.setenv("MEMBOUND_LINEAR_ROW_LOOP", "0")  # ... and the register loop's one-row form
    assert linear_kind(op, m, n, k) == kind


@pytest.mark.parametrize("op,m,n,k,kind", [("linear", 1, 2048, 2048, "gemv_row"),
                                           ("linear_rope", 1, 3072, 2048, "gemv_row"),
                                           ("gated_linear", 2, 2048, 3000, "gemv_resident"),
                                           ("linear", 1, 4096, 4096, "gemv_row"), ("linear", 2, 4096, 4096, "gemv"),
                                           ("linear", 2, 6144, 4096, "gemv_swap"),
                                           ("linear_glu", 1, 8192, 2048, "gemv_row"),
                                           ("linear_glu", 2, 8192, 2048, "gemv_swap"),
                                           ("linear", 1, 2048, 8192, "gemv_row_loop"),
                                           ("linear", 2, 2048, 8192, "gemv_swap"), ("linear", 3, 2048, 2048, "gemv_swap"),
                                           ("linear_add", 1, 4096, 14336, "gemv_row_loop"),
                                           ("gated_linear", 1, 4096, 14336, "gemv_gated")])
def test_linear_kind_with_the_resident_tiles(op: str, m: int, n: int, k: int, kind: str) -> None:
    """The defaults (MEMBOUND_LINEAR_RESIDENT and _RESIDENT_ROW on): at M = 1 a GEMV whose K fits one resident
    tile (K <= 4096) runs the tiles' one-row form at any weight size, fused forms too; at M = 2 only a small weight
    (at most 8M values: the 1.24B q/k/v and o) the resident tiles, larger ones the register tile or the swapped
    product, as does M >= 3; a longer K (the down projections) runs the register loop's one-row form at M = 1
    (MEMBOUND_LINEAR_ROW_LOOP, priced as its own kind but gated), the swapped product at M = 2."""
    assert linear_kind(op, m, n, k) == kind


@pytest.mark.parametrize("op,m,n,k,kind", [("linear", 8, 4096, 14336, "cublas_gemv"), ("linear", 3, 2048, 8192, "cublas_gemv"),
                                           ("linear", 2, 4096, 14336, "gemv"), ("linear", 8, 4096, 4096, "gemv_dot"),
                                           ("linear", 8, 28672, 4096, "gemv_dot"), ("linear", 17, 4096, 14336, "cublas"),
                                           ("gated_linear", 8, 4096, 14336, "gemv_dot_gated"),
                                           ("linear_add", 8, 4096, 14336, "gemv_dot")])
def test_long_k_linears_at_batch_go_to_cublas(op: str, m: int, n: int, k: int, kind: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Without the swapped product, a plain linear with K >= 3N at 3 <= M <= 16 runs cuBLAS (kernels/linear.py's
    prefers_cublas); the fused forms keep the kernel (cuBLAS has no prologue or epilogue of theirs)."""
    monkeypatch.setenv("MEMBOUND_LINEAR_SWAP", "0")
    monkeypatch.setenv("MEMBOUND_LINEAR_RESIDENT", "0")
    assert linear_kind(op, m, n, k) == kind


# quant_matmul.pick_config's paths at the 8B shapes, bf16 x: int8/fp8 on tensor cores at every decode M
# (M <= 2 padded to 16), int4 the pairs kernel; fp32 x takes no pairs (int4: the FMA GEMV below lm-head widths,
# tensor cores over words from 3 rows); beyond 32 rows the prefill path quant_matmul.prefill_path picks on the
# H200's spec (the fused kernel, or dequantize + cuBLAS)
@pytest.mark.parametrize("op,m,n,k,scheme,dtype,kind", [
    ("quant_linear", 1, 6144, 4096, "int8", torch.bfloat16, "quant_dot_int8"),
    ("quant_gated_linear", 8, 4096, 14336, "int8", torch.bfloat16, "quant_dot_int8_gated"),
    ("quant_linear", 1, 6144, 4096, "fp8", torch.bfloat16, "quant_dot_fp8"),
    ("quant_gated_linear", 1, 4096, 14336, "fp8", torch.bfloat16, "quant_dot_fp8_gated"),
    ("quant_linear", 1, 6144, 4096, "int4", torch.bfloat16, "quant_pairs_int4"),
    ("quant_linear", 32, 128256, 4096, "int4", torch.float16, "quant_pairs_int4"),
    ("quant_gated_linear", 8, 4096, 14336, "int4", torch.bfloat16, "quant_pairs_int4_gated"),
    ("quant_linear", 1, 6144, 4096, "int4", torch.float32, "quant_gemv_int4"),
    ("quant_linear", 1, 128256, 4096, "int4", torch.float32, "quant_dot_int4"),
    ("quant_gated_linear", 8, 4096, 14336, "int4", torch.float32, "quant_dot_int4_gated"),
    ("quant_linear", 33, 6144, 4096, "int8", torch.bfloat16, "quant_mma_int8"),
    ("quant_gated_linear", 64, 4096, 14336, "int4", torch.bfloat16, "quant_mma_int4"),
    ("quant_linear", 1024, 4096, 14336, "int8", torch.bfloat16, "quant_dequant_int8"),  # prefill_path's choice
])
def test_quant_kind_follows_the_scheme_and_path(op: str, m: int, n: int, k: int, scheme: str, dtype: torch.dtype,
                                               kind: str) -> None:
    assert quant_kind(op, m, n, k, scheme, 128 if scheme == "int4" else 0, dtype) == kind
    assert STEP_PRIORS["h200"].kernel(kind).source  # every kind it can give is priced, with its source


def test_quant_kinds_are_not_linear_kinds() -> None:
    with pytest.raises(ValueError, match="quant_kind"):
        linear_kind("quant_linear", 1)


# one quant_linear and one quant_gated_linear launch of each packed format, as the quantize-weights pass
# writes them (8B down projection: K = 14336, int4 groups of 128)
QUANT_GRAPH = """graph @f(%x: bf16[B, 14336], %g: bf16[B, 14336], %u: bf16[B, 14336]) params(%q: {q}, %s: {s}) {{
  %y = quant_linear(%x, %q, %s) {{{attrs}}} : bf16[B, 4096]
  %z = quant_gated_linear(%g, %u, %q, %s) {{{attrs}}} : bf16[B, 4096]
  return %y, %z
}}"""
FORMATS = {"int8": ("i8[4096, 14336]", "bf16[4096]", 'scheme="int8", in_features=14336'),
           "fp8": ("f8e4m3[4096, 14336]", "bf16[4096]", 'scheme="fp8", in_features=14336'),
           "int4": ("u8[4096, 7168]", "bf16[4096, 112, 2]", 'scheme="int4", group_size=128, in_features=14336')}


@pytest.mark.parametrize("scheme,kind", [("int8", "quant_dot_int8"), ("int4", "quant_pairs_int4"),
                                         ("fp8", "quant_dot_fp8")])
def test_each_scheme_costs_its_launches_with_its_own_prior(scheme: str, kind: str) -> None:
    from membound.backends.triton.step_plan import call_kind
    from membound.ir.parser import parse
    from membound.ir.verify import verify

    q, s, attrs = FORMATS[scheme]
    graph = parse(QUANT_GRAPH.format(q=q, s=s, attrs=attrs))
    verify(graph)
    plain, gated = [n for n in graph.nodes if n.op.startswith("quant_")]
    for batch in (1, 8, 32):
        assert call_kind(plain, "library", {"B": batch}) == kind
        assert call_kind(gated, "library", {"B": batch}) == kind + "_gated"
    assert call_kind(plain, "library", {"B": 64}) == f"quant_mma_{scheme}"
    assert call_kind(gated, "library", {"B": 1024}, HW) == f"quant_dequant_{scheme}"
    # each scheme its own line, fitted to per-op rows of that scheme
    lines = {(p.fixed, p.efficiency) for p in map(STEP_PRIORS["h200"].kernel, ("quant_dot_int8", "quant_pairs_int4",
                                                                              "quant_dot_fp8"))}
    assert len(lines) == 3
    assert f"{scheme} " in STEP_PRIORS["h200"].kernel(kind).source + " "


# [QD] (quant_matmul-nvidia-h200-2026-12-02-m64-dequant-kernel.json, read 4262 GB/s) at 4096 x 14336, M = 64:
# dequantize (quant_dequant.py) + cuBLAS less cuBLAS alone, us: int8 86.5 - 36.5, int4 199.8 - 36.5. The
# priors' lines fit five shapes within +-30% (the temporary partly stays in L2 for cuBLAS).
@pytest.mark.parametrize("scheme,packed,measured", [("int8", 4096 * 14336 + 4096 * 2, 50.0e-6),
                                                    ("int4", 4096 * 7168 + 4096 * 112 * 2 * 2, 163.3e-6)])
def test_a_dequantized_prefill_matmul_is_its_dequantization_then_cublas(scheme: str, packed: int,
                                                                        measured: float) -> None:
    from membound.backends.triton.step_plan import dequant_works
    from membound.ir.parser import parse

    q, s, attrs = FORMATS[scheme]
    _, gated = [n for n in parse(QUANT_GRAPH.format(q=q, s=s, attrs=attrs)).nodes if n.op.startswith("quant_")]
    m = 1024
    op_bytes = packed + 2 * (2 * m * 14336 + m * 4096)  # what the op moves: weight, gate, up, y
    dq, mm = dequant_works(gated, "down", f"quant_dequant_{scheme}", 2.0 * m * 4096 * 14336, op_bytes, {"B": m},
                           "bf16")
    assert (dq.kind, dq.bytes, dq.flops) == (f"quant_dequant_{scheme}", packed, 0.0)
    # cuBLAS reads the bf16 temporary instead of the packed weight, and does the FLOPs
    assert (mm.kind, mm.bytes, mm.flops) == ("cublas", 4096 * 14336 * 2 + op_bytes - packed, 2.0 * m * 4096 * 14336)
    dequantize = predict_step([dq], HW, loop=False, bandwidth=4262e9).work_s
    assert dequantize == pytest.approx(measured, rel=0.3)


def test_every_quant_kind_the_paths_can_give_has_a_prior() -> None:
    kinds = set()
    for scheme in ("int8", "int4", "fp8"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            for m in (1, 2, 3, 16, 32, 33, 1024):
                for n, k in ((24, 40), (4096, 14336), (128256, 4096), (40, 33)):
                    for op in QUANT_OPS:
                        kinds.add(quant_kind(op, m, n, k, scheme, 32 if scheme == "int4" else 0, dtype))
    assert {"quant_gemv_int4", "quant_dot_int8_gated", "quant_pairs_int4_gated", "quant_dequant_int4"} <= kinds
    missing = [kind for kind in sorted(kinds) if kind not in STEP_PRIORS["h200"].kernels]
    assert not missing, missing
