"""fuse-moe on the experts forms transformers runs on a GPU, which the CPU path of the installed
transformers does not take by default:

- grouped with sentinel masks: transformers 5.17 (the GPU machine's) always masks expert-parallel
  sentinels, ``where(sorted_ids >= E, 0, x)`` around both ``grouped_mm``; CUDA counts tokens with
  ``histc`` on int32 ids. Later versions mask only under expert parallelism (``_is_expert_parallel``).
- batched: ``batched_mm``, which ``generate`` switches to for decoding off the CPU: every (token,
  expert) pair gathers its expert's ``[2I, D]`` and ``[D, I]`` weights and runs a ``bmm``; 5.17 clamps
  the ids to ``[0, E - 1]`` first.

IR before/after (dumps of HF's MixtralSparseMoeBlock captured with transformers 5.17, canonicalised),
numerics against the unfused graph, masks that are *not* no-ops left alone, and HF's Mixtral /
Qwen2-MoE blocks in every form against eager. Tolerances: fp32, 1e-5.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import torch
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params

from membound.backends.reference import run_graph
from membound.frontends import capture_export
from membound.passes import PassContext, PassManager, get_pass
from membound.passes.fuse_moe import fuse_moe
from membound.passes.pipeline import CLEANUP_PASSES

transformers = pytest.importorskip("transformers")

from tests.e2e.hf_moe import cuda_moe_path  # noqa: E402

# transformers 5.17, grouped_mm experts, CUDA path (int32 histc), sentinel masks %24, %28, %36
GROUPED_SENTINELS = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.gate_up_proj: f32[3, 12, 8], %experts.down_proj: f32[3, 8, 6]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %2 = linear(%0, %gate.weight) : f32[B*S, 3]
  %3 = softmax(%2) {dim=-1, dtype=none} : f32[B*S, 3]
  %4, %5 = topk(%3) {k=2, dim=-1, largest=true, sorted=true} : f32[B*S, 2], i64[B*S, 2]
  %6 = sum(%4) {dims=[-1], keepdim=true, dtype=none} : f32[B*S, 1]
  %7 = div(%4, %6) {rounding_mode=none} : f32[B*S, 2]
  %8 = reshape(%7) {shape=[2*B*S]} : f32[2*B*S]
  %9 = reshape(%5) {shape=[2*B*S]} : i64[2*B*S]
  %10, %11 = sort(%9) {dim=-1, descending=false, stable=false} : i64[2*B*S], i64[2*B*S]
  %12 = constant() {value=2, dtype=i64} : i64[]
  %13 = div(%11, %12) {rounding_mode="floor"} : i64[2*B*S]
  %14 = index(%0, %13) {dims=[0]} : f32[2*B*S, 8]
  %15 = index(%8, %11) {dims=[0]} : f32[2*B*S]
  %16 = cast(%10) {dtype=i32} : i32[2*B*S]
  %17 = histc(%16) {bins=3, min=0.0, max=2.0} : i32[3]
  %18 = cumsum(%17) {dim=0, dtype=i32} : i32[3]
  %19 = constant() {value=3, dtype=i64} : i64[]
  %20 = ge(%10, %19) : bool[2*B*S]
  %21 = unsqueeze(%20) {dim=-1} : bool[2*B*S, 1]
  %23 = constant() {value=0.0, dtype=f32} : f32[]
  %24 = where(%21, %23, %14) : f32[2*B*S, 8]
  %25 = transpose(%experts.gate_up_proj) {dim0=-2, dim1=-1} : f32[3, 8, 12]
  %26 = grouped_mm(%24, %25, %18) : f32[2*B*S, 12]
  %28 = where(%21, %23, %26) : f32[2*B*S, 12]
  %29, %30 = split(%28) {dim=1, sizes=[6, 6]} : f32[2*B*S, 6], f32[2*B*S, 6]
  %31 = silu(%29) : f32[2*B*S, 6]
  %32 = mul(%31, %30) : f32[2*B*S, 6]
  %33 = transpose(%experts.down_proj) {dim0=-2, dim1=-1} : f32[3, 6, 8]
  %34 = grouped_mm(%32, %33, %18) : f32[2*B*S, 8]
  %36 = where(%21, %23, %34) : f32[2*B*S, 8]
  %37 = unsqueeze(%15) {dim=-1} : f32[2*B*S, 1]
  %38 = mul(%36, %37) : f32[2*B*S, 8]
  %39 = full() {shape=[2*B*S], value=0, dtype=i64} : i64[2*B*S]
  %40 = arange() {start=0, end=2*B*S, step=1, dtype=i64} : i64[2*B*S]
  %41 = index_put(%39, %40, %11) {dims=[0], accumulate=false} : i64[2*B*S]
  %42 = index(%38, %41) {dims=[0]} : f32[2*B*S, 8]
  %43 = reshape(%42) {shape=[B*S, 2, 8]} : f32[B*S, 2, 8]
  %44 = sum(%43) {dims=[1], keepdim=false, dtype=none} : f32[B*S, 8]
  %45 = reshape(%44) {shape=[B, S, 8]} : f32[B, S, 8]
  return %45
}"""

