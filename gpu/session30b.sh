#!/usr/bin/env bash
# Session 30: attention_linear (the o projection merges flash decoding's partials) against the library's chain
# (benches/experiments/attn_o_merge.py, ~2 min), then the short-context flash-decoding variants of session30a.sh
# in the 1.24B decode step (~4 min, guarded).
#   bash gpu/session30b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 240 python benches/experiments/attn_o_merge.py --out "$W" > "$W/attn_o_merge.log" 2>&1
echo "attn_o_merge rc=$? ($((SECONDS - start)) s)"; tail -16 "$W/attn_o_merge.log" | cut -c1-200
for v in 6-2 1-1 wide s4; do
  d=${v%-*}; l=${v#*-}; wide=128; [ $v = wide ] && { d=6; l=2; wide=64,128; }; st=3; [ $v = s4 ] && { d=6; l=2; st=4; }
  [ $SECONDS -gt 420 ] && { echo "skip direct$v (device budget)"; continue; }
  mkdir -p "$W/direct$v"
  MEMBOUND_DECODE_DIRECT_TILES=$d MEMBOUND_DECODE_LEAST_TILES=$l MEMBOUND_DECODE_WIDE_DIMS=$wide MEMBOUND_DECODE_STAGES=$st timeout 60 python benches/profile_step.py --models llama-1b --batches 1,8 \
      --timed 200 --out "$W/direct$v" > "$W/profile-direct$v.log" 2>&1
  echo "direct$v rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_flash_decoding" "$W/profile-direct$v.log" | sort -u | cut -c1-150
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session30b.tgz" -C "$W" .
