#!/usr/bin/env bash
# Session 31: issue 12's end-to-end rows on the card in hand, current code: decode_e2e on the 1.24B shape at batch 1,
# 128 new tokens. First an A/B of MEMBOUND_DECODE_WIDE_FROM=16384 (256-slot flash-decoding tiles at head dim 64 over
# a grid of >= 16k slots) against the default at a 32768-token prompt (membound only, the default first); then
# profile_step of the 1.24B step (b1, b8, context 256) without the rope / cache-write kernel (--skip: an upper bound
# on what folding it into flash decoding could save); then membound's default against the cd-tuned torch.compile at
# 32768, 4096 and 16384 (one run a context), as far as the time goes. ~8 min.
#   bash gpu/session31d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
END=${END:-520}
nvidia-smi --query-gpu=name --format=csv,noheader
e2e() {  # name ctx contenders env...
  local name=$1 ctx=$2 who=$3; shift 3
  local left=$((END - SECONDS))
  [ $left -lt 60 ] && { echo "skip $name (device budget: $left s left)"; return; }
  env "$@" timeout $left python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt $ctx \
      --contenders $who --membound-backends triton+graphs --cd-tuning --budget-s $((left - 15)) \
      --out "$W/e2e/$name" > "$W/e2e-$name.log" 2>&1
  echo "== $name rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-$name.log" | grep -E "membound|compile" | tail -4 | cut -c1-120
}
e2e ab-default-32768 32768 membound MEMBOUND_PDL=1
e2e ab-wide16k-32768 32768 membound MEMBOUND_DECODE_WIDE_FROM=16384
if [ $((END - SECONDS)) -gt 80 ]; then
  mkdir -p "$W/skip"
  timeout $((END - SECONDS)) python benches/profile_step.py --models llama-1b --batches 1,8 --timed 200 \
      --skip _horizontal_mul_neg_cat_add --out "$W/skip" > "$W/profile-skip.log" 2>&1
  echo "== skip rc=$? ($((SECONDS - start)) s)"
  grep -E "^== |a layer on the path" "$W/profile-skip.log" | cut -c1-150
  find "$W/skip" -name 'profile_step-*' | while read -r f; do mv "$f" "$(dirname "$f")/$(basename "$f" | tr '+' '-')"; done
fi
for ctx in 32768 4096 16384; do e2e compile-$ctx $ctx membound,compile MEMBOUND_PDL=1; done
tar czf "$OUT/session31d.tgz" -C "$W" .