GROUPED_SENTINELS_AFTER = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.down_proj: f32[3, 8, 6], %experts.gate_up_proj.gate: f32[3, 6, 8], %experts.gate_up_proj.up: f32[3, 6, 8]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = moe(%0, %gate.weight, %experts.gate_up_proj.gate, %experts.gate_up_proj.up, %experts.down_proj) {top_k=2, softmax_first=true, renormalize=true, act="silu"} : f32[B*S, 8]
  %45 = reshape(%1) {shape=[B, S, 8]} : f32[B, S, 8]
  return %45
}"""

# transformers 5.17, batched_mm experts: %10 is hidden_states.repeat_interleave(2, dim=0), %13 the clamped ids
BATCHED = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.gate_up_proj: f32[3, 12, 8], %experts.down_proj: f32[3, 8, 6]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %2 = linear(%0, %gate.weight) : f32[B*S, 3]
  %3 = softmax(%2) {dim=-1, dtype=none} : f32[B*S, 3]
  %4, %5 = topk(%3) {k=2, dim=-1, largest=true, sorted=true} : f32[B*S, 2], i64[B*S, 2]
  %6 = sum(%4) {dims=[-1], keepdim=true, dtype=none} : f32[B*S, 1]
  %7 = div(%4, %6) {rounding_mode=none} : f32[B*S, 2]
  %8 = unsqueeze(%0) {dim=1} : f32[B*S, 1, 8]
  %9 = expand(%8) {shape=[B*S, 2, 8]} : f32[B*S, 2, 8]
  %10 = reshape(%9) {shape=[2*B*S, 8]} : f32[2*B*S, 8]
  %11 = reshape(%7) {shape=[2*B*S]} : f32[2*B*S]
  %12 = reshape(%5) {shape=[2*B*S]} : i64[2*B*S]
  %13 = clamp(%12) {min=0, max=2} : i64[2*B*S]
  %14 = index(%experts.gate_up_proj, %13) {dims=[0]} : f32[2*B*S, 12, 8]
  %15 = unsqueeze(%10) {dim=-1} : f32[2*B*S, 8, 1]
  %16 = matmul(%14, %15) : f32[2*B*S, 12, 1]
  %17 = squeeze(%16) {dims=[2]} : f32[2*B*S, 12]
  %18, %19 = split(%17) {dim=1, sizes=[6, 6]} : f32[2*B*S, 6], f32[2*B*S, 6]
  %20 = silu(%18) : f32[2*B*S, 6]
  %21 = mul(%20, %19) : f32[2*B*S, 6]
  %22 = index(%experts.down_proj, %13) {dims=[0]} : f32[2*B*S, 8, 6]
  %23 = unsqueeze(%21) {dim=-1} : f32[2*B*S, 6, 1]
  %24 = matmul(%22, %23) : f32[2*B*S, 8, 1]
  %25 = squeeze(%24) {dims=[2]} : f32[2*B*S, 8]
  %26 = unsqueeze(%11) {dim=-1} : f32[2*B*S, 1]
  %27 = mul(%25, %26) : f32[2*B*S, 8]
  %28 = reshape(%27) {shape=[B*S, 2, 8]} : f32[B*S, 2, 8]
  %29 = sum(%28) {dims=[1], keepdim=false, dtype=none} : f32[B*S, 8]
  %30 = reshape(%29) {shape=[B, S, 8]} : f32[B, S, 8]
  return %30
}"""

