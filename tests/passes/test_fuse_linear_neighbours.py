"""fuse-linear-residual and fuse-norm-linear: IR before/after, numerics through the reference backend, the
cost rule, unmatched graphs."""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.passes import PassContext
from membound.passes.fuse_linear_residual import fuse_linear_residual
from membound.passes.fuse_norm_linear import FuseNormLinear

# the prologue form (a norm whose input has no producer's statistics): off by default, on here
fuse_norm_linear = FuseNormLinear(prologue=True)

RESIDUAL_CASES = [
    (  # the o projection and the residual stream, add operands in either order
        """graph @f(%a: f32[B, S, 16], %h: f32[B, S, 8]) params(%wo: f32[8, 16]) {
          %o = linear(%a, %wo) : f32[B, S, 8]
          %h2 = add(%o, %h) : f32[B, S, 8]
          return %h2
        }""",
        """graph @f(%a: f32[B, S, 16], %h: f32[B, S, 8]) params(%wo: f32[8, 16]) {
          %0 = linear_add(%a, %wo, %h) : f32[B, S, 8]
          return %0
        }""",
    ),
    (  # a bias stays the last input
        """graph @f(%a: f32[3, 16], %h: f32[3, 8]) params(%wo: f32[8, 16], %b: f32[8]) {
          %o = linear(%a, %wo, %b) : f32[3, 8]
          %h2 = add(%h, %o) : f32[3, 8]
          return %h2
        }""",
        """graph @f(%a: f32[3, 16], %h: f32[3, 8]) params(%wo: f32[8, 16], %b: f32[8]) {
          %0 = linear_add(%a, %wo, %h, %b) : f32[3, 8]
          return %0
        }""",
    ),
    (  # the gated down projection
        """graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 8]) params(%wd: f32[8, 12]) {
          %y = gated_linear(%g, %u, %wd) {act="silu"} : f32[B, 1, 8]
          %h2 = add(%h, %y) : f32[B, 1, 8]
          return %h2
        }""",
        """graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 8]) params(%wd: f32[8, 12]) {
          %0 = gated_linear_add(%g, %u, %wd, %h) {act="silu"} : f32[B, 1, 8]
          return %0
        }""",
    ),
]

