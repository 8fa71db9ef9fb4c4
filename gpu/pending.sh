#!/usr/bin/env bash
# What the 2026-12-02 (sixth) session built but could not run on a GPU (its device budget was spent): run this first
# in the next GPU call (one H200, about 6 minutes; results under $OUT, a short table last).
#
#   bash gpu/pending.sh
#
# 1. moe.INT4_PAIRS (MEMBOUND_MOE_INT4_PAIRS=1): the int4 MoE halves tile dequantized two codes per instruction
#    (int4_pairs.py's PTX; sm_90 SASS of the decode K loops: gate/up 6.81 instructions a code against 15.38, down
#    10.00 against 19.69, benches/experiments/moe_int4_sass.py). Its tests, then the 8x7B int4 rows with and without.
#    If the tests pass and it is faster, flip INT4_PAIRS's default in membound/backends/triton/kernels/moe.py; then the
#    int4 decode tile sweep (moe_decode_tiles.py --scheme int4) says whether wider int4 tiles pay.
# 2. MEMBOUND_MOE_DOWN_MAXNREG=64: the fused-routing down kernel capped at 64 registers (one wave of programs at
#    T = 8 and 32 instead of two, if the cap holds without slowing the loop): its tests, then one moe op at
#    T = 1, 8, 32 against the default rule (routes_in_kernels). If the capped fused path wins at T = 8 and 32, make
#    the cap the default and drop the one-wave condition.
# 3. The 8x7B membound rows at batch 8 and 32 under the committed rule (the session-6 bench ran them with the routing
#    in the kernels at every batch, which the A/B found 7-17% slower per layer there).
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"

echo "== 1. int4 MoE pairs: tests"
MEMBOUND_MOE_INT4_PAIRS=1 timeout 150 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_moe_kernel.py \
    tests/backends/test_moe_prefill.py tests/backends/test_int4_pairs.py >"$OUT/pairs_tests.log" 2>&1
pairs=$?
grep -E "^(FAILED|ERROR)" "$OUT/pairs_tests.log" | head -10
tail -1 "$OUT/pairs_tests.log"
if [ $pairs -eq 0 ]; then
    for p in 0 1; do
        MEMBOUND_MOE_INT4_PAIRS=$p timeout 150 python benches/moe.py --shapes 8x7b-8l --batches 1 8 \
            --only "membound int4" --out "$OUT/pairs$p" >"$OUT/moe_int4_pairs$p.log" 2>&1
        echo "pairs=$p"; grep "tok/s" "$OUT/moe_int4_pairs$p.log"
    done
    # the int4 decode tiles with the pairs dequantization: wider tiles amortise the per-step x loads (SASS counts in
    # benches/experiments/moe_decode_tiles.py's INT4_PLANS comment); pick the best into the launcher's int4 tiles
    MEMBOUND_MOE_INT4_PAIRS=1 timeout 150 python benches/experiments/moe_decode_tiles.py --scheme int4 --tokens 1,8 \
        --tag=-int4-pairs --out "$OUT" >"$OUT/moe_int4_tiles.log" 2>&1
    grep -E "^T=.* us " "$OUT/moe_int4_tiles.log" | tail -12
fi

echo "== 2. fused-routing down kernel capped at 64 registers"
MEMBOUND_MOE_DOWN_MAXNREG=64 timeout 120 python -m pytest -q -n 8 -p no:cacheprovider tests/backends/test_moe_kernel.py \
    >"$OUT/maxnreg_tests.log" 2>&1
grep -E "^(FAILED|ERROR)" "$OUT/maxnreg_tests.log" | head -10
tail -1 "$OUT/maxnreg_tests.log"
for cap in 0 64; do
    MEMBOUND_MOE_DOWN_MAXNREG=$cap timeout 100 python benches/experiments/moe_decode_tiles.py --tokens 1,8,32 --plans 1 \
        --tag="-maxnreg-$cap" --out "$OUT" >"$OUT/moe_maxnreg_$cap.log" 2>&1
    echo "maxnreg=$cap:"; grep -E "^T=.*None " "$OUT/moe_maxnreg_$cap.log" | tail -3
done

echo "== 3. 8x7B membound b8, b32 under routes_in_kernels"
timeout 150 python benches/moe.py --shapes 8x7b-8l --batches 8 32 --only membound --out "$OUT" \
    >"$OUT/moe_8x7b_b8_b32.log" 2>&1
grep "tok/s" "$OUT/moe_8x7b_b8_b32.log"
echo "($((SECONDS - start)) s)"
