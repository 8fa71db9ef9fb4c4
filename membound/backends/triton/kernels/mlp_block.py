"""One launch for a decode layer's gated MLP (issue 13): ``x + down(silu(gate(n)) * up(n))``, ``n = rms_norm(x)``.

At batch 1 a Llama layer's MLP is three dependent kernels by default (the post-attention norm, the gate/up GEMV
with the gating in its epilogue, the down GEMV with the residual add), ~100 MB of weights at the Llama-3.2-1B
shape for ~24 us of streaming on the H200. This kernel runs it as one grid of ordered work items, as
``attn_block.py`` runs the attention block (the same counters, waits and dispatch-order argument), each program
taking items ``pid, pid + P, ...``:

- **D** (``N_D`` items): ``ROWS / 2`` gate rows and the matching up rows of the merged ``[2I, K]`` weight (rows
  ``j`` and ``I + j``, interleaved in the tile), against ``rms_norm(x) * norm_weight`` (each program reduces x
  itself); the epilogue stores ``silu(gate) * up`` (rounded as ``linear_glu`` rounds) to a scratch vector and
  counts in on counter 1.
- **E** (``N_E`` items): ``ROWS / CHUNKS`` rows of the down weight ``[K, I]``, each row's I columns folded into
  ``CHUNKS`` pieces of ``BLOCK_K`` (the tile keeps the D items' ``[ROWS, BLOCK_K]`` shape and size), once
  counter 1 says every D item is done; plus the residual x, stored to ``out``.

Each program's first item has its weight tile (a D or an E tile, 32 KB by default) loaded before the
programmatic-dependent-launch wait; an item waits only on items before it, so the grid cannot deadlock while the
programs holding earlier items run (all fit at once, or blocks dispatch in index order, as the attention block
relies on). The last program out sets the counters back to zero.

Numerics follow eager's roundings: the normed x as ``rms_norm`` rounds it; gate and up rounded, ``silu(gate)``
rounded, the product rounded (``linear._silu_mul``); the down product rounded, the residual added and rounded.

Scope: one token (B = 1), ``act="silu"``, contiguous x and weight rows, K up to 8192, fp16 / bf16 / fp32.
``mlp_block`` (the IR op's launcher) runs the library's kernels in turn for anything else (rms_norm, linear_glu,
linear_add) and says why. Made by fuse-mlp-block in the ``decode-layer`` pipeline, off by default: timed on an H200
(session 20, Triton 3.6) it streamed at ~60% of the read bandwidth (48.2 us a layer at the 1.24B shape, 150.2 at
8B, for 101 and 352 MB), where the library's GEMVs reach ~92%.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from membound.backends.triton.kernels._launch import (
    arrive_last,
    cdiv,
    check_out,
    fallback,
    launchable,
    next_pow2,
    note,
    pdl_enter,
    pdl_options,
    reset_counter,
    split_counters,
    unsupported_device,
    unsupported_dtype,
)
from membound.backends.triton.kernels.attn_block import _count_in, _element_offset, _spin_until, ordered_grid
from membound.backends.triton.kernels.linear import _silu_mul

# counters in the per-stream buffer: 0 unused, 1 gate/up items done, 2 programs finished
COUNTERS = 3


@dataclass(frozen=True)
class MlpBlockConfig:
    rows: int = 8  # weight rows per tile (D: rows / 2 gate/up pairs; E: rows / chunks down rows); a power of two
    num_warps: int = 8
    programs: Optional[int] = None  # grid size; None: one program per item (a GPU is needed for fewer)

    def __post_init__(self) -> None:
        if self.rows < 2 or self.rows & (self.rows - 1):
            raise ValueError(f"MlpBlockConfig: rows={self.rows} must be a power of two >= 2")


def chunks(k: int, i: int) -> int:
    """Pieces of ``BLOCK_K = next_pow2(K)`` columns one down row (I columns) is folded into: a power of two."""
    return next_pow2(cdiv(i, next_pow2(k)))


def pick_config(k: int, i: int, dtype: torch.dtype) -> MlpBlockConfig:
    """A first guess for the GPU sweep: 32 KB weight tiles (8 rows at K = 2048, 4 at 4096: ``attn_block``'s), at
    least one down row an E tile."""
    e = torch.empty((), dtype=dtype).element_size()
    rows = max(2, min(64, (32768 // e) // next_pow2(k)), chunks(k, i))
    return MlpBlockConfig(rows=rows)


@triton.jit
def _tile_ptrs(item, w_ptr, wd_off, N_D, I, K, swr, sdr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
               CHP: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """The weight tile of ``item``: D items gate row ``j`` and up row ``I + j`` interleaved for ``ROWS / 2`` pairs;
    E items ``ROWS / CHP`` down rows, row ``n``'s piece ``c`` (columns ``c * BLOCK_K ..``) at tile row
    ``(n - first) * CHP + c``."""
    r = tl.arange(0, ROWS)
    ks = tl.arange(0, BLOCK_K)
    PAIRS: tl.constexpr = ROWS // 2
    RE: tl.constexpr = ROWS // CHP
    is_d = item < N_D
    j = item * PAIRS + r // 2
    d_rows = (r % 2) * I + j
    d_ok = (j < I) & (item + 0 * r < N_D)  # (a vector: the interpreter's bool & 0-d bool is int32)
    e_item = item - N_D
    n = e_item * RE + r // CHP
    c0 = (r % CHP) * BLOCK_K
    e_ok = (e_item + 0 * r >= 0) & (n < K)
    # one base pointer (``wd_off``: the down weight's first element counted from the gate/up weight's), so the
    # rows keep the alignment the compiler needs for 16-byte loads (a select of two pointers loses it)
    row_off = tl.where(is_d, d_rows.to(tl.int64) * swr, wd_off + n.to(tl.int64) * sdr + c0)
    if ROW_ALIGN > 1:  # the select hides the strides' alignment from the compiler: stated (the launcher checks it)
        row_off = tl.multiple_of(row_off, ROW_ALIGN)
    ptrs = w_ptr + row_off[:, None] + ks[None, :]
    mask = (d_ok[:, None] & (ks < K)[None, :]) | (e_ok[:, None] & ((c0[:, None] + ks[None, :]) < I))
    return ptrs, mask


@triton.jit
def _phase_d(item, w, xn, h_ptr, cnt_ptr, I, ROWS: tl.constexpr):
    """One D item: ``ROWS / 2`` pairs (gate, up) from the resident tile ``w`` against the normed x ``xn``."""
    PAIRS: tl.constexpr = ROWS // 2
    dt = h_ptr.dtype.element_ty
    y = tl.sum(w.to(tl.float32) * xn[None, :], axis=1)  # [ROWS]: gate, up, gate, up, ...
    g, u = tl.split(tl.reshape(y, (PAIRS, 2)))
    jj = item * PAIRS + tl.arange(0, PAIRS)
    tl.store(h_ptr + jj, _silu_mul(g.to(dt), u.to(dt)), mask=jj < I)
    _count_in(cnt_ptr + 1)


@triton.jit
def _phase_e(item, w, x_ptr, h_ptr, out_ptr, cnt_ptr, N_D, I, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
             CHP: tl.constexpr):
    """One E item: ``ROWS / CHP`` rows of the down projection from the resident tile ``w``, plus the residual."""
    RE: tl.constexpr = ROWS // CHP
    ns = (item - N_D) * RE + tl.arange(0, RE)
    n_ok = ns < K
    res = tl.load(x_ptr + ns, mask=n_ok, other=0.0)  # the residual (the block's input) while we wait
    _spin_until(cnt_ptr + 1, N_D)  # every gate/up pair stored
    cols = tl.arange(0, CHP)[:, None] * BLOCK_K + tl.arange(0, BLOCK_K)[None, :]  # [CHP, BLOCK_K]
    hv = tl.load(h_ptr + cols, mask=cols < I, other=0.0)
    prod = tl.reshape(w.to(tl.float32), (RE, CHP, BLOCK_K)) * hv.to(tl.float32)[None, :, :]
    y = tl.sum(tl.sum(prod, axis=2), axis=1).to(hv.dtype)  # [RE], rounded as the product is
    tl.store(out_ptr + ns, (y.to(tl.float32) + res.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=n_ok)


@triton.jit
def _item(item, w, xn, x_ptr, h_ptr, out_ptr, cnt_ptr, N_D, I, K, ROWS: tl.constexpr, BLOCK_K: tl.constexpr,
          CHP: tl.constexpr):
    if item < N_D:
        _phase_d(item, w, xn, h_ptr, cnt_ptr, I, ROWS)
    else:
        _phase_e(item, w, x_ptr, h_ptr, out_ptr, cnt_ptr, N_D, I, K, ROWS, BLOCK_K, CHP)


@triton.jit
def _mlp_block(
    x_ptr, nw_ptr, w_ptr, wd_off, out_ptr, h_ptr, cnt_ptr, eps, N_D, N_ITEMS, I, K, swr, sdr,
    ROWS: tl.constexpr, BLOCK_K: tl.constexpr, CHP: tl.constexpr, USE_PDL: tl.constexpr, ROW_ALIGN: tl.constexpr = 1,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < K
    # parameters first, before the PDL wait (no kernel writes them): the first item's weight tile, the norm's weight
    ptrs, mask = _tile_ptrs(pid, w_ptr, wd_off, N_D, I, K, swr, sdr, ROWS, BLOCK_K, CHP, ROW_ALIGN)
    w_first = tl.load(ptrs, mask=mask, other=0.0)
    d_prog = k_ok & (pid + 0 * ks < N_D)  # only programs with D items (their first is one) norm x
    nw = tl.load(nw_ptr + ks, mask=d_prog, other=0.0)
    pdl_enter(USE_PDL)
    x = tl.load(x_ptr + ks, mask=d_prog, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / K + eps)
    xn = (xf * rstd).to(x.dtype)
    xn = (xn.to(tl.float32) * nw.to(tl.float32)).to(x.dtype).to(tl.float32)
    if pid < N_ITEMS:
        _item(pid, w_first, xn, x_ptr, h_ptr, out_ptr, cnt_ptr, N_D, I, K, ROWS, BLOCK_K, CHP)
    for item in range(pid + n_prog, N_ITEMS, n_prog):
        ptrs, mask = _tile_ptrs(item, w_ptr, wd_off, N_D, I, K, swr, sdr, ROWS, BLOCK_K, CHP, ROW_ALIGN)
        w = tl.load(ptrs, mask=mask, other=0.0)
        _item(item, w, xn, x_ptr, h_ptr, out_ptr, cnt_ptr, N_D, I, K, ROWS, BLOCK_K, CHP)
    # the last program out leaves the counters zeroed for the next launch on this stream
    if arrive_last(cnt_ptr, 2, n_prog):
        reset_counter(cnt_ptr, 1)
        reset_counter(cnt_ptr, 2)


def _scope(x: torch.Tensor, norm_weight: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor,
           act: str) -> Optional[str]:
    """Why the kernel cannot take these operands (None: it can); malformed operands raise."""
    k = x.shape[-1] if x.dim() else 0
    if gate_up_weight.dim() != 2 or gate_up_weight.shape[1] != k or gate_up_weight.shape[0] % 2:
        raise ValueError(f"mlp_block: gate_up_weight {tuple(gate_up_weight.shape)} must be [2I, K] with K = {k}")
    i = gate_up_weight.shape[0] // 2
    if tuple(down_weight.shape) != (k, i):
        raise ValueError(f"mlp_block: down_weight {tuple(down_weight.shape)} must be [K, I] = [{k}, {i}]")
    if tuple(norm_weight.shape) != (k,):
        raise ValueError(f"mlp_block: norm_weight {tuple(norm_weight.shape)} must be [K] = [{k}]")
    rows = x.numel() // max(k, 1)
    if act != "silu":
        return f"act={act!r} (the kernel gates with silu)"
    if rows != 1:
        return f"{rows} tokens (the one-launch kernel takes one: batch 1)"
    if gate_up_weight.stride(1) != 1 or down_weight.stride(1) != 1 or not x.is_contiguous():
        return "x, or a weight's rows, not contiguous"
    if next_pow2(k) > 8192:
        return f"K = {k}: the resident weight tiles hold at most 8192 columns"
    return None


def _unfused(x: torch.Tensor, norm_weight: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor,
             eps: float, act: str) -> torch.Tensor:
    """The block as the library's kernels in turn (any number of rows): the norm, the gate/up GEMV with the
    gating, the down GEMV with the residual. Each falls back to its torch reference where it cannot run."""
    from membound.backends.triton.kernels.linear import linear_add, linear_glu
    from membound.backends.triton.kernels.norm import rms_norm

    h = linear_glu(rms_norm(x, norm_weight, eps=eps), gate_up_weight, act=act, static_weight=True)
    return linear_add(h, down_weight, x, static_weight=True)


def mlp_block(x: torch.Tensor, norm_weight: torch.Tensor, gate_up_weight: torch.Tensor, down_weight: torch.Tensor,
              out: Optional[torch.Tensor] = None, *, eps: float, act: str = "silu",
              config: Optional[MlpBlockConfig] = None) -> torch.Tensor:
    """The IR op ``mlp_block``: ``x + linear(linear_glu(rms_norm(x, norm_weight, eps), gate_up_weight, act),
    down_weight)``, in one launch at batch 1 (see the module). The weights (and the norm's) must be parameters: no
    kernel before it in the stream may write them (they are read before the PDL wait). Several rows, or operands
    the kernel does not take: the library's kernels in turn, saying why."""
    reason = _scope(x, norm_weight, gate_up_weight, down_weight, act)
    tensors = [x, norm_weight, gate_up_weight, down_weight]
    reason = reason or unsupported_device(*tensors) or unsupported_dtype("mlp_block", x)
    if reason is None and len({t.dtype for t in tensors}) != 1:
        reason = "operands of several dtypes"
    if reason is not None:
        y = _unfused(x, norm_weight, gate_up_weight, down_weight, eps, act)
        return fallback("mlp_block", f"{reason}: the library's kernels in turn", y, out)
    y = check_out("mlp_block", out, tuple(x.shape), x.dtype, x.device)
    k, i = x.shape[-1], gate_up_weight.shape[0] // 2
    cfg = config or pick_config(k, i, x.dtype)
    block_k, chp = next_pow2(k), chunks(k, i)
    if cfg.rows < chp:
        raise ValueError(f"mlp_block: config.rows={cfg.rows} is under the {chp} pieces one down row takes")
    n_d = cdiv(i, cfg.rows // 2)
    n_items = n_d + cdiv(k, cfg.rows // chp)
    dev = x.device
    h = torch.empty(i, dtype=x.dtype, device=dev)
    counters = split_counters(dev, COUNTERS)
    programs = ordered_grid("mlp_block", n_items, cfg.programs, dev)
    wd_off = _element_offset(down_weight, gate_up_weight)
    align = math.gcd(gate_up_weight.stride(0), down_weight.stride(0), wd_off, 16 // x.element_size())
    launchable(_mlp_block, dev)[(programs,)](
        x, norm_weight, gate_up_weight, wd_off, y, h, counters, float(eps), n_d, n_items, i, k,
        gate_up_weight.stride(0), down_weight.stride(0), ROWS=cfg.rows, BLOCK_K=block_k, CHP=chp, ROW_ALIGN=align,
        num_warps=cfg.num_warps, **pdl_options(dev))
    note("mlp_block", "kernel")
    return y
