#!/usr/bin/env bash
# Session 26, after the launch cuts (the short convolution's ring 4 -> 2 launches, in_proj_a merged, one live mask):
# Qwen3.5-0.8B-like decode step profiled again (b1/b8, and b1 without PDL: the 67 us rotary kernel of the first
# profile), recurrent_decode on it (HF eager vs membound triton+graphs, b1/b8), then which part of Kimi Linear decodes
# wrong tokens on cuda (gpu/session26_kimi_variants.py). About 6 minutes on one GPU.
#
#   bash gpu/session26c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 python benches/profile_step.py --source recurrent --models qwen3.5-0.8b-like --batches 1,8 --context 128 \
    --out "$W" > "$W/profile.log" 2>&1
echo "profile rc=$? ($((SECONDS - start)) s)"; grep -E "^== " "$W/profile.log" | cut -c1-200
MEMBOUND_PDL=0 timeout 100 python benches/profile_step.py --source recurrent --models qwen3.5-0.8b-like --batches 1 \
    --context 128 --out "$W/nopdl" > "$W/profile-nopdl.log" 2>&1
echo "profile no PDL rc=$? ($((SECONDS - start)) s)"; grep -E "^== |_horizontal_cos|_fused_cast_mul_1 " "$W/profile-nopdl.log" | cut -c1-200
timeout 150 python benches/recurrent_decode.py --models qwen3.5-0.8b-like --new-tokens 64 --reps 3 \
    --contenders "hf eager,membound triton+graphs" --out "$W" 2>&1 | grep -v "Warning\|warn(" > "$W/bench.log"
echo "bench rc=$? ($((SECONDS - start)) s)"
timeout 100 python gpu/session26_kimi_variants.py > "$W/kimi.log" 2>&1
echo "kimi rc=$? ($((SECONDS - start)) s)"
tar czf "$OUT/session26c.tgz" -C "$W" .
grep -E "tok/s" "$W/bench.log" | cut -c1-160
grep -E "^kimi" "$W/kimi.log" | cut -c1-250
