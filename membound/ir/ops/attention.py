"""Scaled dot-product attention with grouped-query heads.

``attention(q[B, Hq, S, D], k[B, Hkv, L, D], v[B, Hkv, L, Dv], mask?) -> [B, Hq, S, Dv]`` where each
group of ``Hq / Hkv`` query heads shares one k/v head. ``mask`` is bool (True = attend) or an additive
float mask of q's dtype, broadcastable to ``[B, Hq, S, L]``. ``causal`` is torch SDPA's (top-left
aligned) and, as in torch, cannot be combined with an explicit mask. ``scale=None`` means 1/sqrt(D).

Two attributes cover the score transforms real model families use:

- ``window=W`` (sliding-window attention, Mistral / Gemma local layers): with ``causal=true``, the
  query at index i sees keys ``i - W < j <= i``, the last W positions including itself (Hugging
  Face's ``sliding_window``). ``None`` means no window.
- ``chunk=C`` (chunked attention, Llama 4's local layers): with ``causal=true``, the query at index i sees
  keys ``C * (i // C) <= j <= i``, those of its own chunk of C positions up to itself (Hugging Face's
  ``attention_chunk_size``). ``None`` means no chunks; a window and chunks do not combine.
- ``softcap=c`` (logit soft-capping, Gemma 2): scores become ``c * tanh(scale * q.k / c)`` before the
  mask and the softmax. ``None`` means none.
- ``alibi=(m_0, .., m_{Hq-1})`` (ALiBi, Bloom / Falcon / MPT style): one slope per query head; the
  scores of head h get ``m_h * (j - i)`` added (key j, query i; a bias ``m_h * j`` as models write it
  differs by a constant per row, which the softmax ignores), after any soft-cap and before the mask.
  ``None`` means none.
- ``sinks=true`` (attention sinks, gpt-oss): the last operand is ``sinks[Hq]``, one learned logit per query head
  that joins every row's softmax as a key whose value is zero: each row's weights are
  ``exp(s_j) / (exp(sink_h) + sum_j exp(s_j))``, the scores ``s`` taken after scale, soft-cap, ALiBi and mask
  (Hugging Face's eager form: ``softmax(cat([scores, sinks], -1))[..., :-1] @ v``). A row that sees no key gives
  0. The operands are then ``q, k, v, mask?, sinks``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import sympy
import torch
import torch.nn.functional as F

from membound.ir.ops import default_bytes, define_op
from membound.ir.ops._common import fail, provably_different, require_float, require_same_dim, same_dtype
from membound.ir.types import TensorType, broadcast_shapes, dims_equal

_OP = "attention"


def split_sinks(op: str, rest: Sequence[Any], sinks: bool) -> tuple[list[Any], Any]:
    """The optional operands after the required ones (types, tensors or IR values), with the sink logits (the last
    operand, ``sinks=true``) apart: ``(others, sinks or None)``."""
    if not sinks:
        return list(rest), None
    if not rest:
        fail(op, "attribute sinks=true needs the per-head sink logits [Hq] as the last operand")
    return list(rest[:-1]), rest[-1]


def attention_extras(rest: Sequence[Any], sinks: bool) -> tuple[Any, Any]:
    """``(mask or None, sinks or None)`` of ``attention``'s operands after q, k, v (types, tensors or IR values):
    the IR op, its reference and the Triton launcher all read them so."""
    others, sink = split_sinks(_OP, rest, sinks)
    if len(others) > 1:
        fail(_OP, f"takes q, k, v, mask?, and with sinks=True the sink logits last; got {3 + len(rest)} operands",
             TypeError)
    return (others[0] if others else None), sink


def attention_parts(node: Any) -> tuple[Any, Any, Any, Any, Any]:
    """An ``attention`` node's ``(q, k, v, mask or None, sinks or None)``."""
    return (*node.inputs[:3], *attention_extras(node.inputs[3:], node.attrs.get("sinks", False)))


def check_sinks(op: str, sinks: TensorType | None, flag: Any, hq: sympy.Expr) -> None:
    """The ``sinks`` attribute (a bool) and, with it, the sink logits' operand: ``[Hq]`` floats."""
    if not isinstance(flag, bool):
        fail(op, f"attribute sinks must be a bool, got {flag!r}", TypeError)
    if sinks is None:
        return
    if not sinks.dtype.is_floating_point or sinks.rank != 1 or provably_different(sinks.shape[0], hq):
        fail(op, f"sinks must be [Hq] = [{hq}] floats (one logit a query head), got {sinks}")


def sink_softmax(s: torch.Tensor, sinks: torch.Tensor | None) -> torch.Tensor:
    """Softmax of f32 scores ``s [.., H, S, L]`` over the last dim, each head's sink logit (``sinks [H]``, or none)
    taking part as one more key: the weights of the real keys only. Rows that see nothing (all -inf, no sinks)
    give zeros."""
    if sinks is None:
        return torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    col = sinks.float().reshape(-1, 1, 1).expand(*s.shape[:-1], 1)
    return torch.softmax(torch.cat([s, col], dim=-1), dim=-1)[..., :-1]


