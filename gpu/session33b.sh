#!/usr/bin/env bash
# Issue 13: the fused decode pipelines on the current code (they were last timed on the H200 in sessions 14-20,
# before the one-row GEMVs, PDL ordering and flash-decoding changes since). decode_e2e 1.24B, prompt 128, 128 new
# tokens, membound only, batch 1 then 8, one run per MEMBOUND_DECODE_PIPELINE: decode (the default), decode-fused
# (norms and residual adds in the GEMVs), decode-rope (q and k rotated in the q/k/v GEMV's epilogue), decode-fused-rope
# (both). decode-block and decode-layer (one-launch blocks) lost by 40-90% on the H200 in session 20: left out.
# About 1 min a run. ~8 min.
#   bash gpu/session33b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
END=${END:-560}
nvidia-smi --query-gpu=name --format=csv,noheader
ROW_MIN=50
for batch in 1 8; do
  for pipe in decode decode-fused decode-rope decode-fused-rope; do
    e2e_row "$pipe-b$batch" $batch 128 MEMBOUND_DECODE_PIPELINE=$pipe
  done
done
tar czf "$OUT/session33b.tgz" -C "$W" .
