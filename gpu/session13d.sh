#!/usr/bin/env bash
# Session 13, the end-to-end call (about 9.5 minutes): GPU tests of the linear kernels with the resident tiles on
# by default; decode_e2e at the Llama-3-8B and 1.24B shapes, batch 8 and 1, the membound variants in $VARIANTS
# (default: the default build = resident tiles at M <= 2, the resident tiles off) against the cd-tuned
# torch.compile in one run; then the batch-1 step profiles. One tarball.
#
#   VARIANTS=triton+graphs,triton+graphs+noresident bash gpu/session13d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/p1"
VARIANTS=${VARIANTS:-triton+graphs,triton+graphs+noresident}
echo "== GPU tests"
timeout 80 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_gpu.py -k "linear or glu or rope or gated" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== e2e $VARIANTS ($((SECONDS - start)) s)"
timeout $((490 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 8,1 \
    --contenders membound,compile --membound-backends "$VARIANTS" --cd-tuning --budget-s $((420 - SECONDS)) \
    --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -30
if [ $((SECONDS - start)) -lt 500 ]; then
  echo "== profile b1 ($((SECONDS - start)) s)"
  timeout $((575 - SECONDS)) python benches/profile_step.py --models llama-1b,llama-8b --batches 1 --out "$W/p1" \
      >"$W/profile1.log" 2>&1
  grep -E "^== |^   [_vn]|predicted \(" "$W/profile1.log" | head -24
fi
tar czf "$OUT/session13d.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
