"""Printer/parser round trip, verifier and reference-backend basics on hand-built graphs."""

import pytest
import torch

from membound.backends.reference import ShapeMismatchError, run_graph
from membound.ir import (
    B,
    Graph,
    ParseError,
    S,
    TensorType,
    VerificationError,
    parse,
    print_graph,
    structurally_equal,
    verify,
)
from membound.ir.graph import Node


def small_graph() -> Graph:
    g = Graph("tiny")
    x = g.add_input("x", TensorType(torch.float32, [B, S, 8]))
    w = g.add_param("layers.0.w", TensorType(torch.float32, [6, 8]), torch.randn(6, 8))
    h = g.call("linear", x, w)
    eps = g.call("constant", value=1e-05, dtype=torch.float32)
    h = g.call("add", h, eps)
    h = g.call("softmax", h, dim=-1)
    r = g.call("reshape", h, shape=(B * S, 6))
    vals, idx = g.call_multi("topk", r, k=2)
    g.set_outputs([vals, idx, h])
    return g


def test_round_trip_is_structurally_equal():
    g = small_graph()
    text = print_graph(g)
    g2 = parse(text)
    assert structurally_equal(g, g2), structurally_equal(g, g2, explain=True)
    assert print_graph(g2) == text  # printing is a fixed point too
    verify(g2)


def test_text_form_is_readable():
    text = print_graph(small_graph())
    assert text.startswith("graph @tiny(%x: f32[B, S, 8]) params(%layers.0.w: f32[6, 8]) {")
    assert "= linear(%x, %layers.0.w) : f32[B, S, 6]" in text
    assert "{value=1e-05, dtype=f32} : f32[]" in text
    assert "shape=[B*S, 6]" in text
    assert ", %" in text.splitlines()[-3] and "topk" in text  # two results on one line


@pytest.mark.parametrize("value", [0.1, -2.5, 1e-30, 3.0, float("inf"), 7, True, -1])
def test_constant_values_round_trip_exactly(value):
    g = Graph("c")
    dtype = torch.bool if isinstance(value, bool) else torch.float32
    g.set_outputs([g.call("constant", value=value, dtype=dtype)])
    g2 = parse(print_graph(g))
    assert g2.nodes[0].attrs["value"] == value and type(g2.nodes[0].attrs["value"]) is type(value)


def test_symbolic_attrs_round_trip():
    g = Graph("a")
    g.set_outputs([g.call("arange", end=2 * B * S - 1)])
    g2 = parse(print_graph(g))
    assert g2.nodes[0].attrs["end"] == 2 * B * S - 1
    assert str(g2.outputs[0].type) == "i64[2*B*S - 1]"


def test_structural_difference_is_reported():
    g1, g2 = small_graph(), small_graph()
    g2.nodes[3].attrs["dim"] = 0
    assert not structurally_equal(g1, g2)
    assert "softmax" in structurally_equal(g1, g2, explain=True)


@pytest.mark.parametrize("text, message", [
    ("graph @g(%x: f32[4]) {\n  %0 = frobnicate(%x) : f32[4]\n  return %0\n}", "unknown op 'frobnicate'"),
    ("graph @g(%x: f32[4]) {\n  %0 = neg(%y) : f32[4]\n  return %0\n}", "%y is used before it is defined"),
    ("graph @g(%x: q7[4]) {\n  return %x\n}", "unknown dtype 'q7'"),
    ("graph @g(%x: f32[4]) {\n  %0 = neg(%x) {bogus=1} : f32[4]\n  return %0\n}", "no attribute"),
])
def test_parse_errors_name_the_problem_and_line(text, message):
    with pytest.raises(ParseError, match=message) as info:
        parse(text)
    assert "line " in str(info.value)


def test_verifier_rejects_type_disagreeing_with_rule():
    g = parse("graph @g(%x: f32[B, 4]) {\n  %0 = neg(%x) : f32[B, 5]\n  return %0\n}")
    with pytest.raises(VerificationError, match="disagree with the type rule"):
        verify(g)


def test_verifier_rejects_use_before_definition():
    g = parse("graph @g(%x: f32[4]) {\n  %0 = neg(%x) : f32[4]\n  %1 = exp(%0) : f32[4]\n  return %1\n}")
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="not defined before use"):
        verify(g)


def test_verifier_rejects_dangling_output():
    g = parse("graph @g(%x: f32[4]) {\n  %0 = neg(%x) : f32[4]\n  return %0\n}")
    stray = Graph("other")
    y = stray.add_input("y", TensorType(torch.float32, [4]))
    g.outputs = [y]
    with pytest.raises(VerificationError, match="output %y is not defined"):
        verify(g)


def test_verifier_rejects_node_from_another_graph():
    g = parse("graph @g(%x: f32[4]) {\n  %0 = neg(%x) : f32[4]\n  return %0\n}")
    other = parse("graph @h(%x: f32[4]) {\n  %0 = exp(%x) : f32[4]\n  return %0\n}")
    node: Node = other.nodes[0]
    g.nodes.append(node)
    with pytest.raises(VerificationError):
        verify(g)


def test_reference_backend_binds_symbols_and_checks_shapes():
    g = small_graph()
    x = torch.randn(3, 5, 8)
    vals, idx, h = run_graph(g, [x])
    expect = torch.softmax(x @ g.tensors["layers.0.w"].T + 1e-05, dim=-1)
    torch.testing.assert_close(h, expect, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(vals, expect.reshape(15, 6).topk(2).values)
    with pytest.raises(ShapeMismatchError, match="expected rank 3"):
        run_graph(g, [torch.randn(3, 8)])
    with pytest.raises(ShapeMismatchError, match="dtype"):
        run_graph(g, [x.double()])
    with pytest.raises(ShapeMismatchError, match="should be 8"):
        run_graph(g, [torch.randn(3, 5, 9)])


def test_graph_copy_shares_parameter_tensors():
    g = small_graph()
    c = g.copy()
    assert structurally_equal(g, c)
    assert c.tensors["layers.0.w"] is g.tensors["layers.0.w"]
