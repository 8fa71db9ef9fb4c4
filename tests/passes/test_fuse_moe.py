"""fuse-moe: IR before/after for the grouped (HF), gathered (gpt-fast / built-in) and looped forms,
numerics against the unfused graph and against eager modules, the blocks it must leave alone.

Tolerances: fp32, 1e-5 (the fused op sums the experts in another order).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pass_testing import check_numerics, check_rewrite, check_unchanged, parse_with_params
from torch import nn

from membound.backends.reference import run_graph
from membound.frontends import capture_export
from membound.models.mixtral import MoEFeedForward
from membound.passes import PassContext, PassManager, default_pipeline
from membound.passes.fuse_moe import fuse_moe

# transformers' MixtralSparseMoeBlock (grouped_mm experts), captured and canonicalised
GROUPED = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.gate_up_proj: f32[3, 12, 8], %experts.down_proj: f32[3, 8, 6]) {
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
      %16 = cast(%10) {dtype=f32} : f32[2*B*S]
      %17 = histc(%16) {bins=3, min=0.0, max=2.0} : f32[3]
      %18 = cumsum(%17) {dim=0, dtype=i32} : i32[3]
      %19 = transpose(%experts.gate_up_proj) {dim0=-2, dim1=-1} : f32[3, 8, 12]
      %20 = grouped_mm(%14, %19, %18) : f32[2*B*S, 12]
      %21, %22 = split(%20) {dim=1, sizes=[6, 6]} : f32[2*B*S, 6], f32[2*B*S, 6]
      %23 = silu(%21) : f32[2*B*S, 6]
      %24 = mul(%23, %22) : f32[2*B*S, 6]
      %25 = transpose(%experts.down_proj) {dim0=-2, dim1=-1} : f32[3, 6, 8]
      %26 = grouped_mm(%24, %25, %18) : f32[2*B*S, 8]
      %27 = unsqueeze(%15) {dim=-1} : f32[2*B*S, 1]
      %28 = mul(%26, %27) : f32[2*B*S, 8]
      %29 = full() {shape=[2*B*S], value=0, dtype=i64} : i64[2*B*S]
      %30 = arange() {start=0, end=2*B*S, step=1, dtype=i64} : i64[2*B*S]
      %31 = index_put(%29, %30, %11) {dims=[0], accumulate=false} : i64[2*B*S]
      %32 = index(%28, %31) {dims=[0]} : f32[2*B*S, 8]
      %33 = reshape(%32) {shape=[B*S, 2, 8]} : f32[B*S, 2, 8]
      %34 = sum(%33) {dims=[1], keepdim=false, dtype=none} : f32[B*S, 8]
      %35 = reshape(%34) {shape=[B, S, 8]} : f32[B, S, 8]
      return %35
    }"""

GROUPED_AFTER = """graph @MixtralSparseMoeBlock(%hidden_states: f32[B, S, 8]) params(%gate.weight: f32[3, 8], %experts.down_proj: f32[3, 8, 6], %experts.gate_up_proj.gate: f32[3, 6, 8], %experts.gate_up_proj.up: f32[3, 6, 8]) {
  %0 = reshape(%hidden_states) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = moe(%0, %gate.weight, %experts.gate_up_proj.gate, %experts.gate_up_proj.up, %experts.down_proj) {top_k=2, softmax_first=true, renormalize=true, act="silu"} : f32[B*S, 8]
  %35 = reshape(%1) {shape=[B, S, 8]} : f32[B, S, 8]
  return %35
}"""

