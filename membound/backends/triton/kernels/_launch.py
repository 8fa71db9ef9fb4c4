"""What every library kernel wrapper shares: can a Triton kernel run here, which path ran, ``out=``.

A Triton kernel runs on CUDA tensors, or on CPU tensors under the Triton interpreter (the tests).
The interpreter must be switched on with ``TRITON_INTERPRET=1`` *before* ``triton`` is first
imported: ``triton.jit`` decides at decoration time, for Triton's own library functions too. The
launchers check both the variable and that the decoration happened in interpreter mode, and
otherwise run the op's torch reference, saying why (CPU tensors, mixed devices, a dtype without a
kernel...).

``trace()`` records which path each launcher call took, so tests and ``explain`` can tell a kernel
from a fallback:

    with trace() as calls:
        linear(x, w)
    calls == [("linear", "kernel")]      # or ("linear", "fallback: <reason>")
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any, Iterator, Optional

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

SUPPORTED_FLOATS = (torch.float16, torch.bfloat16, torch.float32)

_TRACE: Optional[list[tuple[str, str]]] = None


@triton.jit
def _probe(x_ptr):
    # never launched: its type tells whether triton.jit was in interpreter mode when the kernels were made
    tl.store(x_ptr, tl.load(x_ptr))


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1`` is set now (kernels then run on CPU tensors, slowly)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def interpreter_ready() -> bool:
    """True when triton.jit made interpreted functions (ours and Triton's own ``tl.zeros`` & co.)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_probe, InterpretedFunction) and isinstance(tl.zeros, InterpretedFunction)


def unsupported_device(*tensors: torch.Tensor) -> Optional[str]:
    """None when a Triton kernel can run on ``tensors``, else why it cannot (for the fallback reason)."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        return f"tensors on several devices {sorted(str(d) for d in devices)}"
    device = next(iter(devices))
    if device.type == "cuda":
        return None
    if device.type != "cpu" or not interpreting():
        return f"tensors on {device}: Triton kernels need a CUDA device (or TRITON_INTERPRET=1 for CPU tensors)"
    if not interpreter_ready():
        return ("TRITON_INTERPRET=1 was set after triton was imported; set it before the first `import triton` "
                "to run the kernels on CPU")
    return None


def unsupported_dtype(op: str, *tensors: torch.Tensor) -> Optional[str]:
    for t in tensors:
        if t.dtype not in SUPPORTED_FLOATS:
            return f"{op}: dtype {t.dtype} has no kernel (fp16, bf16, fp32 do)"
    return None


def launchable(kernel: Any, device: torch.device) -> Any:
    """The kernel to launch on ``device``: on CPU it must be the interpreted one (``interpreter_ready``)."""
    if device.type != "cuda" and not interpreter_ready():
        raise RuntimeError(f"{kernel}: CPU tensors need the Triton interpreter; set TRITON_INTERPRET=1 before "
                           f"importing triton")
    return kernel


def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors on ``device`` (a small number for the CPU interpreter, to keep grids small)."""
    if device.type != "cuda":
        return 4
    return torch.cuda.get_device_properties(device).multi_processor_count


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def note(op: str, path: str) -> None:
    """Record ``(op, path)`` when tracing; ``path`` is ``"kernel"`` or ``"fallback: <reason>"``."""
    if _TRACE is not None:
        _TRACE.append((op, path))


@contextlib.contextmanager
def trace() -> Iterator[list[tuple[str, str]]]:
    """Collect ``(op, path)`` for every library call made inside the block."""
    global _TRACE
    previous, _TRACE = _TRACE, []
    try:
        yield _TRACE
    finally:
        _TRACE = previous


def check_out(op: str, out: Optional[torch.Tensor], shape: tuple[int, ...], dtype: torch.dtype,
              device: torch.device) -> torch.Tensor:
    """``out`` checked against the result's shape/dtype/device (and contiguity), or a fresh tensor."""
    if out is None:
        return torch.empty(shape, dtype=dtype, device=device)
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype or out.device != device:
        raise ValueError(f"{op}: out has shape {tuple(out.shape)}, {out.dtype} on {out.device}; the result is "
                         f"{tuple(shape)}, {dtype} on {device}")
    if not out.is_contiguous():
        raise ValueError(f"{op}: out must be contiguous (got strides {out.stride()}); pass out=None to allocate")
    return out


_LOGGED: set[str] = set()


def log_once(message: str) -> None:
    """An info line on the ``membound`` logger, once per process (a fallback that is correct, not fast)."""
    if message not in _LOGGED:
        _LOGGED.add(message)
        logging.getLogger("membound").info(message)


def fallback(op: str, reason: str, result: torch.Tensor, out: Optional[torch.Tensor]) -> torch.Tensor:
    """Finish a call that ran the torch reference: record why, honour ``out``."""
    note(op, f"fallback: {reason}")
    if out is None:
        return result
    check_out(op, out, tuple(result.shape), result.dtype, result.device)
    out.copy_(result)
    return out


_COUNTERS: dict[tuple[torch.device, int], torch.Tensor] = {}
MAX_COUNTERS = 1 << 16  # programs that count in per launch: a split linear's column blocks, attention's row blocks


def split_counters(device: torch.device, n: int) -> torch.Tensor:
    """The zeroed int32 arrival counters of the current stream on ``device``, for split kernels whose last
    program reduces.

    A split launch (linear's split-K, flash-decoding's split over the cache) has each program store an
    fp32 partial and ``atomic_add`` its block's counter; the one that sees ``splits - 1`` reduces the
    partials and sets the counter back to 0. So every launch leaves the buffer zeroed, and launches on
    one stream, which run one after another, share it; launches on two streams may overlap, so each
    stream has its own buffer (two models decoding side by side never count into each other's
    counters). Made once per stream, before any CUDA-graph capture on it (a decode step's warm-up
    runs outside the capture, on the stream the capture then uses).
    """
    if n > MAX_COUNTERS:
        raise ValueError(f"split kernels: {n} counters needed, the buffer has {MAX_COUNTERS}; use fewer blocks")
    stream = torch.cuda.current_stream(device).cuda_stream if device.type == "cuda" else 0
    locks = _COUNTERS.get((device, stream))
    if locks is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("split kernels: the arrival counters of this stream must exist before CUDA-graph "
                               "capture; run the step once on the capturing stream outside the capture "
                               "(CapturedGraph's warm-up does)")
        locks = _COUNTERS[(device, stream)] = _zeroed_counters(device)
        if device.type == "cuda":
            _count_on_default_capture_stream(device)
    return locks


def _count_on_default_capture_stream(device: torch.device) -> None:
    """Make the counters of the stream a plain ``with torch.cuda.graph(g):`` captures on (torch makes that
    stream once per process, lazily; so do we, the same way), so that a user's graph of a warmed-up
    membound call captures without running a step on torch's capture stream first. Only for the
    current device: torch's default capture stream is made there."""
    if (device.index if device.index is not None else torch.cuda.current_device()) != torch.cuda.current_device():
        return
    if torch.cuda.graph.default_capture_stream is None:
        torch.cuda.graph.default_capture_stream = torch.cuda.Stream(device)
    capture = torch.cuda.graph.default_capture_stream
    if capture.device == device and (device, capture.cuda_stream) not in _COUNTERS:
        _COUNTERS[(device, capture.cuda_stream)] = _zeroed_counters(device)


def _zeroed_counters(device: torch.device) -> torch.Tensor:
    return torch.zeros(MAX_COUNTERS, dtype=torch.int32, device=device)


@triton.jit
def arrive_last(lock_ptr, index, splits):
    """Count this program in on counter ``index``; True for the last of ``splits`` to arrive.

    Call after storing this program's partial: the barrier orders every thread's stores before the
    counter moves (released by the atomic), and the last program acquires the others' partials.
    """
    tl.debug_barrier()
    return tl.atomic_add(lock_ptr + index, 1, sem="acq_rel", scope="gpu") == splits - 1


@triton.jit
def reset_counter(lock_ptr, index):
    """The last program, after reducing: counter ``index`` back to 0 for the next launch."""
    tl.atomic_xchg(lock_ptr + index, 0, sem="relaxed", scope="gpu")


@triton.jit
def pdl_enter(USE_PDL: tl.constexpr):
    """A library kernel's first step under programmatic dependent launch (see :func:`pdl`): wait for the
    earlier kernels' writes and let the next kernel launch, in the order :func:`pdl` chose (``USE_PDL`` 1:
    wait first; 2: let the next kernel launch first, then wait)."""
    if USE_PDL == 2:
        gdc_launch_dependents()
        gdc_wait()
    elif USE_PDL:
        gdc_wait()
        gdc_launch_dependents()


@triton.jit
def l2_prefetch(ptr, nbytes):
    """Ask for ``nbytes`` (a multiple of 16, from a 16-byte aligned ``ptr``) to be brought into L2, without
    waiting for them: one ``cp.async.bulk.prefetch.L2`` (sm_90+), issued by thread 0 of the program only (an
    inline-asm statement runs on every thread). A hint: nothing is written, no register waits on it."""
    tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .u32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "@p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [ptr, nbytes], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def l2_prefetch_rows(ptr, pid_n, N, stride_row, col0, cols, pf_bytes, BLOCK_N: tl.constexpr):
    """:func:`l2_prefetch` of the first ``pf_bytes`` (at most the ``cols`` elements from column ``col0``) of
    each of rows ``pid_n * BLOCK_N ..`` of a row-major ``ptr`` that exist (``< N``): a weight's rows of one
    program, before its PDL wait (``L2_PREFETCH`` of the linear kernels)."""
    ELEM: tl.constexpr = ptr.dtype.element_ty.primitive_bitwidth // 8
    nbytes = tl.minimum(pf_bytes, cols * ELEM) // 16 * 16
    if nbytes > 0:
        for r in range(0, BLOCK_N):
            if pid_n * BLOCK_N + r < N:
                l2_prefetch(ptr + (pid_n * BLOCK_N + r).to(tl.int64) * stride_row + col0, nbytes)


# the bytes of weights a linear asks L2 for before its wait (l2_prefetch_bytes), over the whole grid; 0 (the
# default) turns the prefetch off. Measured on an H200 (benches/results/pdl_prefetch_ab-nvidia-h200-
# 2026-12-02.json, HF Llama decode step, graph replay): 16 MB made the step 0.8-1.8% slower at batch 1 (1.24B,
# 8B) and 8B batch 8, 3% faster at 1.24B batch 8; 32 MB slower still. So the step does not seem to lose its time
# to HBM idling between kernels; filling L2 ahead competes with the kernel that is streaming.
L2_PREFETCH_TOTAL = int(os.environ.get("MEMBOUND_L2_PREFETCH", 0))


def l2_prefetch_bytes(weight: torch.Tensor, static_weight: bool, rows: int, row_bytes_max: int) -> dict[str, Any]:
    """Launch arguments for a kernel's ``L2_PREFETCH`` / ``pf_bytes`` (see :func:`l2_prefetch`): on sm_90+
    under programmatic dependent launch, for a parameter weight (``static_weight``: no kernel writes it),
    each of the ``rows`` row chunks (up to ``row_bytes_max`` elements each) gets an equal share of
    :data:`L2_PREFETCH_TOTAL`, rounded down to 16 bytes; nothing where the rows are not 16-byte aligned."""
    off: dict[str, Any] = {"L2_PREFETCH": False, "pf_bytes": 0}
    if not static_weight or L2_PREFETCH_TOTAL <= 0 or weight.device.type != "cuda" or not pdl(weight.device):
        return off
    e = weight.element_size()
    if weight.data_ptr() % 16 or (weight.stride(0) * e) % 16 or rows <= 0:
        return off
    share = min(L2_PREFETCH_TOTAL // rows, row_bytes_max * e) // 16 * 16
    return {"L2_PREFETCH": True, "pf_bytes": share} if share >= 128 else off


_PDL: dict[torch.device, int] = {}


def pdl(device: torch.device) -> int:
    """Launch with programmatic dependent launch (Hopper and later, CUDA only; ``MEMBOUND_PDL=0`` turns it off).

    A kernel launched so may start while the kernel before it in the stream is still running, once
    all of that kernel's programs have signalled (``gdc_launch_dependents``); it must call ``gdc_wait``
    before touching any memory an earlier kernel writes or reads. Every kernel of the library does,
    first thing, except the loads of weights, which no kernel ever writes, so the first weight tile of
    a linear is in flight before the previous kernel has finished. At decode a step is ~200 kernels
    of a few µs, so hiding each launch's ramp-up is worth a few percent of the step.

    The mode (0 off; the ``USE_PDL`` constexpr of the kernels): 1 (default) waits, then signals, so the
    next kernel launches once this one's programs have all passed their wait; 2 (``MEMBOUND_PDL=2``)
    signals first, so launches run ahead down the chain of kernels, each still waiting for the one before
    it (a ``gdc_wait`` returns once the previous grid has completed and its writes are visible, whenever the
    signal came). Mode 2 was slower on an H200 (HF Llama decode step: +6.7% at 1.24B batch 1, +4.5% at 8B
    batch 1, +0.3% / +3.1% at batch 8; ``benches/experiments/pdl_prefetch_ab.py``): programs launched early
    hold SM slots while they wait. :func:`set_pdl_mode` overrides the variable (benches switch it within one
    process).
    """
    mode = _PDL.get(device)
    if mode is None:
        env = os.environ.get("MEMBOUND_PDL", "1").strip()
        mode = 0 if env == "0" else (2 if env == "2" else 1)
        if _PDL_MODE is not None:
            mode = _PDL_MODE
        if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
            mode = 0
        _PDL[device] = mode
    return mode


_PDL_MODE: Optional[int] = None


def set_pdl_mode(mode: Optional[int]) -> None:
    """Override ``MEMBOUND_PDL`` for launches from now on (0, 1, 2; None: back to the variable). Kernels and
    CUDA graphs made before keep the mode they were made with."""
    global _PDL_MODE
    if mode not in (None, 0, 1, 2):
        raise ValueError(f"set_pdl_mode: mode must be 0, 1, 2 or None, got {mode!r}")
    _PDL_MODE = mode
    _PDL.clear()


def pdl_options(device: torch.device) -> dict[str, Any]:
    """Launch options for a kernel taking a ``USE_PDL`` constexpr: ``launch_pdl`` where :func:`pdl` holds."""
    mode = pdl(device)
    return {"USE_PDL": mode, "launch_pdl": True} if mode else {"USE_PDL": 0}
