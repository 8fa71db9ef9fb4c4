#!/usr/bin/env bash
# The decode pipelines at batch 1 with the one-row GEMVs (session 14), about 6 minutes on one H200: decode_e2e b1,
# the default against early K/V loads in the attention (MEMBOUND_DECODE_EARLY_KV=1), decode-fused and
# decode-fused-rope, and the cd-tuned torch.compile;
# GPU tests of the attention kernel first; then benches/logits_check.py (bf16 logits against eager). One tarball.
#
#   bash gpu/pipelines_b1.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
timeout 60 python -m pytest -q -rfE -n 8 -p no:cacheprovider tests/backends/test_kernels.py -k "cached_attention" \
    >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
timeout 420 python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 --contenders membound,compile \
    --membound-backends triton+graphs,triton+graphs+early-kv,triton+graphs+fused,triton+graphs+fused-rope \
    --cd-tuning --budget-s 380 --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -18
echo "== logits ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/logits_check.py llama-8b llama-1b >"$W/logits.log" 2>&1
tail -8 "$W/logits.log"
tar czf "$OUT/pipelines_b1.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
