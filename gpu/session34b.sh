#!/usr/bin/env bash
# Prepared in session 33: one device call for what sessions 33/34 left, most important first (a session whose
# machine starts late may get only one call): (1) the gpu-marked tests (the index64 lock fix of session 33; ~90 s),
# (2) MEMBOUND_DECODE_PIPELINE decode / decode-fused / decode-rope / decode-fused-rope at 1.24B batch 1, prompt 128
# (gpu/session33b.sh's batch-1 half; ~60 s a run), (3) WIDE_FROM at a 4096-slot capacity, batch 1, prompts 2048 and
# 3584 (gpu/session34a.sh's batch-1 half; ~30 s a run). ~8 min; END bounds it.
#   bash gpu/session34b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
END=${END:-540}
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python -m pytest -q -rfE -m gpu -n 8 -p no:cacheprovider tests > "$W/gpu-tests.log" 2>&1
echo "gpu tests rc=$? ($((SECONDS - start)) s)"; tail -1 "$W/gpu-tests.log"
ROW_MIN=50
for pipe in decode decode-fused decode-rope decode-fused-rope; do
  e2e_row "$pipe-b1" 1 128 MEMBOUND_DECODE_PIPELINE=$pipe
done
for p in 2048 3584; do
  e2e_row "narrow-b1-$p" 1 $p MEMBOUND_DECODE_WIDE_FROM=8192
  e2e_row "wide-b1-$p" 1 $p MEMBOUND_DECODE_WIDE_FROM=4096
done
tar czf "$OUT/session34b.tgz" -C "$W" .
