"""The Triton backend's partitioner, memory plan and generated kernels.

Without a GPU the generated kernels run under Triton's interpreter on CPU tensors, in fp32 and fp16
(bf16 is broken in the interpreter). ``TRITON_INTERPRET=1`` must be set before anything imports
triton; it is set below, and when triton was already imported without it (another test module got
there first) every test that runs kernels re-runs itself in a fresh interpreter-mode process.

Tolerances: fp32 1e-4 relative to the max magnitude of the eager result (1e-5 against the reference
backend on single ops); fp16 1e-2. Inputs are random and never zero; sizes are odd (B=3, S=5) with a
size-1 batch case; the golden file pins the generated source of the built-in llama-tiny
(regenerate with ``MEMBOUND_UPDATE_GOLDEN=1``).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import sympy  # noqa: E402
from _small_models import small_llama  # noqa: E402  (a 2-layer Llama at half llama-tiny's width)

import membound  # noqa: E402
from membound.backends import compile_graph, resolve_backend  # noqa: E402
from membound.backends.reference import run_graph  # noqa: E402
from membound.backends.triton import Kernel, TritonExecutable, partition, plan_memory  # noqa: E402
from membound.backends.triton.executable import interpreted  # noqa: E402
from membound.backends.triton.indexing import expr_code, index_var, reshape_index  # noqa: E402
from membound.ir import Graph, parse, sym, verify  # noqa: E402
from membound.models.build import build_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# masked-off lanes of interpreted kernels compute log(0), 1/0...: numpy warns, the results are discarded
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
GOLDEN = Path(__file__).parent / "golden" / "llama_tiny_triton.py.golden"
# the passes the golden graph goes through (pinned: the golden tests codegen, not the default pipeline)
GOLDEN_PIPELINE = ["canonicalize", "constant-fold", "common-subexpression-elimination", "dead-code-elimination"]
TOL = {torch.float32: 1e-4, torch.float16: 1e-2}
BINDINGS = {"B": 3, "S": 5}


def _triton_interprets() -> bool:
    if DEVICE == "cuda":
        return True
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    return interpreted() and isinstance(tl.standard.sum, InterpretedFunction)


RUN_HERE = _triton_interprets()


_SUBPROCESS: dict[str, str] = {}  # test name -> "" (passed) or the failure text, from the one re-run


def runs_here(request: pytest.FixtureRequest) -> bool:
    """True: run the kernels in this process. False: Triton was imported here without the interpreter,
    so this whole module was re-run once in a fresh process with TRITON_INTERPRET=1, and this test
    passed there."""
    if RUN_HERE:
        return True
    if not _SUBPROCESS:
        _rerun_module_interpreted(request)
    name = request.node.name
    assert name in _SUBPROCESS, f"{name} did not run in the TRITON_INTERPRET=1 subprocess"
    assert _SUBPROCESS[name] == "", f"in a TRITON_INTERPRET=1 subprocess:\n{_SUBPROCESS[name]}"
    return False


def _rerun_module_interpreted(request: pytest.FixtureRequest) -> None:
    import tempfile
    import xml.etree.ElementTree as ET

    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        env = dict(os.environ, TRITON_INTERPRET="1")
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                            str(Path(__file__))], cwd=request.config.rootpath, env=env, capture_output=True,
                           text=True, timeout=900)
        assert report.exists(), f"the interpreter re-run did not report:\n{r.stdout[-3000:]}\n{r.stderr[-2000:]}"
        for case in ET.parse(report).getroot().iter("testcase"):
            failure = case.find("failure")
            if failure is None:
                failure = case.find("error")
            _SUBPROCESS[case.get("name", "")] = "" if failure is None else (failure.text or "failed")[-4000:]


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------
def rand_like_value(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random, never zero: floats |x| in [0.5, 1.5) with random signs; ints in [1, 7); random bools."""
    if dtype == torch.bool:
        return torch.rand(shape, generator=gen) > 0.5
    if dtype.is_floating_point:
        mag = torch.rand(shape, generator=gen) + 0.5
        sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
        return (mag * sign).to(dtype)
    return torch.randint(1, 7, shape, generator=gen).to(dtype)


def graph_from(text: str, seed: int = 0) -> Graph:
    g = parse(text)
    gen = torch.Generator().manual_seed(seed)
    binds = {sym(k): n for k, n in BINDINGS.items()}
    for v in list(g.params) + list(g.state):
        g.tensors[v.name] = rand_like_value(v.type.concrete_shape(binds), v.dtype, gen).to(DEVICE)
    verify(g)
    return g


def random_inputs(g: Graph, bindings: dict[str, int], seed: int = 1) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    binds = {sym(k): n for k, n in bindings.items()}
    return [rand_like_value(v.type.concrete_shape(binds), v.dtype, gen).to(DEVICE) for v in g.inputs]