BATCHED_AFTER = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.down_proj: f32[3, 8, 6], %experts.gate_up_proj.gate: f32[3, 6, 8], %experts.gate_up_proj.up: f32[3, 6, 8]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = moe(%0, %gate.weight, %experts.gate_up_proj.gate, %experts.gate_up_proj.up, %experts.down_proj) {top_k=2, softmax_first=true, renormalize=true, act="silu"} : f32[B*S, 8]
  %30 = reshape(%1) {shape=[B, S, 8]} : f32[B, S, 8]
  return %30
}"""

# Llama 4 (transformers 5.25, Llama4TextMoe captured, canonicalised): every expert over every token, each copy scaled
# by the token's sigmoid router score (0 for the experts it did not choose) before the expert; gate/up [E, D, 2I]
LLAMA4 = """graph @Llama4TextMoe(%hidden_states: f32[B, S, 8]) params(%experts.gate_up_proj: f32[3, 8, 12], %experts.down_proj: f32[3, 6, 8], %router.weight: f32[3, 8], %shared_expert.gate_proj.weight: f32[6, 8], %shared_expert.up_proj.weight: f32[6, 8], %shared_expert.down_proj.weight: f32[8, 6]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = linear(%0, %router.weight) : f32[B*S, 3]
  %2, %3 = topk(%1) {k=1, dim=1, largest=true, sorted=true} : f32[B*S, 1], i64[B*S, 1]
  %4 = full() {shape=[B*S, 3], value=-inf, dtype=f32} : f32[B*S, 3]
  %5 = scatter(%4, %3, %2) {dim=1, reduce=none} : f32[B*S, 3]
  %6 = sigmoid(%5) : f32[B*S, 3]
  %29 = reshape(%hidden_states) {shape=[1, B*S, 1, 8]} : f32[1, B*S, 1, 8]
  %8 = expand(%29) {shape=[3, B*S, 1, 8]} : f32[3, B*S, 1, 8]
  %9 = reshape(%8) {shape=[3*B*S, 8]} : f32[3*B*S, 8]
  %10 = transpose(%6) {dim0=0, dim1=1} : f32[3, B*S]
  %11 = reshape(%10) {shape=[3*B*S, 1]} : f32[3*B*S, 1]
  %12 = mul(%9, %11) : f32[3*B*S, 8]
  %13 = reshape(%12) {shape=[3, B*S, 8]} : f32[3, B*S, 8]
  %14 = matmul(%13, %experts.gate_up_proj) : f32[3, B*S, 12]
  %15, %16 = split(%14) {dim=2, sizes=[6, 6]} : f32[3, B*S, 6], f32[3, B*S, 6]
  %17 = silu(%15) : f32[3, B*S, 6]
  %18 = mul(%16, %17) : f32[3, B*S, 6]
  %19 = matmul(%18, %experts.down_proj) : f32[3, B*S, 8]
  %21 = linear(%0, %shared_expert.gate_proj.weight) : f32[B*S, 6]
  %22 = silu(%21) : f32[B*S, 6]
  %23 = linear(%0, %shared_expert.up_proj.weight) : f32[B*S, 6]
  %24 = mul(%22, %23) : f32[B*S, 6]
  %25 = linear(%24, %shared_expert.down_proj.weight) : f32[B*S, 8]
  %27 = sum(%19) {dims=[0], keepdim=false, dtype=none} : f32[B*S, 8]
  %28 = add(%25, %27) : f32[B*S, 8]
  return %28, %1
}"""

LLAMA4_AFTER = """graph @Llama4TextMoe(%hidden_states: f32[B, S, 8]) params(%router.weight: f32[3, 8], %shared_expert.gate_proj.weight: f32[6, 8], %shared_expert.up_proj.weight: f32[6, 8], %shared_expert.down_proj.weight: f32[8, 6], %experts.gate_up_proj.gate: f32[3, 6, 8], %experts.gate_up_proj.up: f32[3, 6, 8], %experts.down_proj.t: f32[3, 8, 6]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = linear(%0, %router.weight) : f32[B*S, 3]
  %21 = linear(%0, %shared_expert.gate_proj.weight) : f32[B*S, 6]
  %22 = silu(%21) : f32[B*S, 6]
  %23 = linear(%0, %shared_expert.up_proj.weight) : f32[B*S, 6]
  %24 = mul(%22, %23) : f32[B*S, 6]
  %25 = linear(%24, %shared_expert.down_proj.weight) : f32[B*S, 8]
  %7 = moe(%0, %router.weight, %experts.gate_up_proj.gate, %experts.gate_up_proj.up, %experts.down_proj.t) {top_k=1, softmax_first=false, renormalize=false, act="silu", score="sigmoid", weight_input=true} : f32[B*S, 8]
  %28 = add(%25, %7) : f32[B*S, 8]
  return %28, %1
}"""

CASES = {"grouped-sentinels": (GROUPED_SENTINELS, GROUPED_SENTINELS_AFTER), "batched": (BATCHED, BATCHED_AFTER),
         "llama4-dense": (LLAMA4, LLAMA4_AFTER)}


@pytest.mark.parametrize("before,expected", list(CASES.values()), ids=list(CASES))
def test_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_moe, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES.values()], ids=list(CASES))
def test_numerics(before: str) -> None:
    check_numerics(fuse_moe, before, rtol=1e-5, atol=1e-5)


def test_batched_gate_up_are_views_of_the_model_weight() -> None:
    g = parse_with_params(BATCHED)
    gate_up = g.tensors["experts.gate_up_proj"]
    fuse_moe(g, PassContext())
    gate, up = g.tensors["experts.gate_up_proj.gate"], g.tensors["experts.gate_up_proj.up"]
    assert gate.data_ptr() == gate_up.data_ptr() and torch.equal(up, gate_up[:, 6:])


UNCHANGED = {
    # ids >= 2 is true for expert 2 of 3: a real mask that drops an expert, not a sentinel no-op
    "real-mask": (GROUPED_SENTINELS.replace("%19 = constant() {value=3,", "%19 = constant() {value=2,"),
                  "grouped: the first grouped_mm's rows %24 are not tokens gathered by expert"),
    # the sort's permutation compared, not the sorted ids
    "mask-of-permutation": (GROUPED_SENTINELS.replace("%20 = ge(%10, %19)", "%20 = ge(%11, %19)"),
                            "grouped: the first grouped_mm's rows %24 are not tokens gathered by expert"),
    # ids clamped to [0, 1]: expert 2's pairs would run expert 1
    "narrowing-clamp": (BATCHED.replace("{min=0, max=2}", "{min=0, max=1}"),
                        "batched: %16 is not W[expert_ids] @ x[..., None]"),
    # x.repeat(2, 1) (tokens tiled) instead of repeat_interleave: pair (t, j) would read token t's neighbour
    # the scores read token-major (row t * E + e) against the expert-major token copies: expert e would get the
    # wrong tokens' weights
    "llama4-scores-token-major": (LLAMA4.replace("%10 = transpose(%6) {dim0=0, dim1=1}", "%10 = reshape(%6) {shape=[3, B*S]}"),
                                  "dense: the tokens are not each expert's copy scaled by its column of the router "
                                  "scores"),
    "tiled-tokens": (BATCHED.replace("%8 = unsqueeze(%0) {dim=1} : f32[B*S, 1, 8]", "%8 = unsqueeze(%0) {dim=0} : f32[1, B*S, 8]")
                     .replace("%9 = expand(%8) {shape=[B*S, 2, 8]} : f32[B*S, 2, 8]", "%9 = expand(%8) {shape=[2, B*S, 8]} : f32[2, B*S, 8]"),
                     "batched: the gate/up product's rows %15 are not each token repeated top-k times"),
}


@pytest.mark.parametrize("text,why", list(UNCHANGED.values()), ids=list(UNCHANGED))
def test_unmatched_blocks_stay_and_say_why(text: str, why: str) -> None:
    check_unchanged(fuse_moe, text)
    ctx = PassContext()
    fuse_moe(parse_with_params(text), ctx)
    assert len(ctx.log) == 1 and "left unfused:" in ctx.log[0] and why in ctx.log[0], ctx.log


# ---------------------------------------------------------------------------------------------
# HF's blocks in each experts form, captured, fused, against eager
# ---------------------------------------------------------------------------------------------


def _fused(block: Any, x: torch.Tensor, cuda: bool = False) -> tuple[Any, PassContext]:
    """``block`` captured at ``x`` (``cuda``: transformers' CUDA MoE path), cleaned up and through fuse-moe."""
    with cuda_moe_path() if cuda else contextlib.nullcontext():
        cap = capture_export(block, (x,), {})
    ctx = PassContext()
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        cap.graph, ctx)
    return g, ctx


