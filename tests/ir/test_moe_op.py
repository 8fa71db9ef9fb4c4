"""The ``moe`` op: type rule, reference against a per-token loop written independently, active-bytes cost.

Tolerances: fp32 1e-5 relative; fp16 2e-3 relative to the fp32 result (the combine is fp32 in both).
"""

from __future__ import annotations

from typing import Any, Optional

import pytest
import sympy
import torch
import torch.nn.functional as F

from membound.ir import Graph, verify
from membound.ir.ops import get_op
from membound.ir.types import B, S, TensorType

f32, f16 = torch.float32, torch.float16


def _weights(e: int, d: int, i: int, dtype: torch.dtype = f32, shared: int = 0, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return (torch.randn(shape, generator=g) / shape[-1] ** 0.5).to(dtype)

    ws = [r(e, d), r(e, i, d), r(e, i, d), r(e, d, i)]
    if shared:
        ws += [r(shared, d), r(shared, d), r(d, shared), r(1, d)]
    return ws


def per_token(x: torch.Tensor, router: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
              *shared: torch.Tensor, top_k: int, softmax_first: bool = True, renormalize: bool = True) -> torch.Tensor:
    """What the op means, token by token, in float64."""
    h = x.reshape(-1, x.shape[-1]).double()
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        logits = F.linear(h[t], router.double())
        if softmax_first:
            w, idx = logits.softmax(-1).topk(top_k)
        else:
            w, idx = logits.topk(top_k)
            w = w.softmax(-1)
        if renormalize:
            w = w / w.sum()
        for wk, e in zip(w, idx):
            y = wd[e].double() @ (F.silu(wg[e].double() @ h[t]) * (wu[e].double() @ h[t]))
            out[t] += wk * y
        if shared:
            sg, su, sd, sr = (s.double() for s in shared)
            out[t] += torch.sigmoid(sr @ h[t])[0] * (sd @ (F.silu(sg @ h[t]) * (su @ h[t])))
    return out.reshape(x.shape)


def per_token_llama4(x: torch.Tensor, router: torch.Tensor, wg: torch.Tensor, wu: torch.Tensor, wd: torch.Tensor,
                     top_k: int) -> torch.Tensor:
    """Llama 4's routing, token by token in float64: sigmoid of each kept logit, the token scaled by it before the
    expert."""
    h = x.reshape(-1, x.shape[-1]).double()
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        w, idx = F.linear(h[t], router.double()).topk(top_k)
        for wk, e in zip(w.sigmoid(), idx):
            ht = h[t] * wk
            out[t] += wd[e].double() @ (F.silu(wg[e].double() @ ht) * (wu[e].double() @ ht))
    return out.reshape(x.shape)


@pytest.mark.parametrize("top_k", [1, 2])
def test_sigmoid_scores_on_the_input_match_per_token_loop(top_k: int) -> None:
    ws = _weights(5, 12, 7)
    x = torch.randn(2, 9, 12)
    attrs = dict(top_k=top_k, softmax_first=False, renormalize=False, act="silu", score="sigmoid", weight_input=True)
    got = get_op("moe").reference(x, *ws, **attrs)
    assert _rel(got, per_token_llama4(x, *ws, top_k=top_k)) < 1e-5
    plain = get_op("moe").reference(x, *ws, **dict(attrs, weight_input=False))  # weight after the expert: differs
    assert _rel(plain, got) > 1e-2


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("top_k,softmax_first,renormalize", [(2, True, True), (1, True, False), (3, False, False),
                                                             (2, True, False)])
def test_reference_matches_per_token_loop(top_k: int, softmax_first: bool, renormalize: bool) -> None:
    ws = _weights(5, 12, 7)
    x = torch.randn(2, 9, 12)
    attrs = dict(top_k=top_k, softmax_first=softmax_first, renormalize=renormalize, act="silu")
    got = get_op("moe").reference(x, *ws, **attrs)
    want = per_token(x, *ws, top_k=top_k, softmax_first=softmax_first, renormalize=renormalize)
    assert got.shape == x.shape and got.dtype == x.dtype
    assert _rel(got, want) < 1e-5


def test_reference_with_shared_expert_and_fp16() -> None:
    ws = _weights(4, 16, 6, shared=5)
    x = torch.randn(7, 16)
    want = per_token(x, *ws, top_k=2)
    assert _rel(get_op("moe").reference(x, *ws, top_k=2, softmax_first=True, renormalize=False, act="silu"),
                per_token(x, *ws, top_k=2, renormalize=False)) < 1e-5
    got16 = get_op("moe").reference(x.half(), *[w.half() for w in ws], top_k=2, softmax_first=True,
                                    renormalize=True, act="silu")
    assert got16.dtype == f16 and _rel(got16, want) < 2e-3


def test_experts_without_tokens_and_ties() -> None:
    """One token: 3 of 4 experts get nothing. Tied router rows: topk keeps the lower index, as torch does."""
    router, wg, wu, wd = _weights(4, 8, 5)
    router[2] = router[1]  # experts 1 and 2 always tie
    x = torch.randn(1, 8)
    got = get_op("moe").reference(x, router, wg, wu, wd, top_k=1, softmax_first=True, renormalize=True, act="silu")
    assert _rel(got, per_token(x, router, wg, wu, wd, top_k=1)) < 1e-5


def _graph(x: TensorType, ws: list[TensorType], **attrs: Any) -> tuple[Graph, Any]:
    g = Graph("moe")
    xv = g.add_input("x", x)
    params = [g.add_param(f"w{i}", t) for i, t in enumerate(ws)]
    out = g.call("moe", xv, *params, **attrs)
    g.set_outputs([out])
    verify(g)
    return g, out


def _types(e: int = 8, d: int = 64, i: int = 96, dtype: torch.dtype = f16, shared: Optional[int] = None
           ) -> list[TensorType]:
    ts = [TensorType(dtype, s) for s in [(e, d), (e, i, d), (e, i, d), (e, d, i)]]
    if shared:
        ts += [TensorType(dtype, s) for s in [(shared, d), (shared, d), (d, shared), (1, d)]]
    return ts


def test_type_rule_and_symbolic_tokens() -> None:
    g, out = _graph(TensorType(f16, (B, S, 64)), _types(shared=32), top_k=2)
    assert out.type == TensorType(f16, (B, S, 64))
    assert "moe(%x, %w0" in str(g) and "top_k=2" in str(g)


def test_active_bytes_count_min_experts_tokens_times_k() -> None:
    """Decode at batch 1 reads 2 of 8 experts; 64 tokens read all 8 (not 128)."""
    g, out = _graph(TensorType(f16, (B, 64)), _types(), top_k=2)
    node = out.producer
    _, nbytes = get_op("moe").cost([v.type for v in node.inputs], [out.type], node.attrs)
    per_expert = 3 * 96 * 64 * 2
    fixed = 8 * 64 * 2 + 2 * B * 64 * 2
    assert sympy.simplify(nbytes.subs(B, 1) - (fixed.subs(B, 1) + 2 * per_expert)) == 0
    assert sympy.simplify(nbytes.subs(B, 64) - (fixed.subs(B, 64) + 8 * per_expert)) == 0


BAD = [
    (TensorType(torch.int64, (3, 64)), _types(dtype=torch.int64), {"top_k": 2}, TypeError),
    (TensorType(f16, (3, 64)), _types(), {"top_k": 9}, ValueError),
    (TensorType(f16, (3, 64)), _types(), {"top_k": 0}, TypeError),
    (TensorType(f16, (3, 32)), _types(), {"top_k": 2}, ValueError),
    (TensorType(f16, (3, 64)), _types()[:3] + [TensorType(f16, (8, 96, 64))], {"top_k": 2}, ValueError),
    (TensorType(f32, (3, 64)), _types(), {"top_k": 2}, TypeError),
    (TensorType(f16, (3, 64)), _types(), {"top_k": 2, "act": "relu"}, ValueError),
    (TensorType(f16, (3, 64)), _types() + [TensorType(f16, (32, 64))], {"top_k": 2}, ValueError),
    (TensorType(f16, (3, 64)), _types(), {"top_k": 2, "score": "sigmoid"}, ValueError),  # needs softmax_first=False
    (TensorType(f16, (3, 64)), _types(), {"top_k": 2, "softmax_first": False, "score": "tanh"}, ValueError),
    (TensorType(f16, (3, 64)), _types(), {"top_k": 2, "weight_input": 1}, TypeError),
]


@pytest.mark.parametrize("x,ws,attrs,exc", BAD)
def test_bad_inputs_name_the_op(x: TensorType, ws: list[TensorType], attrs: dict[str, Any],
                                exc: type[Exception]) -> None:
    with pytest.raises(exc, match="^moe: "):
        get_op("moe").infer_types([x, *ws], get_op("moe").normalize_attrs(attrs))


def _quant_types(e: int = 8, d: int = 64, i: int = 96, dtype: torch.dtype = f16) -> list[TensorType]:
    shapes = [(e, i, d), (e, i, d), (e, d, i)]
    return [TensorType(dtype, (e, d))] + [t for s in shapes for t in (TensorType(torch.int8, s), TensorType(dtype, s[:2]))]


def test_quant_moe_reads_one_byte_per_active_expert_weight() -> None:
    """int8 experts: a decode token reads its 2 experts' codes and scales, half moe's fp16 bytes and a bit."""
    op = get_op("quant_moe")
    x = TensorType(f16, (B, 64))
    attrs = op.normalize_attrs({"top_k": 2})
    (out,) = op.infer_types([x, *_quant_types()], attrs)
    assert out == x
    _, nbytes = op.cost([x, *_quant_types()], [out], attrs)
    per_expert = 3 * 96 * 64 + 2 * (96 + 96 + 64)
    fixed = 8 * 64 * 2 + 2 * B * 64 * 2
    assert sympy.simplify(nbytes.subs(B, 1) - (fixed.subs(B, 1) + 2 * per_expert)) == 0


def _int4_types(e: int = 8, d: int = 65, i: int = 96, group: int = 32, dtype: torch.dtype = f16) -> list[TensorType]:
    """int4 experts at odd D = 65: gate/up bytes [E, I, 33] with 3 groups of 32, down [E, D, 48] with 3."""
    out = [TensorType(dtype, (e, d))]
    for n, k in ((i, d), (i, d), (d, i)):
        out += [TensorType(torch.uint8, (e, n, (k + 1) // 2)), TensorType(dtype, (e, n, -(-k // group), 2))]
    return out


def test_quant_moe_int4_reads_half_a_byte_per_active_expert_weight() -> None:
    op = get_op("quant_moe")
    x = TensorType(f16, (B, 65))
    attrs = op.normalize_attrs({"top_k": 2, "scheme": "int4", "group_size": 32})
    (out,) = op.infer_types([x, *_int4_types()], attrs)
    assert out == x
    flops, nbytes = op.cost([x, *_int4_types()], [out], attrs)
    # codes: gate and up 96 rows of 33 bytes, down 65 rows of 48; (scale, offset) f16 pairs: 3 groups a row
    per_expert = 2 * 96 * 33 + 65 * 48 + (2 * 96 + 65) * 3 * 2 * 2
    fixed = 8 * 65 * 2 + 2 * B * 65 * 2
    assert sympy.simplify(nbytes.subs(B, 1) - (fixed.subs(B, 1) + 2 * per_expert)) == 0
    # dequantization FLOPs count the float weights (K = 65 and 96), not the packed bytes
    float_flops = get_op("moe").cost([x, TensorType(f16, (8, 65)), TensorType(f16, (8, 96, 65)),
                                      TensorType(f16, (8, 96, 65)), TensorType(f16, (8, 65, 96))], [out],
                                     get_op("moe").normalize_attrs({"top_k": 2}))[0]
    assert sympy.simplify((flops - float_flops).subs(B, 1) - 2 * 2 * 3 * 96 * 65) == 0


@pytest.mark.parametrize("change,match", [({"scheme": "int2"}, "scheme must be one of"), ({"top_k": 9}, "top_k=9"),
                                          ({"scheme": "int4"}, "int4 group_size must be one of")])
def test_quant_moe_bad_attrs_name_the_op(change: dict[str, Any], match: str) -> None:
    op = get_op("quant_moe")
    with pytest.raises((TypeError, ValueError), match=f"^quant_moe: .*{match}"):
        op.infer_types([TensorType(f16, (3, 64)), *_quant_types()], op.normalize_attrs(dict({"top_k": 2}, **change)))


def test_quant_moe_codes_must_match_the_scheme() -> None:
    ts = _quant_types()
    ts[1] = TensorType(f16, ts[1].shape)
    with pytest.raises(TypeError, match="^quant_moe: int8 q_gate must be i8"):
        get_op("quant_moe").infer_types([TensorType(f16, (3, 64)), *ts], get_op("quant_moe").normalize_attrs({"top_k": 2}))
    ts = _int4_types()
    ts[4] = TensorType(f16, (8, 96, 2, 2))  # s_up: 2 groups where K = 65 makes 3
    with pytest.raises(ValueError, match="^quant_moe: int4 s_up .* groups"):
        get_op("quant_moe").infer_types([TensorType(f16, (3, 65)), *ts],
                                        get_op("quant_moe").normalize_attrs({"top_k": 2, "scheme": "int4",
                                                                             "group_size": 32}))


# ---- gpt-oss: biases and the clamped SwiGLU ------------------------------------------------------------------


def _per_token_gpt_oss(x: torch.Tensor, ws: list[torch.Tensor], biases: list[torch.Tensor], top_k: int, alpha: float,
                       limit: float) -> torch.Tensor:
    """gpt-oss's block token by token in float64, written from its definition: top-k of the biased logits, softmax
    over the k; each expert ``down(act(gate(h) + bg, up(h) + bu)) + bd``, act the clamped SwiGLU."""
    router, wg, wu, wd = (w.double() for w in ws)
    rb, bg, bu, bd = (b.double() for b in biases)
    h = x.double()
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        top, idx = (router @ h[t] + rb).topk(top_k)
        for wk, e in zip(top.softmax(-1), idx):
            g = (wg[e] @ h[t] + bg[e]).clamp(max=limit)
            u = (wu[e] @ h[t] + bu[e]).clamp(-limit, limit)
            out[t] += wk * (wd[e] @ ((u + 1) * g * torch.sigmoid(alpha * g)) + bd[e])
    return out


def _bias_tensors(e: int, d: int, i: int, seed: int = 3) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(e, generator=g), torch.randn(e, i, generator=g), torch.randn(e, i, generator=g),
            torch.randn(e, d, generator=g)]


@pytest.mark.parametrize("limit", [0.4, 50.0])  # binding at these weights, and not
def test_biases_and_clamped_swiglu_match_a_per_token_loop(limit: float) -> None:
    ws, biases = _weights(6, 16, 12, seed=2), _bias_tensors(6, 16, 12)
    x = torch.randn(9, 16, generator=torch.Generator().manual_seed(4)) * 2
    got = get_op("moe").reference(x, *ws, *biases, top_k=3, softmax_first=False, renormalize=False,
                                  act="clamped_swiglu", alpha=1.702, limit=limit, bias=True)
    want = _per_token_gpt_oss(x, ws, biases, 3, 1.702, limit)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_biased_active_bytes_count_the_active_experts_biases() -> None:
    e, d, i = 8, 64, 96
    types = _types() + [TensorType(f16, (e,)), TensorType(f16, (e, i)), TensorType(f16, (e, i)),
                        TensorType(f16, (e, d))]
    x = TensorType(f16, (1, d))
    attrs = get_op("moe").normalize_attrs({"top_k": 2, "bias": True, "act": "clamped_swiglu", "limit": 7.0})
    out = get_op("moe").infer_types([x, *types], attrs)
    _, nbytes = get_op("moe").cost([x, *types], out, attrs)
    plain_attrs = get_op("moe").normalize_attrs({"top_k": 2})
    _, plain = get_op("moe").cost([x, *_types()], out, plain_attrs)
    assert int(nbytes - plain) == e * 2 + 2 * (2 * i + d) * 2  # the router's bias, 2 experts' bias rows


BAD_BIASED = [
    ({"top_k": 2, "bias": True}, 0, ValueError, "bias=true needs router_bias"),
    ({"top_k": 2, "bias": 1}, 4, TypeError, "bias must be a bool"),
    ({"top_k": 2, "bias": True, "act": "swish"}, 4, ValueError, "act must be one of"),
    ({"top_k": 2, "alpha": 2.0}, 0, ValueError, "belongs to act='clamped_swiglu'"),
    ({"top_k": 2, "limit": 0.0}, 0, TypeError, "limit must be none or a positive"),
    ({"top_k": 2, "act": "clamped_swiglu", "limit": -1.0}, 0, TypeError, "limit must be none or a positive"),
]


@pytest.mark.parametrize("attrs,n_bias,exc,match", BAD_BIASED)
def test_bad_bias_and_act_attrs_name_the_op(attrs: dict[str, Any], n_bias: int, exc: type[Exception],
                                            match: str) -> None:
    e, d, i = 8, 64, 96
    biases = [TensorType(f16, (e,)), TensorType(f16, (e, i)), TensorType(f16, (e, i)), TensorType(f16, (e, d))]
    with pytest.raises(exc, match=f"^moe: .*{match}"):
        get_op("moe").infer_types([TensorType(f16, (3, d)), *_types(), *biases[:n_bias]],
                                  get_op("moe").normalize_attrs(attrs))


def test_a_bias_of_the_wrong_shape_is_named() -> None:
    e, d, i = 8, 64, 96
    biases = [TensorType(f16, (e,)), TensorType(f16, (e, i)), TensorType(f16, (e, d)), TensorType(f16, (e, d))]
    with pytest.raises(ValueError, match=r"^moe: b_up .* must be \[8, 96\]"):
        get_op("moe").infer_types([TensorType(f16, (3, d)), *_types(), *biases],
                                  get_op("moe").normalize_attrs({"top_k": 2, "bias": True}))


# ---- moe_experts: a routing the graph computes ---------------------------------------------------------------


def test_moe_experts_matches_a_per_token_loop_and_moe() -> None:
    """``moe_experts`` with any weights (here DeepSeek-like: above 1) equals its definition token by token, and with
    moe's own routing (weights, ids from ``route``) equals ``moe``."""
    from membound.ir.ops.moe import route

    ws = _weights(6, 16, 12, seed=5)
    x = torch.randn(7, 16, generator=torch.Generator().manual_seed(6))
    g = torch.Generator().manual_seed(7)
    ids = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(7)])
    weights = torch.rand(7, 2, generator=g) * 2.5
    got = get_op("moe_experts").reference(x, weights, ids, *ws[1:], act="silu")
    want = torch.zeros(7, 16, dtype=torch.float64)
    for t in range(7):
        for w, e in zip(weights[t], ids[t]):
            h = x[t].double()
            want[t] += w * (ws[3][e].double() @ (F.silu(ws[1][e].double() @ h) * (ws[2][e].double() @ h)))
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)
    rw, experts = route(x, ws[0], top_k=2, softmax_first=True, renormalize=True)
    torch.testing.assert_close(get_op("moe_experts").reference(x, rw, experts, *ws[1:], act="silu"),
                               get_op("moe").reference(x, *ws, top_k=2, softmax_first=True, renormalize=True,
                                                       act="silu"), rtol=1e-5, atol=1e-5)


