#!/usr/bin/env bash
# The decode pipelines at batch 1 with the one-row GEMVs (session 14), about 6 minutes on one H200: decode_e2e b1,
# the default pipeline against decode-fused, decode-rope and decode-fused-rope and the cd-tuned torch.compile;
# then benches/logits_check.py (bf16 logits against eager). One tarball.
#
#   bash gpu/pipelines_b1.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
timeout 420 python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 --contenders membound,compile \
    --membound-backends triton+graphs,triton+graphs+fused,triton+graphs+rope,triton+graphs+fused-rope \
    --cd-tuning --budget-s 380 --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -18
echo "== logits ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/logits_check.py llama-8b llama-1b >"$W/logits.log" 2>&1
tail -8 "$W/logits.log"
tar czf "$OUT/pipelines_b1.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
