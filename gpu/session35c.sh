#!/usr/bin/env bash
# Session 35: flash decoding with the warps along the key tile (benches/experiments/decode_warp_split.py, cuDNN's
# 1x4x1 layout, known length) against pick, the best wide variant and SDPA at batch 1 and 4, D 64/128, 4k-128k
# (decode_attn_variants.py --warp-split). ~2 min.
#   bash gpu/session35c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
WS="w4 t32 s3 pps2,w4 t32 s3 pps3,w4 t32 s2 pps2,w4 t16 s3 pps2,w4 t16 s4 pps3,w8 t32 s3 pps1,w8 t16 s3 pps2,w4 t64 s2 pps2"
timeout 240 python benches/experiments/decode_attn_variants.py --out "$W" --batches 1,4 --lengths 4096,16384,32768,131072 \
    --variants "q16 w8 64K s3 pps1" --warp-split "$WS" --budget 150 --workers 8 > "$W/ws.log" 2>&1
echo "ws rc=$? ($((SECONDS - start)) s)"; grep -E "ws |FAIL|Error" "$W/ws.log" | head -12 | cut -c1-200; tail -32 "$W/ws.log" | cut -c1-170
for f in "$W"/decode_attn_variants-*.json; do [ -e "$f" ] && mv "$f" "$W/ws.json"; done
