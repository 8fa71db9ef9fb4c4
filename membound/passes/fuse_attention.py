"""fuse-attention: turn hand-written ``softmax(q @ k.T * scale + mask) @ v`` into one ``attention`` op.

```
// before (GPT-2 "eager" attention)
%kt = transpose(%k) {dim0=-1, dim1=-2} : f32[B, 4, 8, S]
%s  = matmul(%q, %kt) : f32[B, 4, S, S]
%c  = constant() {value=0.3535, dtype=f32} : f32[]
%ss = mul(%s, %c) : f32[B, 4, S, S]
%sm = add(%ss, %mask) : f32[B, 4, S, S]
%p  = softmax(%sm) {dim=-1, dtype=none} : f32[B, 4, S, S]
%o  = matmul(%p, %v) : f32[B, 4, S, 8]
// after
%o  = attention(%q, %k, %v, %mask) {causal=false, scale=0.3535} : f32[B, 4, S, 8]
```

When it fires: always, for the shapes it matches (rank-4 q/k/v, softmax over the last dim, scale a
compile-time scalar). The cost model's answer is fixed: the unfused form writes and re-reads the
``[B, H, S, L]`` score matrix several times (matmul, scale, mask, softmax), the fused op never
materialises it, so bytes drop by ``O(B·H·S·L)`` and FLOPs stay the same. Masks written as
``where(fill, -inf, scores)`` (``masked_fill``) become the boolean mask ``not fill``. A ``repeat_kv``
(``expand`` + ``reshape`` of k/v to the query heads) feeding the fused op is folded into GQA, so a
KV cache built later holds kv heads, not query heads.

Also recognised: logit soft-capping ``cap * tanh(scores / cap)`` (Gemma 2) becomes ``softcap=cap``;
and a mask that does not depend on the inputs (built from ``arange(S)``: HF's causal and
sliding-window masks, GPT-2's ``tril``) and is *proven* by ``mask_form`` to be the causal band
``0 <= i - j < W`` is dropped for ``causal=true`` (and ``window=W``), so kernels skip the masked
tiles instead of reading a mask::

    %o = attention(%q, %k, %v, %keep) {causal=false, scale=0.5} : f32[B, 4, S, 8]   // keep: j <= i, j > i - 3
    // becomes
    %o = attention(%q, %k, %v) {causal=true, scale=0.5, window=3} : f32[B, 4, S, 8]

An additive mask whose visible entries add ``m_h * j`` on head h (ALiBi, built from constant slopes
and ``arange(S)``) folds the same way, its slopes becoming ``alibi=[m_0, ...]``::

    %o = attention(%q, %k, %v, %bias) {causal=false, scale=0.5} : f32[B, 4, S, 8]   // bias: m_h * j, -inf above i
    // becomes
    %o = attention(%q, %k, %v) {causal=true, scale=0.5, alibi=[0.25, 0.0625, 0.015625, 0.00390625]} : ...

Attention sinks (gpt-oss): the masked scores joined by a column of per-head logits (``cat(s, expand(sinks))``),
the row max subtracted (a no-op under the softmax), and the softmax's last column dropped before the product with
v, become ``attention(q, k, v, mask?, sinks) {sinks=true}``; the mask then folds as above::

    %j = cat(%masked, %sink_col) {dim=-1}      // sink_col: sinks [Hq] viewed [1, Hq, 1, 1], expanded to [B, Hq, S, 1]
    %p = softmax(sub(%j, amax(%j))) ; %pk = slice(%p) {dim=3, start=0, end=L} ; %o = matmul(%pk, %v)
    // becomes
    %o = attention(%q, %k, %v, %mask, %sinks) {sinks=true}

Sinks applied as a scale of the output (Granite-SWA: ``softmax(s) @ v * sigmoid(logsumexp(s) - sink)``, which is
``exp(s) @ v / (sum(exp(s)) + exp(sink))``) are first rewritten to that sink column, logsumexp recognised as the
frontend spells it; a logsumexp over other scores is left alone with a log line. The scores' own row max subtracted
before the softmax with no sink column (MiMo-V2-Flash's full layers) is dropped as under the sink form.

A boolean mask applied with ``where`` and then an additive one (GPT-Neo: its causal bias, filled with a
stored ``finfo.min`` scalar, which the pass first reads as a constant; then the attention mask) become one
additive mask: the additive one plus ``where(keep, 0, fill)``.

Heads flattened into the batch are the same attention (BLOOM: ``baddbmm(alibi, q3, k3.T)`` over
``[B*H, S, D]`` views of rank-4 q/k/v, the scores viewed as ``[B, H, S, L]`` for the mask and the softmax and
as ``[B*H, S, L]`` again for v): it becomes ``attention`` over the rank-4 tensors, the bias viewed as
``[B, H, ., L]`` and added to the mask, which then folds to ``causal`` and ``alibi`` as above. XGLM's variant
takes the softmax over the ``[B*H, S, L]`` view, its masked scores floored at the dtype's lowest value first
(``max(s + mask, finfo.min)``: the same but for sums that overflowed to -inf; the floor is dropped).

A mask added before the scale (CodeGen in transformers 5.17: ``(q @ k.T + mask) / c``) is the scale ``1 / c`` with
the mask ``mask / c``.

A mask it cannot prove is kept (a log line says why). A softmax feeding a matmul (directly, or through a
cast or reshape) that no form matches stays unfused, with a log line naming its input chain.
"""

