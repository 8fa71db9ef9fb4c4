"""Hardware specs: the table, the fallbacks between precisions, detection and calibration."""

from __future__ import annotations

import pytest
import torch

from membound.cost.hardware import SPECS, Hardware, from_measurements, match_gpu
from membound.cost.measure import calibrate


def test_a100_ridge_point_is_the_datasheet_ratio() -> None:
    # A100 80GB: 312 bf16 TFLOP/s over 2039 GB/s -> 153 FLOP/byte (the blog's 156 uses 2.0 TB/s)
    hw = Hardware.named("A100-80GB")
    assert hw.ridge_point("bf16") == pytest.approx(312e12 / 2.039e12)
    assert hw.replace(bandwidth=2.0e12).ridge_point("bf16") == pytest.approx(156.0)


def test_every_card_has_the_fields_the_cost_model_reads() -> None:
    for key, hw in SPECS.items():
        assert hw.bandwidth > 1e11 and hw.sm_count > 0 and hw.l2_bytes > 0 and hw.launch_overhead > 0, key
        # tensor cores are faster than the fp32 vector units on every card in the table
        assert hw.peak_flops("bf16") > hw.peak_flops("fp32"), key


def test_missing_precision_falls_back_to_a_wider_one() -> None:
    a100, h100 = Hardware.named("a100-40gb"), Hardware.named("h100-sxm")
    assert a100.peak_flops("fp8") == a100.peak_flops("bf16")  # no fp8 tensor cores on Ampere
    assert h100.peak_flops("fp8") == pytest.approx(2 * h100.peak_flops("bf16"), rel=1e-3)
    with pytest.raises(ValueError, match="unknown precision"):
        a100.peak_flops("fp4")


def test_unknown_spec_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="h100-sxm"):
        Hardware.named("tpu-v5")


def test_spec_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="fp32 rate is required"):
        Hardware("x", 1e12, {"bf16": 1e14}, 1, 1, 1e-6)
    with pytest.raises(ValueError, match="unknown precision"):
        Hardware("x", 1e12, {"fp32": 1e13, "fp64": 1e13}, 1, 1, 1e-6)


@pytest.mark.parametrize("name, memory_gb, key", [
    ("NVIDIA H100 80GB HBM3", 80, "h100-sxm"),
    ("NVIDIA H100 PCIe", 80, None),
    ("NVIDIA H200", 141, "h200"),
    ("NVIDIA A100-SXM4-40GB", 40, "a100-40gb"),
    ("NVIDIA A100-SXM4-80GB", 80, "a100-80gb"),
    ("NVIDIA L4", 24, "l4"),
    ("NVIDIA GeForce RTX 4090", 24, None),
])
def test_gpu_names_map_to_table_entries(name: str, memory_gb: int, key: str | None) -> None:
    assert match_gpu(name, memory_gb << 30) == key


def test_detect_on_the_cpu_returns_the_cpu_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    hw = Hardware.detect()
    assert hw.device_type == "cpu" and hw.name.startswith("CPU")
    assert Hardware.detect("cpu") == hw
    assert hw.peak_flops("fp32") > 1e9 and hw.bandwidth > 1e9


def test_from_measurements_scales_unmeasured_tensor_core_rates() -> None:
    base = Hardware.named("h100-sxm")
    hw = from_measurements(base, read_bandwidth=3.0e12, copy_bandwidth=2.9e12, bf16_flops=700e12,
                           launch_overhead=3e-6)
    ratio = 700e12 / base.peak_flops("bf16")
    assert hw.bandwidth == 3.0e12 and hw.source == "calibrated"
    assert hw.peak_flops("fp8") == pytest.approx(base.peak_flops("fp8") * ratio)
    assert hw.peak_flops("fp32") == base.peak_flops("fp32")
    assert hw.measured["copy_bandwidth"] == 2.9e12


def test_calibrate_runs_on_the_cpu_at_small_sizes() -> None:
    hw = calibrate("cpu", nbytes=8 << 20, matmul_n=128)
    assert hw.source == "calibrated" and hw.device_type == "cpu"
    assert hw.bandwidth == hw.measured["read_bandwidth"] > 1e8
    assert hw.measured["copy_bandwidth"] > 1e8
    assert hw.peak_flops("bf16") == hw.measured["bf16_flops"] > 1e8
    assert 0 < hw.launch_overhead < 1e-2
