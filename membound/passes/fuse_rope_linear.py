"""fuse-rope-linear: a q/k/v projection takes the rotary embedding of q and k into its epilogue.

```
// before: a Llama attention's projections after merge-linear (decode, S = 1)
%qkv = linear(%h, %w_qkv) : bf16[B, 1, 3072]
%q, %k, %v = split(%qkv) {dim=-1, sizes=[2048, 512, 512]} : ...
%qh = transpose(reshape(%q) {shape=[B, 1, 32, 64]}) {dim0=1, dim1=2} : bf16[B, 32, 1, 64]
%q_rot = add(mul(%qh, %cos), mul(cat(neg(slice(%qh, 32:64)), slice(%qh, 0:32)), %sin))  // HF's rotate_half
... the same for %k ...
// after
%cs = squeeze(%cos) {dims=[1]} : bf16[B, 1, 64]
%sn = squeeze(%sin) {dims=[1]} : bf16[B, 1, 64]
%qkv = linear_rope(%h, %w_qkv, %cs, %sn) {head_dim=64, rope_cols=2560} : bf16[B, 1, 3072]
%q, %k, %v = split(%qkv) ...   // %qh now reads rotated values; the rotation's nodes are gone
```

Matches HF's ``apply_rotary_pos_emb`` (``t * cos + rotate_half(t) * sin``, either operand order of each
``mul`` and of the ``add``; ``rotate_half(t) = cat(-t[..., D/2:], t[..., :D/2])``) on ``t =
transpose(reshape(part, [B, S, H, D]), 1, 2)`` where ``part`` is the projection's output or one of an
even-dim ``split`` of it, ``cos`` / ``sin`` ``[B', 1, S', D]`` (HF's ``unsqueeze_dim=1``, broadcast over the
heads) shared by every rotated part, of the projection's dtype. The rotated parts must be the first
outputs of the split (q, then k: merge-linear's order), so the rotated columns are a prefix the kernel
knows by one number (``rope_cols``). The weight is not touched: each program of the GEMV streams a head's
column pairs ``(j, j + D/2)`` as two tiles (``kernels/linear.py``, ``ROPE``) and stores them rotated.

Why: at decode (batch 1-8) the rotation is a few KB of work in a kernel of its own per layer (the H200 1.24B
step: 16 of its 133 launches, ``_horizontal_mul_neg_cat_add``). That kernel also writes k and v into the cache,
and the write stays a launch (``_horizontal_cache_write``), so the launch count is unchanged: what goes is the
rotation's work. H200 (session 12): 1.24B b1 step 0.873 vs 0.900 ms, 8B b1 4.274 vs 4.161, b8 equal.

When it fires: in the ``decode-rope`` pipeline (``MEMBOUND_DECODE_PIPELINE=decode-rope``, an A/B setting: the
H200 runs above were mixed), or any pipeline that lists it; where the cost model (``ctx.cost``) estimates
the fused form faster at the decode dims, or without a cost model in the GEMV range. A form not matched is
left alone; a match it declines is named in the pass log.

The projection's input may be anything, a norm's output too: in the ``decode-fused-rope`` pipeline this pass
runs before fuse-norm-linear, which then folds the norm in front of the ``linear_rope`` (its statistics form
``rms_norm_linear_rope_sumsq``: the norm in the prologue, the rotation in the epilogue of one GEMV).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from membound.ir import Graph, Node, Value
from membound.passes.cse import attrs_key
from membound.passes.gemv_regime import beyond_gemv, decode_dims, seconds, seconds_of
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import heads_view, is_2d_param, is_single_use, static_int


@dataclass
class Rope:
    """One matched rotation: ``add`` is its result node, ``t`` the rotated input, ``nodes`` everything it
    replaces (the add first), ``part`` the projection output (or split output) ``t`` is a view of."""

    add: Node
    t: Value
    cos: Value
    sin: Value
    nodes: list[Node]
    part: Value
    head_dim: int


def _users(v: Value) -> set[int]:
    return {id(u) for u in v.users}


def _last_dim(node: Node, v: Value) -> bool:
    dim = node.attrs.get("dim")
    return dim in (-1, v.rank - 1)


def _rotate_half(v: Value, t: Value, d: int) -> Optional[list[Node]]:
    """The nodes of ``cat(neg(t[..., d/2:]), t[..., :d/2])`` producing ``v`` (single-use chain), else None."""
    cat = v.producer
    if cat is None or cat.op != "cat" or len(cat.inputs) != 2 or not _last_dim(cat, v):
        return None
    neg = cat.inputs[0].producer
    if neg is None or neg.op != "neg" or not is_single_use(cat.inputs[0]):
        return None
    hi, lo = neg.inputs[0].producer, cat.inputs[1].producer
    half = d // 2
    for node, start, end in ((hi, half, d), (lo, 0, half)):
        if node is None or node.op != "slice" or node.inputs[0] is not t or not _last_dim(node, t):
            return None
        if (node.attrs.get("start"), node.attrs.get("end"), node.attrs.get("step", 1)) != (start, end, 1):
            return None
        if not is_single_use(node.results[0]):
            return None
    return [cat, neg, hi, lo]


def _mul_of(v: Value) -> Optional[tuple[Node, Value, Value]]:
    node = v.producer
    if node is None or node.op != "mul" or len(node.inputs) != 2 or not is_single_use(v):
        return None
    return node, node.inputs[0], node.inputs[1]


def match_rope(add: Node) -> Optional[Rope]:
    """The rotation ``add`` computes, when it is HF's ``t * cos + rotate_half(t) * sin`` over a view of a
    projection's output (see the module docstring), else None."""
    if add.op != "add" or len(add.inputs) != 2:
        return None
    for a, b in (add.inputs, add.inputs[::-1]):
        first, second = _mul_of(a), _mul_of(b)
        if first is None or second is None:
            continue
        for t, cos in (first[1:], first[1:][::-1]):
            d = static_int(t.shape[-1]) if t.rank else None
            if d is None or d % 2 or t.rank != 4:
                continue
            for rot, sin in (second[1:], second[1:][::-1]):
                chain = _rotate_half(rot, t, d)
                if chain is None:
                    continue
                # t is read by the plain product and the two halves' slices, nothing else (nor returned: after
                # the fusion its values are the rotated ones)
                graph = add.graph
                if len(_users(t)) != 3 or (graph is not None and any(o is t for o in graph.outputs)):
                    continue
                found = _view_of_part(t, d)
                if found is None or not _tables_ok(cos, sin, t):
                    continue
                return Rope(add, t, cos, sin, [add, first[0], second[0], *chain], found, d)
    return None


