#!/usr/bin/env bash
# Prepared in session 11 for the next device call (about 8 minutes): fuse-rope-linear (q and k's rotary embedding
# in the q/k/v GEMV's epilogue, pipeline decode-rope) on the GPU: (1) its tests and linear_rope's kernel tests
# (bf16/fp16 on the GPU: the bit-exact comparisons are the interpreter's only), with the linear-fusion tests
# session 11 loosened for the GPU; (2) the 1.24B and 8B batch-1 step profiles, decode vs decode-rope (launches,
# per-kernel time); (3) decode_e2e 1.24B and 8B, batch 1 and 8, triton+graphs against triton+graphs+rope and the
# cd-tuned torch.compile in one run. Files in one tarball (the device returns at most 8 files a call).
#
#   bash gpu/session12a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/p-decode" "$W/p-rope"
echo "== GPU tests"
timeout 150 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/passes/test_fuse_rope_linear.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_linear_fusion_gpu.py >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
for pipe in decode decode-rope; do
  echo "== profile $pipe ($((SECONDS - start)) s)"
  MEMBOUND_DECODE_PIPELINE=$pipe timeout 100 python benches/profile_step.py --models llama-1b,llama-8b --batches 1 \
      --out "$W/p-${pipe#decode-}" >"$W/profile-$pipe.log" 2>&1
  grep -E "^== |^   _|predicted \(" "$W/profile-$pipe.log" | head -24
done
echo "== e2e ($((SECONDS - start)) s)"
timeout $((560 - SECONDS)) python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+rope --cd-tuning --budget-s $((500 - SECONDS)) \
    --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -24
tar czf "$OUT/session12a.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