from __future__ import annotations

from typing import Optional

import sympy
import torch

from membound.ir import Graph, Node, Value
from membound.ir.ops.attention import attention_parts
from membound.ir.types import dims_equal
from membound.passes.manager import PassContext, register_pass
from membound.passes.mask_form import depends_on_inputs, mask_form
from membound.passes.pattern import Alt, Any_, Const, Match, Opt, Pat, Rule, rewrite_to_fixpoint

# k.T may be written many ways (transpose, permute, a view chain canonicalize already folded); the
# callback takes whatever [B, H, D, L] value it is and transposes it back, canonicalize folds the rest
_SCORES = Pat("matmul", Any_("q"), Any_("kt"))
_SCALED = Alt(Pat("mul", _SCORES, Const(name="scale")), Pat("div", _SCORES, Const(name="inv_scale")), _SCORES)


def _very_negative(v: object) -> bool:
    return isinstance(v, (int, float)) and v <= -1e4


# logit soft-capping (Gemma 2): cap * tanh(scores / cap), the division also written as a product
_CAPPED = Alt(
    Pat("mul", Pat("tanh", Alt(Pat("div", _SCALED, Const(name="cap_div")), Pat("mul", _SCALED, Const(name="cap_mul")))),
        Const(name="cap")),
    _SCALED,
)
def _filled(scores: Pat) -> list[Pat]:
    """``scores`` masked by a boolean: ``masked_fill(fill, -inf)`` or ``where(keep, scores, -inf)``."""
    return [Pat("where", Any_("fill"), Const(_very_negative, name="neg"), scores),
            Pat("where", Any_("keep"), scores, Const(_very_negative, name="neg"))]


_FILLED = Alt(*_filled(_CAPPED))
_MASKED = Alt(
    Pat("add", _CAPPED, Any_("add_mask")),
    # mask added, then scaled (CodeGen in transformers 5.17: (q @ k.T + mask) / sqrt(d)): scale c, mask c * mask
    Pat(("mul", "div"), Pat("add", _SCORES, Any_("add_mask")), Const(name="post_scale"), name="post"),
    Pat("add", _FILLED, Any_("add_mask")),   # a boolean mask, then an additive one (GPT-Neo: causal bias, padding)
    *_filled(Pat("add", _CAPPED, Any_("add_mask"))),  # an additive one, then a boolean one (MPT: ALiBi, then the mask)
    _FILLED,
    _CAPPED,
)
# HF eager attention upcasts the scores to f32 for the softmax and casts back; fused kernels keep the
# softmax in f32 internally anyway, so that form fuses too
# ... its row max subtracted first (MiMo-V2-Flash's full-attention layers: ``s - s.max(-1, keepdim).values``, a no-op
# under the softmax, checked in ``_fuse`` to be the max of the same scores over the softmax's dim)
_SHIFTED = Pat("sub", Alt(_MASKED, Pat("cast", _MASKED)), Pat("amax", Any_("shift_of"), name="shift_max"), name="shift")
_SOFTMAX = Pat("softmax", Alt(_MASKED, Pat("cast", _MASKED), _SHIFTED), name="probs",
               attrs={"dim": lambda d: d in (-1, 3)})
_ATTN = Pat("matmul", Opt("cast", _SOFTMAX), Any_("v"))
# attention sinks (gpt-oss): the masked scores joined by a column of per-head logits, their row max subtracted (a
# no-op under the softmax), the softmax's last column (the sink's weight) dropped before the product with v
_LAST = {"dim": lambda d: d in (-1, 3)}
_JOINED = Pat("cat", Alt(_MASKED, Pat("cast", _MASKED)), Any_("sink_col"), name="joined", attrs=_LAST)
_SINK_SOFTMAX = Pat("softmax", Alt(Pat("sub", _JOINED, Pat("amax", Any_("joined"), name="row_max")), _JOINED),
                    name="probs", attrs=_LAST)
