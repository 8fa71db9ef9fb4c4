"""The threading contract (membound/runtime/concurrency.py): captures are serialised and never leave
fake tensors in the user's module; concurrent generate calls on one compiled model are refused."""

import threading

import pytest
import torch

import membound
from membound.models import build_model


def _real(model):
    from torch._subclasses.fake_tensor import FakeTensor

    return [n for n, t in list(model.named_parameters()) + list(model.named_buffers())
            if isinstance(t, FakeTensor) or t.device.type == "meta"]


def _threads(n, target):
    errors, barrier = [], threading.Barrier(n)

    def run(i):
        barrier.wait()
        try:
            target(i)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return errors


def test_two_threads_making_the_first_call_capture_once_and_leave_real_tensors():
    torch.manual_seed(0)
    model = build_model("llama-tiny").eval()
    ids = torch.randint(3, 256, (2, 7))
    with torch.no_grad():
        expected = model(ids)
    compiled = membound.compile(model, backend="reference")
    outs = [None, None]

    def call(i):
        outs[i] = compiled(ids)
    errors = _threads(2, call)
    assert errors == []
    assert _real(model) == []
    assert compiled.num_captures == 1                     # the second thread used the first one's capture
    for out in outs:
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


def test_concurrent_generate_on_one_compiled_model_is_refused():
    model = build_model("llama-tiny").eval()
    compiled = membound.compile(model, backend="reference")
    ids = torch.randint(3, 256, (1, 5), generator=torch.Generator().manual_seed(1))
    expected = membound.generate(compiled, ids, 6)      # builds the program before the race
    inside, release = threading.Event(), threading.Event()
    results = {}

    def slow_stream(tokens):
        inside.set()
        release.wait(timeout=60)

    def first():
        results["first"] = membound.generate(compiled, ids, 6, stream=slow_stream)

    t = threading.Thread(target=first)
    t.start()
    assert inside.wait(timeout=60)
    try:
        with pytest.raises(RuntimeError, match="another generate call is running"):
            membound.generate(compiled, ids, 6)
        with pytest.raises(RuntimeError, match="another generate call"):
            membound.generate(compiled, ids, 6, kv_cache=False)
    finally:
        release.set()
        t.join()
    assert torch.equal(results["first"], expected)
    assert torch.equal(membound.generate(compiled, ids, 6), expected)   # and usable afterwards


def test_generate_called_back_from_its_own_stream_is_refused():
    compiled = membound.compile(build_model("llama-tiny").eval(), backend="reference")
    ids = torch.randint(3, 256, (1, 4))

    def reenter(tokens):
        membound.generate(compiled, ids, 2)
    with pytest.raises(RuntimeError, match="another generate call"):
        membound.generate(compiled, ids, 3, stream=reenter)


@pytest.mark.gpu
def test_split_counters_are_per_stream():
    from membound.backends.triton.kernels._launch import split_counters

    dev = torch.device("cuda")
    default = split_counters(dev, 4)
    side = torch.cuda.Stream(device=dev)
    with torch.cuda.stream(side):
        other = split_counters(dev, 4)
        assert split_counters(dev, 8) is other
    assert other.data_ptr() != default.data_ptr()      # two streams never count into one buffer
    assert split_counters(dev, 4) is default
