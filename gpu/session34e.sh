#!/usr/bin/env bash
# Session 34: the wide flash-decoding variant compiled ahead (decode_attention.compile_wide_ahead) on the GPU: its
# GPU-marked test and the split-decoding GPU tests, then benches/cache_growth.py with a call that grows the cache
# from 256 to 4096 slots (WIDE_FROM: the wide variant's first launch) in a fresh process with an empty Triton cache. ~3 min.
#   bash gpu/session34e.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 70 python -m pytest -q -rfE -m gpu -p no:cacheprovider tests/backends/test_decode_variants.py \
    tests/backends/test_triton_split_decoding.py > "$W/gpu-tests.log" 2>&1
echo "gpu tests rc=$? ($((SECONDS - start)) s)"; tail -3 "$W/gpu-tests.log"
TRITON_CACHE_DIR=$W/triton-cache timeout 110 python benches/cache_growth.py --lengths 8 3000 --reps 2 --out "$W" > "$W/cache_growth.log" 2>&1
echo "cache_growth rc=$? ($((SECONDS - start)) s)"; grep -E "tokens:|Error|error" "$W/cache_growth.log" | cut -c1-200
for f in "$W"/cache_growth-*.json; do [ -e "$f" ] && mv "$f" "$W/cache_growth.json"; done
rm -rf "$W/triton-cache"
