"""canonicalize recognises rms_norm chains (HF Llama, the built-in `.type_as(x) * weight` form, f32).

Each accepted chain is proven three ways: the IR after the pass, the reference backend before vs after,
and the eager Hugging Face ``LlamaRMSNorm`` module on the same tensors.
"""

from __future__ import annotations

import pytest
import torch
from pass_testing import BINDINGS, check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.backends.reference import run_graph
from membound.passes import PassContext, get_pass

CANON = get_pass("canonicalize")


def chain(dt: str = "bf16", *, upcast: bool = True, cast_back: bool = True, weight: str = "left",
          square: str = "pow", rsqrt_first: bool = False, mean_dim: str = "[-1]", eps_dtype: str = "f32") -> str:
    """The ATen-level spelling of an RMSNorm, with the knobs real models turn."""
    xf = "%xf" if upcast else "%x"
    lines = [f"graph @norm(%x: {dt}[B, S, 16]) params(%g: {dt}[16]) {{"]
    if upcast:
        lines.append("%xf = cast(%x) {dtype=f32} : f32[B, S, 16]")
    fdt = "f32" if upcast else dt
    if square == "pow":
        lines += ["%two = constant() {value=2, dtype=i64} : i64[]", f"%sq = pow({xf}, %two) : {fdt}[B, S, 16]"]
    else:
        lines.append(f"%sq = mul({xf}, {xf}) : {fdt}[B, S, 16]")
    reduced = "[B, S, 1]" if mean_dim == "[-1]" else "[B, 1, 16]"
    lines += [f"%var = mean(%sq) {{dims={mean_dim}, keepdim=true}} : {fdt}{reduced}",
              f"%eps = constant() {{value=1e-06, dtype={eps_dtype}}} : {eps_dtype}[]",
              f"%ve = add(%var, %eps) : {fdt}{reduced}",
              f"%r = rsqrt(%ve) : {fdt}{reduced}"]
    operands = f"%r, {xf}" if rsqrt_first else f"{xf}, %r"
    lines.append(f"%n = mul({operands}) : {fdt}[B, S, 16]")
    out = "%n"
    if cast_back:
        lines.append(f"%nc = cast(%n) {{dtype={dt}}} : {dt}[B, S, 16]")
        out = "%nc"
    if weight == "left":
        lines.append(f"%y = mul(%g, {out}) : {dt}[B, S, 16]")
        out = "%y"
    elif weight == "right":
        lines.append(f"%y = mul({out}, %g) : {dt}[B, S, 16]")
        out = "%y"
    lines += [f"return {out}", "}"]
    return "\n".join(lines)


def fused(dt: str, weight: bool = True) -> str:
    g = ", %g" if weight else ""
    return f"""graph @norm(%x: {dt}[B, S, 16]) params(%g: {dt}[16]) {{
      %y = rms_norm(%x{g}) {{eps=1e-06}} : {dt}[B, S, 16]
      return %y
    }}"""


MATCHED = {
    # HF Llama: weight * hidden.to(input_dtype), bf16 input, f32 casts around the chain
    "hf-bf16": (chain("bf16"), fused("bf16")),
    # the built-in form: (x.float() * rsqrt(...)).type_as(x) * weight, fp16
    "builtin-f16": (chain("f16", weight="right"), fused("f16")),
    # f32 input: no casts; rsqrt(...) * x operand order; x * x instead of pow
    "f32-no-casts": (chain("f32", upcast=False, cast_back=False, rsqrt_first=True, square="mul"), fused("f32")),
    # f32 input with the (redundant) casts to f32 that `.to(torch.float32)` leaves
    "f32-redundant-casts": (chain("f32"), fused("f32")),
    # no weight: the bare normalisation
    "no-weight": (chain("bf16", weight="none"), fused("bf16", weight=False)),
    # eps given as an f64 0-d constant
    "eps-f64": (chain("bf16", eps_dtype="f64"), fused("bf16")),
}


@pytest.mark.parametrize("case", sorted(MATCHED))
def test_ir(case: str) -> None:
    check_rewrite(CANON, *MATCHED[case])


