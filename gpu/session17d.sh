#!/usr/bin/env bash
# Session 17's closing measurement (about 4 minutes on one H200): benches/decode_e2e.py at the Llama-3-8B shape,
# batch 1 and 8, 256 new tokens after the default prompt, membound triton+graphs against the cd-tuned torch.compile
# in the same run (issue 13's open goals: batch 1 >= 92% of read bandwidth, batch 8 >= 1.3x torch.compile).
#
#   bash gpu/session17d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
timeout 330 python benches/decode_e2e.py --models llama-8b --batches 1,8 --contenders membound,compile \
    --membound-backends triton+graphs --cd-tuning --budget-s 300 --out "$OUT" >"$OUT/e2e.log" 2>&1
echo "rc $? ($((SECONDS - start)) s)"
grep -vE "^\[" "$OUT/e2e.log" | tail -14
