"""fuse-gated-linear: IR before/after, numerics through the reference backend, the cost rule, unmatched graphs."""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.cost import Hardware, RooflineCost
from membound.passes import PassContext
from membound.passes.fuse_gated_linear import fuse_gated_linear

CASES = [
    (  # gate/up halves of one merged projection (after merge-linear); mul operands in either order
        """graph @f(%x: f32[B, S, 16]) params(%w13: f32[48, 16], %w2: f32[16, 24]) {
          %gu = linear(%x, %w13) : f32[B, S, 48]
          %g, %u = split(%gu) {dim=-1, sizes=[24, 24]} : f32[B, S, 24], f32[B, S, 24]
          %a = silu(%g) : f32[B, S, 24]
          %p = mul(%u, %a) : f32[B, S, 24]
          %y = linear(%p, %w2) : f32[B, S, 16]
          return %y
        }""",
        """graph @f(%x: f32[B, S, 16]) params(%w13: f32[48, 16], %w2: f32[16, 24]) {
          %gu = linear(%x, %w13) : f32[B, S, 48]
          %g, %u = split(%gu) {dim=-1, sizes=[24, 24]} : f32[B, S, 24], f32[B, S, 24]
          %0 = gated_linear(%g, %u, %w2) {act="silu"} : f32[B, S, 16]
          return %0
        }""",
    ),
    (  # separate gate and up projections (HF's LlamaMLP before merging), static shapes
        """graph @f(%x: f32[3, 8]) params(%wg: f32[12, 8], %wu: f32[12, 8], %wd: f32[8, 12]) {
          %g = linear(%x, %wg) : f32[3, 12]
          %u = linear(%x, %wu) : f32[3, 12]
          %a = silu(%g) : f32[3, 12]
          %p = mul(%a, %u) : f32[3, 12]
          %y = linear(%p, %wd) : f32[3, 8]
          return %y
        }""",
        """graph @f(%x: f32[3, 8]) params(%wg: f32[12, 8], %wu: f32[12, 8], %wd: f32[8, 12]) {
          %g = linear(%x, %wg) : f32[3, 12]
          %u = linear(%x, %wu) : f32[3, 12]
          %0 = gated_linear(%g, %u, %wd) {act="silu"} : f32[3, 8]
          return %0
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_gated_linear, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES])
def test_numerics(before: str) -> None:
    check_numerics(fuse_gated_linear, before, rtol=1e-5, atol=1e-5)


UNCHANGED = [
    # the product is also returned: it must be written anyway
    """graph @f(%g: f32[B, 8], %u: f32[B, 8]) params(%w: f32[4, 8]) {
      %a = silu(%g) : f32[B, 8]
      %p = mul(%a, %u) : f32[B, 8]
      %y = linear(%p, %w) : f32[B, 4]
      return %y, %p
    }""",
    # gelu gating (GeGLU) has no kernel here
    """graph @f(%g: f32[B, 8], %u: f32[B, 8]) params(%w: f32[4, 8]) {
      %a = gelu(%g) : f32[B, 8]
      %p = mul(%a, %u) : f32[B, 8]
      %y = linear(%p, %w) : f32[B, 4]
      return %y
    }""",
    # a bias on the down projection
    """graph @f(%g: f32[B, 8], %u: f32[B, 8]) params(%w: f32[4, 8], %b: f32[4]) {
      %a = silu(%g) : f32[B, 8]
      %p = mul(%a, %u) : f32[B, 8]
      %y = linear(%p, %w, %b) : f32[B, 4]
      return %y
    }""",
    # up broadcasts against the gate: not one shape
    """graph @f(%g: f32[B, 8], %u: f32[8]) params(%w: f32[4, 8]) {
      %a = silu(%g) : f32[B, 8]
      %p = mul(%a, %u) : f32[B, 8]
      %y = linear(%p, %w) : f32[B, 4]
      return %y
    }""",
    # 64 tokens and no cost model: not the GEMV regime
    """graph @f(%g: f32[64, 8], %u: f32[64, 8]) params(%w: f32[4, 8]) {
      %a = silu(%g) : f32[64, 8]
      %p = mul(%a, %u) : f32[64, 8]
      %y = linear(%p, %w) : f32[64, 4]
      return %y
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(fuse_gated_linear, text)


def test_declining_is_logged() -> None:
    ctx = PassContext(current_pass="fuse-gated-linear")
    g = parse_with_params(UNCHANGED[-1])
    assert fuse_gated_linear(g, ctx) is False
    assert any("M = 64 tokens > 16" in line for line in ctx.log)
    ctx = PassContext(current_pass="fuse-gated-linear")
    assert fuse_gated_linear(parse_with_params(UNCHANGED[3]), ctx) is False
    assert any("differ (a broadcast product)" in line for line in ctx.log)


class NeverPays:
    """A cost model under which the fused op is always slower."""

    def estimate(self, node, dims):  # duck-typed like RooflineCost.estimate
        class Est:
            time_s = 1.0 if node.op == "gated_linear" else 0.1

        return Est()


def test_the_cost_model_decides() -> None:
    roofline = PassContext(cost=RooflineCost(Hardware.named("h100-sxm")))
    g = parse_with_params(UNCHANGED[-1])  # 64 tokens: fusing still saves the product's write, read and launch
    assert fuse_gated_linear(g, roofline) is True and g.count("gated_linear") == 1
    g = parse_with_params(CASES[0][0])
    assert fuse_gated_linear(g, PassContext(cost=NeverPays(), current_pass="fuse-gated-linear")) is False
    assert g.count("gated_linear") == 0
