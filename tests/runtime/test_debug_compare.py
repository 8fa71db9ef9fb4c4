"""MEMBOUND_DEBUG=compare (backends/debug_compare.py): the reference backend runs beside the compiled one
and the first IR node whose value diverges beyond the dtype's tolerance is named."""

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton: kernels run in its interpreter on CPU
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

import membound  # noqa: E402
import membound.backends as backends  # noqa: E402
from membound.backends.debug_compare import CompareExecutable, DivergenceError, divergence  # noqa: E402
from membound.backends.reference import ReferenceExecutable  # noqa: E402


def fn(x, w):
    return torch.tanh(x @ w) * 3.0 + x      # matmul, tanh, constant, mul, add


def buggy(op, factor=1.05):
    """A 'backend': the reference interpreter with op ``op`` computing ``factor`` times too much."""
    def compile_graph(graph, backend):
        exe = ReferenceExecutable(graph)
        for node, step in zip(graph.nodes, exe._steps):
            if node.op == op:
                ref = step.ref
                step.ref = lambda *a, _ref=ref, **k: _ref(*a, **k) * factor
        return exe
    return compile_graph


def inputs():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 5, generator=g), torch.randn(5, 5, generator=g)


def test_the_first_diverging_node_is_named():
    graph = membound.compile(fn, backend="reference", example_inputs=inputs()).ir
    compile_fn = buggy("tanh")
    exe = CompareExecutable(graph, compile_fn(graph, "fake"), "fake", compile_fn)
    with pytest.raises(DivergenceError) as info:
        exe(list(inputs()))
    msg = str(info.value)
    assert "the fake backend diverges from the reference backend at output 0" in msg
    assert "first diverging node: %1 = tanh(%0)" in msg            # not the mul or add after it
    assert "tolerance 0.001 (float32)" in msg


def test_agreeing_backends_pass_through():
    graph = membound.compile(fn, backend="reference", example_inputs=inputs()).ir
    compile_fn = buggy("tanh", factor=1.0 + 1e-6)               # within fp32 tolerance
    exe = CompareExecutable(graph, compile_fn(graph, "fake"), "fake", compile_fn)
    torch.testing.assert_close(exe(list(inputs()))[0], fn(*inputs()))
    assert exe.calls_compared == 1


def test_the_environment_variable_wraps_compiled_backends(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("MEMBOUND_DEBUG", "compare")
    monkeypatch.setattr(backends, "_compile_graph", buggy("mul"))   # what "triton" lowers to, broken
    compiled = membound.compile(fn, backend="triton")
    with pytest.raises(DivergenceError, match=r"first diverging node: %3 = mul\(%1, %2\)"):
        compiled(*inputs())
    monkeypatch.delenv("MEMBOUND_DEBUG")
    plain = membound.compile(fn, backend="triton")
    plain(*inputs())                                              # off: not compared, no error
    assert not isinstance(plain.entries[-1].executable, CompareExecutable)


def test_triton_agrees_with_the_reference_under_compare(monkeypatch):
    pytest.importorskip("triton")
    from membound.backends.triton.kernels._launch import interpreter_ready

    if not torch.cuda.is_available() and not interpreter_ready():
        pytest.skip("triton was imported without TRITON_INTERPRET=1 in this process")
    monkeypatch.setenv("MEMBOUND_DEBUG", "compare")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    x, w = (t.to(device) for t in inputs())
    compiled = membound.compile(fn, backend="triton")
    torch.testing.assert_close(compiled(x, w), fn(x, w), rtol=1e-4, atol=1e-4)
    exe = compiled.entries[-1].executable
    assert isinstance(exe, CompareExecutable) and exe.calls_compared == 1


@pytest.mark.parametrize("got, want, bad", [
    (torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 2.0]), "NaN"),
    (torch.tensor([1.0, float("inf")]), torch.tensor([1.0, -float("inf")]), "infinities"),
    (torch.tensor([1, 2]), torch.tensor([1, 3]), "1 of 2 elements differ"),
    (torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([1.0, 2.03], dtype=torch.float16), "float16"),
    (torch.tensor([1.0, 2.0], dtype=torch.float16), torch.tensor([1.0, 2.01], dtype=torch.float16), None),
    (torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0]), None),
])
def test_divergence_per_dtype(got, want, bad):
    why = divergence(got, want)
    assert (why is None) if bad is None else (bad in why), why
