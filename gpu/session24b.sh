#!/usr/bin/env bash
# Session 24, after gpu/session24a.sh (H100: 271 moe kernel tests passed; 19 of 20 family runs ok, Gemma 3n's triton run
# failed on a CPU tensor constant): the lifted-constant fix's GPU test and Gemma 3n on cuda, then gpu/session23a.sh
# (gpt-oss / DeepSeek batch-1 divergence margins). One tarball for the first part; the tables last.
#
#   bash gpu/session24b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 100 python -m pytest -q -rfE -p no:cacheprovider tests/runtime/test_lifted_constants_gpu.py >"$W/lifted.log" 2>&1
echo "lifted-constant test rc $? ($((SECONDS - start)) s)"; tail -1 "$W/lifted.log"
timeout 150 python benches/hf_families.py --device cuda --families gemma3n lfm2 --out "$W/hf" >"$W/hf.log" 2>&1
echo "families rc $? ($((SECONDS - start)) s)"; tail -4 "$W/hf.log"
tar czf "$OUT/session24b.tgz" -C "$W" . && rm -rf "$W"
bash gpu/session23a.sh