# membound.models.mixtral.MoEFeedForward: gathered expert weights and batched products (gpt-fast)
GATHERED = """graph @MoEFeedForward(%x: f32[B, S, 8]) params(%w1: f32[3, 6, 8], %w3: f32[3, 6, 8], %w2: f32[3, 8, 6], %gate.weight: f32[3, 8]) {
      %0 = reshape(%x) {shape=[B*S, 8]} : f32[B*S, 8]
      %1 = linear(%0, %gate.weight) : f32[B*S, 3]
      %2 = softmax(%1) {dim=-1, dtype=none} : f32[B*S, 3]
      %3, %4 = topk(%2) {k=2, dim=-1, largest=true, sorted=true} : f32[B*S, 2], i64[B*S, 2]
      %5 = sum(%3) {dims=[-1], keepdim=true, dtype=none} : f32[B*S, 1]
      %6 = div(%3, %5) {rounding_mode=none} : f32[B*S, 2]
      %7 = index(%w1, %4) {dims=[0]} : f32[B*S, 2, 6, 8]
      %8 = index(%w3, %4) {dims=[0]} : f32[B*S, 2, 6, 8]
      %9 = index(%w2, %4) {dims=[0]} : f32[B*S, 2, 8, 6]
      %10 = unsqueeze(%0) {dim=1} : f32[B*S, 1, 8]
      %11 = unsqueeze(%10) {dim=3} : f32[B*S, 1, 8, 1]
      %12 = matmul(%7, %11) : f32[B*S, 2, 6, 1]
      %13 = squeeze(%12) {dims=[3]} : f32[B*S, 2, 6]
      %14 = silu(%13) : f32[B*S, 2, 6]
      %15 = matmul(%8, %11) : f32[B*S, 2, 6, 1]
      %16 = squeeze(%15) {dims=[3]} : f32[B*S, 2, 6]
      %17 = mul(%14, %16) : f32[B*S, 2, 6]
      %18 = unsqueeze(%17) {dim=-1} : f32[B*S, 2, 6, 1]
      %19 = matmul(%9, %18) : f32[B*S, 2, 8, 1]
      %20 = squeeze(%19) {dims=[3]} : f32[B*S, 2, 8]
      %21 = unsqueeze(%6) {dim=1} : f32[B*S, 1, 2]
      %22 = matmul(%21, %20) : f32[B*S, 1, 8]
      %25 = reshape(%22) {shape=[B, S, 8]} : f32[B, S, 8]
      return %25
    }"""

GATHERED_AFTER = """graph @MoEFeedForward(%x: f32[B, S, 8]) params(%w1: f32[3, 6, 8], %w3: f32[3, 6, 8], %w2: f32[3, 8, 6], %gate.weight: f32[3, 8]) {
  %0 = reshape(%x) {shape=[B*S, 8]} : f32[B*S, 8]
  %23 = moe(%0, %gate.weight, %w1, %w3, %w2) {top_k=2, softmax_first=true, renormalize=true, act="silu"} : f32[B*S, 8]
  %24 = reshape(%23) {shape=[B*S, 1, 8]} : f32[B*S, 1, 8]
  %25 = reshape(%24) {shape=[B, S, 8]} : f32[B, S, 8]
  return %25
}"""

# a dense loop over two experts, top-1, each weighted by where(ids == e, weight, 0); softmax after top-k
LOOPED = """graph @loop(%x: f32[T, 8]) params(%router: f32[2, 8], %g0: f32[6, 8], %u0: f32[6, 8], %d0: f32[8, 6], %g1: f32[6, 8], %u1: f32[6, 8], %d1: f32[8, 6]) {
  %l = linear(%x, %router) : f32[T, 2]
  %v, %i = topk(%l) {k=1, dim=-1, largest=true, sorted=true} : f32[T, 1], i64[T, 1]
  %p = softmax(%v) {dim=-1, dtype=none} : f32[T, 1]
  %zero = constant() {value=0.0, dtype=f32} : f32[]
  %a0 = linear(%x, %g0) : f32[T, 6]
  %b0 = linear(%x, %u0) : f32[T, 6]
  %s0 = silu(%a0) : f32[T, 6]
  %h0 = mul(%s0, %b0) : f32[T, 6]
  %y0 = linear(%h0, %d0) : f32[T, 8]
  %c0 = constant() {value=0, dtype=i64} : i64[]
  %m0 = eq(%i, %c0) : bool[T, 1]
  %r0 = where(%m0, %p, %zero) : f32[T, 1]
  %w0 = sum(%r0) {dims=[-1], keepdim=true, dtype=none} : f32[T, 1]
  %o0 = mul(%y0, %w0) : f32[T, 8]
  %a1 = linear(%x, %g1) : f32[T, 6]
  %b1 = linear(%x, %u1) : f32[T, 6]
  %s1 = silu(%a1) : f32[T, 6]
  %h1 = mul(%b1, %s1) : f32[T, 6]
  %y1 = linear(%h1, %d1) : f32[T, 8]
  %c1 = constant() {value=1, dtype=i64} : i64[]
  %m1 = eq(%c1, %i) : bool[T, 1]
  %r1 = where(%m1, %p, %zero) : f32[T, 1]
  %w1 = sum(%r1) {dims=[-1], keepdim=true, dtype=none} : f32[T, 1]
  %o1 = mul(%w1, %y1) : f32[T, 8]
  %out = add(%o0, %o1) : f32[T, 8]
  return %out
}"""

LOOPED_AFTER = """graph @loop(%x: f32[T, 8]) params(%router: f32[2, 8], %moe.w_gate: f32[2, 6, 8], %moe.w_up: f32[2, 6, 8], %moe.w_down: f32[2, 8, 6]) {
  %0 = moe(%x, %router, %moe.w_gate, %moe.w_up, %moe.w_down) {top_k=1, softmax_first=false, renormalize=false, act="silu"} : f32[T, 8]
  return %0
}"""