@pytest.mark.parametrize("sizes", [{"B": 3, "S": 5}, {"B": 1, "S": 1}], ids=["B3-S5", "B1-S1"])
@pytest.mark.parametrize("case", sorted(MATCHED))
def test_numerics(case: str, sizes: dict[str, int]) -> None:
    # the fused op runs the same f32 arithmetic as the chain: equal to fp32 rounding in every dtype
    check_numerics(CANON, MATCHED[case][0], bindings=sizes, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype,rtol", [(torch.float32, 1e-6), (torch.bfloat16, 0.0)])
@pytest.mark.parametrize("batch", [1, 3])
def test_matches_hf_llama_rms_norm(dtype: torch.dtype, rtol: float, batch: int) -> None:
    modeling_llama = pytest.importorskip("transformers.models.llama.modeling_llama")
    name = "f32" if dtype == torch.float32 else "bf16"
    g = parse_with_params(chain(name))
    assert CANON(g, PassContext()) and g.ops() == ["rms_norm"]
    ref = modeling_llama.LlamaRMSNorm(16, eps=1e-6).to(dtype)
    with torch.no_grad():
        ref.weight.copy_(g.tensors["g"])
        x = torch.randn(batch, BINDINGS["S"], 16).to(dtype)
        want = ref(x)
    (got,) = run_graph(g, [x])
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol)


UNMATCHED = {
    # a bf16 chain computed in bf16 (no f32 casts): rms_norm computes in f32, so numerics would change
    "low-precision-chain": chain("bf16", upcast=False, cast_back=False),
    # upcast but never cast back before the weight (Gemma-style f32 weight multiply): different rounding
    "no-cast-back": """graph @norm(%x: bf16[B, S, 16]) params(%g: f32[16]) {
      %xf = cast(%x) {dtype=f32} : f32[B, S, 16]
      %two = constant() {value=2, dtype=i64} : i64[]
      %sq = pow(%xf, %two) : f32[B, S, 16]
      %var = mean(%sq) {dims=[-1], keepdim=true} : f32[B, S, 1]
      %eps = constant() {value=1e-06, dtype=f32} : f32[]
      %ve = add(%var, %eps) : f32[B, S, 1]
      %r = rsqrt(%ve) : f32[B, S, 1]
      %n = mul(%xf, %r) : f32[B, S, 16]
      %y = mul(%n, %g) : f32[B, S, 16]
      %yc = cast(%y) {dtype=bf16} : bf16[B, S, 16]
      return %yc
    }""",
    # the mean is over another dim: not an rms_norm over the hidden size
    "wrong-mean-dim": chain("f32", upcast=False, cast_back=False, mean_dim="[1]"),
    # pow 3, not a square
    "cube": chain("f32", upcast=False, cast_back=False).replace("value=2, dtype=i64", "value=3, dtype=i64"),
    # a different x in the square and in the product
    "two-inputs": """graph @norm(%x: f32[B, S, 16], %z: f32[B, S, 16]) {
      %sq = mul(%z, %z) : f32[B, S, 16]
      %var = mean(%sq) {dims=[-1], keepdim=true} : f32[B, S, 1]
      %eps = constant() {value=1e-06, dtype=f32} : f32[]
      %ve = add(%var, %eps) : f32[B, S, 1]
      %r = rsqrt(%ve) : f32[B, S, 1]
      %n = mul(%x, %r) : f32[B, S, 16]
      return %n
    }""",
}


@pytest.mark.parametrize("case", sorted(UNMATCHED))
def test_unchanged(case: str) -> None:
    check_unchanged(CANON, UNMATCHED[case])


def test_declined_chain_says_why() -> None:
    g = parse_with_params(UNMATCHED["no-cast-back"])
    ctx = PassContext()
    assert CANON(g, ctx) is False
    assert any("not cast back" in line for line in ctx.log), ctx.log


def test_weight_not_folded_when_norm_is_shared() -> None:
    # the bare rms_norm has another user, so the weight multiply stays separate (no duplicate norm)
    text = chain("bf16").replace("return %y", "%e = exp(%nc) : bf16[B, S, 16]\nreturn %y, %e")
    g = check_numerics(CANON, text)
    assert g.ops() == ["rms_norm", "mul", "exp"]
