"""One launch for a decode layer's attention block (issue 13): ``x + o_proj(attention(rope(qkv(rms_norm(x)))))``.

At batch 1 the attention block of a Llama layer is five dependent kernels (norm and q/k/v GEMV, rotation and
cache write, flash-decoding, o GEMV with the residual add) over ~21 MB of weights at the Llama-3.2-1B shape: ~5 us
of streaming at the H200's read bandwidth, measured at ~19 us in the decode step (session 15's profile). Most of
the rest is latency: each kernel's ramp-up and tail, and attention (~1 MB of cache) that leaves HBM idle for
~6 us. This kernel runs the block as one grid of work items in three phases, each program taking items
``pid, pid + P, pid + 2P, ...`` of one ordered list:

- **A** (``N_A`` items, kv group by group: its q heads, its k head, its v head): ``ROWS`` rows of the merged q/k/v
  weight against ``rms_norm(x) * norm_weight`` (each
  program reduces x itself, 4-8 KB), as ``ROWS / 2`` rotary pairs ``(j, j + D/2)`` of one head, so the rotation
  happens in the epilogue; q goes to a scratch vector, k and v into the caches at the step's position. Each item
  then counts in on its kv head's counter (the head it is, or whose group its q head is in).
- **B** (``HKV * SPLITS`` items): flash-decoding for one kv head (its ``G`` query heads share every K/V tile)
  over one of ``SPLITS`` chunks of the filled prefix, once that head's counter says its q/k/v items are done; the
  last of a head's splits merges the partials; the head's output goes to a scratch vector and counts in on
  counter 1.
- **C** (``N_C`` items): ``ROWS`` rows of the o projection once counter 1 says every head is done, plus the
  residual x, stored to ``out``.

Items are taken in list order and an item waits only on items before it, so the grid cannot deadlock as long
as the programs holding the earlier items run: always when ``P`` programs fit on the device at once, and with
more (one item per program, the default) because blocks are dispatched in index order. Each program's *first*
item has its weight tile (``[ROWS, BLOCK_K]``: a whole row range, resident in registers) loaded before the
programmatic-dependent-launch wait, so with one item per program every A and C weight byte is requested at
launch, while the kernel before is finishing: the o projection streams while attention runs.

The last program to finish (counter 2) sets counters 1-2 back to zero; each head's merger resets its own two:
the launch leaves the per-stream counter buffer zeroed, as every split kernel of the library does.

Numerics follow eager's roundings: the normed x rounded to the dtype, then times the norm weight and rounded;
q/k/v rounded, rotated with each product rounded (``linear.rotate_rounded``); attention in fp32 (base 2), its output
rounded; the o product rounded, the residual added and rounded.

The kernel's scope: one token (B = 1, S = 1), a linear cache ``[1, HKV, T, D]`` without window, soft-cap or ALiBi
(fuse-attention-block only makes the op then), an o projection without bias, fp16 / bf16 / fp32. ``attention_block``
(the IR op's launcher) runs the library's kernels in turn for anything else, several rows above all, and says why.
Made by fuse-attention-block in the ``decode-block`` pipeline, off by default: timed on an H200 (session 20, Triton
3.6) it lost to the library's chain, 27.3 us a layer at the 1.24B shape and 83.6 at 8B in the decode-layer step
(profile_step-quick-decode-layer-...-session20), 52.6 us a layer with the MLP against the chain's 46.5 in
``benches/experiments/attn_block.py``; Triton 3.6 assembled it at 176 registers a thread (3.9: 110), one 8-warp
program an SM.
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
    sm_count,
    split_counters,
    unsupported_device,
    unsupported_dtype,
)
from membound.backends.triton.kernels.decode_attention import LOG2E, _online_softmax
from membound.backends.triton.kernels.linear import rotate_rounded

# counters in the per-stream buffer: 0 unused, 1 kv heads attended, 2 programs finished, then per kv head its
# splits' arrivals (3 + h) and its q/k/v items done (3 + HKV + h)
COUNTERS = 3


@dataclass(frozen=True)
class AttnBlockConfig:
    rows: int = 16  # weight rows per A or C item (A: rows / 2 rotary pairs of one head); a power of two >= 2
    splits: int = 1  # chunks of the filled prefix per kv head (B items per head)
    block_t: int = 32  # cache slots per attention tile
    num_warps: int = 8
    programs: Optional[int] = None  # grid size; None: one program per item
    # software pipelining of the attention items' key/value tiles (Triton's num_stages: 1 none, 2-3 cp.async ahead)
    num_stages: int = 1
    # the attention items' first key/value tiles (but this step's slot) loaded before they wait for the q/k/v items
    early_kv: bool = False

    def __post_init__(self) -> None:
        for name in ("rows", "splits", "block_t"):
            v = getattr(self, name)
            if v < 1 or v & (v - 1):
                raise ValueError(f"AttnBlockConfig: {name}={v} must be a power of two")
        if self.rows < 2:
            raise ValueError("AttnBlockConfig: rows must be at least 2 (one rotary pair)")
        if self.block_t < 16:
            raise ValueError("AttnBlockConfig: block_t must be at least 16 (tl.dot tiles)")


def pick_config(k: int, hq: int, hkv: int, d: int, capacity: int, dtype: torch.dtype,
                device: torch.device) -> AttnBlockConfig:
    """A first guess, to be swept on the GPU (``benches/experiments/attn_block.py``): 32 KB weight tiles (the
    library's resident GEMV tiles: ~120 registers a thread at 8 warps, two programs an SM); K and V tiles of 128
    slots at head dim 64 (32 KB), 32 at 128 (16 KB); one split per kv head up to 1024 slots of capacity, past it enough
    splits for about 512 slots a program, at most one program an SM over the kv heads, and their key tiles
    software-pipelined (3 stages of half-size tiles: 64 KB of shared memory a program, where full-size ones took 128
    KB at head dim 64 and one program an SM)."""
    e = torch.empty((), dtype=dtype).element_size()
    rows = max(2, min(64, (32768 // e) // next_pow2(k)))
    # (64-slot tiles at head dim 128 spill at 128 registers a thread in sm_90 SASS: compile_check --regs)
    block_t = max(16, min(128, (16384 if d <= 64 else 8192) // (next_pow2(d) * e)))
    splits = 1
    while splits < 64 and capacity > 512 * splits and capacity > 1024 and hkv * splits * 2 <= sm_count(device):
        splits *= 2
    if splits > 1:  # pipelined: three stages of half-size tiles (48 KB of shared memory at most, not 96)
        return AttnBlockConfig(rows=rows, splits=splits, block_t=max(16, block_t // 2), num_warps=8, num_stages=3)
    return AttnBlockConfig(rows=rows, splits=splits, block_t=block_t, num_warps=8)


@triton.jit
def _spin_until(cnt_ptr, target):
    """Wait until counter ``cnt_ptr`` reaches ``target``, then acquire the writes released before each count.

    Polls with plain (volatile) loads, not atomics: hundreds of programs wait on one counter while others count
    in on it, and read-modify-writes would queue behind each other at its L2 slice. One acquiring atomic once the
    target is seen reads the last count and so synchronises with every release before it."""
    seen = tl.load(cnt_ptr, volatile=True)
    while seen < target:
        seen = tl.load(cnt_ptr, volatile=True)
    tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    # (a scalar atomic runs on one thread: every thread's loads from here on come after its acquire, as after
    # arrive_last, whose result every thread reads)
    tl.debug_barrier()


@triton.jit
def _count_in(cnt_ptr):
    """This program's stores done (every thread: the barrier), then counter ``cnt_ptr`` + 1, released."""
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")


@triton.jit
def _a_head(item, per_head, G, HQ, HKV):
    """The head (among the merged weight's q, k, v heads) of A item ``item``. Items go kv group by group: its G q
    heads, its k head, its v head, so the first groups' attention can start while later groups' rows stream."""
    slot = item // per_head
    group = slot // (G + 2)
    r = slot % (G + 2)
    return tl.where(r < G, group * G + r, tl.where(r == G, HQ + group, HQ + HKV + group))


@triton.jit
def _tile_ptrs(item, w_ptr, wo_off, N_A, N_B, HQ, HKV, G, HALF, KQ, KO, swr, sor,
               D: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, ROW_ALIGN: tl.constexpr):
    """The weight tile of ``item``: A items rows ``(j, j + HALF)`` interleaved of one q/k/v head, C items ``ROWS``
    rows of the o projection; B items none (all masked off)."""
    r = tl.arange(0, ROWS)
    ks = tl.arange(0, BLOCK_K)
    PAIRS: tl.constexpr = ROWS // 2
    per_head = tl.cdiv(HALF, PAIRS)
    is_a = item < N_A
    # A: head h, pairs j0 .. j0 + PAIRS; row r is pair r // 2, half r % 2
    head = _a_head(item, per_head, G, HQ, HKV)
    j = (item % per_head) * PAIRS + r // 2
    a_rows = head * D + (r % 2) * HALF + j
    a_ok = (j < HALF) & (item + 0 * r < N_A)  # (a vector: the interpreter's bool & 0-d bool is int32)
    # C: rows n0 .. n0 + ROWS of the o projection
    c_item = item - N_A - N_B
    c_rows = c_item * ROWS + r
    c_ok = (c_item + 0 * r >= 0) & (c_rows < KQ)
    # one base pointer (``wo_off``: the o projection's first element counted from the q/k/v weight's), so the
    # selected rows keep the alignment the compiler needs for 16-byte loads (a select of two pointers loses it)
    row_off = tl.where(is_a, a_rows.to(tl.int64) * swr, wo_off + c_rows.to(tl.int64) * sor)
    if ROW_ALIGN > 1:  # the select hides the strides' alignment from the compiler: stated (the launcher checks it)
        row_off = tl.multiple_of(row_off, ROW_ALIGN)
    ptrs = w_ptr + row_off[:, None] + ks[None, :]
    mask = (a_ok[:, None] & (ks < KQ)[None, :]) | (c_ok[:, None] & (ks < KO)[None, :])  # (a_ok, c_ok exclusive)
    return ptrs, mask


@triton.jit
def _a_cols(item, N_A, HALF, PAIRS: tl.constexpr):
    """A item ``item``'s pair columns ``j`` within its head (the first of each pair; the second is ``j + HALF``),
    and which exist (none for another kind of item)."""
    jj = (item % tl.cdiv(HALF, PAIRS)) * PAIRS + tl.arange(0, PAIRS)
    return jj, (jj < HALF) & (item + 0 * jj < N_A)


@triton.jit
def _a_bias(item, b_ptr, N_A, HQ, HKV, G, HALF, D: tl.constexpr, PAIRS: tl.constexpr, HAS_BIAS: tl.constexpr):
    """The bias of A item ``item``'s two column sets (zeros without a bias or for another kind of item): a
    parameter, so the first item's is loaded before the PDL wait."""
    jj, ok = _a_cols(item, N_A, HALF, PAIRS)
    base = b_ptr + _a_head(item, tl.cdiv(HALF, PAIRS), G, HQ, HKV) * D + jj
    if HAS_BIAS:
        return tl.load(base, mask=ok, other=0.0).to(tl.float32), tl.load(base + HALF, mask=ok, other=0.0).to(tl.float32)
    else:
        return tl.zeros((PAIRS,), tl.float32), tl.zeros((PAIRS,), tl.float32)


@triton.jit
def _a_rope(jj, ok, cos_ptr, sin_ptr, HALF):
    """cos and sin at an A item's pair columns ``jj`` and ``jj + HALF`` where ``ok`` (the step's rotary row: written
    by an earlier kernel, so after the wait), as fp32."""
    c1 = tl.load(cos_ptr + jj, mask=ok, other=0.0).to(tl.float32)
    c2 = tl.load(cos_ptr + HALF + jj, mask=ok, other=0.0).to(tl.float32)
    s1 = tl.load(sin_ptr + jj, mask=ok, other=0.0).to(tl.float32)
    s2 = tl.load(sin_ptr + HALF + jj, mask=ok, other=0.0).to(tl.float32)
    return c1, c2, s1, s2


@triton.jit
def _phase_a(item, jj, j_ok, w, xn, bias1, bias2, c1, c2, s1, s2, q_ptr, kc_ptr, vc_ptr, pos, cnt_ptr,
             HQ, HKV, G, HALF, skh, skt, skd, svh, svt, svd, D: tl.constexpr, ROWS: tl.constexpr):
    """One A item: ``ROWS / 2`` rotary pairs (columns ``jj`` where ``j_ok``, and ``jj + HALF``) of one q, k or v head
    from its resident weight tile ``w`` against the normed x ``xn`` (fp32 of the rounded values); ``bias*``, ``c*``,
    ``s*`` its columns' bias, cos and sin."""
    PAIRS: tl.constexpr = ROWS // 2
    head = _a_head(item, tl.cdiv(HALF, PAIRS), G, HQ, HKV)
    dt = q_ptr.dtype.element_ty
    y = tl.sum(w.to(tl.float32) * xn[None, :], axis=1)  # [ROWS]: pair-interleaved
    y1, y2 = tl.split(tl.reshape(y, (PAIRS, 2)))
    r1 = (y1 + bias1).to(dt)
    r2 = (y2 + bias2).to(dt)
    if head < HQ + HKV:  # q and k heads rotate, v heads do not
        o1, o2 = rotate_rounded(r1, r2, c1, c2, s1, s2)
        if head < HQ:
            tl.store(q_ptr + head * D + jj, o1, mask=j_ok)
            tl.store(q_ptr + head * D + HALF + jj, o2, mask=j_ok)
        else:
            base = kc_ptr + (head - HQ).to(tl.int64) * skh + pos.to(tl.int64) * skt
            tl.store(base + jj * skd, o1, mask=j_ok)
            tl.store(base + (HALF + jj) * skd, o2, mask=j_ok)
    else:
        base = vc_ptr + (head - HQ - HKV).to(tl.int64) * svh + pos.to(tl.int64) * svt
        tl.store(base + jj * svd, r1, mask=j_ok)
        tl.store(base + (HALF + jj) * svd, r2, mask=j_ok)
    # counted in on its kv head's counter: the attention items of that head wait for its G + 2 heads only
    group = tl.where(head < HQ, head // G, tl.where(head < HQ + HKV, head - HQ, head - HQ - HKV))
    _count_in(cnt_ptr + 3 + HKV + group)


@triton.jit
def _kv_tile(base, ts, ds, st, sd, t_mask, d_ok, TRANSPOSED: tl.constexpr):
    """Slots ``ts`` of one head's cache where ``t_mask`` (zeros elsewhere): K^T ``[BLOCK_D, BLOCK_T]``
    (``TRANSPOSED``) or V ``[BLOCK_T, BLOCK_D]``. Not ``decode_attention._k_tile`` / ``_v_tile`` (a 64-bit first slot
    plus 32-bit offsets): in this kernel that form took the unpipelined 4-split configs from 124 to 184 registers a
    thread (compile_check --regs), one program an SM instead of two; 64-bit slot vectors here."""
    if TRANSPOSED:
        return tl.load(base + ts.to(tl.int64)[None, :] * st + ds[:, None] * sd, mask=t_mask[None, :] & d_ok[:, None],
                       other=0.0)
    else:
        return tl.load(base + ts.to(tl.int64)[:, None] * st + ds[None, :] * sd, mask=t_mask[:, None] & d_ok[None, :],
                       other=0.0)


@triton.jit
def _phase_b(item, q_ptr, kc_ptr, vc_ptr, a_ptr, part_ptr, lse_ptr, cnt_ptr, pos, qk_scale, A_PER_HEAD, HKV, G,
             skh, skt, skd, svh, svt, svd,
             D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr,
             BLOCK_T: tl.constexpr, INPUT_PRECISION: tl.constexpr, EARLY_KV: tl.constexpr):
    """One B item: kv head ``item // SPLITS`` over chunk ``item % SPLITS`` of slots ``0 .. pos``."""
    kvh = item // SPLITS
    split = item % SPLITS
    rg = tl.arange(0, BLOCK_G)
    ds = tl.arange(0, BLOCK_D)
    g_ok = rg < G
    d_ok = ds < D
    span = pos + 1
    chunk = tl.cdiv(tl.cdiv(span, SPLITS), BLOCK_T) * BLOCK_T
    start = split * chunk
    end = tl.minimum(start + chunk, span)
    k_base = kc_ptr + kvh.to(tl.int64) * skh
    v_base = vc_ptr + kvh.to(tl.int64) * svh
    tn = tl.arange(0, BLOCK_T)
    # EARLY_KV: the chunk's first K and V tiles, but this step's slot, while the q/k/v items still stream (earlier
    # steps wrote them, visible since the PDL wait; only slot ``pos`` is this step's). Off by default: held across
    # the wait they took the 1.24B block from 109 to 168 registers a thread (one program an SM, not two)
    ts0 = start + tn
    if EARLY_KV:
        old = (ts0 < end) & (ts0 < pos)
        k_pre = _kv_tile(k_base, ts0, ds, skt, skd, old, d_ok, True)
        v_pre = _kv_tile(v_base, ts0, ds, svt, svd, old, d_ok, False)
    ready = cnt_ptr + 3 + HKV + kvh
    _spin_until(ready, (G + 2) * A_PER_HEAD)  # this kv head's q, k and v values of this step stored
    q = tl.load(q_ptr + (kvh * G + rg)[:, None] * D + ds[None, :], mask=g_ok[:, None] & d_ok[None, :], other=0.0)
    m_i = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_G,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
    t_first = start
    if EARLY_KV:
        if start < end:  # the first tile: the preloaded slots and this step's (if in this chunk)
            t_ok = ts0 < end
            new = t_ok & (ts0 >= pos)
            k_t = tl.where(new[None, :], _kv_tile(k_base, ts0, ds, skt, skd, new, d_ok, True), k_pre)
            v = tl.where(new[:, None], _kv_tile(v_base, ts0, ds, svt, svd, new, d_ok, False), v_pre)
            scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale
            scores = tl.where(t_ok[None, :], scores, float("-inf"))
            m_i, l_i, acc = _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION)
        t_first = start + BLOCK_T
    for t0 in range(t_first, end, BLOCK_T):
        ts = t0 + tn
        t_ok = ts < end
        # both tiles asked for before either is used: one round trip a tile, not two
        k_t = _kv_tile(k_base, ts, ds, skt, skd, t_ok, d_ok, True)
        v = _kv_tile(v_base, ts, ds, svt, svd, t_ok, d_ok, False)
        scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale
        scores = tl.where(t_ok[None, :], scores, float("-inf"))
        m_i, l_i, acc = _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION)
    o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
    out_offs = (kvh * G + rg)[:, None] * D + ds[None, :]
    out_mask = g_ok[:, None] & d_ok[None, :]
    if SPLITS == 1:
        tl.store(a_ptr + out_offs, o.to(a_ptr.dtype.element_ty), mask=out_mask)
        reset_counter(ready, 0)  # (its only reader, past its wait)
        _count_in(cnt_ptr + 1)
    else:
        # partials [HKV, SPLITS, BLOCK_G(, BLOCK_D)]: o normalised, lse = m + log2(l) (-inf for an empty chunk)
        slot = (kvh * SPLITS + split) * BLOCK_G + rg
        lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
        tl.store(lse_ptr + slot, lse)
        tl.store(part_ptr + slot[:, None] * BLOCK_D + ds[None, :], o)
        if arrive_last(cnt_ptr + 3, kvh, SPLITS):
            m = tl.full((BLOCK_G,), float("-inf"), dtype=tl.float32)
            den = tl.zeros((BLOCK_G,), dtype=tl.float32)
            num = tl.zeros((BLOCK_G, BLOCK_D), dtype=tl.float32)
            for s in range(0, SPLITS):
                sl = (kvh * SPLITS + s) * BLOCK_G + rg
                ls = tl.load(lse_ptr + sl)
                os_ = tl.load(part_ptr + sl[:, None] * BLOCK_D + ds[None, :])
                m_new = tl.maximum(m, ls)
                m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
                alpha = tl.exp2(m - m_safe)
                w = tl.exp2(ls - m_safe)
                den = den * alpha + w
                num = num * alpha[:, None] + os_ * w[:, None]
                m = m_new
            o = num / tl.where(den > 0.0, den, 1.0)[:, None]
            tl.store(a_ptr + out_offs, o.to(a_ptr.dtype.element_ty), mask=out_mask)
            reset_counter(cnt_ptr + 3, kvh)
            reset_counter(ready, 0)  # every split of the head is past its wait: they all counted in above
            _count_in(cnt_ptr + 1)


