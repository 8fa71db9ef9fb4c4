"""State ops for a static KV cache: explicit writes into state buffers and attention that reads them.

A cache is a graph *state* value ``[B, Hkv, T, D]`` (``T`` = cache capacity). Writes are ops with side
effects that return the written cache, so every reader depends on the write it must see:

    %kc = cache_write(%cache.k.0, %k, %positions) {dim=2} : f32[B, 2, T, 16]
    %o  = cached_attention(%q, %kc, %vc, %positions) : f32[B, 4, S, 16]

``positions`` holds each new token's slot: ``[S]`` (shared by every row, as Hugging Face's
``cache_position``) or ``[B, S]`` (per row, so rows of different lengths decode together).

**Ring caches (sliding-window layers).** A layer that sees only the last ``W`` positions keeps a cache of
``W`` slots: position ``p`` lives in slot ``p mod W``. The write says so in the IR (its positions are
``remainder(%positions, W)``), and the attention takes the step's own new keys and values as two more
operands, which marks its caches as rings:

    %w  = constant() {value=4, dtype=i64} : i64[]
    %sl = remainder(%positions, %w) : i64[B, S]
    %kc = cache_write(%cache.k.0, %k, %sl) {dim=2} : f32[B, 2, 4, 16]
    %vc = cache_write(%cache.v.0, %v, %sl) {dim=2} : f32[B, 2, 4, 16]
    %o  = cached_attention(%q, %kc, %vc, %positions, %k, %v) {window=4} : f32[B, 4, S, 16]

One new token (decode, ``S = 1``) reads the ring: slot ``t`` holds the latest position ``j <= p`` with
``j = t mod W``. Several new tokens (prefill) attend over the new keys themselves, the key at index
``c`` being position ``c``: a multi-token step must start at position 0 in every row (a prompt longer
than the window has overwritten its own first slots by the time its last keys are written).

**Chunked layers** (Llama 4's ``attention_chunk_size``, ``chunk=C``) keep a linear cache: the query at position
``p`` reads slots ``p - p % C .. p``, so a kernel streams at most one chunk of it.

Entries are written in order of ``s``: when several entries of a row go to one slot (that prefill
longer than its ring), the last one is what the slot holds, on every device and in every backend
(``last_writers``); a parallel scatter left it to chance on a GPU.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import sympy
import torch
import torch.nn.functional as F

from membound.ir.ops import define_op
from membound.ir.ops._common import fail, require_index, require_same_dim, same_dtype
from membound.ir.ops.attention import (
    alibi_bias,
    check_alibi,
    check_sinks,
    check_window_softcap,
    softcapped_attention,
    split_sinks,
    window_keep,
)
from membound.ir.types import T, TensorType


def _check_positions(op: str, positions: TensorType, b: sympy.Expr, s: sympy.Expr) -> None:
    require_index(op, positions, "positions")
    if positions.rank == 1:
        require_same_dim(op, positions.shape[0], s, f"positions {positions} vs {s} new tokens")
    elif positions.rank == 2:
        require_same_dim(op, positions.shape[0], b, f"positions {positions} batch vs {b}")
        require_same_dim(op, positions.shape[1], s, f"positions {positions} vs {s} new tokens")
    else:
        fail(op, f"positions must be [S] or [B, S], got {positions}")


# ---------------------------------------------------------------------------------------------
# cache_write(cache[B, H, T, D], values[B, H, S, D], positions) {dim=2} -> cache
# ---------------------------------------------------------------------------------------------
def _infer_write(cache: TensorType, values: TensorType, positions: TensorType, *, dim: int) -> TensorType:
    op = "cache_write"
    same_dtype(op, ("cache", cache), ("values", values))
    if cache.rank != values.rank:
        fail(op, f"values {values} must have the cache's rank ({cache})")
    d = dim % cache.rank
    for i, (a, b) in enumerate(zip(cache.shape, values.shape)):
        if i != d:
            require_same_dim(op, a, b, f"values {values} vs cache {cache} at dim {i}")
    _check_positions(op, positions, values.shape[0], values.shape[d])
    return cache


def last_writers(positions: torch.Tensor, slots: int) -> torch.Tensor:
    """For each new entry ``s`` of a row, the last entry ``s' >= s`` of that row that goes to the same slot.

    ``cache_write`` writes its entries in order of ``s``: when several go to one slot (a ring cache of
    ``W`` slots written by a prefill longer than ``W``: positions ``p`` and ``p + W``), the last one
    stays. torch's ``index_copy_``/``scatter_`` (and a parallel kernel) leave such a slot to whichever
    write lands last, which differs from run to run on a GPU; writing every entry with its last
    writer's value makes the result the same whatever the order. Positions outside ``[0, slots)`` are
    clamped here; the write itself rejects or skips them.
    """
    s = positions.shape[-1]
    order = torch.arange(s, device=positions.device).expand(positions.shape)
    slot = positions.long().clamp(0, max(slots - 1, 0))
    table = torch.full((*positions.shape[:-1], max(slots, 1)), -1, dtype=torch.long, device=positions.device)
    return table.scatter_reduce_(-1, slot, order, "amax").gather(-1, slot)


def _write(cache: torch.Tensor, values: torch.Tensor, positions: torch.Tensor, *, dim: int) -> torch.Tensor:
    d = dim % cache.dim()

    def per_row(index: torch.Tensor) -> torch.Tensor:
        """A ``[B, S]`` index (``index[b, s]`` along ``dim``) spread over the values' other dims."""
        shape = [1] * values.dim()
        shape[0], shape[d] = index.shape
        return index.reshape(shape).expand(values.shape)

    if values.shape[d] > 1:  # several entries may share a slot: the last one's value goes to all of them
        src = last_writers(positions, cache.shape[d])
        values = values.index_select(d, src) if positions.dim() == 1 else values.gather(d, per_row(src))
    if positions.dim() == 1:
        cache.index_copy_(d, positions, values)
    else:  # per-row slots: positions[b, s] is where row b's s-th new token goes along ``dim``
        cache.scatter_(d, per_row(positions), values)
    return cache


