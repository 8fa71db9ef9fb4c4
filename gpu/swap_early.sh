#!/usr/bin/env bash
# Batch 8 with the swapped product's first W tile loaded before the PDL wait (MEMBOUND_LINEAR_SWAP_EARLY), about
# 9 minutes on one H200: GPU tests of the early tile (every fused form against the loop alone) and the linear
# kernels; decode_e2e at batch 8 on both shapes, the default against swap-early and the cd-tuned torch.compile;
# profile_step --quick of the default step (PDL; the per-kernel table issue 13 asks for); then, with what is left,
# gemv_sweep's swapped-product grid at M = 8 on the 8B shapes, early tile off and on. One tarball.
#
#   bash gpu/swap_early.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/profile" "$W/sweep0" "$W/sweep1"
timeout 90 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_linear_fusion_kernels.py \
    tests/backends/test_kernels.py -k "swap_early or linear_gpu or swap" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== e2e b8 ($((SECONDS - start)) s)"
timeout $((400 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 8 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+swap-early --cd-tuning \
    --budget-s $((370 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | grep -E "step|x ok|x off" | tail -12
echo "== profile ($((SECONDS - start)) s)"
timeout $((500 - SECONDS)) python benches/profile_step.py --quick --out "$W/profile" >"$W/profile.log" 2>&1
grep -E "^== |predicted by kind" "$W/profile.log" | tail -8
left=$((570 - SECONDS))
if [ $left -gt 60 ]; then
  echo "== sweep ($((SECONDS - start)) s)"
  for e in 0 1; do
    MEMBOUND_LINEAR_SWAP_EARLY=$e timeout $((left / 2)) python benches/gemv_sweep.py --tensor-cores --swap \
        --tc-batches 8 --models llama-8b --shapes qkv,o,gate_up,down --budget-s $((left / 2 - 25)) \
        --out "$W/sweep$e" >"$W/sweep$e.log" 2>&1
  done
  tail -30 "$W/sweep0.log" | grep -E "llama-8b|best" | head -12; tail -30 "$W/sweep1.log" | grep -E "llama-8b|best" | head -12
fi
tar czf "$OUT/swap_early.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
