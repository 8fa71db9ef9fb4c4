"""transformers 4.x writes its mixture-of-experts blocks (Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE) as a loop over the
experts some token was routed to, found by ``nonzero`` / ``where``: data-dependent sizes torch.export cannot
trace. ``capture_export`` runs such a block densely while exporting (every expert on every token, weighted by
``where(ids == e, weights, 0)``), which fuse-moe's looped form turns into one ``moe`` op. CI has transformers 5.x,
so the 4.x blocks are stood in for by classes of the same names and module, their forward written out as 4.57
writes it; the sweep under a real 4.57 is ``benches/hf_families.py`` with it on ``PYTHONPATH`` (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE and Granite-MoE decode, session 17; gpt-oss, whose experts are captured densely, session 19).
transformers 5.17's LongCat-Flash experts loop the same way; they are stood in for likewise (session 22)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from membound.backends.reference import run_graph
from membound.frontends import capture_export
from membound.passes import PassContext, PassManager, default_pipeline


class _MLP(nn.Module):
    def __init__(self, d: int, i: int) -> None:
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, i, bias=False), nn.Linear(d, i, bias=False)
        self.down_proj = nn.Linear(i, d, bias=False)
        self.act_fn = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class Qwen2MoeSparseMoeBlock(nn.Module):
    """transformers 4.57's block: the sparse loop (``nonzero``, ``where``, ``index_add_``), an optional
    renormalisation, a sigmoid-gated shared expert."""

    def __init__(self, d: int, i: int, e: int, k: int, norm: bool, shared: bool) -> None:
        super().__init__()
        self.num_experts, self.top_k, self.norm_topk_prob = e, k, norm
        self.gate = nn.Linear(d, e, bias=False)
        self.experts = nn.ModuleList([_MLP(d, i) for _ in range(e)])
        if shared:
            self.shared_expert = _MLP(d, 2 * i)
            self.shared_expert_gate = nn.Linear(d, 1, bias=False)

    def forward(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        batch_size, sequence_length, hidden_dim = hidden_states.shape
        hidden_states = hidden_states.view(-1, hidden_dim)
        router_logits = self.gate(hidden_states)
        routing_weights = F.softmax(router_logits, dim=1, dtype=torch.float)
        routing_weights, selected_experts = torch.topk(routing_weights, self.top_k, dim=-1)
        if self.norm_topk_prob:
            routing_weights /= routing_weights.sum(dim=-1, keepdim=True)
        routing_weights = routing_weights.to(hidden_states.dtype)
        final = torch.zeros((batch_size * sequence_length, hidden_dim), dtype=hidden_states.dtype)
        expert_mask = F.one_hot(selected_experts, num_classes=self.num_experts).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit:
            idx, top_x = torch.where(expert_mask[expert_idx].squeeze(0))
            current = hidden_states[None, top_x].reshape(-1, hidden_dim)
            out = self.experts[expert_idx](current) * routing_weights[top_x, idx, None]
            final.index_add_(0, top_x, out.to(hidden_states.dtype))
        if hasattr(self, "shared_expert"):
            final = final + F.sigmoid(self.shared_expert_gate(hidden_states)) * self.shared_expert(hidden_states)
        return final.reshape(batch_size, sequence_length, hidden_dim), router_logits


Qwen2MoeSparseMoeBlock.__module__ = "transformers.models.qwen2_moe.modeling_qwen2_moe"


class Layer(nn.Module):
    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.mlp = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)[0]


@pytest.mark.parametrize("norm,shared", [(True, False), (False, True)], ids=["renormalised", "shared-expert"])
def test_a_4x_moe_block_captures_and_fuses(norm: bool, shared: bool) -> None:
    torch.manual_seed(0)
    layer = Layer(Qwen2MoeSparseMoeBlock(12, 10, 4, 2, norm, shared)).eval()
    x = torch.randn(2, 3, 12)
    cap = capture_export(layer, (x,), {})
    assert "forward" not in vars(layer.mlp)  # the swap is undone
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["dead-code-elimination"]).run(cap.graph, ctx)
    assert g.count("moe") == 1 and g.count("topk") == 0, ctx.log
    form = "looped + shared expert" if shared else "looped"
    assert f"fuse-moe: {form}: 1" in ctx.log, ctx.log
    for xs in (x, x[:1, :1]):  # another size (the capture is dynamic), and one token: most experts get none
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


class _Experts(nn.Module):
    def __init__(self, e: int, out: int, inp: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(e, out, inp) * inp ** -0.5)

    def forward(self, inputs: torch.Tensor, expert_size: list[int]) -> torch.Tensor:
        parts = inputs.split(expert_size, dim=0)
        return torch.cat([F.linear(parts[i], self.weight[i]) for i in range(self.weight.shape[0])], dim=0)


class _Router(nn.Module):
    def __init__(self, d: int, e: int, k: int) -> None:
        super().__init__()
        self.num_experts, self.top_k = e, k
        self.layer = nn.Linear(d, e, bias=False)

    def forward(self, x: torch.Tensor):  # type: ignore[no-untyped-def]
        logits = self.layer(x).float()
        top_logits, top_ids = logits.topk(self.top_k, dim=1)
        gates = torch.softmax(top_logits, dim=1).type_as(x)
        expert_size = torch.zeros(x.shape[0], self.num_experts).scatter(1, top_ids, 1).long().sum(0).tolist()
        _, order = top_ids.flatten().sort(0)
        return order, order.div(self.top_k, rounding_mode="trunc"), gates.flatten()[order], expert_size, logits


class GraniteMoeMoE(nn.Module):
    """transformers 4.57's Granite-MoE block: tokens grouped by expert (sizes read with ``.tolist()``), experts as
    slices of two [E, *, *] parameters, softmax after the top-k."""

    def __init__(self, d: int, i: int, e: int, k: int) -> None:
        super().__init__()
        self.input_size = d
        self.input_linear, self.output_linear = _Experts(e, 2 * i, d), _Experts(e, d, i)
        self.router = _Router(d, e, k)
        self.activation = nn.SiLU()

    def forward(self, layer_input: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bsz, length, emb = layer_input.size()
        layer_input = layer_input.reshape(-1, emb)
        _, batch_index, batch_gates, expert_size, router_logits = self.router(layer_input)
        hidden = self.input_linear(layer_input[batch_index], expert_size)
        chunked = hidden.chunk(2, dim=-1)
        outputs = self.output_linear(self.activation(chunked[0]) * chunked[1], expert_size) * batch_gates[:, None]
        zeros = torch.zeros((bsz * length, self.input_size), dtype=outputs.dtype)
        return zeros.index_add(0, batch_index, outputs).view(bsz, length, self.input_size), router_logits


GraniteMoeMoE.__module__ = "transformers.models.granitemoe.modeling_granitemoe"


def test_a_4x_granite_moe_block_captures_and_fuses() -> None:
    """Granite-MoE (it was refused: data-dependent sizes) is captured densely, its experts slices of two parameters,
    which fuse-moe's looped form takes as views: one moe op, equal to eager."""
    torch.manual_seed(0)
    layer = Layer(GraniteMoeMoE(12, 10, 4, 2)).eval()
    x = torch.randn(2, 3, 12)
    cap = capture_export(layer, (x,), {})
    assert "forward" not in vars(layer.mlp)
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["dead-code-elimination"]).run(cap.graph, ctx)
    assert g.count("moe") == 1 and "fuse-moe: looped: 1" in ctx.log, ctx.log
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


