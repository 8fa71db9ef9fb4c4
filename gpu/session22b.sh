#!/usr/bin/env bash
# Left by session 21 (no GPU was lent) for a GPU call after session22a.sh (about 5 minutes on one H200): gpt-oss's
# fused experts reading the model's K-major weights in place (MEMBOUND_MOE_COPY_SHARE=0, what fuse-moe does where
# the [E, N, K] copies would not fit the card, e.g. gpt-oss-20b on an 80 GB H100) against the copies
# (session22a.sh's run, the default on an H200). If in place is not slower, the copies can go.
# Results under $OUT (gpt_oss.log, gpt_oss-*.json).
#
#   bash gpu/session22b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== gpt-oss decode, experts read in place ($((SECONDS - start)) s)"
MEMBOUND_MOE_COPY_SHARE=0 timeout 270 python benches/gpt_oss.py --quick --budget-s 120 --hf-batches 1 --out "$OUT" \
    >"$OUT/gpt_oss.log" 2>&1
echo "rc $?"; grep -E "tok/s|roofline|error|wrote|in place" "$OUT/gpt_oss.log" | tail -12
echo "($((SECONDS - start)) s)"
