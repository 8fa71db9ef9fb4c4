"""Experiment (one H200 run, under 4 minutes): Hopper techniques Triton exposes, tried on prefill flash attention,
against our kernel (``flash_attention``) and torch's SDPA. The question: which of TMA loads, automatic warp
specialisation and the two-loop causal split closes the gap (ours 431 / 481 TFLOP/s causal / full against
SDPA's 525 / 598 at B = 4, S = 4096, D = 128, GQA 32 / 8, bf16; flash_prefill_configs-nvidia-h200-2026-12-03).

    bash gpu/flash_hopper.sh                                                       # on the GPU machine
    PYTHONPATH=. python benches/experiments/flash_prefill_hopper.py --out DIR      # CUDA GPU, the same
    PYTHONPATH=. python benches/experiments/flash_prefill_hopper.py --ptx          # any machine: compile for sm_90
    PYTHONPATH=. python benches/experiments/flash_prefill_hopper.py --smoke        # CPU, Triton interpreter, tiny

One kernel, ``_attn_fwd``, in three load modes and with or without warp specialisation (``VARIANTS``):

- ``ptr``: plain pointer loads (the software pipeliner turns them into ``cp.async``);
- ``tma-dev``: tensor descriptors made in the kernel (``tl.make_tensor_descriptor``, one per head over its
  ``[S, D]`` rows, so the edges are zero-filled / clipped by the hardware; needs ``triton.set_allocator`` for the
  descriptors' global scratch); loads are ``desc.load([row, 0])``, lowered to TMA (``cp.async.bulk.tensor``);
- ``tma-host``: descriptors made on the host (``triton.tools.tensor_descriptor.TensorDescriptor``) over the
  flattened ``[B * H * S, D]`` tensors, as Triton's fused-attention tutorial does (needs ``S % BLOCK_M == 0``:
  a block's rows past its head would be the next head's);
- ``-ws``: the key loops as ``tl.range(lo, hi, BLOCK_N, warp_specialize=True)``: Triton's automatic warp
  specialisation (on sm_90 the ``hopper_warpspec`` pass of Triton >= 3.4: a producer warp group issuing the
  loads, consumer warp groups with ``setmaxnreg``-rebalanced registers doing the MMAs and the softmax).

Common to all: q is multiplied by ``scale * log2(e)`` once after its load (scores in log2 units, ``exp2``);
causal attention as two loops: the key tiles wholly below the diagonal with no mask, then the diagonal block's
tiles masked; causal row blocks start longest first. GQA reads the kv head ``h // (Hq / Hkv)`` in place.

Every Triton config is first compiled in its own child process (``precompile``; on the GPU through the launcher's
``warmup``, so the bench then hits Triton's cache): a warp-specialisation compile can trip an LLVM assertion
(Triton 3.9 does at BLOCK_M = 128) and must not take the run down. Its PTX features (wgmma, TMA
``cp.async.bulk.tensor``, ``setmaxnreg``) go into the JSON beside the timings.

Contenders per case: ``sdpa gqa`` (``enable_gqa=True``), ``sdpa expanded`` (K/V expanded to the query heads
beforehand, not timed), ``sdpa cudnn`` (expanded, the cuDNN backend forced: Hopper-native), ``ours`` (the
library kernel at ``pick_config``'s tiles) and each Triton (variant, tiles) of ``CONFIGS``. Every contender is
first checked against SDPA in fp32 on expanded K/V (bf16 tolerance: atol 2e-2, rtol 2e-2); one that fails is
FAIL and not timed. Time: CUDA events, median of 20 calls after 3 warm-ups. TFLOP/s = 4 B Hq S^2 D / time,
halved for causal. A contender that does not compile (or whose Triton lacks the API) is ``error`` /
``unsupported``, and the run goes on; past ``--budget-s`` the remaining Triton contenders are skipped.

Writes ``$OUT/flash_prefill_hopper.json`` (``--out``, default ``$OUT`` or ``./gpu-out``); prints the summary last.
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Optional

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

if "--smoke" in sys.argv:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch
import triton
import triton.language as tl

LOG2E = 1.4426950408889634
HQ, HKV = 32, 8
ATOL = RTOL = 2e-2

# what this Triton has (3.6 has all three; each variant needing a missing one reports "unsupported")
try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton < 3.4
    TensorDescriptor = None
HAS_DEVICE_DESC = hasattr(tl, "make_tensor_descriptor") and hasattr(triton, "set_allocator")
HAS_WS = "warp_specialize" in inspect.signature(tl.range.__init__).parameters

# variant -> (load mode, warp specialised)
VARIANTS = {
    "ptr": ("ptr", False),
    "tma-dev": ("desc", False),
    "tma-host": ("host", False),
    "tma-dev-ws": ("desc", True),
    "tma-host-ws": ("host", True),
}
# (variant, BLOCK_M, BLOCK_N, warps, stages), for both head dims: 12 Triton contenders a case. Warp-specialised
# ones at 4 warps: the sm_90 pass leaves a kernel of other than 4 warps alone (then it is plain tma-*); it adds a
# producer and splits the rows over two consumer warp groups (12 warps in all). Triton 3.9 compiles them at
# BLOCK_M = 64 and fails at 128 (kept as probes: 3.6 may differ); 3 stages at 64 x 64 pass the 227 KB of shared.
CONFIGS = [
    ("ptr", 128, 64, 8, 3), ("ptr", 128, 128, 8, 2),
    ("tma-dev", 128, 64, 8, 3), ("tma-dev", 128, 128, 8, 2), ("tma-dev", 128, 128, 8, 3),
    ("tma-host", 128, 64, 8, 3), ("tma-host", 128, 128, 8, 2),
    ("tma-dev-ws", 64, 64, 4, 2), ("tma-dev-ws", 64, 32, 4, 2), ("tma-dev-ws", 128, 64, 4, 2),
    ("tma-host-ws", 64, 64, 4, 2), ("tma-host-ws", 128, 128, 4, 2),
]
# (B, S, D, causal), most important first (the budget may cut the tail)
SHAPES = [(4, 4096, 128, True), (4, 4096, 128, False), (1, 8192, 128, True), (1, 8192, 128, False),
          (4, 4096, 64, True), (4, 4096, 64, False)]
MORE_SHAPES = [(16, 1024, 128, True), (16, 1024, 128, False)]


# ---------------------------------------------------------------------------------------------
# the kernel
# ---------------------------------------------------------------------------------------------
@triton.jit
def _tile(q, k_src, v_src, kv_row, n0, acc, l_i, m_i, rows, S,
          HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
          LOADS: tl.constexpr):
    """One key tile ``[n0, n0 + BLOCK_N)`` into the online softmax. q is pre-scaled: scores are in log2 units.
    ``MASKED``: keys past S (and, causal, past each row) score -inf; otherwise every key is visible to every row."""
    cols = n0 + tl.arange(0, BLOCK_N)
    ds = tl.arange(0, HEAD_DIM)
    if LOADS == "ptr":
        kv_ptrs = cols[:, None] * HEAD_DIM + ds[None, :]  # [BLOCK_N, D] rows of this head
        if MASKED:
            k = tl.load(k_src + kv_ptrs, mask=(cols < S)[:, None], other=0.0)
        else:
            k = tl.load(k_src + kv_ptrs)
    else:
        k = k_src.load([kv_row + n0, 0])  # TMA: [BLOCK_N, D]; past the head's S zero (tma-dev)
    qk = tl.dot(q, k.T)  # [BLOCK_M, BLOCK_N], log2 units
    if MASKED:
        visible = (cols < S)[None, :]
        if CAUSAL:
            visible = visible & (cols[None, :] <= rows[:, None])
        qk = tl.where(visible, qk, float("-inf"))
    # every row sees a key in its first tile (key 0 is below every diagonal), so m_new is finite: no nan guard
    m_new = tl.maximum(m_i, tl.max(qk, axis=1))
    p = tl.exp2(qk - m_new[:, None])
    alpha = tl.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    if LOADS == "ptr":
        if MASKED:
            v = tl.load(v_src + kv_ptrs, mask=(cols < S)[:, None], other=0.0)
        else:
            v = tl.load(v_src + kv_ptrs)
    else:
        v = v_src.load([kv_row + n0, 0])
    acc = tl.dot(p.to(q.dtype), v, acc * alpha[:, None])  # p stays in registers: wgmma's A operand
    return acc, l_i, m_new


@triton.jit
def _tiles(q, k_src, v_src, kv_row, lo, hi, acc, l_i, m_i, rows, S,
           HEAD_DIM: tl.constexpr, BLOCK_N: tl.constexpr, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
           LOADS: tl.constexpr, WARP_SPEC: tl.constexpr):
    """The key tiles ``[lo, hi)``; ``WARP_SPEC``: the loop is handed to Triton's automatic warp specialisation."""
    if WARP_SPEC:
        for n0 in tl.range(lo, hi, BLOCK_N, warp_specialize=True):
            n0 = tl.multiple_of(n0, BLOCK_N)
            acc, l_i, m_i = _tile(q, k_src, v_src, kv_row, n0, acc, l_i, m_i, rows, S, HEAD_DIM, BLOCK_N, MASKED,
                                  CAUSAL, LOADS)
    else:
        for n0 in range(lo, hi, BLOCK_N):
            n0 = tl.multiple_of(n0, BLOCK_N)
            acc, l_i, m_i = _tile(q, k_src, v_src, kv_row, n0, acc, l_i, m_i, rows, S, HEAD_DIM, BLOCK_N, MASKED,
                                  CAUSAL, LOADS)
    return acc, l_i, m_i