def _block(name: str, impl: str, sentinels: bool) -> Any:
    torch.manual_seed(0)
    if name == "mixtral":
        config = transformers.MixtralConfig(hidden_size=12, intermediate_size=8, num_local_experts=5,
                                            num_experts_per_tok=2)
        block = transformers.models.mixtral.modeling_mixtral.MixtralSparseMoeBlock(config)
    else:
        config = transformers.Qwen2MoeConfig(hidden_size=12, moe_intermediate_size=8, num_experts=5,
                                             num_experts_per_tok=2, shared_expert_intermediate_size=4)
        block = transformers.models.qwen2_moe.modeling_qwen2_moe.Qwen2MoeSparseMoeBlock(config)
    for m in block.modules():
        if hasattr(m, "config"):
            m.config._experts_implementation = impl
        if hasattr(m, "_is_expert_parallel"):
            m._is_expert_parallel = sentinels  # transformers 5.17 always masks sentinels
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    return block.eval()


FORMS = [("grouped_mm", False, False), ("grouped_mm", True, False), ("grouped_mm", True, True),
         ("batched_mm", False, False), ("batched_mm", True, False)]


@pytest.mark.parametrize("impl,sentinels,cuda", FORMS,
                         ids=["grouped", "grouped-sentinels", "grouped-sentinels-cuda", "batched", "batched-sentinels"])
