"""Compile the library kernels for a GPU target on any machine (no GPU needed) and inspect the PTX.

    python -m membound.backends.triton.kernels.compile_check            # table, sm_90 (H100/H200)
    python -m membound.backends.triton.kernels.compile_check --json     # one JSON object per line
    python -m membound.backends.triton.kernels.compile_check --regs     # registers and spills (bundled ptxas)

The Triton interpreter runs kernels as numpy and never meets the compiler, so it cannot tell whether
a kernel compiles, nor whether its loads are vectorised. This check compiles each kernel at a
decode-shaped configuration the way a launch would (pointers 16-byte aligned; integer arguments
divisible by 16 marked so, arguments equal to 1 made constants, as ``triton.jit`` specialises them)
and counts the global loads in the PTX: a kernel meant to stream memory should issue 16-byte vector
loads or ``cp.async`` copies, never 2-byte scalar ones. Needs ``TRITON_INTERPRET`` unset (the
compiler cannot build interpreted functions).
"""

from __future__ import annotations

import argparse
import collections
import inspect
import json
import re
import sys
from dataclasses import asdict, dataclass
from typing import Any, Optional

STREAMING = ("_linear_small_m", "_flash_decoding_split", "_attn_block")


@dataclass
class Compiled:
    kernel: str
    config: str
    shared_bytes: int
    loads: dict[str, int]
    cp_async: int
    mma: int
    wgmma: int = 0  # of which Hopper warpgroup MMAs
    pdl_wait: bool = False  # griddepcontrol.wait: the kernel honours programmatic dependent launch
    # 2-byte scalar loads allowed: a GEMV's residual epilogue reads its BLOCK_M x BLOCK_N output tile
    # (4 to 512 values a program, beside megabytes of streamed weight) in the accumulator's layout; linear_rope's
    # epilogue its rows' cos and sin at the tile's columns (four such loads); attention sinks, the rows' logits
    tile_loads: int = 0

    @property
    def vectorised(self) -> bool:
        """Memory comes in 16-byte vectors or async copies, and no 2-byte scalar load is left (but the
        output tile's, ``tile_loads``)."""
        wide = sum(n for op, n in self.loads.items() if ".v4." in op) + self.cp_async
        return wide > 0 and self.loads.get("ld.global.b16", 0) <= self.tile_loads