def _view_of_part(t: Value, d: int) -> Optional[Value]:
    """``part`` when ``t = transpose(reshape(part, [B, S, H, d]), 1, 2)`` with single-use links, else None."""
    found = heads_view(t)
    if found is None or static_int(found[1][1].results[0].shape[-1]) != d:  # (the reshape's head dim)
        return None
    return found[0]


def _tables_ok(cos: Value, sin: Value, t: Value) -> bool:
    """cos / sin ``[B', 1, S', D]`` of t's dtype (broadcast over the heads), the same shape."""
    for v in (cos, sin):
        if v.rank != 4 or v.dtype != t.dtype or v.shape[1] != 1 or v.shape[-1] != t.shape[-1]:
            return False
    return cos.shape == sin.shape


@dataclass
class Site:
    """A projection whose output (or split outputs) feed rotations: the rotated columns are a prefix."""

    lin: Node
    ropes: list[Rope]
    rope_cols: int
    split: Optional[Node]


def _site(lin: Node, ropes: list[Rope]) -> tuple[Optional[Site], str]:
    """The fusion site of ``lin`` and the rotations over its output, or (None, why not)."""
    out = lin.results[0]
    d = ropes[0].head_dim
    if any(r.head_dim != d for r in ropes):
        return None, "the rotated parts have different head dims"
    if any(not _same(r.cos, ropes[0].cos) or not _same(r.sin, ropes[0].sin) for r in ropes):
        return None, "the rotated parts use different cos / sin tables"
    by_part = {id(r.part): r for r in ropes}
    if len(by_part) != len(ropes):
        return None, "a part is rotated twice"
    if len(ropes) == 1 and ropes[0].part is out:
        n = static_int(out.shape[-1])
        return (Site(lin, ropes, n, None), "") if n is not None else (None, "the columns are not static")
    split = out.users[0] if is_single_use(out) else None
    if split is None or split.op != "split" or not _last_dim(split, out):
        return None, "the projection's output is neither rotated whole nor split along its columns"
    cols = 0
    for i, part in enumerate(split.results):
        if id(part) not in by_part:
            if any(id(p) in by_part for p in split.results[i:]):
                return None, "the rotated parts are not a prefix of the split (q and k first)"
            break
        size = static_int(part.shape[-1])
        if size is None or size % d:
            return None, "a rotated part is not whole heads of static size"
        cols += size
    return Site(lin, ropes, cols, split), ""


