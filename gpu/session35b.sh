#!/usr/bin/env bash
# Session 35, a shorter first call than gpu/session35a.sh (device starts were refused for 20 minutes): (1)
# gpu/session34e.sh (the wide variant compiled ahead: its GPU test, the split-decoding GPU tests, cache_growth
# 256 -> 4096 slots with an empty Triton cache: issue 13's growing-call goal); (2) session34d.sh's variant run only
# (flash decoding at batch 1 against SDPA, D 64/128, 4k-128k: issue 12). ~6.5 min; the batch-8 WIDE_FROM rows and
# the ncu run (session34c.sh) are left for a later call.
#   bash gpu/session35b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
bash gpu/session34e.sh
V="q16 w4 32K s3,q16 w8 64K s3 pps1 t256,q16 w8 64K s3 pps2 t256,q16 w8 64K s3 pps3 t256,q16 w8 64K s3 pps1,q16 w8 64K s3 pps2,q16 w8 64K s3 pps3"
timeout 200 python benches/experiments/decode_attn_variants.py --out "$W" --batches 1 --lengths 4096,16384,32768,131072 \
    --variants "$V" --budget 120 --workers 8 > "$W/variants.log" 2>&1
echo "variants rc=$? ($((SECONDS - start)) s)"; tail -30 "$W/variants.log" | cut -c1-170
for f in "$W"/decode_attn_variants-*.json; do [ -e "$f" ] && mv "$f" "$W/variants.json"; done
tar czf "$OUT/session35b.tgz" -C "$W" .
