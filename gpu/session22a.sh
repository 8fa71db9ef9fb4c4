#!/usr/bin/env bash
# Left by session 21 (no GPU was lent) for a GPU call (about 8 minutes on one H200): gpt-oss's experts, fused into
# one moe a layer in session 21 (router and expert biases, interleaved gate/up, clamped SwiGLU in the kernels'
# epilogues), checked and timed for the first time.
#   1. GPU tests: the moe kernels with biases and the clamped SwiGLU (bf16, both paths, int8), their sm_90 compile,
#      the gpt-oss decode step without host sync (greedy tokens equal HF's); moe_experts (DeepSeek's experts over
#      the graph's routing), quant_moe_experts, a DeepSeek-V3 decode step and its int8 model; the HF families
#      gpt-oss, deepseek-v2/v3, glm4-moe, minimax-m2;
#   2. benches/gpt_oss.py --quick: gpt-oss-20b's shape cut to 4 layers, membound against HF eager, batch 1 and 8
#      (session 20, same bench and card, experts unfused: 843.2 tok/s b1, 44.5% of roofline; 3101 tok/s b8).
# Results under $OUT (tests.log, gpt_oss.log, gpt_oss-*.json).
#
#   bash gpu/session22a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests: gpt-oss experts"
timeout 200 python -m pytest -q -p no:cacheprovider tests/backends/test_moe_kernel.py \
    -k "bias or clamped or hopper or moe_experts or deepseek" \
    "tests/backends/test_grouped_mm_kernel.py::test_gpt_oss_decode_step_holds_no_host_sync" >"$OUT/tests.log" 2>&1
echo "rc $?"; tail -5 "$OUT/tests.log"
echo "== families on the GPU ($((SECONDS - start)) s)"
timeout 120 python benches/hf_families.py --device cuda --families gpt-oss deepseek-v2 deepseek-v3 glm4-moe \
    minimax-m2 --out "$OUT" >"$OUT/families.log" 2>&1
echo "rc $?"; tail -5 "$OUT/families.log"
echo "== gpt-oss decode ($((SECONDS - start)) s)"
timeout 270 python benches/gpt_oss.py --quick --budget-s 200 --out "$OUT" >"$OUT/gpt_oss.log" 2>&1
echo "rc $?"; grep -E "tok/s|roofline|error|wrote" "$OUT/gpt_oss.log" | tail -12
echo "($((SECONDS - start)) s)"
