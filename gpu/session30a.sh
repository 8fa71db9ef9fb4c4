#!/usr/bin/env bash
# Session 29-30: flash decoding at short contexts in the 1.24B decode step (graph replay, HF Llama, b1 and b8): a span
# of at most DIRECT_TILES key tiles is one program's (default 6: at context 256, 8 programs stream 3 tiles each, the
# last holding one slot); DIRECT_TILES=1 splits it over more programs, the last to finish merging, in chunks of at
# least LEAST_TILES (2 by default: 256 + 1 slots; 1: three chunks of 128); "wide" streams 256-slot tiles at head
# dim 64 over 8 warps (MEMBOUND_DECODE_WIDE_DIMS=64,128: two tiles for 257 slots). ~4 min.
# s4: four cp.async stages (all three 128-slot tiles of a 257-slot span in flight at once). ~5 min.
#   bash gpu/session30a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
for v in 6-2 1-1 1-2 wide s4; do
  d=${v%-*}; l=${v#*-}; wide=128; [ $v = wide ] && { d=6; l=2; wide=64,128; }; st=3; [ $v = s4 ] && { d=6; l=2; st=4; }
  [ $SECONDS -gt 260 ] && { echo "skip direct$v (device budget)"; continue; }
  mkdir -p "$W/direct$v"
  MEMBOUND_DECODE_DIRECT_TILES=$d MEMBOUND_DECODE_LEAST_TILES=$l MEMBOUND_DECODE_WIDE_DIMS=$wide MEMBOUND_DECODE_STAGES=$st timeout 60 python benches/profile_step.py --models llama-1b --batches 1,8 \
      --timed 200 --out "$W/direct$v" > "$W/profile-direct$v.log" 2>&1
  echo "direct$v rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_flash_decoding" "$W/profile-direct$v.log" | sort -u | cut -c1-150
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session30a.tgz" -C "$W" .
