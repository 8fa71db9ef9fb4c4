#!/usr/bin/env bash
# Session 17: the o projection's weight asked of L2 while flash decoding runs (MEMBOUND_DECODE_PREFETCH_MB), an A/B
# of the decode step in one GPU session (about 4 minutes on one H200): benches/decode_e2e.py, llama-1b and llama-8b,
# batch 1 and 8, 128 new tokens after 128, membound triton+graphs only, once per setting (0 = off, 8 MB, 64 MB = the
# whole weight at both shapes). Tables last; result files under $OUT/work (tarball).
#
#   bash gpu/session17c.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
for mb in 0 8 64; do
    MEMBOUND_DECODE_PREFETCH_MB=$mb timeout 150 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 \
        --new-tokens 128 --prompt 128 --contenders membound --membound-backends triton+graphs --budget-s 120 \
        --out "$W/pf$mb" >"$W/e2e-pf$mb.log" 2>&1
    echo "prefetch ${mb} MB: rc $? ($((SECONDS - start)) s)"
done
tar czf "$OUT/work.tgz" -C "$W" .
for mb in 0 8 64; do
    echo "== prefetch ${mb} MB"
    grep -E "membound triton\+graphs +step" "$W/e2e-pf$mb.log"
    grep -E "^llama.*membound" "$W/e2e-pf$mb.log" | grep -v step | awk '{print $1, $2, $NF, $(NF-1)}'
done
