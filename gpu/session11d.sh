#!/usr/bin/env bash
# Session 11, fourth device call (about 7 minutes): linear_glu's narrow register tile (pick_config glu=True) in
# the decode step: (1) the GPU tests of the linear fusions (the GLU step's logits against the gated path, bf16);
# (2) the 1.24B and 8B batch-1 step profiles (PDL on; session11b's are the baseline); (3) issue 13's 8B rows,
# batch 1 and 8, against the cd-tuned torch.compile in the same run. Files in one tarball.
#
#   bash gpu/session11d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/profile"
echo "== GPU tests"
timeout 110 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_linear_fusion_gpu.py \
    tests/backends/test_linear_fusion_kernels.py >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== profile ($((SECONDS - start)) s)"
timeout 100 python benches/profile_step.py --models llama-1b,llama-8b --batches 1 --out "$W/profile" \
    >"$W/profile.log" 2>&1
grep -E "^== |_linear_small_m|predicted \(" "$W/profile.log" | head -12
echo "== e2e 8B ($((SECONDS - start)) s)"
timeout $((540 - SECONDS)) python benches/decode_e2e.py --models llama-8b --batches 1,8 --contenders membound,compile \
    --membound-backends triton+graphs --cd-tuning --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -16
tar czf "$OUT/session11d.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
