"""Kernel dedup by structural key (codegen.kernel_key): twins share one definition, near-twins do not."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton; never on a GPU machine (it would turn
    os.environ.setdefault("TRITON_INTERPRET", "1")  # every later test in this process into the interpreter)

from membound.backends.triton import TritonExecutable, partition  # noqa: E402
from membound.backends.triton.codegen import kernel_key  # noqa: E402
from membound.backends.triton.partition import GraphFacts  # noqa: E402
from membound.ir import parse, print_graph  # noqa: E402

# residual + rms_norm blocks as in consecutive layers: the 2nd and 3rd are twins, the 4th differs in eps
# (a linear between them, run by the library, keeps them apart)
TWINS = """graph @f(%x: f32[B, S, 16], %y: f32[B, S, 16]) params(%w1: f32[16], %w2: f32[16], %w3: f32[16], %l: f32[16, 16]) {
  %a = add(%x, %y) : f32[B, S, 16]
  %n1 = rms_norm(%a, %w1) {eps=1e-05} : f32[B, S, 16]
  %h1 = linear(%n1, %l) : f32[B, S, 16]
  %b = add(%h1, %a) : f32[B, S, 16]
  %n2 = rms_norm(%b, %w2) {eps=1e-05} : f32[B, S, 16]
  %h2 = linear(%n2, %l) : f32[B, S, 16]
  %c = add(%h2, %b) : f32[B, S, 16]
  %n3 = rms_norm(%c, %w3) {eps=1e-05} : f32[B, S, 16]
  %h3 = linear(%n3, %l) : f32[B, S, 16]
  %d = add(%h3, %c) : f32[B, S, 16]
  %n4 = rms_norm(%d, %w3) {eps=1e-06} : f32[B, S, 16]
  %h4 = linear(%n4, %l) : f32[B, S, 16]
  return %h4
}"""


def test_twins_share_a_key_and_a_definition() -> None:
    g = parse(TWINS)
    part = partition(g)
    facts = GraphFacts(g)
    kernels = part.kernels
    assert len(kernels) == 4, part.describe()
    produced = {id(v) for k in kernels for v in k.outputs}
    keys = [kernel_key(k, facts, lambda v: id(v) in produced) for k in kernels]
    assert keys[1] == keys[2]
    assert keys[0] != keys[1]  # reads two graph inputs (strided) instead of a kernel's output
    assert keys[3] != keys[1]  # eps differs
    source = TritonExecutable(g).source
    assert source.count("@triton.jit\ndef _fused") == 3, source
    assert f"also launched in place of 1 identical kernels: {kernels[2].name}" in source


def test_reading_one_value_twice_is_not_reading_two() -> None:
    """add(x, x) and add(x, y) are different kernels though their ops and types agree."""
    g = parse("""graph @f(%x: f32[B, 8], %y: f32[B, 8]) params(%l: f32[8, 8]) {
      %a = add(%x, %x) : f32[B, 8]
      %e = exp(%a) : f32[B, 8]
      %h = linear(%e, %l) : f32[B, 8]
      %b = add(%h, %y) : f32[B, 8]
      %f = exp(%b) : f32[B, 8]
      return %f
    }""")
    facts = GraphFacts(g)
    kernels = partition(g).kernels
    assert len(kernels) == 2, partition(g).describe()
    assert kernel_key(kernels[0], facts, lambda v: True) != kernel_key(kernels[1], facts, lambda v: True)
    same = parse(print_graph(g).replace("add(%x, %x)", "add(%x, %y)"))
    k2 = partition(same).kernels
    assert kernel_key(k2[0], GraphFacts(same), lambda v: True) == kernel_key(k2[1], GraphFacts(same), lambda v: True)
