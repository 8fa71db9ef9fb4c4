#!/usr/bin/env bash
# What the 2026-12-02 seventh session built after its GPU budget was spent: run this first in the next GPU call
# (one H200, about 9 minutes; results under $OUT, a short table last).
#
#   bash gpu/pending.sh
#
# 1. PRE_GATE's prologue as [GATE_ROWS, 4096 / GATE_ROWS] tiles (kernels/linear.py, quant_matmul.py; on by default,
#    interpreter-checked): the gated and normed tensor-core GEMVs (batch 3-16) waited on M x K / 512 serial L2
#    loads before their loop; the H200 batch-8 steps ran each gated launch 30-45 us over the plain line.
# 2. fuse-linear-glu (MEMBOUND_LINEAR_GLU=1, off by default): silu(gate) * up in the gate/up GEMV's epilogue, the
#    down projection a plain linear. If its tests pass and the A/B below wins at batch 8 without losing at batch
#    1, flip ENV's default in membound/passes/fuse_linear_glu.py (and the README row).
# 3. flash decoding writes the result directly when one chunk of the cache has slots (a short prefix in a CUDA graph
#    sized for the capacity): no partial, no arrival atomics, no merge (MEMBOUND_DECODE_DIRECT=1, on by default,
#    interpreter-checked). The A/B row below runs the default step with it off.
# 4. generate's loop: positions for every step made once, and the row-index input copied into the graph once a
#    call (CapturedGraph's constant_inputs): two kernels less per token (tests/backends/test_cuda_graphs.py, runtime).
# 5. kernels/moe.py's decode launch shape moved into decode_plan (same numbers; the MoE kernel tests run again).
# decode-fused (MEMBOUND_DECODE_PIPELINE) rides along: its 1.24B batch-8 step was 2.284 ms against 1.447 (session 5),
# which the normed prologue's serial steps would explain; if it now pays, see passes/pipeline.py's note.
# Compare the rows with benches/results/decode_e2e-nvidia-h200-2026-12-02-session7-issue10-merged.json (the old
# prologue; same card kind): 8B b8 bf16 step 6.520 ms, int8 4.997, int4 4.240; 1B b8 bf16 1.397.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
echo "== tests: linear / quant kernels on the GPU, the fused decode steps, fuse-linear-glu"
timeout 200 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_linear_fusion_kernels.py \
    tests/backends/test_linear_fusion_gpu.py tests/backends/test_quant_kernels.py tests/backends/test_int4_pairs.py \
    tests/passes/test_fuse_linear_glu.py tests/backends/test_decode_variants.py tests/backends/test_attention_kernels.py \
    tests/backends/test_decode_launches.py tests/backends/test_cuda_graphs.py tests/runtime \
    tests/backends/test_moe_kernel.py >"$OUT/tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -10
tail -1 "$OUT/tests.log"
echo "== decode steps: default (new prologue), linear-glu, decode-fused, int8, int4; 1B and 8B, batch 1 and 8"
timeout 360 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 --contenders membound \
    --membound-backends triton+graphs,triton+graphs+glu,triton+graphs+fused --quantize int8,int4 --budget-s 340 --out "$OUT" \
    >"$OUT/e2e.log" 2>&1
grep -E " step " "$OUT/e2e.log" | head -20
echo "== the default step with MEMBOUND_DECODE_DIRECT=0 (partials and merge always): 1B and 8B, batch 1"
MEMBOUND_DECODE_DIRECT=0 timeout 120 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1 \
    --contenders membound --membound-backends triton+graphs --budget-s 100 --out "$OUT/direct0" >"$OUT/e2e_direct0.log" 2>&1
grep -E " step " "$OUT/e2e_direct0.log" | head -4
echo "($((SECONDS - start)) s)"
