#!/usr/bin/env bash
# Prepared in session 33: WIDE_FROM below its measured threshold. Session 33 (H100) found flash decoding's 256-slot
# tiles at head dim 64 faster in the 1.24B decode step at 8192-, 16384- and 32768-slot capacities (prompts 4k-32k) and
# made 8192 the default; a 4096-slot capacity (prompts of about 2-4k) is untimed, a 512-slot one (context 256) was 1%
# slower (session 30). decode_e2e 1.24B, 128 new tokens, membound only, one process a run: prompts 2048 and 3584
# (capacity 4096), MEMBOUND_DECODE_WIDE_FROM=4096 (wide) against the default (128-slot tiles there), batch 1 then 8.
# About 30 s a run. ~4 min.
#   bash gpu/session34a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
END=${END:-300}
nvidia-smi --query-gpu=name --format=csv,noheader
for batch in 1 8; do
  for p in 2048 3584; do
    e2e_row "narrow-b$batch-$p" $batch $p MEMBOUND_DECODE_WIDE_FROM=8192
    e2e_row "wide-b$batch-$p" $batch $p MEMBOUND_DECODE_WIDE_FROM=4096
  done
done
tar czf "$OUT/session34a.tgz" -C "$W" .
