#!/usr/bin/env bash
# Issue 12's end-to-end rows still missing on the H100 with the current defaults (WIDE_FROM = 16384 since session 32):
# decode_e2e 1.24B b1, 128 new tokens, membound against the cd-tuned torch.compile at 4096 and 16384-token prompts
# (32768 ran in session 32: decode_e2e-nvidia-h100-...-session32-llama-1b-compile-32768). The compile contender
# needs about 3.5 min a context. ~8 min.
#   bash gpu/session33a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
END=${END:-560}
nvidia-smi --query-gpu=name --format=csv,noheader
for ctx in 4096 16384; do
  left=$((END - SECONDS))
  [ $left -lt 120 ] && { echo "skip $ctx ($left s left)"; continue; }
  timeout $left python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt $ctx \
      --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s $((left - 15)) \
      --out "$W/e2e/compile-$ctx" > "$W/e2e-compile-$ctx.log" 2>&1
  echo "== compile-$ctx rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-compile-$ctx.log" | grep -E "membound|compile" | grep step | head -2 | cut -c1-100
done
tar czf "$OUT/session33a.tgz" -C "$W" .
