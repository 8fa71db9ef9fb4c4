"""Row kernels whose rows have length 1 (the S=1 decode step).

A per-element row reduction (cumsum, softmax, log_softmax, rms_norm, layer_norm) of a length-1 row is
read by its consumers at the broadcast index 0, not on the row's lanes; the partitioner refuses that
fusion and says why (``Partition.notes``) instead of generating a kernel that cannot be emitted
(``cumsum %2 read at (row, 0), off its row``). Found in ``generate`` on a model whose position ids
are the cumsum of its attention mask.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

import membound
from membound.backends.reference import run_graph
from membound.backends.triton import TritonExecutable
from membound.ir import parse, verify
from membound.models.gpt2 import GPT2, GPT2Config

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")

CASES = {
    "cumsum": """graph @t(%m: i64[B, 1]) {
        %c = cumsum(%m) {dim=-1, dtype=none} : i64[B, 1]
        %one = constant() {value=1, dtype=i64} : i64[]
        %s = sub(%c, %one) : i64[B, 1]
        %p = clamp(%s) {min=0, max=none} : i64[B, 1]
        return %p
    }""",
    "softmax": """graph @t(%x: f32[B, 3, 1]) {
        %p = softmax(%x) {dim=-1, dtype=none} : f32[B, 3, 1]
        %y = mul(%p, %x) : f32[B, 3, 1]
        return %y
    }""",
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_per_element_reduction_of_a_length_1_row_is_not_fused_with_its_reader(
        case: str, request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    g = parse(CASES[case])
    verify(g)
    exe = TritonExecutable(g)
    ops = [[m.op for m in k.members] for k in exe.partition.kernels]
    assert len(ops) == 2 and ops[0] in (["cumsum"], ["softmax"]), exe.partition.describe()
    assert any("length-1 row off its lanes" in n for n in exe.partition.notes), exe.partition.notes
    assert "length-1 row" in exe.partition.describe()
    x = torch.randint(0, 3, (4, 1)) if case == "cumsum" else torch.randn(4, 3, 1)
    x = x.to(DEVICE)
    torch.testing.assert_close(exe([x])[0], run_graph(g, [x])[0])


def test_longer_rows_still_fuse() -> None:
    g = parse(CASES["cumsum"].replace("[B, 1]", "[B, 5]"))
    verify(g)
    from membound.backends.triton import partition

    p = partition(g)
    assert [[m.op for m in k.members] for k in p.kernels] == [["cumsum", "sub", "clamp"]] and not p.notes


class MaskPositionsGPT2(GPT2):
    """GPT-2 whose position ids are the cumsum of the attention mask (as Hugging Face builds them)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor = None) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        positions = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = self.wte(input_ids) + self.wpe(positions)
        for block in self.h:
            x = block(x)
        return F.linear(self.ln_f(x), self.wte.weight)


def test_generate_with_cumsum_positions_equals_reference(request: pytest.FixtureRequest) -> None:
    """Positions counted as ``cumsum(ones) - 1``: the KV step reads them from its positions input (the count is
    positions + 1, insert-kv-cache), so each new token gets its own position. Until session 15 the decode step kept
    the cumsum over its one new token, giving every token position 0; this test then asserted that cumsum was in
    the step and, with the default init's near-uniform logits (the same token every step), could not see the wrong
    positions. Weights ``N(0, 1/fan_in)`` make the greedy tokens vary (six of them per row)."""
    if not INTERP.runs_here(request):
        return
    from membound.models.build import init_weights

    model = MaskPositionsGPT2(GPT2Config(vocab_size=64, n_positions=16, dim=16, n_layers=1, n_heads=2))
    init_weights(model, 0)
    model = model.eval().to(DEVICE)
    ids = torch.randint(1, 64, (2, 3), generator=torch.Generator().manual_seed(0)).to(DEVICE)
    tri = membound.compile(model, backend="triton", cuda_graphs=False)
    with torch.no_grad():
        got = membound.generate(tri, ids, 6)
        want = ids
        for _ in range(6):  # greedy decoding by full recomputation, in eager
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, want), f"{got.tolist()} vs {want.tolist()}"
    assert len({t for row in got[:, 3:].tolist() for t in row}) > 2  # varied tokens: the test can fail
    assert "cumsum" not in {n.op for n in tri._kv_program.decode_graph.nodes}
