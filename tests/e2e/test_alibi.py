"""ALiBi (Bloom / Falcon / MPT style: a per-head slope times the key position added to the scores) written
by hand in eager torch: fuse-attention turns the additive mask into ``alibi=(slopes)`` on a causal
``attention``, the forward equals eager, and the KV-cached step decodes eager's greedy tokens."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import membound
from membound.frontends.export import capture_export
from membound.ir import parse, print_graph
from membound.passes import PassContext, PassManager
from membound.passes.pipeline import default_pipeline

VOCAB, DIM, HEADS = 61, 32, 4


class AlibiLM(nn.Module):
    """A two-layer decoder with ALiBi instead of position embeddings (the bias ``m_h * j``, causal by -inf)."""

    def __init__(self, relative: bool = False) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.relative = relative  # m_h * (j - i) instead of m_h * j
        self.embed = nn.Embedding(VOCAB, DIM)
        self.qkv = nn.ModuleList(nn.Linear(DIM, 3 * DIM) for _ in range(2))
        self.out = nn.ModuleList(nn.Linear(DIM, DIM) for _ in range(2))
        self.head = nn.Linear(DIM, VOCAB)
        # the geometric slopes of the ALiBi paper: 2^(-8 h / H)
        self.register_buffer("slopes", torch.tensor([2.0 ** (-8.0 * (h + 1) / HEADS) for h in range(HEADS)]))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, s = ids.shape
        pos = torch.arange(s, device=ids.device)
        rel = pos[None, :] - pos[:, None] if self.relative else pos[None, :].expand(s, s)
        bias = self.slopes[:, None, None] * rel[None].float()                         # [H, S, S]
        bias = bias.masked_fill(pos[None, :] > pos[:, None], float("-inf"))           # causal
        x = self.embed(ids)
        for qkv, out in zip(self.qkv, self.out):
            q, k, v = qkv(x).view(b, s, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)  # [B, H, S, D] each
            scores = q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS) + bias
            o = torch.softmax(scores, dim=-1) @ v
            x = x + out(o.transpose(1, 2).reshape(b, s, DIM))
        return self.head(x)


def _fused(model: nn.Module):
    ids = torch.randint(0, VOCAB, (2, 7))
    cap = capture_export(model, (ids,), dynamic=True)
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["fuse-attention", "dead-code-elimination"]).run(cap.graph, ctx)
    return g, ids, ctx


@pytest.mark.parametrize("relative", [False, True], ids=["slope-times-j", "slope-times-j-minus-i"])
def test_alibi_mask_becomes_the_alibi_attribute(relative: bool) -> None:
    model = AlibiLM(relative).eval()
    g, ids, ctx = _fused(model)
    attns = [n for n in g.nodes if n.op == "attention"]
    assert len(attns) == 2, "\n".join(ctx.log)
    want = tuple(float(x) for x in model.slopes)
    for n in attns:
        assert len(n.inputs) == 3 and n.attrs["causal"] and n.attrs["window"] is None  # the mask is gone
        assert n.attrs["alibi"] == pytest.approx(want)
    text = print_graph(g)
    assert "alibi=[0.25, 0.0625, 0.015625, 0.00390625]" in text
    assert print_graph(parse(text)) == text  # reads back
    from membound.backends.reference import run_graph

    with torch.no_grad():
        torch.testing.assert_close(run_graph(g, [ids])[0], model(ids), rtol=1e-4, atol=1e-5)  # fp32


def test_alibi_model_generates_eager_greedy_tokens() -> None:
    model = AlibiLM().eval()
    ids = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(3))
    compiled = membound.compile(model)
    with torch.no_grad():
        got = membound.generate(compiled, ids, 6)
        want = ids
        for _ in range(6):  # eager full recomputation
            want = torch.cat([want, model(want)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(got, want), (got[:, 9:], want[:, 9:])
    cached = [n for n in compiled._kv_program.prefill_graph.nodes if n.op == "cached_attention"]
    assert cached and all(n.attrs["alibi"] is not None for n in cached)


def test_a_bias_that_is_not_alibi_keeps_its_mask() -> None:
    # a per-head bias quadratic in j is no ALiBi: the mask stays (with the reason), the model stays exact
    class Quadratic(AlibiLM):
        def forward(self, ids: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
            b, s = ids.shape
            pos = torch.arange(s, device=ids.device).float()
            bias = (self.slopes[:, None, None] * (pos * pos)[None, None, :]).expand(HEADS, s, s)
            bias = bias.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
            x = self.embed(ids)
            q, k, v = self.qkv[0](x).view(b, s, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
            o = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
            return self.head(self.out[0](o.transpose(1, 2).reshape(b, s, DIM)))

    g, _, ctx = _fused(Quadratic().eval())
    attns = [n for n in g.nodes if n.op == "attention"]
    assert len(attns) == 1 and len(attns[0].inputs) == 4 and attns[0].attrs["alibi"] is None
    assert any("per-head ALiBi slope" in line for line in ctx.log), ctx.log
