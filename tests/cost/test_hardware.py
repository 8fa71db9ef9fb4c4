"""Hardware specs: the table, the fallbacks between precisions, detection and calibration."""

from __future__ import annotations

import pytest
import torch

from membound.cost.hardware import KERNEL_CLASSES, SPECS, Hardware, KernelClass, from_measurements, match_gpu
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
    nbytes = 8 << 20
    hw = calibrate("cpu", nbytes=nbytes, matmul_n=128, scale=32)
    m = hw.measured
    assert hw.source == "calibrated" and hw.device_type == "cpu"
    assert m["read_bandwidth"] > 1e8 and m["copy_bandwidth"] > 1e8
    # the model's bandwidth is the big read's rate once launch and memory latency are taken off its time
    t_big = nbytes / m["read_bandwidth"]
    assert hw.bandwidth == m["stream_bandwidth"]
    assert hw.bandwidth == pytest.approx(nbytes / (t_big - hw.launch_overhead - hw.memory_latency))
    assert hw.bandwidth > m["read_bandwidth"]
    assert hw.memory_latency == m["memory_latency"] >= 0
    assert hw.peak_flops("bf16") == hw.measured["bf16_flops"] > 1e8
    assert 0 < hw.launch_overhead < 1e-2
    # every kernel class was timed and says on what
    assert set(hw.kernel_classes) == set(KERNEL_CLASSES)
    for name, k in hw.kernel_classes.items():
        assert k.efficiency > 0 and " us" in k.source, name
    assert "sdpa decode b2" in hw.kernel_classes["decode_attention"].source


def test_calibrate_can_skip_the_kernel_classes() -> None:
    hw = calibrate("cpu", nbytes=1 << 20, matmul_n=64, kernel_classes=False)
    assert hw.kernel_classes == {} and hw.kernel_class("gemv") == KernelClass(latency=hw.memory_latency)


def test_datasheet_specs_have_no_fixed_costs_beyond_launch() -> None:
    # a datasheet states no latency or library efficiency: the plain roofline (156 FLOP/byte on A100 stands)
    for key, hw in SPECS.items():
        assert hw.memory_latency == 0 and hw.kernel_classes == {}, key
        assert hw.kernel_class("gemv") == KernelClass(), key


def test_from_measurements_keeps_latency_stream_bandwidth_and_classes() -> None:
    gemv = KernelClass(latency=5e-6, efficiency=0.9, source="linear 8x5120 @ ...")
    hw = from_measurements(Hardware.named("h200"), read_bandwidth=4.18e12, copy_bandwidth=4.27e12,
                           bf16_flops=690e12, launch_overhead=4e-6, memory_latency=1.5e-6,
                           stream_bandwidth=4.23e12, kernel_classes={"gemv": gemv})
    assert hw.bandwidth == 4.23e12 and hw.measured["read_bandwidth"] == 4.18e12
    assert hw.memory_latency == hw.measured["memory_latency"] == 1.5e-6
    assert hw.kernel_class("gemv") is gemv
    # a class the spec did not measure streams at the spec's bandwidth after its latency
    assert hw.kernel_class("softmax") == KernelClass(latency=1.5e-6) and hw.kernel_class(None).efficiency == 1.0
    assert "memory latency 1.5 us" in hw.describe() and "1 kernel classes" in hw.describe()


def test_spec_rejects_bad_latency_and_unknown_classes() -> None:
    h100 = Hardware.named("h100-sxm")
    with pytest.raises(ValueError, match="memory_latency"):
        h100.replace(memory_latency=-1e-6)
    with pytest.raises(ValueError, match="unknown kernel class.*'gemm'"):
        h100.replace(kernel_classes={"gemm": KernelClass()})
    with pytest.raises(ValueError, match="efficiency > 0"):
        KernelClass(efficiency=0.0)
    with pytest.raises(ValueError, match="latency >= 0"):
        KernelClass(latency=-1e-6)
