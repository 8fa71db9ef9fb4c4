"""Generated gathers never read out of bounds (membound.backends.triton.bounds).

An id >= the table size or < 0 given to ``embedding`` (eager raises) raises ``GatherIndexError`` naming
the op, the input, the values found and the allowed range; so does an ``index`` index outside
``[-n, n)``. With the host check off, a wild id (10**6) reads a clamped row instead of crashing the
process; ``MEMBOUND_DEBUG=bounds`` adds device asserts that also catch indices computed in the graph.
"""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.backends.reference import run_graph
from membound.backends.triton import TritonExecutable
from membound.backends.triton.bounds import GatherIndexError
from membound.ir import Graph, parse, verify
from membound.models.build import build_model

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

EMBED = """graph @t(%ids: i64[B, S]) params(%emb: f32[11, 6]) {
    %flat = reshape(%ids) {shape=[B, S]} : i64[B, S]
    %e = embedding(%emb, %flat) : f32[B, S, 6]
    %y = mul(%e, %e) : f32[B, S, 6]
    return %y
}"""
INDEX = """graph @t(%x: f32[B, 7, 5], %k: i64[B, S]) {
    %b = arange() {start=0, end=B, step=1, dtype=i64} : i64[B]
    %bi = unsqueeze(%b) {dim=1} : i64[B, 1]
    %g = index(%x, %bi, %k) {dims=[0, 1]} : f32[B, S, 5]
    %y = add(%g, %g) : f32[B, S, 5]
    return %y
}"""
# torch.gather along the last dim, its index an input, in a fused kernel with what reads it
GATHER = """graph @t(%x: f32[B, 7, 5], %k: i64[B, 7, 3]) {
    %g = gather(%x, %k) {dim=2} : f32[B, 7, 3]
    %y = mul(%g, %g) : f32[B, 7, 3]
    return %y
}"""
# a short convolution's decode step as canonicalize leaves it: the ring read at computed slots (gather along the
# ring), masked before the row's start, times the taps, plus the new input; one kernel
RING = """graph @t(%ring: f32[B, 9, 3], %x: f32[B, 9, 1], %pos: i64[B, 1]) params(%w: f32[9, 3]) {
    %one = constant() {value=1, dtype=i64} : i64[]
    %two = constant() {value=2, dtype=i64} : i64[]
    %three = constant() {value=3, dtype=i64} : i64[]
    %zero = constant() {value=0, dtype=i64} : i64[]
    %zf = constant() {value=0.0, dtype=f32} : f32[]
    %p1 = sub(%pos, %one) : i64[B, 1]
    %p2 = sub(%pos, %two) : i64[B, 1]
    %s1 = remainder(%p1, %three) : i64[B, 1]
    %s2 = remainder(%p2, %three) : i64[B, 1]
    %i1 = reshape(%s1) {shape=[B, 1, 1]} : i64[B, 1, 1]
    %i2 = reshape(%s2) {shape=[B, 1, 1]} : i64[B, 1, 1]
    %e1 = expand(%i1) {shape=[B, 9, 1]} : i64[B, 9, 1]
    %e2 = expand(%i2) {shape=[B, 9, 1]} : i64[B, 9, 1]
    %g1 = gather(%ring, %e1) {dim=2} : f32[B, 9, 1]
    %g2 = gather(%ring, %e2) {dim=2} : f32[B, 9, 1]
    %k1 = ge(%p1, %zero) : bool[B, 1]
    %k2 = ge(%p2, %zero) : bool[B, 1]
    %m1 = reshape(%k1) {shape=[B, 1, 1]} : bool[B, 1, 1]
    %m2 = reshape(%k2) {shape=[B, 1, 1]} : bool[B, 1, 1]
    %h1 = where(%m1, %g1, %zf) : f32[B, 9, 1]
    %h2 = where(%m2, %g2, %zf) : f32[B, 9, 1]
    %w0 = slice(%w) {dim=1, start=0, end=1, step=1} : f32[9, 1]
    %w1 = slice(%w) {dim=1, start=1, end=2, step=1} : f32[9, 1]
    %w2 = slice(%w) {dim=1, start=2, end=3, step=1} : f32[9, 1]
    %a = mul(%h2, %w0) : f32[B, 9, 1]
    %b = mul(%h1, %w1) : f32[B, 9, 1]
    %c = mul(%x, %w2) : f32[B, 9, 1]
    %ab = add(%a, %b) : f32[B, 9, 1]
    %abc = add(%ab, %c) : f32[B, 9, 1]
    %y = silu(%abc) : f32[B, 9, 1]
    return %y
}"""
COMPUTED = """graph @t(%ids: i64[B, S]) params(%emb: f32[11, 6]) {
    %three = constant() {value=3, dtype=i64} : i64[]
    %k = add(%ids, %three) : i64[B, S]
    %e = embedding(%emb, %k) : f32[B, S, 6]
    %y = mul(%e, %e) : f32[B, S, 6]
    return %y
}"""


