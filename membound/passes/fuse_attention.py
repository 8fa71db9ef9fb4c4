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

A mask it cannot prove is kept (a log line says why). A softmax feeding a matmul that no form
matches stays unfused, with a log line naming its input chain.
"""

from __future__ import annotations

from typing import Optional

import sympy

from membound.ir import Graph, Value
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
_MASKED = Alt(
    Pat("add", _CAPPED, Any_("add_mask")),
    Pat("where", Any_("fill"), Const(_very_negative), _CAPPED),   # masked_fill(fill, -inf)
    Pat("where", Any_("keep"), _CAPPED, Const(_very_negative)),
    _CAPPED,
)
# HF eager attention upcasts the scores to f32 for the softmax and casts back; fused kernels keep the
# softmax in f32 internally anyway, so that form fuses too
_SOFTMAX = Pat("softmax", Alt(_MASKED, Pat("cast", _MASKED)), name="probs", attrs={"dim": lambda d: d in (-1, 3)})
_ATTN = Pat("matmul", Opt("cast", _SOFTMAX), Any_("v"))


def _fuse(m: Match) -> Optional[Value]:
    # matmul(softmax(scale * q @ k.T + mask), v) -> attention(q, k, v, mask) {scale}
    q, kt, v = m["q"], m["kt"], m["v"]
    if not (q.rank == kt.rank == v.rank == 4) or not (q.dtype == kt.dtype == v.dtype):
        m.note("q/k/v are not rank-4 tensors of one dtype")
        return None
    if m.value.dtype != q.dtype:
        m.note(f"attention output is {m.value.dtype} while q is {q.dtype}")
        return None
    scale = 1.0
    if "scale" in m:
        scale = float(m["scale"].producer.attrs["value"])
    elif "inv_scale" in m:
        scale = 1.0 / float(m["inv_scale"].producer.attrs["value"])
    softcap = _softcap(m)
    if softcap == 0.0:
        return None
    b = m.builder
    mask: Optional[Value] = None
    if "add_mask" in m:
        mask = m["add_mask"]
        if mask.dtype != q.dtype:
            mask = b.call("cast", mask, dtype=q.dtype)
    elif "fill" in m:
        mask = b.call("logical_not", m["fill"])
    elif "keep" in m:
        mask = m["keep"]
    k = _transposed_back(b, kt)
    k2, v2 = _unrepeat(k), _unrepeat(v)
    if k2.shape[1] == v2.shape[1]:
        k, v = k2, v2
    inputs = [q, k, v] + ([mask] if mask is not None else [])
    out = b.call("attention", *inputs, causal=False, scale=scale, softcap=softcap)
    if not out.type.equivalent(m.value.type):
        return None
    return out


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
    if p is not None and p.op == "transpose" and {p.attrs["dim0"] % 4, p.attrs["dim1"] % 4} == {2, 3}:
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


RULES = [
    # matmul(softmax(mul(matmul(q, transpose(k)), c) + mask), v) -> attention(q, k, v, mask) {scale=c}
    Rule(_ATTN, _fuse, name="fuse-softmax-attention"),
    # attention(q, reshape(expand(unsqueeze(k))), ...) -> attention(q, k, ...)   (repeat_kv into GQA)
    Rule(Pat("attention", Any_(), Any_(), Any_(), ...), _fold_repeat_kv, name="fold-repeat-kv"),
]


def _fold_constant_masks(graph: Graph, notes: list[str]) -> int:
    """attention(q, k, v, mask) with a mask proven causal (windowed) -> attention {causal=true, window}.

    Only masks that do not depend on the graph inputs (built from ``arange(S)``) are tried; the
    proof is ``mask_form``'s. Kernels then skip the masked blocks instead of reading a mask.
    """
    data = depends_on_inputs(graph)
    folded = 0
    for node in list(graph.nodes):
        if node.op != "attention" or len(node.inputs) != 4:
            continue
        q, k, v, mask = node.inputs
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
        new = graph.create_node("attention", [q, k, v],
                                dict(node.attrs, causal=True, window=form.window, alibi=alibi))
        graph.insert_before(node, new)
        graph.replace_all_uses(node.result, new.result)
        graph.erase_node(node)
        folded += 1
    return folded


def _unfused_softmaxes(graph: Graph) -> list[str]:
    """A line for each softmax that feeds a matmul but was not fused: what its input chain is."""
    lines = []
    for n in graph.nodes:
        if n.op != "softmax" or not any(u.op == "matmul" for u in n.result.users):
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
    changed = rewrite_to_fixpoint(graph, RULES, notes=notes, counts=counts)
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