def _check_mask(mask: TensorType, q: TensorType, scores: tuple[sympy.Expr, ...]) -> None:
    if mask.dtype != torch.bool and mask.dtype != q.dtype:
        fail(_OP, f"mask must be bool or q's dtype {q.dtype} (additive), got {mask}", TypeError)
    if mask.rank > 4:
        fail(_OP, f"mask {mask} has rank > 4; it must broadcast to [B, Hq, S, L]")
    try:
        out = broadcast_shapes(mask.shape, scores)
    except ValueError:
        out = None
    if out is None or not all(dims_equal(a, b) for a, b in zip(out, scores)):
        fail(_OP, f"mask {mask} does not broadcast to the scores shape [{', '.join(map(str, scores))}]")


def check_alibi(op: str, alibi: tuple[float, ...] | None, hq: sympy.Expr) -> None:
    """The ``alibi`` attribute: None or one float slope per query head."""
    if alibi is None:
        return
    if not isinstance(alibi, tuple) or not alibi or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in alibi):
        fail(op, f"attribute alibi must be None or a tuple of per-head float slopes, got {alibi!r}", TypeError)
    if provably_different(sympy.Integer(len(alibi)), hq):
        fail(op, f"attribute alibi has {len(alibi)} slopes for {hq} query heads")


def alibi_bias(alibi: tuple[float, ...], q_pos: torch.Tensor, k_pos: torch.Tensor) -> torch.Tensor:
    """``bias[..., h, i, j] = m_h * (k_pos[..., j] - q_pos[..., i])`` in f32; positions ``[..., S]`` / ``[..., L]``
    (a leading batch dim, when given, comes out in front of the heads)."""
    slopes = torch.tensor(alibi, dtype=torch.float32, device=q_pos.device)
    rel = (k_pos[..., None, :] - q_pos[..., :, None]).float()  # [..., S, L]
    return slopes[:, None, None] * rel[..., None, :, :]


def check_window_softcap(op: str, window: int | None, softcap: float | None, chunk: int | None = None) -> None:
    """The shared checks of the ``window``, ``chunk`` and ``softcap`` attributes (``attention``,
    ``cached_attention``)."""
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        fail(op, f"attribute window must be None or a positive int (positions seen, itself included), got "
             f"{window!r}", TypeError)
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        fail(op, f"attribute chunk must be None or a positive int (positions a chunk holds), got {chunk!r}", TypeError)
    if chunk is not None and window is not None:
        fail(op, f"window={window} and chunk={chunk} do not combine (a layer is sliding-window or chunked)")
    if softcap is not None and (isinstance(softcap, bool) or not isinstance(softcap, (int, float)) or softcap <= 0):
        fail(op, f"attribute softcap must be None or a positive float, got {softcap!r}", TypeError)


def _infer_attention(q: TensorType, k: TensorType, v: TensorType, *rest: TensorType,
                     causal: bool, scale: float | None, window: int | None = None,
                     softcap: float | None = None, alibi: tuple[float, ...] | None = None,
                     sinks: bool = False, chunk: int | None = None) -> TensorType:
    mask, sink = attention_extras(rest, sinks)
    dtype = same_dtype(_OP, ("q", q), ("k", k), ("v", v))
    require_float(_OP, q, "q")
    if q.rank != 4 or k.rank != 4 or v.rank != 4:
        fail(_OP, f"needs q[B, Hq, S, D], k[B, Hkv, L, D], v[B, Hkv, L, Dv]; got q {q}, k {k}, v {v}")
    b, hq, s, d = q.shape
    _, hkv, seq_kv, _ = k.shape
    require_same_dim(_OP, k.shape[0], b, f"k {k} batch vs q {q}")
    require_same_dim(_OP, v.shape[0], b, f"v {v} batch vs q {q}")
    require_same_dim(_OP, k.shape[3], d, f"k {k} head dim vs q {q}")
    require_same_dim(_OP, v.shape[1], hkv, f"v {v} heads vs k {k}")
    require_same_dim(_OP, v.shape[2], seq_kv, f"v {v} length vs k {k}")
    if provably_different(sympy.Mod(hq, hkv), sympy.Integer(0)):
        fail(_OP, f"query heads Hq={hq} must be a multiple of kv heads Hkv={hkv} (q {q}, k {k})")
    if not isinstance(causal, bool):
        fail(_OP, f"attribute causal must be a bool, got {causal!r}", TypeError)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        fail(_OP, f"attribute scale must be None or a float, got {scale!r}", TypeError)
    check_window_softcap(_OP, window, softcap, chunk)
    check_alibi(_OP, alibi, hq)
    check_sinks(_OP, sink, sinks, hq)
    if window is not None and not causal:
        fail(_OP, f"window={window} needs causal=true (a sliding window looks back from each query)")
    if chunk is not None and not causal:
        fail(_OP, f"chunk={chunk} needs causal=true (a query sees its chunk up to itself)")
    if mask is not None:
        if causal:
            fail(_OP, "causal=True cannot be combined with an explicit mask (as in torch SDPA); fold causality "
                 "into the mask")
        _check_mask(mask, q, (b, hq, s, seq_kv))
    return TensorType(dtype, (b, hq, s, v.shape[3]))


