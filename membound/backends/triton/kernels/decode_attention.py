"""``cached_attention`` by flash-decoding: new queries attend over the filled prefix of a static KV cache.

Shapes: q ``[B, Hq, S, D]``, caches ``[B, Hkv, T, D]`` / ``[B, Hkv, T, Dv]`` (T = capacity), positions
``[S]`` or ``[B, S]``; the query of row b at position p sees slots ``0..p`` (the IR op's semantics).

Decode reads the whole cache prefix for one query token, so the time is the time to stream K and V.
Two things make that fast at batch 1:

- **GQA sharing.** The ``G = Hq / Hkv`` query heads of one kv head (times the S new tokens) form the
  rows of one ``[BLOCK_Q, D]`` block, so each K/V tile is loaded once for all of them and the scores
  come from one ``tl.dot``. The rows are padded to ``DECODE_WARPS * ROWS_PER_WARP`` (16 by default):
  the padding costs FLOPs, never bytes. With 16 rows a warp (64-row blocks) the softmax's row max and
  sum stay inside a warp and each ``tl.dot`` is one Hopper wgmma (2 barriers a tile against 9, sm_90
  PTX of triton 3.6), but the H200 sweep found 16-row blocks faster at every shape it timed (the
  constant's comment). fp32 keeps 16 rows: its ``tl.dot`` runs on FMAs, where padded rows are work.
- **Split-K over the cache length.** ``B * Hkv`` programs cannot fill 132 SMs, so each row block has
  ``N_SPLITS`` programs, and on the device they split the slots the rows see (the filled prefix, or
  the window) evenly, in whole key tiles and never under ``CHUNK_MIN`` slots. Each computes an
  online-softmax partial (base 2), stored normalised: ``o_s = acc_s / l_s`` and its log-sum-exp
  ``lse_s = m_s + log2(l_s)``. The partials of a row block are merged by whichever of its programs
  finishes last (an arrival counter per row block, see ``_launch.split_counters``):
  ``out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M)``, several query rows and 16 partials per
  load. One launch per attention: at decode a second "combine" kernel cost more than the merge.
  ``pick_config`` chooses the split from the length the grid covers, ``B * Hkv`` and the SM count
  (whole waves of about two programs per SM, one for wide tiles, at least four 32 KB tiles' bytes each).
- **Bytes in flight.** K/V tiles (32 KB per K+V tile pair; 64 KB, 128 slots over 8 warps, for a 16-bit
  cache at head dim 128: ``WIDE_TILES``) arrive by ``cp.async`` in 16-byte vectors (``compile_check``
  shows it for sm_90); ``num_stages=3`` keeps two of them in flight per program.
  ``evict_first`` (a config option) adds an L2 evict-first hint to those copies.

With ``k_new, v_new`` (a ring cache of a sliding-window layer) slot t holds position
``p - ((p - t) mod T)``; ALiBi adds ``slope_h * (key position - p)`` to the scores.

Only the filled prefix is read: each program loads its rows' positions on the device; chunks past
``max(position) + 1`` do nothing and are never read back. No host synchronisation, so the op is
CUDA-graph safe. The grid is sized from ``max_len`` (an upper bound of ``max(positions) + 1`` that
the caller knows) or else from the capacity T; either way the device splits the actual prefix over
it, so the CUDA-graph step of ``generate`` (no known length, a grid for the capacity) streams a short
prefix with as many programs as a long one. Without ``max_len`` the compiled variant (constexprs,
warps, stages) is the same at every capacity, so a cache that grows to its next bucket compiles nothing.

Falls back to the torch reference for: dtypes other than fp16/bf16/fp32, head dims over 256, CPU
tensors without ``TRITON_INTERPRET=1``. Any strides work (a transposed q or cache is read in place).
"""

from __future__ import annotations

import logging
import math
import os
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
    l2_prefetch,
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
from membound.ir.ops import get_op
from membound.ir.ops.kv_cache import cached_extras

