#!/usr/bin/env bash
# Issue 10's end-to-end table in as few device calls as fit the 10-minute limit: benches/decode_e2e.py with membound
# bf16 / int8 / int4 / fp8 (triton+graphs) and the torch.compile bf16 and int8 (gpt-fast recipe) contenders,
# coordinate-descent tuning, one model and batch list per call; merge the files afterwards with --merge.
#
#   bash gpu/issue10_e2e.sh llama-8b 1      # then: llama-8b 8, llama-1b 1,8
#   python benches/decode_e2e.py --merge <the JSON files these calls wrote>   (one table of one card)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
model=$1
batches=${2:-1}
timeout 580 python benches/decode_e2e.py --models "$model" --batches "$batches" --contenders membound,compile,compile-int8 \
    --membound-backends triton+graphs --quantize int8,int4,fp8 --cd-tuning --budget-s 480 --out "$OUT" \
    >"$OUT/issue10-$model-b${batches//,/-}.log" 2>&1
grep -E "tok/s|step|%" "$OUT/issue10-$model-b${batches//,/-}.log" | tail -16
echo "($((SECONDS - start)) s)"
