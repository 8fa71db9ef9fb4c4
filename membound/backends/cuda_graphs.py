"""CUDA graphs for static-shape decode steps: capture once per (batch, cache-length bucket), replay after.

A decode step launches a few hundred small kernels; at batch 1 their launch overhead (several µs
each) is as long as the memory traffic itself. A captured ``torch.cuda.CUDAGraph`` replays the whole
step with one launch. Graphs have fixed shapes and fixed addresses, so:

- every input has a **static buffer**; a call copies the new inputs into them and replays;
- one graph per :class:`GraphKey` = (batch size, cache-length bucket). The bucket is a host-known
  upper bound of the filled cache length that the step may bake in (``cached_attention(max_len=)``
  sizes its grid with it); a longer cache moves to the next bucket and a new capture;
- **outputs are copied out by default.** The graph's output tensors are overwritten by the next
  replay; handing them out is how Hugging Face + ``torch.compile(mode="reduce-overhead")`` returns
  logits that silently change under the caller. Here that is impossible unless asked for:
  ``copy_outputs=False`` returns the graph's own buffers, valid until the next replay of the same
  graph (same key), which overwrites them in place.

The step is run ``warmup`` times on a side stream before capture (Triton compiles its kernels and
cuBLAS picks its algorithms outside the capture), then captured, then replayed for the call. So the
step must be idempotent for the same inputs, as an attention decode step is: it rewrites the same cache
slots with the same values. A recurrence's state is not: a step reads it and writes its successor in place,
so three runs of one step would advance it three tokens. Such tensors are passed as ``preserve``: copied
before the warm-up and written back after the capture, so the call's replay starts from the state the
caller left. The graphs of one runner share a memory pool; they must run on one stream,
one after another (never concurrently).

    runner = CUDAGraphRunner(lambda key: make_step(max_len=key.length))
    logits, = runner([ids, positions], length=int(positions.max()) + 1)
"""

from __future__ import annotations

import bisect
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

import torch

log = logging.getLogger("membound")

Executable = Callable[[Sequence[torch.Tensor]], Union[Sequence[torch.Tensor], torch.Tensor]]

# cache-length buckets: powers of two from 256, so at most ~log2(T/256) + 1 captures per batch size
DEFAULT_LENGTH_BUCKETS: tuple[int, ...] = tuple(256 << i for i in range(11))  # 256 .. 262144


@dataclass(frozen=True, order=True)
class GraphKey:
    """Which graph serves a call: the batch size and the cache-length bucket (an upper bound)."""

    batch: int
    length: int


def length_bucket(length: int, buckets: Sequence[int]) -> int:
    """The smallest bucket >= ``length`` (buckets sorted ascending)."""
    if length < 0:
        raise ValueError(f"cuda graphs: cache length must be >= 0, got {length}")
    i = bisect.bisect_left(buckets, length)
    if i == len(buckets):
        raise ValueError(f"cuda graphs: cache length {length} is past the largest bucket {buckets[-1]}; pass "
                         f"length_buckets reaching the cache capacity")
    return int(buckets[i])


def _as_list(outputs: Union[Sequence[torch.Tensor], torch.Tensor], what: str) -> list[torch.Tensor]:
    outs = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
    for i, t in enumerate(outs):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"cuda graphs: {what} output {i} is {type(t).__name__}; a step returns tensors")
    return outs


class CapturedGraph:
    """``fn`` captured into one CUDA graph at the shapes of ``example_inputs``.

    ``__call__(inputs)`` copies ``inputs`` into the static buffers, replays, and returns the outputs
    (clones unless ``copy_outputs=False``). Inputs must match the example's shapes, dtypes and device.
    ``constant_inputs``: positions of inputs a caller passes again unchanged from call to call (generate's
    row-index input): copied only when they are another tensor than last time or torch changed it in place
    since (its version counter), a copy kernel less per replay. The graph holds the last one it copied.
    ``preserve``: tensors the step updates from their own value (a recurrence's state, read and written in place):
    restored after the warm-up runs and the capture, which would otherwise have advanced them.
    """

    def __init__(self, fn: Executable, example_inputs: Sequence[torch.Tensor], *, warmup: int = 2,
                 pool: Optional[Any] = None, copy_outputs: bool = True,
                 constant_inputs: Sequence[int] = (), preserve: Sequence[torch.Tensor] = ()) -> None:
        if not example_inputs:
            raise ValueError("cuda graphs: a step needs at least one input tensor (it sets the device)")
        device = example_inputs[0].device
        if device.type != "cuda":
            raise ValueError(f"cuda graphs: inputs are on {device}; CUDA graphs need CUDA tensors "
                             f"(on CPU call the step directly)")
        self.fn = fn
        self.copy_outputs = copy_outputs
        self.device = device
        self.constant_inputs = frozenset(int(i) for i in constant_inputs)
        self._held: dict[int, tuple[torch.Tensor, int]] = {}  # constant input -> (the tensor copied, its version)
        # static input buffers: the graph reads these addresses on every replay
        self.static_inputs = [t.detach().clone() for t in example_inputs]
        t0 = time.perf_counter()
        saved = [t.detach().clone() for t in preserve]  # what the warm-up runs overwrite
        stream = torch.cuda.Stream(device=device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # compile kernels, pick cuBLAS algorithms, outside the capture
                _as_list(fn(self.static_inputs), "warm-up")
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        t1 = time.perf_counter()
        self.graph = torch.cuda.CUDAGraph()
        # captured on the warm-up stream: per-stream state the warm-up made (the split kernels' arrival
        # counters, kernels/_launch.py) is the state the graph bakes in
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.static_outputs = _as_list(fn(self.static_inputs), "captured")
        for t, before in zip(preserve, saved):
            t.copy_(before)
        self.replays = 0
        # host seconds spent warming up and capturing (logs, and benches/cache_growth.py's breakdown)
        self.warmup_s, self.capture_s = t1 - t0, time.perf_counter() - t1

    def _check(self, inputs: Sequence[torch.Tensor]) -> None:
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"cuda graphs: the graph was captured with {len(self.static_inputs)} inputs, got "
                             f"{len(inputs)}")
        for i, (t, s) in enumerate(zip(inputs, self.static_inputs)):
            if t.shape != s.shape or t.dtype != s.dtype or t.device != s.device:
                raise ValueError(f"cuda graphs: input {i} is {tuple(t.shape)} {t.dtype} on {t.device}; the graph was "
                                 f"captured for {tuple(s.shape)} {s.dtype} on {s.device} (a new shape needs a new key)")

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self._check(inputs)
        for i, (t, s) in enumerate(zip(inputs, self.static_inputs)):
            if t is s:
                continue
            if i in self.constant_inputs:
                held = self._held.get(i)
                if held is not None and held[0] is t and held[1] == t._version:
                    continue  # the static buffer already holds it
                self._held[i] = (t, t._version)
            s.copy_(t, non_blocking=True)
        self.graph.replay()
        self.replays += 1
        if not self.copy_outputs:
            return list(self.static_outputs)  # valid until this graph's next replay
        return [t.clone() for t in self.static_outputs]


