"""The threading contract of a compiled model.

- **Capture is serialised** by one process-wide lock (``CAPTURE_LOCK``): ``torch.export`` swaps a
  module's parameters for fake tensors while it traces, so two threads tracing at once corrupt
  each other (and could leave the user's module holding fake tensors). A thread that finds the
  capture it needs was made while it waited uses it. ``guard_module`` checks, after every capture,
  that the user's module holds its own real tensors again, and puts them back if not.
- **Forward calls** (``compiled(x)``) on one compiled model run one at a time (a lock): they share
  the backend's intermediate buffers.
- **generate** on one compiled model is exclusive: a second concurrent call (another thread, or a
  ``stream`` callback calling back in) is refused with ``ConcurrentUseError``, because the static
  KV cache and its CUDA graphs are per model. Compile one model per thread to decode in parallel.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Iterator

import torch

CAPTURE_LOCK = threading.RLock()  # re-entrant: a traced function may itself call another compiled model


class ConcurrentUseError(RuntimeError):
    """A compiled model was used by two generate calls at once."""


def _lock(owner: Any, attr: str) -> threading.Lock:
    # dict.setdefault is atomic under the GIL: two threads get the same lock
    return owner.__dict__.setdefault(attr, threading.Lock())


@contextlib.contextmanager
def exclusive(owner: Any, what: str) -> Iterator[None]:
    """Run the block as the only ``what`` on ``owner``; a concurrent one raises ``ConcurrentUseError``."""
    lock = _lock(owner, "_membound_exclusive")
    if not lock.acquire(blocking=False):
        raise ConcurrentUseError(
            f"{what}: another generate call is running on this compiled model (another thread, or a stream "
            f"callback calling back in). Its KV cache and CUDA graphs are shared, so calls cannot overlap: wait for "
            f"the first call, or compile one model per thread with membound.compile(model)")
    try:
        yield
    finally:
        lock.release()


def serial(owner: Any) -> threading.Lock:
    """The lock that makes forward calls on ``owner`` run one at a time."""
    return _lock(owner, "_membound_serial")


def _is_fake(t: Any) -> bool:
    from torch._subclasses.fake_tensor import FakeTensor

    return isinstance(t, FakeTensor) or (isinstance(t, torch.Tensor) and t.device.type == "meta")


@contextlib.contextmanager
def guard_module(fn: Any) -> Iterator[None]:
    """Around a capture of ``fn``: afterwards (even on error) its parameters and buffers are the real
    tensors it held before; a fake one left behind by the tracer is replaced by the original."""
    if not isinstance(fn, torch.nn.Module):
        yield
        return
    before = {name: t for name, t in _tensors(fn) if not _is_fake(t)}
    try:
        yield
    finally:
        for name, t in _tensors(fn):
            if _is_fake(t) and name in before:
                owner, _, leaf = name.rpartition(".")
                module = fn.get_submodule(owner) if owner else fn
                if isinstance(before[name], torch.nn.Parameter):
                    module._parameters[leaf] = before[name]
                else:
                    module._buffers[leaf] = before[name]


def _tensors(module: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    out = list(module.named_parameters(remove_duplicate=False))
    out += [(n, b) for n, b in module.named_buffers(remove_duplicate=False) if b is not None]
    return out
