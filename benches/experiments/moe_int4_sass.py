"""Experiment (no GPU needed): instructions per int4 code in the K loops of the MoE decode expert kernels, the
halves tile dequantized in fp32 (``RUNS`` 2, the default) against the same tile dequantized two codes an
instruction (``RUNS`` 3, ``moe.INT4_PAIRS``), from the sm_90 SASS.

    PYTHONPATH=. python benches/experiments/moe_int4_sass.py [--json OUT.json]

Compiles ``_moe_gate_up`` and ``_moe_down`` as a Mixtral-8x7B decode step launches them (D 4096, I 14336,
bf16 x, int4 group 128, 16-pair tiles, 32 weight rows, K tiles of 64 (the launcher's) and 128 columns, 4 warps, one token top-2, the
down kernel split in two) with ``int4_sass.py``'s tools: the loop's SASS instructions per weight code
(``loop * 128 / (BLOCK_N * BLOCK_K * weights)``: gate/up streams two weights a step), registers, the loop's
opcode histogram. Budget (``int4_sass.py``): about 4 instructions a code at full issue on an H200.
"""

from __future__ import annotations

import argparse
import collections
import importlib
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
for path in (ROOT, ROOT / "benches" / "experiments"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from int4_sass import branch_regions, cubin, disassemble, opcode  # noqa: E402

D, I, E, BN = 4096, 14336, 8, 32


def k_loop(sass: str) -> list[str]:
    """The smallest backward-branch region holding the tensor-core MMAs: the K loop (int4_sass.main_loop's
    largest region here is the walk over the pairs, epilogue included)."""
    return min((r for r in branch_regions(sass) if any("HMMA" in t for t in r)), key=len, default=[])


def args_for(kernel: str, runs: int, BK: int) -> dict:
    common = dict(BLOCK_M=16, BLOCK_N=BN, BLOCK_K=BK, INPUT_PRECISION="tf32", SCHEME=2, GROUP=128, RUNS=runs,
                  ROUTED=True, BLOCK_P=2)
    if kernel == "gate_up":
        kw = D // 2
        return dict(x_ptr="*bf16", wg_ptr="*u8", wu_ptr="*u8", sg_ptr="*bf16", su_ptr="*bf16", h_ptr="*bf16",
                    idx_ptr="*i64", order_ptr="*i64", offs_ptr="*i64", bg_ptr="*bf16", bu_ptr="*bf16", P=2, I=I, K=D, KW=kw, TOP_K=2, stride_x=D,
                    stride_ge=I * kw, stride_gn=kw, stride_ue=I * kw, stride_un=kw, stride_sg=I * 64, stride_sgn=64,
                    stride_su=I * 64, stride_sun=64, stride_h=I, **common)
    kw = I // 2
    return dict(h_ptr="*bf16", wd_ptr="*u8", sd_ptr="*bf16", y_ptr="*fp32", idx_ptr="*i64", order_ptr="*i64",
                offs_ptr="*i64", rw_ptr="*fp32", logit_ptr="*fp32", top_ptr="*fp32", part_ptr="*fp32",
                lock_ptr="*i32", out_ptr="*bf16", bd_ptr="*bf16", P=2, E=E, TOP_K=2, D=D, I=I, KW=kw, K_PER_SPLIT=I // 2,
                COUNT_BASE=E * D // BN, stride_h=I, stride_de=D * kw, stride_dn=kw, stride_sd=D * 224,
                stride_sdn=224, stride_y=D, stride_split=2 * D, stride_o=D, SPLIT_K=2, SOFTMAX_FIRST=True,
                RENORM=True, COMBINE=True, BLOCK_KK=2, BLOCK_E=E, **common)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    a = p.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    moe = importlib.import_module("membound.backends.triton.kernels.moe")
    rows = []
    for kernel, fn, weights in (("gate_up", moe._moe_gate_up, 2), ("down", moe._moe_down, 1)):
        for runs, BK in ((2, 64), (3, 64), (3, 128)):
            binary, shared = cubin(fn, args_for(kernel, runs, BK), 90, num_warps=4)
            sass, regs = disassemble(binary)
            loop = k_loop(sass)
            per_code = len(loop) * 128 / (BN * BK * weights)
            ops = collections.Counter(opcode(t) for t in loop)
            rows.append(dict(kernel=kernel, runs=runs, block_k=BK, registers=regs, shared_bytes=shared,
                             loop_instructions=len(loop), per_code=round(per_code, 2), opcodes=dict(ops.most_common())))
            top = ", ".join(f"{o} {c}" for o, c in ops.most_common(8))
            print(f"{kernel:8s} RUNS={runs} BLOCK_K={BK:3d}  {per_code:5.2f} instr/code  {regs:3d} regs  loop {len(loop):4d}  ({top})",
                  flush=True)
    if a.json:
        import triton

        Path(a.json).write_text(json.dumps({"arch": 90, "triton": triton.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