_SINK_ATTN = Pat("matmul", Opt("cast", Pat("slice", _SINK_SOFTMAX, name="kept", attrs=_LAST)), Any_("v"))


def _swaps_last_two(node: Optional[Node], rank: int) -> bool:
    """``node`` is a transpose of the last two dims of a rank-``rank`` tensor (k.T)."""
    return (node is not None and node.op == "transpose"
            and {node.attrs["dim0"] % rank, node.attrs["dim1"] % rank} == {rank - 2, rank - 1})


def _mask_of(m: Match, b, dtype: torch.dtype) -> Optional[Value]:
    """The mask a matched form applies (None: none): an additive one in ``dtype``, plus ``where(keep, 0, fill)`` when
    a boolean one came first (the same scores where it keeps, its fill value plus the additive mask where it does
    not: fill dominates, probability 0 either way); a boolean one alone as the keep mask."""
    if "add_mask" in m:
        mask = m["add_mask"]
        if mask.dtype != dtype:
            mask = b.call("cast", mask, dtype=dtype)
        if "fill" in m or "keep" in m:
            zero = b.call("constant", value=0.0, dtype=dtype)
            # the fill in the mask's dtype: f32's finfo.min (GPT-Neo) has no fp16 / bf16 value, their own min means
            # the same (masked); a constant out of its dtype's range is not one the backends can build
            fill = max(float(m["neg"].producer.attrs["value"]), float(torch.finfo(dtype).min))
            neg = b.call("constant", value=fill, dtype=dtype)
            term = b.call("where", m["keep"], zero, neg) if "keep" in m else b.call("where", m["fill"], neg, zero)
            mask = b.call("add", mask, term)
        return mask
    if "fill" in m:
        return b.call("logical_not", m["fill"])
    return m["keep"] if "keep" in m else None


def _half_qk(q: Value, kt: Value, v: Value) -> Optional[tuple[Value, Value]]:
    """Scores taken in f32 from half-precision q and k (GPT-Neo: ``q.to(f32) @ k.to(f32).T``) while v and the output
    stay half: the half q and k (un-transposed). The kernels accumulate the scores in f32 from the same half values,
    so the products are the same and only the order of the sums differs."""
    def source(x: Value) -> Optional[Value]:
        p = x.producer
        ok = p is not None and p.op == "cast" and x.dtype == torch.float32 and p.inputs[0].dtype == v.dtype
        return p.inputs[0] if ok else None

    t = kt.producer
    if not _swaps_last_two(t, 4):
        return None
    assert t is not None
    qs, ks = source(q), source(t.inputs[0])
    return (qs, ks) if qs is not None and ks is not None else None


def _over_keys(red: Node) -> bool:
    """A reduction of ``[B, H, S, L]`` scores over the keys alone (``dims=[-1]``)."""
    return tuple(d % 4 for d in red.attrs["dims"]) == (3,)


def _sinks_of(m: Match) -> Optional[Value]:
    """The per-head sink logits ``[Hq]`` of a matched sink form (see ``_SINK_ATTN``), or None (a note says why):
    the joined column must be one logit a head broadcast over rows and queries, the max taken over the joined
    row (keepdim), the slice the first L columns (the keys)."""
    joined, col = m["joined"], m["sink_col"]
    if joined.rank != 4:
        m.note("sink form: the joined scores are not [B, H, S, L + 1]")
        return None
    b, hq, _, length = joined.shape
    if "row_max" in m:
        red = m["row_max"].producer
        assert red is not None
        if not _over_keys(red) or not red.attrs["keepdim"]:
            m.note("sink form: the subtracted max is not the joined row's (dims=[-1], keepdim)")
            return None
    kept = m["kept"].producer
    assert kept is not None
    if not (kept.attrs["start"] == 0 and kept.attrs["step"] == 1 and dims_equal(kept.attrs["end"], length - 1)
            and dims_equal(col.shape[3], 1) if col.rank == 4 else False):
        m.note("sink form: not one joined column whose probability is dropped (slice [0, L) of L + 1)")
        return None
    src = col
    while src.producer is not None and src.producer.op in ("expand", "cast"):
        src = src.producer.inputs[0]
    if src.producer is not None and src.producer.op == "reshape":
        src = src.producer.inputs[0]
    per_head = src.rank == 1 or (src.rank == 4 and all(dims_equal(src.shape[i], 1) for i in (0, 2, 3)))
    if not (per_head and dims_equal(src.shape[0 if src.rank == 1 else 1], hq)) or src.dtype == torch.bool:
        m.note(f"sink form: the joined column is {col.type}, not one logit a query head broadcast over the rows")
        return None
    return src if src.rank == 1 else m.builder.call("reshape", src, shape=(hq,))


