"""CUDA-graph runner: bucketing and keying (CPU, with a fake capture), capture/replay and output
ownership (GPU), and a decode step of library kernels replayed from graphs against eager torch."""

from __future__ import annotations

from typing import Any, Sequence

import pytest
import torch

from membound.backends.cuda_graphs import (
    DEFAULT_LENGTH_BUCKETS,
    CapturedGraph,
    CUDAGraphRunner,
    GraphKey,
    length_bucket,
)

# ---------------------------------------------------------------------------------------------
# CPU: buckets and keys
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length,bucket", [(0, 256), (1, 256), (256, 256), (257, 512), (4097, 8192)])
def test_length_bucket_is_the_smallest_bucket_that_fits(length: int, bucket: int) -> None:
    assert length_bucket(length, DEFAULT_LENGTH_BUCKETS) == bucket


def test_length_past_the_last_bucket_is_an_error() -> None:
    with pytest.raises(ValueError, match="cache length 1025 is past the largest bucket 1024"):
        length_bucket(1025, (256, 1024))


class FakeGraph:
    """Stands in for a capture on CPU: records what it was built with and runs the step eagerly."""

    def __init__(self, fn: Any, inputs: Sequence[torch.Tensor], **options: Any) -> None:
        self.fn, self.shapes, self.options, self.calls = fn, [t.shape for t in inputs], options, 0

    def __call__(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        self.calls += 1
        return list(self.fn(inputs))


def test_one_graph_per_batch_and_length_bucket() -> None:
    built: list[GraphKey] = []

    def build(key: GraphKey):
        built.append(key)
        return lambda inputs: [inputs[0] * key.length]

    runner = CUDAGraphRunner(build, length_buckets=(16, 64, 32), capture=FakeGraph)
    x1, x3 = torch.full((1, 2), 3.0), torch.full((3, 2), 5.0)
    assert runner([x1], length=5)[0].tolist() == [[48.0, 48.0]]     # bucket 16
    runner([x1], length=16)                                         # same key: replayed, not rebuilt
    runner([x1], length=17)                                         # next bucket (32; buckets are sorted)
    runner([x3], length=17)                                         # another batch size
    assert built == [GraphKey(1, 16), GraphKey(1, 32), GraphKey(3, 32)]
    assert runner.graphs[GraphKey(1, 16)].calls == 2
    assert runner.graphs[GraphKey(3, 32)].options == {"warmup": 2, "pool": runner._pool, "copy_outputs": True}
    # one record per capture, none per replay (a fake graph has no host timings)
    assert [(c["batch"], c["length"]) for c in runner.captures] == [(1, 16), (1, 32), (3, 32)]
    assert all(c["warmup_s"] is None and c["capture_s"] is None for c in runner.captures)


def test_a_runner_records_its_captures_into_the_callers_list() -> None:
    """KVProgram makes a new runner per cache allocation and passes one list, so the record outlives them."""
    record: list = []
    for _ in range(2):
        runner = CUDAGraphRunner(lambda key: lambda inputs: [inputs[0]], length_buckets=(8,), capture=FakeGraph,
                                 captures=record)
        runner([torch.ones(1, 2)], length=3)
        runner([torch.ones(1, 2)], length=4)
        assert runner.captures is record
    assert [(c["batch"], c["length"]) for c in record] == [(1, 8), (1, 8)]


def test_batch_of_picks_the_batch_dim() -> None:
    runner = CUDAGraphRunner(lambda key: lambda inputs: [inputs[0]], batch_of=lambda inputs: inputs[0].shape[1],
                             capture=FakeGraph)
    assert runner.key_for([torch.ones(1, 7)], 300) == GraphKey(7, 512)


def test_bad_buckets_and_cpu_capture_are_errors() -> None:
    with pytest.raises(ValueError, match="length_buckets must be distinct positive ints"):
        CUDAGraphRunner(lambda key: None, length_buckets=(0, 8))
    with pytest.raises(ValueError, match="CUDA graphs need CUDA tensors"):
        CapturedGraph(lambda inputs: [inputs[0] + 1], [torch.ones(2)])


# ---------------------------------------------------------------------------------------------
# GPU: capture, replay, output ownership
# ---------------------------------------------------------------------------------------------
def _step(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    x, = inputs
    return [x * 2 + 1, x.sum(dim=-1)]


@pytest.mark.gpu
def test_replay_matches_eager_and_outputs_are_not_aliased() -> None:
    g = CapturedGraph(_step, [torch.randn(3, 5, device="cuda")])
    a, b = torch.randn(3, 5, device="cuda"), torch.randn(3, 5, device="cuda")
    first = g([a])
    second = g([b])
    torch.testing.assert_close(first[0], a * 2 + 1)  # the first result survived the second replay
    torch.testing.assert_close(second[1], b.sum(-1))
    assert first[0].data_ptr() != g.static_outputs[0].data_ptr()


@pytest.mark.gpu
def test_copy_outputs_false_returns_the_graph_buffers() -> None:
    g = CapturedGraph(_step, [torch.randn(3, 5, device="cuda")], copy_outputs=False)
    a, b = torch.randn(3, 5, device="cuda"), torch.randn(3, 5, device="cuda")
    first = g([a])
    g([b])
    torch.testing.assert_close(first[0], b * 2 + 1)  # documented: valid until the next replay
    with pytest.raises(ValueError, match=r"input 0 is \(2, 5\).*captured for \(3, 5\)"):
        g([torch.randn(2, 5, device="cuda")])


def test_constant_inputs_reach_the_capture() -> None:
    runner = CUDAGraphRunner(lambda key: lambda inputs: [inputs[0] + inputs[1]], length_buckets=(8,),
                             capture=FakeGraph, constant_inputs=(1,))
    runner([torch.ones(2, 3), torch.zeros(2, 3)], length=4)
    (graph,) = runner.graphs.values()
    assert graph.options["constant_inputs"] == (1,)


@pytest.mark.gpu
def test_a_constant_input_is_copied_only_when_it_changes() -> None:
    """The same tensor again: not copied (the static buffer holds it); changed in place by torch (its version
    moves) or another tensor: copied. Each replay's output shows which value the graph read."""
    def add(inputs):
        return [inputs[0] + inputs[1]]

    x, c = torch.ones(2, 3, device="cuda"), torch.zeros(2, 3, device="cuda")
    g = CapturedGraph(add, [x, c], constant_inputs=(1,))
    torch.testing.assert_close(g([x, c])[0], x)
    g.static_inputs[1].fill_(7.0)  # a stale buffer would show here: the same c again is not copied
    torch.testing.assert_close(g([x, c])[0], x + 7.0)
    c.add_(2.0)  # in place: a new version, copied
    torch.testing.assert_close(g([x, c])[0], x + 2.0)
    d = torch.full((2, 3), 5.0, device="cuda")
    torch.testing.assert_close(g([x, d])[0], x + 5.0)


@pytest.mark.gpu
def test_decode_steps_of_library_kernels_replay_correctly() -> None:
    """cache_write + cached_attention(max_len=bucket) captured per bucket; cache state carries over."""
    from membound.backends.triton.kernels import cache_write, cached_attention
    from membound.ir import get_op

    b, hq, hkv, cap, d = 2, 8, 2, 80, 64
    gen = torch.Generator(device="cuda").manual_seed(0)
    kc = torch.zeros(b, hkv, cap, d, device="cuda", dtype=torch.bfloat16)
    vc = torch.zeros_like(kc)
    ref_k, ref_v = kc.clone(), vc.clone()

    def build(key: GraphKey):
        def step(inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
            q, k, v, pos = inputs
            cache_write(kc, k, pos)
            cache_write(vc, v, pos)
            return [cached_attention(q, kc, vc, pos, max_len=key.length)]
        return step

    runner = CUDAGraphRunner(build, length_buckets=(16, 32, 64, 80))
    attend = get_op("cached_attention").reference
    for t in range(40):  # crosses the 16 and 32 buckets
        q = torch.randn(b, hq, 1, d, device="cuda", generator=gen).bfloat16()
        k = torch.randn(b, hkv, 1, d, device="cuda", generator=gen).bfloat16()
        v = torch.randn(b, hkv, 1, d, device="cuda", generator=gen).bfloat16()
        pos = torch.tensor([[t], [max(0, t - 3)]], device="cuda")
        out, = runner([q, k, v, pos], length=t + 1)
        get_op("cache_write").reference(ref_k, k, pos, dim=2)
        get_op("cache_write").reference(ref_v, v, pos, dim=2)
        want = attend(q.float(), ref_k.float(), ref_v.float(), pos, scale=None)
        torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=2e-2)
    assert sorted(runner.graphs) == [GraphKey(2, 16), GraphKey(2, 32), GraphKey(2, 64)]


def test_preserve_reaches_the_capture_only_when_given() -> None:
    """A recurrence's states (``preserve``) go to the capture, which restores them after its warm-up runs; a call
    replaying a graph already captured passes them nowhere."""
    runner = CUDAGraphRunner(lambda key: lambda inputs: [inputs[0]], length_buckets=(8,), capture=FakeGraph)
    state = torch.zeros(3)
    runner([torch.ones(1, 2)], length=3, preserve=[state])
    (graph,) = runner.graphs.values()
    assert graph.options["preserve"] == [state]
    runner([torch.ones(1, 2)], length=4, preserve=[state])           # replayed: the same graph, not rebuilt
    assert list(runner.graphs.values()) == [graph] and graph.calls == 2
    other = CUDAGraphRunner(lambda key: lambda inputs: [inputs[0]], length_buckets=(8,), capture=FakeGraph)
    other([torch.ones(2, 2)], length=3)
    assert "preserve" not in next(iter(other.graphs.values())).options
