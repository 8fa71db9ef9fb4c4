#!/usr/bin/env bash
# A short A/B (about 3 minutes on one H200, for a session's last device minutes): GPU tests of the attention
# kernel, then decode_e2e at batch 1 on the 1.24B shape (membound only: the default, the early K/V loads in the
# attention, decode-fused, decode-fused-rope). One tarball.
#
#   bash gpu/early_kv.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
timeout 45 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/backends/test_kernels.py -k "cached_attention" \
    >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== e2e ($((SECONDS - start)) s)"
timeout $((185 - SECONDS)) python benches/decode_e2e.py --models llama-1b --batches 1 --contenders membound \
    --membound-backends triton+graphs,triton+graphs+early-kv,triton+graphs+fused,triton+graphs+fused-rope \
    --budget-s $((160 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -12
tar czf "$OUT/early_kv.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
