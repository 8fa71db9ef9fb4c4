#!/usr/bin/env bash
# The bf16 GEMV tile sweeps never run on an H200 (issue 13: "sweep and pick tiles for the M = 8/16/32 path the way the
# M = 1 path was swept"; the M = 1 tiles come from an H100 sweep). Run after gpu/pending.sh, about 8 minutes.
# Why (benches/results/quant_matmul-nvidia-h200-2026-12-02-session7.log): cuBLAS beat our M = 1 GEMV on the wide
# shapes (14336x4096: 30.2 us against 34.2; the 128256x2048 head 121.6 against 137.3) and our tensor-core path at
# M = 4 and 16 on every shape but the head (by 10-39%). Pick the winners into kernels/linear.py's pick_config.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
timeout 200 python benches/gemv_sweep.py --tensor-cores --out "$OUT" >"$OUT/gemv_sweep_tc.log" 2>&1
tail -12 "$OUT/gemv_sweep_tc.log"
timeout 330 python benches/gemv_sweep.py --batches 1 --budget-s 300 --out "$OUT" >"$OUT/gemv_sweep_m1.log" 2>&1
tail -12 "$OUT/gemv_sweep_m1.log"
echo "($((SECONDS - start)) s)"