def _fuse(m: Match) -> Optional[Value]:
    # matmul(softmax(scale * q @ k.T + mask), v) -> attention(q, k, v, mask) {scale}
    # (matmul(softmax(cat(scale * q @ k.T + mask, sinks))[..., :L], v) -> attention(q, k, v, mask, sinks) {sinks})
    sinks = None
    if "joined" in m:
        sinks = _sinks_of(m)
        if sinks is None:
            return None
    if "shift" in m:  # softmax(s - max(s)) is softmax(s) only for the max of those scores over the softmax's dim
        shift, red = m["shift"].producer, m["shift_max"].producer
        assert shift is not None and red is not None
        if (m["shift_of"] is not shift.inputs[0] or not _over_keys(red)
                or not red.attrs["keepdim"] or m["shift"].rank != 4):
            m.note(f"the scores' shift %{m['shift'].name} is not their own row max (dims=[-1], keepdim)")
            return None
    q, kt, v = m["q"], m["kt"], m["v"]
    half = None
    if v.dtype in (torch.float16, torch.bfloat16) and q.dtype == kt.dtype == torch.float32 and m.value.dtype == v.dtype:
        half = _half_qk(q, kt, v)
    if half is not None:
        q = half[0]
    k_dtype = half[1].dtype if half is not None else kt.dtype
    if not (q.rank == kt.rank == v.rank == 4) or not (q.dtype == k_dtype == v.dtype):
        m.note("q/k/v are not rank-4 tensors of one dtype")
        return None
    scale = _scale_of(m, q)
    if scale is None:
        return None
    softcap = _softcap(m)
    if softcap == 0.0:
        return None
    b = m.builder
    mask = _mask_of(m, b, q.dtype)
    if "post_scale" in m:   # (s + mask) * c = c * s + c * mask: the scale moves onto the scores and the mask
        c = float(m["post_scale"].producer.attrs["value"])
        scale = c if m["post"].producer.op == "mul" else 1.0 / c
        if not scale > 0:
            m.note(f"scores scaled by {scale} after the mask: not a softmax scale")
            return None
        assert mask is not None
        mask = b.call("mul", mask, b.call("constant", value=scale, dtype=mask.dtype))
    k = half[1] if half is not None else _transposed_back(b, kt)
    k2, v2 = _unrepeat(k), _unrepeat(v)
    if k2.shape[1] == v2.shape[1]:
        k, v = k2, v2
    inputs = [q, k, v] + ([mask] if mask is not None else []) + ([sinks] if sinks is not None else [])
    out = b.call("attention", *inputs, causal=False, scale=scale, softcap=softcap, sinks=sinks is not None)
    if not out.type.equivalent(m.value.type):
        return None
    return out


# the same attention over heads flattened into the batch (BLOOM: baddbmm / bmm over [B*H, S, D]; the scores viewed
# as [B, H, S, L] for the mask and the softmax, then as [B*H, S, L] again for the product with v)
_Q3 = Pat("reshape", Any_("q4"), name="q3")
_SCORES3 = Pat("matmul", _Q3, Pat("transpose", Pat("reshape", Any_("k4"), name="k3"), name="k3t"))
_SCALED3 = Alt(Pat("mul", _SCORES3, Const(name="scale")), Pat("div", _SCORES3, Const(name="inv_scale")), _SCORES3)
_VIEW4 = Pat("reshape", Alt(Pat("add", _SCALED3, Any_("bias3")), _SCALED3), name="s4")
_MASKED4 = Alt(Pat("add", _VIEW4, Any_("add_mask")), *_filled(_VIEW4), _VIEW4)
_SOFTMAX4 = Pat("softmax", Alt(_MASKED4, Pat("cast", _MASKED4)), name="probs", attrs={"dim": lambda d: d in (-1, 3)})
_ATTN3 = Pat("matmul", Pat("reshape", Opt("cast", _SOFTMAX4), name="p3"), Pat("reshape", Any_("v4"), name="v3"))
# ... or the masked scores viewed back as [B*H, S, L] before the softmax, after a floor (XGLM: max(s + mask,
# finfo.min)); a floor at the dtype's lowest finite value changes only a sum that overflowed to -inf (|s| near 1e31
# in f32), so it is dropped; a higher one is not a floor this form takes
_FLOORED4 = Alt(Pat("maximum", _MASKED4, Const(_very_negative, name="floor"), name="floored"), _MASKED4)
_VIEW3 = Pat("reshape", _FLOORED4, name="m3")
_SOFTMAX3 = Pat("softmax", Alt(_VIEW3, Pat("cast", _VIEW3)), name="probs", attrs={"dim": lambda d: d in (-1, 2)})
_ATTN3_SOFTMAX3 = Pat("matmul", Opt("cast", _SOFTMAX3), Pat("reshape", Any_("v4"), name="v3"))


