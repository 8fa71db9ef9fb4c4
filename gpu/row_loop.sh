#!/usr/bin/env bash
# The one-row forms at M = 1 (session 14), about 7 minutes on one H200: (1) GPU tests of the linear kernels;
# (2) the resident grid at M = 1 (resident one-row tiles and the register loop's one-row form) over the 1.24B / 8B
# down projections and the other shapes; (3) decode_e2e at batch 1: the default (resident one-row tiles at every
# K <= 4096), without them (norow), with the loop's row form for the down projections (row-loop), and the cd-tuned
# torch.compile. One tarball.
#
#   bash gpu/row_loop.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/sweep"
timeout 100 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_kernels.py -k "linear or rope or glu or resident" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== row sweep M=1 ($((SECONDS - start)) s)"
timeout 150 python benches/gemv_sweep.py --resident --batches 1 --models llama-1b,llama-8b \
    --shapes down_plain,qkv,o,gate_up_glu,lm_head --budget-s 120 --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m1:|bandwidth|skipped" "$W/sweep.log" | head -10
echo "== e2e b1 ($((SECONDS - start)) s)"
timeout $((570 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+norow,triton+graphs+row-loop \
    --cd-tuning --budget-s $((520 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -16
tar czf "$OUT/row_loop.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
