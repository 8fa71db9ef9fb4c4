"""The static KV cache: state buffers allocated once and reused across ``generate`` calls.

Each cache buffer of the step graph has type ``[B, Hkv, T, D]``. ``StaticKVCache`` owns tensors of a
capacity ``(max_batch, max_len)``; a call with ``B <= max_batch`` and ``len <= max_len`` binds views
``buf[:B]`` (contiguous, no copy) and allocates nothing. It reallocates only when a call needs more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from membound.ir.graph import Graph


class CacheCapacityError(ValueError):
    """A generate call needs more positions than the cache (or the model) can hold."""


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
        return out

    def ensure(self, batch: int, length: int) -> None:
        """Make sure buffers hold ``batch`` rows of ``length`` positions, reallocating only if needed."""
        if batch <= self.max_batch and length <= self.max_len:
            return
        self.max_batch, self.max_len = max(batch, self.max_batch), max(length, self.max_len)
        self.buffers = {}
        for name in self.names():
            t = self.graph.value(name).type
            _, heads, _, dim = t.shape
            self.buffers[name] = torch.zeros(self.max_batch, int(heads), self.max_len, int(dim), dtype=t.dtype,
                                             device=self.device)
        self.allocations += 1

    def views(self, batch: int) -> dict[str, torch.Tensor]:
        """``name -> buf[:batch]``: what the step graph's state values are bound to for this call."""
        return {name: buf[:batch] for name, buf in self.buffers.items()}

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers.values())


def capacity_limit(graph: Graph, max_cache_len: Optional[int]) -> tuple[Optional[int], str]:
    """The most positions a sequence may reach, and what imposes it (for error messages)."""
    table = graph.meta["kv_cache"].get("max_positions")
    limits = []
    if max_cache_len is not None:
        limits.append((max_cache_len, f"max_cache_len={max_cache_len}; raise it with "
                                      f"membound.generate(..., max_cache_len=N)"))
    if table is not None:
        limits.append((table, f"the model's learned position table has {table} rows; it cannot attend further"))
    if not limits:
        return None, ""
    return min(limits, key=lambda x: x[0])
