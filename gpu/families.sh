#!/usr/bin/env bash
# Real model families on the GPU, about 5 minutes on one H200 (its transformers may be older than CI's: 5.17 spells
# GPT-J's rotary lookup, Falcon's ALiBi and CodeGen's scaling differently from 5.25):
#   1. benches/hf_families.py --device cuda: all 42 families, reference and triton backends (kernels compiled,
#      CUDA graphs as generate uses them), in 8 processes over the CPU cores (compiles are CPU-bound)
#   2. the model fuzzer on CUDA with CUDA graphs over the families sessions 15-16 made decode with the KV cache (OPT,
#      GPT-J, BLOOM with ALiBi, GPT-Neo with local layers, XGLM, CodeGen, MPT), random fp32 / fp16 / bf16 per case
#   3. the e2e tests of their forms (CPU tensors: the reference backend and the capture)
# One tarball; the tables last.
#
#   bash gpu/families.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
fams=$(python -c "from benches.hf_families import FAMILIES; print(' '.join(FAMILIES))")
read -r -a all <<<"$fams"
for i in 0 1 2 3 4 5 6 7; do
    part=(); for j in "${!all[@]}"; do (( j % 8 == i )) && part+=("${all[$j]}"); done
    timeout 330 python benches/hf_families.py --device cuda --families "${part[@]}" --out "$W/hf$i" \
        >"$W/hf$i.log" 2>&1 &
done
wait
echo "hf_families: $(cat "$W"/hf?.log | grep -cE '^[a-z0-9-]+ +(reference|triton) +ok ') of $((${#all[@]} * 2)) runs ok"
grep -hE '^[a-z0-9-]+ +(reference|triton) +(error|wrong)' "$W"/hf?.log | cut -c1-200
timeout 150 python benches/fuzz_models.py --device cuda --cuda-graphs --minutes 2 \
    --families hf-opt hf-gptj hf-bloom hf-gptneo hf-xglm hf-codegen hf-mpt --out "$W/fuzz_models-families.json" >"$W/fuzz.log" 2>&1
echo "fuzz rc $?"; python - "$W/fuzz_models-families.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print({k: d[k] for k in ("passed", "cases_with_mismatches", "cases_with_exceptions", "exception_types", "families")})
for f in d["failures"]:
    print(f["case"][:160], f["mismatches"][:1], list(f["errors"].values())[:1])
PY
timeout 120 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/e2e/test_attention_forms.py \
    tests/e2e/test_generate.py -k "bloom or gpt_neo or opt or gptj" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
tar czf "$OUT/families.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