def test_moe_experts_reads_only_the_active_experts() -> None:
    e, d, i = 8, 64, 96
    x, w, ids = TensorType(f16, (B, d)), TensorType(torch.float32, (B, 2)), TensorType(torch.int64, (B, 2))
    experts = [TensorType(f16, (e, i, d)), TensorType(f16, (e, i, d)), TensorType(f16, (e, d, i))]
    op = get_op("moe_experts")
    attrs = op.normalize_attrs({})
    out = op.infer_types([x, w, ids, *experts], attrs)
    _, nbytes = op.cost([x, w, ids, *experts], out, attrs)
    per_expert = 3 * i * d * 2
    fixed = 2 * B * d * 2 + B * 2 * 4 + B * 2 * 8
    assert sympy.simplify(nbytes.subs(B, 1) - (fixed.subs(B, 1) + 2 * per_expert)) == 0
    assert sympy.simplify(nbytes.subs(B, 64) - (fixed.subs(B, 64) + 8 * per_expert)) == 0


def _experts_types(e: int = 8, d: int = 64, i: int = 96) -> list[TensorType]:
    return [TensorType(f16, (e, i, d)), TensorType(f16, (e, i, d)), TensorType(f16, (e, d, i))]


BAD_EXPERTS = [
    ([TensorType(f16, (3, 64)), TensorType(f16, (3, 2)), TensorType(f16, (3, 2))], {}, TypeError, "ids must be"),
    ([TensorType(f16, (3, 64)), TensorType(f16, (3, 2)), TensorType(torch.int64, (3, 3))], {}, ValueError,
     r"weights f16\[3, 2\] and ids i64\[3, 3\] must both be \[T, k\]"),
    ([TensorType(f16, (3, 32)), TensorType(f16, (3, 2)), TensorType(torch.int64, (3, 2))], {}, ValueError,
     "w_gate"),
    ([TensorType(f16, (3, 64)), TensorType(f16, (3, 9)), TensorType(torch.int64, (3, 9))], {}, ValueError,
     "more than the 8 experts"),
    ([TensorType(f16, (3, 64)), TensorType(f16, (3, 2)), TensorType(torch.int64, (3, 2))], {"bias": True},
     ValueError, "takes 3 bias operands"),
    ([TensorType(f16, (3, 64)), TensorType(torch.int64, (3, 2)), TensorType(torch.int64, (3, 2))], {}, TypeError,
     "weights"),
]


