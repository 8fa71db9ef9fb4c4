#!/usr/bin/env bash
# The MoE defaults the 2026-12-02 seventh session flipped after gpu/pending.sh (int4 pairs dequantization with 64 x 128
# tiles; the fused-routing down kernel capped at 64 registers, fused while 8 programs an SM hold its grid): the MoE
# kernel tests on the GPU, then the 8x7B rows (bf16 and int4 experts) at batch 1, 8, 32. About 3 minutes.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
timeout 150 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_moe_kernel.py \
    tests/backends/test_moe_prefill.py tests/backends/test_int4_pairs.py tests/backends/test_moe_route.py \
    >"$OUT/moe_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/moe_tests.log" | head -10
tail -1 "$OUT/moe_tests.log"
timeout 200 python benches/moe.py --shapes 8x7b-8l --batches 1 8 32 --only membound "membound int4" --out "$OUT" \
    >"$OUT/moe_8x7b.log" 2>&1
grep "tok/s" "$OUT/moe_8x7b.log"
echo "($((SECONDS - start)) s)"
