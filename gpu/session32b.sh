#!/usr/bin/env bash
# Session 32: the new WIDE_FROM default (256-slot flash-decoding tiles at head dim 64 over grids of >= 32768 slots)
# at its threshold: decode_e2e 1.24B, prompt 16384 (16512 positions: a 32768-slot capacity), 128 new tokens,
# membound only, the default against
# MEMBOUND_DECODE_WIDE_FROM=0 (128-slot tiles), batch 1 then batch 8. ~4 min.
#   bash gpu/session32b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
END=${END:-230}
nvidia-smi --query-gpu=name --format=csv,noheader
e2e() {  # name batch env...
  local name=$1 batch=$2; shift 2
  local left=$((END - SECONDS))
  [ $left -lt 40 ] && { echo "skip $name ($left s left)"; return; }
  env "$@" timeout $left python benches/decode_e2e.py --models llama-1b --batches $batch --new-tokens 128 \
      --prompt 16384 --contenders membound --membound-backends triton+graphs --budget-s $((left - 10)) \
      --out "$W/e2e/$name" > "$W/e2e-$name.log" 2>&1
  echo "== $name rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-$name.log" | grep -E "membound" | grep step | head -1 | cut -c1-100
}
e2e wide-b1 1 MEMBOUND_PDL=1
e2e narrow-b1 1 MEMBOUND_DECODE_WIDE_FROM=0
e2e wide-b8 8 MEMBOUND_PDL=1
e2e narrow-b8 8 MEMBOUND_DECODE_WIDE_FROM=0
tar czf "$OUT/session32b.tgz" -C "$W" .
