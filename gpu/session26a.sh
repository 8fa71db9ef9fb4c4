#!/usr/bin/env bash
# Session 26: where the hybrids' decode step goes (benches/profile_step.py --source recurrent: launches, time per
# kernel, gaps; Qwen3.5-0.8B-like and Mamba-2-780M-like, b1/b8), then benches/recurrent_decode.py on the
# Qwen3.5-0.8B-like model (all contenders, b1/b8; the JSON is rewritten after every row). About 9 minutes on one GPU.
#
#   bash gpu/session26a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 230 python benches/profile_step.py --source recurrent --models qwen3.5-0.8b-like,mamba2-780m-like \
    --batches 1,8 --context 128 --out "$W" > "$W/profile.log" 2>&1
echo "profile rc=$? ($((SECONDS - start)) s)"
grep -E "^== |launches per step|predicted \(" "$W/profile.log" | cut -c1-220
timeout $((540 - SECONDS + start)) python benches/recurrent_decode.py --models qwen3.5-0.8b-like --new-tokens 64 \
    --reps 3 --out "$W" 2>&1 | grep -v "Warning\|warn(" > "$W/bench.log"
echo "bench rc=$? ($((SECONDS - start)) s)"
tar czf "$OUT/session26a.tgz" -C "$W" .
grep -E "tok/s|wrote" "$W/bench.log" | cut -c1-160
