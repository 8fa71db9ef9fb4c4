#!/usr/bin/env bash
# Session 22's first GPU call (one H100 or H200, under 10 minutes): the GPU tests sessions 20 and 21 left unrun
# (gpu/session22a.sh's and gpu/session21b.sh's: the moe kernels with biases / clamped SwiGLU / given routing,
# the gpt-oss and DeepSeek-V3 decode steps, attention sinks, Llama 4's chunks and moe, the block kernels) in one
# pytest, then the HF MoE families on cuda in one run. Results under $OUT (tests.log, families.log, hf_families-*).
#
#   bash gpu/session22t.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests"
timeout 330 python -m pytest -q -p no:cacheprovider -rfE tests/backends/test_moe_kernel.py \
    -k "bias or clamped or hopper or moe_experts or deepseek or sigmoid_scores_on_the_input or sinks or chunks or reads_only_what_it_sees or block or no_host_sync" \
    tests/backends/test_grouped_mm_kernel.py tests/backends/test_attention_sinks.py \
    tests/backends/test_attention_kernels.py tests/backends/test_attn_block.py tests/backends/test_mlp_block.py \
    >"$OUT/tests.log" 2>&1
echo "rc $?"; grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20; tail -3 "$OUT/tests.log"
echo "== families on the GPU ($((SECONDS - start)) s)"
timeout 210 python benches/hf_families.py --device cuda --families gpt-oss deepseek-v2 deepseek-v3 glm4-moe \
    minimax-m2 llama4 --out "$OUT" >"$OUT/families.log" 2>&1
echo "rc $?"; tail -9 "$OUT/families.log"
echo "($((SECONDS - start)) s)"
