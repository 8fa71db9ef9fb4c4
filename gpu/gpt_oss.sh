#!/usr/bin/env bash
# Left by session 19 (no GPU was lent) for a GPU session, one call (at most 9.5 minutes on one H200):
#   1. the GPU tests of session 19's and 20's kernels (session 20: Llama 4's attention chunks in flash-decoding and
#      flash prefill): attention sinks (flash prefill and flash-decoding, bf16, a CUDA-graph
#      replay), the grouped_mm kernel (bf16; a gpt-oss decode step with no host sync), ALiBi in the flash prefill
#      kernel, the HF-families gpt-oss / apertus / bloom / deepseek-v2 / deepseek-v3 / llama4 rows on the GPU;
#   2. benches/gpt_oss.py --quick: gpt-oss-20b's shape cut to 4 layers (bf16 random weights), membound against HF
#      eager, batch 1 and 8, 32 tokens, greedy tokens checked against HF's first (the JSON is rewritten after each
#      contender, so a timeout keeps what was measured).
# Results under $OUT (tests.log, families.log, gpt_oss.log, gpt_oss-*.json).
#
#   bash gpu/gpt_oss.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests: sinks, grouped_mm, ALiBi prefill"
timeout 200 python -m pytest -q -p no:cacheprovider tests/backends/test_attention_sinks.py \
    tests/backends/test_grouped_mm_kernel.py tests/backends/test_triton_alibi.py \
    "tests/backends/test_attention_kernels.py::test_cached_attention_chunks" \
    "tests/backends/test_attention_kernels.py::test_flash_attention_chunks" \
    "tests/backends/test_moe_kernel.py::test_sigmoid_scores_on_the_input" >"$OUT/tests.log" 2>&1
echo "rc $?"; tail -5 "$OUT/tests.log"
echo "== families on the GPU ($((SECONDS - start)) s)"
timeout 120 python benches/hf_families.py --device cuda --families gpt-oss apertus bloom deepseek-v2 deepseek-v3 llama4 --out "$OUT" \
    >"$OUT/families.log" 2>&1
echo "rc $?"; tail -8 "$OUT/families.log"
echo "== gpt-oss decode ($((SECONDS - start)) s)"
timeout 270 python benches/gpt_oss.py --quick --budget-s 200 --out "$OUT" >"$OUT/gpt_oss.log" 2>&1
echo "rc $?"; grep -E "tok/s|roofline|error|wrote" "$OUT/gpt_oss.log" | tail -12
echo "($((SECONDS - start)) s)"
