"""Cost entries of the attention ops: FLOPs 4*B*H*S*L*D (halved for causal, at most the window), bytes
of q, k, v (at kv heads), mask and output once; and the window/chunk/softcap attributes' checks."""

import pytest
import sympy
import torch

from membound.ir import get_op
from membound.ir.types import B, S, T, TensorType


def _types(hq=32, hkv=8, d=128, length=S, dtype=torch.bfloat16):
    q = TensorType(dtype, (B, hq, S, d))
    k = TensorType(dtype, (B, hkv, length, d))
    return q, k, TensorType(dtype, (B, hkv, length, d)), TensorType(dtype, (B, hq, S, d))


def _cost(op, ins, out, **attrs):
    opdef = get_op(op)
    a = opdef.normalize_attrs(attrs)
    return sympy.simplify(opdef.flops(ins, [out], a)), sympy.simplify(opdef.bytes(ins, [out], a))


def test_attention_flops_and_bytes():
    q, k, v, o = _types()
    flops, nbytes = _cost("attention", [q, k, v], o, causal=False, scale=None)
    assert sympy.simplify(flops - 4 * B * 32 * S * S * 128) == 0
    assert sympy.simplify(nbytes - 2 * (2 * B * 32 * S * 128 + 2 * B * 8 * S * 128)) == 0  # q, o + k, v at 8 heads
    causal, _ = _cost("attention", [q, k, v], o, causal=True, scale=None)
    assert sympy.simplify(causal - flops / 2) == 0
    windowed, _ = _cost("attention", [q, k, v], o, causal=True, scale=None, window=1024)
    assert windowed.subs({B: 1, S: 8192}) == 4 * 32 * 8192 * 1024 * 128
    assert windowed.subs({B: 1, S: 512}) == 4 * 32 * 512 * 512 * 128  # window wider than S: all keys


def test_cached_attention_reads_only_the_window():
    q = TensorType(torch.bfloat16, (B, 32, S, 128))
    k = TensorType(torch.bfloat16, (B, 8, T, 128))
    pos = TensorType(torch.int64, (B, S))
    o = q
    _, full = _cost("cached_attention", [q, k, k, pos], o)
    _, win = _cost("cached_attention", [q, k, k, pos], o, window=4096)
    bind = {B: 1, S: 1, T: 32768}
    assert full.subs(bind) - win.subs(bind) == 8 * 128 * 2 * 2 * (32768 - 4096)


def test_chunks_bound_flops_and_the_slots_read():
    """Chunked attention (Llama 4) costs at most a chunk a query, like a window of that size (an upper bound: the
    query is somewhere in its chunk); a cache longer than the chunk reads at most a chunk's slots."""
    q, k, v, o = _types()
    chunked, _ = _cost("attention", [q, k, v], o, causal=True, scale=None, chunk=1024)
    assert chunked.subs({B: 1, S: 8192}) == 4 * 32 * 8192 * 1024 * 128
    qc = TensorType(torch.bfloat16, (B, 32, S, 128))
    kc = TensorType(torch.bfloat16, (B, 8, T, 128))
    pos = TensorType(torch.int64, (B, S))
    _, full = _cost("cached_attention", [qc, kc, kc, pos], qc)
    _, part = _cost("cached_attention", [qc, kc, kc, pos], qc, chunk=8192)
    bind = {B: 1, S: 1, T: 32768}
    assert full.subs(bind) - part.subs(bind) == 8 * 128 * 2 * 2 * (32768 - 8192)
    assert full.subs({B: 1, S: 1, T: 4096}) == part.subs({B: 1, S: 1, T: 4096})  # shorter than a chunk: all


@pytest.mark.parametrize("attrs, msg", [
    (dict(causal=False, scale=None, chunk=4), "chunk=4 needs causal=true"),
    (dict(causal=True, scale=None, chunk=0), "chunk must be None or a positive int"),
    (dict(causal=True, scale=None, chunk=8, window=4), "window=4 and chunk=8 do not combine"),
    (dict(causal=False, scale=None, window=4), "window=4 needs causal=true"),
    (dict(causal=True, scale=None, window=0), "window must be None or a positive int"),
    (dict(causal=True, scale=None, softcap=-1.0), "softcap must be None or a positive float"),
])
def test_attention_attribute_errors(attrs, msg):
    q, k, v, _ = _types()
    with pytest.raises((TypeError, ValueError), match=msg):
        get_op("attention").infer_types([q, k, v], get_op("attention").normalize_attrs(attrs))
