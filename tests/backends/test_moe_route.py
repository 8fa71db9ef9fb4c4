"""``moe_route.route_pairs`` (the one-launch routing of a decode step) against the torch routing the
``moe`` wrapper otherwise runs: ``route`` + a stable sort of the pairs by expert + per-expert offsets, under
the Triton interpreter on the CPU or compiled on a GPU. Top-k choices and the order are exact; weights fp32
within 1e-6 (both softmax in fp32; the exponentials may differ in the last bit).
"""

from __future__ import annotations

import pytest
import torch
from _triton_interp import DEVICE  # sets TRITON_INTERPRET=1 before triton is imported

from membound.backends.triton.kernels.moe_route import MAX_PAIRS, fits, route_pairs
from membound.ir.ops.moe import route


def _topk(logits: torch.Tensor, k: int, softmax_first: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.topk(logits.softmax(dim=-1) if softmax_first else logits, k, dim=-1)


def _want(logits: torch.Tensor, top_k: int, softmax_first: bool, renormalize: bool):
    """The torch path, from logits (route() with an identity router gives these logits)."""
    t, e = logits.shape
    eye = torch.eye(e, dtype=logits.dtype, device=logits.device)
    weights, experts = route(logits, eye, top_k=top_k, softmax_first=softmax_first, renormalize=renormalize)
    order = torch.sort(experts.reshape(-1), stable=True).indices
    counts = (experts.reshape(-1, 1) == torch.arange(e, device=logits.device)).sum(dim=0)
    offsets = torch.zeros(e + 1, dtype=torch.int64, device=logits.device)
    offsets[1:] = torch.cumsum(counts, 0)
    return weights.reshape(-1), order, offsets


def _got(logits: torch.Tensor, k: int, softmax_first: bool, renormalize: bool):
    top, idx = _topk(logits.float(), k, softmax_first)
    return route_pairs(top, idx, logits.shape[1], softmax_first, renormalize)


@pytest.mark.parametrize("t,e,k,softmax_first,renormalize", [
    (1, 8, 2, True, True), (1, 8, 2, False, False), (3, 8, 2, False, True), (7, 6, 3, True, False),
    (13, 60, 4, True, True), (5, 4, 1, True, True), (33, 8, 2, False, True), (16, 64, 8, True, True),
    (2, 7, 7, False, True)])
def test_route_pairs_equals_the_torch_routing(t: int, e: int, k: int, softmax_first: bool, renormalize: bool) -> None:
    g = torch.Generator().manual_seed(t * 100 + e)
    logits = torch.randn(t, e, generator=g).to(DEVICE)
    got = _got(logits, k, softmax_first, renormalize)
    want = _want(logits, k, softmax_first, renormalize)
    torch.testing.assert_close(got[0], want[0].float(), rtol=1e-6, atol=1e-6)
    for a, b in zip(got[1:], want[1:]):
        assert torch.equal(a.cpu(), b.cpu()), (a, b)


def test_ties_keep_topks_choice_and_zero_token_experts_get_empty_ranges() -> None:
    logits = torch.tensor([[0.5, 2.0, 2.0, -1.0, 2.0], [1.0, 1.0, 1.0, 1.0, 1.0], [3.0, 0.0, 0.0, 0.0, 0.0]],
                          device=DEVICE)
    weights, order, offsets = _got(logits, 2, True, True)
    want = _want(logits, 2, True, True)
    assert order.tolist() == want[1].tolist() and offsets.tolist() == want[2].tolist()
    assert offsets[4] == offsets[3]  # expert 3: nobody
    torch.testing.assert_close(weights.cpu(), want[0].float().cpu(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_low_precision_scores_are_read_as_they_are(dtype: torch.dtype) -> None:
    logits = torch.randn(4, 8, generator=torch.Generator().manual_seed(3)).to(DEVICE, dtype)
    top, idx = _topk(logits, 2, False)
    w, order, offsets = route_pairs(top, idx, 8, False, True)
    want = _want(logits.float(), 2, False, True)
    torch.testing.assert_close(w, want[0].float(), rtol=1e-3, atol=1e-3)
    assert torch.equal(order.cpu(), want[1].cpu()) and torch.equal(offsets.cpu(), want[2].cpu())


def test_limits() -> None:
    assert fits(64, 8, 2) and not fits(65, 8, 2) and not fits(1, 300, 2) and not fits(1, 4, 5)
    with pytest.raises(ValueError, match="one-program limit"):
        route_pairs(torch.zeros(MAX_PAIRS + 1, 1, device=DEVICE), torch.zeros(MAX_PAIRS + 1, 1, dtype=torch.int64,
                                                                                  device=DEVICE), 4, True, True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else []))
@pytest.mark.parametrize("t,e,d,k", [(1, 8, 40, 2), (5, 60, 130, 4), (3, 6, 4100, 1)])  # d past one 4096 block
def test_router_topk_gives_the_linears_logits_and_the_models_experts(dtype: torch.dtype, t: int, e: int, d: int,
                                                                     k: int) -> None:
    """``router_topk``'s logits (one launch) equal ``F.linear(h, router).float()``: rounded through h's dtype, so
    equal there up to one rounding step where the fp32 sums differ in the last bits (fp32: 1e-5 relative); its
    experts are the top-k of those logits (as a set per token: unsorted on a GPU) and of the probabilities, the
    values the logits at those experts. A router whose rows are not contiguous takes ``F.linear``."""
    from membound.backends.triton.kernels.moe_route import router_topk

    gen = torch.Generator().manual_seed(t * e)
    h = torch.randn(t, d, generator=gen).to(DEVICE, dtype)
    router = (torch.randn(e, d, generator=gen) / d ** 0.5).to(DEVICE, dtype)
    want = torch.nn.functional.linear(h, router).float()
    for r in (router, router.t().contiguous().t()):
        logits, top, idx = router_topk(h, r, k)
        assert logits.dtype == torch.float32 and logits.shape == (t, e)
        step = 1e-5 if dtype == torch.float32 else torch.finfo(dtype).eps
        torch.testing.assert_close(logits, want, rtol=step, atol=step)
        assert torch.equal(top, logits.gather(1, idx))
        chosen = torch.topk(logits, k, dim=-1).indices
        assert torch.equal(idx.sort(dim=-1).values, chosen.sort(dim=-1).values)
        assert torch.equal(chosen.sort(dim=-1).values, torch.topk(logits.softmax(-1), k, dim=-1).indices.sort(-1).values)
