"""merge-linear: the merged weight's tensor, the decline log and the cost rule (IR cases: mir/merge-linear.mir)."""

from __future__ import annotations

import torch
from filecheck import mir_input
from pass_testing import parse_with_params

from membound.cost import Hardware, RooflineCost
from membound.passes import PassContext
from membound.passes.merge_linear import merge_linear

# the IR before/after cases and the unchanged ones are tests/passes/mir/merge-linear.mir (its numerics
# run there too); what needs tensors or a cost model is here
QKV = mir_input("merge-linear", 0)  # q/k/v projections of one input
M64 = mir_input("merge-linear", -1)  # 64 tokens: past the GEMV range without a cost model


def test_merged_weight_is_the_concatenation() -> None:
    g = parse_with_params(QKV)
    wq, wk, wv = (g.tensors[n] for n in ("wq", "wk", "wv"))
    assert merge_linear(g, PassContext())
    assert torch.equal(g.tensors["wq_wk_wv"], torch.cat([wq, wk, wv]))
    assert set(g.tensors) == {"wq_wk_wv"}  # the originals are dropped from the graph


def test_a_linear_without_a_bias_gets_zeros_in_the_merged_bias() -> None:
    g = parse_with_params(mir_input("merge-linear", 2))  # a, c+bc, b, d+bd over one x
    bc, bd = g.tensors["bc"], g.tensors["bd"]
    assert merge_linear(g, PassContext())
    bias = g.tensors["a_c_b_d_bias"]
    assert torch.equal(bias, torch.cat([torch.zeros(5), bc, torch.zeros(7), bd]))
    assert bias.dtype == bc.dtype


def test_declining_is_logged() -> None:
    ctx = PassContext(current_pass="merge-linear")
    g = parse_with_params(M64)
    assert merge_linear(g, ctx) is False
    assert any("M = 64 tokens > 16" in line for line in ctx.log)


class NeverPays:
    """A cost model that prices a linear by its output width squared: merging never pays."""

    def estimate(self, node, dims):  # duck-typed like RooflineCost.estimate
        class Est:
            time_s = float(node.results[0].shape[-1]) ** 2

        return Est()


def test_the_cost_model_decides() -> None:
    roofline = PassContext(cost=RooflineCost(Hardware.named("h100-sxm")))
    g = parse_with_params(M64)  # 64 tokens: merging still saves a launch and 64 rows of x reads
    assert merge_linear(g, roofline) is True and g.count("split") == 1
    g = parse_with_params(QKV)
    assert merge_linear(g, PassContext(cost=NeverPays(), current_pass="merge-linear")) is False
    assert g.count("linear") == 3


def test_decode_dims_set_where_the_cost_model_looks() -> None:
    """``PassContext.decode_dims`` is what the pass hands the cost model (symbols not given at 1)."""
    seen: list[dict] = []

    class Recording(NeverPays):
        def estimate(self, node, dims):
            seen.append({str(k): v for k, v in dims.items()})
            return super().estimate(node, dims)

    merge_linear(parse_with_params(QKV), PassContext(cost=Recording(), decode_dims={"B": 8}))
    assert seen and all(d == {"B": 8, "S": 1} for d in seen)