class GptOssExperts(nn.Module):
    """transformers 4.57's gpt-oss experts, their CPU branch: a loop over the experts hit (``nonzero``), interleaved
    gate/up columns with a bias, the clamped SwiGLU, the down bias, routing weights ``[T, E]``."""

    def __init__(self, d: int, i: int, e: int) -> None:
        super().__init__()
        self.hidden_size, self.expert_dim, self.alpha, self.limit = d, i, 1.702, 7.0
        self.gate_up_proj = nn.Parameter(torch.randn(e, d, 2 * i) * d ** -0.5)
        self.gate_up_proj_bias = nn.Parameter(torch.randn(e, 2 * i) * 0.1)
        self.down_proj = nn.Parameter(torch.randn(e, i, d) * i ** -0.5)
        self.down_proj_bias = nn.Parameter(torch.randn(e, d) * 0.1)

    def forward(self, hidden_states: torch.Tensor, router_indices=None, routing_weights=None):  # type: ignore
        batch_size = hidden_states.shape[0]
        hidden_states = hidden_states.reshape(-1, self.hidden_size)
        num_experts = routing_weights.shape[1]
        next_states = torch.zeros_like(hidden_states)
        expert_mask = F.one_hot(router_indices, num_classes=num_experts + 1).permute(2, 1, 0)
        expert_hit = torch.greater(expert_mask.sum(dim=(-1, -2)), 0).nonzero()
        for expert_idx in expert_hit[:]:
            expert_idx = expert_idx[0]
            if expert_idx == num_experts:
                continue
            _, token_idx = torch.where(expert_mask[expert_idx])
            gate_up = hidden_states[token_idx] @ self.gate_up_proj[expert_idx] + self.gate_up_proj_bias[expert_idx]
            gate, up = gate_up[..., ::2], gate_up[..., 1::2]
            gate = gate.clamp(min=None, max=self.limit)
            up = up.clamp(min=-self.limit, max=self.limit)
            glu = gate * torch.sigmoid(gate * self.alpha)
            out = ((up + 1) * glu) @ self.down_proj[expert_idx] + self.down_proj_bias[expert_idx]
            next_states.index_add_(0, token_idx, (out * routing_weights[token_idx, expert_idx, None]))
        return next_states.view(batch_size, -1, self.hidden_size)


