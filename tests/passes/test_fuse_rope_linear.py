"""fuse-rope-linear: IR before/after (HF's rotate_half form, operands in either order), numerics, what it leaves
alone (and says why), and HF models (Llama, Qwen2 with a q/k/v bias, Mistral) whose greedy generate with the
``decode-rope`` pipeline equals eager's, the decode graph holding one ``linear_rope`` a layer and no rotation."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # the triton backend's kernels on the CPU

import pytest  # noqa: E402
from pass_testing import apply, check_numerics, check_rewrite, check_unchanged, parse_with_params, tiny_hf  # noqa: E402

import membound  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.passes import PassContext  # noqa: E402
from membound.passes.fuse_rope_linear import fuse_rope_linear  # noqa: E402


def _rope(t: str, heads: int, first: str = "mul(%T, %cos)", second: str = "mul(%Tr, %sin)",
          total: str = "add(%Tc, %Ts)", cat: str = "cat(%Tn, %T1) {dim=-1}") -> str:
    """HF's ``t * cos + rotate_half(t) * sin`` over ``%t`` (``[B, heads, S, 8]``), result ``%to``."""
    ty = f"f32[B, {heads}, S, 8]"
    half = f"f32[B, {heads}, S, 4]"
    lines = f"""%Tc = {first} : {ty}
  %T1 = slice(%T) {{dim=3, start=0, end=4, step=1}} : {half}
  %T2 = slice(%T) {{dim=3, start=4, end=8, step=1}} : {half}
  %Tn = neg(%T2) : {half}
  %Tr = {cat} : {ty}
  %Ts = {second} : {ty}
  %To = {total} : {ty}"""
    return lines.replace("%T", "%" + t)


def _graph(q_rope: str, k_rope: str, extra_out: str = "", cos_heads: int = 1, bias: bool = False,
           b: str = "B", s: str = "1") -> str:
    """A merged q/k/v projection (2 q heads, 1 k, 1 v of head dim 8) at ``b`` rows of ``s`` tokens."""
    b_param = ", %b: f32[32]" if bias else ""
    b_arg = ", %b" if bias else ""
    return _GRAPH.format(q_rope=q_rope, k_rope=k_rope, extra_out=extra_out, cos_heads=cos_heads, b_param=b_param,
                         b_arg=b_arg).replace("B,", f"{b},").replace("S,", f"{s},")


_GRAPH = """graph @f(%x: f32[B, S, 16], %cos: f32[B, {cos_heads}, S, 8], %sin: f32[B, {cos_heads}, S, 8]) \
params(%w: f32[32, 16]{b_param}) {{
  %qkv = linear(%x, %w{b_arg}) : f32[B, S, 32]
  %q, %k, %v = split(%qkv) {{dim=-1, sizes=[16, 8, 8]}} : f32[B, S, 16], f32[B, S, 8], f32[B, S, 8]
  %q4 = reshape(%q) {{shape=[B, S, 2, 8]}} : f32[B, S, 2, 8]
  %qh = transpose(%q4) {{dim0=1, dim1=2}} : f32[B, 2, S, 8]
  %k4 = reshape(%k) {{shape=[B, S, 1, 8]}} : f32[B, S, 1, 8]
  %kh = transpose(%k4) {{dim0=1, dim1=2}} : f32[B, 1, S, 8]
  {q_rope}
  {k_rope}
  return %qho, %kho, %v{extra_out}
}}"""


# q as HF writes it; k with every operand swapped (each mul and the add) and the cat's dim positive
Q = _rope("qh", 2)
K = _rope("kh", 1, first="mul(%cos, %T)", second="mul(%sin, %Tr)", total="add(%Ts, %Tc)", cat="cat(%Tn, %T1) {dim=3}")

AFTER = """graph @f(%x: f32[B, 1, 16], %cos: f32[B, 1, 1, 8], %sin: f32[B, 1, 1, 8]) params(%w: f32[32, 16]BP) {
  %0 = squeeze(%cos) {dims=[1]} : f32[B, 1, 8]
  %1 = squeeze(%sin) {dims=[1]} : f32[B, 1, 8]
  %2 = linear_rope(%x, %w, %0, %1BA) {head_dim=8, rope_cols=24} : f32[B, 1, 32]
  %q, %k, %v = split(%2) {dim=-1, sizes=[16, 8, 8]} : f32[B, 1, 16], f32[B, 1, 8], f32[B, 1, 8]
  %q4 = reshape(%q) {shape=[B, 1, 2, 8]} : f32[B, 1, 2, 8]
  %qh = transpose(%q4) {dim0=1, dim1=2} : f32[B, 2, 1, 8]
  %k4 = reshape(%k) {shape=[B, 1, 1, 8]} : f32[B, 1, 1, 8]
  %kh = transpose(%k4) {dim0=1, dim1=2} : f32[B, 1, 1, 8]
  return %qh, %kh, %v
}"""


@pytest.mark.parametrize("bias", [False, True], ids=["plain", "bias"])
def test_ir_and_numerics(bias: bool) -> None:
    before = _graph(Q, K, bias=bias)
    after = AFTER.replace("BP", ", %b: f32[32]" if bias else "").replace("BA", ", %b" if bias else "")
    check_rewrite(fuse_rope_linear, before, after)
    check_numerics(fuse_rope_linear, before, rtol=1e-6, atol=1e-6)


