#!/usr/bin/env bash
# Session 10: (1) the GPU decode tests with only the active programs counting in on flash-decoding's merge counter
# (MEMBOUND_DECODE_ACTIVE_ARRIVALS=1); (2) the short contexts of generate's graph step with it off and on;
# (3) the new long-context variants (more bytes in flight per SM at batch 1) against the default and SDPA.
#
#   bash gpu/session10a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
nvidia-smi --query-gpu=name,clocks.sm,clocks.mem --format=csv,noheader
echo "== GPU decode tests, active arrivals"
MEMBOUND_DECODE_ACTIVE_ARRIVALS=1 timeout 150 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_decode_variants.py \
    tests/backends/test_attention_kernels.py tests/backends/test_split_stress_gpu.py tests/backends/test_cuda_graphs.py \
    >"$OUT/decode_tests_active.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/decode_tests_active.log" | head -10
tail -1 "$OUT/decode_tests_active.log"
for a in 0 1; do
  echo "== short, active arrivals $a ($((SECONDS - start)) s)"
  mkdir -p "$OUT/active$a"
  MEMBOUND_DECODE_ACTIVE_ARRIVALS=$a timeout 150 python benches/experiments/decode_short_context.py --out "$OUT/active$a" \
      >"$OUT/short_active$a.log" 2>&1
  tail -25 "$OUT/short_active$a.log"
done
echo "== long-context variants ($((SECONDS - start)) s)"
timeout 240 python benches/experiments/decode_attn_variants.py --out "$OUT" --budget 200 --batches 1,4,16 --lengths 4096,32768 \
    --variants "q16 w4 32K s3,q16 w4 32K s3 pps1,q16 w4 32K s4 pps1,q16 w4 32K s5 pps1,q16 w4 64K s3 pps1,q16 w8 64K s3 pps1,q16 w4 16K s6,q16 w8 32K s3" \
    >"$OUT/variants.log" 2>&1
tail -32 "$OUT/variants.log"
echo "($((SECONDS - start)) s)"