def _write_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Only the new entries move: read values and positions, write the same number of cache elements."""
    return 2 * ins[1].nbytes() + ins[2].nbytes()


define_op("cache_write", inputs=("cache", "values", "positions"), attrs={"dim": 2}, kind="state",
          infer=_infer_write, reference=_write, bytes=_write_bytes, side_effects=True,
          doc="write values into the state buffer cache at positions along dim (in place); returns the cache",
          sink=True)


# ---------------------------------------------------------------------------------------------
# cached_attention(q[B, Hq, S, D], k[B, Hkv, T, D], v[B, Hkv, T, Dv], positions) -> [B, Hq, S, Dv]
# ---------------------------------------------------------------------------------------------
def cached_extras(rest: Sequence[Any], sinks: bool) -> tuple[Any, Any, Any]:
    """``(k_new or None, v_new or None, sinks or None)`` of ``cached_attention``'s operands after the positions
    (types, tensors or IR values): the IR op, its reference and the Triton launcher all read them so."""
    ring, sink = split_sinks("cached_attention", rest, sinks)
    if len(ring) not in (0, 2):
        fail("cached_attention", "a ring cache needs both the new keys and the new values (k_new, v_new), or neither")
    return (ring[0], ring[1], sink) if ring else (None, None, sink)


def cached_parts(node: Any) -> tuple[Any, Any, Any, Any, Any, Any, Any]:
    """A ``cached_attention`` node's ``(q, k, v, positions, k_new or None, v_new or None, sinks or None)``."""
    return (*node.inputs[:4], *cached_extras(node.inputs[4:], node.attrs.get("sinks", False)))


def _infer_cached(q: TensorType, k: TensorType, v: TensorType, positions: TensorType, *rest: TensorType,
                  scale: Optional[float], window: Optional[int] = None, softcap: Optional[float] = None,
                  alibi: Optional[tuple[float, ...]] = None, sinks: bool = False,
                  chunk: Optional[int] = None) -> TensorType:
    op = "cached_attention"
    k_new, v_new, sink = cached_extras(rest, sinks)
    check_window_softcap(op, window, softcap, chunk)
    check_alibi(op, alibi, q.shape[1] if q.rank == 4 else sympy.Integer(len(alibi or ())))
    dtype = same_dtype(op, ("q", q), ("k", k), ("v", v))
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        fail(op, f"needs q[B, Hq, S, D] and caches [B, Hkv, T, D]; got q {q}, k {k}, v {v}")
    b, hq, s, d = q.shape
    require_same_dim(op, k.shape[0], b, f"k cache {k} batch vs q {q}")
    require_same_dim(op, k.shape[3], d, f"k cache {k} head dim vs q {q}")
    require_same_dim(op, v.shape[1], k.shape[1], f"v cache {v} heads vs k cache {k}")
    require_same_dim(op, v.shape[2], k.shape[2], f"v cache {v} capacity vs k cache {k}")
    if (hq % k.shape[1]) != 0 and isinstance(hq % k.shape[1], sympy.Integer):
        fail(op, f"query heads {hq} must be a multiple of kv heads {k.shape[1]}")
    _check_positions(op, positions, b, s)
    check_sinks(op, sink, sinks, hq)
    if k_new is not None and v_new is not None:
        if window is None:
            fail(op, "ring caches (k_new, v_new given) need a window: a ring of W slots holds the last W positions")
        if k.shape[2].is_Integer and int(k.shape[2]) < window:
            fail(op, f"ring cache {k} holds fewer slots than the window {window}")
        same_dtype(op, ("q", q), ("k_new", k_new), ("v_new", v_new))
        for new, cache, name in ((k_new, k, "k_new"), (v_new, v, "v_new")):
            if new.rank != 4:
                fail(op, f"{name} must be [B, Hkv, S, D], got {new}")
            for i, want in ((0, b), (1, cache.shape[1]), (2, s), (3, cache.shape[3])):
                require_same_dim(op, new.shape[i], want, f"{name} {new} vs cache {cache} and q {q} at dim {i}")
    return TensorType(dtype, (b, hq, s, v.shape[3]))


