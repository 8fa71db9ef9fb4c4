#!/usr/bin/env bash
# The MoE decode routing in the expert kernels (router logits in one launch, unsorted top-k, each expert kernel
# finding its pairs and weights, combine in the down kernel): GPU tests, then benches/moe.py at both shapes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
start=$SECONDS
echo "== 1. MoE tests on the GPU"
timeout 200 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_moe_kernel.py tests/backends/test_moe_route.py \
    tests/backends/test_moe_prefill.py tests/e2e/test_quantize_moe.py >"$OUT/moe_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/moe_tests.log" | head -10
tail -1 "$OUT/moe_tests.log"
timeout 200 python -m pytest -q -n 4 -p no:cacheprovider -m gpu tests -k "moe or mixtral or qwen" >"$OUT/moe_gpu_marked.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/moe_gpu_marked.log" | head -10
tail -1 "$OUT/moe_gpu_marked.log"
echo "== 2. benches/moe.py small (gather compile with coordinate-descent tuning, membound)"
timeout 200 python benches/moe.py --shapes small --batches 1 8 --cd-tuning --only "gather compile" membound \
    --out "$OUT" >"$OUT/moe_small.log" 2>&1
grep "tok/s" "$OUT/moe_small.log"
echo "== 3. benches/moe.py 8x7b-8l membound bf16 and int4 (halves tile)"
MEMBOUND_MOE_INT4_HALVES=1 timeout 200 python benches/moe.py --shapes 8x7b-8l --batches 1 8 --only membound "membound int4" \
    --out "$OUT" >"$OUT/moe_8x7b.log" 2>&1
grep -E "tok/s|roofline|%" "$OUT/moe_8x7b.log" | head -12
echo "($((SECONDS - start)) s)"
