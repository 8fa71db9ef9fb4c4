"""Ops whose torch reference reads values on the host keep a decode step out of CUDA graphs."""

from __future__ import annotations

import torch

from membound.api import host_syncing_ops
from membound.backends.reference import ReferenceExecutable
from membound.backends.triton import TritonExecutable
from membound.ir import parse
from membound.ir.ops import get_op

GROUPED = """graph @f(%x: f32[N, 8], %offs: i64[4]) params(%w: f32[4, 8, 6]) {
  %y = grouped_mm(%x, %w, %offs) : f32[N, 6]
  %z = add(%y, %y) : f32[N, 6]
  return %z
}"""

PLAIN = """graph @f(%x: f32[N, 8]) params(%w: f32[6, 8]) {
  %y = linear(%x, %w) : f32[N, 6]
  return %y
}"""


def test_host_sync_is_declared_on_the_ops_that_need_it() -> None:
    assert get_op("grouped_mm").extra.get("host_sync") and get_op("torch_call").extra.get("host_sync")
    assert not get_op("linear").extra.get("host_sync")


def test_a_triton_step_running_a_host_syncing_op_in_torch_is_named() -> None:
    """grouped_mm has a library kernel that reads the offsets on the device (no sync); an opaque torch call
    (``fallback="torch"``) runs through torch and is named."""
    from membound.ir import TensorType

    g = parse(GROUPED)
    g.tensors["w"] = torch.randn(4, 8, 6)
    assert host_syncing_ops(TritonExecutable(g)) == []
    p = parse(PLAIN)
    p.tensors["w"] = torch.randn(6, 8)
    assert host_syncing_ops(TritonExecutable(p)) == []
    y = p.nodes[-1].result
    call = p.create_node("torch_call", [y], {"target": "aten::special_bessel_j0.default", "args": ("%0",),
                                             "kwargs": ()}, types=[TensorType(torch.float32, y.shape)])
    p.append(call)
    p.outputs[0] = call.result
    assert host_syncing_ops(TritonExecutable(p)) == ["torch_call"]
    assert host_syncing_ops(ReferenceExecutable(g)) == []  # no partition: the reference backend never graphs
