#!/usr/bin/env bash
# Session 25, after gpu/session25a.sh: the recurrent hybrids' decode speed (benches/recurrent_decode.py): a
# Qwen3.5-0.8B-like and a Mamba-2-780M-like model (bf16, random weights), b1 and b8, HF eager vs membound triton and
# triton+graphs, with each step's % of read bandwidth. About 6 minutes on one H100.
#
#   bash gpu/session25b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 520 python benches/recurrent_decode.py --out "$W" --reps 3 2>&1 | grep -v "Warning\|warn(" | tee "$W/bench.log" \
    | grep -E "tok/s|wrote"
tar czf "$OUT/session25b.tgz" -C "$W" .
echo "($((SECONDS - start)) s)"
