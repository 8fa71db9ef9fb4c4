#!/usr/bin/env bash
# Session 10, last call: the GPU tests the session's changes touch (wide flash-decoding tiles at head dim 128,
# the step model's tile count, cached_attention's prefill FLOPs): kernels, decode launches, codegen, CUDA graphs,
# the HF end-to-end tests, the cost tests. Run once in session 10 under a 220 s limit: the limit cut it before
# pytest's summary, with 2 failures and 3 errors in the progress line (gpu-tests-...-session10-e2e-cost-cut.log);
# now 500 s and -v, so each test's verdict is named as it finishes (xdist prints "[gwN] PASSED/FAILED test").
#
#   bash gpu/session10e.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
timeout 500 python -m pytest -v -rfE -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_decode_launches.py tests/backends/test_triton_codegen.py tests/backends/test_cuda_graphs.py \
    tests/backends/test_attention_kernels.py tests/backends/test_decode_variants.py tests/backends/test_triton_split_decoding.py \
    tests/e2e tests/cost >"$OUT/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/|^(FAILED|ERROR)" "$OUT/tests.log" | head -20
tail -1 "$OUT/tests.log"
echo "($((SECONDS - start)) s)"
