#!/usr/bin/env bash
# Session 10: wide flash-decoding tiles at head dim 128 (128 slots, 8 warps, one program per SM; the default now).
# (1) the GPU decode tests; (2) generate's graph-step contexts 128..2048, wide off and on; (3) the long-context
# variants again with 256-slot tiles at D = 64; (4) benches/attention.py --quick with the new defaults.
#
#   bash gpu/session10b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU decode tests (wide tiles)"
timeout 150 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_decode_variants.py \
    tests/backends/test_attention_kernels.py tests/backends/test_split_stress_gpu.py tests/backends/test_cuda_graphs.py \
    tests/backends/test_triton_split_decoding.py tests/backends/test_triton_ring_cache.py >"$OUT/decode_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/decode_tests.log" | head -10
tail -1 "$OUT/decode_tests.log"
for w in 0 1; do
  echo "== short, wide $w ($((SECONDS - start)) s)"
  mkdir -p "$OUT/wide$w"
  MEMBOUND_DECODE_WIDE=$w timeout 150 python benches/experiments/decode_short_context.py --out "$OUT/wide$w" \
      >"$OUT/short_wide$w.log" 2>&1
  tail -25 "$OUT/short_wide$w.log" | grep d128
done
echo "== variants ($((SECONDS - start)) s)"
timeout 200 python benches/experiments/decode_attn_variants.py --out "$OUT" --budget 150 --batches 1,4,16 --lengths 4096,32768 \
    --variants "q16 w4 32K s3,q16 w4 32K s3 pps1,q16 w8 64K s3 pps1,q16 w8 64K s3 pps1 t256,q16 w4 64K s3 pps1 t256,q16 w4 64K s2 t256" \
    >"$OUT/variants.log" 2>&1
grep -A14 "^shape" "$OUT/variants.log"
grep -A12 "geometric-mean" "$OUT/variants.log"
echo "== attention.py --quick ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/attention.py --quick --out "$OUT" >"$OUT/attention.log" 2>&1
grep -E "decode" "$OUT/attention.log" | grep -E "membound  |sdpa" | head -20
echo "($((SECONDS - start)) s)"
