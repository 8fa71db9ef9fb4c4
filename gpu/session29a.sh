#!/usr/bin/env bash
# Session 29: the GPU-marked backend tests (session 27's row siblings, this session's parameter loads before the
# PDL wait), then the A/B of those early loads on the HF Llama 1.24B decode step (b1, b8), alternating twice. ~7 min.
#   bash gpu/session29a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python -m pytest -q -n 4 -m gpu tests/backends > "$W/pytest-backends.log" 2>&1
echo "pytest rc=$? ($((SECONDS - start)) s)"; tail -2 "$W/pytest-backends.log"; grep -E "^FAILED" "$W/pytest-backends.log" | head
for i in 1 2; do
  for v in late early; do
    mkdir -p "$W/$v$i"
    if [ $v = late ]; then s=gpu/session29_late_params.py; else s=benches/profile_step.py; fi
    timeout 150 python $s --models llama-1b --batches 1,8 --timed 300 --out "$W/$v$i" > "$W/profile-$v$i.log" 2>&1
    echo "$v$i rc=$? ($((SECONDS - start)) s)"; grep -E "^== " "$W/profile-$v$i.log" | cut -c1-150
  done
done
find "$W" -name 'profile_step-*' | while read -r f; do n=$(basename "$f" | tr '+' '-'); [ "$n" != "$(basename "$f")" ] && mv "$f" "$(dirname "$f")/$n"; done
tar czf "$OUT/session29a.tgz" -C "$W" .
