"""kv_cache ops: type rules and references against independent torch expressions (random, odd sizes)."""

import math

import pytest
import torch

from membound.backends.reference import run_graph
from membound.ir import B, Graph, S, T, TensorType, get_op, verify


def _graph_write(positions_rank: int) -> Graph:
    g = Graph("w")
    cache = g.add_state("cache", TensorType(torch.float32, [B, 3, T, 5]))
    vals = g.add_input("values", TensorType(torch.float32, [B, 3, S, 5]))
    pos = g.add_input("positions", TensorType(torch.int64, [S] if positions_rank == 1 else [B, S]))
    g.set_outputs([g.call("cache_write", cache, vals, pos, dim=2)])
    verify(g)
    return g


@pytest.mark.parametrize("positions_rank", [1, 2])
def test_cache_write_writes_each_row_at_its_positions(positions_rank):
    b, s, t = 3, 4, 11
    g = _graph_write(positions_rank)
    cache = torch.randn(b, 3, t, 5)
    before = cache.clone()
    vals = torch.randn(b, 3, s, 5)
    if positions_rank == 1:
        pos = torch.tensor([2, 7, 0, 9])
        rows = [pos] * b
    else:
        rows = [torch.randperm(t)[:s] for _ in range(b)]
        pos = torch.stack(rows)
    (out,) = run_graph(g, [vals, pos], tensors={"cache": cache})
    assert out.data_ptr() == cache.data_ptr()  # in place: the state buffer itself
    expect = before.clone()
    for r in range(b):
        for j in range(s):
            expect[r, :, rows[r][j]] = vals[r, :, j]
    torch.testing.assert_close(cache, expect, rtol=0, atol=0)


@pytest.mark.parametrize("hq, hkv", [(4, 4), (4, 2), (6, 1)])
def test_cached_attention_sees_slots_up_to_each_query_position(hq, hkv):
    b, s, t, d = 2, 3, 13, 7
    g = Graph("a")
    q = g.add_input("q", TensorType(torch.float32, [B, hq, S, d]))
    k = g.add_input("k", TensorType(torch.float32, [B, hkv, T, d]))
    v = g.add_input("v", TensorType(torch.float32, [B, hkv, T, d]))
    p = g.add_input("p", TensorType(torch.int64, [B, S]))
    g.set_outputs([g.call("cached_attention", q, k, v, p)])
    verify(g)
    qs, ks, vs = torch.randn(b, hq, s, d), torch.randn(b, hkv, t, d), torch.randn(b, hkv, t, d)
    pos = torch.tensor([[4, 5, 6], [0, 8, 12]])
    (out,) = run_graph(g, [qs, ks, vs, pos])
    expect = torch.empty(b, hq, s, d)
    for r in range(b):
        for h in range(hq):
            kv = h // (hq // hkv)
            for j in range(s):
                n = int(pos[r, j]) + 1
                w = torch.softmax(qs[r, h, j] @ ks[r, kv, :n].T / math.sqrt(d), dim=-1)
                expect[r, h, j] = w @ vs[r, kv, :n]
    torch.testing.assert_close(out, expect, rtol=1e-5, atol=1e-6)  # fp32


def test_state_copy_overwrites_and_broadcasts():
    g = Graph("c")
    st = g.add_state("counter", TensorType(torch.int64, [4]))
    x = g.add_input("x", TensorType(torch.int64, []))
    g.set_outputs([g.call("state_copy", st, x)])
    buf = torch.arange(4)
    run_graph(g, [torch.tensor(7)], tensors={"counter": buf})
    assert buf.tolist() == [7, 7, 7, 7]


@pytest.mark.parametrize("build, message", [
    (lambda g: g.call("cache_write", g.add_state("c", TensorType(torch.float32, [B, 2, T, 4])),
                      g.add_input("v", TensorType(torch.float16, [B, 2, S, 4])),
                      g.add_input("p", TensorType(torch.int64, [S]))), "dtype"),
    (lambda g: g.call("cache_write", g.add_state("c", TensorType(torch.float32, [B, 2, T, 4])),
                      g.add_input("v", TensorType(torch.float32, [B, 3, S, 4])),
                      g.add_input("p", TensorType(torch.int64, [S]))), "cache_write"),
    (lambda g: g.call("cached_attention", g.add_input("q", TensorType(torch.float32, [B, 4, S, 8])),
                      g.add_input("k", TensorType(torch.float32, [B, 2, T, 8])),
                      g.add_input("v", TensorType(torch.float32, [B, 2, T, 8])),
                      g.add_input("p", TensorType(torch.float32, [B, S]))), "positions"),
])
def test_bad_inputs_name_the_op(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build(Graph("bad"))


def test_costs_are_linear_in_the_cache_length_and_writes_move_only_new_entries():
    q, k, v, p = (TensorType(torch.bfloat16, [1, 32, 1, 64]), TensorType(torch.bfloat16, [1, 8, T, 64]),
                  TensorType(torch.bfloat16, [1, 8, T, 64]), TensorType(torch.int64, [1, 1]))
    out = TensorType(torch.bfloat16, [1, 32, 1, 64])
    _, nbytes = get_op("cached_attention").cost([q, k, v, p], [out], {"scale": None})
    assert nbytes.coeff(T) == 2 * 8 * 64 * 2           # one K and one V row per cached position
    _, wbytes = get_op("cache_write").cost([k, TensorType(torch.bfloat16, [1, 8, 1, 64]), p], [k], {"dim": 2})
    assert T not in wbytes.free_symbols                 # the whole cache is not rewritten
