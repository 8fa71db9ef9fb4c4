#!/usr/bin/env bash
# Session 13, second device call (about 6 minutes): (1) GPU tests of the linear kernels with the resident register
# tiles (LinearConfig.resident, the default at M <= 2 and K <= 4096 now): linear, gated, fusion forms, norm
# statistics, decode launches; (2) the resident tiles' sweep at M = 1 over the 1.24B and 8B projections, beside
# the config the library picks without them. One tarball.
#
#   bash gpu/session13b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/sweep"
echo "== GPU tests"
timeout 150 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_linear_fusion_gpu.py \
    tests/backends/test_norm_stats_kernels.py tests/backends/test_decode_launches.py -k "linear or gated or rope or norm or decode" \
    >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== resident sweep M=1 ($((SECONDS - start)) s)"
timeout $((470 - SECONDS)) python benches/gemv_sweep.py --resident --batches 1 --models llama-1b,llama-8b \
    --shapes qkv,o,gate_up_glu,down_plain,lm_head,gate_up --budget-s $((400 - SECONDS)) \
    --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m1:|bandwidth|skipped" "$W/sweep.log" | head -20
tar czf "$OUT/session13b.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
