#!/usr/bin/env bash
# Session 9: the direct span of flash-decoding (DIRECT_TILES): the GPU's decode-attention tests, then
# benches/experiments/decode_short_context.py over (MIN_TILES, DIRECT_TILES) variants. About 2 minutes.
#
#   bash gpu/session9d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU decode tests"
timeout 120 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_decode_variants.py \
    tests/backends/test_attention_kernels.py tests/backends/test_split_stress_gpu.py >"$OUT/decode_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/decode_tests.log" | head -10
tail -1 "$OUT/decode_tests.log"
echo "== decode at short contexts ($((SECONDS - start)) s)"
timeout 300 python benches/experiments/decode_short_context.py --out "$OUT" >"$OUT/short.log" 2>&1
tail -26 "$OUT/short.log"
echo "($((SECONDS - start)) s)"
