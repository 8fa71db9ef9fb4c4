"""Selective state-space models (Mamba, Mamba-2) and gated delta-rule layers (gated DeltaNet, Kimi's KDA) captured
with their recurrence as one op.

Hugging Face's reference selective scan (``mamba_selective_scan``, what runs without the CUDA kernels) is a Python
loop over the tokens, which torch.export unrolls at the length it was given: the graph holds for that length alone
and no decode step can be made from it. Mamba-2's reference (``mamba2_chunk_scan``, the state-space duality form)
pads the tokens to whole chunks and reshapes them into ``[.., S / chunk, chunk, ..]``, sizes export cannot keep
symbolic; so does the gated delta rule's (``torch_chunk_gated_delta_rule``, ``chunk_kimi_delta_attention``). While
exporting (restored after), :func:`hf_selective_scan_as_linear_scan` replaces each, in the families of ``_HF_SCANS``:
Mamba's by :func:`selective_scan`, the same discretisation with the recurrence ``h_t = exp(A dt_t) * h_(t-1) +
dt_t B_t x_t`` as one ``membound::linear_scan`` call, which export keeps whole and the translator maps to the IR's
``linear_scan``; Mamba-2's, the gated delta rule's and KDA's by :func:`chunk_scan`, :func:`gated_delta_rule` and
:func:`kimi_delta_attention`, whose matrix state per head is one ``membound::linear_attention`` (the IR's
``linear_attention``: its read-out per token and its last state, never the state at every token).
``insert-kv-cache`` then carries each scan's last state from one step to the next, as it carries attention's keys
and values.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable, Iterator, Optional

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


@torch.library.custom_op("membound::linear_attention", mutates_args=())
def linear_attention(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
                     init: Optional[torch.Tensor], dim: int, delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y, last state)`` of a matrix state per head carried along ``dim`` (``init`` or zero before the first
    token): the IR op's reference."""
    args = (q, a, k, v, beta) if init is None else (q, a, k, v, beta, init)
    y, state = get_op("linear_attention").reference(*args, dim=dim, delta=delta)
    return y, state


@linear_attention.register_fake
def _(q: torch.Tensor, a: torch.Tensor, k: torch.Tensor, v: torch.Tensor, beta: torch.Tensor,
      init: Optional[torch.Tensor], dim: int, delta: bool) -> tuple[torch.Tensor, torch.Tensor]:
    lead = list(beta.shape)
    lead[dim] = 1
    return torch.empty_like(v), v.new_empty((*lead, k.shape[-1], v.shape[-1]))


def _modules(*names: str) -> tuple[str, ...]:
    return tuple(f"transformers.models.{m}.modeling_{m}" for m in names)


# the modules whose ``mamba_selective_scan`` is HF's reference loop with Mamba's signature (Mamba, FalconMamba, and the
# Mamba layers of the Jamba and Zamba hybrids)
_MAMBA = _modules("mamba", "falcon_mamba", "jamba", "zamba")
# the modules whose ``mamba2_chunk_scan`` is HF's reference SSD with Mamba-2's signature (Mamba-2 and the Mamba-2
# layers of the Bamba, NemotronH, Falcon-H1, GraniteMoeHybrid and Zamba2 hybrids)
_MAMBA2 = _modules("mamba2", "bamba", "nemotron_h", "falcon_h1", "granitemoehybrid", "zamba2")


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


