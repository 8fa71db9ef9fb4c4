#!/usr/bin/env bash
# Session 31: issue 12's acceptance benches on the card in hand. First the full benches/attention.py (prefill TFLOP/s
# against SDPA at S = 512..8192, D = 64/128, causal and not; decode GB/s against SDPA at caches 4k..128k, batch
# 1..64, GQA 32/8): it had only run in --quick mode (last on 2026-12-03, before the cp.async ring and the direct
# short spans). ~4-5 min. Then, with what is left, decode_e2e on the 8B shape at batch 1, a 4096-token prompt
# (membound against the cd-tuned torch.compile, one run).
#   bash gpu/session31b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/attn" "$W/e2e"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 420 python benches/attention.py --out "$W/attn" > "$W/attention-full.log" 2>&1
echo "attention rc=$? ($((SECONDS - start)) s)"
left=$((570 - SECONDS))
if [ $left -gt 150 ]; then
  timeout $left python benches/decode_e2e.py --models llama-8b --batches 1 --new-tokens 128 --prompt 4096 \
      --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s $((left - 30)) \
      --out "$W/e2e" > "$W/e2e-8b-4096.log" 2>&1
  echo "e2e 8b 4096 rc=$? ($((SECONDS - start)) s)"
  grep -vE "^\[" "$W/e2e-8b-4096.log" | tail -8
else
  echo "skip e2e (device budget: $left s left)"
fi
tar czf "$OUT/session31b.tgz" -C "$W" .
tail -70 "$W/attention-full.log" | cut -c1-130
