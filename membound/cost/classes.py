"""Calibrating the kernel classes: time one representative torch library kernel per class.

Each class (``hardware.KernelClass``; ``roofline.kernel_class_of`` says which nodes belong to it) is
timed on shapes of its own, chosen as typical LLM shapes that the cost-model bench does *not* test
(the bench checks the model on other shapes: no fitting on the test set). The bytes and elements of a
calibration kernel are counted by the same op declarations and class rules the model uses, so a
figure means exactly what the model will multiply it by.

* ``gemv`` and ``decode_attention`` are timed at two sizes; the line through the two times gives the
  class's own latency (intercept less launch) and achieved bandwidth (slope): cuBLAS' small-M kernels
  and flash-decoding both run a second (reduction/combine) kernel, so their fixed cost is their own.
* ``layer_norm`` is timed once: its efficiency is the bandwidth it reaches after the spec's latency.
* ``softmax`` and ``broadcast`` are timed once: their element rate is elements per second of their
  time less launch, kept only when that time is clearly above streaming their bytes
  (``ELEMENT_BOUND_MARGIN``); otherwise the kernel streams on this device and gets an efficiency.

    classes = calibrate_classes("cuda", launch=4e-6, bandwidth=4.2e12, memory_latency=1e-6)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from membound.cost.hardware import KernelClass
from membound.cost.measure import measure_node
from membound.cost.roofline import kernel_class_of
from membound.ir.graph import Graph, Node
from membound.ir.ops import get_op
from membound.ir.types import TensorType, eval_dim

# an element-rate class applies only if its kernel takes this much longer than streaming its bytes
ELEMENT_BOUND_MARGIN = 1.25
# no library kernel streams this much faster than x.sum(): a larger efficiency is noise on a tiny kernel
MAX_EFFICIENCY = 1.5

bf16 = torch.bfloat16


@dataclass(frozen=True)
class Sample:
    """One timed calibration kernel: its bytes and class elements (as the model counts them) and seconds."""

    label: str
    bytes: float
    elements: float
    seconds: float


# ---------------------------------------------------------------------------------------------
# calibration kernels: one-op graphs at GPU sizes; ``scale`` divides their large dims (CPU tests)
# ---------------------------------------------------------------------------------------------
def linear_node(m: int, k: int, n: int) -> Node:
    g = Graph("calibrate_gemv")
    x = g.add_input("x", TensorType(bf16, [m, k]))
    w = g.add_param("w", TensorType(bf16, [n, k]))
    return g.call("linear", x, w).producer


def decode_node(b: int, hq: int, hkv: int, kv_len: int, d: int) -> Node:
    g = Graph("calibrate_decode")
    q = g.add_input("q", TensorType(bf16, [b, hq, 1, d]))
    k = g.add_input("k", TensorType(bf16, [b, hkv, kv_len, d]))
    v = g.add_input("v", TensorType(bf16, [b, hkv, kv_len, d]))
    return g.call("attention", q, k, v).producer


def softmax_node(rows: int, cols: int) -> Node:
    g = Graph("calibrate_softmax")
    return g.call("softmax", g.add_input("x", TensorType(bf16, [rows, cols])), dim=-1).producer


def broadcast_node(rows: int, cols: int) -> Node:
    """An RMSNorm-style weight multiply: [rows, cols] * [cols]."""
    g = Graph("calibrate_broadcast")
    x = g.add_input("x", TensorType(bf16, [rows, cols]))
    w = g.add_param("w", TensorType(bf16, [cols]))
    return g.call("mul", x, w).producer


def layer_norm_node(rows: int, cols: int) -> Node:
    g = Graph("calibrate_layer_norm")
    x = g.add_input("x", TensorType(bf16, [rows, cols]))
    w = g.add_param("w", TensorType(bf16, [cols]))
    b = g.add_param("b", TensorType(bf16, [cols]))
    return g.call("layer_norm", x, w, b).producer


def shapes(scale: int = 1) -> dict[str, list[tuple[str, Callable[[], Node]]]]:
    """The calibration kernels per class, (label, node builder), at GPU sizes divided by ``scale``.

    GEMV: M=8 tokens through Llama-13B-sized weights (K=5120, N=2560 and 13824: 26 and 142 MB). Decode:
    Llama-3-8B heads (32 query, 8 kv, d=128) over 8192 cached positions, batch 2 and 16 (67 and 537 MB).
    Softmax: 8192 rows of 8192. Broadcast: [8192, 5120] * [5120]. layer_norm: [8192, 5120].
    """
    s = scale
    return {
        "gemv": [(f"linear 8x{5120 // s} @ {n // s}x{5120 // s}", lambda n=n: linear_node(8, 5120 // s, n // s))
                 for n in (2560, 13824)],
        "decode_attention": [(f"sdpa decode b{b} h32/8 kv{8192 // s} d128",
                              lambda b=b: decode_node(b, 32, 8, 8192 // s, 128)) for b in (2, 16)],
        "softmax": [(f"softmax [{8192 // s}, {8192 // s}]", lambda: softmax_node(8192 // s, 8192 // s))],
        "broadcast": [(f"mul [{8192 // s}, {5120 // s}] * [{5120 // s}]",
                       lambda: broadcast_node(8192 // s, 5120 // s))],
        "layer_norm": [(f"layer_norm [{8192 // s}, {5120 // s}]", lambda: layer_norm_node(8192 // s, 5120 // s))],
    }


def sample(label: str, node: Node, device: str | torch.device, rep_ms: float) -> Sample:
    """Time ``node``'s torch kernel and count its bytes and class elements as the cost model does."""
    opdef = get_op(node.op)
    ins = [v.type for v in node.inputs]
    outs = [r.type for r in node.results]
    _, nbytes = opdef.cost(ins, outs, node.attrs)
    use = kernel_class_of(node.op, opdef.kind, ins, outs, node.attrs)
    elements = eval_dim(use.elements, {}) if use is not None and use.elements is not None else 0
    return Sample(label, float(nbytes), float(elements), measure_node(node, {}, device, rep_ms=rep_ms))


