#!/usr/bin/env bash
# Session 29: the A/B of parameter loads before the PDL wait on the HF Llama 1.24B decode step (b1, b8), and of a row kernel's
# late PDL signal (kernel.ROW_LATE_SIGNAL), late and early twice, the flag once (once more: flash decoding's first K/V tiles
# before the wait, MEMBOUND_DECODE_EARLY_KV=1, over the early parameter loads);
# then the GPU-marked backend tests (session 27's row siblings, both changes) in the time left. ~7.5 min.
#   bash gpu/session29a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
for i in 1 2; do
  vs="late early"; [ $i = 1 ] && vs="$vs signal earlykv"
  for v in $vs; do
    [ $SECONDS -gt 330 ] && { echo "skip $v$i (device budget)"; continue; }
    mkdir -p "$W/$v$i"
    case $v in late) s=gpu/session29_late_params.py ;; signal) s=gpu/session29_signal.py ;; *) s=benches/profile_step.py ;; esac
    [ $v = earlykv ] && export MEMBOUND_DECODE_EARLY_KV=1 || unset MEMBOUND_DECODE_EARLY_KV
    timeout 100 python $s --models llama-1b --batches 1,8 --timed 300 --out "$W/$v$i" > "$W/profile-$v$i.log" 2>&1
    echo "$v$i rc=$? ($((SECONDS - start)) s)"; grep -E "^== " "$W/profile-$v$i.log" | cut -c1-150
  done
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session29a-profiles.tgz" -C "$W" .
timeout $((450 - SECONDS)) python -m pytest -q -n 4 -m gpu tests/backends > "$OUT/pytest-backends.log" 2>&1
echo "pytest rc=$? ($((SECONDS - start)) s)"; tail -2 "$OUT/pytest-backends.log"; grep -E "^FAILED" "$OUT/pytest-backends.log" | head