GptOssExperts.__module__ = "transformers.models.gpt_oss.modeling_gpt_oss"


class _GptOssMLP(nn.Module):
    def __init__(self, d: int, i: int, e: int, k: int) -> None:
        super().__init__()
        self.top_k = k
        self.router = nn.Linear(d, e)
        self.experts = GptOssExperts(d, i, e)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x.reshape(-1, x.shape[-1])
        logits = self.router(h)
        top, ids = torch.topk(logits, self.top_k, dim=-1)
        scores = torch.zeros_like(logits).scatter_(1, ids, torch.softmax(top, dim=1))
        return self.experts(x, router_indices=ids, routing_weights=scores), scores


def test_4x_gpt_oss_experts_capture_densely(monkeypatch: pytest.MonkeyPatch) -> None:
    """4.57's gpt-oss experts on the CPU loop over the experts hit (refused: data-dependent sizes); under
    transformers 4.x they are captured as each token's k experts (5.x's batched form), which fuse-moe makes one
    ``moe`` (biases, the clamped SwiGLU), equal to eager (rows of 1 and 6 tokens). Under 5.x (CI's) the class is
    left alone: its experts take [T, k] weights."""
    import membound.frontends.export as export

    torch.manual_seed(1)
    layer = Layer(_GptOssMLP(12, 10, 4, 2)).eval()
    x = torch.randn(2, 3, 12)
    monkeypatch.setattr(export, "_transformers_major", lambda: 4)
    cap = capture_export(layer, (x,), {})
    assert "forward" not in vars(layer.mlp.experts)
    g = PassManager(default_pipeline() + ["dead-code-elimination"]).run(cap.graph, PassContext())
    moe = [n for n in g.nodes if n.op == "moe"]
    assert len(moe) == 1 and moe[0].attrs["bias"] and moe[0].attrs["act"] == "clamped_swiglu", g
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(export, "_transformers_major", lambda: 5)
    from membound.frontends.errors import CaptureError

    with pytest.raises(CaptureError, match="torch.export failed"):
        capture_export(layer, (x,), {})


def test_other_blocks_are_left_alone() -> None:
    """The same forward under a class outside transformers still fails to export (data-dependent), naming it."""
    from membound.frontends.errors import CaptureError

    class Mine(Qwen2MoeSparseMoeBlock):
        pass

    Mine.__name__ = Mine.__qualname__ = "Qwen2MoeSparseMoeBlock"  # the name, but the test's module
    layer = Layer(Mine(12, 10, 4, 2, True, False)).eval()
    with pytest.raises(CaptureError, match="torch.export failed"):
        capture_export(layer, (torch.randn(2, 3, 12),), {})


