"""Hardware specs for the roofline: memory bandwidth, FLOP rates per precision, SMs, L2, launch overhead.

The table holds datasheet figures (dense, no structured sparsity) for the cards membound targets and a
rough spec of the local CPU. ``Hardware.detect()`` picks the entry for the current device;
``calibrate()`` measures the real ceilings instead (datasheet peaks are rarely reached: an H100 SXM
sustains ~3.0 of its 3.35 TB/s and ~700 of its 989 bf16 TFLOP/s), so predictions that are compared
with measurements should use a calibrated spec.

    hw = Hardware.named("a100-80gb")
    hw.peak_flops("bf16") / hw.bandwidth      # the ridge point: 153 FLOP/byte
    hw = calibrate()                          # on a GPU: measured bandwidth, latency, bf16 matmul, launch,
                                              # and the kernel classes below

Beyond the two ceilings a calibrated spec carries the fixed costs that make small kernels slower than
bytes/bandwidth (see ``roofline.py`` for how the terms combine):

* ``launch_overhead``: paid by every kernel (issue, the first wave starting, the event gap);
* ``memory_latency``: paid by every *memory-bound* kernel on top of its bytes: the DRAM pipeline filling
  and draining (the first loads wait ~1 us, the last wave runs with a half-empty machine). ``calibrate()``
  measures it by timing one streaming read at two sizes: the line through the two times has the
  bandwidth as its slope and launch + latency as its intercept;
* ``kernel_classes``: library kernels that reach neither ceiling, each measured by ``calibrate()`` on one
  representative shape (never a shape the cost-model bench tests): cuBLAS small-M GEMMs, SDPA with one
  query token, torch's block softmax, broadcasting elementwise ops, layer_norm (``KernelClass``).

Datasheet specs have none of these (latency 0, no classes): a datasheet states no such figures, and the
plain roofline is the right idealisation for planning (the A100's 156 FLOP/byte ridge holds there).

Precisions (the keys of ``Hardware.flops``): ``fp32`` (CUDA-core rate, also used for every non-matmul
op), ``tf32``, ``bf16``, ``fp16``, ``int8``, ``fp8`` (tensor-core rates). A card without a precision
(fp8 on A100) runs it at the next wider one (see ``FALLBACK``).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional

import torch

PRECISIONS = ("fp32", "tf32", "bf16", "fp16", "int8", "fp8")
# an unsupported precision runs at this one (A100 has no fp8 tensor cores: fp8 weights are upcast)
FALLBACK = {"fp8": "bf16", "int8": "bf16", "tf32": "fp32", "bf16": "fp32", "fp16": "fp32"}

TB = 1e12
MB = 1 << 20
GB = 1 << 30

# library kernel families with their own measured figures (see KernelClass; roofline.kernel_class_of)
KERNEL_CLASSES = ("gemv", "decode_attention", "softmax", "broadcast", "layer_norm")


@dataclass(frozen=True)
class KernelClass:
    """How one family of library kernels departs from the plain roofline, measured on one device.

    The cost model (``roofline.py``) uses a class for a node that the eager torch library runs with
    such a kernel (``kernel_class_of`` decides); fused kernels of our own and nodes outside every class
    stream at the spec's ``bandwidth`` after its ``memory_latency``.

    * ``latency`` (s): the class's fixed memory-side cost (replaces ``Hardware.memory_latency``): e.g. a
      split-K GEMV also runs a reduction kernel, flash-decoding a combine kernel.
    * ``efficiency``: the fraction of ``Hardware.bandwidth`` its steady state reaches (cuBLAS GEMV
      reaches ~0.9 of what ``x.sum()`` does).
    * ``element_rate`` (elements/s, 0 = none): a ceiling that is neither FLOPs nor bytes: the kernel is
      bound by instructions or latency per element (torch's strided elementwise path computes offsets
      element by element; its block softmax serialises a block-wide reduction per row). It counts on the
      compute side: the time follows the element count, not the bytes, as the bench's probes show.
    * ``source``: what was timed to get these figures (provenance for reports).
    """

    latency: float = 0.0
    efficiency: float = 1.0
    element_rate: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        if self.latency < 0 or self.efficiency <= 0 or self.element_rate < 0:
            raise ValueError(f"KernelClass: latency >= 0, efficiency > 0 and element_rate >= 0 required, got {self}")

    def describe(self) -> str:
        parts = [f"latency {self.latency * 1e6:.1f} us", f"{self.efficiency:.2f} of bandwidth"]
        if self.element_rate:
            parts.append(f"{self.element_rate / 1e9:.0f} G elements/s")
        return ", ".join(parts) + (f" ({self.source})" if self.source else "")


@dataclass(frozen=True)
class Hardware:
    """One device's ceilings. Rates are per second: bytes/s and FLOP/s; ``launch_overhead`` in seconds.

    ``bandwidth`` is the figure the roofline divides bytes by: the datasheet HBM bandwidth, or for a
    calibrated spec the measured steady-state *read* bandwidth (decode streams weights and cache, so
    reading is the ceiling that matters; the copy figure is kept in ``measured``). ``memory_latency``
    and ``kernel_classes`` are the fixed costs and library efficiencies the module docstring describes
    (0 and none on a datasheet spec).
    """

    name: str
    bandwidth: float
    flops: Mapping[str, float]
    sm_count: int
    l2_bytes: int
    launch_overhead: float
    memory_bytes: int = 0
    device_type: str = "cuda"
    source: str = "datasheet"
    measured: Mapping[str, float] = field(default_factory=dict)
    memory_latency: float = 0.0
    kernel_classes: Mapping[str, KernelClass] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = set(self.flops) - set(PRECISIONS)
        if unknown:
            raise ValueError(f"Hardware {self.name!r}: unknown precision(s) {sorted(unknown)}; use {PRECISIONS}")
        if "fp32" not in self.flops:
            raise ValueError(f"Hardware {self.name!r}: the fp32 rate is required (it is the rate of non-matmul ops)")
        if self.bandwidth <= 0:
            raise ValueError(f"Hardware {self.name!r}: bandwidth must be positive, got {self.bandwidth}")
        if self.memory_latency < 0:
            raise ValueError(f"Hardware {self.name!r}: memory_latency must be >= 0 s, got {self.memory_latency}")
        unknown_classes = set(self.kernel_classes) - set(KERNEL_CLASSES)
        if unknown_classes:
            raise ValueError(f"Hardware {self.name!r}: unknown kernel class(es) {sorted(unknown_classes)}; "
                             f"use {KERNEL_CLASSES}")

    def kernel_class(self, name: Optional[str]) -> KernelClass:
        """The figures of kernel class ``name``; a class this spec did not measure (or None) streams at
        ``bandwidth`` after ``memory_latency``, with no element ceiling."""
        if name is not None and name in self.kernel_classes:
            return self.kernel_classes[name]
        return KernelClass(latency=self.memory_latency)

    def peak_flops(self, precision: str) -> float:
        """FLOP/s at ``precision``, falling back to a wider precision the card does have."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
        p: Optional[str] = precision
        while p is not None:
            if p in self.flops:
                return self.flops[p]
            p = FALLBACK.get(p)
        raise AssertionError("fp32 is always present")

    def ridge_point(self, precision: str = "bf16") -> float:
        """Arithmetic intensity (FLOP/byte) above which an op at ``precision`` is compute-bound."""
        return self.peak_flops(precision) / self.bandwidth

    def replace(self, **changes: Any) -> "Hardware":
        """A copy with some fields changed (``hw.replace(bandwidth=2.0e12)``)."""
        return dataclasses.replace(self, **changes)

    def describe(self) -> str:
        text = (f"{self.name} ({self.source}): {self.bandwidth / 1e9:.0f} GB/s, "
                f"bf16 {self.peak_flops('bf16') / 1e12:.0f} TFLOP/s, fp32 {self.peak_flops('fp32') / 1e12:.1f} "
                f"TFLOP/s, launch {self.launch_overhead * 1e6:.1f} us")
        if self.memory_latency:
            text += f", memory latency {self.memory_latency * 1e6:.1f} us"
        if self.kernel_classes:
            text += f", {len(self.kernel_classes)} kernel classes"
        return text

    # ---- lookup -------------------------------------------------------------------------------
    @staticmethod
    def named(name: str) -> "Hardware":
        """A spec from the table by name (``"h100-sxm"``, ``"A100-80GB"``, ``"cpu"``), case-insensitive."""
        key = name.lower().replace("_", "-").replace(" ", "-")
        if key == "cpu":
            return cpu_spec()
        if key in SPECS:
            return SPECS[key]
        raise ValueError(f"no hardware spec named {name!r}; known: {', '.join(list(SPECS) + ['cpu'])} "
                         f"(or measure the current device with membound.cost.calibrate())")

    @staticmethod
    def detect(device: Optional[str] = None) -> "Hardware":
        """The spec of ``device`` (default: the current CUDA device if there is one, else the CPU).

        An unknown GPU gets a calibrated spec (with a warning) rather than a guess.
        """
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.device(device).type == "cpu":
            return cpu_spec()
        props = torch.cuda.get_device_properties(torch.device(device))
        key = match_gpu(props.name, props.total_memory)
        if key is None:
            warnings.warn(f"no datasheet spec for GPU {props.name!r}; calibrating it instead "
                          f"(add an entry to membound/cost/hardware.py SPECS to skip this)", stacklevel=2)
            from membound.cost.measure import calibrate

            return calibrate(device)
        return SPECS[key]