def chunk_scan(hidden_states: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor,  # noqa: N803
               C: torch.Tensor, chunk_size: int, D: Optional[torch.Tensor] = None,  # noqa: N803
               dt_bias: Optional[torch.Tensor] = None, initial_states: Optional[torch.Tensor] = None,
               dt_softplus: bool = False, dt_limit: tuple[float, float] = (0.0, float("inf")),
               return_final_states: bool = False, **_: Any) -> Any:
    """Mamba-2's scan over ``x [b, s, h, p]`` (``dt [b, s, h]``, ``A [h]``, ``B``/``C [b, s, g, n]``, the ``h`` heads in
    ``g`` groups) as ``linear_attention``: per head a state ``[n, p]`` (HF's ``[p, n]`` transposed), decayed by
    ``exp(A dt)``, written ``B_t (dt_t x_t)^T``, read out by ``C_t``; plus the ``D`` skip; fp32 out, as HF's chunked
    form returns. The chunk size only orders HF's sums: the recurrence it computes is this one."""
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)
    if dt_softplus:
        dt = F.softplus(dt)
    dt = torch.clamp(dt, min=dt_limit[0], max=dt_limit[1]).float()
    heads, groups = hidden_states.shape[2], B.shape[2]
    x = hidden_states.float()
    B = B.float().repeat_interleave(heads // groups, dim=2)                                    # [b, s, h, n]
    C = C.float().repeat_interleave(heads // groups, dim=2)
    init = None if initial_states is None else initial_states.float().transpose(-1, -2)[:, None]
    out, last = torch.ops.membound.linear_attention(C, torch.exp(A.float() * dt), B, x, dt, init, 1, False)
    if D is not None:
        out = out + x * D.float()[:, None]
    return (out, last[:, 0].transpose(-1, -2)) if return_final_states else out


def _l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Qwen's gated DeltaNet l2 norm: ``x * rsqrt(sum(x^2) + eps)``."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _fla_l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Kimi's (FLA's) l2 norm: ``x / sqrt(sum(x^2) + eps)``, which rounds differently from :func:`_l2norm`."""
    return x / torch.sqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _delta_rule(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: torch.Tensor, beta: torch.Tensor,
                initial_state: Optional[torch.Tensor], output_final_state: bool,
                norm: Optional[Callable[[torch.Tensor], torch.Tensor]],
                scale: float) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The delta rule over one head per query/key/value head (``g`` the log decay, ``[b, s, h]`` or ``[b, s, h, K]``)
    as ``linear_attention`` in fp32: the query and key normalised by ``norm`` if given, the query scaled by ``scale``
    (each family's own float: HF's forms compute it differently); ``(y in the query's dtype, last state or None)``."""
    dtype = query.dtype
    query, key, value, g, beta = (x.float() for x in (query, key, value, g, beta))
    if norm is not None:
        query, key = norm(query), norm(key)
    init = None if initial_state is None else initial_state.float()[:, None]
    out, last = torch.ops.membound.linear_attention(query * scale, torch.exp(g), key, value, beta, init, 1, True)
    return out.to(dtype), (last[:, 0] if output_final_state else None)


def gated_delta_rule(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: torch.Tensor,
                     beta: torch.Tensor, chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None,
                     output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
                     **_: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The gated delta rule over ``q``/``k [b, s, hk, K]``, ``v [b, s, h, V]``, ``g``/``beta [b, s, h]`` (``g`` the
    log decay; each of the ``hk`` query/key heads serves ``h / hk`` value heads): ``linear_attention`` with the
    delta rule in fp32, read out by the scaled (and, if asked, l2-normalised) query. The signature and result of
    HF's ``torch_chunk_gated_delta_rule`` and ``torch_recurrent_gated_delta_rule``: the chunk size only orders HF's
    sums."""
    heads = value.shape[2]
    if key.shape[2] != heads:
        query = query.repeat_interleave(heads // key.shape[2], dim=2)
        key = key.repeat_interleave(heads // key.shape[2], dim=2)
    return _delta_rule(query, key, value, g, beta, initial_state, output_final_state,
                       _l2norm if use_qk_l2norm_in_kernel else None, query.shape[-1] ** -0.5)


def kimi_delta_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, g: torch.Tensor,
                         beta: torch.Tensor, chunk_size: int = 64, initial_state: Optional[torch.Tensor] = None,
                         output_final_state: bool = False, use_qk_l2norm_in_kernel: bool = False,
                         **_: Any) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Kimi delta attention (KDA): the gated delta rule with a decay per key channel, ``g [b, s, h, K]`` (log), over
    ``q``/``k [b, s, h, K]``, ``v [b, s, h, V]``, ``beta [b, s, h]``: ``linear_attention`` with the delta rule in
    fp32. Its l2 norm divides by ``sqrt(sum + eps)``, as FLA's. The signature and result of HF's
    ``chunk_kimi_delta_attention`` and ``recurrent_kimi_delta_attention``."""
    return _delta_rule(query, key, value, g, beta, initial_state, output_final_state,
                       _fla_l2norm if use_qk_l2norm_in_kernel else None, 1 / query.shape[-1] ** 0.5)


# the modules whose ``torch_chunk_gated_delta_rule`` and ``torch_recurrent_gated_delta_rule`` are HF's reference gated
# delta rule (Qwen3-Next, Qwen3.5 dense and MoE, OLMo-Hybrid, and the newer Qwen4-exp and LaRA-mini)
_DELTA = _modules("qwen3_next", "qwen3_5", "qwen3_5_moe", "olmo_hybrid", "qwen4_exp", "lara_mini")


def rnn_scan(self: Any, hidden_states: torch.Tensor, recurrent_gate: torch.Tensor, reset: torch.Tensor,
             recurrent_states: Optional[torch.Tensor], acc_dtype: torch.dtype = torch.float32) -> Any:
    """RecurrentGemma's RG-LRU recurrence (``RecurrentGemmaRglru._rnn_scan``): ``h_t = a_t h_(t-1) + x_t`` over
    ``x [b, s, w]`` in ``acc_dtype``, ``a`` zeroed where ``reset`` (a row's position 0), as one ``linear_scan``.
    HF's method loops over the tokens, and takes another branch for one token; this is both."""
    a = (recurrent_gate * ~reset).to(acc_dtype)
    b = hidden_states.to(acc_dtype)
    if recurrent_states is not None:  # h_(-1): the first token's drive carries its decayed contribution
        b = torch.cat([b[:, :1] + a[:, :1] * recurrent_states[:, None].to(acc_dtype), b[:, 1:]], dim=1)
    states = torch.ops.membound.linear_scan(a, b, 1)
    return states.to(hidden_states.dtype), states[:, -1]


def lightning_attention_forward(self: Any, hidden_states: torch.Tensor, position_embeddings: Any = None,
                                attention_mask: Optional[torch.Tensor] = None, cache: Any = None,
                                **_: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """MiniMax's lightning attention (``MiniMaxLightningAttention.forward``) as one ``linear_attention``: per head a
    state ``[d, d]`` decayed by ``exp(-slope)`` a token and written ``k_t v_t^T``, read out by ``q_t``; HF's form
    loops over blocks of ``block_size`` tokens (a count export cannot keep symbolic). Export passes no cache."""
    if cache is not None:
        raise NotImplementedError("membound's lightning attention replaces HF's only while exporting, without a cache")
    mod = sys.modules[type(self).__module__]
    b, s, _ = hidden_states.shape
    h, d = self.num_attention_heads, self.head_dim
    qkv = mod.apply_mask_to_padding_states(self.act_fn(self.qkv_proj(hidden_states)), attention_mask)
    q, k, v = torch.split(qkv.reshape(b, s, h, 3 * d), d, dim=3)
    decay = torch.exp(-self.slope_rate.reshape(h).to(q.dtype)).expand(b, s, h)
    out, last = torch.ops.membound.linear_attention(q, decay, k, v, torch.ones_like(decay), None, 1, False)
    out = self.norm(out.reshape(b, s, h * d))
    out = self.out_proj(torch.sigmoid(self.output_gate(hidden_states)) * out)
    return out, last[:, 0]


# the modules whose ``chunk_kimi_delta_attention`` and ``recurrent_kimi_delta_attention`` are HF's reference KDA (Kimi
# Linear, Bailing-hybrid)
_KDA = _modules("kimi_linear", "bailing_hybrid")

# each reference scan membound replaces: its name in the modelling modules, the modules, the replacement
_HF_SCANS = (("mamba_selective_scan", _MAMBA, selective_scan), ("mamba2_chunk_scan", _MAMBA2, chunk_scan),
             ("torch_chunk_gated_delta_rule", _DELTA, gated_delta_rule),
             ("torch_recurrent_gated_delta_rule", _DELTA, gated_delta_rule),
             ("chunk_kimi_delta_attention", _KDA, kimi_delta_attention),
             ("recurrent_kimi_delta_attention", _KDA, kimi_delta_attention))


# each reference method membound replaces: its name, the modelling module, the class, the replacement
_HF_METHODS = (("_rnn_scan", _modules("recurrent_gemma")[0], "RecurrentGemmaRglru", rnn_scan),
               ("forward", _modules("minimax")[0], "MiniMaxLightningAttention", lightning_attention_forward))


@contextlib.contextmanager
def hf_selective_scan_as_linear_scan(module: torch.nn.Module) -> Iterator[None]:
    """While exporting ``module``, the reference recurrences of its layers (``_HF_SCANS``: Mamba's and Mamba-2's
    scans, the gated delta rule, KDA; ``_HF_METHODS``: RecurrentGemma's RG-LRU, MiniMax's lightning attention) are
    membound's forms above (restored after)."""
    patched: list[tuple[Any, str, Any]] = []
    for sub in module.modules():
        name = type(sub).__module__
        mod = sys.modules.get(name)
        for attr, names, new in _HF_SCANS:
            if name in names and mod is not None and hasattr(mod, attr) \
                    and not any(m is mod and a == attr for m, a, _ in patched):
                patched.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, new)
        cls = type(sub)
        for attr, module_name, class_name, new in _HF_METHODS:
            if name == module_name and cls.__name__ == class_name and not any(m is cls for m, _, _ in patched):
                patched.append((cls, attr, cls.__dict__.get(attr)))
                setattr(cls, attr, new)
    try:
        yield
    finally:
        for mod, attr, old in reversed(patched):
            if old is None:  # a method the class inherited: drop the override, the base's shows through again
                delattr(mod, attr)
            else:
                setattr(mod, attr, old)
