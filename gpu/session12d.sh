#!/usr/bin/env bash
# Session 12, last device call (about 7 minutes): (1) GPU tests of decode-fused-rope (rms_norm_linear_rope_sumsq)
# and the linear-fusion kernels with the swapped product on by default; (2) the batch-8 step profiles of the
# 1.24B and 8B shapes with the swapped GEMV (per-kernel table beside the e2e results); (3) decode_e2e 1.24B at a
# 4096-token prompt (issue 12's 4k context) against the cd-tuned torch.compile. One tarball.
#
#   bash gpu/session12d.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/p8" "$W/e2e"
echo "== GPU tests"
timeout 100 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/passes/test_fuse_norm_rope.py \
    tests/backends/test_linear_fusion_kernels.py tests/backends/test_decode_launches.py >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== profile b8 ($((SECONDS - start)) s)"
timeout 110 python benches/profile_step.py --models llama-1b,llama-8b --batches 8 --out "$W/p8" >"$W/profile8.log" 2>&1
grep -E "^== |^   [_vn]|predicted \(" "$W/profile8.log" | head -24
echo "== e2e 1B 4k ($((SECONDS - start)) s)"
timeout $((400 - SECONDS)) python benches/decode_e2e.py --models llama-1b --batches 1 --new-tokens 128 --prompt 4096 \
    --contenders membound,compile --membound-backends triton+graphs --cd-tuning --budget-s $((340 - SECONDS)) \
    --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -8
tar czf "$OUT/session12d.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