# transformers 4.x Granite-MoE as its dense capture writes it: each expert a slice of two [E, *, *] parameters, the
# gate/up product split in halves, the router's softmax after the top-k
def _sliced_expert(e: int) -> str:
    return f"""  %c{e} = constant() {{value={e}, dtype=i64}} : i64[]
  %q{e} = eq(%i, %c{e}) : bool[T, 1]
  %r{e} = where(%q{e}, %p, %z) : f32[T, 1]
  %w{e} = sum(%r{e}) {{dims=[-1], keepdim=true, dtype=none}} : f32[T, 1]
  %s{e} = select(%win) {{dim=0, index={e}}} : f32[12, 8]
  %h{e} = linear(%x, %s{e}) : f32[T, 12]
  %g{e}, %u{e} = split(%h{e}) {{dim=1, sizes=[6, 6]}} : f32[T, 6], f32[T, 6]
  %a{e} = silu(%g{e}) : f32[T, 6]
  %m{e} = mul(%a{e}, %u{e}) : f32[T, 6]
  %d{e} = select(%wout) {{dim=0, index={e}}} : f32[8, 6]
  %y{e} = linear(%m{e}, %d{e}) : f32[T, 8]
  %o{e} = mul(%y{e}, %w{e}) : f32[T, 8]
"""


SLICED = ("""graph @sliced(%x: f32[T, 8]) params(%win: f32[2, 12, 8], %wout: f32[2, 8, 6], %router: f32[2, 8]) {
  %l = linear(%x, %router) : f32[T, 2]
  %v, %i = topk(%l) {k=1, dim=1, largest=true, sorted=true} : f32[T, 1], i64[T, 1]
  %p = softmax(%v) {dim=1, dtype=none} : f32[T, 1]
  %z = full() {shape=[T, 1], value=0.0, dtype=f32} : f32[T, 1]
""" + _sliced_expert(0) + _sliced_expert(1) + """  %out = add(%o0, %o1) : f32[T, 8]
  return %out
}""")

SLICED_AFTER = """graph @sliced(%x: f32[T, 8]) params(%wout: f32[2, 8, 6], %router: f32[2, 8], %win.gate: f32[2, 6, 8], %win.up: f32[2, 6, 8]) {
  %0 = moe(%x, %router, %win.gate, %win.up, %wout) {top_k=1, softmax_first=false, renormalize=false, act="silu"} : f32[T, 8]
  return %0
}"""

CASES = [(GROUPED, GROUPED_AFTER), (GATHERED, GATHERED_AFTER), (LOOPED, LOOPED_AFTER), (SLICED, SLICED_AFTER)]


@pytest.mark.parametrize("before,expected", CASES, ids=["grouped", "gathered", "looped", "sliced"])
def test_ir(before: str, expected: str) -> None:
    check_rewrite(fuse_moe, before, expected)


@pytest.mark.parametrize("before", [c[0] for c in CASES], ids=["grouped", "gathered", "looped", "sliced"])
def test_numerics(before: str) -> None:
    check_numerics(fuse_moe, before, rtol=1e-5, atol=1e-5)


def test_looped_weights_are_stacked_copies_of_the_experts() -> None:
    g = parse_with_params(LOOPED)
    experts = [g.tensors[f"{w}{e}"] for w in "gud" for e in range(2)]
    fuse_moe(g, PassContext())
    assert torch.equal(g.tensors["moe.w_gate"][1], experts[1]) and torch.equal(g.tensors["moe.w_down"][0], experts[4])


def test_sliced_experts_must_be_weighted_as_their_slice() -> None:
    """Expert 0 computed with slice 1 (and 1 with 0): a permutation the moe op cannot express; left unfused."""
    crossed = SLICED.replace("select(%win) {dim=0, index=0}", "select(%win) {dim=0, index=9}")
    crossed = crossed.replace("select(%win) {dim=0, index=1}", "select(%win) {dim=0, index=0}")
    crossed = crossed.replace("select(%win) {dim=0, index=9}", "select(%win) {dim=0, index=1}")
    assert crossed != SLICED
    check_unchanged(fuse_moe, crossed)


def test_grouped_gate_up_are_views_of_the_model_weight() -> None:
    g = parse_with_params(GROUPED)
    gate_up = g.tensors["experts.gate_up_proj"]
    fuse_moe(g, PassContext())
    gate, up = g.tensors["experts.gate_up_proj.gate"], g.tensors["experts.gate_up_proj.up"]
    assert gate.data_ptr() == gate_up.data_ptr() and torch.equal(up, gate_up[:, 6:])