def match_gpu(device_name: str, total_memory: int) -> Optional[str]:
    """The SPECS key for a CUDA device name as torch reports it, or None when the card is not in the table."""
    n = device_name.upper()
    if "H200" in n:
        return "h200"
    if "H100" in n:
        # the PCIe card has 2.0 TB/s and 114 SMs; only the SXM part is in the table
        return None if "PCIE" in n else "h100-sxm"
    if "A100" in n:
        if "PCIE" in n:
            return None
        return "a100-80gb" if total_memory > 48 * GB else "a100-40gb"
    if n.endswith(" L4") or n == "L4":
        return "l4"
    return None


def _gpu(name: str, bandwidth_tb: float, tflops: dict[str, float], sm_count: int, l2_mb: int, memory_gb: int,
         launch_us: float = 4.0) -> Hardware:
    return Hardware(name=name, bandwidth=bandwidth_tb * TB, flops={k: v * TB for k, v in tflops.items()},
                    sm_count=sm_count, l2_bytes=l2_mb * MB, launch_overhead=launch_us * 1e-6,
                    memory_bytes=memory_gb * GB)


_AMPERE = {"fp32": 19.5, "tf32": 156, "bf16": 312, "fp16": 312, "int8": 624}
_HOPPER = {"fp32": 66.9, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4, "int8": 1978.9, "fp8": 1978.9}

