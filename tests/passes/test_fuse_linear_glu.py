"""fuse-linear-glu: IR before/after, numerics, what it leaves alone, its place before quantization, and HF models
(Llama, Qwen2, Mistral) whose compiled forward and greedy generate match eager with it on."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend's kernels on the CPU

import pytest  # noqa: E402
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params, tiny_hf  # noqa: E402

import membound  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.passes import PassContext  # noqa: E402
from membound.passes.fuse_linear_glu import ENV, fuse_linear_glu  # noqa: E402


@pytest.fixture(autouse=True)
def _on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "1")


_MERGED = """graph @f(%x: f32[B, S, 16]) params(%w13: f32[48, 16], %w2: f32[16, 24]) {
  %gu = linear(%x, %w13) : f32[B, S, 48]
  %g, %u = split(%gu) {dim=-1, sizes=[24, 24]} : f32[B, S, 24], f32[B, S, 24]
  BODY
}"""

CASES = [
    (  # after fuse-gated-linear: the down projection becomes a plain linear
        _MERGED.replace("BODY", """%y = gated_linear(%g, %u, %w2) {act="silu"} : f32[B, S, 16]
          return %y"""),
        """graph @f(%x: f32[B, S, 16]) params(%w13: f32[48, 16], %w2: f32[16, 24]) {
          %0 = linear_glu(%x, %w13) {act="silu"} : f32[B, S, 24]
          %1 = linear(%0, %w2) : f32[B, S, 16]
          return %1
        }""",
    ),
    (  # the product itself (no down projection after it), the mul's operands in either order
        _MERGED.replace("BODY", """%a = silu(%g) : f32[B, S, 24]
          %p = mul(%u, %a) : f32[B, S, 24]
          return %p"""),
        """graph @f(%x: f32[B, S, 16]) params(%w13: f32[48, 16], %w2: f32[16, 24]) {
          %0 = linear_glu(%x, %w13) {act="silu"} : f32[B, S, 24]
          return %0
        }""",
    ),
    (
        """graph @f(%x: f32[3, 8]) params(%w: f32[10, 8]) {
          %gu = linear(%x, %w) : f32[3, 10]
          %g, %u = split(%gu) {dim=1, sizes=[5, 5]} : f32[3, 5], f32[3, 5]
          %a = silu(%g) : f32[3, 5]
          %p = mul(%a, %u) : f32[3, 5]
          return %p
        }""",
        """graph @f(%x: f32[3, 8]) params(%w: f32[10, 8]) {
          %0 = linear_glu(%x, %w) {act="silu"} : f32[3, 5]
          return %0
        }""",
    ),
]


@pytest.mark.parametrize("before,expected", CASES)
def test_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_linear_glu, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES])
def test_numerics(before: str) -> None:
    check_numerics(fuse_linear_glu, before, rtol=1e-5, atol=1e-5)


UNCHANGED = [
    # the halves swapped: silu of the second half is not this op
    _MERGED.replace("BODY", """%a = silu(%u) : f32[B, S, 24]
      %p = mul(%a, %g) : f32[B, S, 24]
      return %p"""),
    # a half is read elsewhere too
    _MERGED.replace("BODY", """%a = silu(%g) : f32[B, S, 24]
      %p = mul(%a, %u) : f32[B, S, 24]
      return %p, %u"""),
    # the merged projection is returned too
    _MERGED.replace("BODY", """%y = gated_linear(%g, %u, %w2) {act="silu"} : f32[B, S, 16]
      return %y, %gu"""),
    # uneven halves
    """graph @f(%x: f32[B, 16]) params(%w: f32[40, 16], %w2: f32[8, 24]) {
      %gu = linear(%x, %w) : f32[B, 40]
      %g, %u = split(%gu) {dim=-1, sizes=[24, 16]} : f32[B, 24], f32[B, 16]
      %a = silu(%g) : f32[B, 24]
      return %a, %u
    }""",
    # a bias on the projection
    """graph @f(%x: f32[B, 16]) params(%w: f32[48, 16], %b: f32[48]) {
      %gu = linear(%x, %w, %b) : f32[B, 48]
      %g, %u = split(%gu) {dim=-1, sizes=[24, 24]} : f32[B, 24], f32[B, 24]
      %a = silu(%g) : f32[B, 24]
      %p = mul(%a, %u) : f32[B, 24]
      return %p
    }""",
    # three ways (q/k/v-like), and a split along another dim
    """graph @f(%x: f32[B, 16]) params(%w: f32[48, 16]) {
      %gu = linear(%x, %w) : f32[B, 48]
      %g, %u, %v = split(%gu) {dim=-1, sizes=[16, 16, 16]} : f32[B, 16], f32[B, 16], f32[B, 16]
      %a = silu(%g) : f32[B, 16]
      %p = mul(%a, %u) : f32[B, 16]
      return %p, %v
    }""",
    """graph @f(%x: f32[4, 16]) params(%w: f32[24, 16]) {
      %gu = linear(%x, %w) : f32[4, 24]
      %g, %u = split(%gu) {dim=0, sizes=[2, 2]} : f32[2, 24], f32[2, 24]
      %a = silu(%g) : f32[2, 24]
      %p = mul(%a, %u) : f32[2, 24]
      return %p
    }""",
]


@pytest.mark.parametrize("text", UNCHANGED)
def test_unchanged(text: str) -> None:
    check_unchanged(fuse_linear_glu, text)


def test_on_by_default_and_off_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV)
    assert fuse_linear_glu(parse_with_params(CASES[0][0]), PassContext())
    monkeypatch.setenv(ENV, "0")
    g = parse_with_params(CASES[0][0])
    ctx = PassContext()
    assert not fuse_linear_glu(g, ctx)
    assert any("1 gate/up projection(s) match, not fused: off (MEMBOUND_LINEAR_GLU=0)" in line for line in ctx.log)


def test_fires_where_the_cost_model_says_at_decode() -> None:
    g = parse_with_params(CASES[0][0])
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")))
    assert fuse_linear_glu(g, ctx)
    assert [n.op for n in g.nodes] == ["linear_glu", "linear"]
    assert any(line.endswith("linear_glu: 1") for line in ctx.log)


def test_quantization_runs_before_it() -> None:
    """quantize-weights quantizes plain and gated linears only: it must see the gate/up projection first."""
    from membound.driver import CompileOptions

    for kind in ("forward", "prefill"):
        names = [getattr(p, "name", p) for p in CompileOptions(quantize="int8").pipeline_for(kind)]
        assert names.index("quantize-weights") < names.index("fuse-linear-glu") and (
            names.index("fuse-gated-linear") < names.index("fuse-linear-glu"))


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_hf_models_decode_with_linear_glu(family: str, backend: str) -> None:
    """Forward and greedy generate equal eager (fp32; the triton backend under the interpreter on CPU, on the GPU
    where there is one), and the decode graph holds one linear_glu per layer and no gated_linear."""
    if backend == "triton" and family != "llama" and not torch.cuda.is_available():
        # the three families' MLPs are one linear_glu form; under the interpreter each case took about 40 s of
        # the CPU suite, so the interpreter checks Llama's and the GPU all three
        pytest.skip("triton backend under the interpreter: Llama stands for the three (the same MLP)")
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"  # no interpreter beside CUDA
    model = tiny_hf(family).to(device)
    compiled = membound.compile(model, backend=backend)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
    got = membound.generate(compiled, ids, 6)
    assert torch.equal(got, want)
    ops = [n.op for n in compiled._kv_program.decode_graph.nodes]
    assert ops.count("linear_glu") == 2 and "gated_linear" not in ops


def test_step_plan_prices_it_as_the_plain_linear() -> None:
    """The step model's kinds: linear_glu runs the linear's loop over the merged weight (not the gated kinds)."""
    from membound.backends.triton.step_plan import linear_kind

    assert [linear_kind("linear_glu", m) for m in (1, 8, 17)] == ["gemv_row", "gemv_swap", "cublas"]
    assert [linear_kind(op, 1, 14336, 4096) for op in ("linear_glu", "linear")] == ["gemv_row"] * 2  # 8B size
    assert [linear_kind(op, 2, 14336, 4096) for op in ("linear_glu", "linear")] == ["gemv_swap"] * 2
    assert linear_kind("gated_linear", 8) == "gemv_dot_gated"


def test_quantize_weights_after_it_says_what_it_left_in_float() -> None:
    """A custom pipeline that fuses first: quantize-weights cannot quantize linear_glu and says so (it quantizes
    the down projection, a plain linear)."""
    from membound.passes.quantize_weights import QuantizeWeights

    g = parse_with_params(CASES[0][0])
    assert fuse_linear_glu(g, PassContext())
    ctx = PassContext()
    assert QuantizeWeights("int8")(g, ctx)
    assert [n.op for n in g.nodes] == ["linear_glu", "quant_linear"]
    assert any("(linear_glu) left in f32: quantize-weights has no form of linear_glu" in line for line in ctx.log)
    assert any("1 linears to int8, 1 left in float" in line for line in ctx.log)
