"""Whole-graph analysis on a hand-built attention layer: prefill vs decode costs, KV bytes, crossovers."""

from __future__ import annotations

import pytest
import sympy
import torch

from membound.cost import Hardware, RooflineCost, analyze, kv_cache_bytes_per_token
from membound.cost.phases import kv_source
from membound.ir.graph import Graph, Value
from membound.ir.types import B, S, T, TensorType

bf16 = torch.bfloat16
V, HQ, HKV, DH = 37, 6, 2, 4  # odd sizes, GQA 3:1, model dim D = HQ * DH = 24
D = HQ * DH
A100 = Hardware.named("a100-80gb")


def heads(g: Graph, x: Value, w: Value, n: int, dh: int, repeat: int = 1) -> Value:
    """linear -> [B, S, n, dh] -> [B, n, S, dh], then repeat each head ``repeat`` times as HF's repeat_kv does."""
    y = g.call("linear", x, w)
    y = g.call("reshape", y, shape=(B, S, n, dh))
    y = g.call("transpose", y, dim0=1, dim1=2)
    if repeat > 1:
        y = g.call("unsqueeze", y, dim=2)
        y = g.call("expand", y, shape=(B, n, repeat, S, dh))
        y = g.call("reshape", y, shape=(B, n * repeat, S, dh))
    return y


def attention_layer(repeat_kv: bool, dh: int = DH) -> Graph:
    """embedding -> q/k/v projections -> causal GQA attention -> output projection (model dim HQ * dh)."""
    g = Graph("layer")
    d = HQ * dh
    ids = g.add_input("ids", TensorType(torch.int64, [B, S]))
    emb = g.add_param("emb", TensorType(bf16, [V, d]))
    wq = g.add_param("wq", TensorType(bf16, [HQ * dh, d]))
    wk = g.add_param("wk", TensorType(bf16, [HKV * dh, d]))
    wv = g.add_param("wv", TensorType(bf16, [HKV * dh, d]))
    wo = g.add_param("wo", TensorType(bf16, [d, HQ * dh]))
    x = g.call("embedding", emb, ids)
    rep = HQ // HKV if repeat_kv else 1
    q = heads(g, x, wq, HQ, dh)
    k = heads(g, x, wk, HKV, dh, rep)
    v = heads(g, x, wv, HKV, dh, rep)
    o = g.call("attention", q, k, v, causal=True)
    o = g.call("transpose", o, dim0=1, dim1=2)
    o = g.call("reshape", o, shape=(B, S, HQ * dh))
    g.set_outputs([g.call("linear", o, wo)])
    return g


WEIGHT_BYTES = 2 * (HQ * DH * D + 2 * HKV * DH * D + D * HQ * DH)
KV_PER_TOKEN = 2 * HKV * DH * 2  # k and v, Hkv heads, bf16


@pytest.mark.parametrize("repeat_kv", [False, True])
def test_kv_bytes_per_token_count_stored_heads_not_repeated_ones(repeat_kv: bool) -> None:
    g = attention_layer(repeat_kv)
    assert kv_cache_bytes_per_token(g) == KV_PER_TOKEN
    attn = next(n for n in g.nodes if n.op == "attention")
    src = kv_source(attn.inputs[1])
    assert src.producer is not None and src.producer.op == "linear"


def test_kv_source_stops_at_a_real_slice() -> None:
    g = Graph("slice")
    x = g.add_input("x", TensorType(bf16, [B, 4, S, 8]))
    half = g.call("slice", x, dim=3, start=0, end=4)
    assert kv_source(half) is half


@pytest.mark.parametrize("repeat_kv", [False, True])
def test_decode_step_reads_weights_once_and_the_cache_once(repeat_kv: bool) -> None:
    g = attention_layer(repeat_kv)
    phases = analyze(g, RooflineCost(A100))
    b, t = 3, 1000
    got = phases.decode.at({"B": b, "T": t})
    # weights once; KV over T positions per sequence; the rest is one token's activations per sequence
    floor = WEIGHT_BYTES + KV_PER_TOKEN * t * b
    assert floor < got["bytes"] < floor * 1.02
    assert got["bound"] == "memory"
    # decode attention FLOPs: 4 * B * Hq * T * Dh (S = 1, not halved: the step is not square)
    attn_flops = 4 * b * HQ * t * DH
    linear_flops = 2 * b * (WEIGHT_BYTES // 2)
    assert got["flops"] == linear_flops + attn_flops
    # per generated token = per step / B
    per_token = phases.decode.bytes_per_unit.xreplace({B: b, T: t})
    assert float(per_token) == pytest.approx(got["bytes"] / b)


def test_prefill_is_symbolic_in_b_and_s_and_halves_causal_attention() -> None:
    phases = analyze(attention_layer(False), RooflineCost(A100))
    flops = phases.prefill.flops
    assert flops.free_symbols == {B, S}
    expected = 2 * B * S * (WEIGHT_BYTES // 2) + 4 * B * HQ * S * S * DH / 2
    assert sympy.expand(flops - expected) == 0
    assert T not in phases.prefill.bytes.free_symbols


def test_decode_crossover_is_solved_and_vanishes_for_long_caches() -> None:
    phases = analyze(attention_layer(False, dh=172), RooflineCost(A100))  # model dim 1032
    short = phases.decode.crossover("B", {"T": 1})
    # above the ridge point (153): activations and the attention's cache reads cost bytes too
    assert short is not None and A100.ridge_point("bf16") < short < 1000
    assert phases.decode.at({"B": round(short) - 2, "T": 1})["bound"] == "memory"
    assert phases.decode.at({"B": round(short) + 2, "T": 1})["bound"] == "compute"
    # decode attention has intensity ~Hq/Hkv = 3 FLOP/byte, far below A100's 153: with a long enough cache
    # the KV reads grow faster than the FLOPs and no batch size makes the step compute-bound
    assert phases.decode.crossover("B", {"T": 1 << 20}) is None


def test_a_tiny_model_never_turns_compute_bound() -> None:
    # model dim 24: per sequence, activations move about as many bytes as the weights do FLOPs
    phases = analyze(attention_layer(False), RooflineCost(A100))
    assert phases.decode.crossover("B", {"T": 1}) is None


def test_an_explicit_cache_graph_is_costed_as_it_is() -> None:
    g = Graph("cached")
    q = g.add_input("q", TensorType(bf16, [B, HQ, S, DH]))
    pos = g.add_input("pos", TensorType(torch.int64, [S]))
    kc = g.add_state("kc", TensorType(bf16, [B, HKV, T, DH]))
    vc = g.add_state("vc", TensorType(bf16, [B, HKV, T, DH]))
    g.set_outputs([g.call("cached_attention", q, kc, vc, pos)])
    assert kv_cache_bytes_per_token(g) == KV_PER_TOKEN
    phases = analyze(g, RooflineCost(A100))
    got = phases.decode.at({"B": 2, "T": 64})
    assert got["flops"] == 4 * 2 * HQ * 64 * DH
    # in prefill the prompt fills the cache (T is S) and query i sees i + 1 slots: the causal half, S (S + 1) / 2
    assert sympy.expand(phases.prefill.flops - 4 * B * HQ * S * (S + 1) / 2 * DH) == 0