def graph(text: str) -> Graph:
    g = parse(text)
    gen = torch.Generator().manual_seed(0)
    for p in g.params:
        g.tensors[p.name] = torch.randn(p.type.concrete_shape({}), generator=gen).to(DEVICE)
    verify(g)
    return g


def fused(exe: TritonExecutable, op: str) -> bool:
    return any(op in [m.op for m in k.members] for k in exe.partition.kernels)


@pytest.mark.parametrize("bad,found", [(11, "[1, 11]"), (-1, "[-1, 2]"), (10**6, "[1, 1000000]")])
def test_embedding_id_out_of_range_raises(bad: int, found: str, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    g = graph(EMBED)
    exe = TritonExecutable(g)
    assert fused(exe, "embedding"), exe.partition.describe()
    ok = torch.tensor([[1, 2, 10], [0, 5, 3]], device=DEVICE)
    torch.testing.assert_close(exe([ok])[0], run_graph(g, [ok])[0])
    ids = torch.tensor([[1, 2, bad], [1, 2, 1]], device=DEVICE)
    with pytest.raises(GatherIndexError, match=r"embedding %e: input %ids holds token ids in " + found.replace(
            "[", r"\[").replace("]", r"\]") + r", but dim 0 of %emb has 11 entries \(allowed: 0 <= i < 11\)"):
        exe([ids])
    with pytest.raises(IndexError):  # what eager does: GatherIndexError is an IndexError too
        torch.nn.functional.embedding(ids.cpu(), g.tensors["emb"].cpu())


def test_index_allows_negatives_and_checks_both_ends(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    g = graph(INDEX)
    exe = TritonExecutable(g)
    assert fused(exe, "index"), exe.partition.describe()
    x = torch.randn(2, 7, 5, device=DEVICE)
    k = torch.tensor([[-7, 6, -1], [0, 3, -4]], device=DEVICE)  # -n and n-1 are the ends
    torch.testing.assert_close(exe([x, k])[0], run_graph(g, [x, k])[0])
    for bad, found in ((7, r"\[-7, 7\]"), (-8, r"\[-8, 6\]")):
        kb = k.clone()
        kb[0, 0 if bad < 0 else 1] = bad
        with pytest.raises(GatherIndexError, match=r"index %g: input %k holds indices in " + found +
                           r", but dim 1 of %x has 7 entries \(allowed: -7 <= i < 7"):
            exe([x, kb])


def test_gather_is_fused_and_checks_its_input_index(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    g = graph(GATHER)
    exe = TritonExecutable(g)
    assert fused(exe, "gather"), exe.partition.describe()
    x = torch.randn(3, 7, 5, device=DEVICE)
    k = torch.randint(0, 5, (3, 7, 3), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    torch.testing.assert_close(exe([x, k])[0], run_graph(g, [x, k])[0], rtol=0, atol=0)  # a copy and one product
    for bad, found in ((5, r"\[0, 5\]"), (-1, r"\[-1, 4\]")):  # torch.gather takes no negative index
        kb = k.clone()
        kb[1, 2, 0] = bad
        with pytest.raises(GatherIndexError, match=r"gather %g: input %k holds indices in " + found +
                           r", but dim 2 of %x has 5 entries \(allowed: 0 <= i < 5\)"):
            exe([x, kb])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_a_short_convolution_step_is_one_kernel(dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """The ring read at computed slots, masked, weighted and summed with the new input: one generated kernel
    (the [B, 1] slot arithmetic beside it is its own, as in a model, where the ring's write shares it), equal to
    the reference (fp32: the same products and adds in one order, 1e-6; fp16: 1e-3, the silu)."""
    if not INTERP.runs_here(request):
        return
    g = graph(RING.replace("f32", "f16") if dtype == torch.float16 else RING)
    g.tensors["w"] = g.tensors["w"].to(dtype)
    exe = TritonExecutable(g)
    kernels = exe.partition.kernels
    conv = [k for k in kernels if {"gather", "where", "mul", "add", "silu"} <= {m.op for m in k.members}]
    assert len(kernels) == 2 and len(conv) == 1 and len(conv[0].members) == 10, exe.partition.describe()
    gen = torch.Generator().manual_seed(2)
    ring = torch.randn(5, 9, 3, generator=gen).to(DEVICE, dtype)
    x = torch.randn(5, 9, 1, generator=gen).to(DEVICE, dtype)
    pos = torch.tensor([[0], [1], [2], [7], [12]], device=DEVICE)  # fresh rows read zeros before position 0
    tol = 1e-6 if dtype == torch.float32 else 1e-3
    torch.testing.assert_close(exe([ring, x, pos])[0], run_graph(g, [ring, x, pos])[0], rtol=tol, atol=tol)


def test_without_the_host_check_a_wild_id_reads_a_clamped_row(monkeypatch: pytest.MonkeyPatch,
                                                              request: pytest.FixtureRequest) -> None:
    """Never a segfault or an out-of-bounds read: the generated gather clamps its address."""
    if not INTERP.runs_here(request):
        return
    monkeypatch.setenv("MEMBOUND_CHECK_INDICES", "0")
    g = graph(EMBED)
    exe = TritonExecutable(g)
    ids = torch.tensor([[1, 2, 10**6], [-10**6, 2, 1]], device=DEVICE)
    (y,) = exe([ids])
    emb = g.tensors["emb"]
    torch.testing.assert_close(y[0, 2], emb[10] * emb[10])
    torch.testing.assert_close(y[1, 0], emb[0] * emb[0])


def test_debug_bounds_asserts_indices_computed_in_the_graph(monkeypatch: pytest.MonkeyPatch,
                                                             request: pytest.FixtureRequest) -> None:
    """Ids computed inside the graph are not checked on the host; MEMBOUND_DEBUG=bounds asserts them."""
    if DEVICE == "cuda":
        pytest.skip("a failed device assert poisons the CUDA context; the CPU interpreter runs the same code")
    if not INTERP.runs_here(request):
        return
    g = graph(COMPUTED)
    ids = torch.tensor([[1, 2, 9]], device=DEVICE)  # 9 + 3 = 12 >= 11
    plain = TritonExecutable(g)
    assert "device_assert" not in plain.source and not plain.gather_checks
    monkeypatch.setenv("MEMBOUND_DEBUG", "bounds")
    exe = TritonExecutable(g)
    assert "@triton.jit(debug=True)" in exe.source and "tl.device_assert(" in exe.source
    good = torch.tensor([[1, 2, 7]], device=DEVICE)
    torch.testing.assert_close(exe([good])[0], run_graph(g, [good])[0])
    with pytest.raises(Exception, match=r"embedding %e: index out of range \[0, 11\) in %k \(MEMBOUND_DEBUG=bounds\)"):
        exe([ids])


def test_compiled_model_rejects_a_token_id_past_the_vocabulary(request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    model = build_model("llama-tiny").to(DEVICE)
    compiled = membound.compile(model, backend="triton")
    ids = torch.randint(0, 256, (2, 5), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    torch.testing.assert_close(compiled(ids), model(ids), atol=1e-4, rtol=1e-4)
    ids[1, 3] = 256
    with pytest.raises(GatherIndexError, match=r"embedding %\S+: input %\S+ holds token ids in \[\d+, 256\], "
                                               r"but dim 0 of %\S+ has 256 entries"):
        compiled(ids)