def _cached(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, *rest: torch.Tensor,
            scale: Optional[float], window: Optional[int] = None, softcap: Optional[float] = None,
            alibi: Optional[tuple[float, ...]] = None, sinks: bool = False,
            chunk: Optional[int] = None) -> torch.Tensor:
    k_new, v_new, sink = cached_extras(rest, sinks)
    pos = positions if positions.dim() == 2 else positions[None, :]
    if k_new is not None and v_new is not None:
        k, v, mask, key_pos = _ring_keys(k, v, pos, k_new, v_new, window)
    else:
        # only the filled prefix of the cache is read: slots 0 .. max(position)
        length = int(positions.max()) + 1
        if length > k.shape[2]:
            raise ValueError(f"cached_attention: position {length - 1} is past the cache's {k.shape[2]} slots")
        k, v = k[:, :, :length], v[:, :, :length]
        # query at position p sees slots j <= p (and j > p - window, or j in p's chunk): causal, bottom-right
        # aligned per row
        mask = window_keep(pos, length, window, chunk)[:, None]  # [B|1, 1, S, L]
        key_pos = torch.arange(length, device=pos.device)[None, None, :]
    if alibi is not None:  # m_h * (key position - query position), per row
        bias = alibi_bias(alibi, pos, key_pos.expand(pos.shape[0], -1, -1)[:, 0])  # [B|1, H, S, L]
        return softcapped_attention(q, k, v, mask, None, scale=scale, softcap=softcap, bias=bias, sinks=sink)
    if softcap is not None or sink is not None:
        return softcapped_attention(q, k, v, mask, None, scale=scale, softcap=softcap, sinks=sink)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def _ring_keys(k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor,
               window: Optional[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys, values, the keep mask ``[B|1, 1, S, L]`` and the key positions ``[B|1, 1, L]`` of a ring-cache
    step (see the module doc)."""
    s = pos.shape[1]
    if s > 1:
        if bool((pos[:, 0] != 0).any()):
            raise ValueError(f"cached_attention: a {s}-token step over a window-sized ring cache must start at "
                             f"position 0 in every row (got first positions {pos[:, 0].tolist()}); feed the "
                             f"tokens after the prompt one at a time")
        return k_new, v_new, window_keep(pos, s, window)[:, None], torch.arange(s, device=pos.device)[None, None, :]
    cap = k.shape[2]
    # slot t holds the latest position j <= p with j = t (mod cap); j < 0: never written
    t = torch.arange(cap, device=pos.device)
    j = pos[..., None] - torch.remainder(pos[..., None] - t, cap)  # [B|1, 1, cap]
    keep = j >= 0
    if window is not None:
        keep = keep & (j > pos[..., None] - window)
    return k, v, keep[:, None], j


def _cached_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Each new query attends over the cache slots it sees. The filled length is the symbol T and the S new
    tokens are its last S positions (a decode step, or a prefill from position 0 at S = T), so query i sees
    T - S + i + 1 slots: S * (T - S) + S * (S + 1) / 2 in all (the causal half of a prefill, not S * T).
    With a window (or chunks) each sees at most the window (the chunk): S * min(T, window), an upper bound."""
    q, v = ins[0], ins[2]
    b, hq, s, d = q.shape
    if attrs.get("window") is None and attrs.get("chunk") is None:
        seen = s * (T - s) + s * (s + 1) / 2
    else:
        seen = s * _seen(attrs)
    return 2 * b * hq * seen * (d + v.shape[3])


def _seen(attrs: dict[str, Any]) -> sympy.Expr:
    """Cache slots one query reads: the filled length T, or the window (the chunk) when it is shorter."""
    window = attrs.get("window") or attrs.get("chunk")
    return T if window is None else sympy.Min(T, sympy.Integer(window))


def _cached_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """q and the output once, plus K and V for the T filled slots (at Hkv heads): linear in T.

    With a sliding window only the last ``window`` slots are read; with chunks at most a chunk's (counted whole: an
    upper bound, since the step's query is somewhere in its chunk)."""
    q, k, v, pos = ins[:4]
    b, hkv, _, d = k.shape
    per_slot = b * hkv * (d + v.shape[3]) * (k.nbytes() / k.numel())
    return q.nbytes() + outs[0].nbytes() + pos.nbytes() + per_slot * _seen(attrs)


define_op("cached_attention", inputs=("q", "k", "v", "positions", "k_new?", "v_new?", "sinks?"),
          attrs={"scale": None, "window": None, "softcap": None, "alibi": None, "sinks": False, "chunk": None},
          kind="attention",
          infer=_infer_cached, reference=_cached, flops=_cached_flops, bytes=_cached_bytes,
          doc="attention of new queries over a KV cache; the query at position p sees cache slots 0..p "
              "(p - window < slot <= p with a window, p - p % chunk <= slot <= p with chunks; softcap as in "
              "attention); with k_new, v_new the caches are rings of the window's size (position p in slot p mod "
              "capacity); with sinks=true a per-head sink logit (the last operand) joins each row's softmax, as in "
              "attention")


# ---------------------------------------------------------------------------------------------
# state_copy(state, value) -> state: overwrite a whole state buffer (a model's own counters, ``copy_``)
# ---------------------------------------------------------------------------------------------
def _infer_copy(state: TensorType, value: TensorType) -> TensorType:
    op = "state_copy"
    if value.rank > state.rank:
        fail(op, f"value {value} has a higher rank than the state {state}")
    for a, b in zip(reversed(state.shape), reversed(value.shape)):
        if b != 1:
            require_same_dim(op, a, b, f"value {value} does not broadcast to the state {state}")
    return state


def _copy(state: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return state.copy_(value)


def _copy_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    return ins[1].nbytes() + outs[0].nbytes()


define_op("state_copy", inputs=("state", "value"), kind="state", infer=_infer_copy, reference=_copy,
          bytes=_copy_bytes, side_effects=True, doc="overwrite a state buffer with value (broadcast, cast by copy_)")


# ---------------------------------------------------------------------------------------------
# attention_block(x[B, 1, K], ...) -> [B, 1, K]: a decode layer's attention block as one op (issue 13)
# ---------------------------------------------------------------------------------------------
def _block_parts(attrs: dict[str, Any]) -> tuple[int, int, int]:
    return int(attrs["num_heads"]), int(attrs["num_kv_heads"]), int(attrs["head_dim"])


def _infer_block(x: TensorType, norm_weight: TensorType, qkv_weight: TensorType, cos: TensorType, sin: TensorType,
                 k: TensorType, v: TensorType, positions: TensorType, o_weight: TensorType,
                 qkv_bias: Optional[TensorType] = None, *, eps: float, num_heads: int, num_kv_heads: int,
                 head_dim: int, scale: Optional[float] = None) -> TensorType:
    op = "attention_block"
    hq, hkv, d = _block_parts(dict(num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=head_dim))
    if hq <= 0 or hkv <= 0 or hq % hkv or d <= 0 or d % 2:
        fail(op, f"num_heads={hq} must be a positive multiple of num_kv_heads={hkv}, head_dim={d} even")
    tensors = [("x", x), ("norm_weight", norm_weight), ("qkv_weight", qkv_weight), ("cos", cos), ("sin", sin),
               ("k", k), ("v", v), ("o_weight", o_weight)] + ([("qkv_bias", qkv_bias)] if qkv_bias is not None else [])
    same_dtype(op, *tensors)
    if x.rank != 3 or x.shape[1] != 1:
        fail(op, f"x must be one new token a row, [B, 1, K]; got {x}")
    b, _, kdim = x.shape
    n = (hq + 2 * hkv) * d
    for name, t, want in (("norm_weight", norm_weight, (kdim,)), ("qkv_weight", qkv_weight, (n, kdim)),
                          ("o_weight", o_weight, (kdim, hq * d))) + (
                             (("qkv_bias", qkv_bias, (n,)),) if qkv_bias is not None else ()):
        if t.rank != len(want):
            fail(op, f"{name} must be {list(want)}, got {t}")
        for i, w in enumerate(want):
            require_same_dim(op, t.shape[i], w, f"{name} {t} vs {list(want)}")
    for name, c in (("k", k), ("v", v)):
        if c.rank != 4:
            fail(op, f"cache {name} must be [B, Hkv, T, D], got {c}")
        require_same_dim(op, c.shape[0], b, f"cache {name} {c} batch vs x {x}")
        require_same_dim(op, c.shape[1], hkv, f"cache {name} {c} heads vs num_kv_heads={hkv}")
        require_same_dim(op, c.shape[3], d, f"cache {name} {c} head dim vs head_dim={d}")
    for name, t in (("cos", cos), ("sin", sin)):
        if t.rank != 3 or t.shape[1] != 1:
            fail(op, f"{name} must be the rotary rows [B', 1, head_dim], got {t}")
        require_same_dim(op, t.shape[2], d, f"{name} {t} vs head_dim={d}")
    _check_positions(op, positions, b, x.shape[1])
    return x


def _block(x: torch.Tensor, norm_weight: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor,
           sin: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, o_weight: torch.Tensor,
           qkv_bias: Optional[torch.Tensor] = None, *, eps: float, num_heads: int, num_kv_heads: int, head_dim: int,
           scale: Optional[float] = None) -> torch.Tensor:
    """The ops it stands for, each by its own reference (so it rounds as the unfused graph does): ``rms_norm``,
    ``linear_rope`` (q and k rotated), the split into heads, ``cache_write`` of k and v (in place), then
    ``cached_attention``, the o projection and the residual add."""
    from membound.ir.ops.matmul import _linear_rope
    from membound.ir.ops.reduce import _rms_norm

    hq, hkv, d = num_heads, num_kv_heads, head_dim
    b = x.shape[0]
    qkv = _linear_rope(_rms_norm(x, norm_weight, eps=eps), qkv_weight, cos, sin, qkv_bias, head_dim=d,
                       rope_cols=(hq + hkv) * d)
    q, kn, vn = qkv.split([hq * d, hkv * d, hkv * d], dim=-1)
    heads = [t.reshape(b, 1, h, d).transpose(1, 2) for t, h in ((q, hq), (kn, hkv), (vn, hkv))]
    kc = _write(k, heads[1], positions, dim=2)
    vc = _write(v, heads[2], positions, dim=2)
    a = _cached(heads[0], kc, vc, positions, scale=scale)
    return x + F.linear(a.transpose(1, 2).reshape(b, 1, hq * d), o_weight)


def _block_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Both projections (2 FLOPs a weight per row) and the attention over the filled length T."""
    x, qkv_w, o_w = ins[0], ins[2], ins[8]
    b = x.shape[0]
    hq, hkv, d = _block_parts(attrs)
    q = TensorType(x.dtype, (b, hq, 1, d))
    return 2 * b * (qkv_w.numel() + o_w.numel()) + _cached_flops([q, ins[5], ins[6], ins[7]], [q], attrs)


def _block_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """Every weight once, x (read) and the output (written), cos / sin, the new k and v written, and K / V over the
    filled length (``cached_attention``'s count): what one launch must move."""
    x = ins[0]
    b = x.shape[0]
    hq, hkv, d = _block_parts(attrs)
    q = TensorType(x.dtype, (b, hq, 1, d))
    weights = sum((t.nbytes() for t in (ins[1], ins[2], ins[8], *ins[9:])), sympy.Integer(0))
    new_kv = 2 * b * hkv * d * (x.nbytes() / x.numel())
    attention = _cached_bytes([q, ins[5], ins[6], ins[7]], [q], attrs) - 2 * q.nbytes()
    return weights + 2 * x.nbytes() + ins[3].nbytes() + ins[4].nbytes() + new_kv + attention


define_op("attention_block", inputs=("x", "norm_weight", "qkv_weight", "cos", "sin", "k", "v", "positions",
                                     "o_weight", "qkv_bias?"),
          attrs={"eps": 1e-6, "num_heads": 1, "num_kv_heads": 1, "head_dim": 2, "scale": None}, kind="composite",
          infer=_infer_block, reference=_block, flops=_block_flops, bytes=_block_bytes, side_effects=True,
          tensor_core=False,
          doc="a decode layer's attention block, one new token a row: x + linear(cached_attention(q, k', v'), "
              "o_weight) where q, k, v are the heads of linear_rope(rms_norm(x, norm_weight, eps), qkv_weight, cos, "
              "sin, qkv_bias) (q and k rotated) and k', v' the state caches with k, v written at positions (in place)")
