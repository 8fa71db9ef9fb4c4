#!/usr/bin/env bash
# Session 34, after the ncu run (gpu/session34c.sh): (1) flash-decoding's wide tiles split for 2-3 programs per SM
# (waves of smaller chunks) against the default split, the 128-slot 4-warp form (q16 w4 32K s3) and SDPA at batch 1,
# D 64/128, caches 4k-128k
# (benches/experiments/decode_attn_variants.py); (2) WIDE_FROM at a 4096-slot capacity, batch 8 (gpu/session34a.sh's
# batch-8 half). ~5 min; END bounds it (290 s).
#   bash gpu/session34d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
END=${END:-290}
nvidia-smi --query-gpu=name --format=csv,noheader
V="q16 w4 32K s3,q16 w8 64K s3 pps1 t256,q16 w8 64K s3 pps2 t256,q16 w8 64K s3 pps3 t256,q16 w8 64K s3 pps1,q16 w8 64K s3 pps2,q16 w8 64K s3 pps3"
timeout 200 python benches/experiments/decode_attn_variants.py --out "$W" --batches 1 --lengths 4096,16384,32768,131072 \
    --variants "$V" --budget 120 --workers 8 > "$W/variants.log" 2>&1
echo "variants rc=$? ($((SECONDS - start)) s)"; tail -30 "$W/variants.log" | cut -c1-170
for f in "$W"/decode_attn_variants-*.json; do [ -e "$f" ] && mv "$f" "$W/variants.json"; done
for p in 3584; do
  e2e_row "narrow-b8-$p" 8 $p MEMBOUND_DECODE_WIDE_FROM=8192
  e2e_row "wide-b8-$p" 8 $p MEMBOUND_DECODE_WIDE_FROM=4096
done
tar czf "$OUT/session34d.tgz" -C "$W" .