def _merges_heads(x4: Value, x3: Value) -> bool:
    """``x3`` is ``x4 [B, H, N, D]`` with its first two dims merged: ``[B*H, N, D]``."""
    return (x4.rank == 4 and x3.rank == 3 and dims_equal(x3.shape[0], x4.shape[0] * x4.shape[1])
            and dims_equal(x3.shape[1], x4.shape[2]) and dims_equal(x3.shape[2], x4.shape[3]))


def _fuse_flat(m: Match) -> Optional[Value]:
    # reshape(matmul(reshape(softmax(reshape(q3 @ k3.T * c + bias) + mask)), v3)) over [B*H, ...] views of rank-4
    # q/k/v -> reshape(attention(q, k, v, bias + mask) {scale=c})
    q, k, v = m["q4"], m["k4"], m["v4"]
    if not (_merges_heads(q, m["q3"]) and _merges_heads(k, m["k3"]) and _merges_heads(v, m["v3"])):
        m.note("flattened-heads form: q/k/v are not [B, H, S, D] tensors viewed as [B*H, S, D]")
        return None
    if not _swaps_last_two(m["k3t"].producer, 3) or not (q.dtype == k.dtype == v.dtype):
        m.note("flattened-heads form: k is not transposed over its last two dims, or q/k/v differ in dtype")
        return None
    want4 = (q.shape[0], q.shape[1], q.shape[2], k.shape[2])
    s4 = m["s4"]
    if "p3" in m:   # the softmax over [B, H, S, L], its probabilities viewed as [B*H, S, L]
        back = _merges_heads(m["probs"], m["p3"])
    else:           # the masked scores viewed as [B*H, S, L], the softmax over that view
        back = _merges_heads(m["m3"].producer.inputs[0], m["m3"])  # type: ignore[union-attr]
    if not (s4.rank == 4 and all(dims_equal(a, b) for a, b in zip(s4.shape, want4)) and back):
        m.note("flattened-heads form: the scores are not viewed as [B, H, S, L] and back")
        return None
    if "floor" in m:   # (the floor's own dtype may be wider: XGLM's torch.full((), finfo(f16).min) is f32)
        lowest = float(torch.finfo(m["floored"].dtype).min)
        if float(m["floor"].producer.attrs["value"]) > lowest:  # type: ignore[union-attr]
            m.note("flattened-heads form: the scores are floored above their dtype's lowest value")
            return None
    scale = _scale_of(m, q)
    if scale is None:
        return None
    b = m.builder
    terms: list[Value] = []
    if "bias3" in m:  # the bias added to the flattened scores ([B*H or 1, 1 or S, L]: ALiBi), as [B, H, ., L]
        bias = m["bias3"]
        if bias.rank != 3 or not dims_equal(bias.shape[2], k.shape[2]):
            m.note(f"flattened-heads form: a bias {bias.type} that is not [B*H, ., L]")
            return None
        if dims_equal(bias.shape[0], q.shape[0] * q.shape[1]):
            lead = (q.shape[0], q.shape[1])
        elif dims_equal(bias.shape[0], 1):
            lead = (1, 1)
        else:
            m.note(f"flattened-heads form: a bias {bias.type} that is not [B*H, ., L]")
            return None
        bias4 = b.call("reshape", bias, shape=lead + (bias.shape[1], bias.shape[2]))
        terms.append(bias4 if bias4.dtype == q.dtype else b.call("cast", bias4, dtype=q.dtype))
    masked = _mask_of(m, b, q.dtype)
    if masked is not None:
        if terms and masked.dtype == torch.bool:
            m.note("flattened-heads form: a boolean mask beside an additive bias")
            return None
        terms.append(masked)
    mask = terms[0] if len(terms) == 1 else b.call("add", terms[0], terms[1]) if terms else None
    out = b.call("attention", q, k, v, *([mask] if mask is not None else []), causal=False, scale=scale, softcap=None)
    return b.call("reshape", out, shape=tuple(m.value.shape))


def _scale_of(m: Match, q: Value) -> Optional[float]:
    """The scores' scale (``mul`` by c, ``div`` by 1/c, or 1); None when the output's dtype is not q's."""
    if m.value.dtype != q.dtype:
        m.note(f"attention output is {m.value.dtype} while q is {q.dtype}")
        return None
    if "scale" in m:
        return float(m["scale"].producer.attrs["value"])
    if "inv_scale" in m:
        return 1.0 / float(m["inv_scale"].producer.attrs["value"])
    return 1.0