def compile_ptx(kernel: Any, args: dict[str, Any], arch: int = 90, **options: Any) -> tuple[str, int]:
    """(PTX, shared bytes) of ``kernel`` at ``args``: pointers as type strings ("*bf16"), ints and floats as
    example values, constexprs as their values."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    if not isinstance(kernel, JITFunction):
        raise RuntimeError("compile_check: the kernels were made by the Triton interpreter; unset TRITON_INTERPRET")
    signature: dict[str, str] = {}
    constants: dict[str, Any] = {}
    attrs: dict[tuple[int, ...], list[list[Any]]] = {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        if name not in args and param.default is not inspect.Parameter.empty:
            args = {**args, name: param.default}  # an argument the launch may leave out: its default
        value = args[name]
        aligned = [["tt.divisibility", 16]]
        if value is None or param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool)
                                                   and value == 1):
            # (None: a pointer the launch leaves out, as triton.jit makes it a constant)
            signature[name], constants[name] = "constexpr", value  # triton.jit turns ints equal to 1 into constants
        elif isinstance(value, str):
            signature[name], attrs[(i,)] = value, aligned  # a pointer; torch allocations are 16-byte aligned
        elif isinstance(value, float):
            signature[name] = "fp32"
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = aligned
    src = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return compiled.asm["ptx"], int(compiled.metadata.shared)


def ptxas_info(ptx: str, arch: int = 90) -> Optional[tuple[int, int]]:
    """(registers a thread, spilled bytes stored) of ``ptx`` as the ptxas bundled with Triton assembles it
    (``-v``), or None when no bundled ptxas takes this PTX version. The newest one first (``ptxas-blackwell``):
    an older ptxas refuses PTX of a newer ISA version. Occupancy without a GPU: 65536 registers an SM."""
    import os
    import subprocess
    import tempfile

    import triton

    bin_dir = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        for name in ("ptxas-blackwell", "ptxas"):
            exe = os.path.join(bin_dir, name)
            if not os.path.exists(exe):
                continue
            run = subprocess.run([exe, f"-arch=sm_{arch}a" if arch >= 90 else f"-arch=sm_{arch}", "-v", path,
                                  "-o", os.devnull], capture_output=True, text=True)
            regs = re.search(r"Used (\d+) registers", run.stderr)
            if run.returncode == 0 and regs:
                spill = re.search(r"(\d+) bytes spill stores", run.stderr)
                return int(regs.group(1)), int(spill.group(1)) if spill else 0
    return None


def _inspect(kernel: Any, label: str, args: dict[str, Any], arch: int, **options: Any) -> Compiled:
    ptx, shared = compile_ptx(kernel, args, arch, **options)
    loads = dict(collections.Counter(re.findall(r"ld\.global[\w.]*", ptx)))
    mma = len(re.findall(r"\bmma\.|wgmma\.mma_async", ptx))  # tensor cores: mma (Ampere) or wgmma (Hopper)
    # the residual epilogue reads its output tile; linear_rope's reads cos and sin at each pair's two columns
    tile = 1 if args.get("RESIDUAL") else 4 if args.get("ROPE") else 0
    if kernel.__name__ == "_attn_block":
        tile = 5  # the rotation's cos and sin at each pair's two columns, and the residual's rows
    if kernel.__name__ == "_mlp_block":
        tile = 2  # the residual's rows (in the first item's copy of the code and the loop's)
    if args.get("HAS_SINKS"):
        tile += 2  # the rows' sink logits (one a query head: 16 values, once a program)
    return Compiled(kernel.__name__, label, shared, loads, ptx.count("cp.async."), mma,
                    len(re.findall(r"wgmma\.mma_async", ptx)), "griddepcontrol.wait" in ptx, tile)


def cases() -> list[tuple[Any, str, dict[str, Any], dict[str, Any]]]:
    """(kernel, label, args, launch options) at Llama-3-8B decode shapes, bf16."""
    from membound.backends.triton.kernels.cache_write import _cache_write
    from membound.backends.triton.kernels.decode_attention import _flash_decoding_split, merge_tile
    from membound.backends.triton.kernels.embedding import _embedding
    from membound.backends.triton.kernels.linear import _linear_small_m
    from membound.backends.triton.kernels.norm import _rms_norm

    out: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
    n, k = 6144, 4096  # merged q/k/v
    # (M, tensor cores, tiles, split, gated, with a norm prologue, with a residual epilogue, the norm's partial
    # sums of squares: "" none, "in" read for the norm, "out" written for the next norm)
    for m, use_dot, block_m, block_n, block_k, split, gated, norm, res, ss in (
            (1, False, 1, 4, 512, 1, False, False, False, ""),
            (1, False, 1, 4, 512, 2, True, False, False, ""),
            (8, True, 16, 32, 128, 2, False, False, False, ""),
            (8, True, 16, 32, 128, 2, True, False, False, ""),
            (1, False, 1, 4, 512, 1, False, True, False, ""),
            (1, False, 1, 4, 512, 2, True, False, True, ""),
            (8, True, 16, 32, 128, 2, False, True, True, ""),
            (1, False, 1, 4, 512, 1, False, True, False, "in"),
            (8, True, 16, 32, 128, 1, False, True, False, "in"),
            (1, False, 1, 4, 512, 1, False, False, True, "out"),
            (1, False, 1, 4, 512, 2, True, False, True, "out"),
            (8, True, 16, 32, 128, 2, True, False, True, "out"),
            (8, True, 16, 32, 128, 1, False, False, True, "out"),
            # linear_glu (gate/up merged: 28672 x 4096 at 8B; each program half gate, half up rows)
            (1, False, 1, 2, 512, 1, "glu", False, False, ""),
            (1, False, 1, 2, 512, 2, "glu", False, False, ""),
            (8, True, 16, 16, 128, 2, "glu", False, False, ""),
            # rms_norm_linear_glu_sumsq (the same, x normed from its producer's partials)
            (1, False, 1, 2, 512, 1, "glu", True, False, "in"),
            (8, True, 16, 16, 128, 2, "glu", True, False, "in"),
            # linear_rope (q/k/v merged: q and k rotated, 5120 columns of head dim 128; pairs of a head's columns)
            (1, False, 1, 2, 512, 1, "rope", False, False, ""),
            (1, False, 1, 2, 512, 2, "rope", False, False, ""),
            (8, True, 16, 16, 128, 2, "rope", False, False, ""),
            # rms_norm_linear_rope_sumsq (the same, x normed from its producer's partials: at M = 8 into the
            # pre-gate scratch first)
            (1, False, 1, 2, 512, 1, "rope", True, False, "in"),
            (1, False, 1, 2, 512, 2, "rope", True, False, "in"),
            (8, True, 16, 16, 128, 2, "rope", True, False, "in")):
        glu, rope, gated = gated == "glu", gated == "rope", gated is True
        ns = k // 4  # the partials of a 4096-wide row
        args = dict(x_ptr="*bf16", u_ptr="*bf16", w_ptr="*bf16", w2_ptr="*bf16", b_ptr="*bf16", out_ptr="*bf16",
                    part_ptr="*fp32", lock_ptr="*i32", g_ptr="*bf16", nw_ptr="*bf16", r_ptr="*bf16", ss_ptr="*fp32",
                    M=m, N=n, K=k,
                    K_PER_SPLIT=k // split, NS=ns, stride_xm=k, stride_um=k, stride_wn=k, stride_split=m * n,
                    stride_rm=n, stride_sm=ns if ss == "in" else n // 4, eps=1e-5, BLOCK_M=block_m, BLOCK_N=block_n,
                    BLOCK_K=block_k, SPLIT_K=split, HAS_BIAS=False, USE_DOT=use_dot, INPUT_PRECISION="tf32",
                    USE_PDL=True, PREFETCH=not use_dot, GATED=gated, EARLY_W=not gated,
                    PRE_GATE=(gated or norm) and use_dot, NORM=norm, RESIDUAL=res, SUMSQ_IN=ss == "in",
                    SUMSQ_OUT=ss == "out", SUMSQ_COLUMNS=4, SS_CHUNK=min(ns, max(16, 4096 // block_m)), GLU=glu,
                    GATE_ROWS=min(m, block_m))
        if rope:
            args.update(ROPE=True, HALF=64, cs_ptr="*bf16", sn_ptr="*bf16", stride_cm=128, ROPE_N=5120,
                        ROPE_PROGRAMS=5120 // 2 // block_n)
        label = f"M={m} {'dot' if use_dot else 'fma'}" + (" gated" if gated else "") + (" glu" if glu else "")
        label += " rope" if rope else ""
        label += (" norm" if norm else "") + (" residual" if res else "") + (f" sumsq-{ss}" if ss else "")
        label += f" split{split}" if split > 1 else ""
        out.append((_linear_small_m, label, args,
                    dict(num_warps=4, num_stages=4 if use_dot else 3)))
        if m == 1:
            # the one-row forms (LinearConfig.row): the register loop's (4K weight values a step; its split
            # too) and the resident tile's (the whole K range: 16K values)
            out.append((_linear_small_m, label + " row", dict(args, ROW=True, BLOCK_K=1024),
                        dict(num_warps=4, num_stages=3)))
            if split == 1:
                out.append((_linear_small_m, label + " resident-row",
                            dict(args, ROW=True, RESIDENT=True, BLOCK_K=k, BLOCK_N=(2 if glu or rope else 4)),
                            dict(num_warps=4, num_stages=3)))
        if use_dot and not (gated or rope):
            # the swapped product (W the MMA's A operand, 64-row tiles): a Hopper warpgroup MMA; plain and glu, and
            # with a norm (its scratch prologue), a residual or the norm's partials, as the decode-fused step runs
            out.append((_linear_small_m, label.replace("dot", "swap"), dict(args, SWAP=True, BLOCK_N=64),
                        dict(num_warps=4, num_stages=4)))
            # ... with its first W tile(s) loaded into registers before the PDL wait (MEMBOUND_LINEAR_SWAP_EARLY)
            out.append((_linear_small_m, label.replace("dot", "swap") + " early",
                        dict(args, SWAP=True, BLOCK_N=64, EARLY_SWAP=True), dict(num_warps=4, num_stages=4)))
    hkv, g, cap, d = 8, 4, 16384, 128  # Llama-3-8B: 8 kv heads, 4 q heads each
    strides = dict(sqb=32 * d, sqh=d, sqs=d, sqd=1, skb=hkv * cap * d, skh=cap * d, skt=d, skd=1, svb=hkv * cap * d,
                   svh=cap * d, svt=d, svd=1, spb=1, sps=1, sob=32 * d, soh=d, sos=d, sod=1)
    # (one split, ring, rows per block, warps, key slots a tile): 64 rows at 4 warps (16 per warp: wgmma), the
    # 16-row block whose 4 warps split a 64-slot key tile (mma.sync; pick_config's at head dim 64 and for
    # MEMBOUND_DECODE_WIDE=0), and pick_config's default at head dim 128: 16 rows, 8 warps, 128-slot (64 KB) tiles
    for one, ring, block_q, warps, block_t in ((False, False, 64, 4, 64), (True, False, 64, 4, 64),
                                               (False, True, 64, 4, 64), (False, False, 16, 4, 64),
                                               (False, False, 16, 8, 128), (False, True, 16, 8, 128)):
        split_block, merge_rows = merge_tile(g, block_q, d, warps)
        args = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", pos_ptr="*i64", o_ptr="*bf16", part_ptr="*fp32",
                    lse_ptr="*fp32", lock_ptr="*i32", slope_ptr="*fp32", sink_ptr="*bf16",
                    HKV=hkv, G=g, S=1, T=4096 if ring else cap, D=d, DV=d, CHUNK_MIN=256, N_QBLOCKS=1,
                    N_SPLITS=32, qk_scale=0.127, WINDOW=4096 if ring else 0, softcap=1.0, DIRECT_SPAN=384, **strides,
                    BLOCK_Q=block_q,
                    BLOCK_T=block_t, BLOCK_D=d, BLOCK_DV=d, ONE_SPLIT=one, INPUT_PRECISION="tf32", USE_PDL=True,
                    HAS_WINDOW=ring, HAS_SOFTCAP=False, RING=ring, SPLIT_BLOCK=split_block, MERGE_ROWS=merge_rows,
                    HAS_ALIBI=False, KV_EVICT="")
        label = f"d{d} {'one split' if one else 'split'}" + (" ring" if ring else "") + f" q{block_q}"
        label += f" w{warps} t{block_t}" if block_t != 64 else ""
        out.append((_flash_decoding_split, label, args, dict(num_warps=warps, num_stages=3)))
        if not ring:  # the first K/V tiles before the PDL wait (static_past)
            out.append((_flash_decoding_split, label + " early-kv", dict(args, EARLY_KV=True),
                        dict(num_warps=warps, num_stages=3)))
        if block_t == 128:  # attention sinks (gpt-oss: one logit a head starts the first chunk's softmax)
            out.append((_flash_decoding_split, label + " sinks", dict(args, HAS_SINKS=True),
                        dict(num_warps=warps, num_stages=3)))
        if block_t == 128 and not ring:  # Llama 4's chunked layers: chunks of 8192 (WINDOW), one chunk's slots read
            out.append((_flash_decoding_split, label + " chunked",
                        dict(args, WINDOW=8192, HAS_WINDOW=True, CHUNKED=True), dict(num_warps=warps, num_stages=3)))
        if block_t == 128 and not ring:  # the o projection's weight asked of L2 first (prefetch=, issue 13)
            out.append((_flash_decoding_split, label + " prefetch",
                        dict(args, pf_ptr="*bf16", pf_elems=4096 * 4096, PREFETCH=True, PF_PIECE=8192),
                        dict(num_warps=warps, num_stages=3)))
        if block_q == 16 and warps == 4 and not ring:  # the Llama-3.2-1B shape (head dim 64): pick_config's default
            d64 = dict(args, D=64, DV=64, BLOCK_D=64, BLOCK_DV=64)
            d64.update(zip(("SPLIT_BLOCK", "MERGE_ROWS"), merge_tile(g, block_q, 64, warps)))
            out.append((_flash_decoding_split, "d64 split q16", d64, dict(num_warps=warps, num_stages=3)))
    out += _flash_attention_cases()
    out += _attn_block_cases()
    out += _mlp_block_cases()
    # grouped_mm at gpt-oss-20b's gate/up (32 experts, K = 2880, M = 5760), 16 rows a program (decode)
    from membound.backends.triton.kernels.grouped_mm import _grouped_mm

    args = dict(x_ptr="*bf16", w_ptr="*bf16", off_ptr="*i32", y_ptr="*bf16", N=4, K=2880, M=5760, E=32, sxn=2880,
                sxk=1, swe=2880 * 5760, swk=5760, swm=1, syn=5760, sym=1, BLOCK_R=16, BLOCK_M=64, BLOCK_K=64,
                BLOCK_E=32, INPUT_PRECISION="tf32", USE_PDL=True)
    out.append((_grouped_mm, "gpt-oss gate/up r16", args, dict(num_warps=4, num_stages=3)))
    args = dict(cache_ptr="*bf16", val_ptr="*bf16", pos_ptr="*i64", src_ptr="*i64", H=hkv, S=1, T=cap, D=d,
                scb=hkv * cap * d, sch=cap * d, sct=d, scd=1, svb=hkv * d, svh=d, svs=hkv * d, svd=1, spb=1, sps=1,
                BLOCK_D=d, USE_PDL=True, HAS_SRC=False)
    out.append((_cache_write, f"d{d}", args, dict(num_warps=1)))
    for residual in (False, True):
        args = dict(x_ptr="*bf16", r_ptr="*bf16", w_ptr="*bf16", sum_ptr="*bf16", y_ptr="*bf16", D=4096,
                    stride_x=4096, stride_r=4096, eps=1e-5, BLOCK_D=4096, HAS_RESIDUAL=residual, HAS_WEIGHT=True,
                    USE_PDL=True)
        out.append((_rms_norm, "add+norm" if residual else "norm", args, dict(num_warps=8)))
    args = dict(w_ptr="*bf16", ids_ptr="*i64", out_ptr="*bf16", V=128256, D=4096, stride_wv=4096, stride_wd=1,
                BLOCK_D=1024, USE_PDL=True)
    out.append((_embedding, "d4096", args, dict(num_warps=4)))
    return out


def _flash_attention_cases() -> list[tuple[Any, str, dict[str, Any], dict[str, Any]]]:
    """Prefill flash attention at Llama-3-8B shapes (32 q heads, 8 kv heads, S = L = 4096), bf16."""
    from membound.backends.triton.kernels.flash_attention import _flash_attention_fwd

    out: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
    s, hq, hkv = 4096, 32, 8
    for d, block_m, block_n, warps, stages, window, softcap in ((128, 128, 64, 8, 3, False, False),
                                                              (64, 128, 64, 8, 3, True, True),
                                                              (256, 64, 32, 8, 2, False, False)):
        strides = dict(sqb=hq * s * d, sqh=s * d, sqs=d, sqd=1, skb=hkv * s * d, skh=s * d, skt=d, skd=1,
                       svb=hkv * s * d, svh=s * d, svt=d, svd=1, smb=0, smh=0, sms=0, sml=0, spb=0, sps=0,
                       sob=hq * s * d, soh=s * d, sos=d, sod=1)
        args = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", mask_ptr="*bf16", pos_ptr="*bf16", o_ptr="*bf16",
                    sink_ptr="*bf16", slope_ptr="*fp32", HQ=hq, G=hq // hkv, S=s, L=s, D=d, DV=d, qk_scale=0.127,
                    WINDOW=1024, softcap=50.0, **strides,
                    BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=d, BLOCK_DV=d, CAUSAL=True, HAS_POS=False,
                    HAS_WINDOW=window, HAS_SOFTCAP=softcap, MASK_KIND=0, INPUT_PRECISION="tf32", USE_PDL=True,
                    EVEN_D=True)
        label = f"d{d} causal" + (" window" if window else "") + (" softcap" if softcap else "")
        out.append((_flash_attention_fwd, label, args, dict(num_warps=warps, num_stages=stages)))
        if window:  # gpt-oss's sliding layers: head dim 64, a window, attention sinks
            out.append((_flash_attention_fwd, label + " sinks", dict(args, HAS_SINKS=True),
                        dict(num_warps=warps, num_stages=stages)))
        if d == 128:  # Llama 4's chunked layers (chunks of 8192 in WINDOW)
            out.append((_flash_attention_fwd, label + " chunked", dict(args, WINDOW=8192, HAS_WINDOW=True,
                                                                       CHUNKED=True),
                        dict(num_warps=warps, num_stages=stages)))
        if d == 128:  # ALiBi slopes (BLOOM, MPT, Falcon) on the unmasked and masked loops
            out.append((_flash_attention_fwd, label + " alibi", dict(args, slope_ptr="*fp32", HAS_ALIBI=True),
                        dict(num_warps=warps, num_stages=stages)))
    return out


def _attn_block_cases() -> list[tuple[Any, str, dict[str, Any], dict[str, Any]]]:
    """The one-launch attention block (``attn_block``) at the Llama-3.2-1B and Llama-3-8B decode shapes, bf16:
    one split and four, 32 KB resident weight tiles."""
    from membound.backends.triton.kernels.attn_block import _attn_block

    out: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
    for k, hq, hkv, d, rows, splits in ((2048, 32, 8, 64, 8, 1), (2048, 32, 8, 64, 8, 4), (4096, 32, 8, 128, 4, 1),
                                        (4096, 32, 8, 128, 4, 4)):
        cap = 4096
        n_a = (hq + 2 * hkv) * (d // 2) // (rows // 2)
        args = dict(x_ptr="*bf16", nw_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", cos_ptr="*bf16", sin_ptr="*bf16",
                    pos_ptr="*i64", kc_ptr="*bf16", vc_ptr="*bf16", wo_off=-(2**24), out_ptr="*bf16", q_ptr="*bf16",
                    a_ptr="*bf16", part_ptr="*fp32", lse_ptr="*fp32", cnt_ptr="*i32", eps=1e-5, qk_scale=0.18,
                    N_A=n_a, N_B=hkv * splits, N_ITEMS=n_a + hkv * splits + k // rows, HQ=hq, HKV=hkv, G=hq // hkv,
                    HALF=d // 2, KQ=k, KO=hq * d, swr=k, sor=hq * d, skh=cap * d, skt=d, skd=1, svh=cap * d, svt=d,
                    svd=1, D=d, ROWS=rows, BLOCK_K=k, SPLITS=splits, BLOCK_G=16, BLOCK_D=d,
                    BLOCK_T=128 if d == 64 else 32, HAS_BIAS=False, INPUT_PRECISION="tf32", USE_PDL=True, ROW_ALIGN=8)
        out.append((_attn_block, f"k{k} d{d} rows{rows} split{splits}", args, dict(num_warps=8, num_stages=1)))
        if splits == 1:  # the first key/value tiles before the wait (AttnBlockConfig.early_kv)
            out.append((_attn_block, f"k{k} d{d} rows{rows} early-kv", dict(args, EARLY_KV=True),
                        dict(num_warps=8, num_stages=1)))
        if splits == 1:  # the key/value tiles software-pipelined (AttnBlockConfig.num_stages)
            out.append((_attn_block, f"k{k} d{d} rows{rows} stages3", dict(args, BLOCK_T=args["BLOCK_T"] // 2),
                        dict(num_warps=8, num_stages=3)))
    return out


def _mlp_block_cases() -> list[tuple[Any, str, dict[str, Any], dict[str, Any]]]:
    """The one-launch MLP block (``mlp_block``) at the Llama-3.2-1B (K 2048, I 8192) and Llama-3-8B (K 4096,
    I 14336) decode shapes, bf16, 32 KB weight tiles."""
    from membound.backends.triton.kernels.mlp_block import _mlp_block, chunks

    out: list[tuple[Any, str, dict[str, Any], dict[str, Any]]] = []
    for k, i in ((2048, 8192), (4096, 14336)):
        rows, chp = 16384 // k, chunks(k, i)
        n_d = i // (rows // 2)
        args = dict(x_ptr="*bf16", nw_ptr="*bf16", w_ptr="*bf16", wd_off=2 * i * k, out_ptr="*bf16", h_ptr="*bf16",
                    cnt_ptr="*i32", eps=1e-5, N_D=n_d, N_ITEMS=n_d + k // (rows // chp), I=i, K=k, swr=k, sdr=i,
                    ROWS=rows, BLOCK_K=k, CHP=chp, USE_PDL=True, ROW_ALIGN=8)
        out.append((_mlp_block, f"k{k} i{i} rows{rows}", args, dict(num_warps=8, num_stages=1)))
    return out


def run(arch: int = 90) -> list[Compiled]:
    return [_inspect(kernel, label, args, arch, **options) for kernel, label, args, options in cases()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", type=int, default=90, help="compute capability as an int (80 = A100, 90 = H100/H200)")
    p.add_argument("--json", action="store_true", help="one JSON object per kernel instead of a table")
    p.add_argument("--regs", action="store_true",
                   help="registers a thread and spilled bytes per kernel (the bundled ptxas; slower)")
    args = p.parse_args(argv)
    if args.regs:
        for kernel, label, kargs, options in cases():
            info = ptxas_info(compile_ptx(kernel, kargs, args.arch, **options)[0], args.arch)
            warps = options.get("num_warps", 4)
            print(f"{kernel.__name__:26s} {label:40s} warps {warps:2d}  "
                  + (f"registers {info[0]:3d}  spill stores {info[1]:4d} B  programs an SM by registers "
                     f"{65536 // (info[0] * 32 * warps)}" if info else "no bundled ptxas takes this PTX"))
        return 0
    results = run(args.arch)
    for r in results:
        if args.json:
            print(json.dumps({**asdict(r), "vectorised": r.vectorised}))
        else:
            flag = "" if r.vectorised or r.kernel not in STREAMING else "  <- scalar loads"
            print(f"{r.kernel:26s} {r.config:14s} shared {r.shared_bytes:6d} B  cp.async {r.cp_async:3d}  "
                  f"mma {r.mma:3d} (wgmma {r.wgmma:2d})  loads {r.loads}{flag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