LOG2E = 1.4426950408889634
_LOG2E: tl.constexpr = tl.constexpr(LOG2E)  # the same, for kernels
MAX_HEAD_DIM = 256
PREFILL_ROWS = 128  # query rows per kv head (G * S) past which prefill runs the flash kernel
MERGE_LANES = 16  # partials the merge loads at once (at most; merge_tile)
MERGE_REGS = int(os.environ.get("MEMBOUND_DECODE_MERGE_REGS", "32"))
# MERGE_REGS: fp32 values a thread may hold per merge tile (merge_tile): at 64, triton 3.6's sm_90 build of the
# 64-row variant spilled 948 B (3.9's none); at 32 neither spills. But the merge's rows set the whole kernel's
# registers under Triton 3.6 (the GPU machine's; session 20, compile_check with triton 3.6 from PyPI): the 16-row
# block at head dim 64 and 4 warps (merge_rows 4) assembles at 255 registers and 12 B of spills (3.9: 123), at head
# dim 128 and 8 warps at 255 (3.9: 124); at MEMBOUND_DECODE_MERGE_REGS=8 (merge_rows 1) 125 and 128. Timed (session
# 22, H100, 1.24B shape at batch 1, two runs each): the fewer registers did not pay, 8 ran the whole call 2% slower
# at 4096- and 32768-token prompts (decode_e2e-nvidia-h100-...-session22-merge-regs*), so 32 stays
# pick_config's constants. gpu/decode_attn.sh times the alternatives on a GPU and prints, last, the values of these
# that select its best variant (benches/experiments/decode_attn_variants.py: VARIANTS)
DECODE_WARPS = 4  # warps per program
# Query rows a warp owns (the row block is DECODE_WARPS * ROWS_PER_WARP rows, at least 16 for tl.dot). 16: each
# warp owns whole 16-row slices, the softmax's row max and sum stay inside a warp and each tl.dot is one Hopper
# wgmma (2 barriers a tile, not 9), but 64-row blocks pad a GQA group of 4 to 64. The H200 sweep
# (benches/results/decode_attn_variants-nvidia-h200-2026-12-02.json) found 4 (16-row blocks) best at every shape
# timed: geomean 0.86x SDPA against 0.74x for 16.
ROWS_PER_WARP = 4
DECODE_TILE_BYTES = 32768  # K + V bytes per key tile: 64 slots at bf16 and head dim 128, 128 at 64, 32 at 256
# cp.async ring: DECODE_STAGES - 1 K/V tiles in flight per program (MEMBOUND_DECODE_STAGES for A/B runs: 4 keeps
# all three 128-slot tiles of a 257-slot span at head dim 64 in flight at once). H100, 1.24B decode step at context
# 256 (profile_step-...-session30-{base1,base2,s4}): 4 stages 1055.7 us at batch 1 against 1058.8 / 1053.2 for 3,
# 1186.4 against 1223.8 / 1183.2 at batch 8: noise. The chain of tiles is not what the short span waits on
DECODE_STAGES = int(os.environ.get("MEMBOUND_DECODE_STAGES", "3"))
EVICT_FIRST = False  # K/V loads with an evict-first L2 hint
PROGRAMS_PER_SM = 2  # pick_config: the grid's target size
# Wide tiles: a 16-bit cache whose head dim pads to 128 streams 128-slot key tiles (64 KB of K + V) over
# WIDE_WARPS warps, one program per SM (three 64 KB stages fill the SM's shared memory). H200
# (decode_attn_variants-nvidia-h200-2026-12-03, session 10): at D = 128 against the 64-slot tiles, batch 1
# 32k 41.7 against 49.9 us (76% of read bandwidth against 64%), batch 4 4k 25.9 / 28.7, batch 16 4k 64.6 / 73.5,
# batch 16 32k 476 / 488; in generate's graph step (decode_short_context-...-session10-wide{0,1}) batch 8 at 256
# slots 8.9 -> 7.3 us, 512 slots 17.5 -> 13.7, batch 1 at 2048 13.4 -> 12.5 (128 slots: 4.3 -> 4.5). At D = 64 the
# 128-slot tile is 32 KB already; 256-slot tiles there (...-session10-wide.json) won at 32k and batch 16 but lost
# 3 us at batch 1, 4k (14.4 against 11.3): not taken; in the H100 1.24B decode step at context 256 (session 30,
# profile_step-...-session30-wide) 1067.5 us at batch 1 against 1053-1059 for 128-slot tiles, 1220.8 at batch 8
# against 1183-1224. MEMBOUND_DECODE_WIDE=0 keeps 64-slot tiles (A/B runs)
WIDE_TILES = os.environ.get("MEMBOUND_DECODE_WIDE", "1") == "1"
# the head dims (padded to a power of two) whose 16-bit cache streams wide tiles: 128 (128 slots); 64 streams
# 256-slot wide tiles when listed (MEMBOUND_DECODE_WIDE_DIMS=64,128, for A/B runs: see the numbers above)
WIDE_HEAD_DIMS = tuple(int(d) for d in os.environ.get("MEMBOUND_DECODE_WIDE_DIMS", "128").split(",") if d.strip())
WIDE_TILE_BYTES = 65536
# WIDE_FROM (MEMBOUND_DECODE_WIDE_FROM overrides it, read at each pick_config; 0 = never): a 16-bit cache at head
# dim 64 whose grid covers at least this many slots (the capacity in generate's graph step) streams 256-slot wide
# tiles too. H200 (decode_attn_variants-...-session10-wide): at batch 1 they won at a 32k cache (25.3 against 28.8
# us; SDPA 22.2) and at batch 16, and lost at 4k (14.4 against 11.3). H100, the 1.24B shape's whole decode step at
# batch 1 after a 32768-token prompt (decode_e2e-nvidia-h100-...-session32-llama-1b-ab-*): 1.473 ms against 1.550
# (75.2 -> 82.6% of read bandwidth; that cache's capacity was 65536, generate's power-of-two bucket for 32896
# positions). Session 33 (H100, 1.24B, the decode step of a 128-token call, wide against 128-slot tiles, one process
# each; decode_e2e-nvidia-h100-...-session33-llama-1b-{wide,narrow}-b*-16384 and -widefrom-*): prompt 16384 (capacity
# 32768) b1 1.307 / 1.373 ms, b8 2.596 / 2.677; prompt 8192 (capacity 16384) b1 1.213 / 1.279; prompt 4096 (capacity
# 8192) b1 1.164 / 1.192, b8 1.591 / 1.602. Session 34 (H100, the same runs at a 4096 capacity, b1;
# decode_e2e-nvidia-h100-...-session34-llama-1b-widefrom-*): prompt 2048 1.187 / 1.209 ms, prompt 3584 1.192 / 1.213.
# The context-256 step (capacity 512) was 1% slower with them (session 30, above); 1024 and 2048 not timed. So the
# threshold is a 4096 capacity: a call that needs more than 2048 positions. The compiled variant changes when the
# cache grows past it; compile_wide_ahead compiles it at the first graph-path launch below it
WIDE_FROM_ENV = "MEMBOUND_DECODE_WIDE_FROM"
WIDE_FROM = 4096
WIDE_WARPS = 8
WIDE_PROGRAMS_PER_SM = 1
# pick_config: the K + V bytes one program streams at least (when the cache has that many), in DECODE_TILE_BYTES
# units (4: four 64-slot tiles at D = 128, two wide ones). At a 512-slot capacity that is one split per row block at
# head dim 64 (two at 128's wide tiles), so a short span stays whole whatever LEAST_TILES says. Session 30 (H100,
# attention_linear's partials, no merge): one-tile chunks cut flash decoding's path at context 256 from 7.9 to 6.5 us
# a layer at the 1.24B shape, 10.8 to 6.5 at 8B (batch 1). With the last-program merge it loses (session 31,
# gpu/session31a.sh, H100, profile_step-...-session31-{base,split,active}: MIN_TILES = LEAST_TILES = DIRECT_TILES = 1):
# attention's path 7.83 -> 9.94 us a layer at 1.24B b1 (step 1052.7 -> 1087.1 us), 6.41 -> 9.82 at b8 (1204.2 ->
# 1251.6), 10.82 -> 11.97 at 8B b1 (5388 -> 5386), 8.83 -> 11.98 at 8B b8 (5670 -> 5808); ACTIVE_ARRIVALS on top
# changes nothing. The merge (partial stores, the arrival atomic, the last program's reads) costs about 3.5 us, more
# than the split saves. Read at import
MIN_TILES = int(os.environ.get("MEMBOUND_DECODE_MIN_TILES", "4"))
# The device split's smallest chunk (a short prefix in a grid sized for a long cache), in DECODE_TILE_BYTES units,
# at most MIN_TILES: MIN_TILES sizes the grid (the programs a full cache needs), LEAST_TILES how finely the filled
# prefix spreads over them. H200 (decode_short_context-nvidia-h200-2026-12-03-session11-least-tiles, in generate's
# graph step, least 4 = the rule before): 2 against 4 at D = 64, batch 1, 1024 slots in a 2048-slot cache 8.4
# against 10.7 us, 2048-in-4096 9.1 / 10.9, 4096-in-8192 10.1 / 11.2, batch 8 1024-in-2048 12.9 / 14.6; at D = 128
# batch 1 512-in-1024 9.5 / 11.1, 1024-in-2048 10.1 / 11.5; nowhere slower beyond 0.1 us; 1 = 2.
# MEMBOUND_DECODE_LEAST_TILES for A/B runs
LEAST_TILES = int(os.environ.get("MEMBOUND_DECODE_LEAST_TILES", "2"))
MERGE_COST = 0.05  # pick_config: the merge's time per partial, in tile times
# A span of at most DIRECT_TILES key tiles (DECODE_TILE_BYTES units, like MIN_TILES) is streamed by one program,
# which writes the result (no partials, no merge). H200, inside a CUDA graph
# (decode_short_context-nvidia-h200-2026-12-03): a direct program costs about
# 2 us + 1.1 us a tile, a split into two chunks about 4.5 us more (partial stores, the arrival atomic, the
# merge's reads) for half the tiles: at D = 128, 384 slots took 12.3 us split against 6.5 for 256 direct.
# Splitting pays from about 8 tiles.
DIRECT_TILES = int(os.environ.get("MEMBOUND_DECODE_DIRECT_TILES", "6"))
# a row block whose span has one chunk with slots: its program writes the result itself, nobody counts in or merges
# (interpreter-checked, not yet timed on a GPU; MEMBOUND_DECODE_DIRECT=0 keeps the partial + merge for A/B runs)
DIRECT_ONE_CHUNK = os.environ.get("MEMBOUND_DECODE_DIRECT", "1") == "1"
# only the programs whose chunk has slots count in on the merge counter (the idle programs of a grid sized for
# the capacity were most of its same-address atomics). Off: the H200 A/B (decode_short_context-nvidia-h200-2026-12-03-
# session10-active-arrivals{0,1}) gained 0.1-0.2 us (1-3%) at most contexts of generate's graph step but lost 3 us
# at D = 128, batch 1, 2048 slots in a 4096-slot cache (13.4 -> 16.3 us, every variant); on the wide tiles
# (...-session11-active{0,1}) D = 128 gained 0.03-0.16 us everywhere (that loss gone), D = 64 moved +-0.2 us;
# MEMBOUND_DECODE_ACTIVE_ARRIVALS=1 for A/B runs (the GPU decode tests pass with it:
# gpu-tests-...-session10-decode-active-arrivals.log)
ACTIVE_ARRIVALS = os.environ.get("MEMBOUND_DECODE_ACTIVE_ARRIVALS", "0") == "1"
# "1": the chunks' first K/V tiles loaded before the PDL wait where the compiler says the past slots are static
# (cached_attention's static_past); read at each launch. Off: on the H200 it did not pay (1.24B b1 decode step
# 0.905 against 0.897 ms, decode_e2e-nvidia-h200-2026-12-03-session14-early-kv-fused)
EARLY_KV_ENV = "MEMBOUND_DECODE_EARLY_KV"
# A Dv split: a short prefix gives one program per (batch row, kv head, row block), most SMs idle (batch 8 at 8 kv
# heads: 64 programs, each streaming its K and V alone, bound by the bytes one SM keeps in flight). Splitting the
# output's columns over up to DV_SPLIT programs (each reads all of K, its columns of V: K's repeat reads come from L2)
# puts more SMs on the bytes without a merge; taken while the grid still fits one wave (pick_config).
# H200 (decode_short_context-dv-split-...-session16, generate's graph path, us per call, off -> 2 column blocks): at
# D = 128 (wide tiles) batch 1 it gains at every context (256 slots 6.17 -> 5.83, 512 9.58 -> 8.01, 4096 14.68 ->
# 13.71), batch 8 up to 1024 slots (256 7.14 -> 6.77, 512 13.54 -> 9.92: no merge) but loses past (2048 25.7 -> 28.2,
# 4096 41.2 -> 52.0: one program then streams the whole prefix); at D = 64 it loses nearly everywhere (batch 8, 4
# blocks: 256 slots 5.30 -> 8.62). In the decode step (decode_e2e-...-session16-dv-split) 8B batch 8 4.374 -> 4.364 ms
# (0.2%), 1.24B batch 1 (D = 64) 0.889 -> 0.914: off by default.
# MEMBOUND_DECODE_DV_SPLIT (the most column blocks), read at each pick_config (A/B runs); 1 = off. DV_SPLIT, when
# set, overrides it (experiments)
DV_SPLIT_ENV = "MEMBOUND_DECODE_DV_SPLIT"
DV_SPLIT: Optional[int] = None
# The next weight asked of L2 while attention runs (``prefetch=``: the compiler's launch hint, the parameter weight
# of the linear that reads this attention's output, i.e. the o projection). A decode step's attention is latency
# bound (a few MB of K/V over 6-9 us on the H200) while HBM could stream; its programs first ask L2 for up to
# MEMBOUND_DECODE_PREFETCH_MB of that weight (cp.async.bulk.prefetch.L2, split evenly over the grid, issued before
# the PDL wait: no kernel writes a parameter), so the o projection's GEMV then reads from L2. 0 = off; read at each
# launch (a CUDA graph keeps what it captured). Off: on the H200 it lost (decode_e2e-...-session17-prefetch-{0,8,64}mb,
# decode step ms at 0 / 8 / 64 MB: 1.24B b1 0.878 / 0.922 / 0.923, b8 0.961 / 0.990 / 0.956; 8B b1 3.904 / 4.063 /
# 4.319, b8 4.289 / 4.285 / 4.348), as the GEMVs' own L2 prefetch did (_launch.L2_PREFETCH_TOTAL): asking L2 for
# weights ahead slows the kernels that stream, even behind a latency-bound attention
PREFETCH_ENV = "MEMBOUND_DECODE_PREFETCH_MB"
PREFETCH_PIECE = 16384  # bytes per prefetch instruction


