#!/usr/bin/env bash
# Session 31: issue 12's end-to-end rows on the card in hand, current code: decode_e2e at batch 1, 128 new tokens,
# membound's default against the cd-tuned torch.compile, one run a context (each its own result file).
#   MODEL=llama-1b CTXS="4096 16384 32768" bash gpu/session31d.sh   (~5 min)
#   MODEL=llama-8b CTXS="32768" bash gpu/session31d.sh               (~4 min)
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
MODEL=${MODEL:-llama-1b}; CTXS=${CTXS:-4096 16384 32768}; END=${END:-570}
nvidia-smi --query-gpu=name --format=csv,noheader
for ctx in $CTXS; do
  left=$((END - SECONDS))
  [ $left -lt 90 ] && { echo "skip $MODEL $ctx (device budget: $left s left)"; continue; }
  timeout $left python benches/decode_e2e.py --models $MODEL --batches 1 --new-tokens 128 --prompt $ctx \
      --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s $((left - 20)) \
      --out "$W/e2e/$ctx" > "$W/e2e-$MODEL-$ctx.log" 2>&1
  echo "== $MODEL $ctx rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-$MODEL-$ctx.log" | grep -E "membound|compile" | tail -5 | cut -c1-120
done
tar czf "$OUT/session31d.tgz" -C "$W" .