# Datasheet figures, dense (NVIDIA A100/H100/H200/L4 datasheets). Launch overhead is a typical eager
# figure (CPU dispatch + launch of one small kernel); calibrate() measures it.
SPECS: dict[str, Hardware] = {
    "a100-40gb": _gpu("NVIDIA A100-SXM4-40GB", 1.555, _AMPERE, 108, 40, 40),
    "a100-80gb": _gpu("NVIDIA A100-SXM4-80GB", 2.039, _AMPERE, 108, 40, 80),
    "h100-sxm": _gpu("NVIDIA H100 80GB HBM3", 3.35, _HOPPER, 132, 50, 80),
    "h200": _gpu("NVIDIA H200", 4.8, _HOPPER, 132, 50, 141),
    "l4": _gpu("NVIDIA L4", 0.3, {"fp32": 30.3, "tf32": 60, "bf16": 121, "fp16": 121, "int8": 242.5, "fp8": 242.5},
               58, 48, 24),
}


# ---------------------------------------------------------------------------------------------
# the local CPU: a rough spec from core count, clock and ISA flags (calibrate("cpu") measures it)
# ---------------------------------------------------------------------------------------------
def cpu_spec() -> Hardware:
    """A rough spec of this machine's CPU: peak = cores x clock x FLOPs/cycle of its vector ISA.

    Bandwidth cannot be read from the system, so it is a guess of 10 GB/s per core capped at 150 GB/s;
    use ``calibrate("cpu")`` for measured figures.
    """
    cores = os.cpu_count() or 1
    flags, mhz, model = _cpuinfo()
    if "avx512f" in flags:
        per_cycle = 64.0  # 2 FMA units x 16 fp32 lanes x 2 FLOPs
    elif "fma" in flags:
        per_cycle = 32.0
    else:
        per_cycle = 8.0
    fp32 = cores * mhz * 1e6 * per_cycle
    half = fp32 * (16 if "amx_bf16" in flags else 2 if "avx512_bf16" in flags else 1)
    int8 = fp32 * (32 if "amx_int8" in flags else 4 if "avx512_vnni" in flags else 1)
    return Hardware(name=f"CPU ({model}, {cores} cores)", bandwidth=min(cores * 10e9, 150e9),
                    flops={"fp32": fp32, "tf32": fp32, "bf16": half, "fp16": half, "int8": int8, "fp8": half},
                    sm_count=cores, l2_bytes=_cpu_cache_bytes(), launch_overhead=5e-6, device_type="cpu")


