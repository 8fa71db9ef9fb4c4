#!/usr/bin/env bash
# Session 13, second device call (about 9 minutes): gpu/session13b.sh's GPU tests and resident sweep, tighter
# budgets, then gpu/flash_hopper.sh's experiment (Hopper techniques for prefill attention).
#
#   bash gpu/session13c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/sweep"
echo "== GPU tests"
timeout 120 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_linear_fusion_gpu.py \
    tests/backends/test_norm_stats_kernels.py tests/backends/test_decode_launches.py -k "linear or gated or rope or norm or decode" \
    >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== resident sweep M=1 ($((SECONDS - start)) s)"
timeout $((360 - SECONDS)) python benches/gemv_sweep.py --resident --batches 1 --models llama-1b,llama-8b \
    --shapes qkv,o,gate_up_glu,down_plain,lm_head,gate_up --budget-s $((300 - SECONDS)) \
    --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m1:|bandwidth|skipped" "$W/sweep.log" | head -20
tar czf "$OUT/session13c.tgz" -C "$W" . && rm -rf "$W"
echo "== flash prefill experiment ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/experiments/flash_prefill_hopper.py --out "$OUT" --budget-s $((500 - SECONDS)) \
    >"$OUT/flash_hopper.log" 2>&1
echo "rc $?"
grep -vE "^\s|Traceback|^[A-Za-z]+Error|UserWarning|warn_once" "$OUT/flash_hopper.log" | tail -30
echo "($((SECONDS - start)) s)"
