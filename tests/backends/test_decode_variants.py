"""Flash-decoding's variants (``DecodeConfig``: rows per warp, key tile, warps, evict-first, device split)
against the ``cached_attention`` reference at odd sizes, on both launch paths: a known length
(``max_len``, the grid sized for it) and the CUDA-graph step's (no length: a grid sized for the capacity,
the device splitting the filled prefix over it).

CPU: the Triton interpreter, fp32 and fp16 (tolerances 1e-4 / 1e-2); random inputs away from zero.
The interpreter ignores warps and stages, but they choose how many rows the merge folds at once
(``merge_tile``), which it does run. Slots no row may see (past the filled prefix, before the window)
hold NaN in the capacity-path cases: a read of one would reach the output.
"""

from __future__ import annotations

import os
from typing import Optional

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from membound.backends.triton.kernels import DecodeConfig, cached_attention, trace  # noqa: E402
from membound.backends.triton.kernels import decode_attention as da  # noqa: E402
from membound.backends.triton.kernels._launch import cdiv  # noqa: E402
from membound.ir import get_op  # noqa: E402

TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2)}

# the variants gpu/decode_attn.sh times, at interpreter-sized tiles (16-slot key tiles)
VARIANTS = {
    "rows16-4warps": DecodeConfig(16, 16, 64, num_warps=4, num_stages=3),
    "rows64-4warps": DecodeConfig(64, 16, 64, num_warps=4, num_stages=3, min_chunk=16),
    "rows16-1warp-evict": DecodeConfig(16, 32, 64, num_warps=1, num_stages=4, evict_first=True, min_chunk=32),
    "rows32-2warps-fixed": DecodeConfig(32, 16, 48, num_warps=2, num_stages=3),
    # the output's columns over 2 / 4 programs (each reads all of K, its columns of V): direct, and merged per
    # column block (16-column blocks at D = 64)
    "rows16-dv2": DecodeConfig(16, 16, 64, num_warps=4, num_stages=3, dv_split=2),
    "rows16-dv4-merge": DecodeConfig(16, 16, 32, min_chunk=16, dv_split=4),
}

CASES = [
    # (B, G, Hkv, filled, D, dtype, path, window, softcap, variant)
    (1, 4, 2, 1, 64, torch.float32, "known", None, None, "rows64-4warps"),        # one slot
    (3, 4, 1, 7, 128, torch.float16, "capacity", None, None, "rows16-4warps"),     # 7 slots in a 64-slot cache
    (1, 1, 2, 130, 64, torch.float16, "known", None, None, "rows16-1warp-evict"),  # MHA, 3 splits
    (3, 8, 1, 130, 128, torch.float32, "capacity", 37, None, "rows64-4warps"),     # GQA 8, a window
    (1, 8, 2, 1000, 128, torch.float32, "capacity", None, None, "rows16-1warp-evict"),  # 1-row merges, 16+ splits
    (3, 4, 2, 1000, 64, torch.float16, "known", 300, 2.0, "rows32-2warps-fixed"),  # window + soft-cap, 21 splits
    (1, 4, 1, 1000, 128, torch.float16, "capacity", None, 1.5, None),              # the heuristic's config
    (3, 1, 1, 130, 64, torch.float32, "known", None, None, None),                  # the heuristic, per-row lengths
    (3, 4, 2, 7, 64, torch.float16, "capacity", None, None, "rows16-dv2"),         # Dv split, one chunk: direct
    (1, 8, 1, 45, 128, torch.float32, "known", 37, None, "rows16-dv2"),            # Dv split, a window, one split
    (3, 4, 2, 130, 64, torch.float16, "capacity", None, None, "rows16-dv4-merge"),  # 4 column blocks, each merged
    (2, 4, 1, 1000, 128, torch.float32, "known", None, 2.0, "rows16-dv4-merge"),   # soft-cap, 32 splits a block
]


