"""64-bit index math in generated kernels, only where sizes need it.

A kernel's index dtype (``INDEX_DTYPE``: the program id, hence every offset derived from it, and
narrow gather ids) is ``tl.int32`` when no address can reach 2**31 elements and ``tl.int64`` when one
can: decided at generation for static shapes, at launch (``index_dtype``: the iteration size and each
tensor's extent) for symbolic ones. On the CPU the int64 code is exercised by lowering the threshold;
the GPU tests cross the real 2**31 boundary.
"""

from __future__ import annotations

import re

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.backends.reference import run_graph
from membound.backends.triton import TritonExecutable, codegen
from membound.ir import parse, verify

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

GRAPH = """graph @t(%x: f16[{rows}, {n}], %ids: {idt}[{rows}]) params(%emb: f16[{vocab}, {n}]) {{
    %e = embedding(%emb, %ids) : f16[{rows}, {n}]
    %y = add(%x, %e) : f16[{rows}, {n}]
    %p = softmax(%y) {{dim=-1, dtype=f32}} : f32[{rows}, {n}]
    %q = cast(%p) {{dtype=f16}} : f16[{rows}, {n}]
    return %y, %q
}}"""


def graph(rows: object, n: object, vocab: int = 11, idt: str = "i32") -> object:
    g = parse(GRAPH.format(rows=rows, n=n, vocab=vocab, idt=idt))
    verify(g)
    return g


def test_index_dtype_is_chosen_per_kernel_from_sizes() -> None:
    small = TritonExecutable(graph(7, 13)).source
    assert "INDEX_DTYPE=tl.int32" in small and "INDEX_DTYPE=tl.int64" not in small
    assert "pid = tl.program_id(0).to(INDEX_DTYPE)" in small or "row = tl.program_id(0).to(INDEX_DTYPE)" in small
    # 2**16 rows of 2**15: exactly 2**31 elements, the first size int32 offsets cannot address
    big = TritonExecutable(graph(2**16, 2**15)).source
    assert "INDEX_DTYPE=tl.int32" not in big and big.count("INDEX_DTYPE=tl.int64") == len(re.findall(
        r"\w+\[\(.*\)\]\(", big))
    below = TritonExecutable(graph(2**16 - 1, 2**15)).source
    assert "INDEX_DTYPE=tl.int64" not in below
    symbolic = TritonExecutable(graph("B", 13)).source
    assert "INDEX_DTYPE=index_dtype(" in symbolic
    # a big table read by a small kernel: the gather's address needs int64
    table = TritonExecutable(graph(7, 2**15, vocab=2**16)).source
    assert "INDEX_DTYPE=tl.int64" in table and ".to(INDEX_DTYPE)" in table  # i32 ids widen


def test_launch_time_choice_from_extents() -> None:
    ns: dict = {}
    exe = TritonExecutable(graph("B", 13))
    exec(exe.source.split("def row_warps")[0].split("BLOCK = ")[0] + "\n" + _helper(exe.source), ns)
    tl_int32, tl_int64 = ns["tl"].int32, ns["tl"].int64
    meta = torch.empty(2**31 - 1, dtype=torch.float16, device="meta")
    assert ns["index_dtype"](10, meta) is tl_int32
    assert ns["index_dtype"](2**31, meta[:5]) is tl_int64
    assert ns["index_dtype"](10, torch.empty(2**31, device="meta")) is tl_int64
    # a strided view reaches past its numel: its extent decides
    strided = torch.empty(2**31 + 2, dtype=torch.float16, device="meta").as_strided((2, 3), (2**31, 1))
    assert ns["index_dtype"](6, strided) is tl_int64


def _helper(source: str) -> str:
    start = source.index("def index_dtype(")
    return source[start:source.index("def row_warps", start)]


@pytest.mark.parametrize("rows,idt", [(7, "i32"), ("B", "i64")])
def test_int64_index_math_matches_the_reference(rows: object, idt: str, monkeypatch: pytest.MonkeyPatch,
                                                request: pytest.FixtureRequest) -> None:
    """The int64 variant of every kernel computes what the int32 one does (threshold lowered to 64)."""
    if not INTERP.runs_here(request):
        return
    monkeypatch.setattr(codegen, "INT32_LIMIT", 64)
    g = graph(rows, 13, idt=idt)
    g.tensors["emb"] = torch.randn(11, 13, generator=torch.Generator().manual_seed(0)).half().to(DEVICE)
    exe = TritonExecutable(g)
    if rows == 7:
        assert "INDEX_DTYPE=tl.int32" not in exe.source
    else:
        assert "limit = 64" in exe.source
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(7, 13, generator=gen).half().to(DEVICE)
    ids = torch.randint(0, 11, (7,), generator=gen).to(DEVICE, torch.int32 if idt == "i32" else torch.int64)
    for a, b in zip(exe([x, ids]), run_graph(g, [x, ids])):
        torch.testing.assert_close(a, b, atol=2e-3, rtol=2e-3)


def _free_gpu_bytes() -> int:
    return torch.cuda.mem_get_info()[0] if torch.cuda.is_available() else 0


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [2**16 + 1, "B"])
def test_gpu_kernels_past_2_31_elements(rows: object) -> None:
    """fp16 [2**16 + 1, 2**15] (just over 2**31 elements, 4 GiB a tensor): the pointwise add (with an
    int32-id gather) and the softmax row kernel are right at the last rows, where int32 offsets wrap."""
    if _free_gpu_bytes() < 40 * 2**30:
        pytest.skip("needs about 40 GiB of free GPU memory")
    n, r = 2**15, 2**16 + 1
    g = graph(rows, n, vocab=3)
    g.tensors["emb"] = torch.randn(3, n, device="cuda").half()
    exe = TritonExecutable(g)
    assert "INDEX_DTYPE=tl.int64" in exe.source or "index_dtype(" in exe.source
    x = torch.randn(r, n, device="cuda").half()
    ids = torch.randint(0, 3, (r,), device="cuda", dtype=torch.int32)
    y, q = exe([x, ids])
    for lo, hi in ((0, 3), (r - 3, r)):  # first rows (never wrong) and last rows (past 2**31)
        ye = x[lo:hi] + g.tensors["emb"][ids[lo:hi].long()]
        torch.testing.assert_close(y[lo:hi], ye)
        torch.testing.assert_close(q[lo:hi], ye.float().softmax(-1).half(), atol=1e-3, rtol=1e-2)
    del x, y, q
    torch.cuda.empty_cache()