# ---------------------------------------------------------------------------------------------
# fits
# ---------------------------------------------------------------------------------------------
def fixed_and_rate(small: tuple[float, float], big: tuple[float, float], launch: float) -> tuple[float, float]:
    """(latency, rate) of ``seconds = launch + latency + amount / rate`` through two (amount, seconds) timings.

    The line through the points has the rate as slope and launch + latency as intercept. Where timing
    noise puts the intercept below the launch (or the points do not rise), latency is 0 and the rate is
    taken through the big point alone, so the model still reproduces the big timing.
    """
    (a1, t1), (a2, t2) = small, big
    latency = 0.0
    if a2 > a1 and t2 > t1:
        slope = (t2 - t1) / (a2 - a1)
        latency = max(0.0, t1 - a1 * slope - launch)
    return latency, a2 / max(t2 - launch - latency, 1e-12)


def two_point_class(samples: list[Sample], launch: float, bandwidth: float) -> KernelClass:
    """A class with its own latency and bandwidth from two sizes of its kernel."""
    small, big = sorted(samples, key=lambda x: x.bytes)
    latency, achieved = fixed_and_rate((small.bytes, small.seconds), (big.bytes, big.seconds), launch)
    return KernelClass(latency=latency, efficiency=min(achieved / bandwidth, MAX_EFFICIENCY),
                       source=f"{small.label}: {small.seconds * 1e6:.1f} us; {big.label}: {big.seconds * 1e6:.1f} us")


def one_point_class(x: Sample, launch: float, bandwidth: float, memory_latency: float,
                    element_bound: bool) -> KernelClass:
    """A class from one timing: an element rate if ``element_bound`` and the kernel is clearly slower than
    streaming its bytes (``ELEMENT_BOUND_MARGIN``), else the efficiency of its bandwidth after the latency."""
    work = max(x.seconds - launch, 1e-12)
    stream = memory_latency + x.bytes / bandwidth
    source = f"{x.label}: {x.seconds * 1e6:.1f} us"
    if element_bound and x.elements > 0 and work > ELEMENT_BOUND_MARGIN * stream:
        return KernelClass(latency=memory_latency, element_rate=x.elements / work, source=source)
    efficiency = x.bytes / bandwidth / max(work - memory_latency, 1e-12)
    return KernelClass(latency=memory_latency, efficiency=min(efficiency, MAX_EFFICIENCY), source=source)


ELEMENT_CLASSES = ("softmax", "broadcast")


def calibrate_classes(device: str | torch.device, *, launch: float, bandwidth: float, memory_latency: float,
                      scale: int = 1, rep_ms: float = 100.0,
                      only: Optional[tuple[str, ...]] = None) -> dict[str, KernelClass]:
    """Time every class's calibration kernels on ``device`` and fit its figures (see the module docstring)."""
    out: dict[str, KernelClass] = {}
    for name, kernels in shapes(scale).items():
        if only is not None and name not in only:
            continue
        samples = [sample(label, build(), device, rep_ms) for label, build in kernels]
        if len(samples) == 2:
            out[name] = two_point_class(samples, launch, bandwidth)
        else:
            out[name] = one_point_class(samples[0], launch, bandwidth, memory_latency, name in ELEMENT_CLASSES)
    return out
