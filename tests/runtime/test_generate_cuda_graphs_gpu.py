"""generate(cuda_graphs=True) on the GPU: crossing a cache-length bucket, growing the cache, coming back
to a shorter call -- the same tokens as the non-graph path, and captures only when the cache grows
(one graph per batch size per capacity bucket, runtime/kv_cache.py)."""

import logging

import pytest
import torch

import membound
from membound.models import build_model


@pytest.mark.gpu
def test_cuda_graph_decode_across_a_bucket_equals_the_non_graph_path(caplog):
    torch.manual_seed(0)
    model = build_model("llama-tiny").cuda().eval()
    graphs = membound.compile(model, backend="triton", cuda_graphs=True)
    plain = membound.compile(model, backend="triton", cuda_graphs=False)
    g = torch.Generator(device="cuda").manual_seed(0)
    ids = torch.randint(3, 256, (2, 200), device="cuda", generator=g)
    with caplog.at_level(logging.INFO, logger="membound"):
        # 200 + 100 positions: the filled length crosses 256 inside one capacity bucket (512)
        out = membound.generate(graphs, ids, 100)
        assert torch.equal(out, membound.generate(plain, ids, 100))
        program = graphs._kv_program
        assert (program.cache.allocations, program.cache.max_len) == (1, 512)
        runner = program._runner
        assert len(runner.graphs) == 1                       # one capture serves the whole call
        # longer than any call before, still inside the bucket: no reallocation, no capture
        assert torch.equal(membound.generate(graphs, ids, 250), membound.generate(plain, ids, 250))
        assert program._runner is runner and len(runner.graphs) == 1
        # past the bucket: the cache grows once (atomically), graphs are captured again, lazily
        long = torch.randint(3, 256, (2, 500), device="cuda", generator=g)
        assert torch.equal(membound.generate(graphs, long, 30), membound.generate(plain, long, 30))
        assert (program.cache.allocations, program.cache.max_len) == (2, 1024)
        # a shorter call and another batch size afterwards: served by the grown cache
        assert torch.equal(membound.generate(graphs, ids, 20), membound.generate(plain, ids, 20))
        one = ids[:1, :37]
        assert torch.equal(membound.generate(graphs, one, 20), membound.generate(plain, one, 20))
        assert program.cache.allocations == 2 and len(program._runner.graphs) == 2   # batch 2 and batch 1
    messages = [r.getMessage() for r in caplog.records]
    assert sum("captured a CUDA graph" in m for m in messages) == 3
    assert sum("KV cache (re)allocated" in m for m in messages) == 4   # twice for each of the two models