class CUDAGraphRunner:
    """One :class:`CapturedGraph` per :class:`GraphKey`, captured on first use.

    ``build(key)`` returns the step for that key (e.g. one that passes ``max_len=key.length`` to
    ``cached_attention``). ``batch_of(inputs)`` gives the batch size (default: dim 0 of the first
    input). ``capture`` makes the graph (tests pass a fake to check the keying on CPU).
    """

    def __init__(self, build: Callable[[GraphKey], Executable], *,
                 length_buckets: Sequence[int] = DEFAULT_LENGTH_BUCKETS, copy_outputs: bool = True,
                 warmup: int = 2, batch_of: Optional[Callable[[Sequence[torch.Tensor]], int]] = None,
                 capture: Callable[..., CapturedGraph] = CapturedGraph, captures: Optional[list] = None,
                 constant_inputs: Sequence[int] = ()) -> None:
        buckets = sorted(int(b) for b in length_buckets)
        if not buckets or buckets[0] <= 0 or len(set(buckets)) != len(buckets):
            raise ValueError(f"cuda graphs: length_buckets must be distinct positive ints, got {list(length_buckets)}")
        self.build = build
        self.length_buckets = tuple(buckets)
        self.copy_outputs = copy_outputs
        self.warmup = warmup
        self.batch_of = batch_of or (lambda inputs: int(inputs[0].shape[0]) if inputs[0].dim() else 1)
        self.capture = capture
        self.constant_inputs = tuple(constant_inputs)  # CapturedGraph's: copied only when they change
        self.graphs: dict[GraphKey, CapturedGraph] = {}
        # one entry per capture (batch, length bucket, host seconds of warm-up and capture); a caller may pass
        # its own list to keep the record across runners (KVProgram: a new runner per cache allocation)
        self.captures: list = [] if captures is None else captures
        self._pool: Optional[Any] = None

    def key_for(self, inputs: Sequence[torch.Tensor], length: int) -> GraphKey:
        """The key of a call: its batch size and the bucket of ``length`` (the filled cache length)."""
        if not inputs:
            raise ValueError("cuda graphs: a step needs at least one input tensor")
        return GraphKey(self.batch_of(inputs), length_bucket(length, self.length_buckets))

    def _pool_handle(self) -> Optional[Any]:
        if self._pool is None and torch.cuda.is_available():
            self._pool = torch.cuda.graph_pool_handle()
        return self._pool

    def __call__(self, inputs: Sequence[torch.Tensor], length: int,
                 preserve: Sequence[torch.Tensor] = ()) -> list[torch.Tensor]:
        """Run the step for ``inputs`` with a filled cache length of ``length`` (capturing if new). ``preserve``:
        the tensors a capture must leave as they were (:class:`CapturedGraph`), the step's recurrent states."""
        key = self.key_for(inputs, length)
        graph = self.graphs.get(key)
        if graph is None:
            options: dict[str, Any] = dict(constant_inputs=self.constant_inputs) if self.constant_inputs else {}
            if preserve:
                options["preserve"] = list(preserve)
            graph = self.capture(self.build(key), inputs, warmup=self.warmup, pool=self._pool_handle(),
                                 copy_outputs=self.copy_outputs, **options)
            record = {"batch": key.batch, "length": key.length, "warmup_s": getattr(graph, "warmup_s", None),
                      "capture_s": getattr(graph, "capture_s", None)}
            self.captures.append(record)
            log.info("membound: captured a CUDA graph for batch %d, cache length <= %d (%d warm-up runs %.1f ms, "
                     "capture %.1f ms)", key.batch, key.length, self.warmup, 1e3 * (record["warmup_s"] or 0.0),
                     1e3 * (record["capture_s"] or 0.0))
            self.graphs[key] = graph
        return graph(inputs)
