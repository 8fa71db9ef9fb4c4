#!/usr/bin/env bash
# Session 8: fuse-linear-glu on by default, the GEMV tiles picked from the H200 sweeps, cuBLAS for a plain linear
# with K >= 3N at 3 <= M <= 16 (kernels/linear.py pick_config / prefers_cublas). The device was scarce this
# session, so everything is in one call (about 9 minutes):
#
#   bash gpu/session8.sh
#
# 1. the GPU tests these changes touch; 2. decode_e2e, Llama-3-8B then 3.2-1B, batch 1 and 8, prompt 128, 256 new
# tokens: membound default, the gated-down A/B (MEMBOUND_LINEAR_GLU=0) and the torch.compile contender (gpt-fast
# recipe, coordinate-descent tuning) in one run; the budget drops the last contenders when time runs short.
# The quick GEMV sweeps of the new picks (benches/gemv_sweep.py --tensor-cores --quick; --batches 1 --quick) and
# benches/profile_step.py --quick are the next call's.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== GPU tests"
timeout 110 python -m pytest -q -n 12 -p no:cacheprovider tests/backends/test_kernels.py \
    tests/backends/test_linear_fusion_gpu.py tests/passes/test_fuse_linear_glu.py tests/backends/test_decode_launches.py \
    tests/backends/test_split_stress_gpu.py tests/backends/test_triton_codegen.py tests/backends/test_cuda_graphs.py \
    >"$OUT/tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
tail -1 "$OUT/tests.log"
echo "== decode_e2e ($((SECONDS - start)) s)"
timeout $((585 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1,8 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+gated --cd-tuning \
    --budget-s $((500 - SECONDS)) --out "$OUT" >"$OUT/e2e.log" 2>&1
grep -E "^\[|step " "$OUT/e2e.log" | tail -26
echo "($((SECONDS - start)) s)"
