#!/usr/bin/env bash
# Should decode-fused be the default decode pipeline now? (session 14's open question), about 8 minutes on one
# H200: GPU tests of the fused GEMV kernels (rms_norm_linear_glu_sumsq is new and has run only in the interpreter),
# then decode_e2e at batch 1 and 8 over both shapes: the default pipeline against decode-fused (6 launches a layer
# with the norm-folded gate/up GEMV) and the cd-tuned torch.compile. If decode-fused wins at both shapes and
# batches, make it the default (passes/pipeline.py decode_pipeline_name). One tarball.
#
#   bash gpu/fused_ab.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e"
timeout 90 python -m pytest -q -rfE -n 12 -p no:cacheprovider tests/backends/test_linear_fusion_kernels.py \
    tests/backends/test_decode_launches.py >"$W/tests.log" 2>&1
grep -E "(FAILED|ERROR) tests/" "$W/tests.log" | sort -u | head -10; tail -1 "$W/tests.log"
echo "== e2e ($((SECONDS - start)) s)"
timeout $((580 - SECONDS)) python benches/decode_e2e.py --models llama-8b,llama-1b --batches 1,8 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+fused --cd-tuning \
    --budget-s $((540 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -20
tar czf "$OUT/fused_ab.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
