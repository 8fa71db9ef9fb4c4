"""insert-kv-cache: turn a cache-less causal decoder into a *step* graph over a static KV cache.

Research models (and the built-in ones) recompute the whole sequence for every new token. This pass
rewrites the full-sequence graph into a step graph whose ``S`` means "new tokens this step": each
causal self-attention writes its new K/V into a state buffer and attends over the cache, positions
come from an input, and the logits are computed only for one position per row.

```
// before (one layer, after canonicalize + fuse-attention)
graph @llama(%ids: i64[B, S]) params(...) {
  %p = arange() {start=0, end=S, step=1, dtype=f32} : f32[S]
  ...  rope tables from %p, q/k/v from %ids ...
  %o = attention(%q, %k, %v) {causal=true, scale=none} : f32[B, 4, S, 16]
  ...
  return %logits                                              // f32[B, S, V]
}
// after
graph @llama(%ids: i64[B, S], %positions: i64[B, S], %last_index: i64[B]) params(...)
    state(%cache.k.0: f32[B, 2, T, 16], %cache.v.0: f32[B, 2, T, 16]) {
  %p  = cast(%positions) {dtype=f32} : f32[B, S]              // was arange(S): per-row positions
  ...
  %kc = cache_write(%cache.k.0, %k, %positions) {dim=2} : f32[B, 2, T, 16]
  %vc = cache_write(%cache.v.0, %v, %positions) {dim=2} : f32[B, 2, T, 16]
  %o  = cached_attention(%q, %kc, %vc, %positions) {scale=none} : f32[B, 4, S, 16]
  ...
  %h1 = index(%h, %rows, %last_index) {dims=[0, 1]} : f32[B, 64]   // only the position we sample
  return %logits                                              // f32[B, 1, V]
}
```

A sliding-window layer (``window=W``) gets a *ring* cache of ``W`` slots instead of ``T``: its writes go to
``remainder(%positions, W)`` and its cached attention also takes the step's new ``%k, %v`` (the prefill
attends over those; see ``ir/ops/kv_cache.py``). Models alternating local and global layers get a
ring per local layer and a ``T``-slot cache per global one:

```
  %w  = constant() {value=4, dtype=i64} : i64[]
  %sl = remainder(%positions, %w) : i64[B, S]
  %kc = cache_write(%cache.k.1, %k, %sl) {dim=2} : f32[B, 2, 4, 16]
  %vc = cache_write(%cache.v.1, %v, %sl) {dim=2} : f32[B, 2, 4, 16]
  %o  = cached_attention(%q, %kc, %vc, %positions, %k, %v) {scale=none, window=4, softcap=none, alibi=none}
        : f32[B, 4, S, 16]
```

Prefill is this graph with the prompt (``S`` = prompt length, positions ``0..len-1``); decode is the
same graph specialised to ``S = 1`` (``Graph.specialized({S: 1})``), so one decode step costs O(1)
recompute: its bytes are the weights plus K/V for ``T`` cached positions, linear in ``T``.

When it fires: when it can prove the model is causal and position-consistent, else it leaves the
graph unchanged and says why in the pass log:
- every attention is self-attention over ``S`` and causal (``causal=true``, or a mask that does not
  depend on the inputs and is proven by ``mask_form`` to be the lower triangle, or a sliding-window
  band ``0 <= i - j < W``, whose window the cached attention then carries: ``{window=W}``, or causal within
  chunks of C positions, ``i // C == j // C``: ``{chunk=C}``, Llama 4's local layers). A mask
  it cannot prove refuses the whole rewrite with the reason: a dropped mask would decode wrong
  tokens silently;
- no op on the data path mixes sequence positions other than attention and causal windows (no reduction,
  softmax, sort or matmul contraction over a dim containing ``S``; no shift along it: a ``slice`` that keeps
  ``S``-many slots but not the whole dim, a ``cat`` joining pieces along it; routing ops over the flattened
  token axis ``B*S`` — MoE dispatch — are token-wise and allowed). The one shift it knows is a **causal
  window**: ``cat(zeros[a], X, zeros[r])`` along ``S`` (a causal depthwise convolution's padding, LFM2's short
  convolutions; a token shift ``cat(zeros[1], X[:S-1])``), read by slices and elementwise ops until a value is
  ``S`` long again, proven to read no later position. Each such window gets a ring state of ``a + 1`` slots
  (``conv_state.i``, ``meta["conv_states"]``): the step writes ``X`` into it and reads the ``a`` positions
  before its first token back in place of the zeros (a **recurrence** over the tokens, ``linear_scan`` along
  ``S``: a Mamba layer's state, or ``linear_attention``: a matrix state per head, Mamba-2's, a gated DeltaNet's,
  likewise gets ``scan_state.i``, below):

```
  %cs = cache_write(%conv_state.0, %x, remainder(%positions, 3)) {dim=2} : f32[B, 64, 3]
  %past = where(%positions[:, :1] + [-2, -1] >= 0, gather(%cs, ...) {dim=2}, 0.0) : f32[B, 64, 2]
  %h  = cat(%past, %x, %zeros) {dim=2} : f32[B, 64, S + 4]        // was cat(%zeros, %x, %zeros)
  // linear_scan(%a, %b) {dim=2} over [B, 96, S, 4]: started from the row's state (zero at position 0), its h at
  // each row's last real token written back
  %init = where(%positions[:, :1] == 0, 0.0, %scan_state.0) : f32[B, 96, 1, 4]
  %h    = linear_scan(%a, %b, %init) {dim=2} : f32[B, 96, S, 4]
  %ss   = cache_write(%scan_state.0, gather(%h, %last_index) {dim=2}, 0) {dim=2} : f32[B, 96, 1, 4]
```
- positions enter only as ``arange(0, S)`` (RoPE tables, learned position embeddings, a table's rows
  gathered at them: GPT-J's ``embed_positions[position_ids]``, XGLM's ``index_select``), as a count
  ``cumsum(ones, dim=S)`` (OPT's learned positions), or as a table's rows ``c .. c + S - 1`` read by slicing
  (minGPT's ``pos_emb[:, :S, :]``: its rows at positions + c); any other scan, reduction or ``S``-long slice
  on the way to the outputs refuses the rewrite, naming the op;
- the logits are ``[B, S, V]`` (each row's last position is picked before the position-wise tail), or the model
  picks its last token itself with a constant ``[-1]`` (nanoGPT's ``x[:, [-1], :]``): that pick becomes each row's
  last position.
This is not a cost-model decision: caching is what makes a token cost O(1) instead of O(S).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Optional

import sympy
import torch

from membound.ir import Graph, Node, Value, get_op
from membound.ir.ops.attention import attention_parts
from membound.ir.types import B, S, T, TensorType, dims_equal, is_static
from membound.passes.manager import PassContext, register_pass
from membound.passes.mask_form import mask_form


class NotCacheable(Exception):
    """The model cannot be proven causal and position-consistent; the message says why."""


@dataclass
class _Plan:
    attentions: list[Node]
    windows: list[Optional[int]]         # per attention: the sliding window its cached form carries
    data: set[int]                       # ids of nodes on the data path (reachable from graph inputs)
    sources: dict[int, str]              # id(node) -> kind of position source
    # id(slice node) -> (dim, first row): a table's rows c .. c + S - 1 read by slicing (minGPT's pos_emb[:, :S]),
    # which are its rows at positions + c
    tables: dict[int, tuple[int, int]] = field(default_factory=dict)
    # id(index node) of the model's own last-token selection (nanoGPT's x[:, [-1], :]): each row's last position
    last_token: set[int] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    chunks: list[Optional[int]] = field(default_factory=list)  # per attention: its chunk size (Llama 4), or None
    # id(cat node) -> the history it zero-pads (a causal convolution's left padding, a token shift), in graph order
    histories: dict[int, "_History"] = field(default_factory=dict)
    shifted: set[int] = field(default_factory=set)  # ids of the nodes computing on those padded windows
    scans: list[Node] = field(default_factory=list)  # linear_scan / linear_attention along S: each keeps its state


@dataclass
class _History:
    """``cat(zeros[a], X, zeros[r])`` along the sequence dim ``dim`` of ``X`` (or of ``X[:S-1]``): the left padding of
    a causal convolution (LFM2's and the state-space hybrids' short convolutions, ``conv1d(padding=k-1)[..., :S]``),
    or a token shift. The ``a`` zeros stand for the ``a`` positions before the step's first token: at a step that
    does not start at position 0 they are ``X`` at those positions, which a ring state of ``a + 1`` slots keeps."""
    cat: Node
    base: Value   # X: [B, ..., S, ...], its dims other than the batch and the sequence static
    pad: int      # a
    dim: int


STATE_INPLACE_ENV = "MEMBOUND_STATE_INPLACE"


def state_in_place() -> bool:
    """A ``linear_attention`` layer's decode reads and writes its state once (``linear_attention_state``), unless
    ``MEMBOUND_STATE_INPLACE=0``."""
    return os.environ.get(STATE_INPLACE_ENV, "1") != "0"


# the recurrences over the tokens whose last state a row keeps (``scan_state.i``): op -> its inputs without the initial
# state (a scan that already has one is not cached)
_SCANS = {"linear_scan": 2, "linear_attention": 5}


def _dims_reduced(node: Node) -> list[int]:
    """The dims of its first input that ``node`` mixes (the op's ``reduces`` trait)."""
    reduces = get_op(node.op).reduces
    if reduces is None or not node.inputs:
        return []
    return list(reduces(node.attrs, node.inputs[0].rank))


def _analyze(g: Graph) -> _Plan:
    seq_inputs = [v for v in g.inputs if v.rank >= 2 and v.shape[0] == B and v.shape[1] == S]
    if not seq_inputs:
        pinned = [v for v in g.inputs if v.rank >= 2 and is_static(v.shape[1])]
        if pinned:
            raise NotCacheable(f"the capture pinned the sequence length of %{pinned[0].name} to {pinned[0].shape[1]} "
                               f"({pinned[0].type}): the model's code loops or branches on it in a way torch.export "
                               f"could not keep symbolic (a Python loop over the tokens, as Mamba's selective scan), "
                               f"so there is no graph for any other number of new tokens")
        raise NotCacheable(f"no graph input has shape [B, S, ...] (inputs: {[str(v) for v in g.inputs]})")
    data: set[int] = set()
    for n in g.nodes:
        if any(v.kind == "input" or (v.producer is not None and id(v.producer) in data) for v in n.inputs):
            data.add(id(n))
    attentions = [n for n in g.nodes if n.op == "attention"]
    scans = [n for n in g.nodes if n.op in _SCANS and id(n) in data
             and _sequence_dim(n.inputs[0].shape[n.attrs["dim"] % n.inputs[0].rank])]
    if not attentions and not scans:
        raise NotCacheable("no attention op (after fuse-attention) and no recurrence over the tokens: nothing to "
                           "cache")
    plan = _Plan(attentions, [a.attrs["window"] for a in attentions], data, {},
                 chunks=[a.attrs.get("chunk") for a in attentions])
    for n in scans:
        x, d = n.results[-1], n.attrs["dim"] % n.inputs[0].rank  # linear_scan's every h, linear_attention's state
        if len(n.inputs) > _SCANS[n.op] or x.shape[0] != B or d == 0 \
                or not all(is_static(e) for i, e in enumerate(x.shape) if i not in (0, d)):
            raise NotCacheable(f"{n.op} at %{n.results[0].name} to {x.type} along dim {d}: its state is kept only "
                               f"for [B, ..., S, ...] with the other dims static and no initial state of its own")
        plan.scans.append(n)
    for i, a in enumerate(attentions):
        q, k, v = a.inputs[:3]
        if not (q.shape[2] == S and k.shape[2] == S and v.shape[2] == S):
            raise NotCacheable(f"attention #{i} is not self-attention over the sequence S "
                               f"(q {q.type}, k {k.type}): cross-attention is not cached")
        mask = attention_parts(a)[3]
        if a.attrs["causal"] and mask is None:
            continue
        if mask is None:
            raise NotCacheable(f"attention #{i} is bidirectional (causal=false, no mask): a token would see "
                               f"later tokens, so a KV cache would change the result")
        if mask.producer is not None and id(mask.producer) in data or mask.kind == "input":
            raise NotCacheable(f"attention #{i}: its mask depends on the inputs (a padding mask?); "
                               f"pass no attention_mask and let generate() handle lengths")
        form = mask_form(g, mask)
        if isinstance(form, str):
            raise NotCacheable(f"attention #{i}: its mask is not proven causal: {form}")
        plan.windows[i], plan.chunks[i] = form.window, form.chunk
        if form.window is not None:
            plan.notes.append(f"attention #{i}: causal mask with a sliding window of {form.window} positions "
                              f"carried onto cached_attention")
        if form.chunk is not None:
            plan.notes.append(f"attention #{i}: causal mask within chunks of {form.chunk} positions carried onto "
                              f"cached_attention")
    _find_histories(g, plan)
    exempt = {id(a) for a in attentions} | {id(n) for n in plan.scans}  # they mix positions, and are cached
    for n in g.nodes:
        if id(n) not in data or id(n) in exempt or id(n) in plan.shifted:
            continue
        x = n.inputs[0] if n.inputs else None
        for d in _dims_reduced(n):
            dim = x.shape[d]
            if S in dim.free_symbols:
                if n.op in ("sort", "topk", "argmax") and B in dim.free_symbols:
                    plan.notes.append(f"{n.op} over the flattened token axis {dim} treated as token-wise routing")
                    continue
                raise NotCacheable(f"{n.op} at %{n.results[0].name} reduces over the sequence dim ({dim}): a "
                                   f"sequence-wide op, so the model is not position-consistent")
        if n.op == "matmul" and S in n.inputs[0].shape[-1].free_symbols:
            raise NotCacheable(f"matmul at %{n.results[0].name} contracts over the sequence dim "
                               f"({n.inputs[0].shape[-1]}): tokens are mixed outside attention")
        if _selects_last_token(g, n):
            plan.last_token.add(id(n))
            continue
        moved = _moves_positions(n)
        if moved:
            raise NotCacheable(f"{n.op} at %{n.results[0].name} {moved}: a position would read another position's "
                               f"value (a causal convolution or a token shift), which the KV cache does not hold")
    for n in g.nodes:
        if id(n) in data:
            continue
        if n.op == "arange" and n.attrs["start"] == 0 and n.attrs["step"] == 1 and n.attrs["end"] == S:
            plan.sources[id(n)] = "arange"
        elif _counts_positions(n):
            plan.sources[id(n)] = "count"
        elif (table := _table_rows_at_positions(n)) is not None:
            plan.tables[id(n)] = table
    # what stays live past the attentions' masks must not compute on the sequence in any other way: a scan or
    # reduction over S off the data path (a position formula this pass does not know) would be specialised to
    # S = 1 at decode and give every step the first position's value, a silent wrong answer
    live = _live_without_masks(g, {id(a): i for i, a in enumerate(attentions)})
    for n in g.nodes:
        if id(n) in data or id(n) not in live or id(n) in plan.sources or id(n) in plan.tables:
            continue
        if n.op == "slice" and S in n.results[0].shape[n.attrs["dim"] % n.results[0].rank].free_symbols:
            raise NotCacheable(f"slice at %{n.results[0].name} takes {n.results[0].shape[n.attrs['dim']]} slots of "
                               f"{n.inputs[0].type} along dim {n.attrs['dim']} in a form this pass does not know (it "
                               f"knows rows c .. c + S - 1 of a table whose other leading dims are 1): decoding would "
                               f"read the first slots at every step")
        for d in _dims_reduced(n):
            dim = n.inputs[0].shape[d]
            if S in dim.free_symbols:
                raise NotCacheable(f"{n.op} at %{n.results[0].name} computes positions over the sequence dim "
                                   f"({dim}) in a form this pass does not know (it knows arange(0, S) and a "
                                   f"cumsum of ones along S): decoding it per row could be wrong")
    return plan


def _find_histories(g: Graph, plan: _Plan) -> None:
    """Find the causal windows over the tokens (``_History``) and prove what computes on them causal.

    Each value derived from a padded ``cat`` is tracked with the range ``[lo, hi]`` of ``X``'s positions its entry
    ``i`` along the sequence dim reads (``i + lo .. i + hi``): the ``cat`` shifts by ``-a``, a ``slice`` starting at
    ``j`` by ``+j``, elementwise ops join their operands' ranges. Such a value ends the window where it is ``S`` long
    again: then ``hi <= 0`` (no later position is read) makes it an ordinary per-position value, which the step
    computes from the step's tokens and the ring's last ``a`` positions. Anything else that reads a padded window
    refuses the cache, naming the op."""
    ranges: dict[int, tuple[int, int, int]] = {}  # id(value) -> (lo, hi, its sequence dim)
    for n in g.nodes:
        if id(n) not in plan.data:
            continue
        if n.op == "cat" and len(n.inputs) > 1 and not any(id(v) in ranges for v in n.inputs):
            history = _history(n, plan.data)
            if history is None:
                continue
            plan.histories[id(n)] = history
            plan.shifted.add(id(n))
            if history.base is not n.inputs[1]:  # X[:S-1], read by the padded cat alone: part of the shift
                plan.shifted.add(id(n.inputs[1].producer))
            ranges[id(n.result)] = (-history.pad, -history.pad, history.dim)
            continue
        inside = [v for v in n.inputs if id(v) in ranges]
        if not inside:
            continue
        out = n.results[0]
        if n.op == "slice":
            lo, hi, d = ranges[id(n.inputs[0])]
            start = sympy.sympify(n.attrs["start"])
            if n.attrs["dim"] % out.rank == d:
                if n.attrs["step"] != 1 or not is_static(start):
                    raise NotCacheable(f"slice at %{out.name} takes a padded window of the tokens with start {start} "
                                       f"and step {n.attrs['step']}; only a static start and step 1 are proven causal")
                lo, hi = lo + int(start), hi + int(start)
        elif get_op(n.op).kind == "elementwise":
            spans, dims = [], set()
            for v in n.inputs:
                if id(v) in ranges:
                    vlo, vhi, vd = ranges[id(v)]
                    spans.append((vlo, vhi))
                    dims.add(vd + out.rank - v.rank)
            (d,) = dims if len(dims) == 1 else (None,)
            if d is None:
                raise NotCacheable(f"{n.op} at %{out.name} joins padded windows of the tokens along different dims")
            for v in n.inputs:
                if id(v) in ranges:
                    continue
                k = d - (out.rank - v.rank)
                if k < 0 or dims_equal(v.shape[k], 1):
                    continue  # broadcast along the tokens: the same for every position
                if dims_equal(v.shape[k], S) and (v.kind == "input" or id(v.producer) in plan.data):
                    spans.append((0, 0))  # the step's tokens themselves
                    continue
                raise NotCacheable(f"{n.op} at %{out.name} combines a padded window of the tokens with %{v.name} "
                                   f"({v.type}) in a form this pass does not know")
            lo, hi = min(a for a, _ in spans), max(b for _, b in spans)
        else:
            v = inside[0]
            raise NotCacheable(f"{n.op} at %{out.name} reads a padded window of the tokens (%{v.name}: {v.type}) in a "
                               f"form this pass does not know (it knows slices along the tokens and elementwise ops "
                               f"until the window is S long again)")
        plan.shifted.add(id(n))
        if dims_equal(out.shape[d], S):
            if hi > 0:
                raise NotCacheable(f"{n.op} at %{out.name} reads {hi} position(s) after its own (a convolution or "
                                   f"shift over later tokens): a decode step does not have them")
            continue  # causal, S long: an ordinary per-position value from here on
        ranges[id(out)] = (lo, hi, d)
    for v in g.outputs:
        if id(v) in ranges:
            raise NotCacheable(f"the output %{v.name} is a padded window of the tokens ({v.type}), not one value per "
                               f"position")


def _history(n: Node, data: set[int]) -> Optional[_History]:
    """``n`` as ``cat(zeros[a], X, zeros[r])`` (or ``X[:S-1]`` in the middle: a token shift) along a dim holding
    the sequence, ``X`` a data value ``[B, ..., S, ...]``; else None."""
    out = n.results[0]
    d = n.attrs["dim"] % out.rank
    if not _sequence_dim(out.shape[d]) or len(n.inputs) not in (2, 3):
        return None
    first, middle, rest = n.inputs[0], n.inputs[1], n.inputs[2:]
    if not all(_zero_padding(v, d) for v in (first, *rest)) or middle.producer is None \
            or id(middle.producer) not in data:
        return None
    base = middle
    if not dims_equal(middle.shape[d], S):
        p = middle.producer
        if not (p.op == "slice" and p.attrs["dim"] % middle.rank == d and p.attrs["start"] == 0
                and p.attrs["step"] == 1 and dims_equal(middle.shape[d], S - 1)
                and dims_equal(p.inputs[0].shape[d], S)):
            return None
        base = p.inputs[0]
        if len({id(u) for u in middle.users}) != 1:
            return None
    if base.rank < 2 or base.shape[0] != B or d == 0 \
            or not all(is_static(x) for i, x in enumerate(base.shape) if i not in (0, d)):
        return None
    return _History(n, base, int(first.shape[d]), d)


def _zero_padding(v: Value, d: int) -> bool:
    """``v`` is a ``full`` of zeros, statically sized along ``d``."""
    p = v.producer
    return (p is not None and p.op == "full" and not isinstance(p.attrs.get("value"), bool)
            and p.attrs.get("value") == 0 and is_static(v.shape[d]) and int(v.shape[d]) > 0)


def _selects_last_token(g: Graph, n: Node) -> bool:
    """``n`` takes the last position of a ``[B, S, ...]`` value with a constant index ``[-1]`` (nanoGPT's
    ``x[:, [-1], :]`` before its LM head at inference)."""
    if n.op != "index" or len(n.inputs) != 2 or tuple(n.attrs["dims"]) != (1,) or n.inputs[0].rank < 2 \
            or n.inputs[0].shape[0] != B or n.inputs[0].shape[1] != S:
        return False
    idx = n.inputs[1]
    table = g.tensors.get(idx.name) if idx.kind == "param" else None
    return table is not None and table.numel() == 1 and int(table.reshape(-1)[0]) == -1


def _sequence_dim(d: Any) -> bool:
    """A dim holding the sequence per row (``S``, ``S + 2``), not the flattened token axis ``B*S`` (MoE dispatch
    moves tokens along that one token-wise)."""
    free = getattr(d, "free_symbols", set())
    return S in free and B not in free


def _moves_positions(n: Node) -> str:
    """How a data-path ``n`` moves values along a dim holding the sequence (empty: it does not): a ``slice`` whose
    result still spans the sequence but not the whole dim (``x[:, j : S + j]``, the taps of a causal convolution), a
    ``slice`` or ``select`` of fixed slots other than the last token (``x[:, :1]``: at decode the first slot is the
    current token), a ``cat`` that joins pieces along such a dim (``cat(zeros, x)``, a padding), or a gather along it
    (``x[:, idx]``, ``index_select``). The last token alone (``x[:, -1]``, ``x[:, -1:]``) is a selection, allowed."""
    if n.op == "slice":
        x, out = n.inputs[0], n.results[0]
        d = n.attrs["dim"] % x.rank
        size, length = x.shape[d], out.shape[d]
        if not _sequence_dim(size):
            return ""
        if S in length.free_symbols:
            if not (n.attrs["start"] == 0 and n.attrs["step"] == 1 and dims_equal(length, size)):
                return f"shifts the sequence dim ({size} -> slots {n.attrs['start']} to {n.attrs['end']})"
        elif not (dims_equal(length, 1) and dims_equal(n.attrs["start"], size - 1)):
            return (f"reads fixed slots {n.attrs['start']} to {n.attrs['end']} of the sequence dim ({size}), not the "
                    f"last token's")
    elif n.op == "select":
        x = n.inputs[0]
        size = x.shape[n.attrs["dim"] % x.rank]
        if _sequence_dim(size) and not dims_equal(n.attrs["index"], size - 1):
            return f"reads slot {n.attrs['index']} of the sequence dim ({size}), not the last token's"
    elif n.op == "cat" and len(n.inputs) > 1:
        d = n.attrs["dim"] % n.results[0].rank
        if _sequence_dim(n.results[0].shape[d]):
            return f"joins pieces along the sequence dim ({' + '.join(str(v.shape[d]) for v in n.inputs)})"
    elif n.op in ("index", "index_select", "gather") and n.inputs:
        x = n.inputs[0]
        dims = n.attrs["dims"] if n.op == "index" else (n.attrs["dim"],)
        if any(_sequence_dim(x.shape[d % x.rank]) for d in dims):
            return f"gathers along the sequence dim ({x.type})"
    return ""


def _table_rows_at_positions(n: Node) -> Optional[tuple[int, int]]:
    """``(dim, c)`` when ``n`` slices a table's rows ``c .. c + S - 1`` along ``dim`` (a static first row, step 1, the
    table's size along ``dim`` and the dims before it static, those before it 1): minGPT's ``pos_emb[:, :S]``,
    a learned position table read by slicing; else None."""
    if n.op != "slice" or n.attrs["step"] != 1 or not is_static(sympy.sympify(n.attrs["start"])):
        return None
    x, out = n.inputs[0], n.results[0]
    d = n.attrs["dim"] % x.rank
    if not dims_equal(out.shape[d], S) or S in x.shape[d].free_symbols \
            or any(not dims_equal(x.shape[i], 1) for i in range(d)) or x.rank - d < 2:
        return None
    return d, int(n.attrs["start"])


def _counts_positions(n: Node) -> bool:
    """``cumsum(full(1), dim=S)`` over ``[1 or B, S]``: the positions ``1..S`` of every row (OPT counts its
    positions so, from a mask of ones: ``cumsum(mask, 1) * mask - 1``)."""
    if n.op != "cumsum" or n.inputs[0].producer is None or n.inputs[0].producer.op != "full":
        return False
    x, full = n.inputs[0], n.inputs[0].producer
    value = full.attrs.get("value")
    if isinstance(value, bool) or value != 1 or x.rank != 2 or x.shape[0] not in (1, B) or x.shape[1] != S:
        return False
    return n.attrs["dim"] % 2 == 1 and n.attrs.get("dtype") in (None, x.dtype)


# ---------------------------------------------------------------------------------------------
# rebuilding: position-derived values are "lifted" (an extra leading B dim: per-row positions)
# ---------------------------------------------------------------------------------------------

class _Builder:
    def __init__(self, old: Graph, plan: _Plan, prune_logits: bool) -> None:
        self.old, self.plan, self.prune = old, plan, prune_logits
        self.g = Graph(old.name)
        self.map: dict[int, Value] = {}
        self.lifted: set[int] = set()   # ids of NEW values that carry an extra leading B dim
        self.table_rows: list[int] = []  # rows left past the first row sliced, per table read by slicing
        self.picked_last = False  # the model picks its last token itself (plan.last_token): logits are [B, 1, V]
        self.ring_slots: dict[int, Value] = {}  # n -> remainder(positions, n): a ring's slots, built once per size
        self.first: Optional[Value] = None  # positions[:, :1], each row's first position this step, built once
        self.used: set[int] = set()  # the old graph's values something live reads (set when the graph is built)

    def call(self, op: str, *inputs: Value, **attrs: Any) -> Value:
        return self.g.call(op, *inputs, **attrs)

    # -- helpers on lifted values ---------------------------------------------------------------
    def unsqueeze_at1(self, v: Value, times: int) -> Value:
        for _ in range(times):
            v = self.call("unsqueeze", v, dim=1)
        return v

    def to_batch(self, new: Value, old: Value, rank: int, where: str) -> Value:
        """Merge a lifted value into a normal one of ``rank`` whose dim 0 is the batch."""
        ro = old.rank
        if ro < rank:
            return self.unsqueeze_at1(new, rank - ro - 1)
        if ro == rank and old.shape[0] == 1:
            return self.call("squeeze", new, dims=(1,))
        if ro == rank and old.shape[0] == B:
            # the value was broadcast to the batch before it met it (Llama 4's attention temperature,
            # ``scales.view(1, S, 1, 1).expand(B, S, 1, 1)``): batch row b takes row b's positions, the diagonal
            rows = self.call("arange", end=B)
            return self.call("index", new, rows, rows, dims=(0, 1))
        raise NotCacheable(f"position-dependent %{old.name}: {old.type} meets the batch at {where} in a way "
                           f"per-row positions cannot express")

    def lift_plain(self, new: Value) -> Value:
        """A position-independent value broadcast up to a lifted one (for cat and friends)."""
        v = self.call("unsqueeze", new, dim=0)
        return self.call("expand", v, shape=(B,) + tuple(new.shape))

    # -- the walk -------------------------------------------------------------------------------
    def build(self) -> Graph:
        old, g = self.old, self.g
        for v in old.inputs:
            self.map[id(v)] = g.add_input(v.name, v.type)
        positions = g.add_input("positions", TensorType(torch.int64, [B, S]))
        last_index = g.add_input("last_index", TensorType(torch.int64, [B])) if self.prune else None
        for v in old.params:
            self.map[id(v)] = g.add_param(v.name, v.type, old.tensors.get(v.name))
        for v in old.state:
            self.map[id(v)] = g.add_state(v.name, v.type, old.tensors.get(v.name))
        caches = []
        for i, a in enumerate(self.plan.attentions):
            k, v = a.inputs[1], a.inputs[2]
            # a sliding-window layer keeps only its window: a ring of W slots (position p in slot p mod W)
            window = self.plan.windows[i]
            slots = T if window is None else window
            kt = TensorType(k.dtype, [B, k.shape[1], slots, k.shape[3]])
            vt = TensorType(v.dtype, [B, v.shape[1], slots, v.shape[3]])
            caches.append((g.add_state(f"cache.k.{i}", kt), g.add_state(f"cache.v.{i}", vt)))
        histories = {}  # id(cat) -> its ring state (the last positions of the window's X)
        for i, (key, h) in enumerate(self.plan.histories.items()):
            shape = [B if j == 0 else (h.pad + 1 if j == h.dim else x) for j, x in enumerate(h.base.shape)]
            histories[key] = g.add_state(f"conv_state.{i}", TensorType(h.base.dtype, shape))
        scan_states = {}  # id(linear_scan or linear_attention) -> its state: the last h, [B, ..., 1, ...]
        for i, n in enumerate(self.plan.scans):
            d = n.attrs["dim"] % n.inputs[0].rank
            shape = [1 if j == d else x for j, x in enumerate(n.results[-1].shape)]
            scan_states[id(n)] = g.add_state(f"scan_state.{i}", TensorType(n.results[-1].dtype, shape))
        attention_index = {id(a): i for i, a in enumerate(self.plan.attentions)}
        live = _live_without_masks(old, attention_index)
        self.used = {id(v) for m in old.nodes if id(m) in live for v in m.inputs} | {id(v) for v in old.outputs}
        for n in old.nodes:
            if id(n) not in live:
                continue  # only feeds the masks of replaced attentions (cached_attention masks itself)
            if id(n) in attention_index:
                kc, vc = caches[attention_index[id(n)]]
                q, k, v = (self.normal(x, n) for x in n.inputs[:3])
                window = self.plan.windows[attention_index[id(n)]]
                slot, ring = positions, ()
                if window is not None:
                    slot, ring = self.slots_of(positions, window), (k, v)
                kw = self.call("cache_write", kc, k, slot, dim=2)
                vw = self.call("cache_write", vc, v, slot, dim=2)
                sinks = attention_parts(n)[4]
                extra = (*ring, self.map[id(sinks)]) if sinks is not None else ring  # ([Hq]: no position)
                self.map[id(n.result)] = self.call("cached_attention", q, kw, vw, positions, *extra,
                                                   scale=n.attrs["scale"], window=window, softcap=n.attrs["softcap"],
                                                   alibi=n.attrs["alibi"], sinks=sinks is not None,
                                                   chunk=self.plan.chunks[attention_index[id(n)]])
            elif id(n) in self.plan.tables:
                self.table_rows_at(n, positions)
            elif id(n) in histories:
                self.history(n, histories[id(n)], positions)
            elif id(n) in scan_states and last_index is not None:
                self.scan(n, scan_states[id(n)], positions, last_index)
            elif id(n) in self.plan.last_token and last_index is not None:
                # the model's own last-token pick: each row's last position (rows may be padded), [B, 1, ...]
                x = self.normal(n.inputs[0], n)
                rows = self.call("arange", start=0, end=B, step=1, dtype=torch.int64)
                picked = self.call("unsqueeze", self.call("index", x, rows, last_index, dims=(0, 1)), dim=1)
                self.map[id(n.result)] = picked
                self.picked_last = True
            elif id(n) in self.plan.sources:
                dtype = n.result.dtype
                p = positions if dtype == torch.int64 else self.call("cast", positions, dtype=dtype)
                if self.plan.sources[id(n)] == "arange":
                    self.map[id(n.result)] = p
                    self.lifted.add(id(p))
                else:  # "count": each row's 1..S is its positions + 1, [B, S], dim 0 already the batch (not lifted)
                    self.map[id(n.result)] = self.call("add", p, self.call("constant", value=1, dtype=dtype))
            else:
                self.emit(n)
        outs = [self.normal(v, None) for v in old.outputs]
        steps = (S, 1) if self.picked_last else (S,)
        logits = [o for o in outs if o.rank == 3 and o.shape[0] == B and o.shape[1] in steps
                  and o.dtype.is_floating_point]
        if not logits:
            raise NotCacheable(f"no output of shape [B, S, V] to sample from (outputs: {[str(o.type) for o in outs]})")
        out = logits[0]
        if last_index is not None and out.shape[1] == S:
            out = _sink_last_token(g, out, last_index)
        g.set_outputs([out])
        g.meta["kv_cache"] = {
            "caches": [(k.name, v.name) for k, v in caches],
            # ring caches of sliding-window layers: state name -> slots (the window); the others hold T
            "rings": {c.name: w for (kc, vc), w in zip(caches, self.plan.windows) if w is not None for c in (kc, vc)},
            "token_input": old.inputs[0].name,
            "positions_input": "positions",
            "last_index_input": last_index.name if last_index is not None else None,
            "max_positions": self._max_positions(),
            # ring states of causal convolutions and token shifts: state name -> slots (the window's padding + 1)
            "conv_states": {r.name: self.plan.histories[key].pad + 1 for key, r in histories.items()},
            # the recurrences' last states (linear_scan, linear_attention): one per row, whatever the length
            "scan_states": [v.name for v in scan_states.values()],
        }
        return g

    def slots_of(self, positions: Value, n: int) -> Value:
        """``remainder(positions, n)``: the slots of a ring of ``n`` (a sliding window's keys, a convolution's
        inputs)."""
        if n not in self.ring_slots:
            self.ring_slots[n] = self.call("remainder", positions, self.call("constant", value=n, dtype=torch.int64))
        return self.ring_slots[n]

    def first_position(self, positions: Value) -> Value:
        """``positions[:, :1]`` ``[B, 1]``: where each row's step starts (0: a prefill)."""
        if self.first is None:
            self.first = self.call("slice", positions, dim=1, start=0, end=1, step=1)
        return self.first

    def scan(self, n: Node, state: Value, positions: Value, last_index: Value) -> None:
        """A recurrence over the tokens from the state the row's last step left (zero for a step from position 0: a
        prefill). ``linear_scan(a, b)``: each row's ``h`` at its last real token (``last_index``) written back as its
        state. ``linear_attention``: the tokens past a row's last real one (a padded prefill) made no-ops (decay 1,
        beta 0), so its last state is the state at that token: ``linear_attention_state`` reads the state and
        writes it back in place (with ``MEMBOUND_STATE_INPLACE=0``, or where the graph reads the op's last state
        itself: ``where`` / ``linear_attention`` / ``cache_write``)."""
        ins = [self.normal(v, n) for v in n.inputs]
        d, rank = n.attrs["dim"] % ins[0].rank, state.rank
        if n.op == "linear_attention":
            q, a, k, v, beta = ins
            steps = self.call("arange", start=0, end=S, step=1, dtype=torch.int64)
            live = self.call("le", self.call("reshape", steps, shape=(1, S)), self.call("reshape", last_index,
                                                                                        shape=(B, 1)))  # [B, S]

            def along(x: Value) -> Value:  # live as [B, .., S, .., (1)] for x
                return self.call("reshape", live, shape=tuple(B if j == 0 else (S if j == d else 1)
                                                              for j in range(x.rank)))

            one, zero = (self.call("constant", value=c, dtype=a.dtype) for c in (1.0, 0.0))
            a = self.call("where", along(a), a, one)
            beta = self.call("where", along(beta), beta, zero)
            if state_in_place() and id(n.results[1]) not in self.used:
                self.map[id(n.results[0])] = self.call("linear_attention_state", q, a, k, v, beta, state,
                                                       self.first_position(positions), **n.attrs)
                return
            y, last = self.g.call_multi("linear_attention", q, a, k, v, beta, self.fresh_or(state, positions),
                                        **n.attrs)
            self.map[id(n.results[0])], self.map[id(n.results[1])] = y, last
        else:
            h = self.call(n.op, *ins, self.fresh_or(state, positions), dim=n.attrs["dim"])
            rows = tuple(B if j == 0 else 1 for j in range(rank))
            at = self.call("expand", self.call("reshape", last_index, shape=rows), shape=tuple(state.shape))
            last = self.call("gather", h, at, dim=d)
            self.map[id(n.result)] = h
        self.call("cache_write", state, last, self.call("full", shape=(B, 1), value=0, dtype=torch.int64), dim=d)

    def fresh_or(self, state: Value, positions: Value) -> Value:
        """``state``, zero for the rows whose step starts at position 0 (a prefill)."""
        rows = tuple(B if j == 0 else 1 for j in range(state.rank))
        fresh = self.call("reshape", self.call("eq", self.first_position(positions),
                                               self.call("constant", value=0, dtype=torch.int64)), shape=rows)
        return self.call("where", fresh, self.call("constant", value=0.0, dtype=state.dtype), state)

    def history(self, n: Node, ring: Value, positions: Value) -> None:
        """``cat(zeros[a], X, ...)`` with the zeros replaced by ``X`` at the ``a`` positions before each row's first
        token this step (zero where that position is negative: a prefill from position 0 reads zeros, as the model).
        ``X`` is first written into the ring (position ``p`` in slot ``p mod (a + 1)``), then the ``a`` slots before
        the first token are read back: at a decode step, the last ``a`` positions, none of them overwritten by the
        write. A step of several tokens must start at position 0 (a prefill), as with the attention rings."""
        h = self.plan.histories[id(n)]
        a, d = h.pad, h.dim
        x = self.normal(h.base, n)
        written = self.call("cache_write", ring, x, self.slots_of(positions, a + 1), dim=d)
        before = self.call("add", self.first_position(positions),
                           self.call("arange", start=-a, end=0, step=1, dtype=torch.int64))  # [B, a]
        shape = tuple(B if j == 0 else (a if j == d else 1) for j in range(x.rank))
        slots = self.call("constant", value=a + 1, dtype=torch.int64)
        index = self.call("reshape", self.call("remainder", before, slots), shape=shape)
        index = self.call("expand", index, shape=tuple(a if j == d else s for j, s in enumerate(x.shape)))
        known = self.call("reshape", self.call("ge", before, self.call("constant", value=0, dtype=torch.int64)),
                          shape=shape)
        past = self.call("where", known, self.call("gather", written, index, dim=d),
                         self.call("constant", value=0.0, dtype=x.dtype))
        ins = [past] + [self.normal(v, n) for v in n.inputs[1:]]
        self.map[id(n.result)] = self.call("cat", *ins, dim=n.attrs["dim"])

    def table_rows_at(self, n: Node, positions: Value) -> None:
        """A table's rows ``c .. c + S - 1`` (``plan.tables``) as its rows at each row's positions + c: ``[B, S,
        rest]`` gathered, viewed as the slice with the batch in front (lifted)."""
        d, c = self.plan.tables[id(n)]
        table = self.map[id(n.inputs[0])]
        rows = table if d == 0 else self.call("reshape", table, shape=tuple(table.shape[d:]))
        at = positions if c == 0 else self.call("add", positions, self.call("constant", value=c, dtype=torch.int64))
        got = self.call("embedding", rows, at) if rows.rank == 2 else self.call("index", rows, at, dims=(0,))
        if d:
            got = self.call("reshape", got, shape=(B,) + (1,) * d + (S,) + tuple(table.shape[d + 1:]))
        self.table_rows.append(int(table.shape[d]) - c)
        self.map[id(n.result)] = got
        self.lifted.add(id(got))

    def _max_positions(self) -> Optional[int]:
        """Rows of a learned position table indexed by positions (GPT-2's wpe; rows read by slicing, past the first
        row sliced), else None (RoPE)."""
        rows = min(self.table_rows) if self.table_rows else None
        for n in self.g.nodes:
            if n.op == "embedding" and id(n.inputs[1]) in self.lifted and n.inputs[0].kind == "param":
                r = int(n.inputs[0].shape[0])
                rows = r if rows is None else min(rows, r)
        return rows

    def normal(self, old_v: Value, consumer: Optional[Node]) -> Value:
        new = self.map[id(old_v)]
        if id(new) in self.lifted:
            rank = consumer.results[0].rank if consumer is not None else old_v.rank
            return self.to_batch(new, old_v, max(rank, old_v.rank), consumer.op if consumer else "the output")
        return new

    def emit(self, n: Node) -> None:
        ins_new = [self.map[id(v)] for v in n.inputs]
        any_lifted = any(id(v) in self.lifted for v in ins_new)
        if not any_lifted:
            attrs = self.fix_shape_attrs(n, ins_new)
            node = self.g.append(self.g.create_node(n.op, ins_new, attrs))
            for a, b in zip(n.results, node.results):
                self.map[id(a)] = b
            return
        if id(n) in self.plan.data:
            # the boundary: position values meet the batch; merge the extra B into dim 0
            ins = [self.normal(v, n) for v in n.inputs]
            node = self.g.append(self.g.create_node(n.op, ins, self.fix_shape_attrs(n, ins)))
            for a, b in zip(n.results, node.results):
                self.map[id(a)] = b
            return
        self.emit_lifted(n, ins_new)

    def fix_shape_attrs(self, n: Node, ins_new: list[Value]) -> dict[str, Any]:
        """reshape/expand of a value whose broadcast dim 0 became B (after a merge) follow it."""
        attrs = dict(n.attrs)
        if n.op in ("reshape", "expand") and ins_new and ins_new[0].rank >= 1 and n.inputs[0].rank >= 1:
            old_d0, new_d0 = n.inputs[0].shape[0], ins_new[0].shape[0]
            if old_d0 == 1 and new_d0 != 1 and attrs["shape"] and attrs["shape"][0] == 1:
                attrs["shape"] = (new_d0,) + tuple(attrs["shape"][1:])
        return attrs

    def emit_lifted(self, n: Node, ins_new: list[Value]) -> None:
        op, attrs = n.op, dict(n.attrs)
        kind = get_op(op).kind
        r_out = n.results[0].rank
        if kind == "elementwise" or op == "matmul":
            ins = []
            for old_v, new_v in zip(n.inputs, ins_new):
                if id(new_v) in self.lifted:
                    new_v = self.unsqueeze_at1(new_v, r_out - old_v.rank)
                ins.append(new_v)
            out = self.g.append(self.g.create_node(op, ins, attrs)).result
        elif op == "embedding" and id(ins_new[1]) in self.lifted and id(ins_new[0]) not in self.lifted:
            out = self.call(op, *ins_new)
        elif (op == "index" and len(ins_new) == 2 and tuple(attrs["dims"]) == (0,) and id(ins_new[1]) in self.lifted
              and id(ins_new[0]) not in self.lifted):
            # a table's rows gathered at positions (GPT-J's sin/cos table[position_ids]): an embedding by another
            # name, the gathered rows keep the index's (lifted) leading dims
            out = self.call(op, *ins_new, **attrs)
        elif (op == "index_select" and attrs["dim"] % n.inputs[0].rank == 0 and id(ins_new[1]) in self.lifted
              and id(ins_new[0]) not in self.lifted):
            # the same with a flat index (XGLM's sinusoid table.index_select(0, position_ids.view(-1))): lifted, the
            # index has the batch dim in front, which index_select does not take; as an index its rows keep it
            out = self.call("index", *ins_new, dims=(0,))
        elif get_op(op).lift is not None:  # the op says how its attributes follow the new leading dim
            if op == "cat":
                ins_new = [v if id(v) in self.lifted else self.lift_plain(v) for v in ins_new]
            attrs = get_op(op).lift(attrs, n.inputs[0].rank, B)
            node = self.g.append(self.g.create_node(op, ins_new, attrs))
            for a, b in zip(n.results, node.results):
                self.map[id(a)] = b
                self.lifted.add(id(b))
            return
        else:
            raise NotCacheable(f"{op} at %{n.results[0].name} computes on positions in a way this pass cannot "
                               f"make per-row")
        self.map[id(n.result)] = out
        self.lifted.add(id(out))


def _live_without_masks(g: Graph, attention_ids: dict[int, int]) -> set[int]:
    """Nodes the outputs still need once each cached attention stops reading its mask."""
    live: set[int] = set()
    work = [v.producer for v in g.outputs if v.producer is not None]
    work += [n for n in g.nodes if get_op(n.op).side_effects]
    while work:
        n = work.pop()
        if id(n) in live:
            continue
        live.add(id(n))
        # (an attention's mask is dropped, its q, k, v and sink logits kept)
        inputs = [x for i, x in enumerate(attention_parts(n)) if x is not None and i != 3] \
            if id(n) in attention_ids else n.inputs
        work += [v.producer for v in inputs if v.producer is not None]
    return live


def _sink_last_token(g: Graph, out: Value, last_index: Value) -> Value:
    """Pick each row's last position *before* the position-wise tail (final norm, LM head).

    Walks up from the logits through ops that act on each position alone (the ``positionwise`` trait)
    and have one user, then gathers ``[B, S, D] -> [B, 1, D]`` there and replays the tail on one
    position per row. The other inputs of a tail op must not vary with the position: elementwise
    operands of rank <= 1 (they broadcast along the last dim), weights without ``S`` for the rest.
    """
    chain: list[Node] = []
    cur = out
    while cur.producer is not None:
        p = cur.producer
        if len({id(u) for u in p.inputs[0].users}) != 1 or p.inputs[0].rank != 3:
            break
        others = p.inputs[1:]
        od = get_op(p.op)
        if not od.is_positionwise(p.attrs):
            break
        if od.kind == "elementwise" and not all(o.rank <= 1 for o in others):
            break
        if od.kind != "elementwise" and any(S in o.type.free_symbols() for o in others):
            break
        chain.append(p)
        cur = p.inputs[0]
    rows = g.create_node("arange", [], {"end": B})
    sel = g.create_node("index", [cur, rows.result, last_index], {"dims": (0, 1)})
    one = g.create_node("unsqueeze", [sel.result], {"dim": 1})
    new_nodes = [rows, sel, one]
    v = one.result
    for p in reversed(chain):
        node = g.create_node(p.op, [v, *p.inputs[1:]], p.attrs)
        new_nodes.append(node)
        v = node.result
    # before the tail's last op: every input of the replayed tail is defined by then
    pos = g.nodes.index(chain[0]) if chain else len(g.nodes)
    for i, node in enumerate(new_nodes):
        g._link(node)
        g.nodes.insert(pos + i, node)
    return v


def _swap_into(target: Graph, new: Graph) -> None:
    for n in new.nodes:
        n.graph = target
    target.__dict__.update(new.__dict__)


@register_pass("insert-kv-cache")
def insert_kv_cache(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite a full-sequence causal decoder into a step graph over a static KV cache (see module doc)."""
    try:
        plan = _analyze(graph)
        new = _Builder(graph, plan, prune_logits=True).build()
    except NotCacheable as e:
        ctx.note(f"left unchanged: {e}")
        return False
    for note in plan.notes:
        ctx.note(note)
    from membound.passes.dce import dead_code_elimination

    dead_code_elimination(new, PassContext())
    _swap_into(graph, new)
    ctx.note(f"cached {len(plan.attentions)} attention(s); positions and last_index are inputs now")
    return True


insert_kv_cache.changes_signature = True  # type: ignore[attr-defined]  # new inputs, one output
