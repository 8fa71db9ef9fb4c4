#!/usr/bin/env bash
# Session 33: does the o projection's early weight load (its resident one-row tiles, 8 MB at the 1.24B shape, loaded
# before its PDL wait while flash decoding runs) slow the latency-bound attention? profile_step 1.24B, batch 1 and 8
# (graph replay; the per-layer path view): base (defaults), olate (MEMBOUND_LINEAR_O_EARLY=0: the o GEMV streams after
# its wait), base again (noise). Then, with what is left, gpu/session32b.sh's WIDE_FROM threshold rows at batch 1.
# ~8 min.
#   bash gpu/session33c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
END=${END:-540}
nvidia-smi --query-gpu=name --format=csv,noheader
run() {  # name model env...
  local name=$1 model=$2; shift 2
  local left=$((END - SECONDS))
  [ $left -lt 110 ] && { echo "skip $name-$model ($left s left)"; return; }
  mkdir -p "$W/$name-$model"
  env "$@" timeout 105 python benches/profile_step.py --models "$model" --batches 1,8 --timed 200 \
      --out "$W/$name-$model" > "$W/profile-$name-$model.log" 2>&1
  echo "$name $model rc=$? ($((SECONDS - start)) s)"
  grep -E "^== |a layer on the path|^ +[0-9.]+ path" "$W/profile-$name-$model.log" | cut -c1-150
}
run base llama-1b MEMBOUND_PDL=1
run olate llama-1b MEMBOUND_LINEAR_O_EARLY=0
run base2 llama-1b MEMBOUND_PDL=1
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
e2e() {  # name batch env...
  local name=$1 batch=$2; shift 2
  local left=$((END - SECONDS))
  [ $left -lt 60 ] && { echo "skip $name ($left s left)"; return; }
  mkdir -p "$W/e2e"
  env "$@" timeout $left python benches/decode_e2e.py --models llama-1b --batches $batch --new-tokens 128 \
      --prompt 16384 --contenders membound --membound-backends triton+graphs --budget-s $((left - 10)) \
      --out "$W/e2e/$name" > "$W/e2e-$name.log" 2>&1
  echo "== $name rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-$name.log" | grep -E "membound" | grep step | head -1 | cut -c1-100
}
e2e wide-b1 1 MEMBOUND_PDL=1
e2e narrow-b1 1 MEMBOUND_DECODE_WIDE_FROM=0
tar czf "$OUT/session33c.tgz" -C "$W" .
