"""The ``moe`` kernels' two paths against the op's torch reference: the decode walk (one program per expert and
N block) and the grouped GEMM over (m-block, n-block) work items that prefill takes; the block table; the
rule that picks between them. Under the Triton interpreter on the CPU (fp32, fp16) or compiled on a GPU (plus
bf16). Sizes are odd (D, I not multiples of any tile); inputs random and never zero. Tolerances: fp32 1e-4,
fp16/bf16 1e-2 (as ``test_moe_kernel.py``).
"""

from __future__ import annotations

import importlib
import os

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from membound.backends.triton.kernels import moe, quant_moe, trace  # noqa: E402
from membound.backends.triton.kernels.moe import _tile  # noqa: E402
from membound.cost.hardware import Hardware  # noqa: E402
from membound.ir import get_op  # noqa: E402
from membound.ir.ops.quant import quantize  # noqa: E402

MOE = importlib.import_module("membound.backends.triton.kernels.moe")  # the module, not the launcher
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-4), torch.float16: dict(rtol=1e-2, atol=1e-2),
       torch.bfloat16: dict(rtol=1e-2, atol=2e-2)}
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
D, I = 40, 23  # not multiples of 16, 32, 64 or 128


def _weights(e: int, d: int, i: int, dtype: torch.dtype) -> list[torch.Tensor]:
    """router [E, D], gate / up [E, I, D], down [E, D, I]: magnitudes 0.5..1.5 / sqrt(K), random signs."""
    g = torch.Generator().manual_seed(e * 1000 + d)

    def r(*shape: int) -> torch.Tensor:
        mag = torch.rand(shape, generator=g) + 0.5
        sign = torch.where(torch.rand(shape, generator=g) < 0.5, -1.0, 1.0)
        return (mag * sign / shape[-1] ** 0.5).to(DEVICE, dtype)

    return [r(e, d), r(e, i, d), r(e, i, d), r(e, d, i)]


def _tokens(t: int, d: int, dtype: torch.dtype, positive: bool = False) -> torch.Tensor:
    x = torch.randn(t, d, generator=torch.Generator().manual_seed(t))
    return (x.abs() + 0.1 if positive else x).to(DEVICE, dtype)


