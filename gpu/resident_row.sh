#!/usr/bin/env bash
# The resident tiles' one-row form (LinearConfig.row, MEMBOUND_LINEAR_RESIDENT_ROW), about 5 minutes on one H200:
# (1) GPU tests of the linear kernels; (2) the resident grid at M = 1 (both forms) over the 1.24B / 8B q/k/v, o,
# linear_glu and head; (3) decode_e2e at batch 1, the default build against the row form and the cd-tuned
# torch.compile. If the row form wins, make it the default (RESIDENT_ROW_ENV) and widen RESIDENT_MAX_WEIGHT where
# the sweep has it beat the swapped product / register tile. One tarball.
#
#   bash gpu/resident_row.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/sweep"
timeout 90 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_kernels.py -k "linear or rope or glu or resident" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== resident sweep M=1 ($((SECONDS - start)) s)"
timeout 150 python benches/gemv_sweep.py --resident --batches 1 --models llama-1b,llama-8b \
    --shapes qkv,o,gate_up_glu,lm_head --budget-s 120 --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m1:|bandwidth|skipped" "$W/sweep.log" | head -10
echo "== e2e b1 ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+resident-row --cd-tuning \
    --budget-s $((500 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -12
tar czf "$OUT/resident_row.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
