"""A decode step's routed pairs in one launch: routing weights, pairs sorted by expert, per-expert offsets.

``moe``'s wrapper needs, from each token's top-k experts (``torch.topk``, as the model computes them:
``membound.ir.ops.moe.route``), their routing weights (softmax before the top-k, or over the k chosen
logits; renormalised or not), the ``T * k`` (token, expert) pairs sorted by expert (stable: a token's pairs
stay in slot order) and the per-expert offsets into that order. In torch the part after the top-k is
about ten launches (sum, divide, a stable sort, the comparison count, a zeroed buffer, a cumulative sum, a
copy, a flattening copy): at batch 1 more than a tenth of an MoE layer's time, between two expert kernels
that stream hundreds of megabytes.

:func:`route_pairs` does that part in one program, for up to :data:`MAX_PAIRS` pairs:

- weights: the chosen probabilities (``softmax_first``) or the softmax over the k chosen logits, then
  divided by their sum (``renormalize``), in fp32 as the reference computes them;
- the sorted position of pair ``p`` (expert ``e_p``) is the number of pairs with a smaller expert plus the
  number of earlier pairs with the same one, one ``[P, P]`` comparison;
- ``offsets[e]`` counts the pairs with an expert below ``e``.

The top-k itself stays ``torch.topk``: which of two equal scores it keeps is its own (CPU and CUDA differ),
and the compiled model must keep the model's choice. Nothing is read back to the host: a CUDA graph can
hold it.

A decode step whose expert kernels route themselves (``moe.routes_in_kernels``) needs neither the sort nor
the weights pass: :func:`router_topk` gives it the router's logits in one launch and ``torch.topk`` over them,
and each expert kernel finds its expert's pairs and their weights (``moe._chunk_pairs``,
``moe._pair_weights``). :func:`route_pairs` serves the grouped path's steps of few pairs, and decode steps
whose down kernel would not fit one wave with the routing in it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import launchable
from membound.ir.ops.moe import route, route_topk

MAX_PAIRS = 128  # [P, P] comparisons in one program of 4 warps: 16K elements
MAX_EXPERTS = 256


@triton.jit
def _route_pairs(
    top_ptr, idx_ptr, w_ptr, order_ptr, offs_ptr, P, E,
    TOP_K: tl.constexpr, SOFTMAX_FIRST: tl.constexpr, RENORM: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_B: tl.constexpr,
):
    # weights: a [T, k] tile (top and idx are contiguous [T, k])
    ts = tl.arange(0, BLOCK_T)
    js = tl.arange(0, BLOCK_K)
    tile = ts[:, None] * TOP_K + js[None, :]
    tile_ok = (tile < P) & (js < TOP_K)[None, :]
    top = tl.load(top_ptr + tile, mask=tile_ok, other=float("-inf")).to(tl.float32)
    row_ok = ts * TOP_K < P
    if SOFTMAX_FIRST:
        weights = tl.where(tile_ok, top, 0.0)
    else:
        top_max = tl.where(row_ok, tl.max(top, axis=1), 0.0)
        weights = tl.where(tile_ok, tl.exp(top - top_max[:, None]), 0.0)
        weights = weights / tl.where(row_ok, tl.sum(weights, axis=1), 1.0)[:, None]
    if RENORM:
        weights = weights / tl.where(row_ok, tl.sum(weights, axis=1), 1.0)[:, None]
    tl.store(w_ptr + tile, weights, mask=tile_ok)
    # the stable order by expert: pair p goes after every pair of a smaller expert and the earlier pairs of its own
    ps = tl.arange(0, BLOCK_P)
    p_ok = ps < P
    ep = tl.load(idx_ptr + ps, mask=p_ok, other=E).to(tl.int32)  # padding sorts last
    # row p, column q: does pair q go before pair p
    before = (ep[None, :] < ep[:, None]) | ((ep[None, :] == ep[:, None]) & (ps[None, :] < ps[:, None]))
    pos = tl.sum(before.to(tl.int32), axis=1)
    tl.store(order_ptr + pos, ps.to(tl.int64), mask=p_ok)
    bounds = tl.arange(0, BLOCK_B)  # offsets[0..E]
    below = tl.sum((ep[None, :] < bounds[:, None]).to(tl.int64), axis=1)
    tl.store(offs_ptr + bounds, below, mask=bounds <= E)


@triton.jit
def _router_logits(x_ptr, w_ptr, b_ptr, out_ptr, E, D, stride_x, stride_w, BLOCK_D: tl.constexpr,
                   HAS_BIAS: tl.constexpr = False):
    """Program (token t, expert e): ``x[t] . router[e]`` accumulated in fp32, plus the bias ``b[e]``
    (``HAS_BIAS``), rounded to x's dtype (what ``F.linear(x, router, b).float()`` gives) and stored in fp32."""
    t = tl.program_id(0).to(tl.int64)
    e = tl.program_id(1).to(tl.int64)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        ds = d0 + tl.arange(0, BLOCK_D)
        ok = ds < D
        xv = tl.load(x_ptr + t * stride_x + ds, mask=ok, other=0.0).to(tl.float32)
        wv = tl.load(w_ptr + e * stride_w + ds, mask=ok, other=0.0).to(tl.float32)
        acc += xv * wv
    logit = tl.sum(acc, axis=0)
    if HAS_BIAS:
        logit += tl.load(b_ptr + e).to(tl.float32)
    logit = logit.to(x_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + t * E + e, logit)


