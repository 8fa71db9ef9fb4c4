#!/usr/bin/env bash
# Session 32 (issue 12, prefill): flash attention with q/K/V/o through on-device tensor descriptors (TMA), with and
# without warp specialisation of the key loop, against SDPA and membound's pointer-load kernel (benches/experiments/flash_prefill_one_loop_ws.py:
# B4 S1k/4k, B2 S8k, D128 and D64, GQA 32/8, causal and not, bf16). ~3 min.
#   bash gpu/session32a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 300 python benches/experiments/flash_prefill_one_loop_ws.py "$OUT/flash_prefill_one_loop_ws.json" > "$OUT/flash_prefill_one_loop_ws.log" 2>&1
echo "rc=$? ($((SECONDS - start)) s)"
grep -q '^case' "$OUT/flash_prefill_one_loop_ws.log" && sed -n '/^case/,$p' "$OUT/flash_prefill_one_loop_ws.log" || python - "$OUT/flash_prefill_one_loop_ws.log" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    if line.startswith("{"):
        r = json.loads(line)
        print(f"{r['case']:<24} {r['contender']:<24} {r.get('tflops', 0):8.1f} {r.get('error', '')[:60]}")
PY
grep -E "Error|error" "$OUT/flash_prefill_one_loop_ws.log" | grep -v '^{' | head -5
# the issue's bench (prefill half, quick shapes) with the descriptor forms as the default
for form in ws tma; do
  [ $SECONDS -gt 330 ] && break
  mkdir -p "$OUT/attn-$form"
  MEMBOUND_FLASH_FORM=$form timeout 120 python benches/attention.py --quick --only prefill --out "$OUT/attn-$form" \
      > "$OUT/attn-$form.log" 2>&1
  echo "== attention --quick prefill form=$form rc=$? ($((SECONDS - start)) s)"
  grep -E "^prefill" "$OUT/attn-$form.log" | cut -c1-100
done
# then session 31's prepared run (decode_e2e 1.24B b1 at 32k/4k/16k vs torch.compile, the wide-tile A/B, the
# profile without the rope kernel) in the time left
END=$((430 - SECONDS)) bash gpu/session31d.sh
