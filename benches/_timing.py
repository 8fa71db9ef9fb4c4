"""Timing shared by the GPU benches: a function's median time replayed from a CUDA graph; interleaved pairs of calls
(a decode step taken as the difference of a long and a short call)."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable

import torch


def graph_time(fn: Callable[[], Any], replays: int = 10) -> float:
    """Median seconds of one ``fn()`` replayed from a CUDA graph captured on the stream it was warmed up on
    (split launches count into per-stream arrival counters that must exist before a capture on that stream:
    ``kernels/_launch.split_counters``; ``triton.testing.do_bench_cudagraph`` captures on another stream)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(3):
            fn()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            fn()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        times = []
        for _ in range(replays):
            start.record()
            graph.replay()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) * 1e-3)
    torch.cuda.current_stream().wait_stream(stream)
    return statistics.median(times)


def paired_calls(full: Callable[[], Any], half: Callable[[], Any], reps: int, min_s: float, sync: Callable[[], None],
                 most: int) -> tuple[list[float], list[float]]:
    """Seconds of ``full()`` and ``half()`` (calls of N and N/2 tokens), interleaved: at least ``reps`` pairs and
    ``min_s`` seconds of them, ``most`` pairs at most. A fast contender's prefill varies by milliseconds on a busy
    host; over N/2 tokens that is a tenth of a step, and medians of the full and the half calls taken apart once put
    a 1.24B b1 step at 153% of bandwidth (session 28, H100): the step is taken pair by pair, over many pairs."""
    fulls: list[float] = []
    halves: list[float] = []
    t0 = time.perf_counter()
    while len(fulls) < most and (len(fulls) < reps or time.perf_counter() - t0 < min_s):
        for fn, into in ((full, fulls), (half, halves)):
            sync()
            t = time.perf_counter()
            fn()
            sync()
            into.append(time.perf_counter() - t)
    return fulls, halves
