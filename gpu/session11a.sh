#!/usr/bin/env bash
# Prepared in session 10 for the next device call (about 7 minutes): (1) the GPU tests of gpu/session10e.sh (its
# session-10 run was cut before naming 2 failures and 3 errors); (2) with the wide tiles now the default at head
# dim 128, the merge-counter A/B again (MEMBOUND_DECODE_ACTIVE_ARRIVALS 0/1: session 10 measured it on 64-slot
# tiles, +1-3% at most short contexts, -3 us at D128 b1 2048-in-4096); (3) D = 64 at one program per SM against two
# (b1 32k was 27.0 vs 28.8 us, b4/b16 32k the other way).
#
#   bash gpu/session11a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests"
timeout 300 python -m pytest -v -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_decode_launches.py tests/backends/test_triton_codegen.py tests/backends/test_cuda_graphs.py \
    tests/backends/test_attention_kernels.py tests/backends/test_decode_variants.py tests/backends/test_triton_split_decoding.py \
    tests/e2e tests/cost >"$OUT/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$OUT/tests.log" | sort -u | head -20
tail -1 "$OUT/tests.log"
for a in 0 1; do
  echo "== short, active arrivals $a, wide tiles ($((SECONDS - start)) s)"
  MEMBOUND_DECODE_ACTIVE_ARRIVALS=$a timeout 60 python benches/experiments/decode_short_context.py \
      >"$OUT/short_active$a.log" 2>&1
  tail -25 "$OUT/short_active$a.log" | grep -E "^case|d128"
done
echo "== D = 64 programs per SM ($((SECONDS - start)) s)"
timeout $((590 - SECONDS)) python benches/experiments/decode_attn_variants.py --out "$OUT" --budget 100 \
    --batches 1,4,16 --lengths 4096,16384,32768 --variants "q16 w4 32K s3,q16 w4 32K s3 pps1" >"$OUT/variants.log" 2>&1
grep -A20 "^shape" "$OUT/variants.log" | grep -E "^shape|^d64"
echo "($((SECONDS - start)) s)"
