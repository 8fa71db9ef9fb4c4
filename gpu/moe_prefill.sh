#!/usr/bin/env bash
# MoE prefill on one H200 (< 4 minutes): the grouped-GEMM path of membound/backends/triton/kernels/moe.py.
#
#   bash gpu/moe_prefill.sh            # 1. tests/backends/test_moe_prefill.py on the GPU (both paths, bf16/fp16/
#                                      #    fp32, int8/int4/fp8; gating), 2. benches/moe_prefill.py (checks at
#                                      #    the 8x7B layer, then timings, crossover, tile sweep), 3. the
#                                      #    end-to-end prefill of benches/moe.py if time is left
#   E2E=0 bash gpu/moe_prefill.sh      # without step 3
#
# Full results under $OUT (tests.log, bench.log, moe_prefill-*.json, table.txt, moe_e2e.log, moe-*.json);
# the table last.
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

echo "== 1. tests/backends/test_moe_prefill.py on the GPU (gating)"
# (-k: the sm_90 compile-only test is the CPU CI's; here the kernels run)
timeout 100 python -m pytest tests/backends/test_moe_prefill.py -q -n 8 -p no:cacheprovider -k "not hopper" \
    >"$OUT/tests.log" 2>&1
rc=$?
tail -3 "$OUT/tests.log"
if [ $rc -ne 0 ]; then
    grep -E "^(FAILED|ERROR)" "$OUT/tests.log" | head -20
    echo "kernel tests failed (rc $rc, $OUT/tests.log): no timing"
    exit 1
fi
echo "   ($((SECONDS - start)) s)"

limit=$((220 - (SECONDS - start)))
echo "== 2. benches/moe_prefill.py: correctness at the Mixtral-8x7B layer, then timings (${limit} s at most)"
timeout "$limit" python benches/moe_prefill.py --out "$OUT" --budget-s $((limit - 30)) >"$OUT/bench.log" 2>&1
rc=$?
sed '/^wrote /,$d' "$OUT/bench.log" | tail -70  # the table comes last, below
echo "   (rc $rc, $((SECONDS - start)) s)"

left=$((230 - (SECONDS - start)))
if [ "${E2E:-1}" != 0 ] && [ $rc -eq 0 ] && [ $left -gt 75 ]; then
    echo "== 3. benches/moe.py --shapes 8x7b-8l --batches 1 --only membound (prefill of 512 tokens), ${left} s left"
    timeout "$left" python benches/moe.py --shapes 8x7b-8l --batches 1 --only membound --new-tokens 16 \
        --out "$OUT" >"$OUT/moe_e2e.log" 2>&1
    echo "   (rc $?)"
    grep -E "prefill|decode|error" "$OUT/moe_e2e.log" | tail -6
else
    echo "== 3. skipped (${left} s left, bench rc $rc); alone (~2-3 min):"
    echo "   PYTHONPATH=. python benches/moe.py --shapes 8x7b-8l --batches 1 --only membound --new-tokens 16"
fi

echo
echo "== table ($((SECONDS - start)) s)"
cat "$OUT/table.txt" 2>/dev/null || echo "(no table: see $OUT/bench.log)"
