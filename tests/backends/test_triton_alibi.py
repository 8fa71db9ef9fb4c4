"""ALiBi in the Triton launchers: flash-decoding and the flash prefill kernel add ``m_h * (key position - query
position)`` to the scores (plain and ring caches, split merges; prefill causal or not, windowed, soft-capped, on
both the masked and the unmasked full-tile loops; cached_attention's prefill through the flash kernel)."""

from __future__ import annotations

from typing import Optional

import pytest
import torch
from _triton_interp import DEVICE, Interpreted  # sets TRITON_INTERPRET=1 before triton is imported

from membound.backends.triton.kernels import DecodeConfig, attention, cached_attention, trace
from membound.ir import get_op

INTERP = Interpreted(__file__)
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def _slopes(h: int) -> tuple[float, ...]:
    return tuple(2.0 ** (-8.0 * (i + 1) / h) for i in range(h))


@pytest.mark.parametrize("s, g, t, ring, config", [
    (1, 4, 45, False, DecodeConfig(16, 16, 16)),   # GQA 4, three splits merged
    (3, 1, 37, False, None),                      # three new tokens per row
    (1, 8, 7, True, None),                        # a wrapped ring of 7 slots
])
def test_decode_kernel_adds_the_alibi_bias(s: int, g: int, t: int, ring: bool, config: Optional[DecodeConfig],
                                           request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    torch.manual_seed(0)
    b, hkv, d = 2, 2, 16
    alibi = _slopes(hkv * g)
    q = torch.randn(b, hkv * g, s, d, device=DEVICE)
    k, v = torch.randn(b, hkv, t, d, device=DEVICE), torch.randn(b, hkv, t, d, device=DEVICE)
    start = torch.tensor([[t - s], [t - s - 4]]) if not ring else torch.tensor([[30], [19]])
    pos = (start + torch.arange(s)).to(DEVICE)
    news = (torch.randn(b, hkv, s, d, device=DEVICE), torch.randn(b, hkv, s, d, device=DEVICE)) if ring else ()
    window = t if ring else None
    ref = get_op("cached_attention").reference(q, k, v, pos, *news, scale=None, window=window, softcap=None,
                                                alibi=alibi)
    with trace() as calls:
        got = cached_attention(q, k, v, pos, *news, window=window, alibi=alibi, config=config)
    assert calls == [("cached_attention", "kernel")], calls
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32
    plain = get_op("cached_attention").reference(q, k, v, pos, *news, scale=None, window=window, softcap=None)
    assert not torch.allclose(plain, ref, atol=1e-3)  # the bias matters at these sizes


@pytest.mark.parametrize("attrs", [dict(causal=True, scale=None), dict(causal=False, scale=0.3),
                                   dict(causal=True, scale=None, window=5, softcap=3.0)])
def test_prefill_kernel_adds_the_alibi_bias(attrs: dict, request: pytest.FixtureRequest) -> None:
    """37 rows in 16-row blocks: the causal blocks have whole tiles before the diagonal (the unmasked loop)."""
    if not INTERP.runs_here(request):
        return
    torch.manual_seed(1)
    q = torch.randn(2, 4, 37, 16, device=DEVICE)
    k, v = torch.randn(2, 2, 37, 16, device=DEVICE), torch.randn(2, 2, 37, 16, device=DEVICE)
    alibi = tuple(4 * m for m in _slopes(4))  # steep: the bias moves the weights a lot
    ref = get_op("attention").reference(q, k, v, alibi=alibi, **attrs)
    with trace() as calls:
        got = attention(q, k, v, alibi=alibi, **attrs)
    assert calls == [("attention", "kernel")], calls
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)  # fp32
    assert not torch.allclose(get_op("attention").reference(q, k, v, **attrs), ref, atol=1e-2)


def test_cached_prefill_with_alibi_runs_the_flash_kernel(request: pytest.FixtureRequest) -> None:
    """G * S = 160 query rows (past PREFILL_ROWS) take the flash kernel with each row's cache position."""
    if not INTERP.runs_here(request):
        return
    torch.manual_seed(2)
    q = torch.randn(1, 4, 40, 16, device=DEVICE)
    k, v = torch.randn(1, 1, 48, 16, device=DEVICE), torch.randn(1, 1, 48, 16, device=DEVICE)
    pos = torch.arange(40, device=DEVICE)
    with trace() as calls:
        got = cached_attention(q, k, v, pos, alibi=_slopes(4))
    assert calls == [("cached_attention", "kernel")], calls
    torch.testing.assert_close(got, get_op("cached_attention").reference(q, k, v, pos, scale=None, alibi=_slopes(4)),
                               rtol=1e-4, atol=1e-4)
