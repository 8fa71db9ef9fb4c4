"""``benches/gemv_sweep.py`` on the CPU: its grids, the cross-shape ranking and the smoke run."""

from __future__ import annotations

import os

import pytest
import torch
from _bench_run import load_module  # (tests/ is on sys.path: pytest's rootdir-less test folder)

if not torch.cuda.is_available():  # the bench imports the kernels (triton): interpreter mode first
    os.environ.setdefault("TRITON_INTERPRET", "1")


bench = load_module("benches/gemv_sweep.py", "gemv_sweep")


@pytest.mark.parametrize("m,block_m", [(8, 16), (16, 16), (32, 32)])
def test_tensor_core_grid(m: int, block_m: int) -> None:
    configs = bench.tc_grid(m)
    assert len(configs) == 22 and len(set(configs)) == 22
    assert all(c.use_dot and c.block_m == block_m for c in configs)
    assert {c.split_k for c in configs} == {1, 2, 4, 8}
    # the library's own tile (16 x 32 x 128, 4 warps, 4 stages) is in the grid, unsplit and split
    assert {c.split_k for c in configs if (c.block_n, c.block_k, c.num_warps, c.num_stages) == (32, 128, 4, 4)} == {
        1, 2, 4, 8}
    assert bench.configs_for(m) == configs and bench.configs_for(1) == bench.grid(1)


@pytest.mark.parametrize("m,k,glu", [(1, 2048, False), (2, 4096, True), (8, 14336, False), (1, 100, False)])
def test_resident_grid_covers_k_in_each_program(m: int, k: int, glu: bool) -> None:
    """Every resident config holds a program's whole K range (block_k x split >= K, block_k a power of two at most
    8192), at most 32K weight values a program (glu: gate and up rows together), and launches without the
    launcher's refusal at that K; configs_for gives it at any M when asked for a K. At M = 1 every config is a
    one-row form: the resident tiles' and, where K spans a step, the register loop's (ROW_LOOP_TILES: K in steps)."""
    configs = bench.resident_grid(m, k, glu)
    assert configs and configs == bench.configs_for(m, glu, resident_k=k)
    loops = [c for c in configs if not c.resident]
    assert all(c.row and c.block_m == 1 and not c.use_dot for c in loops) and (len(loops) > 0) == (m == 1 and k >= 512)
    assert all(c.row == (m == 1) for c in configs)
    for c in configs:
        if not c.resident:
            continue
        assert not c.use_dot and c.block_m >= m
        assert c.block_k & (c.block_k - 1) == 0 and c.block_k <= 8192 and c.block_k * c.split_k >= k
        assert c.block_n * c.block_k * (2 if glu else 1) <= 32768
        assert -(-k // c.split_k) <= c.block_k  # the launcher's check: the split's width fits the tile


def test_best_overall_ranks_by_geomean_over_shapes() -> None:
    def row(shape: str, config: str, us: float) -> dict:
        return dict(model="llama-1b", shape=shape, m=8, config=config, us=us)

    rows = [row("o", "cublas", 1.0), row("o", "a", 2.0), row("o", "b", 4.0), row("o", bench.LIBRARY, 3.0),
            row("down", "cublas", 8.0), row("down", "a", 8.0), row("down", "b", 2.0), row("down", bench.LIBRARY, 4.0),
            row("qkv", "a", 1.0)]  # "b" and the library were not timed on qkv: not ranked
    assert [(c, round(g, 3), n) for c, g, n in bench.best_overall(rows, 8)] == [("a", 2.0, 3)]
    two = [r for r in rows if r["shape"] != "qkv"]
    ranked = {c: g for c, g, _ in bench.best_overall(two, 8)}
    assert ranked == {"a": pytest.approx((2.0 * 4.0) ** 0.5), "b": pytest.approx(4.0 ** 0.5),
                      bench.LIBRARY: pytest.approx((3.0 * 2.0) ** 0.5)}


def test_arguments() -> None:
    args = bench.parse_args(["--tensor-cores"])
    assert args.ms == [8, 16, 32] and args.stream_mb == 256
    assert bench.parse_args([]).ms == [1, 8] and bench.parse_args([]).stream_mb == 512
    with pytest.raises(SystemExit):
        bench.parse_args(["--shapes", "qkv,mlp"])


def test_smoke_prints_summaries(capsys: pytest.CaptureFixture) -> None:
    assert bench.main(["--smoke", "--tensor-cores"]) == 0
    out = capsys.readouterr().out
    assert "llama-8b down     m32" in out and "m8: best over all shapes" in out and "the library's own choice" in out