def rand(*shape: int, dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    """Random values away from zero: |x| in [0.5, 1.5) with a random sign."""
    mag = torch.rand(shape, generator=gen) + 0.5
    sign = torch.where(torch.rand(shape, generator=gen) > 0.5, 1.0, -1.0)
    return (mag * sign).to(dtype).to(DEVICE)


@pytest.mark.parametrize("b,g,hkv,filled,d,dtype,path,window,softcap,variant", CASES)
def test_decode_variant_equals_reference(b: int, g: int, hkv: int, filled: int, d: int, dtype: torch.dtype, path: str,
                                         window: Optional[int], softcap: Optional[float],
                                         variant: Optional[str]) -> None:
    gen = torch.Generator().manual_seed(filled * 10 + d + g + b)
    cap = filled if path == "known" else max(64, 2 * filled)
    q = rand(b, hkv * g, 1, d, dtype=dtype, gen=gen)
    k, v = rand(b, hkv, cap, d, dtype=dtype, gen=gen), rand(b, hkv, cap, d, dtype=dtype, gen=gen)
    # row 0 at the last filled slot, the others earlier (per-row lengths)
    last = torch.tensor([filled - 1] + [max(0, filled - 1 - 3 * i) for i in range(1, b)])
    pos = last[:, None].to(DEVICE)
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=0.3, window=window,
                                                softcap=softcap)
    if path == "capacity":
        for i in range(b):  # slots no row of batch i sees
            k[i, :, int(last[i]) + 1:], v[i, :, int(last[i]) + 1:] = float("nan"), float("nan")
            if window is not None:
                old = max(0, int(last[i]) - window + 1)
                k[i, :, :old], v[i, :, :old] = float("nan"), float("nan")
    config = VARIANTS[variant] if variant else None
    with trace() as calls:
        y = cached_attention(q, k, v, pos, scale=0.3, window=window, softcap=softcap, config=config,
                             max_len=filled if path == "known" else None)
    assert calls and all(c[1] == "kernel" for c in calls if c[0] == "cached_attention"), calls
    assert y.dtype == dtype
    torch.testing.assert_close(y.float(), want.to(y.device), **TOL[dtype])


