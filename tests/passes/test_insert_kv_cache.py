"""insert-kv-cache: numerics of the step graph, its meta, decode cost (IR and refusals: mir/insert-kv-cache.mir)."""

import sympy
import torch
from filecheck import mir_input

from membound.backends.reference import run_graph
from membound.ir import T, get_op, parse, verify
from membound.ir.types import B, S
from membound.passes import PassContext
from membound.passes.insert_kv_cache import insert_kv_cache

# one layer: learned positions (arange -> embedding), MQA attention (2 q heads, 1 kv head), LM head;
# its IR after the pass, and the refusals with their reasons, are tests/passes/mir/insert-kv-cache.mir
BEFORE = mir_input("insert-kv-cache", 0)


def _tensors(g):
    gen = torch.Generator().manual_seed(0)
    return {p.name: torch.randn([int(d) for d in p.shape], generator=gen) for p in g.params}


def test_one_layer_meta():
    g = parse(BEFORE)
    assert insert_kv_cache(g, PassContext())
    verify(g)
    meta = g.meta["kv_cache"]
    assert meta["caches"] == [("cache.k.0", "cache.v.0")] and meta["positions_input"] == "positions"
    assert meta["max_positions"] == 16  # the learned table bounds the cache


def test_step_graph_matches_full_recompute_at_last_position():
    full = parse(BEFORE)
    tensors = _tensors(full)
    full.tensors.update(tensors)
    step = parse(BEFORE)
    step.tensors.update(tensors)
    assert insert_kv_cache(step, PassContext())
    ids = torch.randint(0, 11, (3, 7))
    ref = run_graph(full, [ids])[0]
    cache = {n: torch.zeros(3, 1, 16, 4) for n in ("cache.k.0", "cache.v.0")}
    step.tensors.update(cache)
    positions = torch.arange(7).expand(3, 7).contiguous()
    last = torch.tensor([6, 6, 6])
    (out,) = run_graph(step, [ids, positions, last])
    torch.testing.assert_close(out[:, 0], ref[:, -1], rtol=1e-5, atol=1e-6)
    # then one decode step for an 8th token equals recomputing 8 tokens
    nxt = torch.randint(0, 11, (3, 1))
    (dec,) = run_graph(step, [nxt, torch.full((3, 1), 7), torch.zeros(3, dtype=torch.long)])
    ref8 = run_graph(full, [torch.cat([ids, nxt], 1)])[0]
    torch.testing.assert_close(dec[:, 0], ref8[:, -1], rtol=1e-4, atol=1e-5)  # fp32, other reduction order


def decode_bytes(graph) -> sympy.Expr:
    total = sympy.Integer(0)
    for n in graph.nodes:
        _, nbytes = get_op(n.op).cost([v.type for v in n.inputs], [r.type for r in n.results], n.attrs)
        total += nbytes
    return sympy.expand(total)


def test_decode_bytes_grow_linearly_with_cache_length_without_prompt_recompute():
    g = parse(BEFORE)
    assert insert_kv_cache(g, PassContext())
    decode = g.specialized({S: 1, B: 1})
    total = decode_bytes(decode)
    assert total.free_symbols == {T}                      # no S: nothing is recomputed over the prompt
    poly = sympy.Poly(total, T)
    assert poly.degree() == 1
    # the slope is one K and one V row per cached position: 2 * layers * kv_heads * head_dim * 4 bytes
    assert poly.coeffs()[0] == 2 * 1 * 1 * 4 * 4
