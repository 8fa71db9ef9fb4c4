"""The partitioner says why it did not fuse (``Partition.refusals``, shown by ``describe()`` as ``# not fused``
lines, like Inductor's WhyNoFuse), and profitability asks the cost model at the dims the passes use.

Only the partition is built here (no kernels run), so these tests are fast and need no Triton.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():  # before anything imports triton (other test modules run kernels on CPU)
    os.environ.setdefault("TRITON_INTERPRET", "1")

from membound.backends.triton import partition  # noqa: E402
from membound.backends.triton.partition import Refusal  # noqa: E402
from membound.cost import Hardware, RooflineCost  # noqa: E402
from membound.ir import parse  # noqa: E402


def kernels(p) -> list[list[str]]:
    return [[m.results[0].name for m in k.members] for k in p.kernels]


def only(p, name: str) -> Refusal:
    found = p.why_not_fused(name)
    assert len(found) == 1, p.describe()
    return found[0]


def test_two_iteration_spaces_is_a_legality_refusal() -> None:
    p = partition(parse("""graph @t(%x: f32[S, 4], %y: f32[B, S, 4]) {
        %c = cos(%x) : f32[S, 4]
        %d = mul(%y, %c) : f32[B, S, 4]
        return %c, %d
    }"""))
    assert kernels(p) == [["c"], ["d"]]
    r = only(p, "d")
    assert r.concern == "legality" and [m.results[0].name for m in r.into] == ["c"]
    assert "two shapes: %c [S, 4] and %d [B, S, 4]" in r.reason
    assert "# not fused: %d = mul with [%c] (legality): it would store values of two shapes" in p.describe()


def test_a_cycle_through_a_call_names_the_call() -> None:
    p = partition(parse("""graph @t(%x: f32[B, 8]) params(%w: f32[8, 8]) {
        %a = exp(%x) : f32[B, 8]
        %b = linear(%a, %w) : f32[B, 8]
        %c = add(%a, %b) : f32[B, 8]
        return %c
    }"""))
    assert kernels(p) == [["a"], ["c"]]
    assert only(p, "c").reason == "the kernel would both feed and read %b = linear (a cycle)"


def test_a_view_that_moves_a_row_bound_value_is_named() -> None:
    p = partition(parse("""graph @t(%x: f32[8, 8]) {
        %m = mean(%x) {dims=[-1], keepdim=true, dtype=none} : f32[8, 1]
        %t = transpose(%m) {dim0=0, dim1=1} : f32[1, 8]
        %y = sub(%x, %t) : f32[8, 8]
        return %y
    }"""))
    assert kernels(p) == [["m"], ["y"]]
    assert only(p, "y").reason == "the view %t = transpose moves the row-bound %m off its row"


def test_rows_of_different_lengths() -> None:
    p = partition(parse("""graph @t(%x: f32[B, 6], %y: f32[B, 5]) {
        %a = sum(%x) {dims=[-1], keepdim=true, dtype=none} : f32[B, 1]
        %c = softmax(%y) {dim=-1, dtype=none} : f32[B, 5]
        %d = add(%c, %a) : f32[B, 5]
        return %d
    }"""))
    assert kernels(p) == [["a"], ["c", "d"]]
    assert only(p, "d").reason == "row reductions over different rows: %a [B, 6] and %c [B, 5]", p.describe()


# a small table ([64]) run through a long chain, then broadcast over [B, 64]: fusing recomputes the
# chain at every one of the B * 64 elements
CHAIN = "\n".join(f"        %e{i + 1} = exp(%e{i}) : f32[64]" for i in range(80))
RECOMPUTE = f"""graph @t(%x: f32[64], %y: f32[B, 64]) {{
        %e0 = neg(%x) : f32[64]
{CHAIN}
        %m = mul(%y, %e80) : f32[B, 64]
        return %m
    }}"""


def test_profitability_asks_the_cost_model_at_the_dims_given() -> None:
    g = parse(RECOMPUTE)
    # at the decode step (every symbol 1) the recomputation is free and a launch is saved
    assert len(partition(g).kernels) == 1 and not partition(g).refusals
    # a million rows: recomputing 81 exps per element costs more than writing and re-reading [64]
    p = partition(g, dims={"B": 1 << 20})
    assert [len(k) for k in kernels(p)] == [81, 1]
    r = p.why_not_fused("m")[0]
    assert r.concern == "profitability" and "cost model at B=1048576" in r.reason, r.reason


def test_profitability_uses_the_cost_model_it_is_given() -> None:
    """A device with 1000x slower arithmetic refuses the recomputation already at 1024 rows."""
    h100 = Hardware.named("h100-sxm")
    slow = h100.replace(flops={k: v / 1000 for k, v in h100.flops.items()})
    g = parse(RECOMPUTE)
    assert len(partition(g, dims={"B": 1024}).kernels) == 1
    assert len(partition(g, RooflineCost(slow), dims={"B": 1024}).kernels) == 2


def test_the_dump_folder_lists_the_refusals(tmp_path) -> None:
    from membound.backends.triton import TritonExecutable
    from membound.driver import PARTITION_DUMP, dump_generated_source

    exe = TritonExecutable(parse("""graph @t(%x: f32[S, 4], %y: f32[B, S, 4]) {
        %c = cos(%x) : f32[S, 4]
        %d = mul(%y, %c) : f32[B, S, 4]
        return %c, %d
    }"""))
    dump_generated_source(exe, tmp_path)
    text = (tmp_path / PARTITION_DUMP).read_text()
    assert "kernel _fused_cos_0" in text and "# not fused: %d = mul with [%c] (legality)" in text
