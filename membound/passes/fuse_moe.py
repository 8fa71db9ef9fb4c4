"""fuse-moe: a mixture-of-experts block, however the model wrote it, becomes one ``moe`` node.

```
// before: membound.models.mixtral.MoEFeedForward (gpt-fast's form: each token gathers its experts'
// weights), captured and canonicalised; the cost rule is below
graph @moe(%x: f32[B, S, 8]) params(%w1: f32[3, 6, 8], %w3: f32[3, 6, 8], %w2: f32[3, 8, 6], %router: f32[3, 8]) {
  %0 = reshape(%x) {shape=[B*S, 8]} : f32[B*S, 8]
  %1 = linear(%0, %router) : f32[B*S, 3]
  %2 = softmax(%1) {dim=-1, dtype=none} : f32[B*S, 3]
  %3, %4 = topk(%2) {k=2, dim=-1, largest=true, sorted=true} : f32[B*S, 2], i64[B*S, 2]
  %5 = sum(%3) {dims=[-1], keepdim=true, dtype=none} : f32[B*S, 1]
  %6 = div(%3, %5) {rounding_mode=none} : f32[B*S, 2]
  %7 = index(%w1, %4) {dims=[0]} : f32[B*S, 2, 6, 8]
  %8 = index(%w3, %4) {dims=[0]} : f32[B*S, 2, 6, 8]
  %9 = index(%w2, %4) {dims=[0]} : f32[B*S, 2, 8, 6]
  %10 = unsqueeze(%0) {dim=1} : f32[B*S, 1, 8]
  %11 = unsqueeze(%10) {dim=3} : f32[B*S, 1, 8, 1]
  %12 = matmul(%7, %11) : f32[B*S, 2, 6, 1]
  %13 = squeeze(%12) {dims=[3]} : f32[B*S, 2, 6]
  %14 = silu(%13) : f32[B*S, 2, 6]
  %15 = matmul(%8, %11) : f32[B*S, 2, 6, 1]
  %16 = squeeze(%15) {dims=[3]} : f32[B*S, 2, 6]
  %17 = mul(%14, %16) : f32[B*S, 2, 6]
  %18 = unsqueeze(%17) {dim=-1} : f32[B*S, 2, 6, 1]
  %19 = matmul(%9, %18) : f32[B*S, 2, 8, 1]
  %20 = squeeze(%19) {dims=[3]} : f32[B*S, 2, 8]
  %21 = unsqueeze(%6) {dim=1} : f32[B*S, 1, 2]
  %22 = matmul(%21, %20) : f32[B*S, 1, 8]
  %25 = reshape(%22) {shape=[B, S, 8]} : f32[B, S, 8]
  return %25
}
// after
graph @moe(%x: f32[B, S, 8]) params(%w1: f32[3, 6, 8], %w3: f32[3, 6, 8], %w2: f32[3, 8, 6], %router: f32[3, 8]) {
  %0 = reshape(%x) {shape=[B*S, 8]} : f32[B*S, 8]
  %23 = moe(%0, %router, %w1, %w3, %w2) {top_k=2, softmax_first=true, renormalize=true, act="silu"} : f32[B*S, 8]
  %24 = reshape(%23) {shape=[B*S, 1, 8]} : f32[B*S, 1, 8]
  %25 = reshape(%24) {shape=[B, S, 8]} : f32[B, S, 8]
  return %25
}
```

HF Mixtral / Qwen2-MoE (the grouped form: sort the (token, expert) pairs, ``histc`` of the expert ids,
``grouped_mm`` over the concatenated gate/up and the down weights, un-permute, sum over k) become
``moe(%h, %router, %gate_up_proj.gate, %gate_up_proj.up, %down_proj)``, the gate/up halves being views.

How it matches. The anchor is a ``topk`` over router scores: ``topk(softmax(linear(h, R)))``
(softmax first) or ``softmax(topk(linear(h, R)).values)`` (softmax after), optionally renormalised
(``v / sum(v)``), casts allowed. The *block* is every node that depends on the topk, up to the first
value ``out`` of ``T x D`` elements that all of them flow into and nothing else reads; the block may
read only views of ``h``, parameters and constants. The experts inside are recognised in these forms:

- grouped (current HF Mixtral / Qwen2-MoE, both of transformers' CPU and CUDA paths): two
  ``grouped_mm`` over offsets counted by ``histc`` of the sorted expert ids, the first over a
  concatenated gate/up weight, split, ``silu(gate) * up``, the second over the down weight;
  expert-parallel sentinel masks ``where(ids >= E, 0, v)`` (transformers 5.17 always writes them) are
  no-ops on top-k ids and are looked through;
- batched (HF's ``batched_mm``, what ``generate`` decodes with off the CPU): each token repeated
  top-k times, ``gate_up[ids] @ x`` and ``down[ids] @ h`` as batched products, ids clamped to
  ``[0, E - 1]`` or not;
- gpt-oss, in the grouped and batched forms: a router with a bias (``linear(h, R, b)``, its top-k logits then a
  softmax), K-major ``[E, D, 2I]`` / ``[E, I, D]`` weights (``x @ W``), gate and up the even and odd columns of one
  product, a bias gathered by expert added to each product, and the clamped SwiGLU
  ``(clamp(u, -L, L) + 1) * g' * sigmoid(alpha * g')``, ``g' = clamp(g, max=L)``: ``moe {bias=true,
  act="clamped_swiglu", alpha, limit}`` over ``[E, N, K]`` copies of the weights and contiguous copies of the
  gate/up bias columns (the log names them with their size). Biases on some of the router and products but not all
  are declined (the op takes the four or none);
- gathered (gpt-fast, the built-in Mixtral): ``w[expert_ids]`` of three ``[E, *, *]`` parameters,
  batched products; the one feeding ``silu`` is gate, the one multiplied with it up, the last down;
- looped (dense loop over experts, ``where(ids == e, ...)``): E gated MLPs of 2-D weights, each
  weighted by a value built from ``eq(ids, e)``; their weights are stacked into new parameters. Or E
  slices ``P_in[e]`` / ``P_out[e]`` of two ``[E, 2I, D]`` / ``[E, D, I]`` parameters, the gate/up product
  split in halves (transformers 4.x Granite-MoE as ``capture_export`` writes it densely): views of them.

- dense (Llama 4): a ``topk`` of the router logits scattered into ``-inf`` and passed through a sigmoid (a
  ``[T, E]`` score, 0 for the experts a token did not choose); every expert runs on every token
  (``h.repeat(E, 1)``), each copy scaled by its score *before* the expert, ``bmm`` with the ``[E, D, 2I]``
  gate/up and ``[E, I, D]`` down weights, summed over the experts: ``moe {score="sigmoid",
  weight_input=true}``, which reads only the chosen experts (the dense form streams all E). Its weights are
  K-major, so the op gets ``[E, I, D]`` / ``[E, D, I]`` copies (the model's own tensors stay with the model).

A router none of these name (DeepSeek-V2's group-limited greedy top-k, V3's sigmoid scores with a correction bias,
the top groups and a scale; any ``topk`` whose input is not ``[softmax](linear(h, R))``; or expert ids no ``topk``
makes, PhiMoE's sparsemixer joining two ``max`` indices, found as what the experts are sorted or gathered by): the
routing stays as the graph computes it, and the experts, in the grouped or batched form, become
``moe_experts(h, w, ids, ...)`` over the ids and the float ``[T, k]`` weights ``w`` that multiply the expert outputs
(flattened, in the grouped form permuted by the ids' sort, unsqueezed: exactly one such product, and ``w`` read by
the block through it alone). The block is then the nodes that read the ids or ``w`` but do not compute ``w``.

Copies of K-major experts (gpt-oss, Llama 4) are memory beside the model's own: where they would take more than half
the free memory of the CUDA device holding the weights (``COPY_FREE_SHARE``; gpt-oss-20b's ~36 GiB of bf16 copies
beside its 42 GiB do not fit an 80 GB card), the op reads views of the model's weights instead (the kernels take
any strides; not yet timed against the copies), and the log says so. Stacked copies (the looped form) that do not
fit leave the block unfused.

Every form's weights must come out ``[E, I, D]`` / ``[E, D, I]``, and a parameter the block reads that none of its
weights or biases accounts for declines the block (its product would be dropped). In the batched and given forms a
weight may be read through ``P[:E]``, the first E experts of a larger parameter (transformers 5.17's LongCat-Flash
keeps its zero experts' unused gate/up weights after the routed ones): the op gets views of those experts (or, K-major,
copies of those alone).

Then, if ``out`` is added to a sigmoid-gated shared expert of ``h`` (Qwen2-MoE), that is absorbed
too. Expert weights are passed as ``[E, N, K]`` parameters: the model's own tensors where the layout
fits, views of them (HF's gate/up halves), or stacked copies (the looped form). A block that does not
match stays as it is, and the pass log says which check failed.

Cost rule: none needed. The fused op reads only the active experts' weights once (the unfused forms
read them through sorts, histograms, per-token gathers of whole weight matrices or every expert), so
it is never slower; the backend chooses between its decode and grouped kernels from the token count.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence, Union

import sympy
import torch

from membound.ir import Graph, Node, Value
from membound.ir.ops._common import numel
from membound.ir.types import dims_equal
from membound.passes.manager import PassContext, register_pass
from membound.passes.pattern import erase_if_dead

VIEWS = ("reshape", "unsqueeze", "squeeze")
CONSTANTS = ("constant", "full", "arange")
Transform = Callable[[torch.Tensor], torch.Tensor]


class NoMatch(Exception):
    """A check that failed; the message goes to the pass log."""


def _producer(v: Value, op: Union[str, tuple[str, ...]]) -> Optional[Node]:
    ops = (op,) if isinstance(op, str) else op
    return v.producer if v.producer is not None and v.producer.op in ops else None


def _through(v: Value, ops: tuple[str, ...]) -> Value:
    """``v`` with producers of the given ops (single-input views, casts) walked back over."""
    while v.producer is not None and v.producer.op in ops:
        v = v.producer.inputs[0]
    return v


def _tokens_of(v: Value) -> Value:
    return _through(v, VIEWS + ("cast",))


def _other(node: Node, v: Value) -> Value:
    a, b = node.inputs[:2]
    return b if a is v else a


def _static(d: sympy.Expr) -> bool:
    return isinstance(d, (int, sympy.Integer))


def _prefix(v: Value) -> tuple[Value, Optional[int]]:
    """``v = P[:n]`` along dim 0 of a 3-D parameter ``P`` (static ``n``: the first n experts; transformers 5.17
    LongCat-Flash's gate/up weights hold its zero experts' unused ones after the routed): ``(P, n)``; else
    ``(v, None)``."""
    sl = _producer(v, "slice")
    if sl is None or sl.inputs[0].kind != "param" or sl.inputs[0].rank != 3 or sl.attrs["dim"] % 3 != 0 \
            or sl.attrs["step"] != 1 or not (_static(sl.attrs["start"]) and int(sl.attrs["start"]) == 0) \
            or not _static(v.shape[0]):
        return v, None
    return sl.inputs[0], int(v.shape[0])


def _expert_param(v: Value) -> bool:
    """``v`` is a parameter or the first experts of a 3-D one (:func:`_prefix`)."""
    return v.kind == "param" or _prefix(v)[1] is not None


# ---------------------------------------------------------------------------------------------
# the router
# ---------------------------------------------------------------------------------------------


@dataclass
class Router:
    topk: Node
    h: Value  # the block's tokens [T, D]
    weight: Value  # router [E, D]
    top_k: int
    softmax_first: bool
    renormalize: bool = False
    score: str = "softmax"  # "sigmoid": Llama 4's sigmoid of the kept logits, scattered into a dense [T, E]
    bias: Optional[Value] = None  # the router linear's bias [E] (gpt-oss)
    # a routing the graph computes (moe_experts): the experts' count, and the block's nodes (not all of topk's users)
    given_experts: Optional[int] = None
    region: Optional[list[Node]] = None
    given_ids: Optional[Value] = None  # the expert ids (``topk`` is their producer: a topk or, PhiMoE, another op)
    given_mul: Optional[Node] = None  # the one product of the expert outputs with the routing weights
    weights: Value = field(init=False)  # routing weights after softmax / renormalisation ([T, E] for "sigmoid")

    @property
    def ids(self) -> Value:
        return self.given_ids if self.given_ids is not None else self.topk.results[1]

    @property
    def experts(self) -> int:
        return self.given_experts if self.given_experts is not None else int(self.weight.shape[0])

    @property
    def given(self) -> bool:
        return self.given_experts is not None


def _router(topk: Node) -> Router:
    """The router feeding ``topk``, or NoMatch saying why not."""
    if topk.attrs["largest"] is not True or topk.attrs["dim"] not in (-1, topk.inputs[0].rank - 1):
        raise NoMatch("topk is not a largest-k over the last dim")
    scores = _through(topk.inputs[0], ("cast",))
    softmax = _producer(scores, "softmax")
    logits = _through(softmax.inputs[0], ("cast",)) if softmax is not None else scores
    linear = _producer(logits, "linear")
    if linear is None or linear.inputs[1].kind != "param" or (len(linear.inputs) == 3
                                                              and linear.inputs[2].kind != "param"):
        raise NoMatch(f"topk input %{topk.inputs[0].name} is not softmax(linear(h, router)) or linear(h, router), "
                      "the router a parameter (its bias too, if any)")
    h, weight = linear.inputs[:2]
    if h.rank != 2 or weight.rank != 2 or not _static(weight.shape[0]):
        raise NoMatch(f"router linear %{linear.result.name} is not [T, D] x [E, D]")
    r = Router(topk, h, weight, int(topk.attrs["k"]), softmax is not None,
               bias=linear.inputs[2] if len(linear.inputs) == 3 else None)
    w = topk.results[0]
    if not r.softmax_first:
        after = [u for u in w.users if u.op == "softmax"]
        dense = _sigmoid_scores(topk)
        if dense is not None and not after:
            r.score, r.weights = "sigmoid", dense
            return r
        if len(after) != 1:
            raise NoMatch("top-k router logits are not followed by a softmax, nor scattered into -inf and passed "
                          "through a sigmoid")
        w = after[0].result
    divs = [u for u in w.users if u.op == "div" and u.inputs[0] is w]
    if divs and (s := _producer(divs[0].inputs[1], "sum")) is not None and s.inputs[0] is w:
        r.renormalize, w = True, divs[0].result
    r.weights = w
    return r


def _sigmoid_scores(topk: Node) -> Optional[Value]:
    """Llama 4's router scores: ``sigmoid(full(-inf).scatter(1, ids, values))``, ``[T, E]``, the chosen experts'
    sigmoid of their logit and 0 elsewhere; None when ``topk`` is not read so."""
    values, ids = topk.results
    users = [u for u in values.users if u.op == "scatter"]
    if len(users) != 1 or len(values.users) != 1:
        return None
    sc = users[0]
    base = _producer(sc.inputs[0], "full")
    dim = sc.attrs.get("dim")
    if (base is None or sc.inputs[1] is not ids or sc.inputs[2] is not values or sc.attrs.get("reduce") not in
            (None, "none") or dim not in (-1, 1) or base.attrs.get("value") != float("-inf")):
        return None
    sig = [u for u in sc.result.users if u.op == "sigmoid"]
    if len(sig) != 1 or len(sc.result.users) != 1:
        return None
    return sig[0].result


def _ancestors(v: Value) -> set[int]:
    seen: set[int] = set()
    work = [v]
    while work:
        n = work.pop().producer
        if n is not None and id(n) not in seen:
            seen.add(id(n))
            work.extend(n.inputs)
    return seen


def _weighting(graph: Graph, topk: Node, ids: Value) -> tuple[Value, Node]:
    """A routing the graph computes: the float ``[T, k]`` value ``w`` whose flattened copy (permuted by the sort of
    the expert ids ``ids``, made by ``topk``, in the grouped form) is unsqueezed and multiplied into the ``[T * k, D]``
    expert outputs, and that ``mul``; NoMatch if there is not exactly one."""
    perms = [n.results[1] for n in graph.nodes if n.op == "sort" and _through(n.inputs[0], VIEWS) is ids]
    found: list[tuple[Value, Node]] = []
    for n in _downstream(graph, topk, {id(topk)})[1:]:
        if n.op != "mul" or n.result.rank != 2:
            continue
        for b in n.inputs:
            col = _producer(b, "unsqueeze")
            if col is None or col.inputs[0].rank != 1:
                continue
            src = col.inputs[0]
            gather = _producer(src, "index")
            if gather is not None and gather.attrs.get("dims") == (0,) and any(gather.inputs[1] is p for p in perms):
                src = gather.inputs[0]
            w = _through(src, ("reshape",))
            if w.rank == 2 and w.dtype.is_floating_point and all(dims_equal(a, b) for a, b in zip(w.shape, ids.shape)):
                found.append((w, n))
    if len(found) != 1:
        raise NoMatch(f"{len(found)} products of the expert outputs with a [T, k] routing weight, not 1")
    return found[0]


def _given_router(graph: Graph, topk: Node, ids: Optional[Value] = None) -> Router:
    """The routing of a block whose router ``moe`` does not name (DeepSeek-V3's group-limited top-k of biased
    sigmoid scores, a scale; PhiMoE's sparsemixer, whose ids are two ``max`` indices joined): the experts' ids
    (``topk``'s indices, or ``ids``, which ``topk`` then makes) and weights (:func:`_weighting`) as the graph
    computes them, the block the nodes that read them but do not compute the weights. Its tokens: the first float
    value, not a parameter, constant or the weights, they read (the forms check the block reads no other)."""
    ids = ids if ids is not None else topk.results[1]
    if ids.rank != 2 or not _static(ids.shape[1]) or ids.dtype.is_floating_point:
        raise NoMatch("the expert ids are not [T, k] integers")
    w, mul = _weighting(graph, topk, ids)
    routing = _ancestors(w)
    seeds = {id(topk)} | ({id(w.producer)} if w.producer is not None else set())
    region = [topk] + [n for n in _downstream(graph, topk, seeds)[1:] if id(n) not in routing]
    inside = {id(n) for n in region}
    tokens = [v for n in region[1:] for v in n.inputs
              if (v.producer is None or id(v.producer) not in inside) and v is not w and v is not ids
              and v.dtype.is_floating_point and not _is_constant(v) and not _expert_param(_through(v, ("transpose",)))]
    if not tokens:
        raise NoMatch("the experts read no token values")
    h = tokens[0]  # the first the region reads (the block checks that it reads no other), as [T, D]
    while not (h.rank == 2 and dims_equal(h.shape[0], ids.shape[0])) and h.producer is not None \
            and h.producer.op in VIEWS + ("cast", "expand"):
        h = h.producer.inputs[0]
    if h.rank != 2 or not dims_equal(h.shape[0], ids.shape[0]):
        raise NoMatch(f"the experts' tokens %{h.name} are not [T, D] for the ids' T")
    experts = {int(p.shape[0]) for n in region for v in n.inputs
               if _expert_param(p := _through(v, ("transpose",))) and p.rank == 3}
    if len(experts) != 1:
        raise NoMatch(f"the experts' 3-D weights disagree on E: {sorted(experts)}")
    r = Router(topk, h, w, int(ids.shape[1]), True, given_experts=experts.pop(), region=region, given_ids=ids,
               given_mul=mul)
    r.weights = w
    return r


def _check_given_weighting(graph: Graph, r: Router, block: Block) -> None:
    """The given weights reach the block through one chain (views, the sort's permutation, an unsqueeze) ending in
    the one ``mul`` with the expert outputs: each pair's output is weighted once, by its weight."""
    mul = r.given_mul
    ids = {id(n) for n in block.nodes}
    if id(mul) not in ids:
        raise NoMatch("the routing weights are not multiplied inside the block")
    readers = [n for n in block.nodes if any(v is r.weights for v in n.inputs)]
    while len(readers) == 1 and readers[0] is not mul and readers[0].op in VIEWS + ("index", "unsqueeze"):
        users = [u for u in readers[0].result.users if id(u) in ids]
        if len(readers[0].result.users) != 1:
            break
        readers = users
    if readers != [mul]:
        raise NoMatch("the routing weights are read by more than the one product with the expert outputs")


# ---------------------------------------------------------------------------------------------
# the block: everything downstream of topk up to the first value it all flows into
# ---------------------------------------------------------------------------------------------


@dataclass
class Block:
    nodes: list[Node]  # topological
    out: Value
    externals: list[Value]  # values read from outside the block (besides the router scores)


def _ancestors_within(v: Value, allowed: set[int]) -> set[int]:
    seen: set[int] = set()
    work = [v]
    while work:
        cur = work.pop()
        n = cur.producer
        if n is None or id(n) in seen or id(n) not in allowed:
            continue
        seen.add(id(n))
        work.extend(n.inputs)
    return seen


def _downstream(graph: Graph, first: Node, seeds: set[int]) -> list[Node]:
    """``first`` and the nodes after it that read (transitively) a result of a node in ``seeds``, in order."""
    down = set(seeds) | {id(first)}
    order: list[Node] = [first]
    for n in graph.nodes[graph.nodes.index(first) + 1:]:
        if any(v.producer is not None and id(v.producer) in down for v in n.inputs):
            down.add(id(n))
            order.append(n)
    return order


def _block(graph: Graph, r: Router) -> Block:
    order = r.region if r.region is not None else _downstream(graph, r.topk, {id(r.topk)})
    down = {id(n) for n in order}
    want = r.h.shape[0] * r.h.shape[1]
    why = "no value of T x D elements collects every routed value"
    for pos, n in enumerate(order[1:], 1):
        if len(n.results) != 1 or not n.result.dtype.is_floating_point:
            continue
        if sympy.simplify(n.result.type.numel() - want) != 0:
            continue
        inside = _ancestors_within(n.result, down)
        if any(id(m) not in inside for m in order[:pos]):
            continue  # something routed does not flow into this value
        nodes = order[:pos + 1]
        ids = {id(m) for m in nodes}
        leaks = [m for m in nodes[:-1] if not (r.given and m is r.topk)  # (given: the graph's routing reads ids)
                 for v in m.results for u in v.users if id(u) not in ids]
        outputs = {id(v) for v in graph.outputs}
        returned = [m for m in nodes[:-1] if any(id(v) in outputs for v in m.results)]
        if leaks or returned:  # a partial sum (one expert of a loop): look further
            why = f"a routed value is read outside the block (%{(leaks or returned)[0].results[0].name})"
            continue
        externals: list[Value] = []
        for m in nodes:
            for v in m.inputs:
                if (v.producer is None or id(v.producer) not in ids) and v not in externals:
                    externals.append(v)
        skip = (*r.topk.inputs, r.weights) if r.given else (r.topk.inputs[0],)
        return Block(nodes, n.result, [v for v in externals if all(v is not s for s in skip)])
    raise NoMatch(why)


def _is_constant(v: Value) -> bool:
    v = _through(v, VIEWS + ("cast", "expand"))
    return v.producer is not None and v.producer.op in CONSTANTS


# ---------------------------------------------------------------------------------------------
# expert weights: [E, N, K] tensors made from the model's parameters
# ---------------------------------------------------------------------------------------------


@dataclass
class Weight:
    """An ``[E, N, K]`` expert weight: the parameter ``param`` as it is (``make is None``) or a new
    parameter ``make(tensors)`` called ``name``; ``view``: where ``make`` copies a K-major weight, the same values
    as a view of the model's tensor (the kernels read any strides; taken where the copies would not fit)."""

    param: Value
    shape: tuple[int, ...]
    name: str = ""
    make: Optional[Callable[[dict[str, torch.Tensor]], torch.Tensor]] = None
    view: Optional[Callable[[dict[str, torch.Tensor]], torch.Tensor]] = None


def _param_3d(v: Value) -> tuple[Value, Transform]:
    """``v`` as transposes of a 3-D parameter: (param, how to turn its tensor into v's)."""
    swaps: list[tuple[int, int]] = []
    while (t := _producer(v, "transpose")) is not None:
        swaps.append((t.attrs["dim0"], t.attrs["dim1"]))
        v = t.inputs[0]
    if v.kind != "param" or v.rank != 3:
        raise NoMatch(f"%{v.name} is not a 3-D parameter")

    def transform(w: torch.Tensor) -> torch.Tensor:
        for a, b in reversed(swaps):
            w = w.transpose(a, b)
        return w

    return v, transform


def _linear_form(v: Value, suffix: str, rows: Optional[slice] = None) -> Weight:
    """The ``[E, N, K]`` weight whose ``[K, N]`` transposes are ``v`` (a grouped_mm or bmm operand), rows
    ``rows`` of N: the parameter itself, a view of it whose rows are contiguous in K (HF's gate/up halves), or,
    where the model stores it K-major (Llama 4's ``[E, D, 2I]``), a contiguous copy: the expert kernels stream
    rows contiguous in K."""
    param, transform = _param_3d(v)

    def view(t: torch.Tensor) -> torch.Tensor:
        w = transform(t).transpose(1, 2)
        return w[:, rows] if rows is not None else w

    probe = view(torch.empty(tuple(int(d) for d in param.shape), device="meta"))
    if probe.shape == tuple(int(d) for d in param.shape) and probe.stride() == _contiguous(param):
        return Weight(param, tuple(probe.shape))
    if probe.stride(-1) == 1:
        return Weight(param, tuple(probe.shape), f"{param.name}.{suffix}", lambda ts: view(ts[param.name]))
    return Weight(param, tuple(probe.shape), f"{param.name}.{suffix}", lambda ts: view(ts[param.name]).contiguous(),
                  lambda ts: view(ts[param.name]))


def _contiguous(v: Value) -> tuple[int, ...]:
    return torch.empty(tuple(int(d) for d in v.shape), device="meta").stride()


# ---------------------------------------------------------------------------------------------
# the three forms
# ---------------------------------------------------------------------------------------------


def _check_tokens(block: Block, r: Router, allowed: tuple[Value, ...] = ()) -> None:
    for v in block.externals:
        if v in allowed or _tokens_of(v) is _tokens_of(r.h) or _is_constant(v):
            continue
        if _expert_param(_through(v, ("transpose",))):
            continue
        raise NoMatch(f"the block reads %{v.name} ({v.producer.op if v.producer else v.kind}), which is not "
                      f"the tokens %{r.h.name}, a parameter or a constant")


def _halves(gate: Value, up: Value) -> Node:
    """The ``split`` whose two equal halves are ``gate`` and ``up``, in that order (NoMatch otherwise)."""
    split = _producer(gate, "split")
    if split is None or up.producer is not split or (gate.index, up.index) != (0, 1) \
            or len(set(split.attrs["sizes"])) != 1 or len(split.attrs["sizes"]) != 2:
        raise NoMatch("gate and up are not the two halves of one product")
    return split


def _gated_product(v: Value) -> tuple[Value, Value]:
    """``v = mul(silu(g), u)`` (either order, casts allowed): (g, u)."""
    mul = _producer(_through(v, ("cast",)), "mul")
    if mul is None:
        raise NoMatch(f"%{v.name} is not silu(gate) * up")
    for a, b in (mul.inputs, mul.inputs[::-1]):
        if (s := _producer(a, "silu")) is not None:
            return s.inputs[0], b
    raise NoMatch(f"%{mul.result.name} multiplies no silu (only silu experts are fused)")


@dataclass
class Experts:
    """What a form found: the three ``[E, N, K]`` weights, the activation, and (gpt-oss) the experts' biases
    ``[E, I]``, ``[E, I]``, ``[E, D]``."""

    gate: Weight
    up: Weight
    down: Weight
    act: str = "silu"
    alpha: float = 1.0
    limit: Optional[float] = None
    biases: Optional[tuple[Weight, Weight, Weight]] = None


@dataclass
class Activation:
    gate: Value  # the gate product (the activation's first input)
    up: Value
    act: str = "silu"
    alpha: float = 1.0
    limit: Optional[float] = None


def _const(v: Value) -> Optional[float]:
    """The value of a scalar constant (through views, casts and expands), or None."""
    c = _producer(_through(v, VIEWS + ("cast", "expand")), "constant")
    return float(c.attrs["value"]) if c is not None else None


def _clamped_swiglu(v: Value) -> Optional[Activation]:
    """gpt-oss's ``(clamp(u, -L, L) + 1) * (g' * sigmoid(g' * alpha))``, ``g' = clamp(g, max=L)`` (either order of
    each product, casts allowed; no clamps at all: ``limit`` None), or None."""
    mul = _producer(_through(v, ("cast",)), "mul")
    if mul is None:
        return None
    for a, b in (mul.inputs, mul.inputs[::-1]):
        add = _producer(_through(a, ("cast",)), "add")
        glu = _producer(_through(b, ("cast",)), "mul")
        if add is None or glu is None:
            continue
        ones = [x for x in add.inputs if _const(x) == 1.0]
        if not ones:
            continue
        u = _other(add, ones[0])
        for g, sg in (glu.inputs, glu.inputs[::-1]):
            sig = _producer(_through(sg, ("cast",)), "sigmoid")
            scaled = _producer(_through(sig.inputs[0], ("cast",)), "mul") if sig is not None else None
            if scaled is None or g not in scaled.inputs or (alpha := _const(_other(scaled, g))) is None:
                continue
            gc, uc = _producer(g, "clamp"), _producer(u, "clamp")
            if gc is None and uc is None:
                return Activation(g, u, "clamped_swiglu", alpha, None)
            if gc is None or uc is None or gc.attrs["min"] is not None or gc.attrs["max"] is None:
                continue
            limit = float(gc.attrs["max"])
            if uc.attrs["max"] is None or uc.attrs["min"] is None or float(uc.attrs["max"]) != limit \
                    or float(uc.attrs["min"]) != -limit or not limit > 0:
                continue
            return Activation(gc.inputs[0], uc.inputs[0], "clamped_swiglu", alpha, limit)
    return None


def _activation(v: Value) -> Activation:
    """The experts' activation ``v``: ``silu(g) * u`` or the clamped SwiGLU (NoMatch otherwise)."""
    found = _clamped_swiglu(v)
    if found is not None:
        return found
    try:
        g, u = _gated_product(v)
    except NoMatch:
        raise NoMatch(f"%{v.name} is neither silu(gate) * up nor the clamped SwiGLU "
                      "(clamp(up, -L, L) + 1) * gate' * sigmoid(alpha * gate')") from None
    # HY-V4: silu(min(g, L)) * clamp(u, -L, L), both clamps at one L
    gc, uc = _producer(g, "clamp"), _producer(_through(u, ("cast",)), "clamp")
    if gc is not None and uc is not None and gc.attrs["min"] is None and gc.attrs["max"] is not None \
            and uc.attrs["min"] is not None and uc.attrs["max"] is not None:
        limit = float(gc.attrs["max"])
        if limit > 0 and float(uc.attrs["max"]) == limit and float(uc.attrs["min"]) == -limit:
            return Activation(gc.inputs[0], uc.inputs[0], "silu", 1.0, limit)
    return Activation(g, u)


def _gate_up_source(a: Activation) -> tuple[Value, slice, slice]:
    """The one product whose columns ``a``'s gate and up are: the two halves of a ``split`` (Mixtral) or the even
    and odd columns (gpt-oss's interleaved gate/up): ``(product, gate rows, up rows)`` of its ``[E, N, K]`` weight
    (NoMatch otherwise)."""
    gs, us = _producer(a.gate, "slice"), _producer(a.up, "slice")
    if gs is not None and us is not None and gs.inputs[0] is us.inputs[0]:
        src = gs.inputs[0]
        n = src.shape[-1]
        last = src.rank - 1
        if (gs.attrs["dim"] % src.rank, us.attrs["dim"] % src.rank) == (last, last) and _static(n) \
                and (gs.attrs["start"], us.attrs["start"], gs.attrs["step"], us.attrs["step"]) == (0, 1, 2, 2) \
                and int(n) % 2 == 0 and all(sl.attrs["end"] is None or int(sl.attrs["end"]) >= int(n)
                                            for sl in (gs, us)):
            return src, slice(0, None, 2), slice(1, None, 2)
        raise NoMatch("gate and up are slices of one product, but not its even and odd columns")
    split = _halves(a.gate, a.up)
    if split.attrs["dim"] % split.inputs[0].rank != split.inputs[0].rank - 1:
        raise NoMatch("gate and up are not the two halves of one product's columns")
    half = int(split.attrs["sizes"][0])
    return split.inputs[0], slice(0, half), slice(half, None)


def _biased(v: Value, ids_ok: Callable[[Value], bool]) -> tuple[Value, Optional[Value]]:
    """``v = add(p, index(B, ids))`` (either order) with ``B[E, N]`` a parameter gathered by rows' expert ids
    (``ids_ok``): ``(p, B)``; else ``(v, None)``."""
    add = _producer(v, "add")
    if add is None:
        return v, None
    for a, b in (add.inputs, add.inputs[::-1]):
        g = _producer(b, "index")
        if (g is not None and g.attrs.get("dims") == (0,) and g.inputs[0].kind == "param" and g.inputs[0].rank == 2
                and ids_ok(g.inputs[1])):
            return a, g.inputs[0]
    return v, None


def _bias_rows(b: Value, rows: Optional[slice], suffix: str) -> Weight:
    """An ``[E, N]`` bias parameter's rows ``rows`` as a contiguous ``[E, rows]`` tensor (the epilogues read each
    expert's row contiguous): the parameter itself, or a copy."""
    e, n = (int(d) for d in b.shape)
    if rows is None:
        return Weight(b, (e, n))
    width = len(range(n)[rows])
    return Weight(b, (e, width), f"{b.name}.{suffix}", lambda ts: ts[b.name][:, rows].contiguous())


def _expert_biases(r: Router, gate_up: Optional[Value], down: Optional[Value], gate_rows: slice, up_rows: slice
                   ) -> Optional[tuple[Weight, Weight, Weight]]:
    """The experts' biases (gate/up rows of one ``[E, 2I]`` parameter, down ``[E, D]``), all or none, and with the
    router's bias, all or none (``moe``'s ``bias=true`` takes the four)."""
    found = (gate_up is not None, down is not None, r.bias is not None or r.given)
    if not any(found[:2]):
        if r.bias is not None:
            raise NoMatch("the router has a bias and the experts none: moe takes all four biases or none")
        return None
    if not all(found):
        raise NoMatch("biases on some of the router, the gate/up and the down products but not all "
                      f"(router {found[2]}, gate/up {found[0]}, down {found[1]}): moe takes all four or none")
    assert gate_up is not None and down is not None
    return _bias_rows(gate_up, gate_rows, "gate"), _bias_rows(gate_up, up_rows, "up"), _bias_rows(down, None, "")


def _sorted_ids(r: Router) -> Callable[[Value], bool]:
    """Whether a value is the expert ids sorted (``sort(ids).values``, through views, casts and clamps to
    ``[0, E - 1]``: transformers 5.17 clamps expert-parallel sentinels before it gathers the biases)."""
    def check(v: Value) -> bool:
        u = _unclamped(v, VIEWS + ("cast",), r.experts)
        sort = _producer(u, "sort") if u is not None else None
        return sort is not None and u is sort.results[0] and _through(sort.inputs[0], VIEWS) is r.ids
    return check


def _down_bias(down: Node, r: Router, ids_ok: Callable[[Value], bool]) -> Optional[Value]:
    """The bias parameter added to the down product (through sentinel masks and a squeeze), or None."""
    v = down.result
    while len(v.users) == 1 and (v.users[0].op == "squeeze" or (v.users[0].op == "where"
                                                                and _never_true(v.users[0].inputs[0], r))):
        v = v.users[0].result
    adds = [u for u in v.users if u.op == "add"]
    if len(v.users) != 1 or len(adds) != 1:
        return None
    _, bias = _biased(adds[0].result, ids_ok)
    return bias


def _unmasked(v: Value, r: Router) -> Value:
    """``v`` with sentinel masks walked back over: ``where(ids >= c, fill, x)`` with ``c >= E`` is ``x``,
    since top-k expert ids are always below E (transformers 5.17 masks expert-parallel sentinels so)."""
    while (w := _producer(v, "where")) is not None and _never_true(w.inputs[0], r):
        v = w.inputs[2]
    return v


def _never_true(mask: Value, r: Router) -> bool:
    """``mask`` is ``ids >= c`` (c >= E) or ``ids > c`` (c >= E - 1) of the expert ids, sorted or not."""
    cmp = _producer(_through(mask, VIEWS + ("expand",)), ("ge", "gt"))
    if cmp is None:
        return False
    ids, c = cmp.inputs
    ids = _through(ids, VIEWS + ("cast",))
    sort = _producer(ids, "sort")
    if sort is not None and ids is sort.results[0]:  # the sorted ids, not the permutation
        ids = _through(sort.inputs[0], VIEWS + ("cast",))
    const = _producer(_through(c, VIEWS + ("cast",)), "constant")
    if ids is not r.ids or const is None:
        return False
    limit = r.experts if cmp.op == "ge" else r.experts - 1
    return float(const.attrs["value"]) >= limit


def _grouped(graph: Graph, r: Router, block: Block) -> Experts:
    gmm = [n for n in block.nodes if n.op == "grouped_mm"]
    if len(gmm) != 2:
        raise NoMatch(f"{len(gmm)} grouped_mm in the block, not 2")
    up, down = gmm
    offsets = up.inputs[2]
    if down.inputs[2] is not offsets:
        raise NoMatch("the two grouped_mm use different offsets")
    histc = _producer(_through(_through(offsets, ("cumsum",)), ("cast",)), "histc")
    if histc is None or (histc.attrs["bins"], histc.attrs["min"], histc.attrs["max"]) != (r.experts, 0, r.experts - 1):
        raise NoMatch(f"offsets %{offsets.name} are not a cumsum of histc(ids) over the {r.experts} experts")
    sort = _producer(_through(histc.inputs[0], ("cast",)), "sort")
    if sort is None or _through(sort.inputs[0], VIEWS) is not r.ids or sort.attrs["descending"]:
        raise NoMatch("histc does not count the sorted expert ids")
    rows = _producer(_through(_unmasked(up.inputs[0], r), ("cast",)), "index")
    if rows is None or _tokens_of(rows.inputs[0]) is not _tokens_of(r.h):
        raise NoMatch(f"the first grouped_mm's rows %{up.inputs[0].name} are not tokens gathered by expert")
    act = _activation(_unmasked(down.inputs[0], r))
    src, gate_rows, up_rows = _gate_up_source(act)
    product, gate_up_bias = _biased(_unmasked(src, r), _sorted_ids(r))
    if _unmasked(product, r) is not up.result:
        raise NoMatch("gate and up are not the two halves (or the even and odd columns) of the first grouped_mm")
    _check_tokens(block, r)
    biases = _expert_biases(r, gate_up_bias, _down_bias(down, r, _sorted_ids(r)), gate_rows, up_rows)
    return Experts(_linear_form(up.inputs[1], "gate", gate_rows), _linear_form(up.inputs[1], "up", up_rows),
                   _linear_form(down.inputs[1], "t"), act.act, act.alpha, act.limit, biases)


def _gathered(graph: Graph, r: Router, block: Block) -> tuple[Weight, Weight, Weight]:
    gathers = [n for n in block.nodes if n.op == "index" and n.attrs.get("dims") == (0,)
               and _through(n.inputs[1], VIEWS) is r.ids and n.inputs[0].kind == "param" and n.inputs[0].rank == 3]
    if len(gathers) != 3:
        raise NoMatch(f"{len(gathers)} gathers of 3-D expert weights by the expert ids, not 3 (gate, up, down)")
    silus = [n for n in block.nodes if n.op == "silu"]
    if len(silus) != 1:
        raise NoMatch(f"{len(silus)} silu in the block, not 1")
    ids = {id(n) for n in block.nodes}
    reach = {id(g): _descendants(g, ids) for g in gathers}
    gate = [g for g in gathers if id(silus[0]) in reach[id(g)]]
    mul = [u for u in silus[0].result.users if u.op == "mul"]
    if len(gate) != 1 or len(mul) != 1:
        raise NoMatch("no single gathered weight feeds the silu, or silu's result is not multiplied")
    rest = [g for g in gathers if g is not gate[0]]
    up = [g for g in rest if id(mul[0]) in reach[id(g)]]
    if len(up) != 1:
        raise NoMatch("no single gathered weight is multiplied with silu(gate)")
    down = [g for g in rest if g is not up[0]][0]
    d = r.h.shape[1]
    weights = []
    for g, want_k in ((gate[0], d), (up[0], d), (down, None)):
        p = g.inputs[0]
        if want_k is not None and (p.shape[2] != d or p.shape[1] == d):
            raise NoMatch(f"expert weight %{p.name} {p.type} is not [E, I, D] with I != D (orientation unknown)")
        weights.append(Weight(p, tuple(int(s) for s in p.shape)))
    if down.inputs[0].shape[1] != d:
        raise NoMatch(f"down weight %{down.inputs[0].name} is not [E, D, I]")
    _check_tokens(block, r)
    return weights[0], weights[1], weights[2]


def _unclamped(v: Value, ops: tuple[str, ...], experts: Optional[int] = None) -> Optional[Value]:
    """``v`` walked back over ``ops`` (views, casts) and clamps that keep ``[0, experts - 1]`` (no-ops on expert ids;
    transformers clamps expert-parallel sentinels so); None at a clamp that narrows that range. ``experts`` None:
    over any clamp."""
    while True:
        v = _through(v, ops)
        c = _producer(v, "clamp")
        if c is None:
            return v
        lo, hi = c.attrs["min"], c.attrs["max"]
        if experts is not None and ((lo is not None and lo > 0) or (hi is not None and hi < experts - 1)):
            return None
        v = c.inputs[0]


def _is_expert_ids(v: Value, r: Router) -> bool:
    """``v`` is the top-k ids through views and clamps to [0, E - 1] (no-ops on top-k ids)."""
    return _unclamped(v, VIEWS, r.experts) is r.ids


def _repeated_tokens(v: Value, r: Router) -> bool:
    """``v`` is ``h.repeat_interleave(k, dim=0)``: reshape([T*k, D]) of expand([T, k, D]) of unsqueeze(h, 1)."""
    e = _producer(_producer(v, "reshape").inputs[0], "expand") if _producer(v, "reshape") else None
    u = _producer(e.inputs[0], "unsqueeze") if e is not None else None
    if u is None or _tokens_of(u.inputs[0]) is not _tokens_of(r.h) or u.attrs["dim"] not in (1, -2):
        return False
    return tuple(e.result.shape[1:]) == (r.top_k, r.h.shape[1]) and v.rank == 2


def _batched_operands(mm: Node, r: Router) -> Optional[tuple[Node, Value, bool]]:
    """A batched product of gathered expert weights: ``W[ids] @ x[..., None]`` (Mixtral's ``[E, N, K]`` weights)
    or ``x[:, None, :] @ W[ids]`` (gpt-oss's ``[E, K, N]``): ``(the gather of W, the unsqueezed rows, whether W is
    K-major)``, or None."""
    if mm.op != "matmul" or mm.inputs[0].rank != 3 or mm.inputs[1].rank != 3:
        return None
    for w, x, k_major in ((mm.inputs[0], mm.inputs[1], False), (mm.inputs[1], mm.inputs[0], True)):
        gather, col = _producer(w, "index"), _producer(x, "unsqueeze")
        if gather is None or col is None or gather.attrs.get("dims") != (0,) or not _expert_param(gather.inputs[0]) \
                or gather.inputs[0].rank != 3 or not _is_expert_ids(gather.inputs[1], r):
            continue
        if col.attrs["dim"] % x.rank == (1 if k_major else 2):
            return gather, x, k_major
    return None


def _weight_rows(param: Value, k_major: bool, suffix: str, rows: Optional[slice]) -> Weight:
    """The ``[E, N, K]`` expert weight of a batched product's parameter (``k_major``: stored ``[E, K, N]``, copied
    contiguous by :func:`_linear_form`), rows ``rows`` of N (views of an ``[E, N, K]`` parameter), or of its first
    experts (:func:`_prefix`: a view of those, which the copies of a K-major weight take alone)."""
    source, n = _prefix(param)
    if n is not None:
        return _first_experts(_weight_rows(source, k_major, suffix, rows), n)
    if k_major:
        return _linear_form(param, suffix, rows)
    shape = tuple(int(d) for d in param.shape)
    if rows is None:
        return Weight(param, shape)
    return Weight(param, (shape[0], len(range(shape[1])[rows]), shape[2]), f"{param.name}.{suffix}",
                  lambda ts: ts[param.name][:, rows])


def _first_experts(w: Weight, n: int) -> Weight:
    """``w`` (of a whole parameter) cut to its first ``n`` experts: views of the parameter's, and a copy only where
    ``w`` copies (a K-major weight), of those experts alone."""
    name, full = w.param.name, w.make

    def first(ts: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {name: ts[name][:n]}  # (a KeyError where the graph has no tensors, as make's own)

    make: Callable[[dict[str, torch.Tensor]], torch.Tensor] = (lambda ts: ts[name][:n]) if full is None else \
        (lambda ts: full(first(ts)))
    view = w.view
    return Weight(w.param, (n, *w.shape[1:]), w.name or f"{name}.first{n}", make,
                  (lambda ts: view(first(ts))) if view is not None else None)


def _batched(graph: Graph, r: Router, block: Block) -> Experts:
    """HF's ``batched_mm`` experts (what ``generate`` switches to for decoding off the CPU): the
    concatenated gate/up weight and the down weight gathered per (token, expert) pair, ``bmm`` each
    (Mixtral: ``W[ids] @ x``; gpt-oss: ``x @ W[ids]``, biases gathered the same way)."""
    prods = [(n, found) for n in block.nodes if (found := _batched_operands(n, r)) is not None]
    for n in block.nodes:  # a product of gathered expert weights that is not one of the two forms: say which
        gathers = [_producer(v, "index") for v in n.inputs] if n.op == "matmul" else []
        if any(g is not None and _expert_param(g.inputs[0]) and g.inputs[0].rank == 3 for g in gathers) \
                and all(m is not n for m, _ in prods):
            raise NoMatch(f"%{n.result.name} is not W[expert_ids] @ x[..., None] (nor x[:, None] @ W[expert_ids])")
    if len(prods) != 2:
        raise NoMatch(f"{len(prods)} batched products of gathered expert weights, not 2 (gate/up, down)")
    (gu, (gu_gather, x, gu_k_major)), (dn, (dn_gather, h, dn_k_major)) = prods
    if not _repeated_tokens(x.producer.inputs[0], r):
        raise NoMatch(f"the gate/up product's rows %{x.name} are not each token repeated top-k times")
    act = _activation(h.producer.inputs[0])
    src, gate_rows, up_rows = _gate_up_source(act)
    ids_ok: Callable[[Value], bool] = lambda v: _is_expert_ids(v, r)  # noqa: E731
    product, gate_up_bias = _biased(src, ids_ok)
    if _through(product, ("squeeze",)) is not gu.result:
        raise NoMatch("gate and up are not the two halves (or the even and odd columns) of the gate/up product")
    _check_tokens(block, r, allowed=(x,))
    biases = _expert_biases(r, gate_up_bias, _down_bias(dn, r, ids_ok), gate_rows, up_rows)
    wgu, wd = gu_gather.inputs[0], dn_gather.inputs[0]
    return Experts(_weight_rows(wgu, gu_k_major, "gate", gate_rows), _weight_rows(wgu, gu_k_major, "up", up_rows),
                   _weight_rows(wd, dn_k_major, "t", None),
                   act.act, act.alpha, act.limit, biases)


def _descendants(n: Node, within: set[int]) -> set[int]:
    seen: set[int] = set()
    work = [n]
    while work:
        cur = work.pop()
        for v in cur.results:
            for u in v.users:
                if id(u) in within and id(u) not in seen:
                    seen.add(id(u))
                    work.append(u)
    return seen


def _gated_mlp(v: Value, h: Value) -> Optional[tuple[Value, Value, Value]]:
    """``v = linear(silu(linear(h, wg)) * linear(h, wu), wd)`` over 2-D parameters: (wg, wu, wd)."""
    lin = _producer(v, "linear")
    if lin is None or len(lin.inputs) != 2 or lin.inputs[1].kind != "param":
        return None
    try:
        g, u = _gated_product(lin.inputs[0])
    except NoMatch:
        return None
    lg, lu = _producer(g, "linear"), _producer(u, "linear")
    for ln in (lg, lu):
        if ln is None or len(ln.inputs) != 2 or ln.inputs[1].kind != "param" or _tokens_of(ln.inputs[0]) is not h:
            return None
    assert lg is not None and lu is not None
    return lg.inputs[1], lu.inputs[1], lin.inputs[1]


def _param_slice(v: Value) -> Optional[tuple[Value, int]]:
    """``v = select(P, dim=0, index=e)`` of a 3-D parameter: (P, e)."""
    sel = _producer(v, "select")
    if sel is None or sel.attrs["dim"] != 0 or sel.inputs[0].kind != "param" or sel.inputs[0].rank != 3:
        return None
    return sel.inputs[0], int(sel.attrs["index"])


def _sliced_mlp(v: Value, h: Value) -> Optional[tuple[Value, Value, int, int]]:
    """``v = linear(silu(g) * u, P_out[e])`` with g, u the two halves of ``linear(h, P_in[e])`` (one expert of two
    ``[E, *, *]`` parameters, HF 4.x Granite-MoE's dense form): (P_in, P_out, e, half)."""
    lin = _producer(v, "linear")
    if lin is None or len(lin.inputs) != 2 or (down := _param_slice(lin.inputs[1])) is None:
        return None
    try:
        g, u = _gated_product(lin.inputs[0])
    except NoMatch:
        return None
    split = _producer(g, "split")
    if (split is None or u.producer is not split or (g.index, u.index) != (0, 1)
            or len(split.attrs["sizes"]) != 2 or len(set(split.attrs["sizes"])) != 1
            or split.attrs["dim"] % split.inputs[0].rank != split.inputs[0].rank - 1):
        return None
    up = _producer(split.inputs[0], "linear")
    if up is None or len(up.inputs) != 2 or _tokens_of(up.inputs[0]) is not h:
        return None
    gate_up = _param_slice(up.inputs[1])
    if gate_up is None or gate_up[1] != down[1]:
        return None
    return gate_up[0], down[0], down[1], int(split.attrs["sizes"][0])


def _looped(graph: Graph, r: Router, block: Block) -> tuple[Weight, Weight, Weight]:
    h = _tokens_of(r.h)
    ids = {id(n) for n in block.nodes}
    experts: dict[int, tuple[Value, Value, Value]] = {}
    sliced: dict[int, tuple[Value, Value, int, int]] = {}
    for v in block.externals:
        mlp = _gated_mlp(v, h)
        piece = _sliced_mlp(v, h) if mlp is None else None
        if mlp is None and piece is None:
            continue
        users = [u for u in v.users if id(u) in ids]
        consts: set[int] = set()
        for u in users:
            for m in block.nodes:
                if id(m) in _ancestors_within(u.result, ids) and m.op == "eq":
                    a, b = m.inputs
                    c = b if _through(a, VIEWS) is r.ids else a
                    if _through(_other(m, c), VIEWS) is r.ids and (k := _producer(c, "constant")) is not None:
                        consts.add(int(k.attrs["value"]))
        if len(consts) != 1:
            raise NoMatch(f"expert output %{v.name} is not weighted by one eq(expert_ids, e)")
        e = consts.pop()
        if e in experts or e in sliced:
            raise NoMatch(f"expert {e} appears twice")
        if piece is not None:
            if piece[2] != e:
                raise NoMatch(f"expert output %{v.name} is weighted as expert {e} but computed with slice {piece[2]}")
            sliced[e] = piece
        else:
            assert mlp is not None
            experts[e] = mlp
    if sliced:
        return _sliced_weights(block, r, h, sliced)
    if sorted(experts) != list(range(r.experts)):
        raise NoMatch(f"found experts {sorted(experts)} of {r.experts} gated MLPs")
    _check_tokens(block, r, allowed=tuple(v for v in block.externals if _gated_mlp(v, h) is not None))
    names = [p.name for mlp in experts.values() for p in mlp]
    prefix = _common_prefix(names)
    out = []
    for role, j in (("w_gate", 0), ("w_up", 1), ("w_down", 2)):
        ps = [experts[e][j] for e in range(r.experts)]
        if len({tuple(p.shape) for p in ps}) != 1:
            raise NoMatch(f"the experts' {role} weights differ in shape")
        shape = (r.experts, *(int(s) for s in ps[0].shape))
        out.append(Weight(ps[0], shape, f"{prefix}{role}", _stacker([p.name for p in ps])))
    return out[0], out[1], out[2]


def _sliced_weights(block: Block, r: Router, h: Value, sliced: dict[int, tuple[Value, Value, int, int]]
                    ) -> tuple[Weight, Weight, Weight]:
    """The looped form over slices of two ``[E, 2I, D]`` / ``[E, D, I]`` parameters: every expert from the same two,
    slice e weighted as expert e; the gate/up halves are views of the first (no copies)."""
    if sorted(sliced) != list(range(r.experts)):
        raise NoMatch(f"found sliced experts {sorted(sliced)} of {r.experts}")
    if len({(id(p_in), id(p_out), half) for p_in, p_out, _, half in sliced.values()}) != 1:
        raise NoMatch("the sliced experts do not all come from the same two parameters")
    p_in, p_out, _, half = sliced[0]
    d = int(r.h.shape[1])
    if (tuple(p_in.shape) != (r.experts, 2 * half, d) or tuple(p_out.shape) != (r.experts, d, half)):
        raise NoMatch(f"expert weights %{p_in.name} {p_in.type} and %{p_out.name} {p_out.type} are not "
                      f"[E, 2I, D] and [E, D, I]")
    _check_tokens(block, r, allowed=tuple(v for v in block.externals if _sliced_mlp(v, h) is not None))
    e = r.experts
    return (Weight(p_in, (e, half, d), f"{p_in.name}.gate", lambda ts: ts[p_in.name][:, :half]),
            Weight(p_in, (e, half, d), f"{p_in.name}.up", lambda ts: ts[p_in.name][:, half:]),
            Weight(p_out, (e, d, half)))


def _stacker(names: list[str]) -> Callable[[dict[str, torch.Tensor]], torch.Tensor]:
    """Stack the experts' 2-D weights into one ``[E, N, K]`` tensor (a copy, made once at compile time)."""
    return lambda tensors: torch.stack([tensors[n] for n in names]).contiguous()


def _common_prefix(names: list[str]) -> str:
    parts = [n.split(".") for n in names]
    common: list[str] = []
    for seg in zip(*parts):
        if len(set(seg)) != 1:
            break
        common.append(seg[0])
    return ".".join(common) + "." if common else "moe."


def _repeated_tokens_expert_major(v: Value, r: Router) -> bool:
    """``v`` is ``h.repeat(E, 1)``: ``[E*T, D]`` whose row ``e*T + t`` is token t, as the capture writes it:
    reshape of expand(``[1, ...]`` view of h over dim 0 only)."""
    rs = _producer(v, "reshape")
    ex = _producer(rs.inputs[0], "expand") if rs is not None else None
    if ex is None or v.rank != 2 or not dims_equal(v.shape[1], r.h.shape[1]):
        return False
    src = ex.inputs[0]
    if src.rank != ex.result.rank or src.shape[0] != 1 or ex.result.shape[0] != r.experts:
        return False
    if any(not dims_equal(a, b) for a, b in zip(src.shape[1:], ex.result.shape[1:])):
        return False  # only dim 0 expanded: the tokens keep their order inside each expert's copy
    return _tokens_of(src) is _tokens_of(r.h) and dims_equal(numel(src.shape), numel(r.h.shape))


def _dense(graph: Graph, r: Router, block: Block) -> tuple[Weight, Weight, Weight]:
    """Llama 4's experts: every expert over every token (``h.repeat(E, 1)``), each copy scaled by the token's
    routing weight for that expert first (0 where it did not choose it: the expert, with no biases, then gives
    0), a batched product with the ``[E, D, 2I]`` gate/up weight, ``up * silu(gate)``, one with the ``[E, I, D]``
    down weight, summed over the experts. The weights become ``[E, I, D]`` / ``[E, D, I]`` copies (the model's
    are K-major; the expert kernels read rows contiguous in K)."""
    if r.score != "sigmoid":
        raise NoMatch("the dense form scales the tokens by the router's sigmoid scores (Llama 4)")
    total = _producer(block.out, "sum")
    if total is None or tuple(total.attrs["dims"]) not in ((0,), (-3,)) or total.attrs.get("keepdim") \
            or total.inputs[0].rank != 3:
        raise NoMatch(f"the block's result %{block.out.name} is not a sum over the experts' outputs")
    down = _producer(total.inputs[0], "matmul")
    if down is None or down.inputs[1].kind != "param" or down.inputs[1].rank != 3:
        raise NoMatch("the experts' sum does not read a product with a 3-D down weight")
    split = _halves(*_gated_product(down.inputs[0]))
    if split.attrs["dim"] % split.inputs[0].rank != 2:
        raise NoMatch("gate and up are not the two halves of one product")
    gu = _producer(split.inputs[0], "matmul")
    if gu is None or gu.inputs[1].kind != "param" or gu.inputs[1].rank != 3:
        raise NoMatch("gate and up are not a product with a 3-D weight")
    scaled = _producer(gu.inputs[0], "reshape")
    mul = _producer(scaled.inputs[0], "mul") if scaled is not None else None
    if mul is None or gu.inputs[0].shape[0] != r.experts:
        raise NoMatch(f"the gate/up product's rows %{gu.inputs[0].name} are not [E, T, D] scaled tokens")
    rep = None
    for a, b in (mul.inputs, mul.inputs[::-1]):
        col = _producer(_through(b, ("cast",)), "reshape")
        tr = _producer(col.inputs[0], "transpose") if col is not None else None
        if (tr is not None and {tr.attrs["dim0"] % 2, tr.attrs["dim1"] % 2} == {0, 1}
                and _through(tr.inputs[0], ("cast",)) is r.weights and _repeated_tokens_expert_major(a, r)):
            rep = a
    if rep is None:
        raise NoMatch("the tokens are not each expert's copy scaled by its column of the router scores")
    e, d, half = r.experts, int(r.h.shape[1]), int(split.attrs["sizes"][0])
    wgu, wd = gu.inputs[1], down.inputs[1]
    if tuple(wgu.shape) != (e, d, 2 * half) or tuple(wd.shape) != (e, half, d):
        raise NoMatch(f"expert weights %{wgu.name} {wgu.type} and %{wd.name} {wd.type} are not [E, D, 2I] and "
                      "[E, I, D]")
    _check_tokens(block, r, allowed=(rep,))
    return _linear_form(wgu, "gate", slice(0, half)), _linear_form(wgu, "up", slice(half, None)), _linear_form(wd, "t")


Form = Callable[[Graph, Router, Block], Union[Experts, tuple[Weight, Weight, Weight]]]
FORMS: list[tuple[str, Form]] = [("grouped", _grouped), ("batched", _batched), ("gathered", _gathered),
                                 ("looped", _looped)]
# routers whose weights scale the tokens before the experts (score="sigmoid", Llama 4): only this form
WEIGHTED_INPUT_FORMS: list[tuple[str, Form]] = [("dense", _dense)]
# forms that find the experts' biases and the clamped SwiGLU (gpt-oss); the others decline a biased router
BIASED_FORMS = ("grouped", "batched")


# ---------------------------------------------------------------------------------------------
# the shared expert (Qwen2-MoE): out + sigmoid(linear(h, g)) * mlp(h)
# ---------------------------------------------------------------------------------------------


def _shared(out: Value, h: Value) -> Optional[tuple[Node, list[Value]]]:
    users = out.users
    if len(users) != 1 or users[0].op != "add":
        return None
    add = users[0]
    mul = _producer(_other(add, out), "mul")
    if mul is None:
        return None
    for a, b in (mul.inputs, mul.inputs[::-1]):
        sig = _producer(a, "sigmoid")
        gate = _producer(sig.inputs[0], "linear") if sig is not None else None
        mlp = _gated_mlp(b, h)
        if gate is None or mlp is None or len(gate.inputs) != 2 or _tokens_of(gate.inputs[0]) is not h:
            continue
        sr = gate.inputs[1]
        if sr.kind == "param" and tuple(sr.shape)[:1] == (1,):
            return add, [*mlp, sr]
    return None


# ---------------------------------------------------------------------------------------------
# the pass
# ---------------------------------------------------------------------------------------------


def _materialise(graph: Graph, w: Weight, dtype: torch.dtype, copies: Optional[list[str]] = None) -> Value:
    """The parameter for ``w``: the model's own, a view of it, or a new tensor (then named in ``copies`` with its
    size: memory the compiled model holds beside the model's weights)."""
    if w.make is None:
        return w.param
    from membound.ir.types import TensorType

    try:
        tensor: Optional[torch.Tensor] = w.make(graph.tensors)
    except KeyError:  # a graph without tensors (IR text): the new parameter has a type only
        tensor = None
    source = graph.tensors.get(w.param.name)
    if copies is not None and tensor is not None and source is not None \
            and tensor.untyped_storage().data_ptr() != source.untyped_storage().data_ptr():
        copies.append(f"{w.name} ({tensor.numel() * tensor.element_size() / 2**20:.3g} MiB)")
    return graph.add_param(w.name, TensorType(dtype, w.shape), tensor)


# the share of a device's free memory the [E, N, K] copies of K-major experts may take (the rest stays for the KV cache
# and activations); past it the block stays unfused, its products reading the model's own weights
COPY_FREE_SHARE = float(os.environ.get("MEMBOUND_MOE_COPY_SHARE", "0.5"))  # 0: always in place (A/B runs)


def copy_bytes(graph: Graph, weights: Sequence[Weight]) -> int:
    """Bytes of the new tensors ``weights`` would make (copies, not views, of the model's), found on meta tensors."""
    class Meta(dict):  # the graph's tensors as meta tensors of the same strides, made when asked for
        def __missing__(self, name: str) -> torch.Tensor:
            t = graph.tensors[name]
            self[name] = meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
            return meta

    tensors, total = Meta(), 0
    for w in weights:
        try:
            probe = w.make(tensors) if w.make is not None else None
        except KeyError:  # a graph without tensors (IR text): nothing to copy
            probe = None
        if probe is None:
            continue
        if probe._base is None:  # (a view of a probe keeps it as its base; stacks and .contiguous() do not)
            total += probe.numel() * probe.element_size()
    return total


def _fit_copies(graph: Graph, x: Experts) -> tuple[Experts, str]:
    """``x`` as it is while its copies take at most :data:`COPY_FREE_SHARE` of the free memory of the CUDA device
    holding the model's weights (CPU tensors: no limit); past that, its K-major weights as views of the model's
    (read in place, at any strides) and a note saying so. NoMatch where even then the copies left (stacked
    experts) do not fit. gpt-oss-20b's experts make ~36 GiB of bf16 copies beside its own 42: not on an 80 GB card."""
    weights = [x.gate, x.up, x.down, *(x.biases or ())]
    need = copy_bytes(graph, weights)
    room = free_memory([graph.tensors[w.param.name].device for w in weights if w.param.name in graph.tensors])
    if need == 0 or room is None or need <= COPY_FREE_SHARE * room[1]:
        return x, ""
    device, free = room
    gate, up, down = (replace(w, make=w.view, view=None) if w.view is not None else w for w in (x.gate, x.up, x.down))
    left = copy_bytes(graph, [gate, up, down, *(x.biases or ())])
    if left > COPY_FREE_SHARE * free:
        raise NoMatch(f"its experts' [E, N, K] copies would take {left / 2**30:.3g} GiB, more than "
                      f"{COPY_FREE_SHARE:.0%} of the {free / 2**30:.3g} GiB free on {device}")
    return replace(x, gate=gate, up=up, down=down), (
        f"expert weights read in place, K-major: [E, N, K] copies would take {need / 2**30:.3g} GiB, more than "
        f"{COPY_FREE_SHARE:.0%} of the {free / 2**30:.3g} GiB free on {device}")


def free_memory(devices: Sequence[torch.device]) -> Optional[tuple[str, int]]:
    """(name, free bytes) of the first CUDA device among ``devices``; None without one."""
    cuda = [d for d in devices if d.type == "cuda"]
    return (str(cuda[0]), torch.cuda.mem_get_info(cuda[0])[0]) if cuda else None


def _check_experts(r: Router, block: Block, x: Experts) -> None:
    """What every form must give: gate/up ``[E, I, D]``, down ``[E, D, I]``, biases ``[E, I]``, ``[E, I]``, ``[E, D]``
    with the router's, and no parameter the block reads left out (its product would be dropped silently)."""
    e, d = r.experts, int(r.h.shape[1])
    i = x.gate.shape[1]
    want = [(x.gate, (e, i, d)), (x.up, (e, i, d)), (x.down, (e, d, i))]
    if x.biases is not None:
        want += list(zip(x.biases, ((e, i), (e, i), (e, d))))
    for w, shape in want:
        if tuple(w.shape) != shape:
            raise NoMatch(f"expert tensor %{w.param.name} gives {list(w.shape)} where {list(shape)} belongs")
    if not r.given and (x.biases is not None) != (r.bias is not None):
        raise NoMatch("the router has a bias and the experts none, or the reverse")
    used = {id(w.param) for w in (x.gate, x.up, x.down, *(x.biases or ()))}
    for v in block.externals:
        p = _prefix(_through(v, ("transpose",)))[0]
        if p.kind == "param" and id(p) not in used:
            raise NoMatch(f"the block reads parameter %{p.name}, which the recognised experts do not account for")


def _fuse_one(graph: Graph, topk: Node, copies: Optional[list[str]] = None, notes: Optional[list[str]] = None,
              ids: Optional[Value] = None) -> str:
    """Rewrite the block of ``topk``; returns the form's name (NoMatch when it does not match). New expert tensors
    that are copies, not views, of the model's are named in ``copies``."""
    if ids is not None:  # expert ids no topk makes: only the graph's own routing
        r = _given_router(graph, topk, ids)
    else:
        try:
            r = _router(topk)
        except NoMatch as e:
            try:
                r = _given_router(graph, topk)
            except NoMatch as given:
                raise NoMatch(f"{e}; nor a routing the graph computes for moe_experts: {given}") from None
    block = _block(graph, r)
    reasons = []
    forms = WEIGHTED_INPUT_FORMS if r.score == "sigmoid" else FORMS
    for name, form in forms:
        try:
            if (r.bias is not None or r.given) and name not in BIASED_FORMS:
                raise NoMatch("its router has a bias or is the graph's own, which only the grouped and batched "
                              "forms take")
            found = form(graph, r, block)
            experts = found if isinstance(found, Experts) else Experts(*found)
            _check_experts(r, block, experts)
            if r.given:
                _check_given_weighting(graph, r, block)
            experts, note = _fit_copies(graph, experts)
            if note and notes is not None:
                notes.append(note)
            break
        except NoMatch as e:
            reasons.append(f"{name}: {e}")
    else:
        raise NoMatch("; ".join(reasons))
    weights = (experts.gate, experts.up, experts.down)
    h, out = r.h, block.out
    while len(out.users) == 1 and out.users[0].op == "cast" and out.users[0].result.dtype == h.dtype:
        out = out.users[0].result
    shared = _shared(out, _tokens_of(h)) if out.dtype == h.dtype and not r.given else None
    replaced = shared[0].result if shared is not None else out
    anchor = replaced.producer
    assert anchor is not None
    expert_ops = [_materialise(graph, w, h.dtype, copies) for w in weights]
    bias_ops = [_materialise(graph, b, h.dtype, copies) for b in experts.biases or ()]
    act = dict(act=experts.act, bias=experts.biases is not None, alpha=experts.alpha, limit=experts.limit)
    if r.given:  # the graph's routing stays; the experts become moe_experts over its weights and ids
        node = graph.create_node("moe_experts", [h, r.weights, r.ids, *expert_ops, *bias_ops], act)
    else:
        operands = [h, r.weight, *expert_ops, *(shared[1] if shared is not None else [])]
        if experts.biases is not None:
            assert r.bias is not None
            operands += [r.bias, *bias_ops]
        node = graph.create_node("moe", operands, dict(top_k=r.top_k, softmax_first=r.softmax_first,
                                                       renormalize=r.renormalize, score=r.score,
                                                       weight_input=r.score == "sigmoid", **act))
    graph.insert_before(anchor, node)
    new = node.result
    fixups = [("reshape", {"shape": replaced.shape}, tuple(new.shape) != tuple(replaced.shape)),
              ("cast", {"dtype": replaced.dtype}, new.dtype != replaced.dtype)]
    for op, attrs, needed in fixups:
        if needed:
            fix = graph.insert_before(anchor, graph.create_node(op, [new], attrs))
            new = fix.result
    graph.replace_all_uses(replaced, new)
    erase_if_dead(graph, anchor)
    return name + (" + shared expert" if shared is not None else "") + (" (given routing)" if r.given else "")


def _untopped_ids(graph: Graph) -> list[Value]:
    """``[T, k]`` integer values that expert products are routed by (sorted for the grouped form, gathering 3-D
    parameters for the batched one) and that no ``topk`` makes."""
    found: dict[int, Value] = {}
    for n in graph.nodes:
        if n.op == "sort":
            v = n.inputs[0]
        elif n.op == "index" and n.attrs.get("dims") == (0,) and n.inputs[0].kind == "param" and n.inputs[0].rank == 3:
            v = n.inputs[1]
        else:
            continue
        v = _unclamped(v, VIEWS)
        assert v is not None  # (no bound given: every clamp is walked over)
        if v.rank == 2 and not v.dtype.is_floating_point and v.producer is not None and v.producer.op != "topk":
            found.setdefault(id(v), v)
    return list(found.values())


def _note_unfused(graph: Graph, unfused: list[tuple[Node, str]], ctx: PassContext) -> None:
    """One note per top-k left unfused: why, or, for a top-k inside the routing of a block fused over the graph's
    routing (DeepSeek-V3's group selection), that it is part of it (the why would only say it is no router)."""
    given = [n for n in graph.nodes if n.op == "moe_experts"]
    routing = {node: g for g in given for v in g.inputs[1:3] for node in _ancestors(v)}  # (weights, ids)
    for topk, why in unfused:
        if topk.graph is not graph:
            continue
        owner = routing.get(id(topk))
        if owner is not None:
            ctx.note(f"topk %{topk.results[0].name}: part of the routing moe_experts %{owner.results[0].name} "
                     "reads (stays as the graph computes it)")
        else:
            ctx.note(f"topk %{topk.results[0].name} left unfused: {why}")


@register_pass("fuse-moe")
def fuse_moe(graph: Graph, ctx: PassContext) -> bool:
    """Rewrite every recognised mixture-of-experts block (anchored at its router's ``topk``) to ``moe``."""
    fused: dict[str, int] = {}
    unfused: list[tuple[Node, str]] = []  # (topk, why): noted after the loop (see _note_unfused)
    for topk in [n for n in graph.nodes if n.op == "topk"]:
        if topk.graph is not graph:
            continue  # erased with an earlier block
        try:
            copies: list[str] = []
            notes: list[str] = []
            form = _fuse_one(graph, topk, copies, notes)
            for note in notes:
                ctx.note(f"topk %{topk.results[0].name}: {note}")
            if copies:
                ctx.note(f"topk %{topk.results[0].name}: expert weights copied to the [E, N, K] layout the kernels "
                         f"read (memory beside the model's own): {', '.join(copies)}")
        except NoMatch as e:
            unfused.append((topk, str(e)))
            continue
        fused[form] = fused.get(form, 0) + 1
    for ids in _untopped_ids(graph):  # expert ids made by other ops (PhiMoE's sparsemixer: two max indices)
        anchor = ids.producer
        if anchor is None or anchor.graph is not graph:
            continue
        try:
            form = _fuse_one(graph, anchor, ids=ids)
        except NoMatch as e:
            ctx.note(f"expert ids %{ids.name} left unfused: {e}")
            continue
        fused[form] = fused.get(form, 0) + 1
    _note_unfused(graph, unfused, ctx)
    if not fused:
        return False
    graph.remove_unused_params()
    ctx.note(", ".join(f"{k}: {v}" for k, v in sorted(fused.items())))
    return True
