"""Timing shared by the GPU benches: a function's median time replayed from a CUDA graph."""

from __future__ import annotations

import statistics
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