# T and N_SPLITS grow with the cache's capacity: not specialised on (Triton would key a new compile on a
# value turning divisible by 16), so a cache that grows to its next bucket reuses the compiled kernel
@triton.jit(do_not_specialize=["T", "N_SPLITS"])
def _flash_decoding_split(
    q_ptr, k_ptr, v_ptr, pos_ptr, o_ptr, part_ptr, lse_ptr, lock_ptr, slope_ptr, sink_ptr,
    HKV, G, S, T, D, DV, CHUNK_MIN, N_QBLOCKS, N_SPLITS, qk_scale, WINDOW, softcap, DIRECT_SPAN,
    sqb, sqh, sqs, sqd, skb, skh, skt, skd, svb, svh, svt, svd, spb, sps, sob, soh, sos, sod,
    BLOCK_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    ONE_SPLIT: tl.constexpr, INPUT_PRECISION: tl.constexpr, USE_PDL: tl.constexpr,
    HAS_WINDOW: tl.constexpr, HAS_SOFTCAP: tl.constexpr, RING: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
    MERGE_ROWS: tl.constexpr, HAS_ALIBI: tl.constexpr, KV_EVICT: tl.constexpr, DIRECT: tl.constexpr = True,
    ACTIVE_ARRIVALS: tl.constexpr = False, EARLY_KV: tl.constexpr = False,
    pf_ptr=None, pf_elems=0, PREFETCH: tl.constexpr = False, PF_PIECE: tl.constexpr = 8192,
    HAS_SINKS: tl.constexpr = False, CHUNKED: tl.constexpr = False,
):
    tl.static_assert(BLOCK_Q >= 16 and BLOCK_T >= 16 and BLOCK_D >= 16 and BLOCK_DV >= 16,
                     "tl.dot needs 16x16 tiles: pad rows, slots and head dims to 16")
    if PREFETCH:
        # the next weight's first pf_elems elements asked of L2, an even share a program (idle ones too), in pieces
        # of PF_PIECE elements: a parameter (no kernel writes it), so before the PDL wait
        n_prog = tl.num_programs(0) * tl.num_programs(1) * tl.num_programs(2)
        flat = tl.program_id(0) + tl.num_programs(0) * (tl.program_id(1) + tl.num_programs(1) * tl.program_id(2))
        share = tl.cdiv(tl.cdiv(pf_elems, n_prog), 16) * 16  # (whole 16-element steps: 16-byte aligned for 8 bits up)
        lo_e = flat * share
        hi_e = tl.minimum(lo_e + share, pf_elems)
        ELEM: tl.constexpr = pf_ptr.dtype.element_ty.primitive_bitwidth // 8
        for e0 in range(lo_e, hi_e, PF_PIECE):
            l2_prefetch(pf_ptr + e0, (tl.minimum(PF_PIECE, hi_e - e0) * ELEM) // 16 * 16)
    tl.static_assert(not (EARLY_KV and RING), "EARLY_KV: a ring's new slot may be any slot")
    if not EARLY_KV:
        pdl_enter(USE_PDL)  # programmatic dependent launch: earlier kernels' writes are visible after this
    pid_split = tl.program_id(0)
    pid_row = tl.program_id(1)
    # axis 2: which BLOCK_DV columns of the output (a Dv split: each program reads all of K, its columns of V);
    # the partials and the arrival counter are per (row block, column block)
    pid_dv = tl.program_id(2)
    prow = pid_row * tl.num_programs(2) + pid_dv
    # which (batch, kv head, block of query rows) this program serves
    qb = pid_row % N_QBLOCKS
    # 64-bit scalars for every base offset (a head's cache passes 2**31 elements at T * D >= 2**31);
    # the per-tile vector offsets stay 32-bit
    kvh = ((pid_row // N_QBLOCKS) % HKV).to(tl.int64)
    b = (pid_row // (N_QBLOCKS * HKV)).to(tl.int64)
    # rows are (group member g, new token s): query head kvh * G + g shares this kv head
    rq = tl.arange(0, BLOCK_Q)
    rows = qb * BLOCK_Q + rq
    row_ok = rows < G * S
    s = rows % S
    h = kvh * G + rows // S
    ds = tl.arange(0, BLOCK_D)
    dv_local = tl.arange(0, BLOCK_DV)
    dvs = pid_dv * BLOCK_DV + dv_local
    d_ok = ds < D
    dv_ok = dvs < DV
    # each row's position, read on the device: row r sees slots 0..pos[r]; padded rows see nothing.
    # q is loaded beside it (not after the branch on it): the two loads are one round trip, not two
    # (EARLY_KV: the positions are the step's input, read before the PDL wait, q after it)
    pos = tl.load(pos_ptr + b * spb + s * sps, mask=row_ok, other=-1)
    if not EARLY_KV:
        q = tl.load(q_ptr + b * sqb + h[:, None] * sqh + s[:, None] * sqs + ds[None, :] * sqd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    # the slots our rows see: the filled prefix up to the largest position among them, and with a
    # sliding window only the window (from the oldest slot any row still sees; a ring holds only the
    # window, so every slot may be seen)
    filled = tl.minimum(tl.max(pos, axis=0) + 1, T)
    lo = _window_start(pos, row_ok, WINDOW, HAS_WINDOW and not RING, CHUNKED)
    # that span is split evenly over the N_SPLITS programs of this row block, on the device: the grid need
    # not know the filled length (a CUDA graph sized for the capacity splits a short prefix as finely as a
    # long one), never into chunks under CHUNK_MIN slots (the tail programs then have nothing to do), and a
    # span of at most DIRECT_SPAN slots not at all (one program streams it: cheaper than a merge)
    chunk = _chunk(filled - lo, N_SPLITS, CHUNK_MIN, DIRECT_SPAN, BLOCK_T)
    chunk_start = lo + pid_split * chunk
    chunk_end = tl.minimum(chunk_start + chunk, filled)
    # chunks with slots (the same rule in every program of the row block): with one, its program writes the result
    # directly and nobody counts in or merges (a short prefix in a CUDA graph sized for the capacity: the store of
    # a partial, the arrival atomics of every program and the merge's reads were a chain of round trips per step)
    n_active = tl.cdiv(filled - lo, chunk)
    if DIRECT:
        direct = n_active == 1
    else:
        direct = n_active < 0  # never: the partial and the merge (A/B runs)
    k_base = k_ptr + b * skb + kvh * skh
    v_base = v_ptr + b * svb + kvh * svh
    tn = tl.arange(0, BLOCK_T)
    t_first = chunk_start
    if EARLY_KV:
        # the chunk's first K and V tiles, loaded before the PDL wait: the slots below the step's first new
        # position were written by earlier steps (the launcher's static_past: the caches come from this step's
        # cache writes at these positions, over the model's state), the new ones only after the wait
        old = tl.min(tl.where(row_ok, pos, T), axis=0)
        ts = chunk_start + tn
        pre = (ts < chunk_end) & (ts < old)
        t64 = tl.full((), chunk_start, tl.int64)
        k_pre = _k_tile(k_base, t64, tn, ds, skt, skd, pre, d_ok, KV_EVICT)
        v_pre = _v_tile(v_base, t64, tn, dvs, svt, svd, pre, dv_ok, KV_EVICT)
        pdl_enter(USE_PDL)
        q = tl.load(q_ptr + b * sqb + h[:, None] * sqh + s[:, None] * sqs + ds[None, :] * sqd,
                    mask=row_ok[:, None] & d_ok[None, :], other=0.0)
    if chunk_start < chunk_end:
        if HAS_ALIBI:  # each row's head slope, in log2 units like the scores
            slope = tl.load(slope_ptr + h, mask=row_ok, other=0.0) * _LOG2E
        else:
            slope = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        m_i = tl.full((BLOCK_Q,), float("-inf"), dtype=tl.float32)
        l_i = tl.zeros((BLOCK_Q,), dtype=tl.float32)
        if HAS_SINKS:
            # each row's head sink logit (log2 units) as a key whose value is 0, in the first chunk only (a split's
            # partials then carry it once into the merge; the first chunk always has slots for a real row)
            m_i = tl.load(sink_ptr + h, mask=row_ok & (pid_split + 0 * rq == 0), other=float("-inf")).to(
                tl.float32) * _LOG2E
            l_i = tl.where(m_i > float("-inf"), 1.0, 0.0)
        acc = tl.zeros((BLOCK_Q, BLOCK_DV), dtype=tl.float32)
        if EARLY_KV:
            # the first tile: the preloaded slots, and this step's new ones (if any) read now
            ts = chunk_start + tn
            t_ok = ts < chunk_end
            new = t_ok & (ts >= old)
            t64 = tl.full((), chunk_start, tl.int64)
            k_t = tl.where(new[None, :], _k_tile(k_base, t64, tn, ds, skt, skd, new, d_ok, ""), k_pre)
            v = tl.where(new[:, None], _v_tile(v_base, t64, tn, dvs, svt, svd, new, dv_ok, ""), v_pre)
            scores = _tile_scores(q, k_t, ts, t_ok, pos, slope, qk_scale, softcap, T, WINDOW, HAS_SOFTCAP, RING,
                                  HAS_WINDOW, HAS_ALIBI, INPUT_PRECISION, CHUNKED)
            m_i, l_i, acc = _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION)
            t_first = chunk_start + BLOCK_T
        for t0 in range(t_first, chunk_end, BLOCK_T):
            ts = t0 + tn
            t_ok = ts < chunk_end
            t64 = tl.full((), t0, tl.int64)  # this tile's first slot, as a 64-bit offset
            # one K tile, loaded once for every query row of the kv group: K^T [BLOCK_D, BLOCK_T]
            # (KV_EVICT "evict_first": the cache is read once per step, so it need not stay in L2)
            k_t = _k_tile(k_base, t64, tn, ds, skt, skd, t_ok, d_ok, KV_EVICT)
            scores = _tile_scores(q, k_t, ts, t_ok, pos, slope, qk_scale, softcap, T, WINDOW, HAS_SOFTCAP, RING,
                                  HAS_WINDOW, HAS_ALIBI, INPUT_PRECISION, CHUNKED)
            v = _v_tile(v_base, t64, tn, dvs, svt, svd, t_ok, dv_ok, KV_EVICT)
            m_i, l_i, acc = _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION)
        # this chunk's rows, normalised: o = acc / l with its log-sum-exp lse = m + log2(l) (-inf for a
        # row that saw no slot here: weight 0 in the merge)
        o = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]
        if N_SPLITS == 1 or direct:
            # the whole span was ours: the result, written directly
            tl.store(o_ptr + b * sob + h[:, None] * soh + s[:, None] * sos + dvs[None, :] * sod,
                     o.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & dv_ok[None, :])
        elif not ONE_SPLIT:
            # partials are [row programs, N_SPLITS, BLOCK_Q(, BLOCK_DV)] (padded rows are not stored:
            # with G = 4 they would be 3/4 of the partial's bytes)
            slot = (prow * N_SPLITS + pid_split) * BLOCK_Q + rq
            lse = tl.where(l_i > 0.0, m_i + tl.log2(tl.where(l_i > 0.0, l_i, 1.0)), float("-inf"))
            tl.store(lse_ptr + slot, lse, mask=row_ok)
            tl.store(part_ptr + slot[:, None] * BLOCK_DV + dv_local[None, :], o,
                     mask=row_ok[:, None] & dv_ok[None, :])
    if not ONE_SPLIT:
        if N_SPLITS > 1 and not direct:
            # the last program to count in merges the partials of the chunks that had slots (the same chunk rule
            # gives their number). ACTIVE_ARRIVALS: only those programs count in (the idle ones of a grid sized for
            # the capacity exit without an atomic); else every program of the row block, idle ones too
            if ACTIVE_ARRIVALS:
                arrivals = tl.maximum(n_active, 1)
                counts_in = pid_split < arrivals
            else:
                arrivals = N_SPLITS
                counts_in = True
            if counts_in:
                if arrive_last(lock_ptr, prow, arrivals):
                    _merge_partials(o_ptr, part_ptr, lse_ptr, prow, pid_dv * BLOCK_DV, n_active, N_SPLITS, qb, kvh,
                                    G, S, DV, b,
                                    sob, soh, sos, sod, BLOCK_Q, BLOCK_DV, SPLIT_BLOCK, MERGE_ROWS)
                    reset_counter(lock_ptr, prow)


@triton.jit
def _k_tile(k_base, t0, tn, ds, skt, skd, t_mask, d_ok, EVICT: tl.constexpr):
    """K^T ``[BLOCK_D, BLOCK_T]`` of the slots ``t0 + tn`` where ``t_mask`` (zeros elsewhere); ``t0`` a 64-bit
    offset. Loaded once for every query row of the kv group."""
    return tl.load(k_base + t0 * skt + tn[None, :] * skt + ds[:, None] * skd, mask=t_mask[None, :] & d_ok[:, None],
                   other=0.0, eviction_policy=EVICT)


@triton.jit
def _v_tile(v_base, t0, tn, dvs, svt, svd, t_mask, dv_ok, EVICT: tl.constexpr):
    """V ``[BLOCK_T, BLOCK_DV]`` of the slots ``t0 + tn`` where ``t_mask`` (zeros elsewhere)."""
    return tl.load(v_base + t0 * svt + tn[:, None] * svt + dvs[None, :] * svd, mask=t_mask[:, None] & dv_ok[None, :],
                   other=0.0, eviction_policy=EVICT)


@triton.jit
def _tile_scores(q, k_t, ts, t_ok, pos, slope, qk_scale, softcap, T, WINDOW, HAS_SOFTCAP: tl.constexpr,
                 RING: tl.constexpr, HAS_WINDOW: tl.constexpr, HAS_ALIBI: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                 CHUNKED: tl.constexpr):
    """The rows' scores against one K tile (slots ``ts``, ``t_ok`` within the chunk), in log2 units: the cap,
    the ALiBi bias, and -inf where a slot is not visible (causal, ring, window or attention chunk)."""
    scores = tl.dot(q, k_t, input_precision=INPUT_PRECISION) * qk_scale  # [BLOCK_Q, BLOCK_T], log2 units
    if HAS_SOFTCAP:
        scores = _softcap_log2(scores, softcap)
    if RING:
        # slot t of a ring of T slots holds the latest position j <= p with j = t (mod T); the
        # rows share one position (ring steps have one new token), so this is one vector
        p_top = tl.max(pos, axis=0)
        key_pos = p_top - (p_top - ts + T) % T
        visible = (key_pos[None, :] >= 0) & t_ok[None, :]
    else:
        key_pos = ts
        visible = (ts[None, :] <= pos[:, None]) & t_ok[None, :]
    if HAS_WINDOW:
        visible = visible & (key_pos[None, :] >= first_key(pos, WINDOW, CHUNKED)[:, None])
    if HAS_ALIBI:  # ALiBi: slope * (key position - query position), after the cap, before the mask
        scores += slope[:, None] * (key_pos[None, :] - pos[:, None]).to(tl.float32)
    return tl.where(visible, scores, float("-inf"))


@triton.jit
def _chunk(span, N_SPLITS, CHUNK_MIN, DIRECT_SPAN, BLOCK_T: tl.constexpr):
    """Slots per program: ``span`` over ``N_SPLITS`` programs, in whole key tiles, at least ``CHUNK_MIN``; the
    whole span in one chunk when it is at most ``DIRECT_SPAN`` slots."""
    chunk = tl.maximum(tl.cdiv(tl.cdiv(span, N_SPLITS), BLOCK_T) * BLOCK_T, CHUNK_MIN)
    return tl.where(span <= DIRECT_SPAN, tl.maximum(tl.cdiv(span, BLOCK_T) * BLOCK_T, chunk), chunk)


@triton.jit
def _window_start(pos, row_ok, WINDOW, HAS_WINDOW: tl.constexpr, CHUNKED: tl.constexpr = False):
    """The oldest slot any row still sees: ``min(pos) - WINDOW + 1``, or with ``CHUNKED`` the start of the chunk
    of ``WINDOW`` positions that ``min(pos)`` is in (0 without either)."""
    if HAS_WINDOW:
        oldest = first_key(tl.min(tl.where(row_ok, pos, 2147483647), axis=0), WINDOW, CHUNKED)
        return tl.maximum(oldest, 0)
    else:
        return 0


@triton.jit
def first_key(pos, WINDOW, CHUNKED: tl.constexpr):
    """The first key a causal query at ``pos`` sees: ``pos - WINDOW + 1`` in a sliding window of ``WINDOW``
    positions (negative near the start), ``pos - pos % WINDOW`` in chunks of ``WINDOW`` positions (Llama 4). The
    kernels take a chunk size in their ``WINDOW`` argument, ``CHUNKED`` saying which it is."""
    if CHUNKED:
        return pos - pos % WINDOW
    else:
        return pos - WINDOW + 1


@triton.jit
def _online_softmax(scores, m_i, l_i, acc, v, INPUT_PRECISION: tl.constexpr):
    """One key tile of an online softmax (scores in log2 units, -inf where masked): the running max, sum and
    ``acc += p @ v`` rescaled to the new max. A row with nothing visible yet keeps m = -inf, so it shifts by 0
    instead (no NaN). Shared by flash-decoding and the prefill flash kernel."""
    m_new = tl.maximum(m_i, tl.max(scores, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_safe)
    p = tl.exp2(scores - m_safe[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    # the rescaled accumulator goes into the dot (on Hopper the wgmma accumulates in place, no separate add)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=INPUT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _softcap_log2(scores, softcap):
    """``c * tanh(s / c)`` on scores in log2 units (s = x * log2(e)): the cap applies to x, in e units."""
    x = scores / (softcap * _LOG2E)
    # tanh(x) = 1 - 2 / (exp(2x) + 1): exact at both ends (exp overflow gives 1, underflow -1)
    t = 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)
    return t * (softcap * _LOG2E)


@triton.jit
def _merge_partials(o_ptr, part_ptr, lse_ptr, prow, dv0, n_active, N_SPLITS, qb, kvh, G, S, DV, b, sob, soh, sos, sod,
                    BLOCK_Q: tl.constexpr, BLOCK_DV: tl.constexpr, SPLIT_BLOCK: tl.constexpr,
                    MERGE_ROWS: tl.constexpr):
    """Merge the partials ``0 .. n_active - 1`` of one row block (``prow``: with a Dv split, of its column block,
    whose first output column is ``dv0``): ``out = sum_s 2^(lse_s - M) o_s / sum_s 2^(lse_s - M)``, M the largest
    lse; store the output.

    ``MERGE_ROWS`` query rows at once, as one flat axis of ``MERGE_ROWS * BLOCK_DV`` columns (column c is
    row c // BLOCK_DV, value c % BLOCK_DV; the lse of its row is read at every column of the row, one
    address per warp), ``SPLIT_BLOCK`` partials per load: lane i folds in partials i, i + SPLIT_BLOCK, ...
    (online, rescaled to the running max), then the lanes fold together. The G rows of a decode step
    are thus ``cdiv(G, MERGE_ROWS) * cdiv(splits, SPLIT_BLOCK)`` wide loads from L2, not one per row
    and split.
    """
    n_rows = tl.minimum(G * S - qb * BLOCK_Q, BLOCK_Q)
    lanes = tl.arange(0, SPLIT_BLOCK)
    cols = tl.arange(0, MERGE_ROWS * BLOCK_DV)
    rc = cols // BLOCK_DV
    dv = cols % BLOCK_DV
    for r0 in range(0, n_rows, MERGE_ROWS):
        r_ok = r0 + rc < n_rows
        m_run = tl.full((MERGE_ROWS * BLOCK_DV,), float("-inf"), dtype=tl.float32)
        l_run = tl.zeros((MERGE_ROWS * BLOCK_DV,), dtype=tl.float32)
        o_run = tl.zeros((MERGE_ROWS * BLOCK_DV,), dtype=tl.float32)
        for sp0 in range(0, n_active, SPLIT_BLOCK):
            sp = sp0 + lanes
            ok = (sp < n_active)[:, None] & r_ok[None, :]
            base = (prow * N_SPLITS + sp) * BLOCK_Q + r0  # [SPLIT_BLOCK]: row r0 of each partial
            # .cg: from L2, where the other programs' stores are (never a stale L1 line). Columns past DV
            # were never stored: their garbage stays in their own columns, which are not stored either
            lse = tl.load(lse_ptr + base[:, None] + rc[None, :], mask=ok, other=float("-inf"), cache_modifier=".cg")
            o_s = tl.load(part_ptr + base[:, None] * BLOCK_DV + cols[None, :], mask=ok, other=0.0,
                          cache_modifier=".cg")
            # rescale both sides to the common max; a chunk the row could not see has lse = -inf, weight 0
            m_new = tl.maximum(m_run, tl.max(lse, axis=0))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            alpha = tl.exp2(m_run - m_safe)
            w = tl.exp2(lse - m_safe[None, :])
            l_run = l_run * alpha + tl.sum(w, axis=0)
            o_run = o_run * alpha + tl.sum(w * o_s, axis=0)
            m_run = m_new
        o = o_run / tl.where(l_run > 0.0, l_run, 1.0)
        row = qb * BLOCK_Q + r0 + rc
        h = kvh * G + row // S
        s = row % S
        tl.store(o_ptr + b * sob + h * soh + s * sos + (dv0 + dv) * sod, o.to(o_ptr.dtype.element_ty),
                 mask=r_ok & (dv0 + dv < DV))


@dataclass(frozen=True)
class DecodeConfig:
    """Tiles and the split of one flash-decoding launch (see :func:`pick_config`).

    The grid has ``cdiv(length, chunk)`` programs per row block; on the device they split the slots the
    rows see evenly, into chunks of at least ``min_chunk`` slots (0: exactly ``chunk``, the split fixed
    on the host)."""

    block_q: int
    block_t: int
    chunk: int  # slots per program at the length the grid covers; a multiple of block_t
    num_warps: int = 4
    num_stages: int = 2
    evict_first: bool = False  # K/V loads hint L2 to evict their lines first (the cache is read once a step)
    min_chunk: int = 0  # the device split's smallest chunk, a multiple of block_t; 0 = chunk
    direct_span: int = 0  # a span of at most this many slots is one chunk (one program, no merge); 0 = none
    dv_split: int = 1  # the output's columns over this many programs (each reads all of K, its columns of V)

    @property
    def least_chunk(self) -> int:
        """The device split's smallest chunk as the kernel takes it (``CHUNK_MIN``): ``min_chunk``, at most
        ``chunk``; ``chunk`` itself when ``min_chunk`` is 0."""
        return min(self.min_chunk, self.chunk) if self.min_chunk else self.chunk


def pick_config(rows: int, groups: int, length: int, known_length: bool, head_dim: int, dtype: torch.dtype,
                device: torch.device, sms: Optional[int] = None) -> DecodeConfig:
    """Rows padded to a tensor-core tile (``ROWS_PER_WARP`` per warp), the slots split by
    :func:`_best_split` (whole waves of about ``PROGRAMS_PER_SM`` programs per SM, ``WIDE_PROGRAMS_PER_SM``
    for wide tiles, each streaming at least ``MIN_TILES`` tiles' bytes).

    ``rows`` = query rows per kv head (G * S); ``groups`` = B * Hkv; ``length`` = the slots the grid
    must cover. The split trades three costs: too few programs leave SMs idle (and too few bytes in
    flight to hide HBM latency); one tile per program pays a program's fixed work (q load, partial
    store, arrival atomic) per 32 KB of K/V and leaves the software pipeline nothing to overlap; every
    split adds a partial the merge must read; and a grid a little past a whole number of waves leaves
    most SMs idle in its last wave. When the filled length is unknown (``known_length=False``: length is
    the capacity) the grid is sized for a full cache and the device splits the filled prefix over it,
    in chunks of at least ``LEAST_TILES`` tiles, so a short prefix in a long cache still spreads out; the
    compile-time choices (tiles, warps, stages) then do not depend on the capacity.
    """
    block_q = max(16, next_pow2(min(rows, 64)))
    if dtype != torch.float32:  # (fp32 takes the FMA dot, where padded rows are work, not a free tensor-core tile)
        block_q = max(block_q, ROWS_PER_WARP * DECODE_WARPS)
    block_t = tile_slots(head_dim, dtype, length)
    wide = _wide(head_dim, dtype, length)
    warps, per_sm = (WIDE_WARPS, WIDE_PROGRAMS_PER_SM) if wide else (DECODE_WARPS, PROGRAMS_PER_SM)
    min_tiles = max(1, _in_tiles(MIN_TILES, head_dim, dtype, length))
    least_tiles = max(1, min(_in_tiles(LEAST_TILES, head_dim, dtype, length), min_tiles))
    programs = groups * cdiv(rows, block_q)
    tiles = cdiv(length, block_t)
    slots = per_sm * (sms or sm_count(device))
    dv_split, most = 1, DV_SPLIT if DV_SPLIT is not None else int(os.environ.get(DV_SPLIT_ENV, "1") or "1")
    while (dv_split * 2 <= most and next_pow2(head_dim) // (dv_split * 2) >= 16
           and programs * dv_split * 2 <= slots):
        dv_split *= 2
    splits = _best_split(programs * dv_split, tiles, slots, min_tiles)
    chunk = cdiv(tiles, splits) * block_t
    # K/V tiles arrive by cp.async into a ring of num_stages buffers, num_stages - 1 of them in flight
    # (32 KB each at bf16, D = 128, 64 slots); a program with fewer tiles than that uses 2
    # (an unknown length keeps DECODE_STAGES whatever the capacity: the compiled variant must not change
    # as the cache grows)
    stages = DECODE_STAGES if chunk >= (DECODE_STAGES - 1) * block_t or not known_length else 2
    return DecodeConfig(block_q, block_t, chunk, num_warps=warps, num_stages=stages, evict_first=EVICT_FIRST,
                        min_chunk=least_tiles * block_t,
                        direct_span=direct_tiles(head_dim, dtype, length) * block_t, dv_split=dv_split)


def serial_tiles(rows: int, groups: int, filled: int, capacity: int, head_dim: int, dtype: torch.dtype,
                 sms: int) -> tuple[int, bool]:
    """``(tiles, merged)`` of a decode step's launch as ``generate``'s CUDA graph runs it (no known length: the
    grid sized for ``capacity``, the device splitting the ``filled`` prefix): the key tiles the busiest program
    streams one after another (this config's tiles: a wide tile is one round trip too), and whether the row
    block's partials are merged (more than one chunk); :func:`direct_tiles` is the longest chain without a merge.
    The kernel's own chunk rule (``_chunk``) on the host; the step model's latency term (``cost/step.py``)."""
    cfg = pick_config(rows, groups, capacity, False, head_dim, dtype, torch.device("cpu"), sms=sms)
    n_splits = cdiv(capacity, cfg.chunk)
    span = max(1, min(filled, capacity))
    chunk = max(cdiv(cdiv(span, n_splits), cfg.block_t) * cfg.block_t, cfg.least_chunk)
    if span <= cfg.direct_span:
        chunk = max(cdiv(span, cfg.block_t) * cfg.block_t, chunk)
    return cdiv(min(chunk, span), cfg.block_t), cdiv(span, chunk) > 1


def direct_tiles(head_dim: int, dtype: torch.dtype, length: Optional[int] = None) -> int:
    """``DIRECT_TILES`` in the tiles ``pick_config`` streams at this head dim and dtype (and ``length``, the slots
    the grid covers: see ``WIDE_FROM``): the longest span one program streams alone, in whole tiles."""
    return _in_tiles(DIRECT_TILES, head_dim, dtype, length)


def _in_tiles(narrow: int, head_dim: int, dtype: torch.dtype, length: Optional[int] = None) -> int:
    """``narrow`` tiles of ``DECODE_TILE_BYTES`` (the unit of ``MIN_TILES`` and ``DIRECT_TILES``) as whole tiles of
    the size this head dim and dtype stream (a wide tile holds two)."""
    return cdiv(narrow * _slots(head_dim, dtype, DECODE_TILE_BYTES), tile_slots(head_dim, dtype, length))


def tile_slots(head_dim: int, dtype: torch.dtype, length: Optional[int] = None) -> int:
    """Key slots per tile: ``DECODE_TILE_BYTES`` of K and V (a power of two, 16 to 128 slots), so a tile moves
    the same bytes at every head dim; ``WIDE_TILE_BYTES`` for a 16-bit cache at a head dim that pads to one of
    ``WIDE_HEAD_DIMS`` (``WIDE_TILES``: 128 slots at 128, 256 at 64), or at 64 over a grid of at least
    ``WIDE_FROM`` slots (``length``; ``MEMBOUND_DECODE_WIDE_FROM`` overrides it)."""
    if _wide(head_dim, dtype, length):
        return _slots(head_dim, dtype, WIDE_TILE_BYTES, most=256)
    return _slots(head_dim, dtype, DECODE_TILE_BYTES)


def _slots(head_dim: int, dtype: torch.dtype, tile_bytes: int, most: int = 128) -> int:
    per_slot = 2 * next_pow2(head_dim) * dtype.itemsize
    fit = max(1, tile_bytes // per_slot)
    return max(16, min(most, 1 << (fit.bit_length() - 1)))


def _wide(head_dim: int, dtype: torch.dtype, length: Optional[int] = None) -> bool:
    """Whether the cache streams wide tiles (see ``WIDE_TILES``): 16-bit, head dim padded to one of
    ``WIDE_HEAD_DIMS`` (128), or to 64 with a grid over at least ``WIDE_FROM`` slots (``MEMBOUND_DECODE_WIDE_FROM``
    overrides it; 0: never)."""
    padded = next_pow2(head_dim)
    if not WIDE_TILES or dtype.itemsize != 2:
        return False
    if padded in WIDE_HEAD_DIMS:
        return True
    start = int(os.environ.get(WIDE_FROM_ENV, "") or WIDE_FROM)
    return padded == 64 and start > 0 and length is not None and length >= start


def _best_split(programs: int, tiles: int, slots: int, min_tiles: int = MIN_TILES) -> int:
    """The split count with the least modelled time: ``waves * (tiles per program + 1)`` (the + 1: a
    program's fixed work, about one tile's time) plus ``MERGE_COST`` tiles per partial merged; waves =
    programs / ``slots`` (programs resident at once), rounded up, so a grid that spills a few programs
    into another wave pays for that wave. At most ``tiles / min_tiles`` splits."""
    def cost(n: int) -> float:
        return cdiv(programs * n, slots) * (cdiv(tiles, n) + 1) + (MERGE_COST * n if n > 1 else 0.0)

    return min(range(1, max(1, tiles // min_tiles) + 1), key=lambda n: (cost(n), n))


def merge_tile(rows: int, block_q: int, block_dv: int, num_warps: int) -> tuple[int, int]:
    """The merge's ``[split_block, merge_rows * block_dv]`` tile: ``MERGE_REGS`` fp32 values a thread, first
    as many partials as fit (at most ``MERGE_LANES``), then as many query rows (at most a block's).
    Powers of two; they depend on the warps and head dim only, never on the split count or capacity."""
    budget = MERGE_REGS * 32 * num_warps
    split_block = max(2, min(MERGE_LANES, _pow2_floor(budget // block_dv)))
    merge_rows = max(1, min(next_pow2(min(rows, block_q)), _pow2_floor(budget // (split_block * block_dv))))
    return split_block, merge_rows


def _pow2_floor(n: int) -> int:
    return 1 << (max(1, n).bit_length() - 1)


def cached_attention_bytes(b: int, hq: int, hkv: int, s: int, length: int, d: int, dv: int,
                           dtype: torch.dtype) -> int:
    """Bytes the kernel must move (the cost-model hint): K and V of ``length`` slots at Hkv heads, q, out."""
    e = dtype.itemsize
    return e * (b * hkv * length * (d + dv) + b * hq * s * (d + dv))


def cached_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     *operands: torch.Tensor, out: Optional[torch.Tensor] = None, scale: Optional[float] = None,
                     window: Optional[int] = None, softcap: Optional[float] = None,
                     max_len: Optional[int] = None, config: Optional[DecodeConfig] = None,
                     alibi: Optional[tuple[float, ...]] = None, static_past: bool = False,
                     prefetch: Optional[torch.Tensor] = None, sinks: bool = False,
                     chunk: Optional[int] = None) -> torch.Tensor:
    """The IR op ``cached_attention`` (flash-decoding); result ``[B, Hq, S, Dv]`` in q's dtype. Operands after the
    positions: ``k_new, v_new`` (a ring cache), then the ``[Hq]`` sink logits with ``sinks=True``.

    ``prefetch``: a parameter weight the next kernels read (the compiler's launch hint: the o projection's); the
    programs ask L2 for its first ``MEMBOUND_DECODE_PREFETCH_MB`` before their PDL wait (:data:`PREFETCH_ENV`).

    ``static_past=True`` promises that no kernel of this launch's chain wrote ``positions`` or the cache slots
    below ``min(positions)`` (the step's input positions; caches written this step only at them: the
    compiler's launch hint). The chunks' first K/V tiles are then loaded before the PDL wait (not for a ring).

    ``max_len``: optional upper bound of ``max(positions) + 1`` known on the host (the runtime's
    cache-length bucket); slots at or past it are never read, so it must not be too small. Without it
    the grid covers the capacity T and idle programs exit at once. ``config`` overrides the heuristic.
    With ``window`` only the last ``window`` slots before each position are read: programs whose
    chunk lies wholly before the window exit at once, the merge starts at the window's first chunk. ``chunk``
    (Llama 4's chunked layers) reads the slots of each position's chunk the same way.

    With ``k_new, v_new`` the caches are rings (position p in slot p mod capacity, see the IR op): one
    new token reads every slot of the ring, several new tokens (a prefill from position 0) attend over
    ``k_new, v_new`` with the flash kernel.
    """
    k_new, v_new, sink = cached_extras(operands, sinks)
    _check(q, k, v, positions, k_new, v_new)
    check_sinks("cached_attention", sink, q)
    ring = k_new is not None
    ref_args = dict(sinks=True) if sink is not None else {}  # (the reference's)
    extra = [x for x in (k_new, v_new, sink) if x is not None]
    bsz, hq, s, d = q.shape
    hkv, cap, dv = k.shape[1], k.shape[2], v.shape[3]
    if chunk is not None and (window is not None or ring):
        raise ValueError("cached_attention: chunk does not combine with a window or a ring cache (the IR op's rule)")
    if chunk is not None:
        ref_args["chunk"] = chunk
    reason = unsupported_device(q, k, v, positions, *extra) or unsupported_dtype("cached_attention", q)
    if reason is None and max(d, dv) > MAX_HEAD_DIM:
        reason = f"head dim {max(d, dv)} > {MAX_HEAD_DIM}"
    if reason is not None or q.numel() == 0:
        ref = get_op("cached_attention").reference(q, k, v, positions, *extra, scale=scale, window=window,
                                                   softcap=softcap, alibi=alibi, **ref_args)
        return fallback("cached_attention", reason or "empty query", ref, out)

    y = check_out("cached_attention", out, (bsz, hq, s, dv), q.dtype, q.device)
    g = hq // hkv
    rows = g * s
    if ring and s > 1:
        # a prefill over a ring: the new keys are the sequence from position 0 (the ring may already
        # have overwritten the first of them); key index c is position c
        from membound.backends.triton.kernels.flash_attention import flash_attention

        assert k_new is not None and v_new is not None
        flash_attention(q, k_new, v_new, None, y, scale=scale, window=window, softcap=softcap, positions=positions,
                        sinks=sink, alibi=alibi)
        note("cached_attention", "kernel")
        return y
    if rows > PREFILL_ROWS and config is None and not ring:
        # prefill: the flash kernel skips the key tiles above each row block's diagonal, which this
        # kernel (every row block reads the whole prefix) does not; at this many rows both are compute-bound
        from membound.backends.triton.kernels.flash_attention import flash_attention

        flash_attention(q, k, v, None, y, scale=scale, window=window, softcap=softcap, positions=positions,
                        sinks=sink, alibi=alibi, chunk=chunk)
        note("cached_attention", "kernel")
        return y
    length = cap if max_len is None else max(1, min(int(max_len), cap))
    cfg = config or pick_config(rows, bsz * hkv, length, max_len is not None, max(d, dv), q.dtype, q.device)
    for name in ("chunk", "min_chunk"):
        if getattr(cfg, name) % cfg.block_t:
            raise ValueError(f"cached_attention: config {name}={getattr(cfg, name)} must be a multiple of "
                             f"block_t={cfg.block_t}")
    n_qblocks = cdiv(rows, cfg.block_q)
    n_splits = cdiv(length, cfg.chunk)
    row_programs = bsz * hkv * n_qblocks
    # Without a known length the grid covers the capacity, which grows (kv_cache buckets): the compiled
    # variant must not depend on it, or every growth of the cache compiles the kernel again inside the
    # call that grows it (0.6-0.8 s on an H200). So the single-split variant (no merge compiled in) is
    # used only for a known length; otherwise the variant that can merge, which writes the result
    # directly when the grid has one split (a branch on the device). The merge's tile (merge_tile) comes from
    # the warps and head dim alone (masked lanes cost no bytes), so the split count never picks a variant.
    one = n_splits == 1 and max_len is not None
    dv_split, options = _config_options(cfg, rows, dv)
    block_dv = options["BLOCK_DV"]
    if one:
        part = lse = locks = y  # never touched: the kernel writes y directly
    else:  # fp32 buffers even for one split: the pointers' dtypes are part of the compiled variant
        units = row_programs * dv_split  # (row block, column block): its partials and its arrival counter
        part = torch.empty((units, n_splits, cfg.block_q, block_dv), dtype=torch.float32, device=q.device)
        lse = torch.empty((units, n_splits, cfg.block_q), dtype=torch.float32, device=q.device)
        locks = split_counters(q.device, units)
    spb, sps = (positions.stride(0), positions.stride(1)) if positions.dim() == 2 else (0, positions.stride(0))
    qk_scale = (1.0 / math.sqrt(d) if scale is None else float(scale)) * LOG2E
    precision = "ieee" if q.dtype == torch.float32 else "tf32"
    # axis 0: the chunks of a row block; axis 1: (batch, kv head, query-row block); axis 2: the output's columns
    slopes = alibi_slopes(alibi, q.device) if alibi is not None else q
    args = [q, k, v, positions, y, part, lse, locks, slopes, sink if sink is not None else q,
            hkv, g, s, cap, d, dv, cfg.least_chunk, n_qblocks, n_splits, qk_scale, int(window or chunk or 0),
            float(softcap or 1.0), int(cfg.direct_span), *q.stride(), *k.stride(), *v.stride(), spb, sps, *y.stride()]
    kw = dict(options, BLOCK_D=max(16, next_pow2(d)), ONE_SPLIT=one, DIRECT=DIRECT_ONE_CHUNK,
              ACTIVE_ARRIVALS=ACTIVE_ARRIVALS, INPUT_PRECISION=precision,
              HAS_WINDOW=window is not None or chunk is not None, CHUNKED=chunk is not None,
              HAS_SOFTCAP=softcap is not None, RING=ring, HAS_ALIBI=alibi is not None,
              EARLY_KV=early_kv(static_past, ring), **prefetch_args(prefetch), HAS_SINKS=sink is not None,
              **pdl_options(q.device))
    kernel = launchable(_flash_decoding_split, q.device)
    kernel[(n_splits, row_programs, dv_split)](*args, **kw)
    if max_len is None and config is None:
        compile_wide_ahead(kernel, args, kw, rows, bsz * hkv, cap, max(d, dv), q.dtype, q.device)
    note("cached_attention", "kernel")
    return y


def _config_options(cfg: DecodeConfig, rows: int, dv: int) -> tuple[int, dict]:
    """``(dv_split, launch options)`` a config sets for ``rows`` query rows per kv head and value head dim ``dv``:
    its tiles, warps and stages, the output's column blocks (a Dv split: each of dv_split programs owns BLOCK_DV
    columns, at least 16 for tl.dot) and the merge's tile."""
    padded_dv = max(16, next_pow2(dv))
    dv_split = max(1, min(cfg.dv_split, padded_dv // 16))
    block_dv = padded_dv // dv_split
    split_block, merge_rows = merge_tile(rows, cfg.block_q, block_dv, cfg.num_warps)
    return dv_split, dict(BLOCK_Q=cfg.block_q, BLOCK_T=cfg.block_t, BLOCK_DV=block_dv, SPLIT_BLOCK=split_block,
                          MERGE_ROWS=merge_rows, KV_EVICT="evict_first" if cfg.evict_first else "",
                          num_warps=cfg.num_warps, num_stages=cfg.num_stages)


# _flash_decoding_split's positional arguments by name (compile_wide_ahead replaces the config's integers)
_ARG = {name: i for i, name in enumerate(_flash_decoding_split.arg_names)}
# the launches (device index, rows, groups, head dim, threshold, options, argument dtypes) whose wide variant
# compile_wide_ahead compiled
_AHEAD: set = set()


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def compile_wide_ahead(kernel, args: list, kw: dict, rows: int, groups: int, capacity: int, head_dim: int,
                       dtype: torch.dtype, device: torch.device) -> bool:
    """Compile, without launching, the variant this launch would take once the cache grows to ``WIDE_FROM`` slots,
    when that is a new one (head dim 64's 256-slot wide tiles: another BLOCK_T and warp count). Called after a
    graph-path launch (no known length: ``generate``'s step, sized for the capacity) below that capacity, outside
    a CUDA-graph capture, once per variant a process: the first call pays the compile (about 0.6-0.8 s), not the
    later call whose cache first grows past the threshold, which issue 13 holds to 1.10x a warm call of its length.
    ``args``/``kw``: the launch's own, so the variant has its specialisation (argument dtypes and alignment, the
    model's window, sinks, PDL). Returns whether it compiled."""
    start = int(os.environ.get(WIDE_FROM_ENV, "") or WIDE_FROM)
    if (device.type != "cuda" or start <= capacity or not _wide(head_dim, dtype, start)
            or _wide(head_dim, dtype, capacity)):
        return False
    # the key from this launch (its options fix the wide variant's, given the rows, groups and head dim): a decode
    # step run without CUDA graphs calls this at every launch, so a variant already compiled returns here
    key = (device.index, rows, groups, head_dim, start,
           tuple(sorted((n, str(x.dtype) if isinstance(x, torch.Tensor) else x) for n, x in kw.items())),
           tuple(str(a.dtype) for a in args if isinstance(a, torch.Tensor)))
    if key in _AHEAD or _capturing():
        return False
    _AHEAD.add(key)
    wide = pick_config(rows, groups, start, False, head_dim, dtype, device)
    dv_split, options = _config_options(wide, rows, args[_ARG["DV"]])
    wkw = dict(kw, **options, ONE_SPLIT=False)
    n_splits, n_qblocks = cdiv(start, wide.chunk), cdiv(rows, wide.block_q)
    wargs = list(args)
    for name, value in (("CHUNK_MIN", wide.least_chunk), ("N_QBLOCKS", n_qblocks), ("N_SPLITS", n_splits),
                        ("DIRECT_SPAN", int(wide.direct_span))):
        wargs[_ARG[name]] = value
    try:
        kernel.warmup(*wargs, grid=(n_splits, groups * n_qblocks, dv_split), **wkw)
    except Exception as e:  # noqa: BLE001 -- an ahead compile must not fail the launch that asked for it
        logging.getLogger("membound").warning(
            "cached_attention: compiling the wide flash-decoding variant ahead failed (%s: %s); the call whose cache "
            "first grows to %d slots compiles it instead", type(e).__name__, e, start)
        return False
    return True


def prefetch_args(weight: Optional[torch.Tensor]) -> dict:
    """The kernel's L2 prefetch arguments for ``weight`` (see :data:`PREFETCH_ENV`): its first
    ``MEMBOUND_DECODE_PREFETCH_MB`` (whole 16-byte steps), only on CUDA sm_90+ (``cp.async.bulk.prefetch.L2``) and
    for a contiguous, 16-byte aligned weight; else none."""
    mb = float(os.environ.get(PREFETCH_ENV, "0") or "0")
    if (weight is None or mb <= 0 or weight.device.type != "cuda" or not weight.is_contiguous()
            or weight.data_ptr() % 16 or torch.cuda.get_device_capability(weight.device)[0] < 9):
        return {}
    elems = min(weight.numel(), int(mb * 2**20) // weight.element_size()) // 16 * 16
    if elems <= 0:
        return {}
    return dict(pf_ptr=weight, pf_elems=elems, PREFETCH=True, PF_PIECE=PREFETCH_PIECE // weight.element_size())


def early_kv(static_past: bool, ring: bool) -> bool:
    """Whether a launch loads its chunks' first K/V tiles before the PDL wait: the compiler's promise that the
    past slots are static (``static_past``), not a ring (whose new slot may be any slot), and
    ``MEMBOUND_DECODE_EARLY_KV=1``."""
    return static_past and not ring and os.environ.get(EARLY_KV_ENV, "0").strip() == "1"


_SLOPES: dict[tuple[torch.device, tuple[float, ...]], torch.Tensor] = {}


def alibi_slopes(alibi: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """The ALiBi slopes as an f32 tensor on ``device``, made once per (device, slopes): the first call of a
    decode step runs outside any CUDA-graph capture, and a capture must not copy from the host."""
    key = (device, tuple(alibi))
    t = _SLOPES.get(key)
    if t is None:
        t = _SLOPES[key] = torch.tensor(alibi, dtype=torch.float32, device=device)
    return t


def check_sinks(op: str, sinks: Optional[torch.Tensor], q: torch.Tensor) -> None:
    """Sink logits must be ``[Hq]`` floats on q's device."""
    if sinks is None:
        return
    if sinks.dim() != 1 or sinks.shape[0] != q.shape[1] or not sinks.dtype.is_floating_point:
        raise ValueError(f"{op}: sinks must be [Hq] = [{q.shape[1]}] floats (one logit a query head), got "
                         f"{sinks.dtype} {tuple(sinks.shape)}")
    if sinks.device != q.device:
        raise ValueError(f"{op}: sinks are on {sinks.device}, q on {q.device}")


def _check(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
           k_new: Optional[torch.Tensor] = None, v_new: Optional[torch.Tensor] = None) -> None:
    op = "cached_attention"  # (k_new and v_new come both or neither: cached_extras checked)
    if k_new is not None and v_new is not None:
        s = q.shape[2]
        for name, new, cache in (("k_new", k_new, k), ("v_new", v_new, v)):
            want = (q.shape[0], cache.shape[1], s, cache.shape[3])
            if tuple(new.shape) != want:
                raise ValueError(f"{op}: {name} {tuple(new.shape)} must be [B, Hkv, S, D] = {list(want)}")
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"{op}: needs q[B, Hq, S, D] and caches [B, Hkv, T, D]; got q {tuple(q.shape)}, "
                         f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    bsz, hq, s, d = q.shape
    if k.shape[0] != bsz or v.shape[0] != bsz or k.shape[3] != d:
        raise ValueError(f"{op}: caches k {tuple(k.shape)} / v {tuple(v.shape)} do not fit q {tuple(q.shape)} "
                         f"(batch and head dim must agree)")
    if v.shape[1] != k.shape[1] or v.shape[2] != k.shape[2]:
        raise ValueError(f"{op}: v cache {tuple(v.shape)} must have k's heads and capacity ({tuple(k.shape)})")
    if hq % k.shape[1]:
        raise ValueError(f"{op}: query heads {hq} must be a multiple of kv heads {k.shape[1]}")
    if q.dtype != k.dtype or q.dtype != v.dtype:
        raise TypeError(f"{op}: q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if positions.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"{op}: positions must be int32/int64, got {positions.dtype}")
    if tuple(positions.shape) not in ((s,), (bsz, s)):
        raise ValueError(f"{op}: positions must be [S] = [{s}] or [B, S] = [{bsz}, {s}], got "
                         f"{tuple(positions.shape)}")