class Launches:
    """The kernels the launcher hands to ``launchable``, in order (which path ran)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.kernels: list[object] = []
        real = MOE.launchable

        def record(kernel: object, device: torch.device) -> object:
            self.kernels.append(kernel)
            return real(kernel, device)

        monkeypatch.setattr(MOE, "launchable", record)

    @property
    def path(self) -> str:
        grouped = [MOE._moe_grouped_gate_up, MOE._moe_grouped_down]
        decode = [MOE._moe_gate_up, MOE._moe_down]
        assert self.kernels in (grouped, decode), self.kernels
        return "grouped" if self.kernels == grouped else "decode"


def _check(x: torch.Tensor, ws: list[torch.Tensor], path: str, monkeypatch: pytest.MonkeyPatch,
           **attrs: object) -> None:
    attrs = dict(dict(top_k=2, softmax_first=True, renormalize=True, act="silu"), **attrs)
    launches = Launches(monkeypatch)
    with trace() as calls:
        got = moe(x, *ws, path=path, **attrs)
    assert calls == [("moe", "kernel")] and launches.path == path
    want = get_op("moe").reference(x, *ws, **attrs)
    assert got.shape == x.shape and got.dtype == x.dtype
    torch.testing.assert_close(got.float(), want.float(), **TOL[x.dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("path", ["grouped", "decode"])
@pytest.mark.parametrize("e,k", [(4, 1), (8, 2)])
@pytest.mark.parametrize("tokens", [1, 7, 33, 130])  # 130 * 2 / 8: several 64-row blocks an expert
def test_both_paths_match_reference(dtype: torch.dtype, path: str, e: int, k: int, tokens: int,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _weights(e, D, I, dtype)
    _check(_tokens(tokens, D, dtype), ws, path, monkeypatch, top_k=k, softmax_first=k == 2, renormalize=k == 2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("e,k,tokens", [(4, 2, 33), (8, 1, 130)])
def test_grouped_other_routings(dtype: torch.dtype, e: int, k: int, tokens: int,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    ws = _weights(e, D, I, dtype)
    _check(_tokens(tokens, D, dtype), ws, "grouped", monkeypatch, top_k=k, softmax_first=False, renormalize=False)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_with_an_expert_nobody_chooses(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """x > 0 and an all-negative router row: expert 1 gets no pair (no block); the others several blocks."""
    ws = _weights(4, D, I, dtype)
    ws[0][1] = -ws[0][1].abs() * 4
    x = _tokens(130, D, dtype, positive=True)
    _, experts = torch.topk(torch.nn.functional.linear(x.float(), ws[0].float()), 2, dim=-1)
    assert not (experts == 1).any() and (experts == 0).any()
    _check(x, ws, "grouped", monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES)
def test_grouped_with_every_token_on_one_expert(dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch) -> None:
    """Top-1, x > 0 and an all-positive router row: all 130 pairs on expert 2 (3 blocks of 64, a partial one
    last), the other experts empty: the grid bound cdiv(130, 64) + 4 leaves 4 blocks to exit."""
    ws = _weights(4, D, I, dtype)
    ws[0][2] = ws[0][2].abs() * 4
    x = _tokens(130, D, dtype, positive=True)
    assert (torch.nn.functional.linear(x.float(), ws[0].float()).argmax(-1) == 2).all()
    _check(x, ws, "grouped", monkeypatch, top_k=1, softmax_first=False, renormalize=False)


G = MOE.GroupedConfig


@pytest.mark.parametrize("configs", [
    (G(128, 32, 16), G(16, 16, 32, group_m=3)),  # gate/up: 3 + 4 blocks, one band; down: 17 + 4 in bands of 3
    (G(16, 16, 32, group_m=8), G(64, 16, 16, group_m=5)),  # 2 N blocks for gate/up, 3 for down
])
def test_grouped_tiles_and_bands_may_differ_between_the_kernels(configs: tuple, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """``configs`` forces the grouped path with those tiles: 128-row blocks, a different BLOCK_M for gate/up
    than for down (two block tables), K tiles of 16, several N blocks, launch orders in bands of
    ``group_m`` m-blocks (the order itself: test_launch_order_visits_every_tile_once_in_bands)."""
    ws = _weights(4, D, I, torch.float32)
    x = _tokens(130, D, torch.float32)
    launches = Launches(monkeypatch)
    got = moe(x, *ws, top_k=2, configs=configs)
    assert launches.path == "grouped"
    want = get_op("moe").reference(x, *ws, top_k=2, softmax_first=True, renormalize=True, act="silu")
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@triton.jit
def _tiles_of(out_ptr, M_BLOCKS, N_BLOCKS, GROUP_M):
    pid = tl.program_id(0)
    m, n = _tile(pid, M_BLOCKS, N_BLOCKS, GROUP_M)
    tl.store(out_ptr + 2 * pid, m)
    tl.store(out_ptr + 2 * pid + 1, n)


@pytest.mark.parametrize("m_blocks,n_blocks,group_m", [(21, 2, 8), (9, 3, 5), (7, 3, 7), (13, 4, 1)])
def test_launch_order_visits_every_tile_once_in_bands(m_blocks: int, n_blocks: int, group_m: int) -> None:
    """The grouped kernels' launch order (_tile): a bijection from the 1-D grid onto (m-block, N block), in
    bands of group_m m-blocks (the last one partial), m-blocks fastest within a band."""
    out = torch.full((m_blocks * n_blocks, 2), -1, dtype=torch.int32, device=DEVICE)
    _tiles_of[(m_blocks * n_blocks,)](out, m_blocks, n_blocks, group_m)
    tiles = [tuple(t) for t in out.tolist()]
    assert sorted(tiles) == [(m, n) for m in range(m_blocks) for n in range(n_blocks)]
    want, first = [], 0
    while first < m_blocks:  # band by band: N blocks in turn, the band's m-blocks fastest
        band = range(first, min(first + group_m, m_blocks))
        want += [(m, n) for n in range(n_blocks) for m in band]
        first += group_m
    assert tiles == want


def _packed(ws: list[torch.Tensor], scheme: str, group: int) -> list[torch.Tensor]:
    """(codes, scales) of gate, up, down in ``scheme``: quant's format of the E * N rows, with a leading E."""
    out = []
    for w in ws[1:4]:
        q, sc = quantize(w.reshape(-1, w.shape[-1]), scheme, group)
        out += [q.view(*w.shape[:2], *q.shape[1:]), sc.view(*w.shape[:2], *sc.shape[1:])]
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scheme,group", [("int8", 0), ("int4", 16), ("fp8", 0)])
@pytest.mark.parametrize("path", ["grouped", "decode"])
def test_quantized_experts_on_both_paths(dtype: torch.dtype, scheme: str, group: int, path: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """quant_moe on both paths equals its dequantizing reference (int4: groups of 16, a partial last group and
    odd K's padded nibble in down's rows of I = 23)."""
    ws = _weights(8, D, I, dtype)
    packed = _packed(ws, scheme, group or 128)
    x = _tokens(33, D, dtype)
    attrs = dict(top_k=2, softmax_first=True, renormalize=True, act="silu")
    launches = Launches(monkeypatch)
    with trace() as calls:
        got = quant_moe(x, ws[0], *packed, scheme=scheme, group_size=group, path=path, **attrs)
    assert calls == [("quant_moe", "kernel")] and launches.path == path
    want = get_op("quant_moe").reference(x, ws[0], *packed, scheme=scheme, group_size=group, **attrs)
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


def test_block_table_lists_each_experts_blocks_in_order() -> None:
    """Counts 0, 5, 0, 9, 1 in blocks of 4: expert 1 two blocks, 3 three, 4 one (6 in all); the grid bound
    cdiv(15, 4) + 5 = 9, the last 3 blocks marked E = 5."""
    counts = torch.tensor([0, 5, 0, 9, 1])
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(counts, 0)])
    m_blocks = MOE.grouped_m_blocks(15, 5, 4)
    expert, start = MOE._block_table(counts, offsets, 4, m_blocks)
    assert m_blocks == 9 and expert.dtype == torch.int32
    assert expert.tolist() == [1, 1, 3, 3, 3, 4, 5, 5, 5]
    assert start[:6].tolist() == [0, 4, 5, 9, 13, 14]