def _softcap(m: Match) -> Optional[float]:
    """The soft-cap c of ``c * tanh(s / c)`` (None: no capping; 0.0: a tanh form that is not a soft cap)."""
    if "cap" not in m:
        return None
    outer = float(m["cap"].producer.attrs["value"])
    inner = float(m["cap_div"].producer.attrs["value"]) if "cap_div" in m else 1.0 / float(
        m["cap_mul"].producer.attrs["value"])
    if outer <= 0 or abs(outer - inner) > 1e-6 * abs(outer):
        m.note(f"tanh capping with different inner ({inner}) and outer ({outer}) scales is not a soft cap")
        return 0.0
    return outer


def _transposed_back(b, kt: Value) -> Value:
    """k from k.T: undo a transpose of the last two dims when that is what produced it, else add one."""
    p = kt.producer
    if _swaps_last_two(p, 4):
        assert p is not None
        return p.inputs[0]
    return b.call("transpose", kt, dim0=2, dim1=3)


def _unrepeat(x: Value) -> Value:
    """``reshape(expand(unsqueeze(kv, 2)))`` from [B, Hkv, L, D] to [B, Hkv*n, L, D] -> kv (GQA)."""
    r = x.producer
    if r is None or r.op != "reshape":
        return x
    e = r.inputs[0].producer
    if e is None or e.op != "expand" or e.inputs[0].rank != 5:
        return x
    u = e.inputs[0].producer
    if u is None or u.op != "unsqueeze" or u.attrs["dim"] % 5 != 2:
        return x
    kv = u.inputs[0]
    b, hkv, seq, d = kv.shape
    out_shape = x.shape
    if out_shape[0] != b or out_shape[2] != seq or out_shape[3] != d:
        return x
    n = sympy.simplify(out_shape[1] / hkv)
    if not n.is_Integer:
        return x
    return kv


def _fold_repeat_kv(m: Match) -> Optional[Value]:
    # attention(q, repeat(k), repeat(v)) -> attention(q, k, v): GQA reads kv heads once
    node = m.root
    k, v = node.inputs[1], node.inputs[2]
    k2, v2 = _unrepeat(k), _unrepeat(v)
    if (k2 is k and v2 is v) or k2.shape[1] != v2.shape[1]:
        return None
    return m.builder.call("attention", node.inputs[0], k2, v2, *node.inputs[3:], **node.attrs)


# Granite-SWA's sinks: the attention output scaled by sigmoid(logsumexp(s) - sink) per head and query,
# ``softmax(s) @ v * sigmoid(lse(s) - sink)`` = ``exp(s) @ v / (sum(exp(s)) + exp(sink))``: the sink joins the softmax
# as a column whose probability is dropped (gpt-oss's form, which then fuses). logsumexp as the frontend spells it:
# ``log(sum(exp(s - m'))) + m'``, m' the row max (0 where infinite)
_LSE_MAX = Pat("amax", Any_("lse_of"), name="lse_max", attrs={"keepdim": True})
_LSE_SHIFT = Pat("where", Pat("eq", Pat("abs", _LSE_MAX), Const()), Const(0), _LSE_MAX)
_LSE = Pat("add", Pat("log", Pat("sum", Pat("exp", Pat("sub", Any_("lse_of"), _LSE_SHIFT)), name="lse_sum",
                                 attrs={"keepdim": False})), Pat("squeeze", _LSE_SHIFT))
_SINK_SCALE = Opt("cast", Pat("unsqueeze", Opt("cast", Pat("sigmoid", Opt("cast", Pat("sub", _LSE, Any_("sink_view"),
                                                                                           name="lse_minus_sink")))),
                              name="scale_col"))
_SCALED_ATTN = Pat("mul", Pat("matmul", Opt("cast", Pat("softmax", Opt("cast", Any_("soft_of")), name="soft"),
                                            name="soft_cast"), Any_("v"), name="pv"), _SINK_SCALE)


