#!/usr/bin/env bash
# fuse-linear-glu (MEMBOUND_LINEAR_GLU=1, off by default; the 2026-12-02 seventh session wrote it after its GPU budget
# was spent): the MLP's silu(gate) * up in the gate/up GEMV's epilogue (linear_glu), so the down projection is a
# plain linear. Why: the gated tensor-core GEMV (batch 3-16) ran at 51% of read bandwidth in the H200 batch-8 step
# against 95% for a plain one (cost/step.py's gemv_dot_gated / gemv_dot priors). About 8 minutes:
#   1. the kernel tests on the GPU and the bf16 decode-logits test against the default step (batch 1 and 8);
#   2. the decode step A/B in one run: llama-1b and llama-8b, batch 1 and 8, triton+graphs vs triton+graphs+glu.
# If the tests pass and the A/B wins at batch 8 without losing at batch 1, flip ENV's default in
# membound/passes/fuse_linear_glu.py (and the README row), then rerun issue 13's bench.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
timeout 150 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_linear_fusion_kernels.py \
    tests/backends/test_linear_fusion_gpu.py tests/passes/test_fuse_linear_glu.py \
    >"$OUT/glu_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/glu_tests.log" | head -10
tail -1 "$OUT/glu_tests.log"
timeout 380 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 --contenders membound \
    --membound-backends triton+graphs,triton+graphs+glu --budget-s 360 --out "$OUT" >"$OUT/glu_e2e.log" 2>&1
grep -E " step " "$OUT/glu_e2e.log" | tail -16
echo "($((SECONDS - start)) s)"
