#!/usr/bin/env bash
# Session 26, after gpu/session26a.sh: benches/recurrent_decode.py on the Mamba-2-780M-like model (all contenders,
# b1/b8; the JSON is rewritten after every row). About 8 minutes on one GPU.
#
#   bash gpu/session26b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 560 python benches/recurrent_decode.py --models mamba2-780m-like --new-tokens 64 --reps 3 --out "$W" 2>&1 \
    | grep -v "Warning\|warn(" > "$W/bench.log"
echo "bench rc=$? ($((SECONDS - start)) s)"
tar czf "$OUT/session26b.tgz" -C "$W" .
grep -E "tok/s|wrote" "$W/bench.log" | cut -c1-160
