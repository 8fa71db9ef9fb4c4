"""merge-linear: IR before/after, numerics through the reference backend, the cost rule, unmatched graphs."""

from __future__ import annotations

import pytest
import torch
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.cost import Hardware, RooflineCost
from membound.passes import PassContext
from membound.passes.merge_linear import merge_linear

CASES = [
    (  # q/k/v projections of one input: one linear over [wq; wk; wv], then a split
        """graph @f(%x: f32[B, S, 16]) params(%wq: f32[16, 16], %wk: f32[8, 16], %wv: f32[8, 16]) {
          %q = linear(%x, %wq) : f32[B, S, 16]
          %k = linear(%x, %wk) : f32[B, S, 8]
          %v = linear(%x, %wv) : f32[B, S, 8]
          %s = add(%k, %v) : f32[B, S, 8]
          return %q, %s
        }""",
        """graph @f(%x: f32[B, S, 16]) params(%wq_wk_wv: f32[32, 16]) {
          %0 = linear(%x, %wq_wk_wv) : f32[B, S, 32]
          %q, %k, %v = split(%0) {dim=-1, sizes=[16, 8, 8]} : f32[B, S, 16], f32[B, S, 8], f32[B, S, 8]
          %s = add(%k, %v) : f32[B, S, 8]
          return %q, %s
        }""",
    ),
    (  # gate/up with biases and dotted names; a linear of another input is left alone
        """graph @f(%x: f32[B, 8], %y: f32[B, 8]) params(%mlp.gate.w: f32[12, 8], %mlp.up.w: f32[12, 8],
                                                     %mlp.gate.b: f32[12], %mlp.up.b: f32[12], %o: f32[4, 8]) {
          %g = linear(%x, %mlp.gate.w, %mlp.gate.b) : f32[B, 12]
          %u = linear(%x, %mlp.up.w, %mlp.up.b) : f32[B, 12]
          %z = linear(%y, %o) : f32[B, 4]
          %a = silu(%g) : f32[B, 12]
          %h = mul(%a, %u) : f32[B, 12]
          return %h, %z
        }""",
        """graph @f(%x: f32[B, 8], %y: f32[B, 8]) params(%o: f32[4, 8], %mlp.gate_up.w: f32[24, 8],
                                                     %mlp.gate_up.b: f32[24]) {
          %0 = linear(%x, %mlp.gate_up.w, %mlp.gate_up.b) : f32[B, 24]
          %g, %u = split(%0) {dim=-1, sizes=[12, 12]} : f32[B, 12], f32[B, 12]
          %z = linear(%y, %o) : f32[B, 4]
          %a = silu(%g) : f32[B, 12]
          %h = mul(%a, %u) : f32[B, 12]
          return %h, %z
        }""",
    ),
    (  # with and without bias are two groups; a weight also read elsewhere stays a param
        """graph @f(%x: f32[3, 8]) params(%a: f32[5, 8], %b: f32[7, 8], %c: f32[2, 8], %d: f32[4, 8],
                                          %bc: f32[2], %bd: f32[4]) {
          %0 = linear(%x, %a) : f32[3, 5]
          %1 = linear(%x, %c, %bc) : f32[3, 2]
          %2 = linear(%x, %b) : f32[3, 7]
          %3 = linear(%x, %d, %bd) : f32[3, 4]
          %4 = mul(%a, %a) : f32[5, 8]
          return %0, %1, %2, %3, %4
        }""",
        """graph @f(%x: f32[3, 8]) params(%a: f32[5, 8], %a_b: f32[12, 8], %c_d: f32[6, 8], %bc_bd: f32[6]) {
          %5 = linear(%x, %a_b) : f32[3, 12]
          %6, %7 = split(%5) {dim=-1, sizes=[5, 7]} : f32[3, 5], f32[3, 7]
          %8 = linear(%x, %c_d, %bc_bd) : f32[3, 6]
          %9, %10 = split(%8) {dim=-1, sizes=[2, 4]} : f32[3, 2], f32[3, 4]
          %4 = mul(%a, %a) : f32[5, 8]
          return %6, %9, %7, %10, %4
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(merge_linear, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES])
def test_numerics(before: str) -> None:
    check_numerics(merge_linear, before, rtol=1e-5, atol=1e-5)


def test_merged_weight_is_the_concatenation() -> None:
    g = parse_with_params(CASES[0][0])
    wq, wk, wv = (g.tensors[n] for n in ("wq", "wk", "wv"))
    assert merge_linear(g, PassContext())
    assert torch.equal(g.tensors["wq_wk_wv"], torch.cat([wq, wk, wv]))
    assert set(g.tensors) == {"wq_wk_wv"}  # the originals are dropped from the graph


UNCHANGED = [
    # one linear per input: nothing to merge
    """graph @f(%x: f32[B, 8], %y: f32[B, 8]) params(%w: f32[4, 8], %v: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = linear(%y, %v) : f32[B, 4]
      return %0, %1
    }""",
    # the weight is computed, not a parameter (nothing to concatenate at compile time)
    """graph @f(%x: f32[B, 8], %w: f32[4, 8]) params(%v: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = linear(%x, %v) : f32[B, 4]
      return %0, %1
    }""",
    # the same weight twice is a duplicate (CSE's job), not a merge
    """graph @f(%x: f32[B, 8]) params(%w: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[B, 4]
      %1 = linear(%x, %w) : f32[B, 4]
      %2 = sub(%0, %1) : f32[B, 4]
      return %2
    }""",
    # 64 tokens and no cost model: not the weight-streaming regime
    """graph @f(%x: f32[64, 8]) params(%w: f32[4, 8], %v: f32[4, 8]) {
      %0 = linear(%x, %w) : f32[64, 4]
      %1 = linear(%x, %v) : f32[64, 4]
      return %0, %1
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(merge_linear, text)


def test_declining_is_logged() -> None:
    ctx = PassContext(current_pass="merge-linear")
    g = parse_with_params(UNCHANGED[-1])
    assert merge_linear(g, ctx) is False
    assert any("M = 64 tokens > 16" in line for line in ctx.log)


class NeverPays:
    """A cost model that prices a linear by its output width squared: merging never pays."""

    def estimate(self, node, dims):  # duck-typed like RooflineCost.estimate
        class Est:
            time_s = float(node.results[0].shape[-1]) ** 2

        return Est()


def test_the_cost_model_decides() -> None:
    roofline = PassContext(cost=RooflineCost(Hardware.named("h100-sxm")))
    g = parse_with_params(UNCHANGED[-1])  # 64 tokens: merging still saves a launch and 64 rows of x reads
    assert merge_linear(g, roofline) is True and g.count("split") == 1
    g = parse_with_params(CASES[0][0])
    assert merge_linear(g, PassContext(cost=NeverPays(), current_pass="merge-linear")) is False
    assert g.count("linear") == 3
