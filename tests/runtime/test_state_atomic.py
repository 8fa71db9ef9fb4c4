"""A failed generate (allocation failure, exception mid-call) leaves the compiled model, its KV cache
and the user's module as they were; the cache grows in buckets and says so on the ``membound`` logger.
Reference backend, fp32, CPU; the oracle is eager greedy decoding."""

import logging

import pytest
import torch

import membound
from membound.models import build_model
from membound.runtime import kv_cache


def greedy(model, ids, new):
    """Eager greedy decoding by full recomputation (all rows the same length)."""
    seq = ids
    for _ in range(new):
        seq = torch.cat([seq, model(seq)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return seq


@pytest.fixture(scope="module")
def llama():
    torch.manual_seed(0)
    return build_model("llama-tiny").eval()


@pytest.fixture(scope="module")
def fresh(llama):
    """A compiled llama-tiny with a new, empty KV cache; the step graphs are built once for the module."""
    import dataclasses

    proto = membound.compile(llama, backend="reference")
    membound.generate(proto, torch.randint(3, 256, (1, 3)), 1)
    program = proto._kv_program

    def make():
        compiled = membound.compile(llama, backend="reference")
        compiled._kv_program = dataclasses.replace(program, cache=kv_cache.StaticKVCache(
            program.prefill_graph, program.cache.device), _runner=None, _runner_alloc=-1)
        return compiled
    return make


def _fail_big_allocations(monkeypatch, numel=1 << 20):
    """Every torch.zeros of more than ``numel`` elements raises like an out-of-memory allocation."""
    real = torch.zeros

    def zeros(*size, **kw):
        shape = size[0] if len(size) == 1 and isinstance(size[0], (tuple, list)) else size
        n = 1
        for s in shape:
            n *= int(s)
        if n > numel:
            raise RuntimeError(f"DefaultCPUAllocator: can't allocate memory: you tried to allocate {n * 4} bytes")
        return real(*size, **kw)

    monkeypatch.setattr(kv_cache.torch, "zeros", zeros)


def test_failed_allocation_leaves_the_cache_usable(llama, fresh, monkeypatch):
    compiled = fresh()
    ids = torch.randint(3, 256, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = greedy(llama, ids, 12)
        assert torch.equal(membound.generate(compiled, ids, 12), expected)
        cache = compiled._kv_program.cache
        before = (cache.max_batch, cache.max_len, dict(cache.buffers), cache.allocations)
        with monkeypatch.context() as m:
            _fail_big_allocations(m)
            with pytest.raises(RuntimeError, match="cache is unchanged"):
                membound.generate(compiled, ids, 10**6)
            with pytest.raises(RuntimeError, match="could not allocate the KV cache"):   # a larger batch that fails to allocate
                membound.generate(compiled, ids.repeat(4000, 1), 3)
        assert (cache.max_batch, cache.max_len, cache.buffers, cache.allocations) == before
        assert all(cache.buffers[k] is v for k, v in before[2].items())
        assert torch.equal(membound.generate(compiled, ids, 12), expected)
        # and the batch that failed before works once memory allows
        big = torch.cat([ids, ids.flip(0)])
        assert torch.equal(membound.generate(compiled, big, 5), greedy(llama, big, 5))


def test_bucket_that_does_not_fit_falls_back_to_the_exact_length(fresh, monkeypatch):
    compiled = fresh()
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        membound.generate(compiled, ids, 2)
        cache = compiled._kv_program.cache
        per_position = cache.buffers[next(iter(cache.buffers))][0, :, 0].numel()
        with monkeypatch.context() as m:
            _fail_big_allocations(m, numel=300 * per_position)   # 512 positions do not fit, 300 do
            membound.generate(compiled, torch.randint(3, 256, (1, 290)), 4)
        assert cache.max_len == 294


def test_exception_mid_call_leaves_later_calls_right(llama, fresh):
    compiled = fresh()
    ids = torch.randint(3, 256, (2, 7), generator=torch.Generator().manual_seed(3))
    expected = greedy(llama, ids, 10)

    def stream(tokens):
        stream.calls += 1
        if stream.calls == 4:
            raise KeyboardInterrupt("user stops")
    stream.calls = 0
    with torch.no_grad():
        with pytest.raises(KeyboardInterrupt):
            membound.generate(compiled, ids, 10, stream=stream)
        assert torch.equal(membound.generate(compiled, ids, 10), expected)
        # an exception inside a decode step
        program = compiled._kv_program
        decode = program.decode
        calls = []

        def broken(inputs):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("kernel failed")
            return decode(inputs)
        program.decode = broken
        with pytest.raises(RuntimeError, match="kernel failed"):
            membound.generate(compiled, ids, 10)
        program.decode = decode
        assert torch.equal(membound.generate(compiled, ids, 10), expected)


def test_failed_capture_leaves_the_users_module_as_it_was(llama, monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode

    import membound.api as api

    params = {n: (p, p.detach().clone()) for n, p in llama.named_parameters()}

    def leaky_capture(fn, *args, **kwargs):
        # what a tracer interrupted between swapping parameters out and back looks like
        name, p = list(fn.named_parameters())[3]
        owner, _, leaf = name.rpartition(".")
        with FakeTensorMode() as mode:
            setattr(fn.get_submodule(owner), leaf, torch.nn.Parameter(mode.from_tensor(p)))
        raise RuntimeError("tracing failed")

    compiled = membound.compile(llama, backend="reference")
    monkeypatch.setattr(api, "capture_export", leaky_capture)
    with pytest.raises(RuntimeError, match="tracing failed"):
        compiled(torch.randint(3, 256, (2, 5)))
    for n, p in llama.named_parameters():
        assert p is params[n][0], n
        assert torch.equal(p, params[n][1]), n


def test_cache_grows_in_power_of_two_buckets_and_logs_it(llama, fresh, caplog):
    from membound.runtime.kv_cache import bucket_length

    assert bucket_length(9) == 256 and bucket_length(257) == 512 and bucket_length(300, limit=400) == 400
    compiled = fresh()
    ids = torch.randint(3, 256, (1, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), caplog.at_level(logging.INFO, logger="membound"):
        membound.generate(compiled, ids, 8)
        cache = compiled._kv_program.cache
        assert (cache.allocations, cache.max_len) == (1, 256)
        membound.generate(compiled, ids, 40)                 # longer, within the bucket: no reallocation
        long_prompt = torch.randint(3, 256, (1, 250))
        out = membound.generate(compiled, long_prompt, 9)   # 259 positions: the next bucket
        assert (cache.allocations, cache.max_len) == (2, 512)
    assert torch.equal(out, greedy(llama, long_prompt, 9))
    grew = [r.getMessage() for r in caplog.records if "KV cache" in r.getMessage()]
    assert len(grew) == 2 and "512 positions" in grew[1]


def test_bucket_is_capped_by_the_position_table_and_max_cache_len(fresh):
    gpt2 = build_model("gpt2-tiny").eval()              # 128 learned positions
    compiled = membound.compile(gpt2, backend="reference")
    membound.generate(compiled, torch.randint(3, 256, (1, 5)), 3)
    assert compiled._kv_program.cache.max_len == 128
    llama = fresh()
    membound.generate(llama, torch.randint(3, 256, (1, 5)), 3, max_cache_len=1000)  # reserved in full
    assert llama._kv_program.cache.max_len == 1000
