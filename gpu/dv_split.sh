#!/usr/bin/env bash
# Flash decoding with the output's columns split over programs (MEMBOUND_DECODE_DV_SPLIT), about 9 minutes on one
# H200: the decode kernel's GPU tests (variants incl. the Dv split, split stress) with the split off and at 4;
# decode_short_context --dv-split (1, 2, 4 column blocks against SDPA, contexts 128-4096, batch 1 and 8, generate's
# graph path); decode_e2e at 8B batch 8 (issue 13's missing 1.3x) and 1.24B batch 1, the default against dv4 and the
# cd-tuned torch.compile. One tarball.
#
#   bash gpu/dv_split.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/short" "$W/e2e8" "$W/e2e1"
for dv in 1 4; do
  MEMBOUND_DECODE_DV_SPLIT=$dv timeout 100 python -m pytest -q -rfE -n 8 -p no:cacheprovider \
      tests/backends/test_decode_variants.py tests/backends/test_split_stress_gpu.py \
      tests/backends/test_attention_kernels.py -k "decod or flash_decoding or cached" >"$W/tests-dv$dv.log" 2>&1
  echo "tests dv$dv: $(tail -1 "$W/tests-dv$dv.log")"; grep -E "(FAILED|ERROR) tests/" "$W/tests-dv$dv.log" | head -5
done
echo "== short ($((SECONDS - start)) s)"
timeout 150 python benches/experiments/decode_short_context.py --dv-split --out "$W/short" >"$W/short.log" 2>&1
tail -30 "$W/short.log" | grep -E "^d(64|128)|case"
echo "== e2e 8B b8 ($((SECONDS - start)) s)"
timeout $((440 - SECONDS)) python benches/decode_e2e.py --models llama-8b --batches 8 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+dv4 --cd-tuning \
    --budget-s $((410 - SECONDS)) --out "$W/e2e8" >"$W/e2e8.log" 2>&1
grep -vE "^\[" "$W/e2e8.log" | grep -E "step|x ok|x off" | tail -6
echo "== e2e 1.24B b1 ($((SECONDS - start)) s)"
timeout $((580 - SECONDS)) python benches/decode_e2e.py --models llama-1b --batches 1 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+dv4 --cd-tuning \
    --budget-s $((550 - SECONDS)) --out "$W/e2e1" >"$W/e2e1.log" 2>&1
grep -vE "^\[" "$W/e2e1.log" | grep -E "step|x ok|x off" | tail -6
tar czf "$OUT/dv_split.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
