#!/usr/bin/env bash
# Session 9, first call (about 4 minutes): the GPU tests session 8's changes touch (two test fixes since: the
# M = 16 linear case no longer falls in cuBLAS's K >= 3N range; the KV-step tests put the model on the GPU),
# then the per-kernel profile of the default decode step (linear-glu on, the H200 GEMV tiles, cuBLAS for the
# long-K linears at batch).
#
#   bash gpu/session9a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests"
timeout 150 python -m pytest -q -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_gpu.py tests/passes/test_fuse_linear_glu.py tests/backends/test_decode_launches.py \
    tests/backends/test_split_stress_gpu.py tests/backends/test_triton_codegen.py tests/backends/test_cuda_graphs.py \
    tests/cost/test_step_prediction.py tests/cost/test_step.py >"$OUT/tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
tail -1 "$OUT/tests.log"
echo "== profile_step --quick ($((SECONDS - start)) s)"
timeout 200 python benches/profile_step.py --quick --out "$OUT" >"$OUT/profile.log" 2>&1
grep -E "^== |launches per step|predicted by kind" "$OUT/profile.log" | head -20
echo "($((SECONDS - start)) s)"