@triton.jit
def _attn_fwd(q_ref, k_ref, v_ref, o_ref, qk_scale, HQ, HKV, S,
              HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, CAUSAL: tl.constexpr,
              LOADS: tl.constexpr, WARP_SPEC: tl.constexpr):
    """Prefill attention, q ``[B, HQ, S, D]``, k / v ``[B, HKV, S, D]``, o like q, all contiguous. ``LOADS``:
    ``"ptr"`` (the refs are pointers), ``"desc"`` (pointers; descriptors made here, one per head), ``"host"``
    (the refs are host-made descriptors over ``[B * H * S, D]``; S a multiple of BLOCK_M)."""
    tl.static_assert(BLOCK_M % BLOCK_N == 0, "the diagonal block must be whole key tiles")
    # causal row blocks longest first: the short ones fill the tail of the grid
    pid_m = tl.program_id(0)
    if CAUSAL:
        pid_m = tl.num_programs(0) - 1 - pid_m
    bh = tl.program_id(1)  # b * HQ + h
    bkv = (bh // HQ) * HKV + (bh % HQ) // (HQ // HKV)  # b * HKV + kv head: GQA read in place
    row0 = pid_m * BLOCK_M
    rows = row0 + tl.arange(0, BLOCK_M)
    ds = tl.arange(0, HEAD_DIM)
    if LOADS == "ptr":
        q_base = q_ref + bh.to(tl.int64) * S * HEAD_DIM
        k_src = k_ref + bkv.to(tl.int64) * S * HEAD_DIM
        v_src = v_ref + bkv.to(tl.int64) * S * HEAD_DIM
        q = tl.load(q_base + rows[:, None] * HEAD_DIM + ds[None, :], mask=(rows < S)[:, None], other=0.0)
        kv_row = 0
    elif LOADS == "desc":
        q_desc = tl.make_tensor_descriptor(q_ref + bh.to(tl.int64) * S * HEAD_DIM, shape=[S, HEAD_DIM],
                                           strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
        k_src = tl.make_tensor_descriptor(k_ref + bkv.to(tl.int64) * S * HEAD_DIM, shape=[S, HEAD_DIM],
                                          strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
        v_src = tl.make_tensor_descriptor(v_ref + bkv.to(tl.int64) * S * HEAD_DIM, shape=[S, HEAD_DIM],
                                          strides=[HEAD_DIM, 1], block_shape=[BLOCK_N, HEAD_DIM])
        q = q_desc.load([row0, 0])
        kv_row = 0
    else:
        k_src = k_ref
        v_src = v_ref
        q = q_ref.load([bh * S + row0, 0])
        kv_row = bkv * S
    # q stays in registers for the whole loop, scaled once: scores come out of the MMA in log2 units
    q = (q.to(tl.float32) * qk_scale).to(q.dtype)
    m_i = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)
    # [0, full_hi): tiles every row of the block sees whole; [full_hi, hi): the diagonal block / the tail past S
    if CAUSAL:
        full_hi = row0
        hi = tl.minimum(row0 + BLOCK_M, S)
    else:
        full_hi = (S // BLOCK_N) * BLOCK_N
        hi = S
    acc, l_i, m_i = _tiles(q, k_src, v_src, kv_row, 0, full_hi, acc, l_i, m_i, rows, S, HEAD_DIM, BLOCK_N, False,
                           CAUSAL, LOADS, WARP_SPEC)
    acc, l_i, m_i = _tiles(q, k_src, v_src, kv_row, full_hi, hi, acc, l_i, m_i, rows, S, HEAD_DIM, BLOCK_N, True,
                           CAUSAL, LOADS, WARP_SPEC)
    o = (acc / l_i[:, None]).to(q.dtype)
    if LOADS == "ptr":
        o_base = o_ref + bh.to(tl.int64) * S * HEAD_DIM
        tl.store(o_base + rows[:, None] * HEAD_DIM + ds[None, :], o, mask=(rows < S)[:, None])
    elif LOADS == "desc":
        o_desc = tl.make_tensor_descriptor(o_ref + bh.to(tl.int64) * S * HEAD_DIM, shape=[S, HEAD_DIM],
                                           strides=[HEAD_DIM, 1], block_shape=[BLOCK_M, HEAD_DIM])
        o_desc.store([row0, 0], o)  # rows past S clipped
    else:
        o_ref.store([bh * S + row0, 0], o)


# ---------------------------------------------------------------------------------------------
# launcher
# ---------------------------------------------------------------------------------------------
def unsupported(variant: str, s: int, block_m: int) -> Optional[str]:
    """Why this Triton / shape cannot run ``variant`` (None: it can)."""
    loads, ws = VARIANTS[variant]
    if loads == "desc" and not HAS_DEVICE_DESC:
        return f"triton {triton.__version__} lacks tl.make_tensor_descriptor / triton.set_allocator"
    if loads == "host" and TensorDescriptor is None:
        return f"triton {triton.__version__} lacks triton.tools.tensor_descriptor"
    if loads == "host" and s % block_m:
        return f"host descriptors over [B*H*S, D] need S % BLOCK_M == 0 (S = {s})"
    if ws and not HAS_WS:
        return f"triton {triton.__version__}: tl.range has no warp_specialize"
    return None


_ALLOCATOR_SET = False


def _set_allocator(device: torch.device) -> None:
    """Device-made descriptors live in global scratch that Triton asks the allocator for, per launch."""
    global _ALLOCATOR_SET
    if not _ALLOCATOR_SET:
        triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device=device))
        _ALLOCATOR_SET = True


def hopper_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, variant: str,
                     block_m: int, block_n: int, num_warps: int, num_stages: int, warmup: bool = False) -> Any:
    """``_attn_fwd`` as ``variant`` at these tiles: q ``[B, Hq, S, D]``, k / v ``[B, Hkv, S, D]``, contiguous.
    ``warmup``: compile (into Triton's on-disk cache), launch nothing, return the compiled kernel."""
    b, hq, s, d = q.shape
    hkv = k.shape[1]
    reason = unsupported(variant, s, block_m)
    if reason:
        raise NotImplementedError(reason)
    loads, ws = VARIANTS[variant]
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    o = torch.empty_like(q)
    refs: tuple[Any, ...] = (q, k, v, o)
    if loads == "desc":
        _set_allocator(q.device)
    elif loads == "host":
        flat = [t.view(-1, d) for t in (q, k, v, o)]
        refs = tuple(TensorDescriptor.from_tensor(t, [blk, d])
                     for t, blk in zip(flat, (block_m, block_n, block_n, block_m)))
    grid = (triton.cdiv(s, block_m), b * hq)
    meta = dict(HEAD_DIM=d, BLOCK_M=block_m, BLOCK_N=block_n, CAUSAL=causal, LOADS=loads, WARP_SPEC=ws,
                num_warps=num_warps, num_stages=num_stages)
    if warmup:
        return _attn_fwd.warmup(*refs, LOG2E / math.sqrt(d), hq, hkv, s, grid=grid, **meta)
    _attn_fwd[grid](*refs, LOG2E / math.sqrt(d), hq, hkv, s, **meta)
    return o