def _lse_sinks_joined(m: Match) -> Optional[Value]:
    # softmax(s) @ v * unsqueeze(sigmoid(logsumexp(s, -1) - sinks[1, H, 1]), -1)
    #   -> softmax(cat(s, sinks[1, H, 1, 1] expanded))[..., :L] @ v
    s, soft = m["lse_of"], m["soft"].producer
    assert soft is not None
    if m["soft_of"] is not s or s.rank != 4:
        m.note(f"sink scale at %{m.value.name}: its logsumexp is not over the softmax's scores")
        return None
    red, total, col = m["lse_max"].producer, m["lse_sum"].producer, m["scale_col"].producer
    assert red is not None and total is not None and col is not None
    if (not _over_keys(red) or not _over_keys(total)
            or soft.attrs["dim"] % 4 != 3 or col.attrs["dim"] % 4 != 3):
        m.note(f"sink scale at %{m.value.name}: the logsumexp, the softmax and the scale are not all over the keys")
        return None
    b_, hq, rows, length = s.shape
    src = m["sink_view"]
    while src.producer is not None and src.producer.op in ("reshape", "cast"):
        src = src.producer.inputs[0]
    view = m["sink_view"]
    if not (src.rank == 1 and dims_equal(src.shape[0], hq) and src.dtype.is_floating_point
            and view.rank == 3 and dims_equal(view.shape[0], 1) and dims_equal(view.shape[2], 1)):
        m.note(f"sink scale at %{m.value.name}: %{view.name} is not one logit a query head ([1, H, 1] of [H])")
        return None
    b = m.builder
    sink = b.call("cast", src, dtype=s.dtype) if src.dtype != s.dtype else src
    sink = b.call("expand", b.call("reshape", sink, shape=(1, hq, 1, 1)), shape=(b_, hq, rows, 1))
    joined = b.call("cat", s, sink, dim=-1)
    probs = b.call("softmax", joined, dim=-1, dtype=soft.attrs["dtype"])
    kept = b.call("slice", probs, dim=3, start=0, end=length, step=1)
    if "soft_cast" in m:
        kept = b.call("cast", kept, dtype=m["soft_cast"].dtype)
    out = b.call("matmul", kept, m["v"])
    if out.dtype != m.value.dtype:
        out = b.call("cast", out, dtype=m.value.dtype)
    return out if out.type.equivalent(m.value.type) else None


# run before RULES: the attention product inside must still be a matmul
SINK_SCALE_RULES = [Rule(_SCALED_ATTN, _lse_sinks_joined, name="sink-scale-to-sink-column")]

RULES = [
    # matmul(softmax(mul(matmul(q, transpose(k)), c) + mask), v) -> attention(q, k, v, mask) {scale=c}
    Rule(_ATTN, _fuse, name="fuse-softmax-attention"),
    # ... with per-head sink logits joining the softmax (gpt-oss)
    Rule(_SINK_ATTN, _fuse, name="fuse-sink-attention"),
    # the same over heads flattened into the batch, a bias added before the [B, H, S, L] view (BLOOM's baddbmm)
    Rule(_ATTN3, _fuse_flat, name="fuse-flattened-heads-attention"),
    Rule(_ATTN3_SOFTMAX3, _fuse_flat, name="fuse-flattened-heads-attention"),
    # attention(q, reshape(expand(unsqueeze(k))), ...) -> attention(q, k, ...)   (repeat_kv into GQA)
    Rule(Pat("attention", Any_(), Any_(), Any_(), ...), _fold_repeat_kv, name="fold-repeat-kv"),
]


def _fold_constant_masks(graph: Graph, notes: list[str]) -> int:
    """attention(q, k, v, mask) with a mask proven causal (windowed, chunked) -> attention {causal=true, window,
    chunk}.

    Only masks that do not depend on the graph inputs (built from ``arange(S)``) are tried; the
    proof is ``mask_form``'s. Kernels then skip the masked blocks instead of reading a mask.
    """
    data = depends_on_inputs(graph)
    folded = 0
    for node in list(graph.nodes):
        if node.op != "attention":
            continue
        q, k, v, mask, sinks = attention_parts(node)
        if mask is None:
            continue
        if mask.kind == "input" or (mask.producer is not None and id(mask.producer) in data):
            continue  # a padding mask: it changes with the inputs
        if not (dims_equal(q.shape[2], k.shape[2])):
            continue  # not square self-attention: a top-left causal flag would not mean the same
        form = mask_form(graph, mask)
        if isinstance(form, str):
            notes.append(f"attention at %{node.result.name} keeps its mask: {form}")
            continue
        alibi = form.alibi
        if alibi is not None and len(alibi) == 1 and q.shape[1].is_Integer:
            alibi = alibi * int(q.shape[1])  # one slope broadcast over the heads
        heads_ok = alibi is None or dims_equal(sympy.Integer(len(alibi)), q.shape[1])
        if alibi is not None and (node.attrs["alibi"] is not None or not heads_ok):
            notes.append(f"attention at %{node.result.name} keeps its mask: ALiBi slopes for {len(alibi)} heads, "
                         f"q has {q.shape[1]}")
            continue
        new = graph.create_node("attention", [q, k, v] + ([sinks] if sinks is not None else []),
                                dict(node.attrs, causal=True, window=form.window, alibi=alibi,
                                     chunk=form.chunk))
        graph.insert_before(node, new)
        graph.replace_all_uses(node.result, new.result)
        graph.erase_node(node)
        folded += 1
    return folded