def window_keep(q_pos: torch.Tensor, length: int, window: int | None, chunk: int | None = None) -> torch.Tensor:
    """``keep[..., i, j]``: key j is visible from a query at position ``q_pos[..., i]`` (causal, windowed or
    chunked)."""
    j = torch.arange(length, device=q_pos.device)
    keep = j <= q_pos[..., None]
    if window is not None:
        keep = keep & (j > q_pos[..., None] - window)
    if chunk is not None:
        keep = keep & (j >= q_pos[..., None] - q_pos[..., None] % chunk)
    return keep


def softcapped_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, keep: torch.Tensor | None,
                         additive: torch.Tensor | None, *, scale: float | None, softcap: float | None,
                         bias: torch.Tensor | None = None, sinks: torch.Tensor | None = None) -> torch.Tensor:
    """Plain-torch attention with soft-capped scores (SDPA has no soft-capping), an f32 ``bias`` (ALiBi) added
    after the cap, and per-head sink logits (``sinks [Hq]``) in the softmax; softmax in f32."""
    g = q.shape[1] // k.shape[1]
    if g != 1:
        k, v = k.repeat_interleave(g, dim=1), v.repeat_interleave(g, dim=1)
    sc = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q.float() @ k.float().transpose(-1, -2)) * sc
    if softcap is not None:
        s = torch.tanh(s / softcap) * softcap
    if bias is not None:
        s = s + bias
    if additive is not None:
        s = s + additive.float()
    if keep is not None:
        s = s.masked_fill(~keep, float("-inf"))
    p = sink_softmax(s, sinks)  # a row that sees nothing gives 0, as the kernels do
    return (p @ v.float()).to(q.dtype)


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *rest: torch.Tensor | None,
               causal: bool, scale: float | None, window: int | None = None,
               softcap: float | None = None, alibi: tuple[float, ...] | None = None,
               sinks: bool = False, chunk: int | None = None) -> torch.Tensor:
    mask, sink = attention_extras(rest, sinks)
    gqa = q.shape[1] != k.shape[1]
    if window is None and chunk is None and softcap is None and alibi is None and sink is None:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale, enable_gqa=gqa)
    keep = None
    if causal:  # top-left aligned, as SDPA's is_causal
        keep = window_keep(torch.arange(q.shape[2], device=q.device), k.shape[2], window, chunk)
    additive = None
    if mask is not None and mask.dtype == torch.bool:
        keep = mask if keep is None else keep & mask
    elif mask is not None:
        additive = mask
    if alibi is not None:
        bias = alibi_bias(alibi, torch.arange(q.shape[2], device=q.device), torch.arange(k.shape[2], device=q.device))
        return softcapped_attention(q, k, v, keep, additive, scale=scale, softcap=softcap, bias=bias, sinks=sink)
    if softcap is None and sink is None:
        assert keep is not None  # window and chunk need causal
        bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill(~keep, float("-inf"))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=scale, enable_gqa=gqa)
    return softcapped_attention(q, k, v, keep, additive, scale=scale, softcap=softcap, sinks=sink)


def _attention_flops(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """QK^T (2*S*L*D) plus PV (2*S*L*Dv) per query head: 4*B*H*S*L*D when Dv = D.

    Causal square attention does half of it; a window W < L sees at most W keys per query, a chunk C at most C
    (about C / 2 on average, counted as C: an upper bound)."""
    q, k, v = ins[0], ins[1], ins[2]
    b, hq, s, d = q.shape
    seq_kv, dv = k.shape[2], v.shape[3]
    window = attrs.get("window") or attrs.get("chunk")
    if window is not None and attrs.get("causal"):
        return 2 * b * hq * s * sympy.Min(seq_kv, sympy.Integer(window)) * (d + dv)
    flops = 2 * b * hq * s * seq_kv * (d + dv)
    if attrs.get("causal") and dims_equal(s, seq_kv):
        flops = flops / 2
    return flops


def _attention_bytes(ins: Sequence[TensorType], outs: Sequence[TensorType], attrs: dict[str, Any]) -> sympy.Expr:
    """A fused kernel reads q, k, v (at Hkv heads, not expanded) and the mask once and writes out once."""
    return default_bytes(ins, outs, attrs)


define_op(_OP, inputs=("q", "k", "v", "mask?", "sinks?"),
          attrs={"causal": False, "scale": None, "window": None, "softcap": None, "alibi": None, "sinks": False,
                 "chunk": None},
          kind="attention",
          infer=_infer_attention, reference=_attention, flops=_attention_flops, bytes=_attention_bytes,
          doc="softmax(q @ k.T * scale + mask) @ v with GQA (Hq % Hkv == 0); causal is top-left aligned; with "
              "sinks=true a per-head sink logit (the last operand) joins each row's softmax")