def _declines(ctx: PassContext, site: Site, cs: Value, sn: Value) -> Optional[str]:
    """None when fusing pays, else why not (for the pass log)."""
    x = site.lin.inputs[0]
    if ctx.cost is None:
        return beyond_gemv(x, "the projection is not a GEMV")
    dims = decode_dims(ctx, (x, site.ropes[0].cos))
    apart = seconds(ctx, site.lin, dims) + sum(seconds(ctx, n, dims) for r in site.ropes for n in r.nodes)
    inputs = [x, site.lin.inputs[1], cs, sn, *site.lin.inputs[2:]]
    together = seconds_of(ctx, "linear_rope", inputs, {"head_dim": site.ropes[0].head_dim,
                                                       "rope_cols": site.rope_cols}, dims)
    if together >= apart:
        return f"the cost model says {apart:.3g}s apart and {together:.3g}s fused"
    return None


def _same(a: Value, b: Value, depth: int = 4) -> bool:
    """The same value, or the same op with the same attributes (told apart as CSE tells them) over the same values
    (a table unsqueezed once for q and once for k, as the decode pipeline, which runs no CSE, leaves it)."""
    if a is b:
        return True
    pa, pb = a.producer, b.producer
    if depth == 0 or pa is None or pb is None or pa.op != pb.op or attrs_key(pa) != attrs_key(pb):
        return False
    if len(pa.inputs) != len(pb.inputs) or a.index != b.index:
        return False
    return all(_same(x, y, depth - 1) for x, y in zip(pa.inputs, pb.inputs))


def _row_table(graph: Graph, v: Value) -> tuple[Value, Optional[Node]]:
    """``v`` (``[B', 1, S', D]``) as ``[B', S', D]``: the input of an ``unsqueeze(dim=1)`` that made it, else a new
    ``squeeze(dims=[1])`` node (returned, not yet placed)."""
    node = v.producer
    if node is not None and node.op == "unsqueeze" and node.attrs["dim"] % 4 == 1 and node.inputs[0].rank == 3:
        return node.inputs[0], None
    sq = graph.create_node("squeeze", [v], {"dims": [1]})
    return sq.results[0], sq


def _before(graph: Graph, a: Optional[Node], b: Node) -> bool:
    """``a`` (None: a graph input or parameter) comes before ``b`` in the node order."""
    return a is None or graph.nodes.index(a) < graph.nodes.index(b)


def _fuse(graph: Graph, ctx: PassContext, site: Site) -> bool:
    lin, first = site.lin, site.ropes[0]
    anchor = site.split or first.t.producer.inputs[0].producer  # the split, or the reshape of the whole output
    assert anchor is not None
    (cs, cs_node), (sn, sn_node) = _row_table(graph, first.cos), _row_table(graph, first.sin)
    # what the fused projection reads must be defined where it goes (before the projection's first reader)
    needed = [(cs if cs_node is None else first.cos).producer, (sn if sn_node is None else first.sin).producer]
    if not all(_before(graph, n, anchor) for n in needed):
        ctx.note(f"%{lin.results[0].name} not fused: cos / sin are computed after the projection is read")
        return False
    reason = _declines(ctx, site, cs, sn)
    if reason is not None:
        ctx.note(f"%{lin.results[0].name} not fused: {reason}")
        return False
    for node in (cs_node, sn_node):
        if node is not None:
            graph.insert_before(anchor, node)
    x, w, *bias = lin.inputs
    fused = graph.insert_before(anchor, graph.create_node(
        "linear_rope", [x, w, cs, sn, *bias], {"head_dim": first.head_dim, "rope_cols": site.rope_cols}))
    graph.replace_all_uses(lin.results[0], fused.results[0])
    for r in site.ropes:
        graph.replace_all_uses(r.add.results[0], r.t)  # t is a view of the rotated output now
        for node in r.nodes:
            graph.erase_node(node)
    graph.erase_node(lin)
    return True


@register_pass("fuse-rope-linear")
def fuse_rope_linear(graph: Graph, ctx: PassContext) -> bool:
    """Fold HF's rotary embedding of q and k into the q/k/v projection (``linear_rope``)."""
    by_lin: dict[int, tuple[Node, list[Rope]]] = {}
    for node in list(graph.nodes):
        rope = match_rope(node)
        if rope is None:
            continue
        part = rope.part
        src = part.producer
        lin = src.inputs[0].producer if src is not None and src.op == "split" else src
        if lin is None or lin.op != "linear" or not is_2d_param(lin.inputs[1]):
            ctx.note(f"%{node.results[0].name}: a rotation not over a projection's output, left alone")
            continue
        by_lin.setdefault(id(lin), (lin, []))[1].append(rope)
    fused = 0
    for lin, ropes in by_lin.values():
        site, why = _site(lin, ropes)
        if site is None:
            ctx.note(f"%{lin.results[0].name} not fused: {why}")
            continue
        fused += _fuse(graph, ctx, site)
    if fused:
        ctx.note(f"linear_rope: {fused}")
    return fused > 0
