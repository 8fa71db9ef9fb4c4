"""The static KV cache: state buffers allocated once and reused across ``generate`` calls.

Each cache buffer of the step graph has type ``[B, Hkv, T, D]``. ``StaticKVCache`` owns tensors of a
capacity ``(max_batch, max_len)``; a call with ``B <= max_batch`` and ``len <= max_len`` binds views
``buf[:B]`` (contiguous, no copy) and allocates nothing. The ring caches of sliding-window layers
(``meta["kv_cache"]["rings"]``: their type has the window, an int, where the others have ``T``) are
allocated at the window's size and never grow.

**Capacity grows in buckets.** A call that needs more positions than the cache holds gets the next
power of two (at least ``MIN_BUCKET``), capped by the model's limit (a learned position table, or the
caller's ``max_cache_len``, which is reserved in full when given). So a run of ever longer ``generate``
calls reallocates -- and re-captures its CUDA graphs, which bake in the buffers' addresses -- about
``log2`` times, not on every call. When the bucket does not fit in memory the exact length is tried.

**Growth is atomic**: the new buffers are allocated first and swapped in only when every one of
them exists; a failed allocation raises ``CacheAllocationError`` and leaves the cache as it was.
Every reallocation is logged on the ``membound`` logger.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from math import prod
from typing import Optional

import torch

from membound.ir.graph import Graph

log = logging.getLogger("membound")

MIN_BUCKET = 256  # the smallest capacity: short calls share one allocation (and one CUDA graph per batch)


class CacheCapacityError(ValueError):
    """A generate call needs more positions than the cache (or the model) can hold."""


class CacheAllocationError(RuntimeError):
    """The KV cache could not be grown (out of memory); the cache is unchanged and still usable."""


def bucket_length(needed: int, limit: Optional[int] = None) -> int:
    """The capacity to allocate for ``needed`` positions: the next power of two >= ``MIN_BUCKET``,
    at most ``limit`` (never below ``needed``)."""
    cap = max(MIN_BUCKET, 1 << max(0, needed - 1).bit_length())
    if limit is not None:
        cap = min(cap, limit)
    return max(cap, needed)


@dataclass
class StaticKVCache:
    """KV buffers for the state values named in ``graph.meta["kv_cache"]["caches"]``."""

    graph: Graph
    device: torch.device
    max_batch: int = 0
    max_len: int = 0
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    allocations: int = 0   # how often buffers were (re)allocated: tests assert reuse

    def names(self) -> list[str]:
        out = []
        for k, v in self.graph.meta["kv_cache"]["caches"]:
            out += [k, v]
        meta = self.graph.meta["kv_cache"]
        return out + list(meta.get("conv_states", {})) + list(meta.get("scan_states", []))

    def ensure(self, batch: int, length: int, limit: Optional[int] = None, reserve: Optional[int] = None) -> bool:
        """Make sure buffers hold ``batch`` rows of ``length`` positions; True when they were reallocated.

        ``limit`` caps the bucket (the model's position limit); ``reserve`` asks for that capacity
        outright (the caller's ``max_cache_len``). Allocates before it swaps: on failure nothing changed.
        """
        if batch <= self.max_batch and length <= self.max_len:
            return False
        new_batch = max(batch, self.max_batch)
        wanted = max(self.max_len, reserve if reserve is not None and reserve >= length else
                     bucket_length(length, limit))
        tries = [wanted] if wanted == max(length, self.max_len) else [wanted, max(length, self.max_len)]
        error: Optional[BaseException] = None
        for cap in tries:
            try:
                buffers = self._allocate(new_batch, cap)
            except (torch.OutOfMemoryError, RuntimeError, MemoryError) as e:  # CPU OOM is a RuntimeError
                error = e
                continue
            old = (self.max_batch, self.max_len)
            # the swap: nothing above changed the cache
            self.buffers, self.max_batch, self.max_len = buffers, new_batch, cap
            self.allocations += 1
            log.info("membound: KV cache (re)allocated to batch %d x %d positions (%s; was %d x %d), "
                     "CUDA graphs of the decode step will be re-captured", new_batch, cap,
                     _si_bytes(self.nbytes()), *old)
            return True
        per = self._bytes_per_slot()
        raise CacheAllocationError(
            f"could not allocate the KV cache for batch {new_batch} x {tries[-1]} positions "
            f"({_si_bytes(per * new_batch * tries[-1])} on {self.device}): {type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else ''}. The cache is unchanged (batch "
            f"{self.max_batch} x {self.max_len} positions); ask for fewer new tokens or a smaller batch"
        ) from error

    def _allocate(self, batch: int, length: int) -> dict[str, torch.Tensor]:
        buffers = {}
        for name in self.names():
            t = self.graph.value(name).type
            # [B, Hkv, T, D] (a ring, of a sliding-window layer or a convolution's state, holds its slots whatever
            # the length: an int where the others have T)
            shape = [batch] + [int(d) if d.is_Integer else length for d in t.shape[1:]]
            buffers[name] = torch.zeros(shape, dtype=t.dtype, device=self.device)
        return buffers

    def _bytes_per_slot(self) -> int:
        """Bytes per batch row and position of the caches that grow with the length (rings do not)."""
        total = 0
        for name in self.names():
            t = self.graph.value(name).type
            if not all(d.is_Integer for d in t.shape[1:]):
                total += prod(int(d) for d in t.shape[1:] if d.is_Integer) * \
                    torch.empty((), dtype=t.dtype).element_size()
        return total

    def views(self, batch: int) -> dict[str, torch.Tensor]:
        """``name -> buf[:batch]``: what the step graph's state values are bound to for this call."""
        return {name: buf[:batch] for name, buf in self.buffers.items()}

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


def _si_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def capacity_limit(graph: Graph, max_cache_len: Optional[int]) -> tuple[Optional[int], str]:
    """The most positions a sequence may reach, and what imposes it (for error messages)."""
    table = graph.meta["kv_cache"].get("max_positions")
    limits = []
    if max_cache_len is not None:
        limits.append((max_cache_len, f"max_cache_len={max_cache_len}; raise it with "
                                      f"membound.generate(..., max_cache_len=N)"))
    if table is not None:
        limits.append((table, f"the model's learned position table has {table} rows; it cannot attend further"))
    captured = graph.meta["kv_cache"].get("captured_positions")
    if captured is not None:
        limits.append((captured, f"torch.export captured the model for at most {captured} positions (its code takes "
                                 f"another branch on longer sequences, which the cached decode would not follow); "
                                 f"generate(..., kv_cache=False) recomputes every step instead"))
    if not limits:
        return None, ""
    return min(limits, key=lambda x: x[0])