def test_a_projection_rotated_whole() -> None:
    """An unmerged q projection (no split): every column rotated."""
    text = """graph @f(%x: f32[B, 1, 16], %cos: f32[B, 1, 1, 8], %sin: f32[B, 1, 1, 8]) params(%w: f32[16, 16]) {
  %q = linear(%x, %w) : f32[B, 1, 16]
  %q4 = reshape(%q) {shape=[B, 1, 2, 8]} : f32[B, 1, 2, 8]
  %qh = transpose(%q4) {dim0=1, dim1=2} : f32[B, 2, 1, 8]
  QROPE
  return %qho
}""".replace("QROPE", Q.replace("S,", "1,"))
    g = check_numerics(fuse_rope_linear, text, rtol=1e-6, atol=1e-6)
    (node,) = [n for n in g.nodes if n.op == "linear_rope"]
    assert node.attrs == {"head_dim": 8, "rope_cols": 16}


UNCHANGED = [
    # rotate_half the other way round (cat(t1, -t2)): not HF's rotation
    (_graph(Q.replace("cat(%qhn, %qh1)", "cat(%qh1, %qhn)"), K), None),
    # cos / sin per head (k not rotated here): the kernel reads one table a row
    (_graph(Q, "%kho = neg(%kh) : f32[B, 1, 1, 8]", cos_heads=2), None),
    # the unrotated q is returned too: its values must stay
    (_graph(Q, K, extra_out=", %qh"), None),
    # k rotated but not q: the rotated columns are not a prefix
    (_graph("%qho = neg(%qh) : f32[B, 2, 1, 8]", K), "not a prefix of the split"),
]


@pytest.mark.parametrize("text,why", UNCHANGED)
def test_unchanged(text: str, why: str) -> None:
    check_unchanged(fuse_rope_linear, text)
    if why:
        ctx = PassContext()
        apply(fuse_rope_linear, parse_with_params(text), ctx)
        assert any(why in line for line in ctx.log), ctx.log


def test_the_cost_model_decides_at_decode_and_declines_a_prefill() -> None:
    g = parse_with_params(_graph(Q, K))
    ctx = PassContext(cost=RooflineCost(Hardware.named("h200")))
    assert apply(fuse_rope_linear, g, ctx) and any(line.endswith("linear_rope: 1") for line in ctx.log)
    # no cost model, 4 rows of 8 tokens: past the GEMV range, left alone with the reason
    g, ctx = parse_with_params(_graph(Q, K, b="4", s="8")), PassContext()
    assert not apply(fuse_rope_linear, g, ctx)
    assert any("not a GEMV" in line for line in ctx.log), ctx.log


def test_step_plan_prices_it_as_the_plain_linear() -> None:
    from membound.backends.triton.step_plan import linear_kind

    assert [linear_kind("linear_rope", m) for m in (1, 8, 17)] == ["gemv_row", "gemv_swap", "cublas"]


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_hf_models_decode_with_linear_rope(family: str, backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Greedy generate with the decode-rope pipeline equals eager (fp32; the triton backend under the
    interpreter on CPU, on the GPU where there is one), and the decode graph holds one linear_rope a layer,
    no neg (the rotations are gone) and no plain q/k/v projection."""
    if backend == "triton" and family == "mistral" and not torch.cuda.is_available():
        pytest.skip("triton backend under the interpreter: Llama and Qwen2 (a bias) stand for the three")
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-rope")
    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"  # no interpreter beside CUDA
    model = tiny_hf(family).to(device)
    compiled = membound.compile(model, backend=backend)
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        want = model.generate(ids, max_new_tokens=6, do_sample=False)
    got = membound.generate(compiled, ids, 6)
    assert torch.equal(got, want)
    ops = [n.op for n in compiled._kv_program.decode_graph.nodes]
    assert ops.count("linear_rope") == 2 and "neg" not in ops, ops


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_builtin_llama_decodes_with_linear_rope(backend: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """membound's own Llama (the demo's model) unsqueezes its cos / sin tables once for q and once for k (the
    decode pipeline runs no CSE): the pass takes them as one table, reads the unsqueeze's source (no squeeze
    node), and greedy generate equals the default decode pipeline's."""
    from membound.models import build_model

    device = "cuda" if backend == "triton" and torch.cuda.is_available() else "cpu"
    model = build_model("llama-tiny").to(device)
    ids = torch.randint(0, 256, (2, 7), generator=torch.Generator().manual_seed(3)).to(device)
    want = membound.generate(membound.compile(model, backend=backend), ids, 5)
    monkeypatch.setenv("MEMBOUND_DECODE_PIPELINE", "decode-rope")
    compiled = membound.compile(model, backend=backend)
    assert torch.equal(membound.generate(compiled, ids, 5), want)
    ops = [n.op for n in compiled._kv_program.decode_graph.nodes]
    assert ops.count("linear_rope") == 2 and "neg" not in ops and "squeeze" not in ops, ops
