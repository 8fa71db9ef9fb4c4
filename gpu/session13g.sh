#!/usr/bin/env bash
# Session 13, a short call (about 3 minutes): the resident tiles' one-row form (x as a vector against the 2-D
# tile, no 3-D broadcast: 4 barriers a program against 21 in sm_90 PTX) -- (1) its sweep at M = 1 on the 1.24B and
# 8B q/k/v, o and linear_glu; (2) decode_e2e 1.24B batch 1, the default build against the resident tiles off and
# the cd-tuned torch.compile. One tarball.
#
#   bash gpu/session13g.sh
source "$(dirname "${BASH_SOURCE[0]}")/_setup.sh"
W=$OUT/work; mkdir -p "$W/e2e" "$W/sweep"
timeout 70 python benches/gemv_sweep.py --resident --batches 1 --models llama-1b,llama-8b \
    --shapes qkv,o,gate_up_glu --budget-s 55 --out "$W/sweep" >"$W/sweep.log" 2>&1
grep -E " m1:|bandwidth|skipped" "$W/sweep.log" | head -8
echo "== e2e 1.24B b1 ($((SECONDS - start)) s)"
timeout $((215 - SECONDS)) python benches/decode_e2e.py --models llama-1b --batches 1 \
    --contenders membound,compile --membound-backends triton+graphs,triton+graphs+noresident --cd-tuning \
    --budget-s $((190 - SECONDS)) --out "$W/e2e" >"$W/e2e.log" 2>&1
grep -vE "^\[" "$W/e2e.log" | tail -9
tar czf "$OUT/session13g.tgz" -C "$W" . && rm -rf "$W"
echo "($((SECONDS - start)) s)"
