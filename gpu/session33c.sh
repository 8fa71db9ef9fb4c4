#!/usr/bin/env bash
# Session 33: does the o projection's early weight load (its resident one-row tiles, 8 MB at the 1.24B shape, loaded
# before its PDL wait while flash decoding runs) slow the latency-bound attention? profile_step 1.24B, batch 1 and 8
# (graph replay; the per-layer path view): base (defaults), olate (MEMBOUND_LINEAR_O_EARLY=0: the o GEMV streams after
# its wait), olate-ekv (and flash decoding's first K/V tiles before its own wait, MEMBOUND_DECODE_EARLY_KV=1). Then, with what is left, every gpu-marked test (pytest -m gpu).
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
run olate-ekv llama-1b MEMBOUND_LINEAR_O_EARLY=0 MEMBOUND_DECODE_EARLY_KV=1
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
left=$((END - SECONDS))
if [ $left -gt 90 ]; then
  timeout $((left - 10)) python -m pytest -q -rfE -m gpu -n 8 -p no:cacheprovider tests > "$W/gpu-tests.log" 2>&1
  echo "gpu tests rc=$? ($((SECONDS - start)) s)"; tail -1 "$W/gpu-tests.log"
else
  echo "skip gpu tests ($left s left)"
fi
tar czf "$OUT/session33c.tgz" -C "$W" .