def _materialize_scalar_fills(graph: Graph) -> int:
    """Stored 0-d float tensors the attention forms read as scalars become ``constant`` nodes of their value and dtype
    (captured as lifted buffers, the patterns could not see them): a very negative fill of a ``where`` (GPT-Neo's
    ``torch.tensor(finfo.min)``) or floor of a ``maximum`` (XGLM in transformers 4.x), and the scale a ``mul`` /
    ``div`` applies to a matmul's scores, masked or not (GPT-J and CodeGen in 4.x: ``scores / self.scale_attn``, a
    buffer). The same scalar either way. Returns how many were replaced."""
    replaced = 0
    for n in list(graph.nodes):
        if n.op == "where":
            slots, want = (1, 2), _very_negative
        elif n.op == "maximum":
            slots, want = (0, 1), _very_negative
        elif n.op in ("mul", "div") and any(_scores_like(v) for v in n.inputs) and _feeds_softmax(n.result):
            slots, want = ((1,) if n.op == "div" else (0, 1)), (lambda x: True)
        else:
            continue
        for i in slots:
            v = n.inputs[i]
            t = graph.tensors.get(v.name) if v.kind == "param" and v.rank == 0 else None
            if t is None or not t.dtype.is_floating_point or not want(float(t)):
                continue
            c = graph.create_node("constant", [], {"value": float(t), "dtype": v.dtype})
            graph.insert_before(n, c)
            n.replace_input(v, c.result)
            replaced += 1
    return replaced


def _feeds_softmax(v: Value, hops: int = 4) -> bool:
    """``v`` reaches a softmax through at most ``hops`` mask / view / cast ops (the scores' way in attention)."""
    return any(u.op == "softmax" or (hops and u.op in ("add", "where", "maximum", "reshape", "cast", "mul", "div")
                                     and _feeds_softmax(u.results[0], hops - 1)) for u in v.users)


def _scores_like(v: Value) -> bool:
    """A matmul's result, or one with a mask added (CodeGen scales after the mask)."""
    p = v.producer
    return p is not None and (p.op == "matmul" or (p.op == "add" and any(
        u.producer is not None and u.producer.op == "matmul" for u in p.inputs)))


def _unfused_softmaxes(graph: Graph) -> list[str]:
    """A line for each softmax that feeds a matmul but was not fused: what its input chain is."""
    def feeds_matmul(v: Value, hops: int = 2) -> bool:  # directly or through a cast / reshape (flattened heads)
        return any(u.op == "matmul" or (hops and u.op in ("cast", "reshape") and feeds_matmul(u.results[0], hops - 1))
                   for u in v.users)

    lines = []
    for n in graph.nodes:
        if n.op != "softmax" or not feeds_matmul(n.result):
            continue
        chain, cur = [], n.inputs[0]
        while cur.producer is not None and len(chain) < 6 and cur.producer.op != "matmul":
            chain.append(cur.producer.op)
            cur = cur.producer.inputs[0]
        chain.append(cur.producer.op if cur.producer is not None else cur.kind)
        lines.append(f"softmax at %{n.result.name} feeding a matmul left unfused: its input chain "
                     f"{' <- '.join(chain)} matches no attention form (scale, soft-cap, mask, cast over q @ k.T) "
                     f"or q/k/v are not rank-4 of one dtype")
    return lines


@register_pass("fuse-attention")
def fuse_attention(graph: Graph, ctx: PassContext) -> bool:
    """Fuse softmax attention written with matmuls into ``attention``; fold repeat_kv into GQA;
    turn masks proven causal (or sliding-window) into the ``causal``/``window`` attributes."""
    notes: list[str] = []
    counts: dict[str, int] = {}
    changed = _materialize_scalar_fills(graph) > 0
    changed = rewrite_to_fixpoint(graph, SINK_SCALE_RULES, notes=notes, counts=counts) or changed
    changed = rewrite_to_fixpoint(graph, RULES, notes=notes, counts=counts) or changed
    folded = _fold_constant_masks(graph, notes)
    if folded:
        counts["causal-mask-to-attribute"] = folded
        changed = True
    notes += _unfused_softmaxes(graph)
    for n in notes:
        ctx.note(n)
    if counts:
        ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(counts.items())))
    return changed