@triton.jit
def _phase_c(item, w, x_ptr, a_ptr, out_ptr, cnt_ptr, N_A, N_B, HKV, KQ, KO,
             ROWS: tl.constexpr, BLOCK_K: tl.constexpr):
    """One C item: ``ROWS`` rows of the o projection from the resident tile ``w``, plus the residual."""
    rows = (item - N_A - N_B) * ROWS + tl.arange(0, ROWS)
    r_ok = rows < KQ
    ks = tl.arange(0, BLOCK_K)
    r = tl.load(x_ptr + rows, mask=r_ok, other=0.0)  # the residual (the layer's input) while we wait
    _spin_until(cnt_ptr + 1, HKV)  # every head's attention output stored
    a = tl.load(a_ptr + ks, mask=ks < KO, other=0.0)
    y = tl.sum(w.to(tl.float32) * a.to(tl.float32)[None, :], axis=1).to(a.dtype)
    tl.store(out_ptr + rows, (y.to(tl.float32) + r.to(tl.float32)).to(out_ptr.dtype.element_ty), mask=r_ok)


@triton.jit
def _item(item, w, xn, bias1, bias2, cos_ptr, sin_ptr, x_ptr, q_ptr, kc_ptr, vc_ptr, a_ptr, out_ptr,
          part_ptr, lse_ptr, cnt_ptr, pos, qk_scale, N_A, N_B, HQ, HKV, G, HALF, KQ, KO,
          skh, skt, skd, svh, svt, svd,
          D: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr,
          BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, INPUT_PRECISION: tl.constexpr,
          EARLY_KV: tl.constexpr):
    if item < N_A:
        jj, j_ok = _a_cols(item, N_A, HALF, ROWS // 2)
        c1, c2, s1, s2 = _a_rope(jj, j_ok, cos_ptr, sin_ptr, HALF)
        _phase_a(item, jj, j_ok, w, xn, bias1, bias2, c1, c2, s1, s2, q_ptr, kc_ptr, vc_ptr, pos, cnt_ptr,
                 HQ, HKV, G, HALF, skh, skt, skd, svh, svt, svd, D, ROWS)
    elif item < N_A + N_B:
        _phase_b(item - N_A, q_ptr, kc_ptr, vc_ptr, a_ptr, part_ptr, lse_ptr, cnt_ptr, pos, qk_scale,
                 tl.cdiv(HALF, ROWS // 2), HKV, G,
                 skh, skt, skd, svh, svt, svd, D, SPLITS, BLOCK_G, BLOCK_D, BLOCK_T, INPUT_PRECISION, EARLY_KV)
    else:
        _phase_c(item, w, x_ptr, a_ptr, out_ptr, cnt_ptr, N_A, N_B, HKV, KQ, KO, ROWS, BLOCK_K)


@triton.jit
def _attn_block(
    x_ptr, nw_ptr, w_ptr, b_ptr, cos_ptr, sin_ptr, pos_ptr, kc_ptr, vc_ptr, wo_off, out_ptr,
    q_ptr, a_ptr, part_ptr, lse_ptr, cnt_ptr,
    eps, qk_scale, N_A, N_B, N_ITEMS, HQ, HKV, G, HALF, KQ, KO,
    swr, sor, skh, skt, skd, svh, svt, svd,
    D: tl.constexpr, ROWS: tl.constexpr, BLOCK_K: tl.constexpr, SPLITS: tl.constexpr, BLOCK_G: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_T: tl.constexpr, HAS_BIAS: tl.constexpr, INPUT_PRECISION: tl.constexpr,
    USE_PDL: tl.constexpr, ROW_ALIGN: tl.constexpr = 1, EARLY_KV: tl.constexpr = False,
):
    pid = tl.program_id(0)
    n_prog = tl.num_programs(0)
    ks = tl.arange(0, BLOCK_K)
    k_ok = ks < KQ
    # parameters first, before the PDL wait (no kernel writes them): the first item's weight tile (and bias), and
    # the norm's weight
    ptrs, mask = _tile_ptrs(pid, w_ptr, wo_off, N_A, N_B, HQ, HKV, G, HALF, KQ, KO, swr, sor, D, ROWS, BLOCK_K,
                            ROW_ALIGN)
    w_first = tl.load(ptrs, mask=mask, other=0.0)
    bias1, bias2 = _a_bias(pid, b_ptr, N_A, HQ, HKV, G, HALF, D, ROWS // 2, HAS_BIAS)
    # only programs with A items (their first item is one: the rest come pid + n_prog, ... later) read x and the
    # norm's weight (at 8B ~1000 o-projection programs would each re-read 16 KB of them from L2 for nothing)
    a_prog = k_ok & (pid + 0 * ks < N_A)
    nw = tl.load(nw_ptr + ks, mask=a_prog, other=0.0)
    pdl_enter(USE_PDL)
    pos = tl.load(pos_ptr)
    # x normed as eager norms it (rounded to the dtype, times the weight, rounded), once a program
    x = tl.load(x_ptr + ks, mask=a_prog, other=0.0)
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / KQ + eps)
    xn = (xf * rstd).to(x.dtype)
    xn = (xn.to(tl.float32) * nw.to(tl.float32)).to(x.dtype).to(tl.float32)
    if pid < N_ITEMS:
        _item(pid, w_first, xn, bias1, bias2, cos_ptr, sin_ptr, x_ptr, q_ptr, kc_ptr, vc_ptr, a_ptr, out_ptr,
              part_ptr, lse_ptr, cnt_ptr, pos, qk_scale, N_A, N_B, HQ, HKV, G, HALF, KQ, KO,
              skh, skt, skd, svh, svt, svd, D, ROWS, BLOCK_K, SPLITS, BLOCK_G, BLOCK_D, BLOCK_T, INPUT_PRECISION,
              EARLY_KV)
    for item in range(pid + n_prog, N_ITEMS, n_prog):
        ptrs, mask = _tile_ptrs(item, w_ptr, wo_off, N_A, N_B, HQ, HKV, G, HALF, KQ, KO, swr, sor, D, ROWS, BLOCK_K,
                                ROW_ALIGN)
        w = tl.load(ptrs, mask=mask, other=0.0)
        bias1, bias2 = _a_bias(item, b_ptr, N_A, HQ, HKV, G, HALF, D, ROWS // 2, HAS_BIAS)
        _item(item, w, xn, bias1, bias2, cos_ptr, sin_ptr, x_ptr, q_ptr, kc_ptr, vc_ptr, a_ptr, out_ptr,
              part_ptr, lse_ptr, cnt_ptr, pos, qk_scale, N_A, N_B, HQ, HKV, G, HALF, KQ, KO,
              skh, skt, skd, svh, svt, svd, D, ROWS, BLOCK_K, SPLITS, BLOCK_G, BLOCK_D, BLOCK_T, INPUT_PRECISION,
              EARLY_KV)
    # the last program out leaves the phase counters zeroed for the next launch on this stream
    if arrive_last(cnt_ptr, 2, n_prog):
        reset_counter(cnt_ptr, 1)
        reset_counter(cnt_ptr, 2)


def _scope(x: torch.Tensor, norm_weight: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor,
           k_cache: torch.Tensor, v_cache: torch.Tensor, o_weight: torch.Tensor, hq: int, hkv: int, d: int,
           position: torch.Tensor) -> Optional[str]:
    """Why the kernel cannot take these operands (None: it can: one token); malformed operands raise."""
    k = x.shape[-1] if x.dim() else 0
    rows = x.numel() // max(k, 1)
    if hq <= 0 or hkv <= 0 or hq % hkv:
        raise ValueError(f"attention_block: num_heads={hq} is not a multiple of num_kv_heads={hkv}")
    if d <= 0 or d % 2:
        raise ValueError(f"attention_block: head_dim={d} must be even (rotary pairs)")
    if norm_weight.shape != (k,):
        raise ValueError(f"attention_block: norm_weight {tuple(norm_weight.shape)} must be [K] = [{k}]")
    if tuple(qkv_weight.shape) != ((hq + 2 * hkv) * d, k):
        raise ValueError(f"attention_block: qkv_weight {tuple(qkv_weight.shape)} must be [(num_heads + 2 * "
                         f"num_kv_heads) * head_dim, K] = [{(hq + 2 * hkv) * d}, {k}]")
    if tuple(o_weight.shape) != (k, hq * d):
        raise ValueError(f"attention_block: o_weight {tuple(o_weight.shape)} must be [K, num_heads * head_dim] = "
                         f"[{k}, {hq * d}]")
    for name, c in (("k_cache", k_cache), ("v_cache", v_cache)):
        if c.dim() != 4 or c.shape[0] != rows or c.shape[1] != hkv or c.shape[3] != d:
            raise ValueError(f"attention_block: {name} {tuple(c.shape)} must be [B, num_kv_heads, T, head_dim] with "
                             f"B = {rows} (x's tokens, one a row)")
    if position.dtype not in (torch.int32, torch.int64) or position.numel() not in (1, rows):
        raise ValueError(f"attention_block: positions must be int32/int64, one a row or one for all, got "
                         f"{position.dtype} {tuple(position.shape)}")
    if rows != 1:
        return f"{rows} tokens (the one-launch kernel takes one: batch 1)"
    if cos.numel() != d:
        return f"cos/sin of {cos.numel()} values (the kernel takes one rotary row of head_dim={d})"
    if qkv_weight.stride(1) != 1 or o_weight.stride(1) != 1 or not x.is_contiguous():
        return "x, or a weight's rows, not contiguous"
    if next_pow2(max(k, hq * d)) > 8192:
        return f"K = {max(k, hq * d)}: the resident weight tiles hold at most 8192 columns"
    return None


def _unfused(x: torch.Tensor, norm_weight: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor,
             sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, positions: torch.Tensor,
             o_weight: torch.Tensor, qkv_bias: Optional[torch.Tensor], eps: float, hq: int, hkv: int, d: int,
             scale: Optional[float]) -> torch.Tensor:
    """The block as the library's kernels in turn (any number of rows): the norm, the q/k/v projection with q
    and k rotated, both cache writes, flash-decoding, the o projection with the residual. Each falls back to
    its torch reference where it cannot run."""
    from membound.backends.triton.kernels.cache_write import cache_write
    from membound.backends.triton.kernels.decode_attention import cached_attention
    from membound.backends.triton.kernels.linear import linear_add, linear_rope
    from membound.backends.triton.kernels.norm import rms_norm

    k = x.shape[-1]
    rows = x.numel() // k
    xs = x.reshape(rows, 1, k)
    qkv = linear_rope(rms_norm(xs, norm_weight, eps=eps), qkv_weight, cos, sin, qkv_bias, head_dim=d,
                      rope_cols=(hq + hkv) * d, static_weight=True)
    q, kn, vn = (t.reshape(rows, 1, h, d).transpose(1, 2)
                 for t, h in zip(qkv.split([hq * d, hkv * d, hkv * d], dim=-1), (hq, hkv, hkv)))
    pos = positions.reshape(rows, 1) if positions.numel() == rows else positions.reshape(1)
    cache_write(k_cache, kn, pos)
    cache_write(v_cache, vn, pos)
    a = cached_attention(q, k_cache, v_cache, pos, scale=scale)
    return linear_add(a.transpose(1, 2).reshape(rows, 1, hq * d), o_weight, xs, static_weight=True).reshape(x.shape)


def ordered_grid(op: str, n_items: int, programs: Optional[int], device: torch.device) -> int:
    """The grid of a kernel of ordered work items (this one, ``mlp_block``): one program an item, or ``programs``
    taking items ``pid, pid + P, ...`` on a GPU (the interpreter runs programs one after another: program 0 would
    wait for items of programs it has not started)."""
    grid = min(n_items, programs or n_items)
    if grid < n_items and device.type != "cuda":
        raise ValueError(f"{op}: config.programs={programs} < {n_items} items needs a GPU (the Triton interpreter "
                         f"runs programs one after another); pass programs=None on CPU")
    return grid


def _element_offset(t: torch.Tensor, base: torch.Tensor) -> int:
    """Where ``t``'s first element lies, in elements counted from ``base``'s (same dtype and device; may be
    negative): the kernel reads both weights through ``base``'s pointer."""
    delta = t.data_ptr() - base.data_ptr()
    e = t.element_size()
    if delta % e:
        raise ValueError("attention_block: the o projection's storage is not element-aligned with the q/k/v weight's")
    return delta // e


def attention_block(x: torch.Tensor, norm_weight: torch.Tensor, qkv_weight: torch.Tensor, cos: torch.Tensor,
                    sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, position: torch.Tensor,
                    o_weight: torch.Tensor, qkv_bias: Optional[torch.Tensor] = None,
                    out: Optional[torch.Tensor] = None, *, eps: float, num_heads: int, num_kv_heads: int,
                    head_dim: int, scale: Optional[float] = None,
                    config: Optional[AttnBlockConfig] = None) -> torch.Tensor:
    """The IR op ``attention_block``: a decode layer's attention block, in one launch at batch 1 (see the module):
    writes the token's k and v into the caches at ``position`` (on the device) and returns ``x + o_proj(attention)``.

    ``x`` ``[..., K]`` one new token a row; ``qkv_weight`` the merged ``[(Hq + 2 Hkv) D, K]`` q/k/v projection
    (bias ``qkv_bias``); ``cos``/``sin`` the ``[D]`` rotary row(s); caches ``[B, Hkv, T, D]``; ``o_weight``
    ``[K, Hq D]``. The weights (and the norm's and bias) must be parameters: no kernel before it in the stream
    may write them (they are read before the PDL wait). Several rows, or operands the kernel does not take: the
    library's kernels in turn, saying why."""
    hq, hkv, d = num_heads, num_kv_heads, head_dim
    reason = _scope(x, norm_weight, qkv_weight, cos, k_cache, v_cache, o_weight, hq, hkv, d, position)
    tensors = [x, norm_weight, qkv_weight, cos, sin, k_cache, v_cache, position, o_weight]
    if qkv_bias is not None:
        tensors.append(qkv_bias)
    reason = reason or unsupported_device(*tensors) or unsupported_dtype("attention_block", x)
    if reason is None and len({t.dtype for t in tensors if t is not position}) != 1:
        reason = "operands of several dtypes"
    if reason is not None:
        y = _unfused(x, norm_weight, qkv_weight, cos, sin, k_cache, v_cache, position, o_weight, qkv_bias, eps, hq,
                     hkv, d, scale)
        return fallback("attention_block", f"{reason}: the library's kernels in turn", y, out)
    y = check_out("attention_block", out, tuple(x.shape), x.dtype, x.device)
    k = x.shape[-1]
    ko = hq * d
    cap = k_cache.shape[2]
    cfg = config or pick_config(k, hq, hkv, d, cap, x.dtype, x.device)
    g = hq // hkv
    half = d // 2
    n_a = (hq + 2 * hkv) * cdiv(half, cfg.rows // 2)
    n_b = hkv * cfg.splits
    n_c = cdiv(k, cfg.rows)
    n_items = n_a + n_b + n_c
    block_g = max(16, next_pow2(g))
    block_d = max(16, next_pow2(d))
    dev = x.device
    q_buf = torch.empty(ko, dtype=x.dtype, device=dev)
    a_buf = torch.empty(ko, dtype=x.dtype, device=dev)
    partials = hkv * cfg.splits * block_g if cfg.splits > 1 else 1  # (one split: no partials, nothing read)
    part = torch.empty(partials * block_d, dtype=torch.float32, device=dev)
    lse = torch.empty(partials, dtype=torch.float32, device=dev)
    counters = split_counters(dev, COUNTERS + 2 * hkv)
    programs = ordered_grid("attention_block", n_items, cfg.programs, dev)
    wo_off = _element_offset(o_weight, qkv_weight)
    # the rows' common alignment in elements, up to one 16-byte vector (the weight tiles' loads)
    align = math.gcd(qkv_weight.stride(0), o_weight.stride(0), wo_off, 16 // x.element_size())
    kernel = launchable(_attn_block, dev)
    kernel[(programs,)](
        x, norm_weight, qkv_weight, qkv_bias if qkv_bias is not None else x, cos.reshape(-1), sin.reshape(-1),
        position, k_cache, v_cache, wo_off, y, q_buf, a_buf, part, lse, counters,
        float(eps), float((scale if scale is not None else 1.0 / math.sqrt(d)) * LOG2E), n_a, n_b, n_items,
        hq, hkv, g, half, k, ko,
        qkv_weight.stride(0), o_weight.stride(0), k_cache.stride(1), k_cache.stride(2), k_cache.stride(3),
        v_cache.stride(1), v_cache.stride(2), v_cache.stride(3),
        D=d, ROWS=cfg.rows, BLOCK_K=next_pow2(max(k, ko)), SPLITS=cfg.splits, BLOCK_G=block_g, BLOCK_D=block_d,
        BLOCK_T=cfg.block_t, HAS_BIAS=qkv_bias is not None,
        INPUT_PRECISION="ieee" if x.dtype == torch.float32 else "tf32",
        ROW_ALIGN=align, EARLY_KV=cfg.early_kv, num_warps=cfg.num_warps, num_stages=cfg.num_stages, **pdl_options(dev),
    )
    note("attention_block", "kernel")
    return y