def _cpuinfo() -> tuple[set[str], float, str]:
    """(ISA flags, clock in MHz, model name) from /proc/cpuinfo; generic values where it is missing."""
    flags: set[str] = set()
    mhz, model = 2500.0, "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "flags" and not flags:
                    flags = set(value.split())
                elif key == "cpu MHz" and mhz == 2500.0:
                    mhz = float(value)
                elif key == "model name" and model == "unknown":
                    model = value.strip()
    except OSError:
        pass
    return flags, mhz, model


def _cpu_cache_bytes() -> int:
    """Size of the last-level cache (L3 if reported, else L2), 32 MiB when unknown."""
    for index in (3, 2):
        try:
            with open(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size") as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        return int(text.rstrip("KMG")) * scale
    return 32 * MB


def from_measurements(base: Hardware, *, read_bandwidth: float, copy_bandwidth: float, bf16_flops: float,
                      launch_overhead: float, name: Optional[str] = None, memory_latency: float = 0.0,
                      stream_bandwidth: Optional[float] = None,
                      kernel_classes: Optional[Mapping[str, KernelClass]] = None) -> Hardware:
    """A spec built from measured ceilings. Tensor-core rates the calibration did not measure (fp16,
    tf32, int8, fp8) are scaled by the same measured/datasheet ratio as bf16; the fp32 CUDA-core rate
    keeps its datasheet value (elementwise work is never near it).

    ``read_bandwidth`` is bytes / time of one big read; ``stream_bandwidth`` (default: the same) the
    steady-state rate once ``memory_latency`` is taken off that time; the roofline divides by the latter.
    """
    ratio = bf16_flops / base.peak_flops("bf16")
    flops = {k: (v * ratio if k != "fp32" else v) for k, v in base.flops.items()}
    flops["bf16"] = bf16_flops
    bandwidth = stream_bandwidth or read_bandwidth
    measured = {"read_bandwidth": read_bandwidth, "copy_bandwidth": copy_bandwidth, "bf16_flops": bf16_flops,
                "launch_overhead": launch_overhead, "memory_latency": memory_latency, "stream_bandwidth": bandwidth}
    return base.replace(name=name or base.name, bandwidth=bandwidth, flops=flops,
                        launch_overhead=launch_overhead, source="calibrated", measured=measured,
                        memory_latency=memory_latency, kernel_classes=dict(kernel_classes or {}))

