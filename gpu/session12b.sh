#!/usr/bin/env bash
# Session 12, first device call (about 9 minutes): (1) GPU tests of fuse-rope-linear, the linear-fusion kernels and
# the linear kernel (with the swapped tensor-core product: W as the MMA's A operand); (2) the tensor-core sweep at
# M = 8 over the swapped product's grid (plain down projection as the step runs it since fuse-linear-glu, merged
# gate/up as linear_glu, q/k/v, o; 1.24B and 8B); (3) the batch-1 step profiles, decode against decode-rope.
# Files in one tarball (the device returns at most 8 files a call).
#
#   bash gpu/session12b.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/sweep" "$W/p-decode" "$W/p-rope"
echo "== GPU tests"
timeout 170 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/passes/test_fuse_rope_linear.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_linear_fusion_gpu.py \
    tests/backends/test_kernels.py -k "linear or rope" >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== swap sweep ($((SECONDS - start)) s)"
timeout 260 python benches/gemv_sweep.py --tensor-cores --swap --tc-batches 8,1 --models llama-8b,llama-1b \
    --shapes down_plain,gate_up_glu,qkv,o,lm_head --budget-s 210 --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m(8|1):|bandwidth|skipped" "$W/sweep.log" | head -24
for pipe in decode decode-rope; do
  [ $((SECONDS - start)) -gt 470 ] && break
  echo "== profile $pipe ($((SECONDS - start)) s)"
  MEMBOUND_DECODE_PIPELINE=$pipe timeout 90 python benches/profile_step.py --models llama-1b,llama-8b --batches 1 \
      --out "$W/p-${pipe#decode-}" >"$W/profile-$pipe.log" 2>&1
  grep -E "^== |^   _|predicted \(" "$W/profile-$pipe.log" | head -24
done
tar czf "$OUT/session12b.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
