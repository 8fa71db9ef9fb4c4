#!/usr/bin/env bash
# Correctness on the card, about 3 minutes on one H200: GPU tests of the cached-attention kernels, then
# benches/logits_check.py (bf16 logits of the compiled 8B and 1.24B shapes against eager). One tarball.
#
#   bash gpu/logits.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
timeout 90 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/backends/test_kernels.py -k "cached_attention" \
    >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== logits ($((SECONDS - start)) s)"
timeout $((400 - SECONDS)) python benches/logits_check.py llama-8b llama-1b >"$W/logits.log" 2>&1
tail -12 "$W/logits.log"
tar czf "$OUT/logits.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
