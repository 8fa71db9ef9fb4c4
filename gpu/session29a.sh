#!/usr/bin/env bash
# Session 29: the GPU-marked backend tests (session 27's row siblings, this session's parameter loads before the PDL
# wait), then the A/B of those early loads on the HF Llama 1.24B decode step (b1, b8): late and early twice, and
# flash decoding's first K/V tiles before the wait (MEMBOUND_DECODE_EARLY_KV=1, over the early parameter loads) once,
# as the time allows. ~6.5 min. (The session's run also had "signal1": a row kernel's PDL signal after its first
# store, an experiment flag measured slower and removed after; gpu/session29_signal.py at commit 5a539bd.)
#   bash gpu/session29a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python -m pytest -q -n 4 -m gpu tests/backends > "$OUT/pytest-backends.log" 2>&1
echo "pytest rc=$? ($((SECONDS - start)) s)"; tail -2 "$OUT/pytest-backends.log"; grep -E "^FAILED" "$OUT/pytest-backends.log" | head
for run in late1 early1 late2 early2 earlykv1; do
  [ $SECONDS -gt 330 ] && { echo "skip $run (device budget)"; continue; }
  v=${run%?}; mkdir -p "$W/$run"
  case $v in late) s=gpu/session29_late_params.py ;; *) s=benches/profile_step.py ;; esac
  [ $v = earlykv ] && export MEMBOUND_DECODE_EARLY_KV=1 || unset MEMBOUND_DECODE_EARLY_KV
  timeout 90 python $s --models llama-1b --batches 1,8 --timed 300 --out "$W/$run" > "$W/profile-$run.log" 2>&1
  echo "$run rc=$? ($((SECONDS - start)) s)"; grep -E "^== " "$W/profile-$run.log" | cut -c1-150
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session29a-profiles.tgz" -C "$W" .