def label(variant: str, bm: int, bn: int, w: int, st: int) -> str:
    return f"{variant} {bm}x{bn} w{w} s{st}"


# ---------------------------------------------------------------------------------------------
# --ptx: compile every Triton contender for sm_90 on any machine and read its PTX
# ---------------------------------------------------------------------------------------------
PTX_FEATURES = {
    "wgmma": r"wgmma\.mma_async",                     # Hopper warpgroup MMA
    "mma.sync": r"\bmma\.sync",                       # Ampere-style MMA
    "tma_load": r"cp\.async\.bulk\.tensor\.\dd\.shared::\w+\.global",  # TMA: global -> shared
    "tma_store": r"cp\.async\.bulk\.tensor\.\dd\.global\.shared",      # TMA: shared -> global
    "cp.async": r"cp\.async\.(?:ca|cg)",              # Ampere async copies (pointer loads, pipelined)
    "setmaxnreg": r"setmaxnreg",                      # warp specialisation: register rebalancing
    "mbarrier": r"mbarrier\.",
    "tensormap": r"tensormap\.|fence\.proxy\.tensormap",  # device-side descriptor creation
}


def ptx_features(ptx: str) -> dict[str, int]:
    return {name: len(re.findall(pattern, ptx)) for name, pattern in PTX_FEATURES.items()}


