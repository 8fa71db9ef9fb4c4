#!/usr/bin/env bash
# Session 13, the resident tiles' call (about 9.5 minutes): (1) GPU tests of the linear kernels (resident tiles the
# default at M <= 2, K <= 4096); (2) the resident grid's sweep at M = 1 over the 1.24B / 8B q/k/v, o, linear_glu and
# head (beside the library's pick without them); (3) decode_e2e at batch 1 (the tiles change M <= 2 only), 8B and
# 1.24B: the default build, the resident tiles off, decode-fused and decode-fused-rope (the norm in the GEMV's
# prologue: with the weight loaded before the wait, the prologue's latency overlaps the stream) against the
# cd-tuned torch.compile; (4) the batch-1 step profiles if time is left. One tarball.
#
#   bash gpu/session13e.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/p1" "$W/sweep"
VARIANTS=${VARIANTS:-triton+graphs,triton+graphs+noresident,triton+graphs+fused,triton+graphs+fused-rope}
echo "== GPU tests"
timeout 90 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_linear_fusion_gpu.py \
    tests/backends/test_norm_stats_kernels.py -k "linear or gated or rope or glu or norm" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== resident sweep M=1 ($((SECONDS - start)) s)"
timeout $((230 - SECONDS)) python benches/gemv_sweep.py --resident --batches 1,8 --models llama-1b,llama-8b \
    --shapes qkv,o,gate_up_glu,lm_head --budget-s $((190 - SECONDS)) --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m(1|8):|bandwidth|skipped" "$W/sweep.log" | head -20
echo "== e2e b1 $VARIANTS ($((SECONDS - start)) s)"
timeout $((540 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1 \
    --contenders membound,compile --membound-backends "$VARIANTS" --cd-tuning --budget-s $((480 - SECONDS)) \
    --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -22
if [ $((SECONDS - start)) -lt 520 ]; then
  echo "== profile b1 ($((SECONDS - start)) s)"
  timeout $((585 - SECONDS)) python benches/profile_step.py --models llama-1b,llama-8b --batches 1 --out "$W/p1" \
      >"$W/profile1.log" 2>&1
  grep -E "^== |^   [_vn]|predicted \(" "$W/profile1.log" | head -24
fi
tar czf "$OUT/session13e.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