def assert_close(got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, f"{got.dtype}{tuple(got.shape)} vs " \
                                                                f"{want.dtype}{tuple(want.shape)}"
    if not want.dtype.is_floating_point:
        assert torch.equal(got.cpu(), want.cpu())
        return
    scale = want.float().abs().max().clamp_min(1e-6)
    err = ((got.float() - want.float()).abs().max() / scale).item()
    assert err <= tol, f"relative error {err:.2e} > {tol:.0e}"


def kernel_ops(exe: TritonExecutable) -> list[list[str]]:
    return [[m.op for m in k.members] for k in exe.partition.kernels]


# ---------------------------------------------------------------------------------------------
# single-graph numerics: each case is fused (the kernels listed must appear) and matches the reference
# ---------------------------------------------------------------------------------------------
CASES: dict[str, tuple[str, list[list[str]]]] = {
    "residual_rms_norm": ("""graph @t(%x: {dt}[B, S, 24], %r: {dt}[B, S, 24]) params(%w: {dt}[24]) {{
        %a = add(%x, %r) : {dt}[B, S, 24]
        %n = rms_norm(%a, %w) {{eps=1e-05}} : {dt}[B, S, 24]
        return %a, %n
    }}""", [["add", "rms_norm"]]),
    "silu_mul_views": ("""graph @t(%g: {dt}[B, S, 11], %u: {dt}[B, 11, S]) {{
        %s = silu(%g) : {dt}[B, S, 11]
        %ut = transpose(%u) {{dim0=1, dim1=2}} : {dt}[B, S, 11]
        %m = mul(%s, %ut) : {dt}[B, S, 11]
        return %m
    }}""", [["silu", "mul"]]),
    "softmax_scaled_masked": ("""graph @t(%x: {dt}[B, S, S]) {{
        %i = arange() {{start=0, end=S, step=1, dtype=i64}} : i64[S]
        %row = unsqueeze(%i) {{dim=1}} : i64[S, 1]
        %col = unsqueeze(%i) {{dim=0}} : i64[1, S]
        %keep = le(%col, %row) : bool[S, S]
        %c = constant() {{value=0.25, dtype={dt}}} : {dt}[]
        %xs = mul(%x, %c) : {dt}[B, S, S]
        %ninf = constant() {{value=-inf, dtype={dt}}} : {dt}[]
        %xm = where(%keep, %xs, %ninf) : {dt}[B, S, S]
        %p = softmax(%xm) {{dim=-1, dtype=f32}} : f32[B, S, S]
        %q = cast(%p) {{dtype={dt}}} : {dt}[B, S, S]
        return %q
    }}""", [["le", "mul", "where", "softmax", "cast"]]),
    "layer_norm_gelu": ("""graph @t(%x: {dt}[B, 1, 13]) params(%w: {dt}[13], %b: {dt}[13]) {{
        %n = layer_norm(%x, %w, %b) {{ndim=1, eps=1e-05}} : {dt}[B, 1, 13]
        %g = gelu(%n) {{approximate="tanh"}} : {dt}[B, 1, 13]
        %h = gelu(%g) {{approximate="none"}} : {dt}[B, 1, 13]
        return %h
    }}""", [["layer_norm", "gelu", "gelu"]]),
    "row_reductions": ("""graph @t(%x: {dt}[B, S, 7]) {{
        %s = sum(%x) {{dims=[-1], keepdim=true, dtype=none}} : {dt}[B, S, 1]
        %m = mean(%x) {{dims=[2], keepdim=false, dtype=none}} : {dt}[B, S]
        %mx = amax(%x) {{dims=[-1], keepdim=true}} : {dt}[B, S, 1]
        %mn = amin(%x) {{dims=[-1], keepdim=false}} : {dt}[B, S]
        %d = sub(%x, %mx) : {dt}[B, S, 7]
        %ls = log_softmax(%d) {{dim=-1, dtype=none}} : {dt}[B, S, 7]
        %t = add(%ls, %s) : {dt}[B, S, 7]
        %dm = sub(%m, %mn) : {dt}[B, S]
        return %t, %dm
    }}""", [["sum", "amax", "sub", "log_softmax", "add", "mean", "amin", "sub"]]),  # siblings: one row kernel
    "centered_variance": ("""graph @t(%x: {dt}[B, 9]) {{
        %mu = mean(%x) {{dims=[-1], keepdim=true, dtype=none}} : {dt}[B, 1]
        %d = sub(%x, %mu) : {dt}[B, 9]
        %sq = mul(%d, %d) : {dt}[B, 9]
        %var = mean(%sq) {{dims=[-1], keepdim=true, dtype=none}} : {dt}[B, 1]
        %y = div(%d, %var) : {dt}[B, 9]
        return %y
    }}""", [["mean", "sub", "mul", "mean", "div"]]),
    # an interleaved mrope table (Qwen3.5): cos over 3 sections, interleaved by nested cats of slices, then doubled;
    # each element reads cos once (the cat picks the index, not the value), beside a cat of two other values
    "cat_of_views_of_one_value": ("""graph @t(%f: {dt}[3, B, 6], %y: {dt}[B, 12]) {{
        %c = cos(%f) : {dt}[3, B, 6]
        %t = select(%c) {{dim=0, index=0}} : {dt}[B, 6]
        %h = select(%c) {{dim=0, index=1}} : {dt}[B, 6]
        %w = select(%c) {{dim=0, index=2}} : {dt}[B, 6]
        %t3 = reshape(%t) {{shape=[B, 2, 3]}} : {dt}[B, 2, 3]
        %h3 = reshape(%h) {{shape=[B, 2, 3]}} : {dt}[B, 2, 3]
        %w3 = reshape(%w) {{shape=[B, 2, 3]}} : {dt}[B, 2, 3]
        %ts = slice(%t3) {{dim=2, start=0, end=1, step=1}} : {dt}[B, 2, 1]
        %hs = slice(%h3) {{dim=2, start=1, end=2, step=1}} : {dt}[B, 2, 1]
        %ws = slice(%w3) {{dim=2, start=2, end=3, step=1}} : {dt}[B, 2, 1]
        %hw = cat(%hs, %ws) {{dim=2}} : {dt}[B, 2, 2]
        %i3 = cat(%ts, %hw) {{dim=-1}} : {dt}[B, 2, 3]
        %i = reshape(%i3) {{shape=[B, 6]}} : {dt}[B, 6]
        %e = cat(%i, %i) {{dim=1}} : {dt}[B, 12]
        %n = neg(%y) : {dt}[B, 12]
        %m = cat(%e, %n) {{dim=0}} : {dt}[2 * B, 12]
        return %m
    }}""", [["cos", "cat", "cat", "cat", "neg", "cat"]]),
    "math": ("""graph @t(%x: {dt}[B, S, 3]) {{
        %a = abs(%x) : {dt}[B, S, 3]
        %l = log(%a) : {dt}[B, S, 3]
        %q = sqrt(%a) : {dt}[B, S, 3]
        %r = rsqrt(%a) : {dt}[B, S, 3]
        %e = exp(%x) : {dt}[B, S, 3]
        %s = sin(%x) : {dt}[B, S, 3]
        %c = cos(%x) : {dt}[B, S, 3]
        %t = tanh(%x) : {dt}[B, S, 3]
        %g = sigmoid(%x) : {dt}[B, S, 3]
        %f = erf(%x) : {dt}[B, S, 3]
        %rc = reciprocal(%x) : {dt}[B, S, 3]
        %fl = floor(%x) : {dt}[B, S, 3]
        %re = relu(%x) : {dt}[B, S, 3]
        %cl = clamp(%x) {{min=-0.75, max=1.0}} : {dt}[B, S, 3]
        %two = constant() {{value=2, dtype=i64}} : i64[]
        %p2 = pow(%x, %two) : {dt}[B, S, 3]
        %half = constant() {{value=0.5, dtype=f32}} : f32[]
        %ph = pow(%a, %half) : {dt}[B, S, 3]
        %mx = maximum(%l, %q) : {dt}[B, S, 3]
        %mn = minimum(%r, %e) : {dt}[B, S, 3]
        %rm = remainder(%x, %a) : {dt}[B, S, 3]
        %n = neg(%s) : {dt}[B, S, 3]
        %y1 = add(%mx, %mn) : {dt}[B, S, 3]
        %y2 = add(%y1, %c) : {dt}[B, S, 3]
        %y3 = add(%y2, %t) : {dt}[B, S, 3]
        %y4 = add(%y3, %g) : {dt}[B, S, 3]
        %y5 = add(%y4, %f) : {dt}[B, S, 3]
        %y6 = add(%y5, %rc) : {dt}[B, S, 3]
        %y7 = add(%y6, %fl) : {dt}[B, S, 3]
        %y8 = add(%y7, %re) : {dt}[B, S, 3]
        %y9 = add(%y8, %cl) : {dt}[B, S, 3]
        %y10 = add(%y9, %p2) : {dt}[B, S, 3]
        %y11 = add(%y10, %ph) : {dt}[B, S, 3]
        %y12 = add(%y11, %rm) : {dt}[B, S, 3]
        %y13 = add(%y12, %n) : {dt}[B, S, 3]
        return %y13
    }}""", [["abs", "log", "sqrt", "rsqrt", "exp", "sin", "cos", "tanh", "sigmoid", "erf", "reciprocal", "floor",
             "relu", "clamp", "pow", "pow", "maximum", "minimum", "remainder", "neg"] + ["add"] * 13]),
    "views_and_cat": ("""graph @t(%x: {dt}[B, 6, 4], %y: {dt}[4, 1, B]) {{
        %r = reshape(%x) {{shape=[B, 4, 6]}} : {dt}[B, 4, 6]
        %p = permute(%y) {{dims=[2, 0, 1]}} : {dt}[B, 4, 1]
        %e = expand(%p) {{shape=[B, 4, 6]}} : {dt}[B, 4, 6]
        %a = add(%r, %e) : {dt}[B, 4, 6]
        %s = slice(%a) {{dim=2, start=1, end=6, step=2}} : {dt}[B, 4, 3]
        %sel = select(%x) {{dim=1, index=5}} : {dt}[B, 4]
        %u = unsqueeze(%sel) {{dim=2}} : {dt}[B, 4, 1]
        %parts.0, %parts.1 = split(%x) {{dim=1, sizes=[2, 4]}} : {dt}[B, 2, 4], {dt}[B, 4, 4]
        %pt = transpose(%parts.1) {{dim0=1, dim1=2}} : {dt}[B, 4, 4]
        %c = cat(%s, %u, %pt) {{dim=2}} : {dt}[B, 4, 8]
        %m = mul(%c, %c) : {dt}[B, 4, 8]
        return %m, %parts.0
    }}""", [["add", "cat", "mul"]]),
    "gathers": ("""graph @t(%ids: i64[B, S], %x: {dt}[B, 7, 5]) params(%emb: {dt}[11, 6]) {{
        %e = embedding(%emb, %ids) : {dt}[B, S, 6]
        %three = constant() {{value=3, dtype=i64}} : i64[]
        %k = sub(%ids, %three) : i64[B, S]
        %b = arange() {{start=0, end=B, step=1, dtype=i64}} : i64[B]
        %bi = unsqueeze(%b) {{dim=1}} : i64[B, 1]
        %g = index(%x, %bi, %k) {{dims=[0, 1]}} : {dt}[B, S, 5]
        %es = slice(%e) {{dim=2, start=1, end=6, step=1}} : {dt}[B, S, 5]
        %y = add(%g, %es) : {dt}[B, S, 5]
        %h = index(%x, %bi, %k) {{dims=[0, 2]}} : {dt}[B, S, 7]
        %c = cumsum(%h) {{dim=-1, dtype=none}} : {dt}[B, S, 7]
        return %y, %c
    }}""", [["sub"], ["embedding", "index", "add"], ["index", "cumsum"]]),  # %k: two consumers, two shapes
}

INT_CASE = """graph @t(%x: i64[B, S], %y: i64[B, S], %f: f32[B, S]) {
    %four = constant() {value=4, dtype=i64} : i64[]
    %xn = sub(%x, %four) : i64[B, S]
    %fd = div(%xn, %y) {rounding_mode="floor"} : i64[B, S]
    %td = div(%xn, %y) {rounding_mode="trunc"} : i64[B, S]
    %rm = remainder(%xn, %y) : i64[B, S]
    %tdiv = div(%xn, %y) : f32[B, S]
    %lt = lt(%xn, %fd) : bool[B, S]
    %eq = eq(%rm, %td) : bool[B, S]
    %an = logical_and(%lt, %eq) : bool[B, S]
    %o = logical_or(%an, %lt) : bool[B, S]
    %nt = logical_not(%o) : bool[B, S]
    %ba = bitwise_and(%xn, %y) : i64[B, S]
    %bo = bitwise_or(%ba, %td) : i64[B, S]
    %w = where(%nt, %f, %tdiv) : f32[B, S]
    %h = cast(%w) {dtype=f16} : f16[B, S]
    %hb = cast(%h) {dtype=f32} : f32[B, S]
    %fi = cast(%f) {dtype=i64} : i64[B, S]
    %bf = cast(%nt) {dtype=f32} : f32[B, S]
    %z = add(%hb, %bf) : f32[B, S]
    %zs = sum(%fi) {dims=[-1], keepdim=false, dtype=none} : i64[B]
    return %fd, %td, %rm, %bo, %z, %zs
}"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_case_matches_reference(case: str, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not runs_here(request):
        return
    text, fused = CASES[case]
    g = graph_from(text.format(dt={torch.float32: "f32", torch.float16: "f16"}[dtype]))
    exe = TritonExecutable(g)
    assert kernel_ops(exe) == fused, exe.partition.describe()
    for bindings in (BINDINGS, {"B": 1, "S": 5}):
        inputs = random_inputs(g, bindings)
        want = run_graph(g, inputs)
        got = exe(inputs)
        for a, b in zip(got, want):
            assert_close(a, b, 1e-5 if dtype == torch.float32 else TOL[dtype])


def test_a_cat_of_views_of_one_value_computes_it_once() -> None:
    """The mrope case's kernel evaluates ``cos`` once an element (the nested cats choose where to read it), and the
    outer cat of the table and a negation still selects between two values."""
    text, _ = CASES["cat_of_views_of_one_value"]
    source = TritonExecutable(graph_from(text.format(dt="f32"))).source
    assert source.count("tl.cos(") == 1 and "one read of %c" in source, source
    assert source.count("tl.where(") >= 3   # the chosen index (two dims) and the outer cat's value


def test_a_cat_read_at_a_fixed_index_whose_piece_depends_on_s(request: pytest.FixtureRequest) -> None:
    """A roll by one (``cat(e[:, 1:], e[:, :1])`` along S) read at position 0: the piece is ``e[:, 1]`` when S > 1
    and ``e[:, 0]`` when S = 1, which the generated code decides at run time (not at generation, where ``0 < S - 1``
    is open)."""
    if not runs_here(request):
        return
    g = graph_from("""graph @t(%x: f32[B, S, 4]) {
        %e = exp(%x) : f32[B, S, 4]
        %a = slice(%e) {dim=1, start=1, end=S, step=1} : f32[B, S - 1, 4]
        %b = slice(%e) {dim=1, start=0, end=1, step=1} : f32[B, 1, 4]
        %c = cat(%a, %b) {dim=1} : f32[B, S, 4]
        %f = select(%c) {dim=1, index=0} : f32[B, 4]
        %h = neg(%f) : f32[B, 4]
        return %h
    }""")
    exe = TritonExecutable(g)
    assert kernel_ops(exe) == [["exp", "cat", "neg"]] and exe.source.count("tl.exp(") == 1, exe.source
    for bindings in ({"B": 3, "S": 5}, {"B": 2, "S": 1}):
        inputs = random_inputs(g, bindings)
        (got,), (want,) = exe(inputs), run_graph(g, inputs)
        assert_close(got, want, 1e-6)


def test_integer_bool_and_cast_ops(request: pytest.FixtureRequest) -> None:
    """Floor/trunc division and remainder of negative ints follow torch, not C; casts round once."""
    if not runs_here(request):
        return
    g = graph_from(INT_CASE)
    exe = TritonExecutable(g)
    assert not exe.partition.calls, exe.partition.describe()
    inputs = random_inputs(g, BINDINGS)
    for got, want in zip(exe(inputs), run_graph(g, inputs)):
        assert_close(got, want, 1e-6)


def float_unary_lowerings() -> list[str]:
    """Every float unary op of the lowering table (taking one input, attributes at their defaults)."""
    from membound.backends.triton.lowering import entries
    from membound.ir.ops import REQUIRED, get_op

    return [e.op for e in entries("pointwise") if e.dtypes == "float" and get_op(e.op).inputs == ("x",)
            and all(d is not REQUIRED for d in get_op(e.op).attrs.values())]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_every_float_unary_lowering_matches_reference(dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """Taken from the lowering table: a float unary op added there is checked here without a new line.
    Inputs are positive (log, log1p, sqrt) and negative (the rest) so both halves of each function run."""
    if not runs_here(request):
        return
    ops = float_unary_lowerings()
    assert {"exp", "log", "tanh", "silu", "gelu"} <= set(ops)
    dt = {torch.float32: "f32", torch.float16: "f16"}[dtype]
    lines = [f"%a = abs(%x) : {dt}[B, 7]"]
    for op in ops:
        lines.append(f"%{op} = {op}(%a) : {dt}[B, 7]")
        lines.append(f"%{op}_n = {op}(%x) : {dt}[B, 7]")
    outs = ", ".join(f"%{op}" for op in ops) + ", " + ", ".join(f"%{op}_n" for op in ops if op not in
                                                                 ("log", "log1p", "sqrt", "rsqrt"))
    g = graph_from(f"graph @t(%x: {dt}[B, 7]) {{\n" + "\n".join(lines) + f"\nreturn {outs}\n}}")
    exe = TritonExecutable(g)
    assert not exe.partition.calls, exe.partition.describe()
    inputs = random_inputs(g, BINDINGS)
    for v, got, want in zip(g.outputs, exe(inputs), run_graph(g, inputs)):
        try:
            assert_close(got, want, 1e-5 if dtype == torch.float32 else TOL[dtype])
        except AssertionError as e:
            raise AssertionError(f"%{v.name}: {e}") from None


# ---------------------------------------------------------------------------------------------
# whole models against eager
# ---------------------------------------------------------------------------------------------
def _hf(name: str) -> torch.nn.Module:
    import transformers as T

    torch.manual_seed(0)
    if name == "hf-llama":
        cfg = T.LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                            num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2)
        return T.LlamaForCausalLM(cfg).eval()
    cfg = T.GPT2Config(vocab_size=97, n_embd=32, n_layer=1, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2)
    return T.GPT2LMHeadModel(cfg).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("name", ["llama-tiny", "gpt2-tiny", "mixtral-tiny", "hf-llama", "hf-gpt2"])
def test_model_matches_eager(name: str, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    if not runs_here(request):
        return
    hf = name.startswith("hf-")
    model = (_hf(name) if hf else build_model(name)).to(dtype=dtype, device=DEVICE)
    vocab = 97 if hf else 256
    ids = torch.randint(1, vocab, (3, 5), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    kwargs = {"use_cache": False} if hf else {}
    compiled = membound.compile(model, backend="triton")
    got = compiled(ids, **kwargs)
    want = model(ids, **kwargs)
    if hf:
        got, want = got.logits, want.logits
    assert_close(got, want, TOL[dtype])
    exe = compiled._last().executable
    assert isinstance(exe, TritonExecutable) and "@triton.jit" in exe.source
    assert any(k.layout == "row" for k in exe.partition.kernels)  # the norms are generated, not called


@pytest.mark.parametrize("name", ["llama-small", "hf-llama", "hf-gpt2"])
def test_generate_through_triton_equals_reference(name: str, request: pytest.FixtureRequest,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The KV-cache program (prefill + S=1 decode, flash-decoding, cache writes, fused gated MLP) through
    the generated kernels: greedy tokens equal the reference backend's (fp32), rows of two lengths. The
    attention calls carry the static_past hint (their caches written this step only at the input positions),
    and the kernel takes its early K/V loads (MEMBOUND_DECODE_EARLY_KV=1) here."""
    if not runs_here(request):
        return
    monkeypatch.setenv("MEMBOUND_DECODE_EARLY_KV", "1")
    model = (_hf(name) if name.startswith("hf-") else small_llama()).to(device=DEVICE)
    vocab = 97
    ids = torch.randint(3, vocab, (2, 9), generator=torch.Generator().manual_seed(1)).to(DEVICE)
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0  # row 0 has 5 tokens (right padding), row 1 has 9
    ids[0, 5:] = 0
    tri = membound.compile(model, backend="triton", cuda_graphs=False)
    ref = membound.compile(model, backend="reference")
    with torch.no_grad():
        got = membound.generate(tri, ids, 6, attention_mask=mask)
        want = membound.generate(ref, ids, 6, attention_mask=mask)
    assert torch.equal(got, want), f"triton {got[:, 9:].tolist()} vs reference {want[:, 9:].tolist()}"
    source = tri._kv_program.decode.source
    assert "lib_cached_attention" in source
    attn = [ln for ln in source.splitlines() if "= lib_cached_attention(" in ln]
    assert attn and all("static_past=True" in ln for ln in attn), attn
    if name != "hf-gpt2":  # a gated (SwiGLU) MLP: the gate/up GEMV forms silu(gate) * up in its epilogue
        assert "lib_linear_glu" in source and "lib_gated_linear" not in source and "_fused_silu" not in source


# ---------------------------------------------------------------------------------------------
# golden source
# ---------------------------------------------------------------------------------------------
def llama_tiny_graph() -> Graph:
    model = build_model("llama-tiny")
    compiled = membound.compile(model, backend="reference", pipeline=GOLDEN_PIPELINE)
    compiled(torch.randint(1, 256, (2, 5), generator=torch.Generator().manual_seed(0)))
    return compiled.ir


def test_golden_source_llama_tiny() -> None:
    source = TritonExecutable(llama_tiny_graph()).source
    if os.environ.get("MEMBOUND_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(source)
    assert GOLDEN.exists(), f"no golden file; run with MEMBOUND_UPDATE_GOLDEN=1 to write {GOLDEN}"
    assert source == GOLDEN.read_text(), "generated source changed; check the diff, then regenerate with " \
                                         "MEMBOUND_UPDATE_GOLDEN=1"
    assert "def _fused_add_rms_norm_" in source and "BLOCK_N: tl.constexpr" in source


# ---------------------------------------------------------------------------------------------
# partitioner
# ---------------------------------------------------------------------------------------------
def parts(text: str) -> list[list[str]]:
    p = partition(parse(text))
    return [[f"{m.results[0].name}" for m in k.members] for k in p.kernels]


def test_every_launch_honours_programmatic_dependent_launch() -> None:
    """Each generated kernel waits (PDL) before its first load or store of anything but a parameter (those
    loads, and the index lines they read, may go first), every launch passes the launch options, and only a
    parameter weight is marked static (its loads may precede the wait): a weight an earlier kernel computed
    must be read after it."""
    import re

    text = """graph @t(%x: f32[B, 8]) params(%w: f32[6, 8], %v: f32[6, 6], %g: f32[8]) {
        %e = exp(%x) : f32[B, 8]
        %a = mul(%e, %g) : f32[B, 8]
        %y = linear(%a, %w) : f32[B, 6]
        %v2 = mul(%v, %v) : f32[6, 6]
        %z = linear(%y, %v2) : f32[B, 6]
        return %z
    }"""
    src = TritonExecutable(graph_from(text)).source
    bodies = re.split(r"@triton.jit\n", src)[1:]
    assert bodies
    wait = ["if USE_PDL == 2:  # the next kernel may launch now; earlier writes are visible after the wait",
            "gdc_launch_dependents()", "gdc_wait()",
            "elif USE_PDL:  # earlier kernels' writes are visible after the wait", "gdc_wait()",
            "gdc_launch_dependents()"]
    early_loads = []
    for body in bodies:
        code = [ln.strip() for ln in body.split("):\n", 1)[1].splitlines() if ln.strip() and not ln.strip().startswith("#")]
        # mode 2 signals the next kernel first, mode 1 waits first; either way only parameters are read before it
        at = code.index(wait[0])
        assert code[at:at + 6] == wait, code
        for ln in code[:at]:
            assert re.match(r"\w+ = ", ln) and "tl.store" not in ln, ln
            loads = re.findall(r"tl\.load\((\w+)", ln)
            assert all(p in ("g_ptr", "v_ptr") for p in loads), ln
            early_loads += loads
    assert "g_ptr" in early_loads and "v_ptr" in early_loads, early_loads  # the parameters' loads did move
    launches = [ln for ln in src.splitlines() if re.match(r"\s+_\w+\[", ln)]
    assert launches and all(ln.rstrip().endswith("**pdl)") for ln in launches)
    calls = [ln.strip() for ln in src.splitlines() if "= lib_linear(" in ln]
    assert len(calls) == 2
    assert "static_weight=True" in calls[0] and "static_weight" not in calls[1], calls


def test_parameter_loads_before_the_wait_only_with_what_they_read() -> None:
    """split_before_wait moves a parameter's load and the index lines it reads; a load whose address needs a
    value an earlier kernel wrote (a gather by a computed index), stores and non-assignments stay in order."""
    from membound.backends.triton.kernel import split_before_wait

    lines = ["row = tl.program_id(0)", "cols = tl.arange(0, 8)", "t0 = tl.load(x_ptr + row * 8 + cols)  # %x",
             "t1 = t0 * t0", "t2 = tl.load(w_ptr + cols)  # %w", "t3 = t1 * t2", "tl.store(o_ptr + cols, t3)"]
    early, rest = split_before_wait(lines, {"w_ptr"})
    assert early == ["cols = tl.arange(0, 8)", "t2 = tl.load(w_ptr + cols)  # %w"]
    assert rest == [ln for ln in lines if ln not in early]
    gather = ["row = tl.program_id(0)", "t0 = tl.load(ids_ptr + row)", "t1 = tl.load(w_ptr + t0 * 8)",
              "tl.store(o_ptr + row, t1)"]
    assert split_before_wait(gather, {"w_ptr"}) == ([], gather)
    assert split_before_wait(lines, set()) == ([], lines)  # nothing is a parameter: nothing moves
    twice = ["cols = tl.arange(0, 8)", "t0 = tl.load(x_ptr + cols)", "cols = cols + t0", "t1 = tl.load(w_ptr + cols)"]
    assert split_before_wait(twice, {"w_ptr"}) == ([], twice)  # a name assigned twice: nothing moves


def test_static_past_only_where_the_caches_are_written_at_the_input_positions() -> None:
    """cached_attention is told its past slots are static only when its positions are a graph input and k and v
    each come from one cache_write at those positions into a state cache; a cache written at other positions,
    a cache an earlier kernel computed, or positions a kernel computed keep the loads after the PDL wait."""
    from membound.backends.triton.codegen import past_is_static

    def attention(k_src: str, pos_src: str) -> bool:
        text = f"""graph @t(%q: f32[1, 4, 1, 8], %kn: f32[1, 2, 1, 8], %vn: f32[1, 2, 1, 8], %p: i64[1],
                            %p2: i64[1]) state(%ck: f32[1, 2, 16, 8], %cv: f32[1, 2, 16, 8]) {{
            %pp = add(%p, %p2) : i64[1]
            %k0 = mul(%ck, %ck) : f32[1, 2, 16, 8]
            %k = cache_write({k_src}, %kn, {pos_src}) : f32[1, 2, 16, 8]
            %v = cache_write(%cv, %vn, {pos_src}) : f32[1, 2, 16, 8]
            %o = cached_attention(%q, %k, %v, %p) : f32[1, 4, 1, 8]
            return %o
        }}"""
        node = next(n for n in graph_from(text).nodes if n.op == "cached_attention")
        return past_is_static(node)

    assert attention("%ck", "%p")
    assert not attention("%ck", "%p2")  # written at other positions than it reads up to
    assert not attention("%k0", "%p")  # a cache some kernel of the step computed
    assert not attention("%ck", "%pp")  # (and the attention's positions are an input but the write's are not)


def test_attention_is_told_the_next_linears_weight() -> None:
    """cached_attention gets ``prefetch=<the o projection's weight>`` (what it may ask L2 for while it runs) when a
    linear reads its output as x through views only; not a weight some kernel computes, not a linear that reads it
    through arithmetic, and the torch reference standing in drops the hint."""
    from membound.backends.triton.codegen import next_weight

    def hinted(tail: str) -> Optional[str]:
        text = f"""graph @t(%q: f32[1, 4, 1, 8], %p: i64[1]) params(%wo: f32[32, 32]) state(%ck: f32[1, 2, 16, 8],
                            %cv: f32[1, 2, 16, 8]) {{
            %o = cached_attention(%q, %ck, %cv, %p) : f32[1, 4, 1, 8]
            %t = transpose(%o) {{dim0=1, dim1=2}} : f32[1, 1, 4, 8]
            %r = reshape(%t) {{shape=[1, 1, 32]}} : f32[1, 1, 32]
            {tail}
        }}"""
        g = graph_from(text)
        w = next_weight(next(n for n in g.nodes if n.op == "cached_attention"))
        src = TritonExecutable(g).source
        call = next(ln.strip() for ln in src.splitlines() if "= lib_cached_attention(" in ln)
        assert ("prefetch=" in call) == (w is not None), call
        return None if w is None else w.name

    assert hinted("%y = linear(%r, %wo) : f32[1, 1, 32]\n return %y") == "wo"
    assert hinted("%w2 = mul(%wo, %wo) : f32[32, 32]\n %y = linear(%r, %w2) : f32[1, 1, 32]\n return %y") is None
    assert hinted("%e = exp(%r) : f32[1, 1, 32]\n %y = linear(%e, %wo) : f32[1, 1, 32]\n return %y") is None
    from membound.backends.triton.executable import _without_out

    assert _without_out(lambda x, **kw: kw)(1, prefetch=object(), scale=0.5) == {"scale": 0.5}


def test_o_projection_early_weight_follows_its_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The linear reading cached_attention's output through views is told ``static_weight=True`` (its weight may
    load before the PDL wait) unless ``MEMBOUND_LINEAR_O_EARLY=0``; a linear reading anything else keeps the hint
    either way."""
    from membound.backends.triton.codegen import O_EARLY_ENV

    text = """graph @t(%q: f32[1, 4, 1, 8], %p: i64[1], %x: f32[1, 1, 32]) params(%wo: f32[32, 32], %w2: f32[32, 32])
                    state(%ck: f32[1, 2, 16, 8], %cv: f32[1, 2, 16, 8]) {
        %o = cached_attention(%q, %ck, %cv, %p) : f32[1, 4, 1, 8]
        %t = transpose(%o) {dim0=1, dim1=2} : f32[1, 1, 4, 8]
        %r = reshape(%t) {shape=[1, 1, 32]} : f32[1, 1, 32]
        %y = linear(%r, %wo) : f32[1, 1, 32]
        %z = linear(%x, %w2) : f32[1, 1, 32]
        return %y, %z
    }"""

    def hints() -> list[bool]:
        from membound.backends.triton.kernels import LIBRARY

        src = TritonExecutable(graph_from(text), library=dict(LIBRARY)).source
        calls = [ln for ln in src.splitlines() if "= lib_linear(" in ln]
        assert len(calls) == 2, src
        return ["static_weight=True" in ln for ln in calls]

    assert hints() == [True, True]
    monkeypatch.setenv(O_EARLY_ENV, "0")
    assert hints() == [False, True]


def test_views_fold_into_the_kernel_that_reads_them() -> None:
    text = """graph @t(%x: f32[B, S, 64]) {
        %r = reshape(%x) {shape=[B, S, 4, 16]} : f32[B, S, 4, 16]
        %t = transpose(%r) {dim0=1, dim1=2} : f32[B, 4, S, 16]
        %y = exp(%t) : f32[B, 4, S, 16]
        return %y
    }"""
    p = partition(parse(text))
    assert p.calls == [] and len(p.kernels) == 1
    k = p.kernels[0]
    assert [v.name for v in k.inputs] == ["x"] and [n.op for n in k.views] == ["transpose", "reshape"]


def test_view_needed_by_a_call_is_materialised() -> None:
    text = """graph @t(%x: f32[B, S, 8]) params(%w: f32[8, 8]) {
        %e = exp(%x) : f32[B, S, 8]
        %t = transpose(%e) {dim0=1, dim1=2} : f32[B, 8, S]
        %m = matmul(%t, %x) : f32[B, 8, 8]
        return %m
    }"""
    p = partition(parse(text))
    assert [(c.impl, c.node.op) for c in p.calls] == [("view", "transpose"), ("torch", "matmul")]


def test_fusion_stops_at_calls_and_never_makes_a_cycle() -> None:
    # a -> linear -> c and a -> c: fusing a with c would put the linear inside a cycle
    text = """graph @t(%x: f32[B, 8]) params(%w: f32[8, 8]) {
        %a = exp(%x) : f32[B, 8]
        %b = linear(%a, %w) : f32[B, 8]
        %c = add(%a, %b) : f32[B, 8]
        %d = relu(%c) : f32[B, 8]
        return %d
    }"""
    assert parts(text) == [["a"], ["c", "d"]]
    p = partition(parse(text))
    done: set[str] = set()
    for s in p.steps:  # every step's inputs are produced by an earlier step
        reads = s.inputs if isinstance(s, Kernel) else s.node.inputs
        assert all(v.producer is None or v.name in done for v in reads)
        done |= {v.name for v in (s.outputs if isinstance(s, Kernel) else s.node.results)}


def test_what_does_not_fuse() -> None:
    text = """graph @t(%x: f32[B, S, 6], %y: f32[B, S, 5]) {
        %a = softmax(%x) {dim=1, dtype=none} : f32[B, S, 6]
        %s = sum(%x) {dims=[0], keepdim=false, dtype=none} : f32[S, 6]
        %n1 = sum(%x) {dims=[-1], keepdim=true, dtype=none} : f32[B, S, 1]
        %n2 = sum(%y) {dims=[-1], keepdim=true, dtype=none} : f32[B, S, 1]
        %z = add(%n1, %n2) : f32[B, S, 1]
        %c = cumsum(%x) {dim=0, dtype=none} : f32[B, S, 6]
        %m = argmax(%x) {dim=-1, keepdim=false} : i64[B, S]
        return %a, %s, %z, %c, %m
    }"""
    p = partition(parse(text))
    # not over the last dim, or not a row reduction we generate
    assert sorted(c.node.op for c in p.calls) == ["argmax", "cumsum", "softmax", "sum"]
    # row kernels of different row lengths (6 and 5) stay apart; the add joins one of them
    assert sorted(len(k.members) for k in p.kernels) == [1, 2]


def test_escaping_values_must_share_the_iteration_space() -> None:
    # %c is needed outside at [S, 4] while %d is [B, S, 4]: storing both would need two spaces
    text = """graph @t(%x: f32[S, 4], %y: f32[B, S, 4]) {
        %c = cos(%x) : f32[S, 4]
        %d = mul(%y, %c) : f32[B, S, 4]
        %e = add(%d, %d) : f32[B, S, 4]
        return %c, %e
    }"""
    assert parts(text) == [["c"], ["d", "e"]]
    # without the outside use %c is recomputed inside the bigger kernel instead
    assert parts(text.replace("return %c, %e", "return %e")) == [["c", "d", "e"]]


def test_row_bound_values_stay_on_their_row() -> None:
    # the per-row mean may be broadcast back over its row, but a transpose would move it to other rows
    ok = """graph @t(%x: f32[B, 8]) {
        %m = mean(%x) {dims=[-1], keepdim=false, dtype=none} : f32[B]
        %u = unsqueeze(%m) {dim=1} : f32[B, 1]
        %y = sub(%x, %u) : f32[B, 8]
        return %y
    }"""
    assert parts(ok) == [["m", "y"]]
    bad = """graph @t(%x: f32[8, 8]) {
        %m = mean(%x) {dims=[-1], keepdim=true, dtype=none} : f32[8, 1]
        %t = transpose(%m) {dim0=0, dim1=1} : f32[1, 8]
        %y = sub(%x, %t) : f32[8, 8]
        return %y
    }"""
    assert parts(bad) == [["m"], ["y"]]


# ---------------------------------------------------------------------------------------------
# sinks (cache_write stored by a pointwise kernel) and sections (independent kernels, one launch)
# ---------------------------------------------------------------------------------------------
DT = {torch.float32: "f32", torch.float16: "f16"}
SINK_BINDINGS = {"B": 3, "S": 5, "T": 13}
# values [B, 3, S, 5] written along dim 2 of a [B, 3, T, 5] cache, or [B, S, 3, 5] along dim 1 of [B, T, 3, 5]
SINK_LAYOUTS = {2: ("[B, 3, S, 5]", "[B, 3, T, 5]"), 1: ("[B, S, 3, 5]", "[B, T, 3, 5]")}


def sink_graph(dt: str, pos: str, dim: int, body: str, outputs: str, pos_dtype: str = "i64") -> Graph:
    """``pos`` ``[1]`` or ``[B, 1]``: one new token, a static size (its index in the kernel is 0)."""
    values, cache = SINK_LAYOUTS[dim]
    if "1" in pos:
        values = values.replace("S", "1")
    text = f"""graph @t(%x: {dt}{values}, %pos: {pos_dtype}{pos}) state(%cache: {dt}{cache}) {{
        {body.format(dt=dt, values=values, cache=cache, dim=dim)}
        return {outputs}
    }}"""
    return parse(text)


def run_both(g: Graph, bindings: dict[str, int], seed: int = 0) -> tuple[list, list, dict, dict]:
    """The graph on random inputs and a random cache (distinct in-range positions per row), by the Triton
    backend and by the reference, each on its own copy of the state: (got, want, got_state, want_state)."""
    gen = torch.Generator().manual_seed(seed)
    binds = {sym(k): n for k, n in bindings.items()}
    inputs = []
    for v in g.inputs:
        shape = v.type.concrete_shape(binds)
        if v.name in ("pos", "positions"):  # distinct slots: index_copy_/scatter_ with repeats is unordered
            rows = [torch.randperm(bindings["T"], generator=gen)[:shape[-1]] for _ in range(shape[0] if len(shape) == 2 else 1)]
            inputs.append((torch.stack(rows) if len(shape) == 2 else rows[0]).to(DEVICE, v.dtype))
        elif v.name == "last_index":  # each row's last real token, in [0, S)
            inputs.append(torch.randint(0, bindings["S"], shape, generator=gen).to(DEVICE))
        else:
            inputs.append(rand_like_value(shape, v.dtype, gen).to(DEVICE))
    state = {v.name: rand_like_value(v.type.concrete_shape(binds), v.dtype, gen).to(DEVICE) for v in g.state}
    got_state = {k: t.clone() for k, t in state.items()}
    want_state = {k: t.clone() for k, t in state.items()}
    got = TritonExecutable(g)(inputs, {**g.tensors, **got_state})
    want = run_graph(g, inputs, {**g.tensors, **want_state})
    return got, want, got_state, want_state


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
@pytest.mark.parametrize("pos", ["[S]", "[B, S]", "[1]", "[B, 1]"], ids=["shared", "per_row", "shared1", "per_row1"])
@pytest.mark.parametrize("dim", [2, 1])
def test_cache_write_is_a_store_of_its_producer(dim: int, pos: str, dtype: torch.dtype,
                                                 request: pytest.FixtureRequest) -> None:
    """sin(x) * x written into the cache: one kernel, whose values never reach memory except in the cache."""
    g = sink_graph(DT[dtype], pos, dim, """%s = sin(%x) : {dt}{values}
        %y = mul(%s, %x) : {dt}{values}
        %c = cache_write(%cache, %y, %pos) {{dim={dim}}} : {dt}{cache}""", "%c")
    p = partition(g)
    assert p.calls == [] and [[m.op for m in k.members] for k in p.kernels] == [["sin", "mul", "cache_write"]]
    (k,) = p.kernels
    assert k.outputs == [] and [w.op for w in k.sinks] == ["cache_write"]
    assert plan_memory(p, {sym("B"), sym("S")}).planned() == []  # the result is the cache: no buffer
    if not runs_here(request):
        return
    for bindings in (SINK_BINDINGS, {"B": 1, "S": 1, "T": 7}):
        if "1" in pos and bindings["S"] != 1:
            bindings = dict(bindings, S=1)
        got, want, got_state, want_state = run_both(g, bindings)
        assert_close(got_state["cache"], want_state["cache"], 1e-5 if dtype == torch.float32 else TOL[dtype])
        assert_close(got[0], want[0], 1e-5 if dtype == torch.float32 else TOL[dtype])


def test_cache_write_value_that_escapes_is_stored_too(request: pytest.FixtureRequest) -> None:
    """%y is returned as well: stored to its buffer and into the cache (int32 positions, widened to 64 bits)."""
    g = sink_graph("f32", "[B, S]", 2, """%y = exp(%x) : {dt}{values}
        %c = cache_write(%cache, %y, %pos) {{dim={dim}}} : {dt}{cache}""", "%c, %y", pos_dtype="i32")
    (k,) = partition(g).kernels
    assert [v.name for v in k.outputs] == ["y"] and [w.results[0].name for w in k.sinks] == ["c"]
    if not runs_here(request):
        return
    got, want, got_state, want_state = run_both(g, SINK_BINDINGS)
    assert_close(got[1], want[1], 1e-5)
    assert_close(got_state["cache"], want_state["cache"], 1e-5)


def test_cache_write_of_a_view_of_a_call_result(request: pytest.FixtureRequest) -> None:
    """Llama's v: a slice of the qkv linear, reshaped and transposed, written by a kernel of its own."""
    text = """graph @t(%h: f32[B, S, 8], %pos: i64[B, S]) params(%w: f32[40, 8]) state(%cache: f32[B, 2, T, 5]) {
        %qkv = linear(%h, %w) : f32[B, S, 40]
        %v = slice(%qkv) {dim=2, start=30, end=40, step=1} : f32[B, S, 10]
        %r = reshape(%v) {shape=[B, S, 2, 5]} : f32[B, S, 2, 5]
        %t = transpose(%r) {dim0=1, dim1=2} : f32[B, 2, S, 5]
        %c = cache_write(%cache, %t, %pos) {dim=2} : f32[B, 2, T, 5]
        return %c
    }"""
    g = parse(text)
    g.tensors["w"] = rand_like_value((40, 8), torch.float32, torch.Generator().manual_seed(0)).to(DEVICE)
    p = partition(g)
    assert [c.node.op for c in p.calls] == ["linear"] and [[m.op for m in k.members] for k in p.kernels] == \
        [["cache_write"]]
    if not runs_here(request):
        return
    got, want, got_state, want_state = run_both(g, SINK_BINDINGS)
    assert_close(got_state["cache"], want_state["cache"], 1e-5)


def test_cache_write_cases_left_to_the_library() -> None:
    # per-row positions along dim 0 (the reference's scatter needs B == 1 there); a cache that is not state
    per_row_dim0 = """graph @t(%x: f32[S, 4], %pos: i64[1, S]) state(%cache: f32[T, 4]) {
        %y = neg(%x) : f32[S, 4]
        %c = cache_write(%cache, %y, %pos) {dim=0} : f32[T, 4]
        return %c
    }"""
    not_state = """graph @t(%x: f32[S, 4], %pos: i64[S], %cache: f32[T, 4]) {
        %y = neg(%x) : f32[S, 4]
        %c = cache_write(%cache, %y, %pos) {dim=0} : f32[T, 4]
        return %c
    }"""
    for text in (per_row_dim0, not_state):
        p = partition(parse(text), library=["cache_write"])
        assert [(c.impl, c.node.op) for c in p.calls] == [("library", "cache_write")], p.describe()


def test_a_cache_read_before_its_write_keeps_its_own_launch(request: pytest.FixtureRequest) -> None:
    """exp(cache) reads the old cache: it may join neither the write's kernel nor its launch, and runs first."""
    g = sink_graph("f32", "[S]", 2, """%old = exp(%cache) : {dt}{cache}
        %y = neg(%x) : {dt}{values}
        %c = cache_write(%cache, %y, %pos) {{dim={dim}}} : {dt}{cache}
        %new = exp(%c) : {dt}{cache}""", "%old, %new")
    p = partition(g)
    assert [[m.results[0].name for m in k.members] for k in p.kernels] == [["old"], ["y", "c"], ["new"]], \
        p.describe()
    assert all(k.layout == "pointwise" for k in p.kernels)
    if not runs_here(request):
        return
    got, want, got_state, want_state = run_both(g, SINK_BINDINGS)
    for a, b in zip(got, want):
        assert_close(a, b, 1e-5)
    assert_close(got_state["cache"], want_state["cache"], 1e-5)


SECTIONS = """graph @t(%x: {dt}[B, S, 7], %y: {dt}[S, 3], %z: {dt}[B, 5]) params(%w: {dt}[5, 5]) {{
    %a = exp(%x) : {dt}[B, S, 7]
    %b = sin(%y) : {dt}[S, 3]
    %c = cos(%y) : {dt}[S, 3]
    %d = mul(%b, %c) : {dt}[S, 3]
    %m = linear(%z, %w) : {dt}[B, 5]
    %e = tanh(%m) : {dt}[B, 5]
    return %a, %d, %e, %b
}}"""


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["f32", "f16"])
def test_independent_kernels_share_one_launch(dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """exp over [B, S, 7] and sin*cos over [S, 3] run as two sections of one launch; tanh reads the linear
    (a launch between them), so it stays on its own."""
    g = graph_from(SECTIONS.format(dt=DT[dtype]))
    p = partition(g)
    assert [(k.layout, [[m.op for m in s.members] for s in k.sections]) for k in p.kernels] == \
        [("sections", [["exp"], ["sin", "cos", "mul"]]), ("pointwise", [])], p.describe()
    assert [v.name for v in p.kernels[0].outputs] == ["a", "b", "d"]
    if not runs_here(request):
        return
    exe = TritonExecutable(g)
    assert "if pid < end0:" in exe.source and "Run @t: 2 generated kernels, 1 calls" in exe.source
    for bindings in (BINDINGS, {"B": 1, "S": 1}, {"B": 3, "S": 400}):  # S=400: sections of several programs
        inputs = random_inputs(g, bindings)
        for got, want in zip(exe(inputs), run_graph(g, inputs)):
            assert_close(got, want, 1e-5 if dtype == torch.float32 else TOL[dtype])


def test_dependent_kernels_are_not_sections() -> None:
    # %d needs %c, whose [S, 4] store cannot join %d's [B, S, 4] kernel: two launches, in order
    text = """graph @t(%x: f32[S, 4], %y: f32[B, S, 4]) {
        %c = cos(%x) : f32[S, 4]
        %d = mul(%y, %c) : f32[B, S, 4]
        return %c, %d
    }"""
    p = partition(parse(text))
    assert [(k.layout, [m.op for m in k.members]) for k in p.kernels] == [("pointwise", ["cos"]),
                                                                         ("pointwise", ["mul"])]


def _decode(name: str, dtype: torch.dtype = torch.float32):
    from membound.api import build_kv_program

    model = (_hf(name) if name.startswith("hf-") else build_model(name)).to(dtype=dtype, device=DEVICE)
    compiled = membound.compile(model, backend="triton")
    return build_kv_program(compiled, torch.randint(1, 97, (2, 5)).to(DEVICE)), model


def test_llama_decode_writes_its_cache_from_the_rope_launch() -> None:
    """Per layer, q's RoPE, k's RoPE + k's cache write and v's cache write are one launch."""
    program, model = _decode("llama-tiny")
    for exe in (program.decode, program.prefill):
        assert not any(c.node.op == "cache_write" for c in exe.partition.calls), exe.partition.describe()
        writes = [k for k in exe.partition.kernels if any(m.op == "cache_write" for m in k.members)]
        assert len(writes) == model.config.n_layers, exe.partition.describe()
        for k in writes:
            assert k.layout == "sections" and [[m.op for m in s.members][-1] for s in k.sections] == \
                ["add", "cache_write", "cache_write"]
        assert "lib_cache_write" not in exe.source


@pytest.mark.parametrize("name,dtype", [("llama-tiny", torch.float32), ("llama-tiny", torch.float16),
                                        ("hf-llama", torch.float32), ("hf-gpt2", torch.float32)])
def test_kv_steps_match_the_reference(name: str, dtype: torch.dtype, request: pytest.FixtureRequest) -> None:
    """Prefill (S=4) and decode (S=1) steps on a random cache: logits and the written caches."""
    if not runs_here(request):
        return
    program, _ = _decode(name, dtype)
    for g, s in ((program.prefill_graph, 4), (program.decode_graph, 1)):
        got, want, got_state, want_state = run_both(g, {"B": 3, "S": s, "T": 11})
        for a, b in zip(got, want):
            assert_close(a, b, 1e-4 if dtype == torch.float32 else TOL[dtype])
        for k in want_state:
            assert_close(got_state[k], want_state[k], 1e-5 if dtype == torch.float32 else TOL[dtype])


def test_sections_kernel_compiles_for_hopper() -> None:
    """The interpreter runs each branch as plain Python; the compiler merges the branches' variables by
    name and type. Compile the decode step's generated kernels for sm_90 (no GPU needed) in a process
    without TRITON_INTERPRET, in fp32 and bf16."""
    script = """
import importlib.util, sys, tempfile, torch, triton
from membound.api import build_kv_program
from membound.backends.triton import TritonExecutable
from membound.backends.triton.kernels.compile_check import compile_ptx
from membound.models.build import build_model
import membound
SIG = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.int64: "i64", torch.int32: "i32"}
for dtype in (torch.float32, torch.bfloat16):
    compiled = membound.compile(build_model("llama-tiny").to(dtype), backend="reference")
    exe = TritonExecutable(build_kv_program(compiled, torch.randint(1, 97, (2, 5))).decode_graph)
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(exe.source)
    spec = importlib.util.spec_from_file_location("generated", f.name)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for ks in exe.generated.kernels:
        if ks.kernel.layout != "sections":
            continue
        fn = getattr(mod, ks.kernel.name)
        args = {n: 3 for n in fn.arg_names}
        args.update({n: "*" + SIG[v.dtype] for n, v in zip(fn.arg_names, ks.pointers)})
        args.update({n: 1 for n in fn.arg_names if n.endswith("_stride3")})
        args["BLOCK"] = 1024
        if "INDEX_DTYPE" in args:  # the kernel's index dtype, a constexpr chosen at launch
            args["INDEX_DTYPE"] = triton.language.int32
        if "USE_PDL" in args:
            args["USE_PDL"] = False
        for b in (1, 3):  # B=1 is specialised to a constant, as triton.jit does
            args["B"] = b
            ptx, _ = compile_ptx(fn, args)
            print(ks.kernel.name, dtype, b, "stores", ptx.count("st.global"))
"""
    from _triton_interp import compiled_in_subprocess

    stdout = compiled_in_subprocess(script, timeout=600)
    lines = [line for line in stdout.splitlines() if line.startswith("_horizontal")]
    # per sections kernel (rope + cache writes; embedding + rope table once the first norm is a GEMV prologue):
    # 2 dtypes x 2 B
    assert len(lines) in (4, 8) and all(int(line.split()[-1]) > 0 for line in lines), stdout


# ---------------------------------------------------------------------------------------------
# memory plan
# ---------------------------------------------------------------------------------------------
def test_memory_plan_reuses_buffers_without_overlap() -> None:
    g = llama_tiny_graph()
    exe = TritonExecutable(g)
    plan = exe.plan
    planned = plan.planned()
    assert len(plan.slot_bytes) < len(planned) // 2, plan.describe()  # buffers really are reused
    by_slot: dict[int, list] = {}
    for b in planned:
        by_slot.setdefault(b.slot, []).append(b)
    for slot, bufs in by_slot.items():
        bufs.sort(key=lambda b: b.start)
        for a, b in zip(bufs, bufs[1:]):
            assert a.end < b.start, f"slot {slot}: %{a.value.name} [{a.start}..{a.end}] overlaps " \
                                    f"%{b.value.name} [{b.start}..{b.end}]"
    outputs = {id(v) for v in g.outputs}
    for b in plan.buffers.values():
        if id(b.value) in outputs:
            assert b.slot is None  # returned tensors are never recycled


def test_memory_plan_keeps_a_value_alive_through_its_views() -> None:
    text = """graph @t(%x: f32[B, 8]) params(%w: f32[8, 8]) {
        %a = exp(%x) : f32[B, 8]
        %t = transpose(%a) {dim0=0, dim1=1} : f32[8, B]
        %b = relu(%x) : f32[B, 8]
        %c = linear(%b, %w) : f32[B, 8]
        %m = matmul(%t, %c) : f32[8, 8]
        return %m
    }"""
    g = parse(text)
    p = partition(g, library=["linear"])
    plan = plan_memory(p, {sym("B")})
    a = plan.buffer(g.value("a"))
    matmul_step = next(i for i, s in enumerate(p.steps) if not isinstance(s, Kernel) and s.node.op == "matmul")
    assert a is not None and a.end == matmul_step  # read through the transpose view


# ---------------------------------------------------------------------------------------------
# index arithmetic and backend selection
# ---------------------------------------------------------------------------------------------
def test_reshape_index_groups_dims() -> None:
    b, s, h, d = (index_var(n) for n in ("b", "s", "h", "d"))
    B, S = sym("B"), sym("S")
    assert reshape_index((B, S, sympy.Integer(64)), (B, S, sympy.Integer(4), sympy.Integer(16)), (b, s, h, d)) \
        == (b, s, 16 * h + d)
    j = index_var("j")
    src = reshape_index((B, S, sympy.Integer(4), sympy.Integer(16)), (B, S, sympy.Integer(64)), (b, s, j))
    assert [expr_code(e) for e in src] == ["b", "s", "j // 16", "j % 16"]


def test_auto_backend_is_reference_on_cpu_tensors() -> None:
    g = graph_from(CASES["silu_mul_views"][0].format(dt="f32"))
    g.tensors["unused"] = torch.zeros(1)
    assert resolve_backend("auto", g) == "reference"
    assert type(compile_graph(g, "auto")).__name__ == "ReferenceExecutable"
    assert resolve_backend("auto", parse(CASES["silu_mul_views"][0].format(dt="f32"))) == "auto"
    with pytest.raises(ValueError, match="unknown backend"):
        resolve_backend("inductor")


@pytest.mark.gpu
def test_auto_backend_is_triton_on_cuda() -> None:
    model = build_model("llama-tiny", device="cuda")
    ids = torch.randint(1, 256, (3, 5), device="cuda")
    compiled = membound.compile(model)
    assert_close(compiled(ids), model(ids), TOL[torch.float32])
    assert isinstance(compiled._last().executable, TritonExecutable)


@pytest.mark.gpu
def test_bf16_model_on_cuda() -> None:
    model = build_model("llama-tiny", dtype=torch.bfloat16, device="cuda")
    ids = torch.randint(1, 256, (3, 5), device="cuda")
    assert_close(membound.compile(model, backend="triton")(ids), model(ids), 2e-2)