def compile_variant(variant: str, d: int, causal: bool, bm: int, bn: int, warps: int, stages: int,
                    arch: int = 90) -> tuple[str, dict[str, Any]]:
    """(PTX, metadata) of one contender compiled for ``arch`` without a GPU, specialised as a launch at
    HQ = 32, HKV = 8, S = 4096 is (pointers 16-byte aligned; HQ and S divisible by 16), as
    ``compile_check.compile_ptx`` does for the library kernels."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    loads, ws = VARIANTS[variant]
    signature: dict[str, str] = {}
    aligned = [["tt.divisibility", 16]]
    attrs: dict[tuple[int, ...], list[list[Any]]] = {(5,): aligned, (7,): aligned}  # HQ, S
    for i, name in enumerate(("q_ref", "k_ref", "v_ref", "o_ref")):
        if loads == "host":
            block = bm if name in ("q_ref", "o_ref") else bn
            signature[name] = f"tensordesc<bf16[{block},{d}]>"
        else:
            signature[name] = "*bf16"
            attrs[(i,)] = aligned
    signature.update(qk_scale="fp32", HQ="i32", HKV="i32", S="i32")
    constants = dict(HEAD_DIM=d, BLOCK_M=bm, BLOCK_N=bn, CAUSAL=causal, LOADS=loads, WARP_SPEC=ws)
    signature.update({name: "constexpr" for name in constants})
    src = ASTSource(fn=_attn_fwd, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                              options=dict(num_warps=warps, num_stages=stages))
    meta = compiled.metadata
    return compiled.asm["ptx"], dict(shared=int(meta.shared), num_warps=int(meta.num_warps))


def _compile_one(spec: dict[str, Any]) -> None:
    """``--compile-one``: one config at each (head dim, causal), a JSON line each (the child of ``precompile``)."""
    variant, bm, bn, w, st = spec["cfg"]
    for d, causal in spec["cases"]:
        row: dict[str, Any] = dict(d=d, causal=causal)
        t0 = time.perf_counter()
        try:
            kernel = None
            if spec["jit"]:  # on the GPU: compile as the launch will, so the bench finds it in Triton's cache
                try:
                    q = torch.empty(1, HQ, 4096, d, device="cuda", dtype=torch.bfloat16)
                    kv = torch.empty(1, HKV, 4096, d, device="cuda", dtype=torch.bfloat16)
                    kernel = hopper_attention(q, kv, kv, causal=causal, variant=variant, block_m=bm, block_n=bn,
                                              num_warps=w, num_stages=st, warmup=True)
                except Exception as e:  # noqa: BLE001 - then the plain compile says whether it compiles at all
                    row["warmup_error"] = f"{type(e).__name__}: {str(e)[:200]}"
            if kernel is not None:
                ptx, meta = kernel.asm["ptx"], dict(shared=int(kernel.metadata.shared),
                                                    num_warps=int(kernel.metadata.num_warps))
            else:
                ptx, meta = compile_variant(variant, d, causal, bm, bn, w, st, spec["arch"])
            row.update(status="ok", **meta, **ptx_features(ptx))
        except Exception as e:  # noqa: BLE001 - a compile failure is this config's result
            row.update(status="error", error=f"{type(e).__name__}: {str(e)[:300]}")
        row["compile_s"] = round(time.perf_counter() - t0, 2)
        print(json.dumps(row), flush=True)


def precompile(configs: list[tuple], cases: list[tuple[int, bool]], arch: int, jit: bool = False,
               timeout_s: float = 150.0) -> dict[tuple[str, int, bool], dict[str, Any]]:
    """Compile every config at every (head dim, causal) for ``arch`` (``jit``: through the launcher's
    ``warmup``, on the GPU at hand), one child process a config, all at once:
    the warp-specialisation pass can fail an LLVM assertion (it does in Triton 3.9 at BLOCK_M = 128), which may
    abort the process; here it ends a child and the config is an error. (status, PTX features) by (label, d,
    causal)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    procs = []
    for cfg in configs:
        spec = json.dumps(dict(cfg=list(cfg), cases=[list(c) for c in cases], arch=arch, jit=jit))
        procs.append((cfg, subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--compile-one", spec],
                                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
    deadline = time.monotonic() + timeout_s
    results: dict[tuple[str, int, bool], dict[str, Any]] = {}
    for cfg, proc in procs:
        try:
            out, err = proc.communicate(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        got = {}
        for line in out.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                got[(r["d"], r["causal"])] = r
        # what the child said last, for a child that died: the assertion or MLIR error
        why = [ln.strip() for ln in err.splitlines() if "Assertion" in ln or "error:" in ln][:2]
        for d, causal in cases:
            row = got.get((d, causal)) or dict(
                d=d, causal=causal, status="error",
                error=f"compile process ended (rc {proc.returncode}) before this case: {' | '.join(why)[:300]}")
            results[(label(*cfg), d, causal)] = row
    return results


def ptx_check(arch: int) -> list[dict[str, Any]]:
    cases = [(128, True), (128, False), (64, True), (64, False)]
    todo = [cfg for cfg in CONFIGS if not unsupported(cfg[0], 4096, cfg[1])]
    compiled = precompile(todo, cases, arch)
    rows = []
    for d, causal in cases:
        for cfg in CONFIGS:
            name = label(*cfg)
            reason = unsupported(cfg[0], 4096, cfg[1])
            row = dict(status="unsupported", error=reason) if reason else dict(compiled[(name, d, causal)])
            row.update(contender=name, d=d, causal=causal)
            rows.append(row)
            feats = " ".join(f"{k}={row[k]}" for k in PTX_FEATURES if row.get(k))
            print(f"d{d} {'causal' if causal else 'full  '} {name:26s} {row['status']:11s} "
                  f"warps={row.get('num_warps', '-')} smem={row.get('shared', '-')} {feats} "
                  f"{row.get('error', '')[:160]}", flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# --smoke: the Triton interpreter at a tiny odd size, fp32 and fp16
# ---------------------------------------------------------------------------------------------
def smoke() -> list[dict[str, Any]]:
    import torch.nn.functional as F

    rows = []
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.float16):
        for s in (130, 128):  # odd (tails masked) and a whole number of 64-row blocks (host descriptors)
            b, hq, hkv, d = 1, 4, 2, 64
            q, k, v = (torch.randn(b, h, s, d, dtype=dtype) for h in (hq, hkv, hkv))
            for causal in (True, False):
                ref = F.scaled_dot_product_attention(q.float(), k.float().repeat_interleave(hq // hkv, 1),
                                                     v.float().repeat_interleave(hq // hkv, 1), is_causal=causal)
                for variant in VARIANTS:
                    for bm, bn in ((32, 16), (64, 64)):
                        name = label(variant, bm, bn, 4, 2)
                        row: dict[str, Any] = dict(contender=name, dtype=str(dtype), s=s, causal=causal)
                        try:
                            out = hopper_attention(q, k, v, causal=causal, variant=variant, block_m=bm, block_n=bn,
                                                   num_warps=4, num_stages=2)
                            err = (out.float() - ref).abs().max().item()
                            ok = torch.allclose(out.float(), ref, atol=ATOL, rtol=RTOL)
                            row.update(status="ok" if ok else "FAIL", max_err=err)
                        except NotImplementedError as e:
                            row.update(status="unsupported", error=str(e))
                        except Exception as e:  # noqa: BLE001 - the interpreter may not run descriptors
                            row.update(status="error", error=f"{type(e).__name__}: {str(e)[:200]}")
                        rows.append(row)
                        print(f"{str(dtype):14s} s{s} {'causal' if causal else 'full  '} {name:24s} "
                              f"{row['status']:11s} {row.get('max_err', '')!s:24s} {row.get('error', '')}",
                              flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# the GPU run
# ---------------------------------------------------------------------------------------------
def _time_ms(fn: Callable[[], Any], reps: int = 20, warmup: int = 3) -> float:
    """Median over ``reps`` calls of CUDA-event time, after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def bench(shapes: list[tuple[int, int, int, bool]], budget_s: float, only: Optional[list[str]],
          record: dict[str, Any], path: Path) -> list[dict]:
    """Every contender at every shape; ``record`` (rows so far) rewritten to ``path`` after each case, so a
    process that dies keeps what it measured."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from membound.backends.triton.kernels.flash_attention import flash_attention, pick_config

    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = record.setdefault("rows", [])
    configs = [cfg for cfg in CONFIGS if not only or cfg[0] in only]
    # compile every Triton contender first, each in a child process (a crashing compile ends the child, not us)
    major, minor = torch.cuda.get_device_capability()
    todo = [cfg for cfg in configs if not unsupported(cfg[0], 4096, cfg[1])]
    compiled = precompile(todo, sorted({(d, causal) for _, _, d, causal in shapes}), 10 * major + minor, jit=True)
    record["compile"] = [dict(contender=key[0], **row) for key, row in compiled.items()]
    print(f"precompiled {len(todo)} configs in {time.perf_counter() - t_start:.0f} s; failed: "
          f"{sorted({k[0] for k, r in compiled.items() if r['status'] != 'ok'})}", flush=True)
    dev = torch.device("cuda")
    sdpa = F.scaled_dot_product_attention
    for b, s, d, causal in shapes:
        torch.manual_seed(0)
        q = torch.randn(b, HQ, s, d, device=dev, dtype=torch.bfloat16)
        k = torch.randn(b, HKV, s, d, device=dev, dtype=torch.bfloat16)
        v = torch.randn(b, HKV, s, d, device=dev, dtype=torch.bfloat16)
        ke, ve = k.repeat_interleave(HQ // HKV, 1), v.repeat_interleave(HQ // HKV, 1)
        ref = sdpa(q.float(), ke.float(), ve.float(), is_causal=causal)  # fp32 reference
        flops = 4.0 * b * HQ * s * s * d / (2 if causal else 1)
        case = f"b{b} s{s} d{d} {'causal' if causal else 'full'}"

        def cudnn() -> torch.Tensor:
            with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                return sdpa(q, ke, ve, is_causal=causal)

        pick = pick_config(s, d, torch.bfloat16, False)
        contenders: list[tuple[str, Optional[tuple], Callable[[], torch.Tensor]]] = [
            ("sdpa gqa", None, lambda: sdpa(q, k, v, is_causal=causal, enable_gqa=True)),
            ("sdpa expanded", None, lambda: sdpa(q, ke, ve, is_causal=causal)),
            ("sdpa cudnn", None, cudnn),
            (f"ours {pick.block_m}x{pick.block_n} w{pick.num_warps} s{pick.num_stages}", None,
             lambda: flash_attention(q, k, v, causal=causal, config=pick)),
        ]
        for variant, bm, bn, w, st in configs:
            contenders.append((label(variant, bm, bn, w, st), (variant, bm, bn, w, st),
                               lambda cfg=(variant, bm, bn, w, st): hopper_attention(
                                   q, k, v, causal=causal, variant=cfg[0], block_m=cfg[1], block_n=cfg[2],
                                   num_warps=cfg[3], num_stages=cfg[4])))
        for name, cfg, fn in contenders:
            row: dict[str, Any] = dict(case=case, b=b, s=s, d=d, causal=causal, contender=name, flops=flops)
            elapsed = time.perf_counter() - t_start
            if cfg is not None and elapsed > budget_s:
                row.update(status="skipped", error=f"budget: {elapsed:.0f} s > {budget_s:.0f} s")
            elif cfg is not None and unsupported(cfg[0], s, cfg[1]):
                row.update(status="unsupported", error=unsupported(cfg[0], s, cfg[1]))
            elif cfg is not None and compiled.get((name, d, causal), {}).get("status") != "ok":
                row.update(status="error", error=compiled.get((name, d, causal), {}).get("error", "not compiled"))
            else:
                if cfg is not None:
                    ptx = compiled[(name, d, causal)]
                    row["ptx"] = {k: ptx[k] for k in ("num_warps", "shared", *PTX_FEATURES) if k in ptx}
                try:
                    t0 = time.perf_counter()
                    out = fn()
                    torch.cuda.synchronize()
                    row["first_call_s"] = round(time.perf_counter() - t0, 2)  # the compile, for Triton ones
                    err = (out.float() - ref).abs().max().item()
                    ok = bool(torch.allclose(out.float(), ref, atol=ATOL, rtol=RTOL))
                    row.update(max_err=err, status="ok" if ok else "FAIL")
                    del out
                    if ok:
                        ms = _time_ms(fn)
                        row.update(ms=ms, tflops=flops / ms / 1e9)
                except Exception as e:  # noqa: BLE001 - a compile / launch failure is reported, the run goes on
                    row.update(status="error", error=f"{type(e).__name__}: {str(e)[:400]}")
                    traceback.print_exc(limit=2)
            rows.append(row)
            tf = f"{row['tflops']:7.1f} TFLOP/s {row['ms']:8.3f} ms" if "tflops" in row else f"{'':25s}"
            print(f"{case:22s} {name:26s} {row['status']:11s} {tf} err {row.get('max_err', float('nan')):.2e} "
                  f"{row.get('error', '')[:200]}", flush=True)
        del q, k, v, ke, ve, ref
        torch.cuda.empty_cache()
        path.write_text(json.dumps(record, indent=1) + "\n")
    return rows


def summary(rows: list[dict[str, Any]]) -> None:
    """Per case: SDPA (gqa), cuDNN, ours, and the best Triton variant, with ratios to SDPA gqa."""
    print(f"\n{'case':22s} {'sdpa':>6s} {'cudnn':>6s} {'ours':>6s} {'x':>5s}  {'best variant':26s} {'TF/s':>6s} "
          f"{'x':>5s}  failed/errors")
    for case in dict.fromkeys(r["case"] for r in rows):
        rs = [r for r in rows if r["case"] == case]

        def tf(prefix: str) -> float:
            return max((r.get("tflops", 0.0) for r in rs if r["contender"].startswith(prefix)), default=0.0)

        ref, ours = tf("sdpa gqa"), tf("ours")
        triton_rows = [r for r in rs if not r["contender"].startswith(("sdpa", "ours"))]
        best = max((r for r in triton_rows if "tflops" in r), key=lambda r: r["tflops"], default=None)
        bad = [f"{r['contender']}: {r['status']}" for r in triton_rows if r["status"] not in ("ok",)]
        x = (lambda t: f"{t / ref:5.2f}" if ref else "  -  ")
        print(f"{case:22s} {ref:6.1f} {tf('sdpa cudnn'):6.1f} {ours:6.1f} {x(ours)}  "
              f"{best['contender'] if best else '-':26s} {best['tflops'] if best else 0.0:6.1f} "
              f"{x(best['tflops']) if best else '  -  '}  {len(bad)}")
    names = list(dict.fromkeys(r["contender"] for r in rows if not r["contender"].startswith(("sdpa", "ours"))))
    print(f"\n{'contender':26s} " + " ".join(f"{c[:14]:>14s}" for c in dict.fromkeys(r["case"] for r in rows)))
    for name in names:
        cells = []
        for case in dict.fromkeys(r["case"] for r in rows):
            r = next((r for r in rows if r["case"] == case and r["contender"] == name), None)
            cells.append(f"{r['tflops']:14.1f}" if r and "tflops" in r else f"{(r or {}).get('status', '-'):>14s}")
        print(f"{name:26s} " + " ".join(cells))


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ptx", action="store_true", help="compile each Triton contender for --arch, list PTX features")
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--smoke", action="store_true", help="CPU, Triton interpreter, S = 130 / 128, fp32 / fp16")
    p.add_argument("--more", action="store_true", help="add B = 16, S = 1024 at head dim 128")
    p.add_argument("--variants", default="", help="comma-separated subset of " + ",".join(VARIANTS))
    p.add_argument("--budget-s", type=float, default=200.0, help="skip the remaining Triton contenders past this")
    p.add_argument("--out", default=os.environ.get("OUT", "./gpu-out"))
    p.add_argument("--compile-one", default=None, help=argparse.SUPPRESS)  # precompile's child processes
    args = p.parse_args(argv)
    if args.compile_one:
        _compile_one(json.loads(args.compile_one))
        return 0
    record: dict[str, Any] = dict(triton=triton.__version__, torch=torch.__version__, has_device_desc=HAS_DEVICE_DESC,
                                  has_host_desc=TensorDescriptor is not None, has_warp_specialize=HAS_WS,
                                  atol=ATOL, rtol=RTOL)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.ptx:
        path = out / "flash_prefill_hopper_ptx.json"
        record.update(mode="ptx", arch=args.arch, rows=ptx_check(args.arch))
    elif args.smoke:
        path = out / "flash_prefill_hopper_smoke.json"
        record.update(mode="smoke", rows=smoke())
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: use --ptx or --smoke here")
            return 2
        path = out / "flash_prefill_hopper.json"
        only = [v for v in args.variants.split(",") if v] or None
        record.update(mode="bench", gpu=torch.cuda.get_device_name(), capability=torch.cuda.get_device_capability(),
                      method="CUDA events, median of 20 after 3 warm-ups; FLOPs 4*B*Hq*S*S*D, halved for causal")
        bench(SHAPES + (MORE_SHAPES if args.more else []), args.budget_s, only, record, path)
        summary(record["rows"])
    path.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
