"""Measuring: a timer, ``calibrate()`` (the device's real ceilings) and the time of one IR node.

Timing follows benchmarks practice: on a GPU ``triton.testing.do_bench`` (median; it flushes L2
before each repetition, so bytes come from HBM as the roofline assumes); on the CPU the median of
wall-clock repetitions. CPU timings exist so that the code paths run in tests; they are not compared
with anything.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable, Optional, Sequence

import torch

from membound.cost.hardware import GB, SPECS, Hardware, cpu_spec, from_measurements, match_gpu
from membound.ir.graph import Node
from membound.ir.ops import get_op
from membound.ir.types import TensorType, eval_dim


def time_fn(fn: Callable[[], Any], device: str | torch.device = "cuda", *, rep_ms: float = 100.0) -> float:
    """Median seconds per call of ``fn`` on ``device``."""
    if torch.device(device).type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=25, rep=int(rep_ms), return_mode="median")) * 1e-3
    fn()  # warm-up
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms * 1e-3
    while len(times) < 3 or (time.perf_counter() < deadline and len(times) < 1000):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# the small read of the latency fit is this fraction of ``nbytes`` (64 MiB of 2 GiB: above any L2,
# and small enough that the fixed cost is a few percent of its time)
LATENCY_READ_FRACTION = 32


def calibrate(device: Optional[str] = None, *, nbytes: int = 2 * GB, matmul_n: int = 8192,
              base: Optional[Hardware] = None, scale: int = 1, kernel_classes: bool = True) -> Hardware:
    """Measure the current device's ceilings and fixed costs and return a spec built from them.

    * launch overhead: an in-place add on a one-element tensor, timed the same way as everything else
    * read bandwidth and memory latency: ``x.sum()`` over ``nbytes`` and over ``nbytes / 32``; the line
      through the two times has the steady-state bandwidth as slope (this becomes ``bandwidth``) and
      launch + memory latency as intercept (``classes.fixed_and_rate``)
    * copy bandwidth: ``dst.copy_(src)`` of ``nbytes`` (read + write counted; kept in ``measured``)
    * bf16 matmul rate: ``matmul_n``^3 on random data
    * kernel classes (``kernel_classes=True``): one representative library kernel per class, at the
      shapes of ``classes.shapes(scale)`` (see ``membound/cost/classes.py``)

    ``base`` (default: the datasheet spec of the device, the CPU spec on a CPU) supplies what is not
    measured (SM count, L2, the other precisions scaled as bf16; see ``from_measurements``). The
    defaults are the GPU sizes (needs ~4.5 GiB free, ~10 s); on a CPU pass small sizes and a ``scale``
    (e.g. 16) that divides the class kernels' large dims.
    """
    from membound.cost.classes import calibrate_classes, fixed_and_rate

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    base = base or _datasheet_base(dev)
    tiny = torch.randn(1, device=dev)
    launch = time_fn(lambda: tiny.add_(1.0), dev)
    small_bytes = max(nbytes // LATENCY_READ_FRACTION, 2)
    t_small, t_big, copy_bw = _read_times_and_copy(dev, small_bytes, nbytes)
    latency, stream_bw = fixed_and_rate((small_bytes, t_small), (nbytes, t_big), launch)
    bf16 = _bf16_matmul_rate(dev, matmul_n)
    classes = (calibrate_classes(dev, launch=launch, bandwidth=stream_bw, memory_latency=latency, scale=scale)
               if kernel_classes else {})
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else base.name
    return from_measurements(base, read_bandwidth=nbytes / t_big, copy_bandwidth=copy_bw, bf16_flops=bf16,
                             launch_overhead=launch, name=name, memory_latency=latency,
                             stream_bandwidth=stream_bw, kernel_classes=classes)


def _datasheet_base(dev: torch.device) -> Hardware:
    """The table's spec for ``dev``; an unknown GPU borrows the H100's rates (bf16 is measured anyway)
    with its own SM count, memory and L2."""
    if dev.type == "cpu":
        return cpu_spec()
    props = torch.cuda.get_device_properties(dev)
    key = match_gpu(props.name, props.total_memory)
    if key is not None:
        return SPECS[key]
    h100 = SPECS["h100-sxm"]
    return h100.replace(name=props.name, sm_count=props.multi_processor_count, memory_bytes=props.total_memory,
                        l2_bytes=getattr(props, "L2_cache_size", h100.l2_bytes))


def _read_times_and_copy(dev: torch.device, small_bytes: int, nbytes: int) -> tuple[float, float, float]:
    """(seconds of ``x.sum()`` over ``small_bytes``, over ``nbytes``, copy bytes/s of ``nbytes``), random bf16.

    The small read is a prefix view of the big tensor (contiguous: the same kernel, fewer bytes).
    """
    src = torch.randn(nbytes // 2, dtype=torch.bfloat16, device=dev)
    head = src[: small_bytes // 2]
    t_small = time_fn(lambda: head.sum(), dev)
    t_big = time_fn(lambda: src.sum(), dev)
    dst = torch.empty_like(src)
    copy = 2 * src.nbytes / time_fn(lambda: dst.copy_(src), dev)
    return t_small, t_big, copy


def _bf16_matmul_rate(dev: torch.device, n: int) -> float:
    a = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=dev)
    return 2 * n**3 / time_fn(lambda: a @ b, dev)


# ---------------------------------------------------------------------------------------------
# one node, on random inputs
# ---------------------------------------------------------------------------------------------
def random_tensor(t: TensorType, bindings: dict[Any, int], device: str | torch.device,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """A random tensor of type ``t`` at concrete dims: floats ~ N(0, 1), integers in [0, 2), bools ~ 50%.

    Small integers keep any index input in range for timing purposes (the values do not matter there).
    """
    shape = t.concrete_shape(bindings)
    if t.dtype.is_floating_point:
        if t.dtype.itemsize == 1:  # fp8: no randn kernel
            return torch.randn(shape, device=device, generator=generator).to(t.dtype)
        return torch.randn(shape, dtype=t.dtype, device=device, generator=generator)
    if t.dtype == torch.bool:
        return torch.rand(shape, device=device, generator=generator) > 0.5
    return torch.randint(0, 2, shape, dtype=t.dtype, device=device, generator=generator)


def measure_node(node: Node, bindings: dict[Any, int], device: str | torch.device, *,
                 in_types: Optional[Sequence[TensorType]] = None, attrs: Optional[dict[str, Any]] = None,
                 rep_ms: float = 100.0) -> float:
    """Seconds per call of ``node``'s torch reference implementation at concrete dims, on random inputs.

    ``in_types``/``attrs`` override the node's own (to time it at another shape, e.g. a decode step).
    """
    opdef = get_op(node.op)
    gen = torch.Generator(device=device).manual_seed(0)
    types = in_types if in_types is not None else [v.type for v in node.inputs]
    inputs = [random_tensor(t, bindings, device, gen) for t in types]
    concrete = {k: _concrete_attr(v, bindings) for k, v in (attrs if attrs is not None else node.attrs).items()}
    return time_fn(lambda: opdef.reference(*inputs, **concrete), device, rep_ms=rep_ms)


def _concrete_attr(value: Any, bindings: dict[Any, int]) -> Any:
    """Attributes may hold dim expressions (``end=S``): evaluate them at the bindings."""
    import sympy

    if isinstance(value, sympy.Expr):
        return eval_dim(value, bindings)
    if isinstance(value, tuple):
        return tuple(_concrete_attr(v, bindings) for v in value)
    return value
