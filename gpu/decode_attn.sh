#!/usr/bin/env bash
# Flash-decoding variants on one H200 (< 4 minutes): membound/backends/triton/kernels/decode_attention.py.
#
#   bash gpu/decode_attn.sh            # 1. decode kernel tests on the GPU (gating: fp32/fp16/bf16, CUDA-graph
#                                      #    replays, split counters), 2. benches/experiments/decode_attn_variants.py
#                                      #    (every variant checked vs the reference in bf16 and fp16 on both launch
#                                      #    paths, then timed against SDPA: GQA 32/8, D 64/128, batch 1-64,
#                                      #    cache 4k-128k, known length and CUDA-graph capacity path)
#   QUICK=1 bash gpu/decode_attn.sh    # step 2 with fewer shapes and variants
#
# Full results under $OUT (tests.log, variants.log, decode_attn_variants-*.json); the tables last: per shape
# SDPA / pick / best variant, per variant its geometric-mean speed over SDPA, and the decode_attention
# constants that select the best variant.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

echo "== 1. decode kernel tests on the GPU (gating)"
# (the variants' odd sizes compiled, the split counters over 200 launches and CUDA-graph replays, bf16 at
# model sizes; the interpreter-sized cached_attention tests of test_kernels/test_attention_kernels run on CPU CI)
timeout 120 python -m pytest tests/backends/test_decode_variants.py tests/backends/test_split_stress_gpu.py \
    tests/backends/test_kernels.py -q -n 8 -p no:cacheprovider \
    -k "test_decode_variants or decoding or warmed_up_split or cached_attention_gpu" >"$OUT/tests.log" 2>&1
rc=$?
tail -3 "$OUT/tests.log"
if [ $rc -ne 0 ]; then
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
    echo "decode kernel tests failed (rc $rc, $OUT/tests.log): no timing"
    exit 1
fi
echo "   ($((SECONDS - start)) s)"

echo "== 2. variants: correctness (bf16, fp16) then timing vs SDPA"
budget=$((215 - (SECONDS - start)))  # no new shape past this; each shape takes ~1-3 s
python benches/experiments/decode_attn_variants.py --out "$OUT" --budget "$budget" ${QUICK:+--quick} \
    2>&1 | grep -v -E "UserWarning|warn_once" | tee "$OUT/variants.log"
rc=${PIPESTATUS[0]}
echo "($((SECONDS - start)) s in all)"
exit $rc