@pytest.mark.parametrize("counts", [[3, 0, 0, 0], [0, 0, 0, 64], [1, 1, 1, 1], [17, 0, 31, 16]])
def test_block_table_bound_holds(counts: list[int]) -> None:
    """Every pair lies in exactly one listed block of its expert, within the grid bound."""
    c = torch.tensor(counts)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), torch.cumsum(c, 0)])
    for bm in (16, 64):
        m_blocks = MOE.grouped_m_blocks(int(c.sum()), 4, bm)
        expert, start = MOE._block_table(c, offsets, bm, m_blocks)
        seen = []
        for ex, st in zip(expert.tolist(), start.tolist()):
            if ex < 4:
                seen += [(p, ex) for p in range(st, min(st + bm, int(offsets[ex + 1])))]
        want = [(p, ex) for ex in range(4) for p in range(int(offsets[ex]), int(offsets[ex + 1]))]
        assert seen == want


H200 = Hardware.named("h200")


@pytest.mark.parametrize("scheme,last_decode", [(None, 58), ("int8", 41), ("int4", 44)])
def test_the_rule_prefers_decode_until_about_a_dozen_pairs_an_expert(scheme: str, last_decode: int) -> None:
    """At the Mixtral-8x7B layer on an H200 (the shares measured there; the bf16 paths tied at T = 64): decode up
    to ``last_decode`` tokens (10-15 pairs per expert), the grouped GEMM from one more, and at every prefill
    length after."""
    def path(t: int) -> str:
        return MOE.moe_path(t, 8, 2, 4096, 14336, torch.bfloat16, torch.device("cuda"), scheme, 128, hw=H200)

    assert [path(t) for t in (1, 2, 8, last_decode)] == ["decode"] * 4
    assert [path(t) for t in (last_decode + 1, 128, 512, 2048, 8192)] == ["grouped"] * 5
    times = MOE.path_times(512, 8, 2, 4096, 14336, torch.bfloat16, torch.device("cuda"), scheme, 128, hw=H200)
    assert times["decode"] > 3 * times["grouped"]  # the decode walk streams (and dequantizes) the experts 8-9 times


def test_the_rule_at_a_fine_grained_moe() -> None:
    """64 experts top-8 (D 2048, I 1408): decode at a decode batch of 32, grouped at a 512-token prefill."""
    args = (64, 8, 2048, 1408, torch.bfloat16, torch.device("cuda"))
    assert MOE.moe_path(32, *args, hw=H200) == "decode" and MOE.moe_path(512, *args, hw=H200) == "grouped"


