#!/usr/bin/env bash
# Session 20's first GPU call (at most 9.5 minutes on one H200), the most important of the scripts sessions 18-19 left:
#   1. the attn_block and mlp_block GPU tests (gpu/session19a.sh's step 1; the kernels spin on in-kernel counters, so
#      a hang costs the timeout, not the call);
#   2. benches/decode_e2e.py, llama-1b and llama-8b, batch 1 and 8, 128 new tokens after 128, membound
#      triton+graphs, the default pipeline against decode-layer (attention block + MLP block, 2 launches a layer);
#   3. the per-kernel profile of the decode-layer step.
# Result files under $OUT/work (tarball); the tables last.
#
#   bash gpu/session20a.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W"
echo "== attn_block and mlp_block GPU tests"
timeout 130 python -m pytest -q -p no:cacheprovider tests/backends/test_attn_block.py tests/backends/test_mlp_block.py \
    >"$W/tests.log" 2>&1
echo "rc $?"; tail -4 "$W/tests.log" | cut -c1-200
for pipe in decode decode-layer; do
    MEMBOUND_DECODE_PIPELINE=$pipe timeout 135 python benches/decode_e2e.py --models llama-1b,llama-8b --batches 1,8 \
        --new-tokens 128 --prompt 128 --contenders membound --membound-backends triton+graphs --budget-s 110 \
        --out "$W/$pipe" >"$W/e2e-$pipe.log" 2>&1
    echo "$pipe: rc $? ($((SECONDS - start)) s)"
done
MEMBOUND_DECODE_PIPELINE=decode-layer timeout 110 python benches/profile_step.py --quick --out "$W" \
    >"$W/profile-layer.log" 2>&1
echo "profile rc $? ($((SECONDS - start)) s)"
tar czf "$OUT/work.tgz" -C "$W" .
for pipe in decode decode-layer; do
    echo "== $pipe"
    grep -E "membound triton\+graphs +step" "$W/e2e-$pipe.log"
    grep -E "^llama.*membound" "$W/e2e-$pipe.log" | grep -v step | awk '{print $1, $2, $NF, $(NF-1)}'
    grep -iE "error|mismatch|Traceback" "$W/e2e-$pipe.log" | head -3
done
grep -E "^==|^   _|^   attention|^   void" "$W"/profile_step-*.txt | cut -c1-150