def record_launches(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Every flash-decoding launch from here on, as {argument name: value, "grid": grid}, still launched."""
    seen: list[dict] = []
    real = da._flash_decoding_split

    class Recorder:
        def __getitem__(self, grid: tuple[int, int]):
            def launch(*args, **kw):  # type: ignore[no-untyped-def]
                seen.append({**dict(zip(real.arg_names, args)), **kw, "grid": grid})
                return real[grid](*args, **kw)
            return launch

    monkeypatch.setattr(da, "launchable", lambda kernel, device: Recorder())
    return seen


def test_device_split_spreads_a_short_prefix_over_the_grid(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grid sized for a 4096-slot capacity and a 300-slot prefix: the programs split the prefix (chunks of
    the config's minimum), not the capacity (which would leave one program with the whole prefix)."""
    seen = record_launches(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    q = rand(1, 4, 1, 16, dtype=torch.float32, gen=gen)
    k, v = rand(1, 1, 4096, 16, dtype=torch.float32, gen=gen), rand(1, 1, 4096, 16, dtype=torch.float32, gen=gen)
    pos = torch.tensor([299], device=DEVICE)
    cfg = DecodeConfig(16, 16, 512, min_chunk=32)
    y = cached_attention(q, k, v, pos, config=cfg)
    (launch,) = seen
    assert launch["grid"] == (8, 1, 1) and launch["CHUNK_MIN"] == 32 and launch["N_SPLITS"] == 8
    # on the device: 300 slots over 8 programs -> 38, rounded up to whole 16-slot tiles: 48 >= 32
    chunk = max(cdiv(cdiv(300, 8), 16) * 16, 32)
    assert chunk == 48 and cdiv(300, chunk) == 7  # seven programs stream, the eighth only counts in
    torch.testing.assert_close(y, get_op("cached_attention").reference(q, k[:, :, :300], v[:, :, :300], pos,
                                                                         scale=None), rtol=1e-4, atol=1e-4)


def test_one_active_chunk_writes_directly_and_leaves_the_counters_alone() -> None:
    """A grid of 8 splits over a 4096-slot capacity: a 21-slot prefix has one chunk with slots, whose program
    writes the result itself (no partial, no arrival, no merge); then a 300-slot prefix (7 chunks, merged),
    then the short one again. Each equals the reference, and the split counters are back at zero after each."""
    from membound.backends.triton.kernels._launch import split_counters

    gen = torch.Generator().manual_seed(5)
    q = rand(2, 4, 1, 16, dtype=torch.float32, gen=gen)
    k, v = rand(2, 1, 4096, 16, dtype=torch.float32, gen=gen), rand(2, 1, 4096, 16, dtype=torch.float32, gen=gen)
    cfg = DecodeConfig(16, 16, 512, min_chunk=32)
    for lengths in ((21, 9), (300, 21), (21, 1)):  # per batch row: one chunk, several, one
        pos = torch.tensor([[lengths[0] - 1], [lengths[1] - 1]], device=DEVICE)
        y = cached_attention(q, k, v, pos, config=cfg)
        want = get_op("cached_attention").reference(q, k, v, pos, scale=None)
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
        assert not split_counters(q.device, 2).any()


def test_direct_span_streams_a_short_prefix_in_one_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """``direct_span``: a span of at most that many slots is one chunk (its program writes the result, nobody
    merges) even where ``min_chunk`` would split it; a longer span splits as before. Rows of one batch see
    different spans (90 slots direct, 300 split over the 8 programs), each equal to the reference; the launch
    carries the span and the counters are back at zero."""
    from membound.backends.triton.kernels._launch import split_counters

    seen = record_launches(monkeypatch)
    gen = torch.Generator().manual_seed(6)
    q = rand(2, 4, 1, 16, dtype=torch.float32, gen=gen)
    k, v = rand(2, 1, 1024, 16, dtype=torch.float32, gen=gen), rand(2, 1, 1024, 16, dtype=torch.float32, gen=gen)
    cfg = DecodeConfig(16, 16, 128, min_chunk=16, direct_span=96)
    for lengths in ((90, 300), (96, 97), (1, 17)):
        pos = torch.tensor([[lengths[0] - 1], [lengths[1] - 1]], device=DEVICE)
        y = cached_attention(q, k, v, pos, config=cfg)
        want = get_op("cached_attention").reference(q, k, v, pos, scale=None)
        torch.testing.assert_close(y, want, rtol=1e-4, atol=1e-4)
        assert not split_counters(q.device, 2).any()
    assert all(launch["DIRECT_SPAN"] == 96 for launch in seen)
    # the device's chunk rule: a span at the limit is one chunk, one slot past it splits
    assert cdiv(96, max(cdiv(96, 16) * 16, max(cdiv(cdiv(96, 8), 16) * 16, 16))) == 1
    assert cdiv(97, max(cdiv(cdiv(97, 8), 16) * 16, 16)) == 7  # seven 16-slot chunks, merged


def test_pick_config_rule() -> None:
    """The default tiles: rows padded to 16 per warp (64 at 4 warps), 64-slot key tiles for 16-bit caches up
    to head dim 128; a known length at batch 64 x 8 kv heads fills the machine with one split; the
    capacity path's compile-time choices do not move with the capacity, its grid does."""
    cuda = torch.device("cuda")
    if not torch.cuda.is_available():
        pytest.skip("pick_config reads the SM count of a CUDA device")
    small = da.pick_config(4, 8, 4096, True, 128, torch.bfloat16, cuda)
    assert small.block_q == max(16, da.ROWS_PER_WARP * da.DECODE_WARPS)
    assert small.block_t == da.tile_slots(128, torch.bfloat16) and small.chunk < 4096
    assert da.pick_config(4, 512, 4096, True, 128, torch.bfloat16, cuda).chunk >= 4096


def test_pick_config_capacity_path_is_capacity_free() -> None:
    device = torch.device("cpu")
    cfgs = [da.pick_config(4, 8, cap, False, 128, torch.bfloat16, device) for cap in (256, 4096, 65536)]
    keys = {(c.block_q, c.block_t, c.num_warps, c.num_stages, c.evict_first, c.min_chunk) for c in cfgs}
    assert len(keys) == 1, keys
    assert cfgs[0].block_q == max(16, da.ROWS_PER_WARP * da.DECODE_WARPS)
    assert [-(-cap // c.chunk) for cap, c in zip((256, 4096, 65536), cfgs)] == sorted(
        -(-cap // c.chunk) for cap, c in zip((256, 4096, 65536), cfgs))


@pytest.mark.parametrize("wide", [False, True])
def test_tile_slots_keep_the_tile_bytes(monkeypatch: pytest.MonkeyPatch, wide: bool) -> None:
    """32 KB of K + V per tile: 64 slots at bf16 and head dim 128, 128 at 64 (and 80, padded to 128: 64),
    32 at 256 or fp32 at 128; never under 16 (tl.dot) nor over 128. Wide tiles: 128 slots (64 KB) for a
    16-bit cache whose head dim pads to 128, over WIDE_WARPS warps, the grid sized for one program per SM;
    the least chunk and the direct span keep their bytes (whole wide tiles)."""
    if (da.DECODE_TILE_BYTES, da.WIDE_TILE_BYTES) != (32768, 65536):
        pytest.skip("recalibrated tile size")
    monkeypatch.setattr(da, "WIDE_TILES", wide)
    got = [da.tile_slots(d, dt) for d, dt in ((128, torch.bfloat16), (64, torch.float16), (80, torch.float16),
                                              (256, torch.bfloat16), (128, torch.float32), (16, torch.float16))]
    assert got == [128 if wide else 64, 128, 128 if wide else 64, 32, 32, 128]
    cpu = torch.device("cpu")
    cfg = da.pick_config(4, 8, 32768, False, 128, torch.bfloat16, cpu, sms=132)
    assert cfg.num_warps == (da.WIDE_WARPS if wide else da.DECODE_WARPS) and cfg.block_q == 16
    assert (cfg.least_chunk, cfg.direct_span) == (da.LEAST_TILES * 64, da.DIRECT_TILES * 64)  # 128, 384 slots
    narrow = da.pick_config(4, 8, 2048, False, 64, torch.bfloat16, cpu, sms=132)  # under WIDE_FROM
    assert (narrow.num_warps, narrow.block_t) == (da.DECODE_WARPS, 128)
    # the grid: one program per SM for wide tiles, two for 32 KB ones (8 kv heads, 32k slots)
    per_sm = da.WIDE_PROGRAMS_PER_SM if wide else da.PROGRAMS_PER_SM
    assert 8 * -(-32768 // cfg.chunk) <= per_sm * 132 < 2 * 8 * -(-32768 // cfg.chunk)


def test_wide_tiles_at_head_dim_64_when_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WIDE_HEAD_DIMS`` with 64 (an A/B setting): a 16-bit cache at head dim 64 streams 256-slot (64 KB) tiles
    over WIDE_WARPS warps, the least chunk and direct span kept in bytes (one and three wide tiles); fp32 keeps
    its 32 KB tiles. The kernel at that config equals the reference on the graph path (700 slots filled in a
    1400-slot cache: split and merged; 200: one direct program), fp16 (tolerance 1e-2)."""
    if (da.DECODE_TILE_BYTES, da.WIDE_TILE_BYTES, da.LEAST_TILES, da.DIRECT_TILES) != (32768, 65536, 2, 6):
        pytest.skip("recalibrated tile sizes")
    monkeypatch.setattr(da, "WIDE_TILES", True)
    monkeypatch.setattr(da, "WIDE_HEAD_DIMS", (64, 128))
    assert [da.tile_slots(64, torch.float16), da.tile_slots(64, torch.float32), da.tile_slots(128, torch.bfloat16)
            ] == [256, 64, 128]
    cfg = da.pick_config(4, 2, 1400, False, 64, torch.float16, torch.device("cpu"), sms=4)
    assert (cfg.block_t, cfg.num_warps, cfg.least_chunk, cfg.direct_span) == (256, da.WIDE_WARPS, 256, 768)
    gen = torch.Generator().manual_seed(64)
    for filled in (700, 200):
        q = rand(1, 8, 1, 64, dtype=torch.float16, gen=gen)
        k, v = rand(1, 2, 1400, 64, dtype=torch.float16, gen=gen), rand(1, 2, 1400, 64, dtype=torch.float16, gen=gen)
        k[:, :, filled:], v[:, :, filled:] = float("nan"), float("nan")
        pos = torch.tensor([filled - 1], device=DEVICE)
        want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=None)
        y = cached_attention(q, k, v, pos, config=cfg)
        torch.testing.assert_close(y.float(), want, **TOL[torch.float16])


def test_wide_tiles_at_head_dim_64_from_a_length(monkeypatch: pytest.MonkeyPatch) -> None:
    """``WIDE_FROM`` (``MEMBOUND_DECODE_WIDE_FROM`` overrides it): head dim 64 streams 256-slot tiles once the grid
    covers at least that many slots, 128-slot ones below it (with the variable 0, never); head dim 128 streams its
    wide tiles at every length, fp32 never."""
    monkeypatch.setattr(da, "WIDE_TILES", True)
    monkeypatch.setattr(da, "WIDE_HEAD_DIMS", (128,))
    cpu = torch.device("cpu")

    def slots(length: int, d: int = 64, dtype: torch.dtype = torch.bfloat16) -> int:
        return da.pick_config(4, 8, length, False, d, dtype, cpu, sms=132).block_t

    monkeypatch.setenv(da.WIDE_FROM_ENV, "0")
    assert [slots(4096), slots(65536)] == [128, 128]
    monkeypatch.setenv(da.WIDE_FROM_ENV, "32768")
    assert [slots(16384), slots(32767), slots(32768)] == [128, 128, 256]
    monkeypatch.delenv(da.WIDE_FROM_ENV)  # the default
    monkeypatch.setattr(da, "WIDE_FROM", 16384)
    assert [slots(4096), slots(16383), slots(16384), slots(65536)] == [128, 128, 256, 256]
    assert da.pick_config(4, 8, 65536, False, 64, torch.bfloat16, cpu, sms=132).num_warps == da.WIDE_WARPS
    assert [slots(4096, 128), slots(65536, 128), slots(65536, 64, torch.float32)] == [128, 128, 64]
    assert da.direct_tiles(64, torch.bfloat16, 65536) == 3 and da.direct_tiles(64, torch.bfloat16, 4096) == 6


def test_merge_tile_fits_the_register_budget() -> None:
    """32 fp32 values a thread per merge tile (more spilled on sm_90 with triton 3.6): partials first, then rows."""
    if da.MERGE_REGS != 32:
        pytest.skip("recalibrated budget")
    assert da.merge_tile(4, 64, 128, 4) == (16, 2)  # G = 4, D = 128, 4 warps: two passes of 2 rows
    assert da.merge_tile(4, 64, 64, 4) == (16, 4)   # D = 64: all 4 rows at once
    assert da.merge_tile(8, 16, 128, 1) == (8, 1)   # one warp: 8 partials of one row
    assert da.merge_tile(1, 16, 64, 8) == (16, 1)   # never more rows than there are
    assert da.merge_tile(4, 64, 256, 1) == (4, 1)


@pytest.mark.parametrize("wide", [False, True])
def test_serial_tiles_follows_the_kernels_chunk_rule(monkeypatch: pytest.MonkeyPatch, wide: bool) -> None:
    """The step model's latency chain (``serial_tiles``, the kernel's chunk rule on the host) at the H200's 132
    SMs, bf16, GQA 4 over 8 kv heads, capacity the power-of-two bucket above the filled length: at D = 128
    (64-slot tiles) up to DIRECT_TILES tiles are one program's, past them the span splits over the grid (sized
    with MIN_TILES-tile chunks for the capacity) into chunks of at least LEAST_TILES tiles and merges; at D = 64
    the tiles hold 128 slots. Wide tiles (128 slots at D = 128) keep the spans in slots (384 direct, 128-slot
    chunks), in half as many tiles."""
    monkeypatch.setattr(da, "WIDE_TILES", wide)

    def chain(filled: int, d: int, batch: int = 1) -> tuple[int, bool]:
        return da.serial_tiles(4, batch * 8, filled, 1 << filled.bit_length(), d, torch.bfloat16, 132)

    assert (da.DIRECT_TILES, da.MIN_TILES, da.LEAST_TILES) == (6, 4, 2)  # the cases below assume the defaults
    # D = 64 streams 128-slot (32 KB) tiles below a WIDE_FROM capacity with wide tiles on or off: 1024 slots in a
    # grid of four 512-slot chunks (MIN_TILES) split into four of 256 (LEAST_TILES); 2048 in 4096 and 4096 in 8192
    # (WIDE_FROM capacities) into chunks of 256: two 128-slot tiles, or one 256-slot wide tile
    if da.WIDE_FROM != 4096:
        pytest.skip("recalibrated WIDE_FROM")
    assert [chain(n, 64) for n in (128, 384, 768, 1024, 2048, 4096)] == [
        (1, False), (3, False), (6, False), (2, True)] + [(1, True) if wide else (2, True)] * 2
    if wide:
        assert [chain(n, 128) for n in (128, 256, 384, 512, 1024)] == [(1, False), (2, False), (3, False),
                                                                      (1, True), (1, True)]
        assert da.direct_tiles(128, torch.bfloat16) == 3 and chain(384, 128, batch=8) == (3, False)
        return
    assert da.direct_tiles(128, torch.bfloat16) == da.DIRECT_TILES
    assert [chain(n, 128) for n in (128, 256, 384, 512, 1024)] == [(2, False), (4, False), (6, False), (2, True),
                                                                  (2, True)]
    assert chain(384, 128, batch=8) == (6, False)


def test_dv_split_fills_one_wave_and_splits_the_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    """``MEMBOUND_DECODE_DV_SPLIT`` (``da.DV_SPLIT``): pick_config splits the output's columns while the grid fits
    one wave (batch 8 at 8 kv heads on 132 SMs: wide tiles at D = 128 hold one program an SM, so 2 column blocks;
    D = 64, two an SM, 4), never under 16 columns, and 1 when off; the launch's grid carries the split on axis 2
    and the result equals the reference (16-column blocks)."""
    cfg = lambda d, dtype=torch.bfloat16: da.pick_config(  # noqa: E731
        4, 64, 512, False, d, dtype, torch.device("cpu"), sms=132)
    monkeypatch.setattr(da, "DV_SPLIT", 1)
    assert cfg(128).dv_split == 1 and cfg(64).dv_split == 1
    monkeypatch.setattr(da, "DV_SPLIT", 4)
    assert cfg(128).dv_split == (2 if da._wide(128, torch.bfloat16) else 4)
    assert cfg(64).dv_split == 4 and cfg(16).dv_split == 1
    assert da.pick_config(4, 512, 512, False, 64, torch.bfloat16, torch.device("cpu"), sms=132).dv_split == 1
    seen = record_launches(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    q = rand(2, 8, 1, 64, dtype=torch.float32, gen=gen)
    k, v = rand(2, 2, 96, 64, dtype=torch.float32, gen=gen), rand(2, 2, 96, 64, dtype=torch.float32, gen=gen)
    pos = torch.tensor([[70], [95]], device=DEVICE)
    y = cached_attention(q, k, v, pos, config=DecodeConfig(16, 16, 32, min_chunk=16, dv_split=4))
    (launch,) = seen
    assert launch["grid"] == (3, 4, 4) and launch["BLOCK_DV"] == 16
    want = get_op("cached_attention").reference(q, k, v, pos, scale=None)
    torch.testing.assert_close(y, want.to(y.device), rtol=1e-4, atol=1e-4)


class _Recorder:
    """A stand-in for the Triton kernel: records ``warmup`` calls (compile without launch)."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, tuple, dict]] = []

    def warmup(self, *args, grid, **kw):  # noqa: ANN001, ANN202
        self.calls.append((list(args), grid, kw))


def _launch_like(capacity: int, dtype: torch.dtype = torch.bfloat16, d: int = 64,
                 dv: Optional[int] = None) -> tuple[list, dict]:
    """A graph-path launch's arguments as cached_attention builds them (128-slot tiles, 4 warps), CPU tensors:
    compile_wide_ahead reads only their dtypes."""
    t = torch.zeros(1, dtype=dtype)
    f32, i32, i64 = torch.zeros(1), torch.zeros(1, dtype=torch.int32), torch.zeros(1, dtype=torch.int64)
    dv = dv or d
    args = [t, t, t, i64, t, f32, f32, i32, t, t, 8, 4, 1, capacity, d, dv, 256, 1, 8, 0.18, 4096, 1.0, 768]
    args += [1] * 18  # the strides
    kw = dict(BLOCK_Q=16, BLOCK_T=128, BLOCK_D=d, BLOCK_DV=max(16, dv), ONE_SPLIT=False, DIRECT=True, ACTIVE_ARRIVALS=False,
              INPUT_PRECISION="tf32", HAS_WINDOW=True, CHUNKED=False, HAS_SOFTCAP=False, RING=False, HAS_ALIBI=False,
              SPLIT_BLOCK=16, MERGE_ROWS=4, KV_EVICT="", EARLY_KV=False, num_warps=4, num_stages=3, HAS_SINKS=False,
              USE_PDL=1, launch_pdl=True)
    return args, kw


def test_wide_variant_compiled_ahead(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """A graph-path launch below ``WIDE_FROM`` (head dim 64, 16-bit) compiles, without launching, the wide variant
    the cache takes once it grows to WIDE_FROM slots: 256-slot tiles over WIDE_WARPS warps, the launch's own
    options otherwise (window, PDL), the least chunk and direct span of that capacity; once per variant. Nothing
    is compiled for a capacity already wide, head dim 128 (wide at every length), fp32, WIDE_FROM 0, a CPU
    launch, or inside a CUDA-graph capture."""
    if (da.WIDE_TILE_BYTES, da.LEAST_TILES, da.DIRECT_TILES, da.WIDE_WARPS) != (65536, 2, 6, 8):
        pytest.skip("recalibrated tiles")
    monkeypatch.setattr(da, "WIDE_TILES", True)
    monkeypatch.setattr(da, "WIDE_HEAD_DIMS", (128,))
    monkeypatch.setattr(da, "WIDE_FROM", 4096)
    monkeypatch.delenv(da.WIDE_FROM_ENV, raising=False)
    monkeypatch.setattr(da, "_AHEAD", set())
    monkeypatch.setattr(da, "sm_count", lambda device: 132)
    capturing = [False]
    monkeypatch.setattr(da, "_capturing", lambda: capturing[0])
    cuda = torch.device("cuda", 0)
    rec = _Recorder()

    def ahead(capacity: int, d: int = 64, dtype: torch.dtype = torch.bfloat16,
              device: torch.device = cuda, dv: Optional[int] = None) -> bool:
        args, kw = _launch_like(capacity, dtype, d, dv)
        return da.compile_wide_ahead(rec, args, kw, 4, 8, capacity, d, dtype, device)

    assert ahead(2048) and len(rec.calls) == 1
    args, grid, kw = rec.calls[0]
    wide = da.pick_config(4, 8, 4096, False, 64, torch.bfloat16, cuda)
    assert (kw["BLOCK_T"], kw["num_warps"], kw["num_stages"]) == (256, da.WIDE_WARPS, da.DECODE_STAGES)
    assert (kw["HAS_WINDOW"], kw["launch_pdl"], kw["ONE_SPLIT"]) == (True, True, False)
    assert (kw["SPLIT_BLOCK"], kw["MERGE_ROWS"]) == da.merge_tile(4, 16, 64, da.WIDE_WARPS)
    assert (args[16], args[22], args[18]) == (256, 768, cdiv(4096, wide.chunk))  # CHUNK_MIN, DIRECT_SPAN, N_SPLITS
    assert args[13] == 2048 and grid == (cdiv(4096, wide.chunk), 8, 1)
    assert not ahead(2048) and not ahead(512) and len(rec.calls) == 1  # once per variant (any capacity below)
    assert not ahead(4096) and not ahead(8192)  # already wide
    assert not ahead(2048, d=128) and not ahead(2048, dtype=torch.float32)
    assert not ahead(2048, dtype=torch.float16, device=torch.device("cpu"))
    capturing[0] = True
    assert not ahead(2048, dtype=torch.float16)
    capturing[0] = False
    monkeypatch.setenv(da.WIDE_FROM_ENV, "0")
    assert not ahead(2048, dtype=torch.float16)
    monkeypatch.delenv(da.WIDE_FROM_ENV)
    assert ahead(2048, dtype=torch.float16) and len(rec.calls) == 2  # fp16: another variant
    assert ahead(2048, dv=32) and rec.calls[-1][2]["BLOCK_DV"] == 32  # the value head dim's columns, not K's

    class Failing(_Recorder):
        def warmup(self, *args, grid, **kw):  # noqa: ANN001, ANN202
            raise RuntimeError("no compiler")

    rec = Failing()  # a failed ahead compile is logged, and the launch that asked goes on
    with caplog.at_level("WARNING", logger="membound"):
        assert not ahead(1024, d=64, dtype=torch.bfloat16, device=torch.device("cuda", 1))
    assert "compiling the wide flash-decoding variant ahead failed (RuntimeError: no compiler)" in caplog.text


def test_cached_attention_asks_for_the_wide_variant_on_the_graph_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """cached_attention hands compile_wide_ahead its own launch (kernel, arguments, options, capacity) after a
    graph-path launch (no max_len, no config), and not after a known-length or configured one."""
    seen: list[tuple] = []
    monkeypatch.setattr(da, "compile_wide_ahead", lambda *a: seen.append(a) or False)
    gen = torch.Generator().manual_seed(5)
    q = rand(1, 8, 1, 64, dtype=torch.float16, gen=gen)
    k, v = rand(1, 2, 96, 64, dtype=torch.float16, gen=gen), rand(1, 2, 96, 64, dtype=torch.float16, gen=gen)
    pos = torch.tensor([40], device=DEVICE)
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=None)
    torch.testing.assert_close(cached_attention(q, k, v, pos).float(), want, **TOL[torch.float16])
    assert len(seen) == 1
    kernel, args, kw, rows, groups, capacity, head_dim, dtype, device = seen[0]
    assert kernel is da._flash_decoding_split and args[13] == 96 and (rows, groups, capacity, head_dim) == (4, 2, 96, 64)
    assert kw["BLOCK_T"] == da.pick_config(4, 2, 96, False, 64, torch.float16, q.device).block_t
    assert dtype == torch.float16 and device == q.device
    cached_attention(q, k, v, pos, max_len=41)
    cached_attention(q, k, v, pos, config=da.pick_config(4, 2, 96, False, 64, torch.float16, q.device))
    assert len(seen) == 1


@pytest.mark.gpu
def test_gpu_wide_variant_compiled_ahead_is_the_one_launched() -> None:
    """GPU, bf16, head dim 64: after a graph-path launch at a 2048-slot capacity, a launch at a WIDE_FROM capacity
    (256-slot wide tiles) compiles nothing (the kernel's compile cache does not grow) and equals the fp32
    reference (tolerance 2e-2)."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    start = int(os.environ.get(da.WIDE_FROM_ENV, "") or da.WIDE_FROM)
    if start <= 2048 or not da._wide(64, torch.bfloat16, start):
        pytest.skip("no wide variant above a 2048 capacity at this setting")
    dev = torch.device("cuda")
    gen = torch.Generator(device=dev).manual_seed(11)

    def case(capacity: int) -> tuple:
        q = torch.randn(1, 32, 1, 64, device=dev, dtype=torch.bfloat16, generator=gen)
        k = torch.randn(1, 8, capacity, 64, device=dev, dtype=torch.bfloat16, generator=gen)
        v = torch.randn(1, 8, capacity, 64, device=dev, dtype=torch.bfloat16, generator=gen)
        return q, k, v, torch.tensor([min(capacity, 3000) - 1], device=dev)

    cached_attention(*case(2048))
    torch.cuda.synchronize()
    cache = da._flash_decoding_split.device_caches[torch.cuda.current_device()][0]
    before = len(cache)
    q, k, v, pos = case(start)
    y = cached_attention(q, k, v, pos)
    torch.cuda.synchronize()
    assert len(cache) == before
    want = get_op("cached_attention").reference(q.float(), k.float(), v.float(), pos, scale=None)
    torch.testing.assert_close(y.float(), want, rtol=2e-2, atol=2e-2)