def router_topk(h: torch.Tensor, router: torch.Tensor, top_k: int, router_bias: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(logits f32[T, E], values f32[T, k], experts i64[T, k])`` for tokens ``h[T, D]``: the router's logits
    (plus ``router_bias[E]``) rounded through h's dtype, as ``F.linear(h, router, router_bias).float()``, in one
    launch (cuBLAS takes three for a
    decode step's: a split-K GEMV, its reduction, the cast), then ``torch.topk`` of the logits. The experts
    are ``route_topk``'s: the softmax is monotonic, so the top-k of the logits and of the probabilities are
    the same experts, ties included (equal logits give equal probabilities; ``torch.topk`` breaks them the
    same way). On CUDA unsorted (the values in ``torch.topk``'s own order: a sort launch fewer; the decode
    kernels take the row maximum themselves); sorted elsewhere, where which tied expert an unsorted CPU
    ``topk`` keeps is its own."""
    t, d = h.shape
    e = router.shape[0]
    if h.stride(-1) == 1 and router.stride(-1) == 1 and t > 0:
        logits = torch.empty((t, e), dtype=torch.float32, device=h.device)
        bias = router_bias.contiguous() if router_bias is not None else router
        launchable(_router_logits, h.device)[(t, e)](h, router, bias, logits, e, d, h.stride(0), router.stride(0),
                                                     BLOCK_D=min(4096, triton.next_power_of_2(d)),
                                                     HAS_BIAS=router_bias is not None, num_warps=4)
    else:
        logits = F.linear(h, router, router_bias).float()
    top, idx = torch.topk(logits, top_k, dim=-1, sorted=not h.is_cuda)
    return logits, top, idx


def fits(tokens: int, experts: int, top_k: int) -> bool:
    """Whether :func:`route_pairs` takes this step (few pairs, few experts)."""
    return 0 < tokens * top_k <= MAX_PAIRS and experts <= MAX_EXPERTS and 0 < top_k <= experts


def route_pairs(top: torch.Tensor, idx: torch.Tensor, experts: int, softmax_first: bool, renormalize: bool
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights f32[T*k], order i64[T*k], offsets i64[E+1])`` from ``torch.topk``'s ``(values, indices)``
    ``[T, k]`` of the probabilities (``softmax_first``) or the logits (module docstring: what ``moe``'s
    wrapper computes with ``route``'s tail and a stable sort). Needs :func:`fits`."""
    t, k = idx.shape
    if not fits(t, experts, k):
        raise ValueError(f"route_pairs: {t} tokens x top-{k} of {experts} experts is past the one-program "
                         f"limit ({MAX_PAIRS} pairs, {MAX_EXPERTS} experts)")
    dev = idx.device
    top, idx = top.contiguous(), idx.contiguous()
    weights = torch.empty(t * k, dtype=torch.float32, device=dev)
    order = torch.empty(t * k, dtype=torch.int64, device=dev)
    offsets = torch.empty(experts + 1, dtype=torch.int64, device=dev)
    p2 = triton.next_power_of_2
    launchable(_route_pairs, dev)[(1,)](
        top, idx, weights, order, offsets, t * k, experts, TOP_K=k, SOFTMAX_FIRST=softmax_first,
        RENORM=renormalize, BLOCK_T=max(2, p2(t)), BLOCK_K=max(2, p2(k)), BLOCK_P=max(2, p2(t * k)),
        BLOCK_B=max(2, p2(experts + 1)), num_warps=4)
    return weights, order, offsets


def sorted_pairs(h: torch.Tensor, router: torch.Tensor, top_k: int, softmax_first: bool, renormalize: bool,
                 score: str = "softmax", router_bias: Optional[torch.Tensor] = None
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights f32[T*k], order i64[T*k], offsets i64[E+1])`` of tokens ``h[T, D]``: the router's top-k as
    ``route`` computes it (``router_bias``: added to the logits), then :func:`route_pairs` where it :func:`fits`,
    else the same in torch (always for ``score="sigmoid"``, which :func:`route_pairs` does not compute)."""
    t, e = h.shape[0], router.shape[0]
    if fits(t, e, top_k) and score == "softmax":
        top, idx = route_topk(h, router, top_k=top_k, softmax_first=softmax_first, router_bias=router_bias)
        return route_pairs(top, idx, e, softmax_first, renormalize)
    weights, experts = route(h, router, top_k=top_k, softmax_first=softmax_first, renormalize=renormalize,
                             score=score, router_bias=router_bias)
    return _pairs_in_torch(weights, experts, e)


def given_pairs(weights: torch.Tensor, ids: torch.Tensor, experts: int
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(weights f32[T*k], order i64[T*k], offsets i64[E+1])`` of a routing the graph computed (``moe_experts``'s
    ``weights[T, k]`` and expert ``ids[T, k]``): :func:`route_pairs` taking the weights as they are where it
    :func:`fits` (one launch), else torch ops; no host sync either way."""
    t, k = ids.shape
    if fits(t, experts, k):
        return route_pairs(weights.float(), ids, experts, softmax_first=True, renormalize=False)
    return _pairs_in_torch(weights.float(), ids.long(), experts)


def _pairs_in_torch(weights: torch.Tensor, experts: torch.Tensor, e: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`route_pairs`'s results in torch ops, for any number of pairs."""
    order = torch.sort(experts.reshape(-1), stable=True).indices  # [T * k]
    # per-expert counts by comparison, not bincount (whose output size needs a host sync: no CUDA graph)
    counts = (experts.reshape(-1, 1) == torch.arange(e, device=weights.device)).sum(dim=0)  # [E]
    offsets = torch.zeros(e + 1, dtype=torch.int64, device=weights.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return weights.reshape(-1).contiguous(), order, offsets