class LongcatFlashExperts(nn.Module):
    """transformers 5.17's LongCat-Flash experts: ``total_experts`` gate/up weights (the last ``zero_expert_num``
    unused), ``num_routed_experts`` down weights, a loop over the experts hit in which a zero expert passes its tokens
    through (``identity_expert``) and a routed one runs its gated MLP, each weighted and ``index_add_``-ed."""

    def __init__(self, d: int, i: int, routed: int, zero: int) -> None:
        super().__init__()
        self.num_routed_experts, self.zero_expert_num, self.total_experts = routed, zero, routed + zero
        self.act_fn, self.identity_expert = nn.SiLU(), nn.Identity()
        self.gate_up_proj = nn.Parameter(torch.randn(routed + zero, 2 * i, d) * 0.3)
        self.down_proj = nn.Parameter(torch.randn(routed, d, i) * 0.3)

    def forward(self, hidden_states: torch.Tensor, top_k_index: torch.Tensor,
                top_k_weights: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(hidden_states)
        mask = F.one_hot(top_k_index, num_classes=self.total_experts).permute(2, 1, 0)
        for e in torch.greater(mask.sum(dim=(-1, -2)), 0).nonzero():
            e = int(e.item())
            slot, tok = torch.where(mask[e])
            x = hidden_states[tok]
            if e >= self.num_routed_experts:
                y = self.identity_expert(x)
            else:
                gate, up = F.linear(x, self.gate_up_proj[e]).chunk(2, dim=-1)
                y = F.linear(self.act_fn(gate) * up, self.down_proj[e])
            out.index_add_(0, tok, (y * top_k_weights[tok, slot, None]).to(out.dtype))
        return out


LongcatFlashExperts.__module__ = "transformers.models.longcat_flash.modeling_longcat_flash"


class _LongcatMoE(nn.Module):
    def __init__(self, d: int, i: int, routed: int, zero: int, k: int) -> None:
        super().__init__()
        self.k = k
        self.router = nn.Linear(d, routed + zero, bias=False)
        self.experts = LongcatFlashExperts(d, i, routed, zero)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        scores = self.router(h).softmax(-1)
        ids = scores.topk(self.k, dim=-1).indices
        return self.experts(h, ids, scores.gather(1, ids) * 2.0).reshape(x.shape)


def test_517_longcat_experts_capture_as_each_tokens_k_experts() -> None:
    """5.17's LongCat-Flash experts (refused before: the loop over the experts hit) are captured as each token's k
    experts plus the zero experts' weighted input, equal to eager with every routed and zero expert hit."""
    torch.manual_seed(0)
    layer = _LongcatMoE(12, 10, 4, 2, 3).eval()
    x = torch.randn(2, 7, 12)
    cap = capture_export(layer, (x,), {})
    assert "forward" not in vars(layer.experts)
    ids = layer.router(x.reshape(-1, 12)).softmax(-1).topk(3, dim=-1).indices
    assert set(ids.flatten().tolist()) == set(range(6))  # the draw hits every expert, zero ones included
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(cap.graph, [xs])[0], want, rtol=1e-5, atol=1e-5)
    # fuse-moe reads the routed experts' gate/up weights through the slice [:routed] of the parameter (which holds the
    # zero experts' unused ones after them): one moe_experts whose weights are views of the model's, no copies
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["dead-code-elimination"]).run(cap.graph, ctx)
    assert g.count("moe_experts") == 1 and g.count("matmul") == 0, (ctx.log, g)
    (node,) = [n for n in g.nodes if n.op == "moe_experts"]
    experts = layer.experts
    for w, shape in zip(node.inputs[3:], ((4, 10, 12), (4, 10, 12), (4, 12, 10))):
        assert tuple(w.shape) == shape
        assert g.tensors[w.name].untyped_storage().data_ptr() in (experts.gate_up_proj.untyped_storage().data_ptr(),
                                                                 experts.down_proj.untyped_storage().data_ptr())
    for xs in (x, x[:1, :1]):
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)


class _KMajorPrefixMoE(nn.Module):
    """gpt-oss-style batched experts (``x[:, None] @ W[ids]``, K-major ``[E, D, 2I]`` / ``[E, I, D]`` weights, gate and
    up the even and odd columns) whose gate/up parameter holds two unused experts after the router's E, read
    through ``[:E]``."""

    def __init__(self, d: int, i: int, e: int, k: int) -> None:
        super().__init__()
        self.e, self.k = e, k
        self.router = nn.Linear(d, e, bias=False)
        self.gate_up = nn.Parameter(torch.randn(e + 2, d, 2 * i) * 0.3)
        self.down = nn.Parameter(torch.randn(e, i, d) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.reshape(-1, x.shape[-1])
        w, ids = self.router(h).softmax(-1).topk(self.k, dim=-1)
        ids = ids.reshape(-1)
        rows = h.repeat_interleave(self.k, dim=0)
        gu = torch.bmm(rows[:, None], self.gate_up[:self.e][ids]).squeeze(1)
        y = torch.bmm((F.silu(gu[:, ::2]) * gu[:, 1::2])[:, None], self.down[ids]).squeeze(1)
        return (y * w.reshape(-1, 1)).view(h.shape[0], self.k, -1).sum(dim=1).reshape(x.shape)


def test_k_major_experts_read_through_a_prefix_slice_fuse_with_copies_of_those_experts_alone() -> None:
    torch.manual_seed(0)
    layer = _KMajorPrefixMoE(12, 5, 4, 2).eval()
    x = torch.randn(2, 5, 12)
    cap = capture_export(layer, (x,), {})
    ctx = PassContext()
    g = PassManager(default_pipeline() + ["dead-code-elimination"]).run(cap.graph, ctx)
    assert g.count("moe") == 1 and g.count("matmul") == 0, (ctx.log, g)
    (node,) = [n for n in g.nodes if n.op == "moe"]
    shapes = [tuple(g.tensors[v.name].shape) for v in node.inputs if v.kind == "param" and v.rank == 3]
    assert shapes == [(4, 5, 12), (4, 5, 12), (4, 12, 5)], shapes  # [E, N, K] copies of the 4 routed experts
    for xs in (x, x[:1, :3]):
        with torch.no_grad():
            want = layer(xs)
        torch.testing.assert_close(run_graph(g, [xs])[0], want, rtol=1e-5, atol=1e-5)