@pytest.mark.parametrize("chosen", ["decode", "grouped"])
def test_the_launcher_follows_the_rule(chosen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without ``path``, the launcher asks moe_path (T, E, k, D, I, dtype, device, scheme, group) and runs the
    kernels of its answer."""
    asked = []

    def rule(*args: object) -> str:
        asked.append(args)
        return chosen

    monkeypatch.setattr(MOE, "moe_path", rule)
    ws = _weights(4, D, I, torch.float32)
    x = _tokens(7, D, torch.float32)
    launches = Launches(monkeypatch)
    got = moe(x, *ws, top_k=2)
    assert launches.path == chosen
    assert asked == [(7, 4, 2, D, I, torch.float32, x.device, None, 0)]
    want = get_op("moe").reference(x, *ws, top_k=2, softmax_first=True, renormalize=True, act="silu")
    torch.testing.assert_close(got, want, **TOL[torch.float32])


@pytest.mark.parametrize("path", ["grouped", "decode", None])
def test_no_tokens(path: str) -> None:
    """An empty step launches nothing and returns an empty result; the rule prices it without dividing by
    zero."""
    ws = _weights(4, D, I, torch.float32)
    with trace() as calls:
        got = moe(torch.empty(0, D, device=DEVICE), *ws, top_k=2, path=path)
    assert got.shape == (0, D) and calls == [("moe", "kernel")]


def test_unknown_path_is_an_error() -> None:
    ws = _weights(4, D, I, torch.float32)
    with pytest.raises(ValueError, match="path='prefill'"):
        moe(_tokens(2, D, torch.float32), *ws, top_k=2, path="prefill")


@pytest.mark.gpu
def test_grouped_step_replays_in_a_cuda_graph() -> None:
    """The grouped path's block table is torch ops on the device: a 64-token step captures and replays on new
    tokens (new routing, new blocks)."""
    ws = _weights(8, 64, 96, torch.bfloat16)
    x = torch.randn(64, 64, device="cuda", dtype=torch.bfloat16)
    moe(x, *ws, top_k=2, path="grouped")  # compile outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        y = moe(x, *ws, top_k=2, path="grouped")
    x.copy_(torch.randn_like(x))
    graph.replay()
    want = get_op("moe").reference(x, *ws, top_k=2, softmax_first=True, renormalize=True, act="silu")
    torch.testing.assert_close(y.float(), want.float(), **TOL[torch.bfloat16])


def test_grouped_kernels_compile_for_hopper_with_wgmma() -> None:
    """The interpreter never meets the compiler: compile the grouped kernels for sm_90 at the Mixtral-8x7B
    layer, bf16, with their default tiles (no GPU needed; a process without TRITON_INTERPRET): Hopper's wgmma
    on 64- and 128-row blocks, tiles copied by cp.async, for plain and int8 experts."""
    import json

    script = """
import importlib, json, re
from membound.backends.triton.kernels.compile_check import compile_ptx
M = importlib.import_module("membound.backends.triton.kernels.moe")
D, I = 4096, 14336
for scheme, wdt in ((0, "bf16"), (1, "i8")):
    gu, dn = M.GROUPED_TILES[(64, "gate_up")], M.GROUPED_TILES[(128, "down")]
    const = dict(INPUT_PRECISION="tf32", SCHEME=scheme, GROUP=1, RUNS=False)
    cases = [(M._moe_grouped_gate_up, gu, dict(x_ptr="*bf16", wg_ptr="*" + wdt, wu_ptr="*" + wdt, sg_ptr="*bf16",
              su_ptr="*bf16", h_ptr="*bf16", pair_ptr="*i64", offs_ptr="*i64", blk_expert_ptr="*i32",
              blk_start_ptr="*i64", bg_ptr="*bf16", bu_ptr="*bf16", E=8, M_BLOCKS=72, GROUP_M=72, I=I, K=D, KW=D, TOP_K=2, stride_x=D, stride_ge=2 * I * D, stride_gn=D,
              stride_ue=2 * I * D, stride_un=D, stride_sg=I, stride_sgn=1, stride_su=I, stride_sun=1, stride_h=I)),
             (M._moe_grouped_down, dn, dict(h_ptr="*bf16", wd_ptr="*" + wdt, sd_ptr="*bf16", y_ptr="*fp32",
              pair_ptr="*i64", weight_ptr="*fp32", offs_ptr="*i64", blk_expert_ptr="*i32", blk_start_ptr="*i64",
              bd_ptr="*bf16", E=8, M_BLOCKS=40, GROUP_M=8, D=D, I=I, KW=I, stride_h=I, stride_de=D * I, stride_dn=I, stride_sd=D, stride_sdn=1, stride_y=D))]
    for kernel, cfg, args in cases:
        args.update(const, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k)
        ptx, shared = compile_ptx(kernel, args, 90, num_warps=cfg.num_warps, num_stages=cfg.num_stages)
        print(json.dumps(dict(kernel=kernel.__name__, scheme=scheme, shared=shared,
                              wgmma=len(re.findall(r"wgmma\\.mma_async", ptx)),
                              mma_sync=len(re.findall(r"\\bmma\\.sync", ptx)), cp_async=ptx.count("cp.async.cg"))))
"""
    from _triton_interp import compiled_in_subprocess

    results = [json.loads(line) for line in compiled_in_subprocess(script).splitlines() if line.startswith("{")]
    assert len(results) == 4
    for r in results:
        assert r["wgmma"] > 0 and r["mma_sync"] == 0 and r["cp_async"] > 0, r
        assert r["shared"] <= 228 * 1024, r  # fits an H100/H200 SM
