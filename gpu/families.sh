#!/usr/bin/env bash
# The HF families session 15 made decode with the KV cache (OPT, GPT-J, BLOOM with ALiBi, GPT-Neo with local layers),
# on the GPU for the first time, about 4 minutes on one H200: the model fuzzer over them on CUDA with CUDA graphs
# (random fp32 / fp16 / bf16 per case, both backends, greedy tokens against eager recomputation), then the e2e tests
# of their forms (CPU tensors: the reference backend and the capture). One tarball.
#
#   bash gpu/families.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 200 python benches/fuzz_models.py --device cuda --cuda-graphs --minutes 3 \
    --families hf-opt hf-gptj hf-bloom hf-gptneo --out "$W/fuzz_models-families.json" >"$W/fuzz.log" 2>&1
echo "fuzz rc $?"; grep -vE "^\[|Warning|warn" "$W/fuzz.log" | tail -12
timeout 120 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/e2e/test_attention_forms.py \
    tests/e2e/test_generate.py -k "bloom or gpt_neo or opt or gptj" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
tar czf "$OUT/families.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
