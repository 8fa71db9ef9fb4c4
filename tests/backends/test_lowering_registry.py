"""The Triton lowering registry (``membound.backends.triton.lowering``): one entry per op, and the lists
the partitioner and the kernel library read are derived from it.

The numerics of every entry run in tests/backends/test_triton_codegen.py (one test takes every float
unary entry from the table, so a new op is tested without a new test line).
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton (other test modules run kernels on CPU)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from membound.backends.triton import lowering as L  # noqa: E402
from membound.ir import parse  # noqa: E402
from membound.ir.ops import all_ops, get_op, ops_with  # noqa: E402


def test_every_elementwise_op_has_a_pointwise_lowering() -> None:
    """A new elementwise op needs its line in lowering.TABLE (else it would run as a torch call)."""
    missing = [name for name, od in all_ops().items() if od.kind == "elementwise"
               and (L.lowering_for(name) is None or L.lowering_for(name).kind != "pointwise")]
    assert not missing, f"add a pointwise(...) line to membound/backends/triton/lowering.py TABLE for {missing}"


def test_every_row_reduction_has_a_row_lowering() -> None:
    missing = [name for name in ops_with("row_reduction") if (L.lowering_for(name) is None
                                                              or L.lowering_for(name).kind != "row")]
    assert not missing, f"add a row(...) line to membound/backends/triton/lowering.py TABLE for {missing}"


def test_views_and_sources_come_from_the_op_traits() -> None:
    for name in ops_with("view"):
        assert L.lowering_for(name).kind == "view", name
    for name in ops_with("source"):
        assert L.lowering_for(name).kind == "source", name
    assert L.lowering_for("matmul") is None  # no entry: a torch call


def test_derived_lists() -> None:
    assert set(L.EMITTED_GATHERS) == {"index", "embedding", "gather"}
    assert set(L.EMITTED_GATHERS) <= ops_with("gather")
    assert set(L.PER_ELEMENT_REDUCTIONS) == {"softmax", "log_softmax", "cumsum", "rms_norm", "layer_norm"}
    assert set(L.ROW_VIEWS) == {"unsqueeze", "squeeze", "expand", "reshape"} and set(L.ROW_VIEWS) <= ops_with("view")
    assert set(L.REINDEXING) == {"cat", "index", "embedding", "gather"}


def test_table_entries_name_registered_ops_once() -> None:
    names = [e.op for e in L.TABLE]
    assert len(names) == len(set(names))
    unknown = [n for n in names if n not in all_ops()]
    assert not unknown, unknown


def test_library_entries_resolve_to_launchers() -> None:
    pytest.importorskip("triton")
    from membound.backends.triton.kernels import LIBRARY

    assert set(LIBRARY) == set(L.library_launchers())
    for op, fn in LIBRARY.items():
        assert callable(fn), op
    for e in L.TABLE:
        if e.static_weight is not None:
            assert "weight" in get_op(e.op).inputs[e.static_weight], (e.op, get_op(e.op).inputs)


def test_an_entry_needs_its_writer_and_a_known_kind() -> None:
    with pytest.raises(ValueError, match="kind 'fused'"):
        L.Lowering("exp", "fused")
    with pytest.raises(ValueError, match="needs a writer"):
        L.Lowering("exp", "pointwise")


@pytest.mark.parametrize("text, kind, reason", [
    ("""graph @t(%x: i64[B, 4]) {
        %y = exp(%x) : f32[B, 4]
        return %y
    }""", "pointwise", None),  # int in, float out: the float lowering applies to the result
    ("""graph @t(%x: i64[B, 4]) {
        %y = neg(%x) : i64[B, 4]
        return %y
    }""", "pointwise", None),
    ("""graph @t(%x: bool[B, 4]) {
        %y = amax(%x) {dims=[-1], keepdim=false} : bool[B]
        return %y
    }""", "call", "no bool row max/min"),
    ("""graph @t(%x: f32[B, 4, 3]) {
        %y = sum(%x) {dims=[1], keepdim=false, dtype=none} : f32[B, 3]
        return %y
    }""", "call", "does not reduce the last dim alone"),
    ("""graph @t(%x: f32[2, 40000]) {
        %y = softmax(%x) {dim=-1, dtype=none} : f32[2, 40000]
        return %y
    }""", "call", "rows of 40000 > 32768"),
    ("""graph @t(%x: f32[B, 4]) {
        %two = constant() {value=7, dtype=i64} : i64[]
        %y = pow(%x, %two) : f32[B, 4]
        return %y
    }""", "call", "the exponent"),
    ("""graph @t(%x: f32[B, 4], %w: f32[5, 4]) {
        %y = linear(%x, %w) : f32[B, 5]
        return %y
    }""", "call", "runs as a library kernel"),
])
def test_classify_and_refusal(text: str, kind: str, reason: str) -> None:
    g = parse(text)
    node = g.nodes[-1]
    assert L.classify(node) == kind
    got = L.refusal(node)
    assert (got is None) if reason is None else (reason in (got or "")), got


def test_unsupported_dtype_is_a_call() -> None:
    g = parse("""graph @t(%x: f32[B, 4]) {
        %c = cast(%x) {dtype=f8e4m3} : f8e4m3[B, 4]
        return %c
    }""")
    assert L.classify(g.nodes[0]) == "call" and "no Triton type" in L.refusal(g.nodes[0])
    assert torch.float8_e4m3fn not in L.TL_DTYPE
