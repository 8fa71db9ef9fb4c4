#!/usr/bin/env bash
# Session 29: flash decoding at short contexts in the 1.24B decode step (graph replay, HF Llama, b1 and b8): a span
# of at most DIRECT_TILES key tiles is one program's (default 6: at context 256, 8 programs stream 3 tiles each, the
# last holding one slot); 1 and 2 split it over more programs with the last one merging. ~3 min.
#   bash gpu/session29d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
for d in 6 1 2; do
  [ $SECONDS -gt 150 ] && { echo "skip direct$d (device budget)"; continue; }
  mkdir -p "$W/direct$d"
  MEMBOUND_DECODE_DIRECT_TILES=$d timeout 60 python benches/profile_step.py --models llama-1b --batches 1,8 \
      --timed 200 --out "$W/direct$d" > "$W/profile-direct$d.log" 2>&1
  echo "direct$d rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_flash_decoding" "$W/profile-direct$d.log" | sort -u | cut -c1-150
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session29d.tgz" -C "$W" .