@pytest.mark.parametrize("name", ["mixtral", "qwen2-moe"])
def test_hf_block_fuses_and_matches_eager(name: str, impl: str, sentinels: bool, cuda: bool) -> None:
    block = _block(name, impl, sentinels)
    x = torch.randn(2, 7, 12)
    g, ctx = _fused(block, x, cuda)
    form = impl.split("_")[0] + (" + shared expert" if name == "qwen2-moe" else "")
    assert f"fuse-moe: {form}: 1" in ctx.log, ctx.log
    assert g.count("moe") == 1 and g.count("topk") == 0 and g.count("grouped_mm") == 0 and g.count("index") == 0
    for xs in (x, x[:1, :1]):  # also one token: most experts receive none
        with torch.no_grad():
            want = block(xs)
        want = want[0] if isinstance(want, tuple) else want
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


def test_llama4_block_fuses_and_matches_eager() -> None:
    """Llama 4's block (dense experts, sigmoid scores on the input, an ungated shared expert left beside the op) in
    fp32 against eager, many tokens and one; its experts' weights become [E, I, D] / [E, D, I] copies."""
    torch.manual_seed(0)
    config = transformers.Llama4TextConfig(hidden_size=12, intermediate_size=8, num_local_experts=5,
                                           num_experts_per_tok=1)
    block = transformers.models.llama4.modeling_llama4.Llama4TextMoe(config).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    x = torch.randn(2, 7, 12)
    cap = capture_export(block, (x,), {})
    ctx = PassContext()
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        cap.graph, ctx)
    assert "fuse-moe: dense: 1" in ctx.log, ctx.log
    assert any("expert weights copied" in line and "experts.down_proj.t" in line for line in ctx.log), ctx.log
    assert g.count("moe") == 1 and g.count("topk") == 0 and g.count("matmul") == 0 and g.count("scatter") == 0
    gate = g.tensors["experts.gate_up_proj.gate"]
    assert gate.is_contiguous() and torch.equal(gate, block.experts.gate_up_proj[:, :, :8].transpose(1, 2))
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = block(xs)[0].reshape(-1, 12)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


