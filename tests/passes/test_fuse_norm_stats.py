"""fuse-norm-linear's statistics form: a norm of a residual linear's output is formed by its readers from
the partial sums of squares the producer writes. IR before/after, numerics through the reference backend,
graphs it leaves alone (default options: no prologue form), the cost rule."""

from __future__ import annotations

import pytest
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.ir import parse
from membound.passes import PassContext
from membound.passes.fuse_linear_residual import fuse_linear_residual
from membound.passes.fuse_norm_linear import FuseNormLinear, fuse_norm_linear

STATS_CASES = [
    (  # the attention input of the next layer: q/k/v unmerged (a bias on k), the partials read twice
        """graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 9]) params(%wd: f32[9, 12], %ln: f32[9],
                   %wq: f32[16, 9], %wk: f32[8, 9], %bk: f32[8]) {
          %h2 = gated_linear_add(%g, %u, %wd, %h) {act="silu"} : f32[B, 1, 9]
          %n = rms_norm(%h2, %ln) {eps=1e-06} : f32[B, 1, 9]
          %q = linear(%n, %wq) : f32[B, 1, 16]
          %k = linear(%n, %wk, %bk) : f32[B, 1, 8]
          return %h2, %q, %k
        }""",
        """graph @f(%g: f32[B, 1, 12], %u: f32[B, 1, 12], %h: f32[B, 1, 9]) params(%wd: f32[9, 12], %ln: f32[9],
                   %wq: f32[16, 9], %wk: f32[8, 9], %bk: f32[8]) {
          %0, %1 = gated_linear_add_sumsq(%g, %u, %wd, %h) {act="silu"} : f32[B, 1, 9], f32[B, 1, 3]
          %2 = rms_norm_linear_sumsq(%0, %1, %ln, %wq) {eps=1e-06} : f32[B, 1, 16]
          %3 = rms_norm_linear_sumsq(%0, %1, %ln, %wk, %bk) {eps=1e-06} : f32[B, 1, 8]
          return %0, %2, %3
        }""",
    ),
    (  # two norms in a row of a layer: each residual linear writes the statistics of the norm after it
        """graph @f(%a: f32[3, 8], %h: f32[3, 10]) params(%wo: f32[10, 8], %ln: f32[10], %w1: f32[8, 10],
                   %wd: f32[10, 8], %ln2: f32[10], %w2: f32[5, 10]) {
          %h1 = linear_add(%a, %wo, %h) : f32[3, 10]
          %n1 = rms_norm(%h1, %ln) {eps=1e-05} : f32[3, 10]
          %m = linear(%n1, %w1) : f32[3, 8]
          %h2 = linear_add(%m, %wd, %h1) : f32[3, 10]
          %n2 = rms_norm(%h2, %ln2) {eps=1e-05} : f32[3, 10]
          %y = linear(%n2, %w2) : f32[3, 5]
          return %y
        }""",
        """graph @f(%a: f32[3, 8], %h: f32[3, 10]) params(%wo: f32[10, 8], %ln: f32[10], %w1: f32[8, 10],
                   %wd: f32[10, 8], %ln2: f32[10], %w2: f32[5, 10]) {
          %0, %1 = linear_add_sumsq(%a, %wo, %h) : f32[3, 10], f32[3, 3]
          %2 = rms_norm_linear_sumsq(%0, %1, %ln, %w1) {eps=1e-05} : f32[3, 8]
          %3, %4 = linear_add_sumsq(%2, %wd, %0) : f32[3, 10], f32[3, 3]
          %5 = rms_norm_linear_sumsq(%3, %4, %ln2, %w2) {eps=1e-05} : f32[3, 5]
          return %5
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", STATS_CASES)
def test_stats_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_norm_linear, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in STATS_CASES])
def test_stats_numerics(before: str) -> None:
    check_numerics(fuse_norm_linear, before, rtol=1e-5, atol=1e-5)


def test_after_fuse_linear_residual() -> None:
    """The decode pipeline's order: the residual add first becomes linear_add, then the norm reads its stats."""
    text = """graph @f(%a: f32[B, 1, 16], %h: f32[B, 1, 8]) params(%wo: f32[8, 16], %ln: f32[8], %w: f32[6, 8]) {
      %o = linear(%a, %wo) : f32[B, 1, 8]
      %h2 = add(%h, %o) : f32[B, 1, 8]
      %n = rms_norm(%h2, %ln) {eps=1e-05} : f32[B, 1, 8]
      %y = linear(%n, %w) : f32[B, 1, 6]
      return %y, %h2
    }"""
    g = parse_with_params(text)
    ctx = PassContext(current_pass="x")
    assert fuse_linear_residual(g, ctx) and fuse_norm_linear(g, ctx)
    assert [n.op for n in g.nodes] == ["linear_add_sumsq", "rms_norm_linear_sumsq"]


UNCHANGED = [
    # the norm of a graph input (the first layer's, of the embedding): no statistics, prologue off
    """graph @f(%h: f32[B, 1, 16]) params(%ln: f32[16], %w: f32[24, 16]) {
      %n = rms_norm(%h, %ln) {eps=1e-05} : f32[B, 1, 16]
      %y = linear(%n, %w) : f32[B, 1, 24]
      return %y
    }""",
    # a producer with statistics, but the normed row is also read by a non-linear: the norm's kernel stays
    """graph @f(%a: f32[B, 16], %h: f32[B, 8]) params(%wo: f32[8, 16], %ln: f32[8], %w: f32[6, 8]) {
      %h2 = linear_add(%a, %wo, %h) : f32[B, 8]
      %n = rms_norm(%h2, %ln) {eps=1e-05} : f32[B, 8]
      %y = linear(%n, %w) : f32[B, 6]
      %z = exp(%n) : f32[B, 8]
      return %y, %z
    }""",
    # a quantized reader: no norm form (the norm stays, and so does the producer's plain form)
    """graph @f(%a: f32[B, 16], %h: f32[B, 16]) params(%wo: f32[16, 16], %ln: f32[16], %q: i8[24, 16], %s: f32[24]) {
      %h2 = linear_add(%a, %wo, %h) : f32[B, 16]
      %n = rms_norm(%h2, %ln) {eps=1e-05} : f32[B, 16]
      %y = quant_linear(%n, %q, %s) {scheme="int8", group_size=0, in_features=16} : f32[B, 24]
      return %y
    }""",
    # the norm reads the producer's output through a gather (the final norm of the last position)
    """graph @f(%a: f32[B, 1, 16], %h: f32[B, 1, 8], %last: i64[B]) params(%wo: f32[8, 16], %ln: f32[8],
               %w: f32[6, 8]) {
      %h2 = linear_add(%a, %wo, %h) : f32[B, 1, 8]
      %r = arange() {start=0, end=B, step=1, dtype=i64} : i64[B]
      %x = index(%h2, %r, %last) {dims=[0, 1]} : f32[B, 8]
      %n = rms_norm(%x, %ln) {eps=1e-05} : f32[B, 8]
      %y = linear(%n, %w) : f32[B, 6]
      return %y
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(fuse_norm_linear, text)


def test_prologue_is_an_option() -> None:
    g = parse_with_params(UNCHANGED[0])
    ctx = PassContext(current_pass="fuse-norm-linear")
    assert fuse_norm_linear(g, ctx) is False
    assert any("prologue form is off" in line for line in ctx.log)
    assert FuseNormLinear(prologue=True)(g, ctx) is True and g.count("rms_norm_linear") == 1


class Priced:
    """Prices the statistics forms at ``fused`` seconds each and every other op at 0.1."""

    def __init__(self, fused: float) -> None:
        self.fused = fused

    def estimate(self, node, dims):  # duck-typed like RooflineCost.estimate
        class Est:
            time_s = self.fused if node.op.endswith("_sumsq") else 0.1

        return Est()


def test_the_cost_model_decides() -> None:
    # apart: producer + norm + 2 readers = 0.4; fused: producer + 2 readers
    g = parse_with_params(STATS_CASES[0][0])
    assert fuse_norm_linear(g, PassContext(cost=Priced(0.14), current_pass="x")) is False
    assert g.count("gated_linear_add") == 1 and g.count("rms_norm") == 1
    assert fuse_norm_linear(g, PassContext(cost=Priced(0.12), current_pass="x")) is True
    assert g.count("rms_norm_linear_sumsq") == 2


LAYER = """graph @f(%a: bf16[B, 1, {h}], %h: bf16[B, 1, {h}]) params(%wo: bf16[{h}, {h}], %ln: bf16[{h}],
           %w: bf16[{n}, {h}]) {{
  %h2 = linear_add(%a, %wo, %h) : bf16[B, 1, {h}]
  %n = rms_norm(%h2, %ln) {{eps=1e-05}} : bf16[B, 1, {h}]
  %y = linear(%n, %w) : bf16[B, 1, {n}]
  return %h2, %y
}}"""


@pytest.mark.parametrize("hidden,n,fuses", [(2048, 3072, True), (2048, 16384, True), (4096, 6144, True),
                                            (4096, 28672, False)])
def test_roofline_prices_the_rereads(hidden: int, n: int, fuses: bool) -> None:
    """On the H200 datasheet at batch 1: the Llama-3.2-1B qkv and gate/up norms, the Llama-3-8B qkv norm
    fuse; the 8B gate/up norm does not: 7168 GEMV programs each re-reading 4 KB of partials (29 MB)
    cost more than the norm's launch."""
    from membound.cost import Hardware, RooflineCost

    g = parse(LAYER.format(h=hidden, n=n))
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")), current_pass="x")
    assert fuse_norm_linear(g, ctx) is fuses, ctx.log
