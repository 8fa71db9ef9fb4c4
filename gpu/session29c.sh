#!/usr/bin/env bash
# Issue 13's acceptance run, one model a device call (join the two with decode_e2e.py --merge): every contender in
# one process (eager, membound triton+graphs on the built-in and on HF LlamaForCausalLM, torch.compile with gpt-fast's
# coordinate-descent tuning, HF generate), batch 1 and 8, the decode step of each membound and compile row. ~9 min.
#   bash gpu/session29c.sh llama-1b      (then llama-8b)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
model=${1:-llama-1b}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 560 python benches/decode_e2e.py --models "$model" --batches 1,8 --contenders eager,membound,membound-hf,compile,hf \
    --membound-backends triton+graphs --cd-tuning --budget-s 420 --out "$W" > "$W/decode_e2e-$model.log" 2>&1
echo "decode_e2e rc=$? ($((SECONDS - start)) s)"; tail -22 "$W/decode_e2e-$model.log" | cut -c1-170
for f in "$W"/*; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$W/$n"; done
