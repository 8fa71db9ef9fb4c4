"""Sampling (runtime/generate.py ``sample``) against the exact support and distribution: fixed logits,
fixed seeds, 40k draws per case. Each kept token's frequency must lie within 5 standard deviations of
its exact probability (a wrong distribution misses by far more), and every other token must never
be drawn."""

import math

import pytest
import torch

import membound
from membound.models import build_model
from membound.runtime.generate import sample

N = 40_000
# distinct probabilities (no ties at any cut): sorted order 0.30 (id 5), 0.22 (2), 0.16 (7), 0.12 (0),
# 0.09 (3), 0.06 (6), 0.03 (1), 0.02 (4)
PROBS = torch.tensor([0.12, 0.03, 0.22, 0.09, 0.02, 0.30, 0.06, 0.16], dtype=torch.float64)
LOGITS = (PROBS.log() + 1.7).float()          # any shift: softmax(LOGITS) == PROBS


def draws(logits, seed=0, **kw):
    rows = logits.expand(N, -1).contiguous()
    g = torch.Generator().manual_seed(seed)
    tokens = sample(rows, kw.pop("temperature", 1.0), kw.pop("top_k", None), kw.pop("top_p", None), g)
    return torch.bincount(tokens, minlength=logits.shape[-1]).double() / N


def check(freq, expected):
    support = expected > 0
    assert torch.equal(freq > 0, support), (freq, expected)          # exactly the support, nothing outside
    sigma = (expected * (1 - expected) / N).sqrt()
    assert bool(((freq - expected).abs() <= 5 * sigma + 1e-12).all()), (freq, expected)


def renormalised(p, keep):
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


def test_temperature_one_samples_the_softmax():
    check(draws(LOGITS), PROBS)


@pytest.mark.parametrize("t", [0.5, 2.0])
def test_temperature_scales_the_logits(t):
    expected = torch.softmax(LOGITS.double() / t, -1)
    check(draws(LOGITS, temperature=t), expected)


def test_temperature_zero_is_argmax():
    rows = torch.stack([LOGITS, LOGITS.flip(0)])
    assert sample(rows, 0.0, None, None, None).tolist() == [5, 2]


@pytest.mark.parametrize("k", [2, 3, 5])
def test_top_k_keeps_the_k_most_likely(k):
    keep = torch.zeros(8, dtype=torch.bool)
    keep[PROBS.topk(k).indices] = True
    check(draws(LOGITS, top_k=k), renormalised(PROBS, keep))


@pytest.mark.parametrize("p, kept", [(0.25, [5]), (0.5, [5, 2]), (0.6, [5, 2, 7]), (0.7, [5, 2, 7, 0]),
                                     (0.9, [5, 2, 7, 0, 3, 6]),
                                     (1.0, list(range(8)))])
def test_top_p_keeps_the_smallest_prefix_reaching_p(p, kept):
    keep = torch.zeros(8, dtype=torch.bool)
    keep[kept] = True
    check(draws(LOGITS, top_p=p), renormalised(PROBS, keep))


def test_top_k_then_top_p_then_temperature_compose():
    # temperature 2 flattens, top_k=4 keeps {5, 2, 7, 0}, then top_p=0.6 of the renormalised four
    t = 2.0
    soft = torch.softmax(LOGITS.double() / t, -1)
    keep4 = torch.zeros(8, dtype=torch.bool)
    keep4[[5, 2, 7, 0]] = True
    q = renormalised(soft, keep4)
    order = q.argsort(descending=True)
    before = q[order].cumsum(0) - q[order]
    keep = torch.zeros(8, dtype=torch.bool)
    keep[order[before < 0.6]] = True
    assert 1 < int(keep.sum()) < 4                         # the case cuts inside the top-k set
    check(draws(LOGITS, temperature=t, top_k=4, top_p=0.6), renormalised(q, keep))


def test_rows_are_sampled_each_by_its_own_distribution():
    rows = torch.stack([LOGITS, LOGITS.flip(0)]).repeat(N // 2, 1)
    g = torch.Generator().manual_seed(1)
    tokens = sample(rows, 1.0, 2, None, g).view(N // 2, 2)
    assert set(tokens[:, 0].tolist()) == {5, 2} and set(tokens[:, 1].tolist()) == {2, 5}  # flip: ids 7-i
    assert math.isclose(float((tokens[:, 0] == 5).double().mean()), 0.30 / 0.52, abs_tol=0.02)
    assert math.isclose(float((tokens[:, 1] == 2).double().mean()), 0.30 / 0.52, abs_tol=0.02)


@pytest.fixture(scope="module")
def compiled():
    return membound.compile(build_model("llama-tiny").eval(), backend="reference")


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generate_with_a_tiny_nucleus_is_greedy(compiled, kv_cache):
    ids = torch.randint(3, 256, (2, 5), generator=torch.Generator().manual_seed(2))
    greedy = membound.generate(compiled, ids, 6, kv_cache=kv_cache)
    nucleus = membound.generate(compiled, ids, 6, kv_cache=kv_cache, temperature=1.3, top_p=1e-6,
                                generator=torch.Generator().manual_seed(0))
    assert torch.equal(greedy, nucleus)
