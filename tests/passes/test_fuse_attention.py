"""fuse-attention numerics with causal masks (the IR before/after and no-match cases, and numerics on
random inputs, are tests/passes/mir/fuse-attention.mir)."""

import pytest
import torch
from filecheck import mir_input

from membound.backends.reference import run_graph
from membound.ir import parse
from membound.passes import PassContext
from membound.passes.fuse_attention import fuse_attention


def _inputs(g, b=3, s=5):
    out = []
    for v in g.inputs:
        shape = [b if str(d) == "B" else s if str(d) == "S" else int(d) for d in v.shape]
        if v.dtype == torch.bool:
            out.append(torch.ones(s, s, dtype=torch.bool).triu(1))   # causal fill mask: never a full row
        elif v.name == "m":
            out.append(torch.zeros(shape).masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf")))
        else:
            out.append(torch.randn(shape))
    return out


# cases of mir/fuse-attention.mir: additive -inf mask, bool masked_fill, GQA through repeat_kv
@pytest.mark.parametrize("case", [0, 1, 3], ids=["additive", "masked-fill", "gqa"])
def test_numerics_unchanged(case):
    g = parse(mir_input("fuse-attention", case))
    ins = _inputs(g)
    ref = run_graph(g, ins)[0]
    assert fuse_attention(g, PassContext())
    torch.testing.assert_close(run_graph(g, ins)[0], ref, rtol=1e-5, atol=1e-6)  # fp32
