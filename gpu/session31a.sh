#!/usr/bin/env bash
# Session 31 (prepared in session 30): does splitting a short span into one-tile chunks, merged by flash decoding's
# last program, pay inside the decode step? Session 30 measured the split without any merge (attention_linear's
# partials): flash decoding's path at context 256 fell from 7.9 to 6.5 us a layer at 1.24B, 10.8 to 6.5 at 8B
# (batch 1, H100). The default grid (MIN_TILES = 4) never splits a span that short. Variants, profile_step at 1.24B
# and 8B, batch 1 and 8 (graph replay; the per-layer path view says what attention costs):
#   base   the defaults
#   split  MEMBOUND_DECODE_MIN_TILES=1 LEAST_TILES=1 DIRECT_TILES=1 (one-tile chunks, the last program merges)
#   active split + MEMBOUND_DECODE_ACTIVE_ARRIVALS=1 (only programs with slots count in: the larger grid's idle
#          programs skip the atomic)
# ~6 min.
#   bash gpu/session31a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
run() {  # name model env...
  local name=$1 model=$2; shift 2
  [ $SECONDS -gt 420 ] && { echo "skip $name-$model (device budget)"; return; }
  mkdir -p "$W/$name-$model"
  env "$@" timeout 100 python benches/profile_step.py --models "$model" --batches 1,8 --timed 200 \
      --out "$W/$name-$model" > "$W/profile-$name-$model.log" 2>&1
  echo "$name $model rc=$? ($((SECONDS - start)) s)"
  grep -E "^== |_flash_decoding_split \(|a layer on the path" "$W/profile-$name-$model.log" | cut -c1-150
}
SPLIT=(MEMBOUND_DECODE_MIN_TILES=1 MEMBOUND_DECODE_LEAST_TILES=1 MEMBOUND_DECODE_DIRECT_TILES=1)
for model in llama-1b llama-8b; do
  run base $model MEMBOUND_PDL=1
  run split $model "${SPLIT[@]}"
  run active $model "${SPLIT[@]}" MEMBOUND_DECODE_ACTIVE_ARRIVALS=1
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session31a.tgz" -C "$W" .
