"""Selective state-space models (Mamba) captured with their recurrence as one op.

Hugging Face's reference selective scan (``mamba_selective_scan``, what runs without the CUDA kernels) is a Python
loop over the tokens, which torch.export unrolls at the length it was given: the graph holds for that length alone
and no decode step can be made from it. While exporting (restored after), :func:`hf_selective_scan_as_linear_scan`
replaces it in the families of ``_HF_SCANS`` by :func:`selective_scan`, the same discretisation with the recurrence
``h_t = exp(A dt_t) * h_(t-1) + dt_t B_t x_t`` as one ``membound::linear_scan`` call, which export keeps whole and
the translator maps to the IR's ``linear_scan``. ``insert-kv-cache`` then carries each scan's last state from one
step to the next, as it carries attention's keys and values.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator, Optional

import torch
import torch.nn.functional as F

from membound.ir.ops import get_op


@torch.library.custom_op("membound::linear_scan", mutates_args=())
def linear_scan(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    """Every ``h_t = a_t * h_(t-1) + b_t`` along ``dim`` (``h_(-1) = 0``): the IR op's reference."""
    return get_op("linear_scan").reference(a, b, dim=dim)


@linear_scan.register_fake
def _(a: torch.Tensor, b: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.empty_like(b)


# the modules whose ``mamba_selective_scan`` is HF's reference loop with Mamba's signature (Mamba, FalconMamba, and the
# Mamba layers of the Jamba and Zamba hybrids)
_HF_SCANS = tuple(f"transformers.models.{m}.modeling_{m}" for m in ("mamba", "falcon_mamba", "jamba", "zamba"))


def selective_scan(hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
                   C: torch.Tensor, D: Optional[torch.Tensor] = None, z: Optional[torch.Tensor] = None,  # noqa: N803
                   delta_bias: Optional[torch.Tensor] = None, delta_softplus: bool = False,
                   return_last_state: bool = False, **_: Any) -> Any:
    """Mamba's selective scan over ``x [b, d, s]`` (``dt [b, d, s]``, ``A [d, n]``, ``B``/``C [b, n, s]``): the state
    ``h [b, d, s, n]`` in fp32 by ``linear_scan``, read out by ``C`` in x's dtype, plus the ``D`` skip, gated by
    ``silu(z)``."""
    dtype = hidden_states.dtype
    if delta_bias is not None:
        dt = dt + delta_bias.to(dt.dtype)[..., None]
    if delta_softplus:
        dt = F.softplus(dt)
    decay = torch.exp(A[None, :, None, :] * dt[..., None])                                   # [b, d, s, n]
    drive = dt[..., None] * B.transpose(1, 2)[:, None].float() * hidden_states[..., None].float()
    states = torch.ops.membound.linear_scan(decay, drive, 2)
    out = (states.to(dtype) * C.transpose(1, 2)[:, None]).sum(-1)                             # [b, d, s]
    if D is not None:
        out = out + hidden_states * D[None, :, None]
    if z is not None:
        out = out * F.silu(z)
    return (out, states[:, :, -1]) if return_last_state else out


@contextlib.contextmanager
def hf_selective_scan_as_linear_scan(module: torch.nn.Module) -> Iterator[None]:
    """While exporting ``module``, its Mamba layers' reference scan is :func:`selective_scan` (restored after)."""
    patched = []
    for sub in module.modules():
        name = type(sub).__module__
        mod = sys.modules.get(name)
        if name in _HF_SCANS and mod is not None and hasattr(mod, "mamba_selective_scan") \
                and not any(m is mod for m, _ in patched):
            patched.append((mod, mod.mamba_selective_scan))
            mod.mamba_selective_scan = selective_scan
    try:
        yield
    finally:
        for mod, old in reversed(patched):
            mod.mamba_selective_scan = old