class _FirstResult(torch.nn.Module):
    """gpt-oss's MLP returns (hidden, router scores); its decoder layer keeps the first (the scores die there)."""

    def __init__(self, block: torch.nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)[0]


def _gpt_oss_block(impl: str, limit: float, sentinels: bool = False) -> Any:
    torch.manual_seed(0)
    config = transformers.GptOssConfig(hidden_size=16, intermediate_size=8, num_local_experts=5, num_experts_per_tok=2,
                                       swiglu_limit=limit)
    block = transformers.models.gpt_oss.modeling_gpt_oss.GptOssMLP(config)
    block.experts.config = config
    config._experts_implementation = impl
    if hasattr(block.experts, "_is_expert_parallel"):
        block.experts._is_expert_parallel = sentinels  # 5.17's form: masks, and the ids clamped for the bias gathers
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return _FirstResult(block).eval()


@pytest.mark.parametrize("impl,cuda,sentinels", [("grouped_mm", False, False), ("grouped_mm", True, False),
                                                  ("grouped_mm", True, True), ("batched_mm", False, False),
                                                  ("batched_mm", False, True)],
                         ids=["grouped", "grouped-cuda", "grouped-cuda-sentinels", "batched", "batched-sentinels"])
@pytest.mark.parametrize("limit", [7.0, 0.5])
def test_gpt_oss_block_fuses_and_matches_eager(impl: str, cuda: bool, sentinels: bool, limit: float) -> None:
    """gpt-oss's experts (a router bias, interleaved gate/up columns of a K-major ``[E, D, 2I]`` weight, gate/up and
    down biases, the clamped SwiGLU with its alpha and limit) become one ``moe {bias=true, act="clamped_swiglu"}``
    whose weights are ``[E, N, K]`` copies, equal to eager in fp32 (1e-5) on many tokens and one. The limit 0.5
    binds at these weights (7.0, gpt-oss's, hardly does). ``sentinels``: transformers 5.17's expert-parallel masks
    (always written there) and the clamped ids its bias gathers read."""
    block = _gpt_oss_block(impl, limit, sentinels)
    x = torch.randn(2, 7, 16)
    g, ctx = _fused(block, x, cuda)
    assert f"fuse-moe: {impl.split('_')[0]}: 1" in ctx.log, ctx.log
    assert any("expert weights copied" in line and "block.experts.down_proj.t" in line for line in ctx.log), ctx.log
    assert g.count("moe") == 1 and g.count("topk") == 0 and g.count("index") == 0 and g.count("clamp") == 0
    node = next(n for n in g.nodes if n.op == "moe")
    assert node.attrs["bias"] is True and node.attrs["act"] == "clamped_swiglu"
    assert node.attrs["alpha"] == pytest.approx(1.702) and node.attrs["limit"] == limit
    assert not node.attrs["softmax_first"] and not node.attrs["renormalize"]
    experts = block.block.experts
    gate = g.tensors["block.experts.gate_up_proj.gate"]
    assert gate.is_contiguous() and torch.equal(gate, experts.gate_up_proj[:, :, 0::2].transpose(1, 2))
    assert torch.equal(g.tensors["block.experts.gate_up_proj_bias.up"], experts.gate_up_proj_bias[:, 1::2])
    for xs in (x, x[:1, :1]):  # also one token: most experts receive none
        with torch.no_grad():
            want = block(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


def test_gpt_oss_block_without_its_down_bias_is_left_alone() -> None:
    """A biased router and gate/up whose down product has no bias: moe takes all four biases or none, so the block
    stays unfused and the log says which are missing (never fused with a bias dropped)."""
    block = _gpt_oss_block("batched_mm", 7.0)
    cap = capture_export(block, (torch.randn(2, 7, 16),), {})
    graph = cap.graph
    add = next(n for n in graph.nodes if n.op == "add" and any(
        v.producer is not None and v.producer.op == "index" and v.producer.inputs[0].name.endswith("down_proj_bias")
        for v in n.inputs))
    product = next(v for v in add.inputs if not (v.producer is not None and v.producer.op == "index"))
    graph.replace_all_uses(add.result, product)
    ctx = PassContext()
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        graph, ctx)
    assert g.count("moe") == 0
    assert any("moe takes all four or none" in line for line in ctx.log), ctx.log