NORM_CASES = [
    (  # one merged projection reads the norm
        """graph @f(%h: f32[B, S, 16]) params(%ln: f32[16], %w: f32[24, 16]) {
          %n = rms_norm(%h, %ln) {eps=1e-05} : f32[B, S, 16]
          %y = linear(%n, %w) : f32[B, S, 24]
          return %y
        }""",
        """graph @f(%h: f32[B, S, 16]) params(%ln: f32[16], %w: f32[24, 16]) {
          %0 = rms_norm_linear(%h, %ln, %w) {eps=1e-05} : f32[B, S, 24]
          return %0
        }""",
    ),
    (  # unmerged q/k/v (and a bias): every reader is a linear, each gets its own prologue
        """graph @f(%h: f32[3, 16]) params(%ln: f32[16], %wq: f32[16, 16], %wk: f32[8, 16], %bk: f32[8]) {
          %n = rms_norm(%h, %ln) {eps=1e-06} : f32[3, 16]
          %q = linear(%n, %wq) : f32[3, 16]
          %k = linear(%n, %wk, %bk) : f32[3, 8]
          return %q, %k
        }""",
        """graph @f(%h: f32[3, 16]) params(%ln: f32[16], %wq: f32[16, 16], %wk: f32[8, 16], %bk: f32[8]) {
          %0 = rms_norm_linear(%h, %ln, %wq) {eps=1e-06} : f32[3, 16]
          %1 = rms_norm_linear(%h, %ln, %wk, %bk) {eps=1e-06} : f32[3, 8]
          return %0, %1
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", RESIDUAL_CASES)
def test_residual_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_linear_residual, before, expected)


@pytest.mark.parametrize("before,expected", NORM_CASES)
def test_norm_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_norm_linear, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in RESIDUAL_CASES])
def test_residual_numerics(before: str) -> None:
    check_numerics(fuse_linear_residual, before, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("before", [c[0] for c in NORM_CASES])
def test_norm_numerics(before: str) -> None:
    check_numerics(fuse_norm_linear, before, rtol=1e-5, atol=1e-5)


RESIDUAL_UNCHANGED = [
    # the product is also returned: it must be written anyway
    """graph @f(%a: f32[B, 16], %h: f32[B, 8]) params(%w: f32[8, 16]) {
      %o = linear(%a, %w) : f32[B, 8]
      %h2 = add(%o, %h) : f32[B, 8]
      return %h2, %o
    }""",
    # a broadcast residual
    """graph @f(%a: f32[B, 16], %h: f32[8]) params(%w: f32[8, 16]) {
      %o = linear(%a, %w) : f32[B, 8]
      %h2 = add(%o, %h) : f32[B, 8]
      return %h2
    }""",
    # 64 tokens and no cost model: not the GEMV regime
    """graph @f(%a: f32[64, 16], %h: f32[64, 8]) params(%w: f32[8, 16]) {
      %o = linear(%a, %w) : f32[64, 8]
      %h2 = add(%o, %h) : f32[64, 8]
      return %h2
    }""",
]

NORM_UNCHANGED = [
    # the normed value is also read by something other than a linear (its kernel stays)
    """graph @f(%h: f32[B, 16]) params(%ln: f32[16], %w: f32[8, 16]) {
      %n = rms_norm(%h, %ln) {eps=1e-05} : f32[B, 16]
      %y = linear(%n, %w) : f32[B, 8]
      %z = exp(%n) : f32[B, 16]
      return %y, %z
    }""",
    # a norm without a weight
    """graph @f(%h: f32[B, 16]) params(%w: f32[8, 16]) {
      %n = rms_norm(%h) {eps=1e-05} : f32[B, 16]
      %y = linear(%n, %w) : f32[B, 8]
      return %y
    }""",
    # 64 tokens and no cost model
    """graph @f(%h: f32[64, 16]) params(%ln: f32[16], %w: f32[8, 16]) {
      %n = rms_norm(%h, %ln) {eps=1e-05} : f32[64, 16]
      %y = linear(%n, %w) : f32[64, 8]
      return %y
    }""",
]


@pytest.mark.parametrize("text", RESIDUAL_UNCHANGED)
def test_residual_unchanged(text: str) -> None:
    check_unchanged(fuse_linear_residual, text)


@pytest.mark.parametrize("text", NORM_UNCHANGED)
def test_norm_unchanged(text: str) -> None:
    check_unchanged(fuse_norm_linear, text)


def test_declining_is_logged() -> None:
    ctx = PassContext(current_pass="fuse-norm-linear")
    assert fuse_norm_linear(parse_with_params(NORM_UNCHANGED[0]), ctx) is False
    assert any("readers other than linears" in line for line in ctx.log)
    ctx = PassContext(current_pass="fuse-linear-residual")
    assert fuse_linear_residual(parse_with_params(RESIDUAL_UNCHANGED[1]), ctx) is False
    assert any("a broadcast add" in line for line in ctx.log)


class Priced:
    """A cost model that prices the fused ops at ``fused`` seconds and every other op at 0.1."""

    def __init__(self, fused: float) -> None:
        self.fused = fused

    def estimate(self, node, dims):  # duck-typed like RooflineCost.estimate
        time_s = self.fused if node.op in ("linear_add", "gated_linear_add", "rms_norm_linear") else 0.1

        class Est:
            pass

        est = Est()
        est.time_s = time_s
        return est


@pytest.mark.parametrize("fuse,text,op", [(fuse_linear_residual, RESIDUAL_CASES[0][0], "linear_add"),
                                          (fuse_norm_linear, NORM_CASES[1][0], "rms_norm_linear")])
def test_the_cost_model_decides(fuse, text: str, op: str) -> None:
    g = parse_with_params(text)
    assert fuse(g, PassContext(cost=Priced(1.0), current_pass="x")) is False and g.count(op) == 0
    g = parse_with_params(text)
    assert fuse(g, PassContext(cost=Priced(0.05), current_pass="x")) is True and g.count(op) >= 1


def test_roofline_fuses_at_decode() -> None:
    from membound.cost import Hardware, RooflineCost

    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")), current_pass="x")
    g = parse_with_params(NORM_CASES[0][0])
    assert fuse_norm_linear(g, ctx) is True and g.count("rms_norm") == 0
    g = parse_with_params(RESIDUAL_CASES[2][0])
    assert fuse_linear_residual(g, ctx) is True and g.count("add") == 0
