"""Experiment (no GPU needed): instructions per int4 code in the main loop of ``_quant_matmul``, old paths
against the int4 pairs path, from the sm_90 SASS.

    PYTHONPATH=. python benches/experiments/int4_sass.py [--json OUT.json] [--arch 90]

Compiles the launch ``quant_linear`` would make (``quant_matmul.compile_args``) at the Llama-3-8B decode
shapes, M = 1 and 16, bf16 x, group 128, with ``pick_config(..., pairs=False)`` (``old``: the previous rule,
FMA GEMV at M = 1 except lm heads, tensor cores over ``_int4_dequant`` otherwise), ``pairs=True``
(``pairs``) and that with ``pair_codes`` (``codes``); disassembles
the cubin (``cuobjdump``, shipped in Triton's NVIDIA backend) and finds the main K loop as the largest
backward branch. Reported: the loop's SASS instructions, instructions per weight code
(``loop * 32 * num_warps / (BLOCK_N * BLOCK_K)``), registers (``-res-usage``), shared memory, and the
loop's opcode histogram. Budget: an H200 streaming int4 at ~4.1 TB/s must retire ~31 codes a clock per SM
against an issue rate of 128 thread-instructions a clock, so ~4 instructions a code at full issue.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile

import torch

SHAPES = {"qkv": (6144, 4096, False), "gate_up": (28672, 4096, False), "down": (4096, 14336, False),
          "down_gated": (4096, 14336, True), "head": (128256, 4096, False)}


def cubin(kernel, args: dict, arch: int, **options):
    """(cubin bytes, shared bytes) of ``kernel`` compiled as ``compile_check.compile_ptx`` compiles it."""
    import inspect

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature, constants, attrs = {}, {}, {}
    for i, (name, param) in enumerate(zip(kernel.arg_names, kernel.params)):
        if name not in args and param.default is not inspect.Parameter.empty:
            args = {**args, name: param.default}  # an argument the launch may leave out: its default
        value = args[name]
        if param.is_constexpr or (isinstance(value, int) and not isinstance(value, bool) and value == 1):
            signature[name], constants[name] = "constexpr", value
        elif isinstance(value, str):
            signature[name], attrs[(i,)] = value, [["tt.divisibility", 16]]
        else:
            signature[name] = "i32"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn=kernel, signature=signature, constexprs=constants, attrs=attrs)
    c = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=options)
    return c.asm["cubin"], int(c.metadata.shared)


def disassemble(binary: bytes) -> tuple[str, int]:
    """(SASS text, registers per thread)."""
    import triton

    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(binary)
    try:
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True, check=True).stdout
        res = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    finally:
        os.unlink(f.name)
    return sass, int(re.search(r"REG:(\d+)", res).group(1))


def branch_regions(sass: str) -> list[list[str]]:
    """The instructions of every backward-branch region (a loop body, from the branch target to the branch)."""
    ins = [(int(m.group(1), 16), m.group(2).strip())
           for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    regions = []
    for addr, text in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if m and int(m.group(1), 16) < addr:
            regions.append([t for a, t in ins if int(m.group(1), 16) <= a <= addr])
    return regions


def main_loop(sass: str) -> list[str]:
    """The instructions of the largest backward-branch region (the K loop)."""
    return max(branch_regions(sass), key=len, default=[])


def opcode(text: str) -> str:
    words = text.split()
    word = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
    return word.split(".")[0]


def measure(m: int, n: int, k: int, gated: bool, path: str, arch: int) -> dict:
    from dataclasses import replace

    from membound.backends.triton.kernels import quant_matmul as qm

    cfg = qm.pick_config(m, n, k, "int4", 128, torch.bfloat16, torch.device("cpu"), pairs=path != "old")
    cfg = replace(cfg, pair_codes=path == "codes")
    label, args, options = qm.compile_args(m, n, k, "int4", 128, cfg, gated)
    binary, shared = cubin(qm._quant_matmul, args, arch, **options)
    sass, regs = disassemble(binary)
    loop = main_loop(sass)
    per_code = len(loop) * 32 * cfg.num_warps / (cfg.block_n * cfg.block_k)
    ops = collections.Counter(opcode(t) for t in loop)
    return dict(m=m, n=n, k=k, gated=gated, path=path, config=label, registers=regs,
                shared_bytes=shared, loop_instructions=len(loop), per_code=round(per_code, 2),
                opcodes=dict(ops.most_common()))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--arch", type=int, default=90)
    a = p.parse_args()
    os.environ.pop("TRITON_INTERPRET", None)
    rows = []
    for name, (n, k, gated) in SHAPES.items():
        for m in (1, 16):
            for path in ("old", "pairs", "codes"):
                r = measure(m, n, k, gated, path, a.arch)
                r["shape"] = name
                rows.append(r)
                top = ", ".join(f"{o} {c}" for o, c in list(r["opcodes"].items())[:6])
                print(f"{name:10s} M={m:<2d} {r['path']:5s} {r['config']:44s} {r['per_code']:5.2f} instr/code  "
                      f"{r['registers']:3d} regs  loop {r['loop_instructions']:4d}  ({top})", flush=True)
    if a.json:
        import triton

        with open(a.json, "w") as f:
            json.dump({"arch": a.arch, "triton": triton.__version__, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