def _deepseek_block(version: str, impl: str) -> Any:
    torch.manual_seed(0)
    common = dict(hidden_size=16, moe_intermediate_size=8, n_routed_experts=8, num_experts_per_tok=2, n_group=2,
                  topk_group=1, n_shared_experts=1, intermediate_size=24, num_attention_heads=4,
                  num_key_value_heads=4)
    if version == "v3":
        config = transformers.DeepseekV3Config(**common)
        block = transformers.models.deepseek_v3.modeling_deepseek_v3.DeepseekV3MoE(config)
    else:
        config = transformers.DeepseekV2Config(**common, topk_method="group_limited_greedy")
        block = transformers.models.deepseek_v2.modeling_deepseek_v2.DeepseekV2Moe(config)
    for m in block.modules():
        if hasattr(m, "config"):
            m.config._experts_implementation = impl
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.5)
    return block.eval()


@pytest.mark.parametrize("impl,cuda", [("grouped_mm", False), ("grouped_mm", True), ("batched_mm", False)],
                         ids=["grouped", "grouped-cuda", "batched"])
@pytest.mark.parametrize("version", ["v2", "v3"])
def test_deepseek_block_experts_fuse_with_the_graphs_routing(version: str, impl: str, cuda: bool) -> None:
    """DeepSeek-V2 (group-limited greedy over softmax scores) and V3 (sigmoid scores plus a correction bias, the
    top groups, a scaled renormalisation) route in ways ``moe`` does not name: their routing stays as the graph's
    ops and the experts become one ``moe_experts`` over its weights and ids (no sort, histc, gathers or products
    left); the ungated shared expert stays beside it. Equal to eager in fp32 (1e-5), many tokens and one."""
    block = _deepseek_block(version, impl)
    x = torch.randn(2, 7, 16)
    g, ctx = _fused(block, x, cuda)
    assert f"fuse-moe: {impl.split('_')[0]} (given routing): 1" in ctx.log, ctx.log
    # the routing's own top-ks (V3's group selection) are said to be part of it, not "left unfused"
    assert not any("left unfused" in line for line in ctx.log), ctx.log
    if version == "v3":
        assert sum("part of the routing moe_experts" in line for line in ctx.log) >= 1, ctx.log
    ops = [n.op for n in g.nodes]
    assert ops.count("moe_experts") == 1 and ops.count("moe") == 0
    assert ops.count("grouped_mm") == ops.count("histc") == ops.count("sort") == ops.count("matmul") == 0
    node = next(n for n in g.nodes if n.op == "moe_experts")
    assert node.inputs[2].producer.op == "topk" and node.attrs["act"] == "silu" and not node.attrs["bias"]
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = block(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


def test_a_routing_weight_read_twice_is_left_alone() -> None:
    """moe_experts weights each pair's output once: a block that also adds the routing weights elsewhere into its
    result (not a form the pass knows) keeps its ops, and the log says why."""
    block = _deepseek_block("v3", "batched_mm")
    cap = capture_export(block, (torch.randn(2, 7, 16),), {})
    graph = cap.graph
    mul = next(n for n in graph.nodes if n.op == "mul" and n.result.rank == 2 and any(
        v.producer is not None and v.producer.op == "unsqueeze" and v.producer.inputs[0].rank == 1 for v in n.inputs))
    col = next(v for v in mul.inputs if v.producer is not None and v.producer.op == "unsqueeze")
    twice = graph.insert_after(mul, graph.create_node("add", [mul.result, col]))  # weights added a second time
    for u in list(mul.result.users):
        if u is not twice:
            u.replace_input(mul.result, twice.result)
    ctx = PassContext()
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        graph, ctx)
    assert g.count("moe_experts") == 0
    assert any("routing weights are read by more than the one product" in line for line in ctx.log), ctx.log


