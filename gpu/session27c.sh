#!/usr/bin/env bash
# Session 27, after the cat-of-views merge (one cos an element in Qwen3.5's mrope table): the Qwen3.5-0.8B-like
# decode step profiled again at b1/b8 (session 26c: 1029.5 / 1450.0 us, the table kernel 63 us). ~3 min.
#   bash gpu/session27c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 python benches/profile_step.py --source recurrent --models qwen3.5-0.8b-like --batches 1,8 --context 128 \
    --out "$W" > "$W/profile.log" 2>&1
echo "profile rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_horizontal_cos" "$W/profile.log" | cut -c1-220
for f in "$W"/profile_step-*; do mv "$f" "$W/$(basename "$f" | tr '+' '-')"; done