UNCHANGED = {
    # topk of the model's output logits (sampling), not of a router
    "sampling": """graph @f(%h: f32[B, 8], %bias: f32[B, 5]) params(%w: f32[5, 8]) {
      %l = linear(%h, %w) : f32[B, 5]
      %s = add(%l, %bias) : f32[B, 5]
      %v, %i = topk(%s) {k=2, dim=-1, largest=true, sorted=true} : f32[B, 2], i64[B, 2]
      return %v, %i
    }""",
    # gelu experts: the op computes silu experts only
    "gelu": GATHERED.replace("silu(", "gelu("),
    # the routing weights are also returned (an auxiliary output): the block is not closed
    "leak": LOOPED.replace("return %out", "return %out, %p"),
    # one expert missing from the loop
    "missing-expert": LOOPED.replace("%out = add(%o0, %o1) : f32[T, 8]", "%out = add(%o0, %x) : f32[T, 8]"),
}


@pytest.mark.parametrize("text", list(UNCHANGED.values()), ids=list(UNCHANGED))
def test_unmatched_blocks_stay_and_say_why(text: str) -> None:
    check_unchanged(fuse_moe, text)
    ctx = PassContext()
    fuse_moe(parse_with_params(text), ctx)
    assert len(ctx.log) == 1 and "left unfused:" in ctx.log[0]


# ---------------------------------------------------------------------------------------------
# modules written in the other forms, captured, fused, against eager
# ---------------------------------------------------------------------------------------------
class EinsumMoE(nn.Module):
    """gpt-fast's MoE: gather the chosen experts' weights, contract with einsum."""

    def __init__(self, d: int, i: int, e: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.gate = nn.Linear(d, e, bias=False)
        self.w1 = nn.Parameter(torch.randn(e, i, d) / d ** 0.5)
        self.w2 = nn.Parameter(torch.randn(e, d, i) / i ** 0.5)
        self.w3 = nn.Parameter(torch.randn(e, i, d) / d ** 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, x.shape[-1])  # [T, D]
        weights, ids = F.softmax(self.gate(x), dim=-1).topk(self.k, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        x1 = F.silu(torch.einsum("ti,taoi->tao", x, self.w1[ids]))
        x3 = torch.einsum("ti,taoi->tao", x, self.w3[ids])
        out = torch.einsum("tao,taio->tai", x1 * x3, self.w2[ids])
        return torch.einsum("tai,ta->ti", out, weights)


class LoopMoE(nn.Module):
    """A dense loop over experts: each expert runs on every token, weighted by where(ids == e)."""

    def __init__(self, d: int, i: int, e: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.router = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList(nn.ModuleDict({"w1": nn.Linear(d, i, bias=False), "w3": nn.Linear(d, i, bias=False),
                                                    "w2": nn.Linear(i, d, bias=False)}) for _ in range(e))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights, ids = self.router(x).softmax(dim=-1).topk(self.k, dim=-1)  # [T, k]
        out = torch.zeros_like(x)
        for e, ex in enumerate(self.experts):
            w = torch.where(ids == e, weights, torch.zeros_like(weights)).sum(dim=-1, keepdim=True)  # [T, 1]
            out = out + w * ex["w2"](F.silu(ex["w1"](x)) * ex["w3"](x))
        return out


def _fuse_and_compare(module: nn.Module, x: torch.Tensor, form: str) -> None:
    module.eval()
    cap = capture_export(module, (x,), {})
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["fuse-moe", "dead-code-elimination"]).run(cap.graph, ctx)
    assert g.count("moe") == 1 and g.count("topk") == 0, ctx.log
    assert any(f"fuse-moe: {form}: 1" == line for line in ctx.log), ctx.log
    for xs in (x, x[:1]):  # also a single token: most experts receive none
        with torch.no_grad():
            want = module(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2])
def test_einsum_form(k: int) -> None:
    torch.manual_seed(0)
    _fuse_and_compare(EinsumMoE(12, 10, 5, k), torch.randn(7, 12), "gathered")


@pytest.mark.parametrize("k", [1, 3])
def test_loop_form(k: int) -> None:
    torch.manual_seed(0)
    _fuse_and_compare(LoopMoE(12, 10, 4, k), torch.randn(7, 12), "looped")


def test_router_ties_and_top1_builtin() -> None:
    """Two experts with identical router rows always tie: the fused op keeps torch.topk's choice."""
    torch.manual_seed(0)
    moe = MoEFeedForward(12, 10, 5, 1)
    for p in moe.parameters():
        nn.init.normal_(p, std=0.3)
    with torch.no_grad():
        moe.gate.weight[3] = moe.gate.weight[1]
    _fuse_and_compare(moe, torch.randn(2, 7, 12), "gathered")