def test_k_major_experts_are_read_in_place_where_their_copies_would_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    """gpt-oss's experts are K-major, so the fused op reads [E, N, K] copies; where those would take more than half
    the free memory of the weights' CUDA device (gpt-oss-20b on an 80 GB card), it reads views of the model's own
    weights instead (no copy but the biases' columns), equal to eager, and the log says how much was asked of how
    much."""
    import membound.passes.fuse_moe as fm

    block = _gpt_oss_block("grouped_mm", 0.5)
    x = torch.randn(2, 7, 16)
    need = sum(t.numel() * t.element_size() for n, t in block.named_parameters() if n.endswith(("gate_up_proj",
                                                                                                 "down_proj")))
    monkeypatch.setattr(fm, "free_memory", lambda devices: ("cuda:0", need))  # half of it: less than the copies
    ctx = PassContext()
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        capture_export(block, (x,), {}).graph, ctx)
    assert g.count("moe") == 1 and g.count("grouped_mm") == 0
    assert any("read in place, K-major" in line and "free on cuda:0" in line for line in ctx.log), ctx.log
    assert not any("experts.gate_up_proj.gate" in line for line in ctx.log if "copied" in line), ctx.log
    experts = block.block.experts
    gate = g.tensors["block.experts.gate_up_proj.gate"]
    assert gate.untyped_storage().data_ptr() == experts.gate_up_proj.untyped_storage().data_ptr()
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = block(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(fm, "free_memory", lambda devices: ("cuda:0", 3 * need))  # room enough: copies
    g = PassManager([get_pass(p) for p in CLEANUP_PASSES] + [fuse_moe, get_pass("dead-code-elimination")]).run(
        capture_export(block, (x,), {}).graph, PassContext())
    assert g.tensors["block.experts.gate_up_proj.gate"].is_contiguous()


def test_phimoe_sparsemixer_ids_without_a_topk_fuse_with_the_graphs_routing() -> None:
    """PhiMoE's sparsemixer picks each token's two experts with two ``max`` and joins their indices: no ``topk`` to
    anchor on. fuse-moe finds the ids the experts are sorted by instead, and the experts become one ``moe_experts`` a
    layer over the graph's routing; greedy tokens equal eager's (reference backend, fp32)."""
    import membound

    torch.manual_seed(0)
    config = transformers.PhimoeConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, num_local_experts=4,
                                       num_experts_per_tok=2, max_position_embeddings=64)
    model = transformers.PhimoeForCausalLM(config).eval()
    ids = torch.randint(3, 61, (1, 6))
    compiled = membound.compile(model, backend="reference")
    out = membound.generate(compiled, ids, 4)
    ops = [n.op for n in compiled._kv_program.decode_graph.nodes]
    assert ops.count("moe_experts") == 2 and ops.count("grouped_mm") == 0 and ops.count("sort") == 0, ops
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, want)


@pytest.mark.skipif(not hasattr(transformers, "HYV4Config"), reason="HY-V4 is not in this transformers")
@pytest.mark.parametrize("limit", [0.5, 100.0])
def test_hy_v4_clamped_silu_experts_fuse_and_match_eager(limit: float) -> None:
    """HY-V4's experts: ``silu(min(g, L)) * clamp(u, -L, L)`` (the clamped silu, no alpha, no +1) behind a routing
    the graph computes, looped over the experts hit: one ``moe_experts {act="silu", limit=L}``, equal to eager in
    fp32 (1e-5) on many tokens and one. The limit 0.5 binds at these weights; 100 does not."""
    torch.manual_seed(0)
    config = transformers.HYV4Config(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     num_key_value_heads=1, head_dim=8, moe_intermediate_size=8, num_local_experts=5,
                                     num_experts_per_tok=2, n_shared_experts=1, swiglu_limit=limit,
                                     mlp_layer_types=["dense", "sparse"], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    # the block as the model holds it: the model picks its experts' implementation (grouped_mm on the CPU)
    block = transformers.HYV4ForCausalLM(config).model.layers[1].mlp
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.5)
    block = block.eval()
    x = torch.randn(2, 7, 16)
    g, ctx = _fused(block, x)
    (node,) = [n for n in g.nodes if n.op in ("moe", "moe_experts")]
    assert (node.op, node.attrs["act"], node.attrs["limit"]) == ("moe_experts", "silu", limit), ctx.log
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = block(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)
