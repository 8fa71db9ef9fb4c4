"""ALiBi in the Triton launchers: flash-decoding adds ``m_h * (key position - query position)`` in the
kernel (plain and ring caches, split merges); prefill runs the torch reference with a log line."""

from __future__ import annotations

import logging
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


def test_prefill_with_alibi_falls_back_with_a_log_line(caplog: pytest.LogCaptureFixture,
                                                        request: pytest.FixtureRequest) -> None:
    if not INTERP.runs_here(request):
        return
    torch.manual_seed(1)
    q, k, v = (torch.randn(1, 4, 9, 16, device=DEVICE) for _ in range(3))
    from membound.backends.triton.kernels import _launch

    _launch._LOGGED.clear()  # the line is logged once per process
    with caplog.at_level(logging.INFO, logger="membound"), trace() as calls:
        got = attention(q, k, v, causal=True, alibi=_slopes(4))
    assert calls and calls[0][1].startswith("fallback: ALiBi"), calls
    assert any("attention with an ALiBi bias runs the torch reference" in r.getMessage() for r in caplog.records)
    torch.testing.assert_close(got, get_op("attention").reference(q, k, v, causal=True, scale=None,
                                                                   alibi=_slopes(4)))
