#!/usr/bin/env bash
# Session 10, issue 12's end-to-end rows: benches/decode_e2e.py on llama-1b (HF-free built-in Llama at the 3.2-1B
# shape, head dim 64) at prompts 4k, 16k and 32k, batch 1, 128 new tokens, membound triton+graphs against the
# cd-tuned torch.compile contender in the same run; then the step's per-kernel profile at 32k cached positions.
#
#   bash gpu/session10c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
for ctx in 4096 16384 32768; do
  echo "== context $ctx ($((SECONDS - start)) s)"
  mkdir -p "$OUT/ctx$ctx"
  timeout 150 python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt $ctx \
      --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s 120 --out "$OUT/ctx$ctx" \
      >"$OUT/e2e_ctx$ctx.log" 2>&1
  grep -E "step|tok/s" "$OUT/e2e_ctx$ctx.log" | grep -vE "^\[" | tail -6
done
echo "== profile at 32k ($((SECONDS - start)) s)"
timeout $((590 - SECONDS)) python benches/profile_step.py --models llama-1b --batches 1 --context 32768 --out "$OUT" \
    >"$OUT/profile32k.log" 2>&1
grep -A14 "^== " "$OUT/profile32k.log" | head -24
echo "($((SECONDS - start)) s)"
