#!/usr/bin/env bash
# Session 8: fuse-linear-glu on by default, the GEMV tiles picked from the H200 sweeps, cuBLAS for a plain linear
# with K >= 3N at 3 <= M <= 16 (kernels/linear.py pick_config / prefers_cublas). One model per call (10-minute limit):
#
#   bash gpu/session8.sh llama-8b tests     # the GPU tests and the quick GEMV sweeps first, then the e2e table
#   bash gpu/session8.sh llama-1b profile   # the e2e table, then the per-kernel profile of the new step
#
# e2e: membound default / gated-down A/B / int8 / int4 and the torch.compile contender (gpt-fast recipe,
# coordinate-descent tuning) in one run, batch 1 and 8, prompt 128, 256 new tokens.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
model=$1
extra=$2
if [ "$extra" = tests ]; then
    echo "== GPU tests"
    timeout 170 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_linear_fusion_kernels.py \
        tests/backends/test_linear_fusion_gpu.py tests/passes/test_fuse_linear_glu.py tests/backends/test_decode_launches.py \
        tests/backends/test_split_stress_gpu.py tests/backends/test_cuda_graphs.py tests/runtime tests/cost \
        >"$OUT/tests.log" 2>&1
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
    tail -1 "$OUT/tests.log"
    echo "== GEMV: the library's pick against cuBLAS and the sweep's neighbours (quick)"
    timeout 90 python benches/gemv_sweep.py --tensor-cores --quick --out "$OUT" >"$OUT/gemv_tc_quick.log" 2>&1
    grep -E "best over|own choice" "$OUT/gemv_tc_quick.log"
    timeout 60 python benches/gemv_sweep.py --batches 1 --quick --out "$OUT" >"$OUT/gemv_m1_quick.log" 2>&1
    grep -E "best over|own choice" "$OUT/gemv_m1_quick.log"
fi
echo "== decode_e2e $model ($((SECONDS - start)) s)"
timeout $((540 - SECONDS)) python benches/decode_e2e.py --models "$model" --batches 1,8 --contenders membound,compile \
    --membound-backends triton+graphs,triton+graphs+gated --quantize int8,int4 --cd-tuning \
    --budget-s $((470 - SECONDS)) --out "$OUT" >"$OUT/e2e-$model.log" 2>&1
grep -E "tok/s|step " "$OUT/e2e-$model.log" | tail -22
if [ "$extra" = profile ]; then
    echo "== profile_step ($((SECONDS - start)) s)"
    timeout $((585 - SECONDS)) python benches/profile_step.py --quick --out "$OUT/profile" >"$OUT/profile.log" 2>&1
    tail -30 "$OUT/profile.log"
fi
echo "($((SECONDS - start)) s)"
