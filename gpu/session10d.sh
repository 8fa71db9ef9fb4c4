#!/usr/bin/env bash
# Session 10, issue 13's 8B rows with the wide flash-decoding tiles (head dim 128): benches/decode_e2e.py, llama-8b,
# batch 1 and 8, prompt 128, 256 new tokens, membound triton+graphs against the cd-tuned torch.compile contender
# in the same run; then the step's per-kernel profile at context 256 (batch 1 and 8).
#
#   bash gpu/session10d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
mkdir -p "$OUT/e2e"
timeout 260 python benches/decode_e2e.py --models llama-8b --batches 1,8 --contenders membound,compile \
    --membound-backends triton+graphs --cd-tuning --out "$OUT/e2e" >"$OUT/e2e.log" 2>&1
grep -vE "^\[" "$OUT/e2e.log" | tail -16
echo "== profile ($((SECONDS - start)) s)"
timeout $((330 - SECONDS)) python benches/profile_step.py --models llama-8b --batches 1,8 --out "$OUT" >"$OUT/profile.log" 2>&1
grep -E "^== |_flash_decoding|predicted \(" "$OUT/profile.log" | head -12
echo "($((SECONDS - start)) s)"