@pytest.mark.parametrize("head,attrs,exc,match", BAD_EXPERTS)
def test_moe_experts_bad_inputs_name_the_op(head: list[TensorType], attrs: dict[str, Any], exc: type[Exception],
                                            match: str) -> None:
    op = get_op("moe_experts")
    with pytest.raises(exc, match=f"^moe_experts: .*{match}"):
        op.infer_types([*head, *_experts_types()], op.normalize_attrs(attrs))


def test_quant_moe_experts_equals_moe_experts_over_the_dequantized_experts() -> None:
    from membound.ir.ops.moe import dequantize_experts
    from membound.ir.ops.quant import quantize

    ws = _weights(6, 16, 12, seed=8)[1:]
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(9))
    g = torch.Generator().manual_seed(10)
    ids = torch.stack([torch.randperm(6, generator=g)[:2] for _ in range(5)])
    weights = torch.rand(5, 2, generator=g)
    packed, floats = [], []
    for w in ws:
        q, sc = quantize(w.reshape(-1, w.shape[-1]), "int4", 16)
        q, sc = q.view(w.shape[0], w.shape[1], -1), sc.view(w.shape[0], w.shape[1], *sc.shape[1:])
        packed += [q, sc]
        floats.append(dequantize_experts(q, sc, x.dtype, "int4", 16, w.shape[-1]))
    got = get_op("quant_moe_experts").reference(x, weights, ids, *packed, act="silu", scheme="int4", group_size=16)
    torch.testing.assert_close(got, get_op("moe_experts").reference(x, weights, ids, *floats, act="silu"))


def test_quant_moe_experts_bad_inputs_name_the_op() -> None:
    op = get_op("quant_moe_experts")
    e, d, i = 8, 64, 96
    codes = [TensorType(torch.int8, (e, i, d)), TensorType(f16, (e, i)), TensorType(torch.int8, (e, i, d)),
             TensorType(f16, (e, i)), TensorType(torch.int8, (e, d, i)), TensorType(f16, (e, d))]
    head = [TensorType(f16, (3, d)), TensorType(torch.float32, (3, 2)), TensorType(torch.int64, (3, 2))]
    out = op.infer_types([*head, *codes], op.normalize_attrs({}))
    assert out[0] == head[0]
    with pytest.raises(TypeError, match="^quant_moe_experts: int8 q_gate must be i8"):
        op.infer_types([*head, TensorType(f16, (e, i, d)), *codes[1:]], op.normalize_attrs({}))
    with pytest.raises(ValueError, match="^quant_moe_experts: weights .* and ids .* must both be"):
        op.infer_types([head[0], head[1], TensorType(torch.int64, (3, 3)), *codes], op.normalize_attrs({}))
